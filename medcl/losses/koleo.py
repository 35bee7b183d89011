"""KoLeo regulariser (Sablayrolles et al., ICLR 2019; as used in DINOv2): spread embeddings out.

``L = -mean_i log(min_{j ≠ i} ‖z_i - z_j‖ + eps)``: small when every embedding's nearest neighbour is
far away. Participant contrast for wearables (Abbaspourazad et al., ICLR 2024) adds ``0.1 × KoLeo`` to
its InfoNCE loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.losses._common import _check_matrix, _full_precision, _prepare

__all__ = ["KoLeoLoss", "koleo_loss"]


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"eps must be a finite number >= 0, got {eps!r}")


def koleo_loss(z: Tensor, eps: float = 1e-8, normalize: bool = True) -> Tensor:
    """Kozachenko-Leonenko entropy regulariser: ``-mean_i log(min_{j ≠ i} ‖z_i - z_j‖ + eps)``.

    As DINOv2's ``KoLeoLoss``: the nearest neighbour is found without gradient (on normalised features
    that is the largest inner product), then the distance to it is computed, differentiably, as the L2
    norm of the difference. Without normalisation the nearest neighbour is the one at the smallest
    Euclidean distance. Duplicated rows give distance 0 (loss ``-log(eps)``) and a zero, finite
    gradient.

    Args:
        z: ``(N, D)`` embeddings, ``N >= 2``.
        eps: added to each distance before the log, >= 0.
        normalize: L2-normalise first (DINOv2 does).

    Returns:
        Scalar tensor.
    """
    _check_eps(eps)
    _check_matrix(z, "z")
    if z.shape[0] < 2:
        raise ValueError(
            f"koleo_loss needs at least 2 embeddings to find neighbours, got shape {tuple(z.shape)}"
        )
    with _full_precision(z.device):
        z = _prepare(z, normalize, "z")
        with torch.no_grad():
            # argmin_j ‖z_i - z_j‖² = argmax_j (2 z_i·z_j - ‖z_j‖²); with unit norms, the largest z_i·z_j.
            scores = 2 * (z @ z.T) - (z * z).sum(dim=1)[None, :]
            scores.fill_diagonal_(float("-inf"))
            nearest = scores.argmax(dim=1)  # (N,)
        distances = torch.linalg.vector_norm(z - z[nearest], dim=1)  # (N,)
        return -torch.log(distances + eps).mean()


class KoLeoLoss(nn.Module):
    """:func:`koleo_loss` with its settings; ``forward(z: (N, D)) -> scalar``."""

    def __init__(self, eps: float = 1e-8, normalize: bool = True) -> None:
        super().__init__()
        _check_eps(eps)
        self.eps = eps
        self.normalize = normalize

    def forward(self, z: Tensor) -> Tensor:
        return koleo_loss(z, self.eps, self.normalize)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, normalize={self.normalize}"
