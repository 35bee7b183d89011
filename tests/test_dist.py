"""medcl.dist: the autograd-aware gather, checked on 2 real CPU ranks (gloo) against 1 process.

One ``torch.multiprocessing.spawn`` runs every distributed scenario (spawning costs seconds); each rank
writes its results to a file in a temporary folder and the tests below compare them with the same
computations done in this process on the whole batch.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from medcl import dist
from medcl.losses import (
    info_nce_loss,
    multi_positive_info_nce_loss,
    nt_xent_loss,
    ts2vec_hierarchical_loss,
)

WORLD_SIZE = 2
N_GLOBAL = 8  # samples in the global batch; each rank holds half
STEPS = 3
LR = 0.5
# Sample ids of the global batch: rank 0 holds [0, 1, 2, 0], rank 1 holds [1, 2, 3, 3], so the
# positives of ids 1 and 2 are on the other rank.
IDS = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
UNEQUAL_SIZES = (3, 5)  # rows per rank in the unequal-batch checks


# --- data, model and the training loop shared by the ranks and the single-process reference --------


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1234)
    x_a = torch.randn(N_GLOBAL, 6, generator=g, dtype=torch.float64)
    x_b = x_a + 0.3 * torch.randn(N_GLOBAL, 6, generator=g, dtype=torch.float64)
    seq_a = torch.randn(N_GLOBAL, 5, 6, generator=g, dtype=torch.float64)
    seq_b = seq_a + 0.3 * torch.randn(N_GLOBAL, 5, 6, generator=g, dtype=torch.float64)
    return {"x_a": x_a, "x_b": x_b, "seq_a": seq_a, "seq_b": seq_b, "ids": IDS.clone()}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()


def _two_views(model: nn.Module, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass over both views (DDP expects one forward per backward)."""
    out = model(torch.cat([a, b]))
    return out[: a.shape[0]], out[a.shape[0] :]


def _loss(name: str, model: nn.Module, batch: dict[str, Tensor], gather: bool) -> Tensor:
    if name == "nt_xent":
        z_a, z_b = _two_views(model, batch["x_a"], batch["x_b"])
        return nt_xent_loss(z_a, z_b, temperature=0.5, gather_distributed=gather)
    if name == "multi_positive":
        z_a, z_b = _two_views(model, batch["x_a"], batch["x_b"])
        ids = torch.cat([batch["ids"], batch["ids"]])
        return multi_positive_info_nce_loss(
            torch.cat([z_a, z_b]), ids, temperature=0.1, gather_distributed=gather
        )
    if name == "info_nce_symmetric":
        q, k = _two_views(model, batch["x_a"], batch["x_b"])
        return info_nce_loss(q, k, temperature=0.1, symmetric=True, gather_distributed=gather)
    if name == "ts2vec":
        z1, z2 = _two_views(model, batch["seq_a"], batch["seq_b"])
        return ts2vec_hierarchical_loss(z1, z2, alpha=0.5, gather_distributed=gather)
    raise KeyError(name)


SCENARIOS = ("nt_xent", "multi_positive", "info_nce_symmetric", "ts2vec")


def _train(name: str, batch: dict[str, Tensor], ddp: bool) -> list[Tensor]:
    model = _model()
    trained: nn.Module = DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        _loss(name, trained, batch, gather=ddp).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _gather_without_autograd(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """The classic bug: candidates from other ranks gathered without a backward."""
    return dist.gather_no_grad(x, sizes)


# --- the worker ------------------------------------------------------------------------------------


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/init",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),  # a failing rank must not leave the other waiting forever
    )
    try:
        results: dict[str, object] = {
            "is_distributed": dist.is_distributed(),
            "world_size": dist.world_size(),
            "rank": dist.rank(),
        }
        data = _data()
        half = N_GLOBAL // WORLD_SIZE
        local = {key: value[rank * half : (rank + 1) * half] for key, value in data.items()}
        for name in SCENARIOS:
            results[f"params/{name}"] = _train(name, local, ddp=True)
        original_gather = dist.gather
        dist.gather = _gather_without_autograd  # type: ignore[assignment]
        try:
            results["params/nt_xent_detached"] = _train("nt_xent", local, ddp=True)
        finally:
            dist.gather = original_gather  # type: ignore[assignment]
        results.update(_unequal_checks(rank))
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        # Both ranks must be done communicating before either tears gloo down; otherwise the
        # slower rank's pending collective aborts its process (seen as SIGABRT, ~1 run in 8).
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def _unequal_rows(rank: int) -> slice:
    start = sum(UNEQUAL_SIZES[:rank])
    return slice(start, start + UNEQUAL_SIZES[rank])


def _unequal_global() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(99)
    n = sum(UNEQUAL_SIZES)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0, 3, 2, 3])


def _unequal_weights(rank: int) -> Tensor:
    return (rank + 1.0) * torch.arange(sum(UNEQUAL_SIZES) * 4, dtype=torch.float64).reshape(-1, 4)


