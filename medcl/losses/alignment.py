"""Alignment and uniformity (Wang & Isola, ICML 2020): diagnostics of a contrastive embedding.

*Alignment* is the mean distance between positive pairs (lower: positives closer); *uniformity* is the
log of the mean Gaussian potential between all pairs (lower: embeddings spread more evenly over the
sphere). Both are logged during every pretraining run; they stay differentiable so they can also be
used as losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medcl.losses._common import _check_matrix, _check_pair, _check_positive, _full_precision, _prepare

__all__ = ["alignment", "uniformity"]


def alignment(z_a: Tensor, z_b: Tensor, alpha: float = 2.0, normalize: bool = True) -> Tensor:
    """``mean_i ‖z_a[i] - z_b[i]‖^alpha`` over positive pairs.

    Args:
        z_a: ``(N, D)``.
        z_b: ``(N, D)``; row ``i`` is the positive of ``z_a[i]``.
        alpha: exponent > 0 (Wang & Isola use 2). With ``alpha < 1`` the gradient at identical pairs is
            undefined.
        normalize: L2-normalise first (the paper's setting: embeddings on the unit sphere).

    Returns:
        Scalar tensor; 0 for identical pairs, ``2^alpha`` for antipodal unit vectors.
    """
    _check_positive(alpha, "alpha")
    _check_pair(z_a, z_b, "z_a", "z_b")
    with _full_precision(z_a.device):
        diff = _prepare(z_a, normalize, "z_a") - _prepare(z_b, normalize, "z_b")
        if alpha == 2:  # no square root: exact, and a clean zero gradient at identical pairs
            return diff.pow(2).sum(dim=1).mean()
        return torch.linalg.vector_norm(diff, dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0, normalize: bool = True) -> Tensor:
    """``log mean_{i<j} exp(-t ‖z_i - z_j‖²)``, by ``logsumexp`` over ``pdist`` minus ``log n_pairs``.

    Args:
        z: ``(N, D)``, ``N >= 2``.
        t: scale > 0 of the Gaussian potential (Wang & Isola use 2).
        normalize: L2-normalise first.

    Returns:
        Scalar tensor in ``[-4t, 0]`` for unit vectors; ``-4t`` for two antipodal ones.
    """
    _check_positive(t, "t")
    _check_matrix(z, "z")
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got shape {tuple(z.shape)}")
    with _full_precision(z.device):
        squared = torch.pdist(_prepare(z, normalize, "z"), p=2).pow(2)  # (N (N - 1) / 2,)
        return torch.logsumexp(-t * squared, dim=0) - math.log(n * (n - 1) / 2)
