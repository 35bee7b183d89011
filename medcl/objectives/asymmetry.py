"""Asymmetry contrast (SATs, Li et al., MICCAI 2025): a Siamese pass over an image and its mirror image.

Healthy anatomy is bilaterally symmetric, lesions break the symmetry. :class:`AsymmetryContrast` runs the
encoder's dense features on an image and on its left-right mirror image (ONE ``forward_dense`` call on
both, concatenated along the batch) and applies :func:`~medcl.losses.asymmetry.asymmetry_loss_terms`:
features of each position pulled towards those of the mirror image at the same position (the
contralateral twin) outside lesions, pushed beyond a margin inside them. It serves as pretraining where
masks are weak, partial or absent (:meth:`AsymmetryContrast.forward_batch`, with
:class:`SymmetricCropd` as the per-sample transform) and as an auxiliary loss added to a segmentation
loss (:meth:`AsymmetryContrast.auxiliary_loss`).

The mirror plane is the middle of the left-right axis (:data:`~medcl.losses.asymmetry.LR_DIM`) of the
whole sample — volumes oriented to RAS, ideally centred on the patient (a rigid mid-sagittal alignment
is not done here). :class:`SymmetricCropd` therefore crops the same window from the sample and from its
mirror image, so a crop anywhere keeps the exact contralateral correspondence; by default the window is
centred on the mirror plane (both sides of the body in one crop, as the paper's network sees them).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError, DataError
from medcl.losses.asymmetry import LR_DIM, AsymmetryTerms, _check_settings, asymmetry_loss_terms, flip_lr
from medcl.objectives.base import BatchObjective

__all__ = [
    "ASYM_HAS_MASK",
    "ASYM_IMAGE",
    "ASYM_MASK",
    "ASYM_MIRROR",
    "ASYM_MIRROR_MASK",
    "AsymmetryContrast",
    "SymmetricCropd",
]

#: The sample's crop ``(C, *roi)`` float32.
ASYM_IMAGE = "asym_image"
#: The same window of the sample's left-right mirror image, ``(C, *roi)`` float32.
ASYM_MIRROR = "asym_mirror"
#: Lesion mask of the crop, ``(1, *roi)`` float32 (1 = lesion); zeros when the sample has no mask.
ASYM_MASK = "asym_mask"
#: Lesion mask of the mirror window, ``(1, *roi)`` float32.
ASYM_MIRROR_MASK = "asym_mirror_mask"
#: Whether the sample has a mask (bool); without one it contributes only the symmetry term.
ASYM_HAS_MASK = "asym_has_mask"

_SAMPLE_LR_AXIS = LR_DIM - 1  # the left-right axis of a channel-first sample (C, *spatial)
_SPATIAL_LR_AXIS = LR_DIM - 2  # its index among the spatial axes


def _check_roi(roi_size: Sequence[int]) -> tuple[int, ...]:
    try:
        roi = tuple(int(r) for r in roi_size)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"roi_size must be a sequence of positive integers, got {roi_size!r}") from error
    if not roi or min(roi) < 1 or any(r != s for r, s in zip(roi, roi_size, strict=True)):
        raise ConfigError(f"roi_size must be a non-empty sequence of positive integers, got {roi_size!r}")
    return roi


def _check_labels(lesion_labels: Sequence[int] | None) -> tuple[int, ...] | None:
    if lesion_labels is None:
        return None
    labels = tuple(lesion_labels)
    if not labels or any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
        raise ConfigError(
            f"lesion_labels must be None (every label > 0 is lesion) or a non-empty list of integer label "
            f"values, got {lesion_labels!r}"
        )
    return labels


def _numpy(value: Any) -> np.ndarray:
    """A sample array (numpy, torch or MONAI ``MetaTensor``) as numpy."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(value)


