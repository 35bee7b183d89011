"""Alignment and uniformity (Wang & Isola, 2020) against loops and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import alignment, uniformity

F64 = torch.float64


def _rows(z: Tensor, normalize: bool) -> list[list[float]]:
    rows = [[float(v) for v in row] for row in z]
    if normalize:
        rows = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in rows]
    return rows


def reference_alignment(z_a: Tensor, z_b: Tensor, alpha: float, normalize: bool) -> float:
    pairs = zip(_rows(z_a, normalize), _rows(z_b, normalize), strict=True)
    distances = [math.dist(u, v) ** alpha for u, v in pairs]
    return sum(distances) / len(distances)


def reference_uniformity(z: Tensor, t: float, normalize: bool) -> float:
    rows = _rows(z, normalize)
    potentials = [
        math.exp(-t * math.dist(rows[i], rows[j]) ** 2)
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return math.log(sum(potentials) / len(potentials))


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("n", [1, 4, 9])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("normalize", [True, False])
def test_alignment_matches_reference(n: int, alpha: float, normalize: bool) -> None:
    z_a, z_b = _randn(n, 3, seed=n), _randn(n, 3, seed=n + 50)
    got = alignment(z_a, z_b, alpha=alpha, normalize=normalize)
    assert got.item() == pytest.approx(reference_alignment(z_a, z_b, alpha, normalize), abs=1e-10, rel=0)


@pytest.mark.parametrize("n", [2, 3, 10])
@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_uniformity_matches_reference(n: int, t: float, normalize: bool) -> None:
    z = _randn(n, 4, seed=n) * (1.0 if normalize else 0.5)
    got = uniformity(z, t=t, normalize=normalize)
    assert got.item() == pytest.approx(reference_uniformity(z, t, normalize), abs=1e-10, rel=0)


def test_closed_forms() -> None:
    z = _randn(5, 3, seed=1)
    assert alignment(z, z.clone()).item() == 0.0
    assert alignment(z, -z).item() == pytest.approx(4.0, abs=1e-12)
    assert alignment(z, -z, alpha=1.0).item() == pytest.approx(2.0, abs=1e-12)
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    assert uniformity(antipodal, t=2.0).item() == pytest.approx(-8.0, abs=1e-12)
    identical = torch.tensor([[0.6, 0.8]] * 3, dtype=F64)
    assert uniformity(identical).item() == pytest.approx(0.0, abs=1e-12)


def test_uniformity_of_far_apart_points_does_not_underflow() -> None:
    # exp(-t d²) underflows to 0 for these; the log-sum-exp form keeps the exact value -t·d².
    z = torch.tensor([[0.0, 0.0], [30.0, 0.0]], dtype=torch.float32, requires_grad=True)
    value = uniformity(z, t=2.0, normalize=False)
    assert value.item() == pytest.approx(-1800.0, rel=1e-6)
    value.backward()
    assert torch.isfinite(z.grad).all()


def test_gradcheck() -> None:
    z_a, z_b = _randn(4, 3, seed=2).requires_grad_(), _randn(4, 3, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(alignment, (z_a, z_b))
    assert torch.autograd.gradcheck(lambda a, b: alignment(a, b, alpha=1.5, normalize=False), (z_a, z_b))
    assert torch.autograd.gradcheck(uniformity, (z_a,))
    assert torch.autograd.gradcheck(lambda a: uniformity(a, t=0.7, normalize=False), (z_a,))


def test_identical_rows_have_finite_gradients() -> None:
    z = torch.tensor([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]], dtype=F64, requires_grad=True)
    (uniformity(z) + alignment(z, z.detach().clone())).backward()
    assert torch.isfinite(z.grad).all()


def test_bfloat16_inputs() -> None:
    z_a, z_b = _randn(16, 8, seed=4).float(), _randn(16, 8, seed=5).float()
    for fn, args in ((alignment, (z_a, z_b)), (uniformity, (z_a,))):
        half = fn(*(x.bfloat16() for x in args))
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, fn(*args), atol=2e-2, rtol=2e-2)


def test_settings_and_shapes() -> None:
    z = torch.randn(3, 2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            alignment(z, z, alpha=bad)
        with pytest.raises(ConfigError, match="t must"):
            uniformity(z, t=bad)
    with pytest.raises(ValueError, match="same shape"):
        alignment(z, torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.randn(1, 2))
