"""TS2Vec losses against a re-statement of TS2Vec's tril/triu code and against loops over anchors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import (
    TS2VecLoss,
    ts2vec_hierarchical_loss,
    ts2vec_instance_loss,
    ts2vec_pyramid_losses,
    ts2vec_temporal_loss,
)

F64 = torch.float64


# --- reference 1: TS2Vec's implementation, re-stated (zhihanyue/ts2vec, models/losses.py) ------------


def tril_triu_instance(z1: Tensor, z2: Tensor) -> Tensor:
    b = z1.shape[0]
    if b == 1:
        return z1.new_tensor(0.0)
    z = torch.cat([z1, z2], dim=0).transpose(0, 1)  # T x 2B x D
    sim = z @ z.transpose(1, 2)
    logits = (
        torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]
    )  # drop the diagonal
    neg_log_prob = -F.log_softmax(logits, dim=-1)
    i = torch.arange(b)
    return (neg_log_prob[:, i, b + i - 1].mean() + neg_log_prob[:, b + i, i].mean()) / 2


def tril_triu_temporal(z1: Tensor, z2: Tensor) -> Tensor:
    t = z1.shape[1]
    if t == 1:
        return z1.new_tensor(0.0)
    z = torch.cat([z1, z2], dim=1)  # B x 2T x D
    sim = z @ z.transpose(1, 2)
    logits = torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]
    neg_log_prob = -F.log_softmax(logits, dim=-1)
    s = torch.arange(t)
    return (neg_log_prob[:, s, t + s - 1].mean() + neg_log_prob[:, t + s, s].mean()) / 2


def tril_triu_hierarchical(z1: Tensor, z2: Tensor, alpha: float, temporal_unit: int) -> Tensor:
    loss = torch.tensor(0.0, dtype=z1.dtype)
    d = 0
    while z1.size(1) > 1:
        if alpha != 0:
            loss = loss + alpha * tril_triu_instance(z1, z2)
        if d >= temporal_unit and 1 - alpha != 0:
            loss = loss + (1 - alpha) * tril_triu_temporal(z1, z2)
        d += 1
        z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
    if z1.size(1) == 1:
        if alpha != 0:
            loss = loss + alpha * tril_triu_instance(z1, z2)
        d += 1
    return loss / d


# --- reference 2: loops over anchors, from the paper's definitions -----------------------------------


def _dot(u: Tensor, v: Tensor) -> float:
    return sum(float(a) * float(b) for a, b in zip(u, v, strict=True))


def _neg_log_softmax(logits: list[float], index: int) -> float:
    top = max(logits)
    return top + math.log(sum(math.exp(v - top) for v in logits)) - logits[index]


def loop_instance(z1: Tensor, z2: Tensor) -> float:
    """At time t, anchor r_{i,t}: positive r'_{i,t}, negatives all other samples' r and r' at t."""
    b, t, _ = z1.shape
    if b == 1:
        return 0.0
    views = [z1, z2]
    total = 0.0
    for time in range(t):
        for view in range(2):
            for i in range(b):
                anchor = views[view][i, time]
                candidates = [(w, j) for w in range(2) for j in range(b) if (w, j) != (view, i)]
                logits = [_dot(anchor, views[w][j, time]) for w, j in candidates]
                total += _neg_log_softmax(logits, candidates.index((1 - view, i)))
    return total / (2 * b * t)


def loop_temporal(z1: Tensor, z2: Tensor) -> float:
    """In sample i, anchor r_{i,t}: positive r'_{i,t}, negatives r and r' of sample i at other times."""
    b, t, _ = z1.shape
    if t == 1:
        return 0.0
    views = [z1, z2]
    total = 0.0
    for i in range(b):
        for view in range(2):
            for time in range(t):
                anchor = views[view][i, time]
                candidates = [(w, s) for w in range(2) for s in range(t) if (w, s) != (view, time)]
                logits = [_dot(anchor, views[w][i, s]) for w, s in candidates]
                total += _neg_log_softmax(logits, candidates.index((1 - view, time)))
    return total / (2 * b * t)


def _views(b: int, t: int, d: int, seed: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, t, d, generator=g, dtype=F64) * scale
    return z1, z1 + 0.5 * scale * torch.randn(b, t, d, generator=g, dtype=F64)


# --- one scale -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "t"), [(1, 3), (2, 1), (2, 4), (4, 3), (5, 6)])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_instance_matches_both_references(b: int, t: int, scale: float) -> None:
    z1, z2 = _views(b, t, 3, seed=b * 10 + t, scale=scale)
    got = ts2vec_instance_loss(z1, z2)
    torch.testing.assert_close(got, tril_triu_instance(z1, z2), atol=1e-10, rtol=0)
    assert got.item() == pytest.approx(loop_instance(z1, z2), abs=1e-10, rel=0)


@pytest.mark.parametrize(("b", "t"), [(1, 1), (1, 5), (3, 2), (2, 7), (3, 6)])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_temporal_matches_both_references(b: int, t: int, scale: float) -> None:
    z1, z2 = _views(b, t, 3, seed=b * 10 + t, scale=scale)
    got = ts2vec_temporal_loss(z1, z2)
    torch.testing.assert_close(got, tril_triu_temporal(z1, z2), atol=1e-10, rtol=0)
    assert got.item() == pytest.approx(loop_temporal(z1, z2), abs=1e-10, rel=0)


