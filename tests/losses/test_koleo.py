"""KoLeo against a loop over nearest neighbours, closed forms, gradients and settings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import KoLeoLoss, koleo_loss

F64 = torch.float64


def reference_koleo(z: Tensor, eps: float, normalize: bool) -> float:
    """-1/N Σ_i log(min_{j≠i} ‖z_i - z_j‖ + eps), by brute force over all pairs."""
    rows = [[float(v) for v in row] for row in z]
    if normalize:
        rows = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in rows]
    total = 0.0
    for i, u in enumerate(rows):
        nearest = min(math.dist(u, v) for j, v in enumerate(rows) if j != i)
        total += math.log(nearest + eps)
    return -total / len(rows)


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("n", [2, 3, 7, 16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("eps", [0.0, 1e-8, 0.1])
def test_matches_reference(n: int, normalize: bool, eps: float) -> None:
    z = _randn(n, 4, seed=n) * 3.0
    got = koleo_loss(z, eps=eps, normalize=normalize)
    assert got.item() == pytest.approx(reference_koleo(z, eps, normalize), abs=1e-10, rel=0)


def test_unnormalised_neighbour_is_the_nearest_not_the_most_aligned() -> None:
    # Row 0's largest inner product is with the long row 2, but its nearest neighbour is row 1.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.5], [10.0, 0.0]], dtype=F64)
    expected = -(math.log(0.5) + math.log(0.5) + math.log(9.0)) / 3
    assert koleo_loss(z, eps=0.0, normalize=False).item() == pytest.approx(expected, abs=1e-12)


def test_four_orthogonal_unit_vectors() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    assert koleo_loss(z, eps=0.0).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-12)
    assert koleo_loss(z * 5.0).item() == pytest.approx(-math.log(math.sqrt(2) + 1e-8), abs=1e-12)


def test_duplicates_give_minus_log_eps_and_finite_gradients() -> None:
    z = torch.tensor([[1.0, 2.0], [1.0, 2.0], [-3.0, 1.0]], dtype=F64, requires_grad=True)
    loss = koleo_loss(z, eps=1e-8)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    third = math.dist([1 / math.sqrt(5), 2 / math.sqrt(5)], [-3 / math.sqrt(10), 1 / math.sqrt(10)])
    expected = -(2 * math.log(1e-8) + math.log(third + 1e-8)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_gradcheck() -> None:
    z = _randn(5, 3, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(koleo_loss, (z,))
    assert torch.autograd.gradcheck(lambda x: koleo_loss(x, normalize=False), (z,))


def test_bfloat16_and_autocast() -> None:
    z = _randn(32, 16, seed=2).float()
    half = koleo_loss(z.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, koleo_loss(z.bfloat16().float()))
    torch.testing.assert_close(half, koleo_loss(z), atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(koleo_loss(z), koleo_loss(z.double()).float(), atol=1e-5, rtol=0)


def test_wrapper_and_settings() -> None:
    z = _randn(6, 3, seed=3)
    assert KoLeoLoss(eps=0.01, normalize=False)(z).item() == pytest.approx(
        koleo_loss(z, eps=0.01, normalize=False).item(), abs=1e-12
    )
    for eps in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="eps"):
            KoLeoLoss(eps=eps)
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        koleo_loss(torch.randn(4, 3, 2))
