"""NT-Xent, InfoNCE, multi-positive InfoNCE and SupCon against slow loop implementations of the papers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import (
    InfoNCELoss,
    MultiPositiveInfoNCELoss,
    NTXentLoss,
    SupConLoss,
    info_nce_loss,
    multi_positive_info_nce_loss,
    nt_xent_loss,
    supcon_loss,
)

F64 = torch.float64


# --- slow references: plain loops over anchors, Python floats ---------------------------------------


def _similarity(u: Tensor, v: Tensor, normalize: bool) -> float:
    dot = sum(float(a) * float(b) for a, b in zip(u, v, strict=True))
    if not normalize:
        return dot
    return dot / (math.sqrt(sum(float(a) ** 2 for a in u)) * math.sqrt(sum(float(b) ** 2 for b in v)))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def reference_nt_xent(z_a: Tensor, z_b: Tensor, tau: float, normalize: bool) -> float:
    """SimCLR, Algorithm 1: ℓ(i, j) = -log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), averaged over all 2N anchors."""
    z = list(z_a) + list(z_b)
    n = len(z_a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        logits = [_similarity(z[i], z[k], normalize) / tau for k in range(2 * n) if k != i]
        total += _log_sum_exp(logits) - _similarity(z[i], z[positive], normalize) / tau
    return total / (2 * n)


def reference_info_nce(q: Tensor, k: Tensor, tau: float, normalize: bool, symmetric: bool) -> float:
    def one_direction(anchors: Tensor, keys: Tensor) -> float:
        total = 0.0
        for i in range(len(anchors)):
            logits = [_similarity(anchors[i], keys[j], normalize) / tau for j in range(len(keys))]
            total += _log_sum_exp(logits) - logits[i]
        return total / len(anchors)

    forward = one_direction(q, k)
    return 0.5 * (forward + one_direction(k, q)) if symmetric else forward


def reference_multi_positive(z: Tensor, ids: list[int], tau: float, normalize: bool) -> float:
    """SupCon L_out: mean over anchors with positives of -1/|P(i)| Σ_p log softmax_{a≠i}(s_ia/τ)[p]."""
    n = len(z)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and ids[p] == ids[i]]
        if not positives:
            continue
        log_denominator = _log_sum_exp([_similarity(z[i], z[a], normalize) / tau for a in range(n) if a != i])
        log_probs = [_similarity(z[i], z[p], normalize) / tau - log_denominator for p in positives]
        losses.append(-sum(log_probs) / len(positives))
    return sum(losses) / len(losses)


def reference_supcon(features: Tensor, labels: list[int], tau: float) -> float:
    """Khosla et al. eq. 2, indexing anchors by (sample, view)."""
    n, n_views, _ = features.shape
    anchors = [(s, v) for s in range(n) for v in range(n_views)]
    total = 0.0
    for s, v in anchors:
        others = [(t, w) for t, w in anchors if (t, w) != (s, v)]
        positives = [(t, w) for t, w in others if labels[t] == labels[s]]
        log_denominator = _log_sum_exp(
            [_similarity(features[s, v], features[t, w], True) / tau for t, w in others]
        )
        total += -sum(
            _similarity(features[s, v], features[t, w], True) / tau - log_denominator for t, w in positives
        ) / len(positives)
    return total / len(anchors)


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- against the references ------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_nt_xent_matches_reference(batch: int, tau: float, normalize: bool) -> None:
    z_a, z_b = _randn(batch, 3, seed=batch), _randn(batch, 3, seed=batch + 100)
    if not normalize:
        z_a, z_b = z_a * 0.3, z_b * 0.3
    expected = reference_nt_xent(z_a, z_b, tau, normalize)
    got = nt_xent_loss(z_a, z_b, temperature=tau, normalize=normalize)
    assert got.dtype == F64
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=0)


@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_reference(batch: int, tau: float, symmetric: bool) -> None:
    q, k = _randn(batch, 4, seed=batch), _randn(batch, 4, seed=batch + 7)
    expected = reference_info_nce(q, k, tau, True, symmetric)
    got = info_nce_loss(q, k, temperature=tau, symmetric=symmetric)
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=0)


def test_info_nce_unnormalised_matches_reference() -> None:
    q, k = _randn(4, 3, seed=1) * 0.5, _randn(4, 3, seed=2) * 0.5
    expected = reference_info_nce(q, k, 0.3, False, True)
    assert info_nce_loss(q, k, 0.3, normalize=False, symmetric=True).item() == pytest.approx(
        expected, abs=1e-10
    )


@pytest.mark.parametrize(
    "ids",
    [
        [0, 0, 1, 1, 2, 2],  # pairs
        [0, 1, 0, 1, 0, 2],  # id 2 has no positive: left out of the mean
        [3, 3, 3, 3, 3, 3],  # everything positive but self
        [0, 1, 2, 0, 1, 2, 0, 7, 7],  # groups of different sizes
    ],
)
@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("normalize", [True, False])
def test_multi_positive_matches_reference(ids: list[int], tau: float, normalize: bool) -> None:
    z = _randn(len(ids), 3, seed=len(ids))
    if not normalize:
        z = z * 0.4
    expected = reference_multi_positive(z, ids, tau, normalize)
    got = multi_positive_info_nce_loss(z, torch.tensor(ids), temperature=tau, normalize=normalize)
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=0)


@pytest.mark.parametrize("n_views", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_supcon_matches_reference(n_views: int, tau: float) -> None:
    labels = [0, 1, 0, 2, 1, 0]
    if n_views == 1:
        labels = [0, 1, 0, 1, 1, 0]  # one view: every label needs a second sample
    features = _randn(len(labels), n_views, 3, seed=n_views)
    expected = reference_supcon(features, labels, tau)
    got = supcon_loss(features, torch.tensor(labels), temperature=tau)
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=0)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_multi_positive_with_distinct_ids_is_nt_xent(tau: float) -> None:
    z_a, z_b = _randn(5, 4, seed=3), _randn(5, 4, seed=4)
    ids = torch.arange(5)
    multi = multi_positive_info_nce_loss(torch.cat([z_a, z_b]), torch.cat([ids, ids]), temperature=tau)
    torch.testing.assert_close(multi, nt_xent_loss(z_a, z_b, temperature=tau), atol=1e-12, rtol=0)
    supcon = supcon_loss(torch.stack([z_a, z_b], dim=1), ids, temperature=tau)
    torch.testing.assert_close(supcon, nt_xent_loss(z_a, z_b, temperature=tau), atol=1e-12, rtol=0)


def test_losses_do_not_depend_on_batch_order() -> None:
    z_a, z_b = _randn(6, 3, seed=5), _randn(6, 3, seed=6)
    ids = torch.tensor([0, 1, 0, 2, 2, 1])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(nt_xent_loss(z_a[perm], z_b[perm]), nt_xent_loss(z_a, z_b), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        info_nce_loss(z_a[perm], z_b[perm], symmetric=True),
        info_nce_loss(z_a, z_b, symmetric=True),
        atol=1e-12,
        rtol=0,
    )
    torch.testing.assert_close(
        multi_positive_info_nce_loss(z_a[perm], ids[perm]),
        multi_positive_info_nce_loss(z_a, ids),
        atol=1e-12,
        rtol=0,
    )


# --- closed forms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_nt_xent_all_equal_is_log_2b_minus_1(batch: int) -> None:
    z = torch.ones(batch, 5, dtype=F64)
    assert nt_xent_loss(z, z.clone(), temperature=0.3).item() == pytest.approx(
        math.log(2 * batch - 1), abs=1e-12
    )


@pytest.mark.parametrize("ids", [[0, 0, 1, 1], [0, 0, 0, 1, 1, 2, 2], [5] * 9])
def test_multi_positive_all_equal_is_log_n_minus_1(ids: list[int]) -> None:
    z = torch.full((len(ids), 3), 2.0, dtype=F64)
    got = multi_positive_info_nce_loss(z, torch.tensor(ids), temperature=0.2)
    assert got.item() == pytest.approx(math.log(len(ids) - 1), abs=1e-12)


def test_info_nce_all_equal_is_log_b() -> None:
    z = torch.ones(6, 2, dtype=F64)
    assert info_nce_loss(z, z, symmetric=True).item() == pytest.approx(math.log(6), abs=1e-12)


def test_multi_positive_without_positives_is_a_connected_zero() -> None:
    z = _randn(4, 3, seed=8).requires_grad_()
    loss = multi_positive_info_nce_loss(z, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert z.grad is not None
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_multi_positive_single_row_is_a_connected_zero() -> None:
    z = _randn(1, 3, seed=8).requires_grad_()
    loss = multi_positive_info_nce_loss(z, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


# --- gradients -------------------------------------------------------------------------------------


def test_gradcheck_nt_xent() -> None:
    z_a, z_b = _randn(3, 4, seed=10).requires_grad_(), _randn(3, 4, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, temperature=0.5), (z_a, z_b))
    assert torch.autograd.gradcheck(
        lambda a, b: nt_xent_loss(a, b, temperature=0.5, normalize=False), (z_a, z_b)
    )


def test_gradcheck_info_nce() -> None:
    q, k = _randn(3, 4, seed=12).requires_grad_(), _randn(3, 4, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, temperature=0.5, symmetric=True), (q, k))
    assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, temperature=0.5), (q, k))


def test_gradcheck_multi_positive_and_supcon() -> None:
    z = _randn(6, 3, seed=14).requires_grad_()
    ids = torch.tensor([0, 1, 0, 2, 1, 3])  # id 3 has no positive
    assert torch.autograd.gradcheck(lambda x: multi_positive_info_nce_loss(x, ids, temperature=0.5), (z,))
    features = _randn(3, 2, 3, seed=15).requires_grad_()
    labels = torch.tensor([0, 1, 0])
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, temperature=0.5), (features,))


# --- stability and precision -----------------------------------------------------------------------


def _all_losses(z_a: Tensor, z_b: Tensor, tau: float, normalize: bool) -> dict[str, Tensor]:
    ids = torch.arange(z_a.shape[0]) % 3
    return {
        "nt_xent": nt_xent_loss(z_a, z_b, temperature=tau, normalize=normalize),
        "info_nce": info_nce_loss(z_a, z_b, temperature=tau, normalize=normalize, symmetric=True),
        "multi_positive": multi_positive_info_nce_loss(
            torch.cat([z_a, z_b]), torch.cat([ids, ids]), temperature=tau, normalize=normalize
        ),
        "supcon": supcon_loss(torch.stack([z_a, z_b], dim=1), ids, temperature=tau, normalize=normalize),
    }


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_small_temperature_large_norms_stay_finite(dtype: torch.dtype) -> None:
    z_a = (_randn(8, 16, seed=20) * 100).to(dtype).requires_grad_()
    z_b = (_randn(8, 16, seed=21) * 100).to(dtype).requires_grad_()
    for name, loss in _all_losses(z_a, z_b, 0.01, normalize=False).items():
        assert torch.isfinite(loss), name
        assert loss.item() > 1.0, name  # logits of order 1e6: far from the closed-form regime
        grad_a, grad_b = torch.autograd.grad(loss, (z_a, z_b))
        assert torch.isfinite(grad_a).all() and torch.isfinite(grad_b).all(), name


def test_bfloat16_inputs_are_computed_in_float32() -> None:
    z_a, z_b = _randn(16, 32, seed=22, dtype=torch.float32), _randn(16, 32, seed=23, dtype=torch.float32)
    half_a, half_b = z_a.bfloat16(), z_b.bfloat16()
    full = _all_losses(z_a, z_b, 0.1, normalize=True)
    upcast = _all_losses(half_a.float(), half_b.float(), 0.1, normalize=True)
    for name, loss in _all_losses(half_a, half_b, 0.1, normalize=True).items():
        assert loss.dtype == torch.float32, name
        torch.testing.assert_close(loss, upcast[name], atol=1e-6, rtol=0)  # upcast before any arithmetic
        torch.testing.assert_close(loss, full[name], atol=2e-2, rtol=2e-2)  # only input rounding differs


def test_autocast_does_not_lower_the_similarity_precision() -> None:
    z_a, z_b = _randn(16, 32, seed=24, dtype=torch.float32), _randn(16, 32, seed=25, dtype=torch.float32)
    expected = _all_losses(z_a, z_b, 0.05, normalize=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _all_losses(z_a, z_b, 0.05, normalize=True)
    for name, loss in got.items():
        assert loss.dtype == torch.float32, name
        torch.testing.assert_close(loss, expected[name], atol=1e-6, rtol=0)


# --- settings and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", [NTXentLoss, InfoNCELoss, MultiPositiveInfoNCELoss, SupConLoss])
@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_wrappers_reject_bad_temperature(wrapper: type, temperature: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        wrapper(temperature=temperature)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_functions_reject_bad_temperature(temperature: float) -> None:
    z = torch.randn(2, 3)
    with pytest.raises(ConfigError):
        nt_xent_loss(z, z, temperature=temperature)
    with pytest.raises(ConfigError):
        info_nce_loss(z, z, temperature=temperature)
    with pytest.raises(ConfigError):
        multi_positive_info_nce_loss(z, torch.tensor([0, 0]), temperature=temperature)


def test_wrappers_forward_their_settings() -> None:
    z_a, z_b = _randn(4, 3, seed=30), _randn(4, 3, seed=31)
    ids = torch.tensor([0, 1, 0, 1])
    assert NTXentLoss(0.2, normalize=False)(z_a, z_b).item() == pytest.approx(
        nt_xent_loss(z_a, z_b, 0.2, normalize=False).item(), abs=1e-12
    )
    assert InfoNCELoss(0.3, symmetric=True)(z_a, z_b).item() == pytest.approx(
        info_nce_loss(z_a, z_b, 0.3, symmetric=True).item(), abs=1e-12
    )
    assert MultiPositiveInfoNCELoss(0.4)(z_a, ids).item() == pytest.approx(
        multi_positive_info_nce_loss(z_a, ids, 0.4).item(), abs=1e-12
    )
    features = torch.stack([z_a, z_b], dim=1)
    assert SupConLoss(0.6)(features, ids).item() == pytest.approx(
        supcon_loss(features, ids, 0.6).item(), abs=1e-12
    )
    assert "temperature=0.2" in repr(NTXentLoss(0.2))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        info_nce_loss(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="ids"):
        multi_positive_info_nce_loss(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(torch.randn(3, 2, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="floating"):
        nt_xent_loss(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long))
