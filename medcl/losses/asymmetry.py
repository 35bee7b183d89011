"""Asymmetry contrast (SATs: Li et al., "Leveraging Semantic Asymmetry for Precise Gross Tumor Volume
Segmentation of Nasopharyngeal Carcinoma in Planning CT", MICCAI 2025; no public code).

Healthy anatomy is bilaterally symmetric; a lesion breaks the symmetry. A Siamese encoder-decoder ``f``
runs on an image ``x`` and on its left-right mirror image ``x̃``; the voxel-wise distance

    ``d(v) = ‖f(x)(v) - f(x̃)(v)‖₂``  (over the feature channel, optionally on L2-normalised features)

compares, at every position ``v``, the features of the image with the features of the mirror image at the
same position. When the mirror plane of ``x`` is the patient's mid-sagittal plane, ``x̃(v) = x(v')`` with
``v'`` the contralateral position, so for a flip-equivariant ``f`` (``f(x̃) = flip(f(x))``) ``d(v)`` is
the distance between the features of ``v`` and of its contralateral twin ``v'``: zero on healthy,
symmetric anatomy, large where one side has a lesion and the other has not. The loss pulls ``d`` to 0
outside lesions and pushes it beyond a margin ``m`` inside them:

    ``L = mean_{v ∉ R} d(v)²  +  mean_{v ∈ R} max(0, m - d(v))²``

where the *asymmetric region* ``R = M ∪ M̃`` is the lesion mask ``M`` of the image united with the
lesion mask ``M̃`` of the mirror image (``M̃ = flip(M)`` for a whole or left-right-centred image): a
one-sided lesion at ``v`` makes ``d`` large at ``v`` AND at its twin ``v'`` (``d(v') = d(v)`` for an
equivariant ``f``), so both belong to the margin term, not to the symmetry term.

Why the mirror features are NOT flipped back: ``flip(f(flip(x)))`` compares each position with itself
processed in mirrored orientation; for any flip-equivariant ``f`` (a pointwise map, a convolution with
left-right symmetric kernels) it equals ``f(x)``, so that distance is 0 whatever the image holds and
could not grow with a one-sided lesion. Comparing ``f(x)`` and ``f(x̃)`` position by position is what
the paper's "distance between original and flipped areas" means.

Conventions: as every loss of :mod:`medcl.losses`, half-precision inputs are upcast and autocast is off
inside, so the result is float32 for half inputs, else the input dtype. The left-right axis is
:data:`LR_DIM`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.losses._common import _check_positive, _float_input, _full_precision

__all__ = [
    "LR_DIM",
    "AsymmetryLoss",
    "AsymmetryTerms",
    "asymmetric_region",
    "asymmetry_distance",
    "asymmetry_loss",
    "asymmetry_loss_terms",
    "flip_lr",
]

LR_DIM: int = 2
"""The left-right dimension of a channel-first batch ``(B, C, *spatial)``: the first spatial axis.

