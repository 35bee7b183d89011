"""TS2Vec's hierarchical contrastive loss (Yue et al., AAAI 2022), also COMET's observation and sample levels.

Two terms over time-resolved representations ``z1, z2`` of shape ``(B, T, D)`` (two views, aligned in
time), both with raw dot products (no normalisation, no temperature), as TS2Vec:

* **instance** (COMET's *sample* level): at each time step, a sample's other view is the positive and the
  other ``2B - 2`` representations of the batch at that time step are negatives;
* **temporal** (COMET's *observation* level): within each sample, the same time step in the other view is
  the positive and the other ``2T - 2`` time steps of both views are negatives.

:func:`ts2vec_hierarchical_loss` applies both at every scale of a max-pool-by-2 pyramid over time and
equals TS2Vec's ``hierarchical_contrastive_loss`` (``zhihanyue/ts2vec``, ``models/losses.py``).

Implementation: TS2Vec builds ``(·, 2n, 2n - 1)`` logits by concatenating the lower and upper triangles
of the similarity matrix (three full-size copies) and then a ``log_softmax``. We write ``-inf`` on the
diagonal of the similarity matrix in place and take ``logsumexp - positive``: the same values (the
triangle trick only drops the diagonal), one ``(·, 2n, 2n)`` tensor kept for backward, no Python loop
over time or batch; positives are ``Σ_d z1·z2`` computed elementwise. Memory is ``O(T·B²)`` for the
instance term and ``O(B·T²)`` for the temporal term, as in TS2Vec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl import dist
from medcl.errors import ConfigError
from medcl.losses._common import _float_input, _full_precision

__all__ = [
    "TS2VecLoss",
    "ts2vec_hierarchical_loss",
    "ts2vec_instance_loss",
    "ts2vec_pyramid_losses",
    "ts2vec_temporal_loss",
]


def _check_views(z1: Tensor, z2: Tensor) -> None:
    if z1.dim() != 3:
        raise ValueError(f"z1 must have shape (batch, time, dim), got {tuple(z1.shape)}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] == 0 or z1.shape[1] == 0:
        raise ValueError(f"z1 has an empty batch or time axis (shape {tuple(z1.shape)})")


def _connected_zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 that is part of the graph of ``tensors`` (zero gradients, so DDP sees every parameter)."""
    return sum(t.sum() for t in tensors) * 0.0


def _instance_term(z1: Tensor, z2: Tensor, c1: Tensor, c2: Tensor, offset: int) -> Tensor:
    """Instance loss of local anchors against candidates.

    Args:
        z1, z2: ``(B, T, D)`` local views (the anchors).
        c1, c2: ``(M, T, D)`` candidate views; rows ``offset .. offset + B`` are ``z1`` / ``z2``
            (``c = z``, ``offset = 0`` without gathering).
        offset: index of the local rows in the candidates.
    """
    n, m = z1.shape[0], c1.shape[0]
    if m == 1:  # a single sample: no negatives (TS2Vec returns 0)
        return _connected_zero(z1, z2)
    anchors = torch.cat([z1, z2]).transpose(0, 1)  # (T, 2B, D)
    candidates = anchors if c1 is z1 else torch.cat([c1, c2]).transpose(0, 1)  # (T, 2M, D)
    sim = torch.matmul(anchors, candidates.transpose(1, 2))  # (T, 2B, 2M)
    local = torch.arange(n, device=sim.device) + offset
    rows = torch.arange(2 * n, device=sim.device)
    # In place is safe: matmul's backward needs its inputs, not its output.
    sim[:, rows, torch.cat([local, local + m])] = float("-inf")
    log_normaliser = torch.logsumexp(sim, dim=-1)  # (T, 2B)
    positive = (z1 * z2).sum(dim=-1)  # (B, T): the positive logit of both row i and row B + i
    return log_normaliser.mean() - positive.mean()


def _temporal_term(z1: Tensor, z2: Tensor) -> Tensor:
    """Temporal loss of ``z1, z2``: ``(B, T, D)`` each."""
    t = z1.shape[1]
    if t == 1:  # a single time step: no negatives (TS2Vec returns 0)
        return _connected_zero(z1, z2)
    z = torch.cat([z1, z2], dim=1)  # (B, 2T, D)
    sim = torch.matmul(z, z.transpose(1, 2))  # (B, 2T, 2T)
    sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    log_normaliser = torch.logsumexp(sim, dim=-1)  # (B, 2T)
    positive = (z1 * z2).sum(dim=-1)  # (B, T): the positive logit of both row t and row T + t
    return log_normaliser.mean() - positive.mean()