@pytest.mark.parametrize("b", [1, 2, 6])
def test_instance_all_equal_is_log_2b_minus_1(b: int) -> None:
    z = torch.full((b, 4, 3), 0.7, dtype=F64)
    assert ts2vec_instance_loss(z, z.clone()).item() == pytest.approx(math.log(2 * b - 1), abs=1e-12)


@pytest.mark.parametrize("t", [1, 2, 9])
def test_temporal_all_equal_is_log_2t_minus_1(t: int) -> None:
    z = torch.full((3, t, 2), -0.4, dtype=F64)
    assert ts2vec_temporal_loss(z, z.clone()).item() == pytest.approx(math.log(2 * t - 1), abs=1e-12)


def test_degenerate_sizes_give_a_connected_zero() -> None:
    z1, z2 = _views(1, 4, 3, seed=1)
    z1.requires_grad_()
    loss = ts2vec_instance_loss(z1, z2)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(z1.grad, torch.zeros_like(z1))
    y1, y2 = _views(3, 1, 3, seed=2)
    y1.requires_grad_()
    loss = ts2vec_temporal_loss(y1, y2)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(y1.grad, torch.zeros_like(y1))


# --- the pyramid ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temporal_unit", [0, 1, 3])
def test_hierarchical_matches_ts2vec(t: int, alpha: float, temporal_unit: int) -> None:
    z1, z2 = _views(3, t, 4, seed=t)
    expected = tril_triu_hierarchical(z1, z2, alpha, temporal_unit)
    got = ts2vec_hierarchical_loss(z1, z2, alpha=alpha, temporal_unit=temporal_unit)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    instance, temporal = ts2vec_pyramid_losses(z1, z2, temporal_unit=temporal_unit)
    torch.testing.assert_close(alpha * instance + (1 - alpha) * temporal, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(TS2VecLoss(alpha, temporal_unit)(z1, z2), expected, atol=1e-10, rtol=0)


def test_pyramid_terms_are_divided_by_the_number_of_scales() -> None:
    # T = 6 -> 3 -> 1: three scales; temporal at the first two.
    z1, z2 = _views(2, 6, 3, seed=42)
    pooled = [(z1, z2)]
    for _ in range(2):
        a, b = pooled[-1]
        pooled.append(tuple(F.max_pool1d(x.transpose(1, 2), 2).transpose(1, 2) for x in (a, b)))
    assert [a.shape[1] for a, _ in pooled] == [6, 3, 1]
    instance, temporal = ts2vec_pyramid_losses(z1, z2)
    assert instance.item() == pytest.approx(sum(loop_instance(a, b) for a, b in pooled) / 3, abs=1e-10)
    assert temporal.item() == pytest.approx(sum(loop_temporal(a, b) for a, b in pooled[:2]) / 3, abs=1e-10)


# --- gradients, precision, settings ----------------------------------------------------------------


def test_gradcheck() -> None:
    z1, z2 = _views(3, 5, 2, seed=7)
    z1.requires_grad_()
    z2.requires_grad_()
    assert torch.autograd.gradcheck(ts2vec_instance_loss, (z1, z2))
    assert torch.autograd.gradcheck(ts2vec_temporal_loss, (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: ts2vec_hierarchical_loss(a, b, alpha=0.3), (z1, z2))


def test_gradients_match_ts2vec() -> None:
    z1, z2 = _views(4, 11, 5, seed=8)
    ours = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
    theirs = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
    ts2vec_hierarchical_loss(*ours, alpha=0.4, temporal_unit=1).backward()
    tril_triu_hierarchical(*theirs, alpha=0.4, temporal_unit=1).backward()
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad, atol=1e-12, rtol=0)


def test_large_raw_dot_products_stay_finite() -> None:
    z1, z2 = _views(4, 8, 16, seed=9, scale=30.0)  # dot products of order 1e4
    z1 = z1.float().requires_grad_()
    z2 = z2.float()
    loss = ts2vec_hierarchical_loss(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1.0
    assert torch.isfinite(z1.grad).all()


def test_bfloat16_inputs() -> None:
    z1, z2 = _views(4, 16, 8, seed=10, scale=0.5)
    z1, z2 = z1.float(), z2.float()
    half = ts2vec_hierarchical_loss(z1.bfloat16(), z2.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ts2vec_hierarchical_loss(z1.bfloat16().float(), z2.bfloat16().float()))
    torch.testing.assert_close(half, ts2vec_hierarchical_loss(z1, z2), atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ts2vec_hierarchical_loss(z1, z2)
    torch.testing.assert_close(under_autocast, ts2vec_hierarchical_loss(z1, z2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        TS2VecLoss(alpha=alpha)
    z1, z2 = _views(2, 4, 3, seed=0)
    with pytest.raises(ConfigError, match="alpha"):
        ts2vec_hierarchical_loss(z1, z2, alpha=alpha)


@pytest.mark.parametrize("temporal_unit", [-1, 1.5])
def test_rejects_bad_temporal_unit(temporal_unit: int) -> None:
    with pytest.raises(ConfigError, match="temporal_unit"):
        TS2VecLoss(temporal_unit=temporal_unit)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ts2vec_instance_loss(torch.randn(2, 4, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"\(batch, time, dim\)"):
        ts2vec_temporal_loss(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="empty"):
        ts2vec_hierarchical_loss(torch.randn(2, 0, 3), torch.randn(2, 0, 3))