Volumes are oriented to RAS (DESIGN.md §1.1), so the first spatial axis of a ``(C, H, W, D)`` sample
(axis 1 of the sample, dim 2 of the batch) runs along the patient's left-right direction. Images that
MONAI loads (``PILReader``/``ITKReader`` with their default ``reverse_indexing=True``) are ``(C, W, H)``:
their first spatial axis is the image's columns, the left-right direction of a PA/AP chest radiograph.
Every flip of asymmetry contrast, of features, images and masks alike, is along this dimension.
"""


def flip_lr(x: Tensor) -> Tensor:
    """The left-right mirror image of a batch ``(B, C, *spatial)``: ``x`` flipped along :data:`LR_DIM`."""
    if x.dim() < LR_DIM + 1:
        raise ValueError(f"flip_lr needs a (B, C, *spatial) tensor, got shape {tuple(x.shape)}")
    return torch.flip(x, dims=(LR_DIM,))


class AsymmetryTerms(NamedTuple):
    """The two terms of :func:`asymmetry_loss_terms` (scalars); their sum is :attr:`loss`."""

    symmetry: Tensor
    margin: Tensor

    @property
    def loss(self) -> Tensor:
        """``symmetry + margin``."""
        return self.symmetry + self.margin


def _check_weight(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")


def _check_settings(margin: float, symmetry_weight_unmasked: float, normalize: bool) -> None:
    _check_positive(margin, "margin")
    _check_weight(symmetry_weight_unmasked, "symmetry_weight_unmasked")
    if normalize and margin > 2:
        raise ConfigError(
            f"margin {margin} can never be reached: on L2-normalised features the distance is at most 2 "
            "(use a margin <= 2, e.g. 1.0, or normalize=False)"
        )


def _check_features(features: Tensor, mirror_features: Tensor) -> None:
    if features.dim() < 3:
        raise ValueError(
            "features must have shape (B, F, *spatial) with at least one spatial axis, "
            f"got {tuple(features.shape)}"
        )
    if features.shape != mirror_features.shape:
        raise ValueError(
            "features and mirror_features must have the same shape, got "
            f"{tuple(features.shape)} and {tuple(mirror_features.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"features are empty (shape {tuple(features.shape)}); a loss needs a sample")


def _as_region(mask: Tensor, batch: int, spatial: tuple[int, ...], name: str) -> Tensor:
    """A mask ``(B, 1, *spatial)`` or ``(B, *spatial)`` as a boolean ``(B, *spatial)``: ``mask >= 0.5``."""
    if tuple(mask.shape) == (batch, 1, *spatial):
        mask = mask[:, 0]
    if tuple(mask.shape) != (batch, *spatial):
        raise ValueError(
            f"{name} must have shape ({batch}, 1, {', '.join(map(str, spatial))}) or "
            f"({batch}, {', '.join(map(str, spatial))}) to match the features, got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    return mask.to(torch.float32) >= 0.5


def _region(
    lesion_mask: Tensor, mirror_lesion_mask: Tensor | None, batch: int, spatial: tuple[int, ...]
) -> Tensor:
    own = _as_region(lesion_mask, batch, spatial, "lesion_mask")
    if mirror_lesion_mask is None:
        return own | torch.flip(own, dims=(LR_DIM - 1,))  # (B, *spatial): the LR axis is dim 1 here
    return own | _as_region(mirror_lesion_mask, batch, spatial, "mirror_lesion_mask").to(own.device)


def asymmetric_region(lesion_mask: Tensor, mirror_lesion_mask: Tensor | None = None) -> Tensor:
    """The region ``R = M ∪ M̃`` where the image or its mirror image has a lesion.

    Args:
        lesion_mask: ``M``, ``(B, 1, *spatial)`` or ``(B, *spatial)`` (a size-1 dim 1 is taken for the
            channel); a voxel is lesion where the value is ``>= 0.5`` (``True``/``1`` for bool and
            integer masks).
        mirror_lesion_mask: ``M̃``, the lesion mask of the mirror image at the same positions, same
            shape; ``None`` means ``flip(M)`` along the left-right axis (right for a whole image or a
            crop centred on the mirror plane).

    Returns:
        Boolean ``(B, *spatial)``.
    """
    if lesion_mask.dim() < 2:
        raise ValueError(f"lesion_mask must have shape (B, [1,] *spatial), got {tuple(lesion_mask.shape)}")
    has_channel = lesion_mask.dim() >= 3 and lesion_mask.shape[1] == 1
    spatial = tuple(lesion_mask.shape[2:] if has_channel else lesion_mask.shape[1:])
    return _region(lesion_mask, mirror_lesion_mask, lesion_mask.shape[0], spatial)


def asymmetry_distance(features: Tensor, mirror_features: Tensor, normalize: bool = True) -> Tensor:
    """Voxel-wise distance ``d = ‖f(x) - f(x̃)‖₂`` over the feature channel.

    Args:
        features: ``f(x)``, ``(B, F, *spatial)``.
        mirror_features: ``f(x̃)``, the features of the mirror image as the network returns them (not
            flipped back), same shape.
        normalize: L2-normalise each voxel's feature vector first (then ``0 <= d <= 2``).

    Returns:
        ``(B, *spatial)``; float32 for half inputs, else the input dtype. The gradient of ``d`` where it
        is exactly 0 is 0 (``torch.linalg.vector_norm``'s subgradient), never NaN.
    """
    _check_features(features, mirror_features)
    with _full_precision(features.device):
        f = _float_input(features, "features")
        g = _float_input(mirror_features, "mirror_features")
        if normalize:
            f, g = F.normalize(f, dim=1), F.normalize(g, dim=1)
        return torch.linalg.vector_norm(f - g, dim=1)


def asymmetry_loss_terms(
    features: Tensor,
    mirror_features: Tensor,
    lesion_mask: Tensor | None = None,
    has_mask: Tensor | None = None,
    mirror_lesion_mask: Tensor | None = None,
    margin: float = 1.0,
    symmetry_weight_unmasked: float = 1.0,
    normalize: bool = True,
) -> AsymmetryTerms:
    """The symmetry and margin terms of asymmetry contrast, averaged over the batch.

    For sample ``b`` with asymmetric region ``R_b`` (:func:`asymmetric_region` of its masks; empty when
    ``has_mask[b]`` is False, whatever its mask holds), ``N_out`` voxels outside ``R_b`` and ``N_in``
    inside:

    * ``S_b = Σ_{v ∉ R_b} d(v)² / N_out`` (0 when ``N_out = 0``, i.e. the region covers everything);
    * ``A_b = Σ_{v ∈ R_b} max(0, m - d(v))² / N_in`` (0 when ``N_in = 0``: an empty mask, or no mask);
    * ``w_b = 1`` if ``has_mask[b]`` else ``symmetry_weight_unmasked``;

    ``symmetry = (1/B) Σ_b w_b S_b`` and ``margin = (1/B) Σ_b A_b``: per-sample means, averaged over
    the ``B`` samples. A sample whose mask is known but empty (healthy) counts fully in the symmetry term;
    a sample without a mask (unknown lesions) contributes only its symmetry term, at weight
    ``symmetry_weight_unmasked`` (0 drops it).

    Args:
        features: ``f(x)``, ``(B, F, *spatial)`` (2-D images and 3-D volumes alike).
        mirror_features: ``f(x̃)``, same shape, not flipped back (see the module docstring).
        lesion_mask: ``(B, 1, *spatial)`` or ``(B, *spatial)``, lesion where ``>= 0.5``; ``None``: no
            sample has a mask.
        has_mask: ``(B,)`` bool, which samples have a mask; ``None``: all of them if ``lesion_mask`` is
            given.
        mirror_lesion_mask: the mirror image's lesion mask, see :func:`asymmetric_region`; ``None``:
            ``flip(lesion_mask)``.
        margin: ``m > 0``; at most 2 with ``normalize``.
        symmetry_weight_unmasked: ``>= 0``, the weight of the symmetry term of samples without a mask.
        normalize: L2-normalise features over channels first. Then ``d² = 2 - 2 cos θ`` and the default
            margin ``m = 1`` asks lesion voxels to differ from their twins by at least 60° (``cos <= 1/2``):
            less than unrelated features (``cos ≈ 0``, ``d ≈ √2``), and reachable by non-negative (ReLU)
            features, whose distance never exceeds ``√2``.

    Returns:
        :class:`AsymmetryTerms` ``(symmetry, margin)``; float32 for half inputs, else the input dtype.
    """
    _check_settings(margin, symmetry_weight_unmasked, normalize)
    distance = asymmetry_distance(features, mirror_features, normalize)  # (B, *spatial)
    batch, spatial = distance.shape[0], tuple(distance.shape[1:])
    device = distance.device
    if lesion_mask is None:
        if has_mask is not None and bool(torch.as_tensor(has_mask).any()):
            raise ValueError("has_mask says some samples have a mask, but no lesion_mask was given")
        if mirror_lesion_mask is not None:
            raise ValueError("mirror_lesion_mask was given without lesion_mask")
        masked = torch.zeros(batch, dtype=torch.bool, device=device)
        region = torch.zeros(distance.shape, dtype=torch.bool, device=device)
    else:
        region = _region(lesion_mask, mirror_lesion_mask, batch, spatial).to(device)
        if has_mask is None:
            masked = torch.ones(batch, dtype=torch.bool, device=device)
        else:
            masked = torch.as_tensor(has_mask, device=device)
            if masked.shape != (batch,):
                raise ValueError(f"has_mask must have shape ({batch},), got {tuple(masked.shape)}")
            masked = masked.to(torch.bool)
        region = region & masked.view(batch, *([1] * len(spatial)))
    with _full_precision(device):
        inside = region.flatten(1)  # (B, N)
        d = distance.flatten(1)
        squared = d * d
        hinge = F.relu(margin - d) ** 2
        zero = d.new_zeros(())
        n_in = inside.sum(dim=1)
        n_out = inside.shape[1] - n_in
        symmetry_b = torch.where(inside, zero, squared).sum(dim=1) / n_out.clamp(min=1)
        margin_b = torch.where(inside, hinge, zero).sum(dim=1) / n_in.clamp(min=1)
        weights = torch.where(masked, d.new_ones(()), d.new_tensor(float(symmetry_weight_unmasked)))
        return AsymmetryTerms(symmetry=(weights * symmetry_b).mean(), margin=margin_b.mean())


def asymmetry_loss(
    features: Tensor,
    mirror_features: Tensor,
    lesion_mask: Tensor | None = None,
    has_mask: Tensor | None = None,
    mirror_lesion_mask: Tensor | None = None,
    margin: float = 1.0,
    symmetry_weight_unmasked: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """``symmetry + margin`` of :func:`asymmetry_loss_terms` (same arguments); a scalar."""
    return asymmetry_loss_terms(
        features,
        mirror_features,
        lesion_mask,
        has_mask,
        mirror_lesion_mask,
        margin,
        symmetry_weight_unmasked,
        normalize,
    ).loss


class AsymmetryLoss(nn.Module):
    """:func:`asymmetry_loss` with its settings.

    ``forward(features, mirror_features, lesion_mask=None, has_mask=None, mirror_lesion_mask=None)``
    returns the scalar loss; shapes as in :func:`asymmetry_loss_terms`.
    """

    def __init__(
        self, margin: float = 1.0, symmetry_weight_unmasked: float = 1.0, normalize: bool = True
    ) -> None:
        super().__init__()
        _check_settings(margin, symmetry_weight_unmasked, normalize)
        self.margin = float(margin)
        self.symmetry_weight_unmasked = float(symmetry_weight_unmasked)
        self.normalize = bool(normalize)

    def forward(
        self,
        features: Tensor,
        mirror_features: Tensor,
        lesion_mask: Tensor | None = None,
        has_mask: Tensor | None = None,
        mirror_lesion_mask: Tensor | None = None,
    ) -> Tensor:
        return asymmetry_loss(
            features,
            mirror_features,
            lesion_mask,
            has_mask,
            mirror_lesion_mask,
            self.margin,
            self.symmetry_weight_unmasked,
            self.normalize,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, symmetry_weight_unmasked={self.symmetry_weight_unmasked}, "
            f"normalize={self.normalize}"
        )