def _gather_candidates(z1: Tensor, z2: Tensor, gather_distributed: bool) -> tuple[Tensor, Tensor, int]:
    """Candidate views ``(M, T, D)`` from every rank (one collective) and the local offset."""
    if not (gather_distributed and dist.is_distributed()):
        return z1, z2, 0
    n = z1.shape[0]
    sizes = dist.gather_sizes(n, z1.device)
    both = dist.gather(torch.stack([z1, z2], dim=1), sizes)  # (M, 2, T, D)
    return both[:, 0], both[:, 1], dist.local_offset(n, sizes)


def ts2vec_instance_loss(z1: Tensor, z2: Tensor, gather_distributed: bool = False) -> Tensor:
    """TS2Vec's instance-wise contrastive loss at one scale.

    At each time step ``t``, anchor ``z1[i, t]`` has positive ``z2[i, t]`` and negatives the other
    ``2B - 2`` representations ``{z1[j, t], z2[j, t]}_{j ≠ i}`` (and symmetrically for ``z2``); logits are
    raw dot products. The loss is the mean over the ``2B·T`` anchors; ``log(2B - 1)`` when all
    representations are equal; 0 (connected to the graph) when ``B == 1``.

    Args:
        z1: ``(B, T, D)``, first view.
        z2: ``(B, T, D)``, second view, aligned with ``z1`` in time.
        gather_distributed: negatives also from the samples of other ranks at the same time step.

    Returns:
        Scalar tensor.
    """
    _check_views(z1, z2)
    with _full_precision(z1.device):
        z1, z2 = _float_input(z1, "z1"), _float_input(z2, "z2")
        c1, c2, offset = _gather_candidates(z1, z2, gather_distributed)
        return _instance_term(z1, z2, c1, c2, offset)


def ts2vec_temporal_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """TS2Vec's temporal contrastive loss at one scale.

    Within sample ``b``, anchor ``z1[b, t]`` has positive ``z2[b, t]`` and negatives the other ``2T - 2``
    time steps ``{z1[b, s], z2[b, s]}_{s ≠ t}`` (and symmetrically for ``z2``); raw dot products. The loss
    is the mean over the ``2B·T`` anchors; ``log(2T - 1)`` when all representations are equal; 0
    (connected to the graph) when ``T == 1``.

    Args:
        z1: ``(B, T, D)``, first view.
        z2: ``(B, T, D)``, second view, aligned with ``z1`` in time.

    Returns:
        Scalar tensor.
    """
    _check_views(z1, z2)
    with _full_precision(z1.device):
        return _temporal_term(_float_input(z1, "z1"), _float_input(z2, "z2"))


def _check_temporal_unit(temporal_unit: int) -> None:
    if isinstance(temporal_unit, bool) or not isinstance(temporal_unit, int) or temporal_unit < 0:
        raise ConfigError(f"temporal_unit must be an integer >= 0, got {temporal_unit!r}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be a number in [0, 1] (weight of the instance loss), got {alpha!r}")


def _max_pool_time(z: Tensor) -> Tensor:
    """``(B, T, D) -> (B, T // 2, D)``: max over pairs of time steps, the last odd one dropped (as TS2Vec)."""
    return F.max_pool1d(z.transpose(1, 2), kernel_size=2).transpose(1, 2)


def _pyramid(
    z1: Tensor,
    z2: Tensor,
    temporal_unit: int,
    gather_distributed: bool,
    with_instance: bool,
    with_temporal: bool,
) -> tuple[Tensor, Tensor]:
    """``(Σ instance / d, Σ temporal / d)`` over the pyramid of ``z1, z2`` ``(B, T, D)``; a term not asked
    for is a connected zero and is not computed."""
    with _full_precision(z1.device):
        z1, z2 = _float_input(z1, "z1"), _float_input(z2, "z2")
        # Max-pooling is per sample, so pooling the gathered candidates equals gathering pooled ones:
        # one collective for the whole pyramid.
        c1, c2, offset = _gather_candidates(z1, z2, gather_distributed and with_instance)
        gathered = c1 is not z1
        instance = temporal = _connected_zero(z1, z2)
        depth = 0
        while True:
            if with_instance:
                instance = instance + _instance_term(z1, z2, c1, c2, offset)
            if z1.shape[1] == 1:  # the coarsest scale: instance loss only
                depth += 1
                break
            if with_temporal and depth >= temporal_unit:
                temporal = temporal + _temporal_term(z1, z2)
            depth += 1
            z1, z2 = _max_pool_time(z1), _max_pool_time(z2)
            c1, c2 = (_max_pool_time(c1), _max_pool_time(c2)) if gathered else (z1, z2)
        return instance / depth, temporal / depth