def _unequal_checks(rank: int) -> dict[str, object]:
    """Gathers with 3 rows on rank 0 and 5 on rank 1."""
    x_all, ids_all = _unequal_global()
    rows = _unequal_rows(rank)
    out: dict[str, object] = {"sizes": dist.gather_sizes(UNEQUAL_SIZES[rank])}
    out["offset"] = dist.local_offset(UNEQUAL_SIZES[rank])

    x = x_all[rows].clone().requires_grad_()
    gathered = dist.gather(x)
    (gathered * _unequal_weights(rank)).sum().backward()
    out["gathered"] = gathered.detach()
    out["gather_grad"] = x.grad
    out["gathered_ids"] = dist.gather_no_grad(ids_all[rows])

    # A real loss with unequal local batches: rank r back-propagates loss_r * n_r / N, whose sum over ranks
    # is the global mean; the local input gradients must be the rows of the global gradient.
    n_total = sum(UNEQUAL_SIZES)
    for name, fn in _UNEQUAL_LOSSES.items():
        z = x_all[rows].clone().requires_grad_()
        loss = fn(z, ids_all[rows], True)
        (loss * UNEQUAL_SIZES[rank] / n_total).backward()
        out[f"loss/{name}"] = loss.detach()
        out[f"grad/{name}"] = z.grad
    return out


def _mp_loss(z: Tensor, ids: Tensor, gather: bool) -> Tensor:
    # Anchor count = rows, and every anchor has a positive (its other view), so per-rank means are
    # size-weighted pieces of the global mean.
    z2 = z.flip(-1) * 0.9
    return multi_positive_info_nce_loss(
        torch.cat([z, z2]), torch.cat([ids, ids]), 0.2, gather_distributed=gather
    )


def _nt_xent_rows(z: Tensor, ids: Tensor, gather: bool) -> Tensor:
    return nt_xent_loss(z, z.flip(-1) * 0.9 + 0.1, 0.3, gather_distributed=gather)


def _info_nce_rows(z: Tensor, ids: Tensor, gather: bool) -> Tensor:
    return info_nce_loss(z, z.roll(1, dims=-1), 0.2, symmetric=True, gather_distributed=gather)


def _ts2vec_rows(z: Tensor, ids: Tensor, gather: bool) -> Tensor:
    seq = z[:, None, :] * torch.linspace(0.5, 1.5, 3, dtype=z.dtype)[None, :, None]  # (n, 3, 4)
    return ts2vec_hierarchical_loss(seq, seq.flip(-1), alpha=0.5, gather_distributed=gather)


_UNEQUAL_LOSSES: dict[str, Callable[[Tensor, Tensor, bool], Tensor]] = {
    "multi_positive": _mp_loss,
    "nt_xent": _nt_xent_rows,
    "info_nce_symmetric": _info_nce_rows,
    "ts2vec": _ts2vec_rows,
}


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD_SIZE, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def test_rank_queries_inside_a_process_group(rank_results: list[dict[str, object]]) -> None:
    for r, results in enumerate(rank_results):
        assert results["is_distributed"] is True
        assert results["world_size"] == WORLD_SIZE
        assert results["rank"] == r


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_ranks_train_like_one_process(rank_results: list[dict[str, object]], name: str) -> None:
    expected = _train(name, _data(), ddp=False)
    for results in rank_results:
        got = results[f"params/{name}"]
        assert len(got) == len(expected)
        for p_got, p_expected in zip(got, expected, strict=True):
            torch.testing.assert_close(p_got, p_expected, atol=1e-10, rtol=0)
    # The parameters moved, so the comparison above is not between two untouched initialisations.
    initial = [p.detach() for p in _model().parameters()]
    assert max((p - q).abs().max().item() for p, q in zip(expected, initial, strict=True)) > 1e-3


def test_gather_without_autograd_trains_differently(rank_results: list[dict[str, object]]) -> None:
    expected = _train("nt_xent", _data(), ddp=False)
    got = rank_results[0]["params/nt_xent_detached"]
    difference = max((p - q).abs().max().item() for p, q in zip(got, expected, strict=True))
    assert difference > 1e-4


def test_gather_unequal_sizes(rank_results: list[dict[str, object]]) -> None:
    x_all, ids_all = _unequal_global()
    expected_grad = sum(_unequal_weights(r) for r in range(WORLD_SIZE))
    for r, results in enumerate(rank_results):
        assert results["sizes"] == list(UNEQUAL_SIZES)
        assert results["offset"] == sum(UNEQUAL_SIZES[:r])
        torch.testing.assert_close(results["gathered"], x_all, atol=0, rtol=0)
        torch.testing.assert_close(results["gathered_ids"], ids_all, atol=0, rtol=0)
        # Backward sums every rank's gradient onto this rank's rows.
        torch.testing.assert_close(results["gather_grad"], expected_grad[_unequal_rows(r)], atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(_UNEQUAL_LOSSES))
def test_losses_with_unequal_local_batches(rank_results: list[dict[str, object]], name: str) -> None:
    x_all, ids_all = _unequal_global()
    z = x_all.clone().requires_grad_()
    global_loss = _UNEQUAL_LOSSES[name](z, ids_all, False)
    global_loss.backward()
    n_total = sum(UNEQUAL_SIZES)
    weighted = sum(rank_results[r][f"loss/{name}"] * UNEQUAL_SIZES[r] / n_total for r in range(WORLD_SIZE))
    torch.testing.assert_close(weighted, global_loss.detach(), atol=1e-10, rtol=0)
    for r, results in enumerate(rank_results):
        torch.testing.assert_close(results[f"grad/{name}"], z.grad[_unequal_rows(r)], atol=1e-10, rtol=0)


def test_single_process_is_the_identity() -> None:
    assert not dist.is_distributed()
    assert (dist.world_size(), dist.rank()) == (1, 0)
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.gather(x) is x
    gathered_ids = dist.gather_no_grad(x)
    assert not gathered_ids.requires_grad
    torch.testing.assert_close(gathered_ids, x.detach())
    assert dist.gather_sizes(3) == [3]
    assert dist.local_offset(3) == 0
    assert math.isclose(nt_xent_loss(x, x * 2, gather_distributed=True).item(), nt_xent_loss(x, x * 2).item())
