"""InfoNCE over explicit (anchor, positive) pairs of queries and momentum keys, with group-masked negatives.

Participant contrast (Abbaspourazad et al., ICLR 2024) pairs two segments of one participant: the query
of one (online encoder) must pick out the key of the other (momentum encoder) among the keys of *other
participants*. In a batch that holds more than two segments of a participant, the keys of that
participant's other segments are neither the positive nor true negatives, so they are left out of the
softmax: every key whose group equals the anchor's group, except the positive itself, is masked.
Groups are participant codes for participant-level positives, and segment codes for segment-level ones
(then only the anchor's own key is masked and every other segment is a negative, as in SimCLR/MoCo).

Bidirectional (MoCo v3's symmetrised loss, ``ctr(q1, k2) + ctr(q2, k1)``): pass each pair twice, once in
each direction (``anchors = cat(a, b)``, ``positives = cat(b, a)``); the loss is the mean over anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl import dist
from medcl.losses._common import _check_pair, _check_temperature, _full_precision, _prepare, _settings_repr

__all__ = ["PairedInfoNCELoss", "paired_info_nce_loss"]


def _check_index(name: str, index: Tensor, n: int) -> None:
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"{name} holds row indices outside 0..{n - 1}")


def paired_info_nce_loss(
    query: Tensor,
    key: Tensor,
    anchors: Tensor,
    positives: Tensor,
    groups: Tensor,
    temperature: float = 0.04,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> Tensor:
    """Mean over anchors ``a`` of ``-log softmax_{c ∈ C(a)}(s(q_a, k_c) / τ)[p(a)]``.

    ``C(a)`` holds every key (of every rank with ``gather_distributed``) whose group differs from the
    anchor's, plus the anchor's positive key ``p(a)``. Similarities are cosine (``normalize=True``) or dot
    products; the softmax is a cross-entropy over masked logits (``-inf``), never ``exp()/sum``.

    Args:
        query: ``(N, D)`` online embeddings of this rank's samples.
        key: ``(N, D)`` momentum embeddings of the same samples (row ``i`` = sample ``i``); gathered with
            autograd only if it requires grad (a momentum encoder's keys do not).
        anchors: ``(P,)`` rows of ``query`` that are anchors.
        positives: ``(P,)`` the row of ``key`` that is each anchor's positive (never the anchor's own
            row for participant-level pairs; the caller guarantees its group equals the anchor's).
        groups: ``(N,)`` integer group of every sample (participant or segment codes; the same codes on
            every rank).
        temperature: softmax temperature τ > 0 (the paper: 0.04).
        normalize: L2-normalise first.
        gather_distributed: keys and groups of every rank are candidates.

    Returns:
        Scalar tensor; a zero still connected to ``query`` when there is no anchor (so backward and DDP
        work on a batch without pairs).
    """
    _check_temperature(temperature)
    _check_pair(query, key, "query", "key")
    n = query.shape[0]
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
    if anchors.shape != positives.shape:
        raise ValueError(
            f"anchors and positives must have the same shape, got {tuple(anchors.shape)} and "
            f"{tuple(positives.shape)}"
        )
    _check_index("anchors", anchors, n)
    _check_index("positives", positives, n)
    with _full_precision(query.device):
        query = _prepare(query, normalize, "query")
        key = _prepare(key, normalize, "key")
        groups = groups.to(query.device)
        if gather_distributed and dist.is_distributed():
            sizes = dist.gather_sizes(n, query.device)
            candidates = dist.gather(key, sizes) if key.requires_grad else dist.gather_no_grad(key, sizes)
            candidate_groups = dist.gather_no_grad(groups, sizes)
            offset = dist.local_offset(n, sizes)
        else:
            candidates, candidate_groups, offset = key, groups, 0
        if anchors.numel() == 0:
            return query.sum() * 0.0
        anchors = anchors.to(query.device).long()
        targets = positives.to(query.device).long() + offset
        logits = (query[anchors] / temperature) @ candidates.T  # (P, M)
        same_group = groups[anchors][:, None] == candidate_groups[None, :]
        same_group[torch.arange(len(anchors), device=logits.device), targets] = False
        return F.cross_entropy(logits.masked_fill(same_group, float("-inf")), targets)


class PairedInfoNCELoss(nn.Module):
    """:func:`paired_info_nce_loss` with its settings;
    ``forward(query (N, D), key (N, D), anchors (P,), positives (P,), groups (N,)) -> scalar``."""

    def __init__(
        self, temperature: float = 0.04, normalize: bool = True, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.normalize = normalize
        self.gather_distributed = gather_distributed

    def forward(
        self, query: Tensor, key: Tensor, anchors: Tensor, positives: Tensor, groups: Tensor
    ) -> Tensor:
        return paired_info_nce_loss(
            query, key, anchors, positives, groups, self.temperature, self.normalize, self.gather_distributed
        )

    def extra_repr(self) -> str:
        return _settings_repr(self, "temperature", "normalize", "gather_distributed")