def ts2vec_pyramid_losses(
    z1: Tensor,
    z2: Tensor,
    temporal_unit: int = 0,
    gather_distributed: bool = False,
    *,
    instance: bool = True,
    temporal: bool = True,
) -> tuple[Tensor, Tensor]:
    """The instance and temporal losses summed over TS2Vec's max-pool-by-2 pyramid, each divided by its depth.

    Walks the pyramid as TS2Vec's ``hierarchical_contrastive_loss``: while ``T > 1``, add the instance
    loss, add the temporal loss if the depth ``d >= temporal_unit``, then max-pool time by 2 (an odd last
    step is dropped); at the final ``T == 1`` scale add the instance loss only. Both sums are divided by
    the number of scales ``d`` (TS2Vec's divisor, shared by the two terms), so
    ``alpha * instance + (1 - alpha) * temporal`` is TS2Vec's hierarchical loss exactly.

    Args:
        z1: ``(B, T, D)``, first view.
        z2: ``(B, T, D)``, second view, aligned with ``z1`` in time.
        temporal_unit: the first depth at which the temporal loss is computed (0: every scale).
        gather_distributed: instance-loss negatives also from other ranks (one collective for the
            whole pyramid; every rank must have the same ``T`` and ``D``).
        instance: compute the instance loss; if False it is not computed (no similarity matrices, no
            collective) and a zero connected to ``z1, z2`` is returned in its place.
        temporal: the same for the temporal loss. The divisor ``d`` does not depend on these flags, so an
            enabled term has the same value either way.

    Returns:
        ``(instance_loss, temporal_loss)``, two scalar tensors.
    """
    _check_views(z1, z2)
    _check_temporal_unit(temporal_unit)
    return _pyramid(
        z1, z2, temporal_unit, gather_distributed, with_instance=bool(instance), with_temporal=bool(temporal)
    )


def ts2vec_hierarchical_loss(
    z1: Tensor, z2: Tensor, alpha: float = 0.5, temporal_unit: int = 0, gather_distributed: bool = False
) -> Tensor:
    """TS2Vec's hierarchical contrastive loss: ``alpha * instance + (1 - alpha) * temporal`` over the pyramid.

    A term whose weight is 0 is not computed (as TS2Vec). See :func:`ts2vec_pyramid_losses`.

    Args:
        z1: ``(B, T, D)``, first view.
        z2: ``(B, T, D)``, second view, aligned with ``z1`` in time.
        alpha: weight of the instance loss, in ``[0, 1]``.
        temporal_unit: the first depth at which the temporal loss is computed.
        gather_distributed: instance-loss negatives also from other ranks.

    Returns:
        Scalar tensor.
    """
    _check_views(z1, z2)
    _check_alpha(alpha)
    _check_temporal_unit(temporal_unit)
    instance, temporal = _pyramid(
        z1, z2, temporal_unit, gather_distributed, with_instance=alpha != 0, with_temporal=alpha != 1
    )
    return alpha * instance + (1 - alpha) * temporal


class TS2VecLoss(nn.Module):
    """:func:`ts2vec_hierarchical_loss` with its settings.

    ``forward(z1: (B, T, D), z2: (B, T, D)) -> scalar``.
    """

    def __init__(self, alpha: float = 0.5, temporal_unit: int = 0, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_alpha(alpha)
        _check_temporal_unit(temporal_unit)
        self.alpha = alpha
        self.temporal_unit = temporal_unit
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return ts2vec_hierarchical_loss(z1, z2, self.alpha, self.temporal_unit, self.gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, temporal_unit={self.temporal_unit}, "
            f"gather_distributed={self.gather_distributed}"
        )