def _window(array: np.ndarray, starts: Sequence[int], roi: Sequence[int]) -> np.ndarray:
    """``array[:, s_0 : s_0 + r_0, ...]`` of a channel-first array, zero where the window leaves it.

    ``starts`` may be negative or run past the end (padding); the result is ``(C, *roi)``.
    """
    out = np.zeros((array.shape[0], *roi), dtype=array.dtype)
    src: list[slice] = [slice(None)]
    dst: list[slice] = [slice(None)]
    for start, size, extent in zip(starts, roi, array.shape[1:], strict=True):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


class SymmetricCropd(Randomizable, MapTransform):
    """Crop a sample and its left-right mirror image to a fixed ROI (the input of asymmetry contrast).

    One window ``W`` of size ``roi_size`` is chosen per call: along the left-right axis (the first
    spatial axis, :data:`~medcl.losses.asymmetry.LR_DIM` − 1 of the sample) it is centred on the
    sample's mid-plane, start ``⌊(H − r)/2⌋`` (or, with ``lr_random``, uniform when ``H > r``); along the
    other axes its start is uniform in ``[0, n − r]`` when the side ``n`` exceeds ``r``, else centred.
    Where ``W`` leaves the sample it is zero-padded (the background of windowed CT and normalised MRI).

    Added to the dict (``output_keys``):

    * ``asym_image`` ``(C, *roi)`` float32: the sample's image in ``W``;
    * ``asym_mirror`` ``(C, *roi)`` float32: the mirror image ``flip(image)`` in the same window ``W``,
      so voxel ``v`` of ``asym_mirror`` is the contralateral twin of voxel ``v`` of ``asym_image``. When
      ``H − r`` is even (and ``W`` centred), ``asym_mirror == flip(asym_image)``; otherwise the crop's
      mid-plane is half a voxel off the sample's and ``asym_mirror`` is still exact (no resampling);
    * ``asym_mask`` / ``asym_mirror_mask`` ``(1, *roi)`` float32: lesion (1) where the sample's mask is
      ``> 0`` or, with ``lesion_labels``, one of those values; of ``W`` and of the mirror window. Zeros
      when the sample has no mask;
    * ``asym_has_mask`` bool: whether the sample had a mask under ``mask_key``.

    Randomness comes only from ``self.R`` (``set_random_state(seed)``).

    Args:
        image_key: the sample's main array, ``(C, *spatial)`` with ``len(roi_size)`` spatial axes.
        roi_size: the crop size, one entry per spatial axis (3 for volumes, 2 for images).
        mask_key: the sample's mask ``(1, *spatial)`` (or ``(*spatial)``), integer labels; optional.
        lesion_labels: the label values that are lesion; ``None``: every value ``> 0``.
        lr_random: draw the left-right position too (the contralateral correspondence stays exact, but
            the crop may hold one side of the body only).

    Raises:
        DataError: an image without ``len(roi_size)`` spatial axes, or a mask whose spatial shape differs
            from the image's (naming the sample's files from ``meta``).
    """

    def __init__(
        self,
        image_key: str = "image",
        roi_size: Sequence[int] = (96, 96, 96),
        mask_key: str = "mask",
        lesion_labels: Sequence[int] | None = None,
        lr_random: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys=[image_key], allow_missing_keys=False)
        self.image_key = image_key
        self.roi_size = _check_roi(roi_size)
        self.mask_key = mask_key
        self.lesion_labels = _check_labels(lesion_labels)
        self.lr_random = bool(lr_random)
        self.output_keys: tuple[str, ...] = (
            ASYM_IMAGE,
            ASYM_MIRROR,
            ASYM_MASK,
            ASYM_MIRROR_MASK,
            ASYM_HAS_MASK,
        )
        self.starts: tuple[int, ...] | None = None

    def randomize(self, data: Sequence[int]) -> None:
        """Draw the window's start (``self.starts``) for a sample of spatial shape ``data``."""
        starts = []
        for axis, (extent, size) in enumerate(zip(data, self.roi_size, strict=True)):
            random_axis = axis != _SPATIAL_LR_AXIS or self.lr_random
            if extent > size and random_axis:
                starts.append(int(self.R.randint(0, extent - size + 1)))
            else:
                starts.append((extent - size) // 2)
        self.starts = tuple(starts)

    def _lesion(self, mask: np.ndarray) -> np.ndarray:
        if self.lesion_labels is None:
            return mask > 0
        return np.isin(mask, np.asarray(self.lesion_labels))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d.get("meta") if isinstance(d.get("meta"), Mapping) else {}
        image = _numpy(d[self.image_key]).astype(np.float32, copy=False)
        n_spatial = len(self.roi_size)
        if image.ndim != n_spatial + 1:
            raise DataError(
                meta.get("path"),
                f"{self.image_key!r} has shape {image.shape}, but roi_size {self.roi_size} needs a channel-"
                f"first array with {n_spatial} spatial axes",
                "give roi_size one entry per spatial axis (3 for volumes, 2 for images)",
            )
        spatial = image.shape[1:]
        self.randomize(spatial)
        starts = list(self.starts or ())
        lr = _SPATIAL_LR_AXIS
        mirror_starts = list(starts)
        mirror_starts[lr] = spatial[lr] - starts[lr] - self.roi_size[lr]

        def mirror_of(array: np.ndarray) -> np.ndarray:
            return np.flip(_window(array, mirror_starts, self.roi_size), axis=_SAMPLE_LR_AXIS).copy()

        raw_mask = d.get(self.mask_key)
        has_mask = raw_mask is not None
        if has_mask:
            mask = _numpy(raw_mask)
            if mask.ndim == n_spatial:
                mask = mask[None]
            if mask.ndim != n_spatial + 1 or mask.shape[0] != 1 or mask.shape[1:] != spatial:
                raise DataError(
                    meta.get("mask_path") or meta.get("path"),
                    f"mask of shape {mask.shape} does not match the image's spatial shape {spatial}",
                    "the mask must be resampled and oriented with the image (same transforms, "
                    "nearest-neighbour interpolation)",
                )
            lesion = self._lesion(mask).astype(np.float32)
        else:
            lesion = np.zeros((1, *spatial), dtype=np.float32)
        d[ASYM_IMAGE] = torch.from_numpy(_window(image, starts, self.roi_size))
        d[ASYM_MIRROR] = torch.from_numpy(mirror_of(image))
        d[ASYM_MASK] = torch.from_numpy(_window(lesion, starts, self.roi_size))
        d[ASYM_MIRROR_MASK] = torch.from_numpy(mirror_of(lesion))
        d[ASYM_HAS_MASK] = bool(has_mask)
        return d


def _dense(encoder: nn.Module) -> Any:
    forward_dense = getattr(encoder, "forward_dense", None)
    if not callable(forward_dense):
        raise ConfigError(
            f"asymmetry contrast needs per-voxel features, but {type(encoder).__name__} has no "
            "forward_dense(x) -> (B, F, *spatial); use an encoder-decoder backbone "
            "(e.g. modalities.volumes.UNetBackbone)"
        )
    return forward_dense


class AsymmetryContrast(Configurable, BatchObjective):
    """Asymmetry contrast as a pretraining objective and as an auxiliary segmentation loss.

    For a batch of images ``x`` ``(B, C, *spatial)``, their mirror images ``x̃`` (the same windows of the
    left-right flipped samples; ``flip(x)`` for whole or centred images) and lesion masks, the encoder
    runs once on ``cat([x, x̃])`` (``forward_dense``, ``(2B, F, *spatial)``); the first ``B`` rows are
    ``f(x)``, the last ``B`` rows ``f(x̃)``, compared position by position (not flipped back: see
    :mod:`medcl.losses.asymmetry`). Terms: ``asym_symmetry`` (the mean ``d²`` outside lesions, per
    sample, samples without a mask weighted by ``symmetry_weight_unmasked``), ``asym_margin`` (the mean
    ``max(0, m − d)²`` over the lesions and their mirror positions) and ``loss`` (their sum), exactly as
    :func:`~medcl.losses.asymmetry.asymmetry_loss_terms` defines the batch average.

    Works with any encoder that has ``forward_dense(x: (N, C, *spatial)) -> (N, F, *spatial)``, 3-D
    volumes and 2-D images alike (the flip is always along the first spatial axis).

    Args:
        roi_size: crop size of :meth:`item_transform`, one entry per spatial axis; each side must be a
            multiple of the encoder's ``spatial_multiple`` (16 for ``UNetBackbone``, 32 for SwinUNETR).
        margin: ``m``; at most 2 with ``normalize``. Default 1.0: on unit-normalised features, lesion
            voxels must differ from their contralateral twins by an angle of at least 60°.
        normalize: L2-normalise features over channels before the distance (fixes the margin's scale).
        symmetry_weight_unmasked: weight of the symmetry term of samples without a mask (0 ignores them).
        lesion_labels: mask values that count as lesion; ``None``: every value ``> 0``.
        mask_key: the sample dict's mask key.
        lr_random: see :class:`SymmetricCropd`.

    Raises:
        ConfigError: a bad setting (margin <= 0 or unreachable, negative weight, bad roi or labels).
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (96, 96, 96),
        margin: float = 1.0,
        normalize: bool = True,
        symmetry_weight_unmasked: float = 1.0,
        lesion_labels: Sequence[int] | None = None,
        mask_key: str = "mask",
        lr_random: bool = False,
    ) -> None:
        super().__init__()
        _check_settings(margin, symmetry_weight_unmasked, bool(normalize))
        self.roi_size = _check_roi(roi_size)
        self.lesion_labels = _check_labels(lesion_labels)
        self.margin = float(margin)
        self.normalize = bool(normalize)
        self.symmetry_weight_unmasked = float(symmetry_weight_unmasked)
        self.mask_key = mask_key
        self.lr_random = bool(lr_random)

    def item_transform(self, input_key: str) -> SymmetricCropd:
        """:class:`SymmetricCropd` of the sample's ``input_key`` array and mask, with these settings."""
        return SymmetricCropd(
            image_key=input_key,
            roi_size=self.roi_size,
            mask_key=self.mask_key,
            lesion_labels=self.lesion_labels,
            lr_random=self.lr_random,
        )

    def lesion(self, mask: Tensor) -> Tensor:
        """Lesion voxels (bool, same shape) of a label map: ``mask > 0``, or its ``lesion_labels`` values."""
        if self.lesion_labels is None:
            return mask > 0
        return torch.isin(mask, torch.tensor(self.lesion_labels, device=mask.device, dtype=mask.dtype))

    def _encode_pair(self, encoder: nn.Module, image: Tensor, mirror: Tensor) -> Tensor:
        """``forward_dense(cat([image, mirror]))``, checked: ``(2B, F, *spatial)``."""
        forward_dense = _dense(encoder)
        if image.shape != mirror.shape:
            raise ValueError(
                f"image and mirror image must have the same shape, got {tuple(image.shape)} and "
                f"{tuple(mirror.shape)}"
            )
        multiple = getattr(encoder, "spatial_multiple", None)
        spatial = tuple(int(s) for s in image.shape[2:])
        if isinstance(multiple, int) and multiple > 1 and any(s % multiple for s in spatial):
            raise ConfigError(
                f"{type(encoder).__name__} needs spatial sides that are multiples of {multiple}, got "
                f"{spatial}; set AsymmetryContrast(roi_size=...) to multiples of {multiple}"
            )
        features = forward_dense(torch.cat([image, mirror]))
        return self._check_pair_features(features, image)

    @staticmethod
    def _check_pair_features(features: Tensor, image: Tensor) -> Tensor:
        batch, spatial = image.shape[0], tuple(image.shape[2:])
        if (
            features.dim() != image.dim()
            or features.shape[0] != 2 * batch
            or tuple(features.shape[2:]) != spatial
        ):
            raise ConfigError(
                f"dense features must have shape (2B, F, *spatial) = ({2 * batch}, F, "
                f"{', '.join(map(str, spatial))}) for the image and its mirror image, "
                f"got {tuple(features.shape)}"
            )
        return features

    def _terms(
        self,
        features: Tensor,
        lesion: Tensor | None,
        mirror_lesion: Tensor | None,
        has_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        batch = features.shape[0] // 2
        terms: AsymmetryTerms = asymmetry_loss_terms(
            features[:batch],
            features[batch:],
            lesion_mask=lesion,
            has_mask=has_mask,
            mirror_lesion_mask=mirror_lesion,
            margin=self.margin,
            symmetry_weight_unmasked=self.symmetry_weight_unmasked,
            normalize=self.normalize,
        )
        return {"loss": terms.loss, "asym_symmetry": terms.symmetry, "asym_margin": terms.margin}

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of a collated batch of :class:`SymmetricCropd` outputs.

        Args:
            encoder: has ``forward_dense``.
            batch: ``asym_image``, ``asym_mirror`` ``(B, C, *roi)``; ``asym_mask``, ``asym_mirror_mask``
                ``(B, 1, *roi)``; ``asym_has_mask`` ``(B,)`` bool.

        Returns:
            ``{"loss", "asym_symmetry", "asym_margin"}`` scalars.
        """
        missing = [
            key
            for key in (ASYM_IMAGE, ASYM_MIRROR, ASYM_MASK, ASYM_MIRROR_MASK, ASYM_HAS_MASK)
            if key not in batch
        ]
        if missing:
            raise ConfigError(
                f"the batch lacks {missing}: AsymmetryContrast needs its item_transform (SymmetricCropd) to "
                "be applied to every sample by the dataset"
            )
        image = batch[ASYM_IMAGE]
        features = self._encode_pair(encoder, image, batch[ASYM_MIRROR])
        return self._terms(features, batch[ASYM_MASK], batch[ASYM_MIRROR_MASK], batch[ASYM_HAS_MASK])

    def auxiliary_loss(
        self,
        encoder_or_features: nn.Module | Tensor,
        image: Tensor,
        mask: Tensor | None = None,
        has_mask: Tensor | None = None,
        mirror_image: Tensor | None = None,
        mirror_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Asymmetry terms for a segmentation batch, to add to its Dice + CE loss.

        Either pass the encoder (it runs ``forward_dense`` once on ``cat([image, mirror_image])``) or the
        features of that very call, ``(2B, F, *spatial)``, when the segmentation model already computed
        them (its head then uses the first ``B`` rows).

        The mirror image of a batch of whole images, or of crops centred on the mirror plane along the
        first spatial axis (:class:`SymmetricCropd`), is ``flip_lr(image)`` (the default). For crops
        elsewhere pass ``mirror_image`` (and ``mirror_mask``): the same windows of the flipped samples.

        Args:
            encoder_or_features: a module with ``forward_dense``, or the ``(2B, F, *spatial)`` features.
            image: ``(B, C, *spatial)``.
            mask: label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` (lesion: see :meth:`lesion`);
                ``None``: no sample has a mask (symmetry term only, at ``symmetry_weight_unmasked``).
            has_mask: ``(B,)`` bool, which rows of ``mask`` are real; default all (when ``mask`` is given).
            mirror_image: ``(B, C, *spatial)``; default ``flip_lr(image)``.
            mirror_mask: label map of the mirror image; default the flip of ``mask``.

        Returns:
            ``{"loss", "asym_symmetry", "asym_margin"}`` scalars; weight ``loss`` yourself.
        """
        if isinstance(encoder_or_features, Tensor):
            features = self._check_pair_features(encoder_or_features, image)
        else:
            mirror = flip_lr(image) if mirror_image is None else mirror_image
            features = self._encode_pair(encoder_or_features, image, mirror)
        lesion = None if mask is None else self.lesion(mask)
        mirror_lesion = None if mirror_mask is None else self.lesion(mirror_mask)
        if mask is None and mirror_mask is not None:
            raise ValueError("mirror_mask was given without mask")
        return self._terms(features, lesion, mirror_lesion, has_mask)

    def extra_repr(self) -> str:
        return (
            f"roi_size={self.roi_size}, margin={self.margin}, normalize={self.normalize}, "
            f"symmetry_weight_unmasked={self.symmetry_weight_unmasked}, lesion_labels={self.lesion_labels}"
        )
