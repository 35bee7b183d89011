"""Everything distributed in one module: rank queries and autograd-aware all-gather along the batch.

Contrastive losses want negatives from every rank. :func:`gather` collects a tensor from all ranks along
dim 0, in rank order, and keeps the autograd graph: in the backward pass each rank receives the **sum**
over all ranks of the gradients that the ranks' losses put on its rows (a reduce-scatter). That sum is
what data-parallel training needs:

* rank ``r`` computes ``L_r`` (the mean over its local anchors) against candidates from all ranks, so
  ``L_r`` depends on the embeddings of every rank;
* the quantity DDP optimises is ``L = (1/W) Σ_r L_r`` (DDP *averages* parameter gradients over the ``W``
  ranks), which equals the loss of one process on the whole batch when local batches have equal size;
* rank ``s`` owns the encoder pass that produced its rows ``z_s``, so it must back-propagate
  ``Σ_r ∂L_r/∂z_s`` through its encoder; DDP then sums those parameter gradients over ``s`` and divides
  by ``W``, giving exactly ``∂L/∂θ``.

Gathering without autograd (``all_gather`` on a detached tensor) silently drops every term with
``r ≠ s``: the run trains, but on a different objective. ``tests/test_dist.py`` checks that 2 CPU ranks
end with the parameters of 1 process trained on the whole batch, and that the detached gather does not.

Ranks may hold different numbers of rows (the last batch of an epoch, a grouped sampler): every gather
first exchanges the row counts (one extra collective of one integer per rank), pads the local rows to the
largest count, gathers, and trims the padding. Callers that gather several tensors with the same row
count can exchange the counts once with :func:`gather_sizes` and pass them on.

With unequal local sizes, DDP's average of per-rank means weights each rank equally rather than each
anchor, so the objective differs slightly from the single-process mean; that is a weighting choice of
data-parallel training, not a gradient error.

Outside ``torch.distributed`` (not available, or no process group initialised) every function behaves as
the single process it is: ``gather`` returns its input, ``world_size() == 1``, ``rank() == 0``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as torch_dist
from torch import Tensor

__all__ = [
    "gather",
    "gather_no_grad",
    "gather_sizes",
    "is_distributed",
    "local_offset",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (and so collectives are needed)."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """The number of ranks, 1 outside ``torch.distributed``."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank, 0 outside ``torch.distributed``."""
    return torch_dist.get_rank() if is_distributed() else 0


def _collective_device() -> torch.device:
    """The device the default process group's collectives need: the current GPU for NCCL, else CPU."""
    if "nccl" in str(torch_dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_sizes(n_local: int, device: torch.device | None = None) -> list[int]:
    """The number of rows every rank holds, in rank order (one small all-gather).

    Args:
        n_local: the number of rows this rank holds.
        device: where the collective runs; by default the current GPU with NCCL, else CPU.

    Returns:
        ``[n_0, ..., n_{W-1}]``; ``[n_local]`` outside ``torch.distributed``.
    """
    if not is_distributed():
        return [int(n_local)]
    device = _collective_device() if device is None else device
    local = torch.tensor([int(n_local)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    torch_dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def local_offset(n_local: int, sizes: Sequence[int] | None = None) -> int:
    """Index of this rank's first row in a tensor gathered with :func:`gather` / :func:`gather_no_grad`.

    Args:
        n_local: the number of rows this rank holds.
        sizes: the rows of every rank, from :func:`gather_sizes`; exchanged here (one collective) if
            not given.

    Returns:
        ``sum(sizes[:rank()])``; 0 outside ``torch.distributed``.
    """
    if not is_distributed():
        return 0
    sizes = gather_sizes(n_local) if sizes is None else sizes
    _check_sizes(n_local, sizes)
    return int(sum(sizes[: rank()]))


def _check_sizes(n_local: int, sizes: Sequence[int]) -> None:
    if len(sizes) != world_size() or sizes[rank()] != n_local:
        raise ValueError(
            f"sizes {list(sizes)} do not match this rank ({rank()} of {world_size()}) "
            f"holding {n_local} rows; "
            "pass the list returned by gather_sizes() for this tensor's batch"
        )


def _pad_rows(x: Tensor, n_rows: int) -> Tensor:
    """``x`` with zero rows appended up to ``n_rows`` (differentiable)."""
    if x.shape[0] == n_rows:
        return x
    padding = x.new_zeros((n_rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, padding], dim=0)


def _all_gather_autograd(x: Tensor) -> tuple[Tensor, ...]:
    """``torch.distributed.nn.functional.all_gather``: backward sums the gradients onto each rank's rows.

    Recent torch releases mark this function deprecated in favour of the private
    ``torch.distributed._functional_collectives`` API, whose autograd support has changed between
    releases; we keep the stable public one (same semantics across every torch we support) and silence
    only its deprecation notice. It cannot run inside ``torch.compile``: compile the encoder, not the loss.
    """
    import torch.distributed.nn.functional as dist_nn

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*", category=FutureWarning)
        return dist_nn.all_gather(x.contiguous())


def gather(x: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """All-gather ``x`` along dim 0 from every rank, in rank order, keeping the autograd graph.

    The backward pass reduce-scatters: this rank's rows receive the sum of the gradients that every
    rank's loss put on them (see the module docstring for why that is right under DDP). Ranks may hold
    different numbers of rows.

    Args:
        x: ``(n_local, *rest)``, the same ``rest`` shape and dtype on every rank, on the device of the
            process group's backend (GPU for NCCL).
        sizes: the rows of every rank, from :func:`gather_sizes`; exchanged here (one small extra
            collective) if not given.

    Returns:
        ``(sum(sizes), *rest)``; ``x`` itself outside ``torch.distributed``.
    """
    if not is_distributed():
        return x
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else sizes
    _check_sizes(x.shape[0], sizes)
    n_max = max(sizes)
    parts = _all_gather_autograd(_pad_rows(x, n_max))
    if all(n == n_max for n in sizes):
        return torch.cat(parts, dim=0)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def gather_no_grad(x: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """All-gather ``x`` along dim 0 without autograd: for ids, labels and other integer tensors.

    Args:
        x: ``(n_local, *rest)``, the same ``rest`` shape and dtype on every rank, on the device of the
            process group's backend (GPU for NCCL).
        sizes: the rows of every rank, from :func:`gather_sizes`; exchanged here if not given.

    Returns:
        ``(sum(sizes), *rest)``, detached; ``x.detach()`` outside ``torch.distributed``.
    """
    if not is_distributed():
        return x.detach()
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else sizes
    _check_sizes(x.shape[0], sizes)
    n_max = max(sizes)
    padded = _pad_rows(x.detach(), n_max).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    torch_dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)
