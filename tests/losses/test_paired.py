"""Paired InfoNCE (participant contrast's loss): a slow loop, closed forms, masking, and 2 real ranks."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses.paired import PairedInfoNCELoss, paired_info_nce_loss

F64 = torch.float64


def reference(
    query: Tensor,
    key: Tensor,
    anchors: Tensor,
    positives: Tensor,
    groups: Tensor,
    tau: float,
    normalize: bool,
) -> float:
    """Mean over anchors of -log(e^{s(q_a,k_p)/τ} / Σ_{c: g_c ≠ g_a or c = p} e^{s(q_a,k_c)/τ}), by loops."""
    q = [[float(v) for v in row] for row in query]
    k = [[float(v) for v in row] for row in key]
    if normalize:
        q = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in q]
        k = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in k]
    total = 0.0
    for a, p in zip(anchors.tolist(), positives.tolist(), strict=True):
        scores = {}
        for c in range(len(k)):
            if groups[c] != groups[a] or c == p:
                scores[c] = sum(x * y for x, y in zip(q[a], k[c], strict=True)) / tau
        top = max(scores.values())
        log_denominator = top + math.log(sum(math.exp(s - top) for s in scores.values()))
        total += log_denominator - scores[p]
    return total / len(anchors)


def _layout(seed: int, n: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Groups of a batch and bidirectional pairs inside the groups."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 4, (n,), generator=g)
    first, second = [], []
    for group in groups.unique():
        members = torch.nonzero(groups == group).flatten()[
            torch.randperm(int((groups == group).sum()), generator=g)
        ]
        for i in range(0, len(members) - 1, 2):
            first.append(int(members[i]))
            second.append(int(members[i + 1]))
    first_t, second_t = torch.tensor(first), torch.tensor(second)
    return groups, torch.cat([first_t, second_t]), torch.cat([second_t, first_t])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.04, 0.5])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_the_loop(seed: int, tau: float, normalize: bool) -> None:
    groups, anchors, positives = _layout(seed)
    g = torch.Generator().manual_seed(100 + seed)
    query = torch.randn(10, 5, generator=g, dtype=F64)
    key = torch.randn(10, 5, generator=g, dtype=F64)
    got = paired_info_nce_loss(query, key, anchors, positives, groups, temperature=tau, normalize=normalize)
    expected = reference(query, key, anchors, positives, groups, tau, normalize)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_equal_keys_give_log_of_the_candidate_count() -> None:
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    anchors, positives = torch.tensor([0, 1, 3, 5]), torch.tensor([1, 2, 4, 6])
    query = torch.randn(8, 3, dtype=F64)
    key = torch.ones(8, 3, dtype=F64)
    # candidates: 8 keys minus the anchor's group, plus the positive
    counts = [8 - 3 + 1, 8 - 3 + 1, 8 - 2 + 1, 8 - 2 + 1]
    expected = sum(math.log(c) for c in counts) / 4
    got = paired_info_nce_loss(query, key, anchors, positives, groups, temperature=0.1)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_same_group_keys_other_than_the_positive_do_not_matter() -> None:
    g = torch.Generator().manual_seed(4)
    query, key = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    moved = key.clone()
    moved[2] = 10 * query[0]  # anchor 0's best match, in the key of row 2
    anchor, positive = torch.tensor([0]), torch.tensor([1])
    same = torch.tensor([0, 0, 0, 1, 1])  # row 2 is participant 0's third segment: left out
    other = torch.tensor([0, 0, 2, 1, 1])  # row 2 is another participant: a negative
    loss = paired_info_nce_loss(query, key, anchor, positive, same)
    assert paired_info_nce_loss(query, moved, anchor, positive, same).item() == pytest.approx(
        loss.item(), abs=1e-12
    )
    assert paired_info_nce_loss(query, moved, anchor, positive, other).item() > loss.item() + 1.0


def test_bidirectional_is_the_mean_of_both_directions() -> None:
    groups, anchors, positives = _layout(5)
    half = len(anchors) // 2
    query, key = torch.randn(10, 5, dtype=F64), torch.randn(10, 5, dtype=F64)
    both = paired_info_nce_loss(query, key, anchors, positives, groups)
    forward = paired_info_nce_loss(query, key, anchors[:half], positives[:half], groups)
    backward = paired_info_nce_loss(query, key, anchors[half:], positives[half:], groups)
    assert both.item() == pytest.approx(0.5 * (forward.item() + backward.item()), abs=1e-12)


def test_gradients_reach_queries_only_through_a_momentum_key_and_match_gradcheck() -> None:
    groups, anchors, positives = _layout(3)
    query = torch.randn(10, 4, dtype=F64, requires_grad=True)
    key = torch.randn(10, 4, dtype=F64)
    loss = paired_info_nce_loss(query, key, anchors, positives, groups)
    loss.backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()
    not_anchor = torch.ones(10, dtype=torch.bool)
    not_anchor[anchors] = False
    assert torch.all(query.grad[not_anchor] == 0)  # a query that is no anchor gets no gradient
    assert torch.autograd.gradcheck(
        lambda q: paired_info_nce_loss(q, key, anchors, positives, groups, temperature=0.2),
        (torch.randn(10, 4, dtype=F64, requires_grad=True),),
    )


def test_no_anchor_is_a_connected_zero() -> None:
    query = torch.randn(4, 3, requires_grad=True)
    loss = paired_info_nce_loss(
        query,
        torch.randn(4, 3),
        torch.tensor([], dtype=torch.long),
        torch.tensor([], dtype=torch.long),
        torch.arange(4),
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(query.grad, torch.zeros(4, 3))


def test_wrapper_and_errors() -> None:
    groups, anchors, positives = _layout(0)
    query, key = torch.randn(10, 5, dtype=F64), torch.randn(10, 5, dtype=F64)
    assert PairedInfoNCELoss(0.3)(query, key, anchors, positives, groups).item() == pytest.approx(
        paired_info_nce_loss(query, key, anchors, positives, groups, temperature=0.3).item()
    )
    with pytest.raises(ConfigError, match="temperature"):
        PairedInfoNCELoss(0.0)
    with pytest.raises(ValueError, match="outside"):
        paired_info_nce_loss(query, key, torch.tensor([0]), torch.tensor([10]), groups)
    with pytest.raises(ValueError, match="same shape"):
        paired_info_nce_loss(query, key, torch.tensor([0, 1]), torch.tensor([1]), groups)
    with pytest.raises(ValueError, match="groups"):
        paired_info_nce_loss(query, key, anchors, positives, groups[:3])


# --- 2 real ranks: gathered keys give each rank the loss of its anchors against the whole batch --------

GROUPS = torch.tensor([0, 0, 1, 1, 2, 3, 2, 3])  # rank 0 holds rows 0-3, rank 1 rows 4-7
PAIRS = [(0, 1), (2, 3), (4, 6), (5, 7)]


def _tensors() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(9)
    return torch.randn(8, 5, generator=g, dtype=F64), torch.randn(8, 5, generator=g, dtype=F64)


def _local_pairs(rank: int) -> tuple[Tensor, Tensor]:
    lo = 4 * rank
    local = [(a - lo, b - lo) for a, b in PAIRS if lo <= a < lo + 4]
    first = torch.tensor([a for a, _ in local] + [b for _, b in local])
    second = torch.tensor([b for _, b in local] + [a for a, _ in local])
    return first, second


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    query, key = _tensors()
    q = query[4 * rank : 4 * rank + 4].clone().requires_grad_(True)
    anchors, positives = _local_pairs(rank)
    loss = paired_info_nce_loss(
        q,
        key[4 * rank : 4 * rank + 4],
        anchors,
        positives,
        GROUPS[4 * rank : 4 * rank + 4],
        gather_distributed=True,
    )
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": q.grad}, Path(out_dir) / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


def test_two_ranks_see_every_key(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    query, key = _tensors()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        anchors, positives = _local_pairs(rank)
        q = query.clone().requires_grad_(True)
        expected = paired_info_nce_loss(q, key, anchors + 4 * rank, positives + 4 * rank, GROUPS)
        expected.backward()
        assert got["loss"].item() == pytest.approx(expected.item(), abs=1e-12)
        torch.testing.assert_close(got["grad"], q.grad[4 * rank : 4 * rank + 4], rtol=0, atol=1e-12)
