"""Asymmetry loss against a per-voxel loop, closed forms on symmetric volumes with inserted lesions,
the batch average, gradients and settings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import AsymmetryLoss, asymmetry_loss, asymmetry_loss_terms, flip_lr
from medcl.losses.asymmetry import LR_DIM, asymmetric_region, asymmetry_distance

F64 = torch.float64


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def reference_terms(
    f: Tensor,
    g: Tensor,
    mask: Tensor | None,
    has_mask: list[bool],
    margin: float,
    weight_unmasked: float,
    normalize: bool,
    mirror_mask: Tensor | None = None,
) -> tuple[float, float]:
    """The loss by a loop over samples and voxels in plain Python floats.

    ``mask``/``mirror_mask``: (B, 1, *spatial) 0/1; the region of sample b is mask ∪ mirror mask, where
    the mirror mask defaults to the mask mirrored along the first spatial axis (index i → H-1-i).
    """
    batch, channels, *spatial = f.shape
    sym_total = margin_total = 0.0
    for b in range(batch):
        inside_sum = outside_sum = 0.0
        n_in = n_out = 0
        for v in itertools.product(*(range(s) for s in spatial)):
            u = [float(f[(b, c, *v)]) for c in range(channels)]
            w = [float(g[(b, c, *v)]) for c in range(channels)]
            if normalize:
                nu = math.sqrt(sum(x * x for x in u)) or 1.0
                nw = math.sqrt(sum(x * x for x in w)) or 1.0
                u = [x / nu for x in u]
                w = [x / nw for x in w]
            d = math.sqrt(sum((x - y) ** 2 for x, y in zip(u, w, strict=True)))
            lesion = False
            if mask is not None and has_mask[b]:
                twin = (spatial[0] - 1 - v[0], *v[1:])
                other = mirror_mask[(b, 0, *v)] if mirror_mask is not None else mask[(b, 0, *twin)]
                lesion = bool(mask[(b, 0, *v)] >= 0.5) or bool(other >= 0.5)
            if lesion:
                inside_sum += max(0.0, margin - d) ** 2
                n_in += 1
            else:
                outside_sum += d * d
                n_out += 1
        weight = 1.0 if has_mask[b] else weight_unmasked
        sym_total += weight * (outside_sum / n_out if n_out else 0.0)
        margin_total += inside_sum / n_in if n_in else 0.0
    return sym_total / batch, margin_total / batch


def symmetric_volume(shape: tuple[int, ...], seed: int) -> Tensor:
    """A random (1, 1, *shape) volume equal to its own left-right mirror image."""
    v = _randn(1, 1, *shape, seed=seed)
    return (v + flip_lr(v)) / 2


def box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> Tensor:
    """(1, 1, *shape) float 0/1 mask of the box [lo, hi)."""
    m = torch.zeros(1, 1, *shape, dtype=F64)
    m[(0, 0, *(slice(a, b) for a, b in zip(lo, hi, strict=True)))] = 1.0
    return m


SHAPE = (8, 5, 4)  # LR side 8: left half 0..3, right half 4..7
LESION_LO, LESION_HI = (1, 1, 1), (3, 3, 3)  # 8 voxels on one side; the twin box is [5, 7)


# --- against the per-voxel loop ---------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(6, 3, 4), (5, 4), (7,)])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_matches_loop_reference(spatial: tuple[int, ...], normalize: bool, weight: float) -> None:
    batch, channels = 4, 3
    f = _randn(batch, channels, *spatial, seed=1)
    g = f + 0.7 * _randn(batch, channels, *spatial, seed=2)
    mask = (_randn(batch, 1, *spatial, seed=3) > 0.8).to(F64)
    mask[2] = 0.0  # has a mask, but it is empty
    has_mask = [True, False, True, True]
    margin = 1.2 if normalize else 2.5
    got = asymmetry_loss_terms(
        f,
        g,
        mask,
        torch.tensor(has_mask),
        margin=margin,
        symmetry_weight_unmasked=weight,
        normalize=normalize,
    )
    sym, mar = reference_terms(f, g, mask, has_mask, margin, weight, normalize)
    assert got.symmetry.item() == pytest.approx(sym, abs=1e-12)
    assert got.margin.item() == pytest.approx(mar, abs=1e-12)
    assert got.loss.item() == pytest.approx(sym + mar, abs=1e-12)
    loss = asymmetry_loss(f, g, mask, torch.tensor(has_mask), None, margin, weight, normalize)
    assert loss.item() == pytest.approx(sym + mar, abs=1e-12)


def test_explicit_mirror_mask_matches_loop() -> None:
    f, g = _randn(3, 2, 6, 5, seed=4), _randn(3, 2, 6, 5, seed=5)
    mask = (_randn(3, 1, 6, 5, seed=6) > 0.5).to(F64)
    mirror = (_randn(3, 1, 6, 5, seed=7) > 0.5).to(F64)
    got = asymmetry_loss_terms(f, g, mask, mirror_lesion_mask=mirror)
    sym, mar = reference_terms(f, g, mask, [True] * 3, 1.0, 1.0, True, mirror_mask=mirror)
    assert (got.symmetry.item(), got.margin.item()) == pytest.approx((sym, mar), abs=1e-12)
    # ... and differs from the default (flipped mask), so the argument is really used.
    default = asymmetry_loss_terms(f, g, mask)
    assert default.margin.item() != pytest.approx(got.margin.item(), abs=1e-6)


def test_masks_without_channel_axis_and_bool_masks() -> None:
    f, g = _randn(2, 3, 6, 4, seed=8), _randn(2, 3, 6, 4, seed=9)
    mask = _randn(2, 1, 6, 4, seed=10) > 0.3
    a = asymmetry_loss(f, g, mask)
    assert asymmetry_loss(f, g, mask[:, 0]).item() == pytest.approx(a.item(), abs=1e-14)
    assert asymmetry_loss(f, g, mask.to(torch.int64)).item() == pytest.approx(a.item(), abs=1e-14)
    assert asymmetry_loss(f, g, mask.to(F64) * 0.6).item() == pytest.approx(a.item(), abs=1e-14)
    assert asymmetry_loss(f, g, mask.to(F64) * 0.4).item() != pytest.approx(a.item(), abs=1e-6)


# --- closed forms -----------------------------------------------------------------------------------


def features_of(x: Tensor) -> Tensor:
    """A pointwise (hence flip-equivariant) feature map: (B, 1, *s) → (B, 3, *s)."""
    return torch.cat([x, x * x, torch.tanh(3 * x)], dim=1)


@pytest.mark.parametrize("normalize", [True, False])
def test_symmetric_volume_gives_zero(normalize: bool) -> None:
    x = symmetric_volume(SHAPE, seed=11)
    assert torch.equal(flip_lr(x), x)
    for feats in (x, features_of(x)):
        mirror = features_of(flip_lr(x)) if feats.shape[1] == 3 else flip_lr(x)
        terms = asymmetry_loss_terms(feats, mirror, torch.zeros(1, 1, *SHAPE), normalize=normalize)
        assert terms.symmetry.item() == 0.0
        assert terms.margin.item() == 0.0
        assert asymmetry_loss(feats, mirror, normalize=normalize).item() == 0.0  # no mask at all


@pytest.mark.parametrize("amplitude", [0.25, 0.6, 1.0, 1.7])
def test_masked_one_sided_lesion_by_hand(amplitude: float) -> None:
    """Identity features, no normalisation: d = amplitude on the lesion and its twin, 0 elsewhere."""
    healthy = symmetric_volume(SHAPE, seed=12)
    lesion = box(SHAPE, LESION_LO, LESION_HI)
    x = healthy + amplitude * lesion
    d = asymmetry_distance(x, flip_lr(x), normalize=False)
    twin = flip_lr(lesion)
    assert torch.allclose(d, amplitude * (lesion + twin)[:, 0], atol=1e-12)
    terms = asymmetry_loss_terms(x, flip_lr(x), lesion, normalize=False, margin=1.0)
    assert terms.symmetry.item() == pytest.approx(0.0, abs=1e-24)  # the twin is in the region too
    assert terms.margin.item() == pytest.approx(max(0.0, 1.0 - amplitude) ** 2, abs=1e-12)


def test_masked_lesion_with_normalised_features_by_hand() -> None:
    """Features (x, 1) on a zero background with a lesion of 1: unit vectors (0, 1) and (1, 1)/√2."""
    lesion = box(SHAPE, LESION_LO, LESION_HI)
    x = lesion.clone()
    feats = torch.cat([x, torch.ones_like(x)], dim=1)
    mirror = torch.cat([flip_lr(x), torch.ones_like(x)], dim=1)
    d = math.sqrt(2 - math.sqrt(2))  # ‖(0, 1) − (1, 1)/√2‖
    terms = asymmetry_loss_terms(feats, mirror, lesion, margin=1.0, normalize=True)
    assert terms.symmetry.item() == pytest.approx(0.0, abs=1e-24)
    assert terms.margin.item() == pytest.approx((1.0 - d) ** 2, abs=1e-12)
    # A margin below that distance is met: no margin loss.
    assert asymmetry_loss(feats, mirror, lesion, margin=0.7).item() == pytest.approx(0.0, abs=1e-24)


def test_unmasked_lesion_grows_the_symmetry_term() -> None:
    """The issue's property: zero on a symmetric volume, growing with an inserted one-sided lesion."""
    healthy = symmetric_volume(SHAPE, seed=13)
    lesion = box(SHAPE, LESION_LO, LESION_HI)
    n_voxels = math.prod(SHAPE)
    empty = torch.zeros(1, 1, *SHAPE, dtype=F64)
    previous = -1.0
    for amplitude in (0.0, 0.2, 0.5, 1.0, 2.0):
        x = healthy + amplitude * lesion
        loss = asymmetry_loss(x, flip_lr(x), empty, normalize=False).item()
        # 16 voxels (lesion + twin) at d = amplitude, averaged over the whole volume.
        assert loss == pytest.approx(amplitude**2 * 16 / n_voxels, abs=1e-12)
        assert loss > previous
        previous = loss
    # With the lesion masked and a reachable margin the same volume costs nothing.
    x = healthy + 2.0 * lesion
    assert asymmetry_loss(x, flip_lr(x), lesion, normalize=False).item() == pytest.approx(0.0, abs=1e-24)
    # Through a pointwise non-linear feature map with normalisation, it still grows with the amplitude.
    losses = [
        asymmetry_loss(features_of(x), features_of(flip_lr(x)), empty).item()
        for x in (healthy + a * lesion for a in (0.0, 0.1, 0.3))
    ]
    assert losses[0] == 0.0 and losses[0] < losses[1] < losses[2]


def test_larger_lesions_cost_more_when_unmasked() -> None:
    healthy = symmetric_volume(SHAPE, seed=14)
    small, large = box(SHAPE, (1, 1, 1), (2, 2, 2)), box(SHAPE, (0, 0, 0), (3, 4, 4))
    costs = [
        asymmetry_loss(x, flip_lr(x), normalize=False).item() for x in (healthy + small, healthy + large)
    ]
    assert costs[0] == pytest.approx(2 / math.prod(SHAPE), abs=1e-12)
    assert costs[1] == pytest.approx(2 * 48 / math.prod(SHAPE), abs=1e-12)


# --- the batch average ------------------------------------------------------------------------------


def _two_samples() -> tuple[Tensor, Tensor, Tensor]:
    healthy = torch.cat([symmetric_volume(SHAPE, seed=15), symmetric_volume(SHAPE, seed=16)])
    lesion = box(SHAPE, LESION_LO, LESION_HI).expand(2, -1, -1, -1, -1)
    x = healthy + 0.5 * lesion
    return x, flip_lr(x), lesion


def test_batch_average_of_per_sample_means() -> None:
    x, mirror, lesion = _two_samples()
    n = math.prod(SHAPE)
    # Sample 0: masked lesion (margin only); sample 1: mask known but empty (symmetry only, weight 1).
    mask = lesion.clone()
    mask[1] = 0.0
    terms = asymmetry_loss_terms(x, mirror, mask, margin=1.0, normalize=False, symmetry_weight_unmasked=0.0)
    assert terms.symmetry.item() == pytest.approx((0.0 + 0.25 * 16 / n) / 2, abs=1e-12)
    assert terms.margin.item() == pytest.approx((0.25 + 0.0) / 2, abs=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_samples_without_mask_contribute_only_weighted_symmetry(weight: float) -> None:
    x, mirror, lesion = _two_samples()
    n = math.prod(SHAPE)
    has_mask = torch.tensor([True, False])
    terms = asymmetry_loss_terms(
        x, mirror, lesion, has_mask, margin=1.0, normalize=False, symmetry_weight_unmasked=weight
    )
    # Sample 1's mask holds the lesion, but has_mask is False: it is ignored.
    assert terms.symmetry.item() == pytest.approx(weight * 0.25 * 16 / n / 2, abs=1e-12)
    assert terms.margin.item() == pytest.approx(0.25 / 2, abs=1e-12)
    # No lesion_mask at all: every sample unmasked.
    assert asymmetry_loss_terms(
        x, mirror, None, margin=1.0, normalize=False, symmetry_weight_unmasked=weight
    ).symmetry.item() == pytest.approx(weight * 0.25 * 16 / n, abs=1e-12)


def test_full_mask_has_no_symmetry_term() -> None:
    x, mirror, _ = _two_samples()
    terms = asymmetry_loss_terms(x, mirror, torch.ones(2, 1, *SHAPE), margin=3.0, normalize=False)
    assert terms.symmetry.item() == 0.0
    d = asymmetry_distance(x, mirror, normalize=False)
    assert terms.margin.item() == pytest.approx(((3.0 - d).clamp(min=0) ** 2).mean().item(), abs=1e-12)


def test_region_is_mask_union_its_mirror() -> None:
    mask = box(SHAPE, LESION_LO, LESION_HI)
    region = asymmetric_region(mask)
    assert torch.equal(region, (mask + flip_lr(mask))[:, 0] > 0)
    assert torch.equal(flip_lr(mask), torch.flip(mask, dims=(2,)))
    assert LR_DIM == 2


# --- gradients, dtypes, wrapper, errors -------------------------------------------------------------


def test_gradient_is_finite_where_the_distance_is_zero() -> None:
    f = _randn(2, 3, 4, 3, seed=17).requires_grad_(True)
    g = _randn(2, 3, 4, 3, seed=18)
    g[0, :, 1, 1] = f[0, :, 1, 1].detach()  # d = 0 at a lesion voxel (and at a voxel outside)
    g[1, :, 2, 2] = f[1, :, 2, 2].detach()
    mask = torch.zeros(2, 1, 4, 3, dtype=F64)
    mask[0, 0, 1, 1] = 1.0
    for normalize in (True, False):
        f.grad = None
        asymmetry_loss(f, g, mask, margin=0.8, normalize=normalize).backward()
        assert torch.isfinite(f.grad).all()
        assert f.grad[0, :, 1, 1].abs().sum() == 0  # the norm's subgradient at 0
        assert f.grad.abs().sum() > 0


def test_gradcheck_away_from_kinks() -> None:
    f = _randn(2, 2, 3, 3, seed=19).requires_grad_(True)
    g = _randn(2, 2, 3, 3, seed=20) + 0.5
    mask = (_randn(2, 1, 3, 3, seed=21) > 0).to(F64)
    for normalize in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, n=normalize: asymmetry_loss(a, g, mask, margin=1.1, normalize=n), (f,)
        )


def test_half_inputs_give_float32() -> None:
    f, g = _randn(2, 3, 6, 4, seed=22), _randn(2, 3, 6, 4, seed=23)
    mask = _randn(2, 1, 6, 4, seed=24) > 0.3
    full = asymmetry_loss(f, g, mask)
    for dtype in (torch.float16, torch.bfloat16):
        half = asymmetry_loss(f.to(dtype), g.to(dtype), mask)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_module_wrapper() -> None:
    f, g = _randn(2, 3, 6, 4, seed=25), _randn(2, 3, 6, 4, seed=26)
    mask = _randn(2, 1, 6, 4, seed=27) > 0.3
    has = torch.tensor([True, False])
    module = AsymmetryLoss(margin=0.9, symmetry_weight_unmasked=0.2, normalize=False)
    assert module(f, g, mask, has).item() == pytest.approx(
        asymmetry_loss(f, g, mask, has, margin=0.9, symmetry_weight_unmasked=0.2, normalize=False).item()
    )
    assert "margin=0.9" in repr(module)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"margin": 0.0},
        {"margin": -1.0},
        {"margin": float("nan")},
        {"margin": 2.5},  # unreachable on normalised features
        {"symmetry_weight_unmasked": -0.1},
        {"symmetry_weight_unmasked": float("inf")},
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, float]) -> None:
    f = _randn(1, 2, 4, 4, seed=28)
    with pytest.raises(ConfigError):
        asymmetry_loss(f, f, **kwargs)
    with pytest.raises(ConfigError):
        AsymmetryLoss(**kwargs)


def test_large_margin_allowed_without_normalisation() -> None:
    f = _randn(1, 2, 4, 4, seed=29)
    assert asymmetry_loss(f, f, torch.ones(1, 1, 4, 4), margin=5.0, normalize=False).item() == 25.0


def test_bad_shapes_raise() -> None:
    f = _randn(2, 3, 4, 4, seed=30)
    with pytest.raises(ValueError, match="same shape"):
        asymmetry_loss(f, f[:, :2])
    with pytest.raises(ValueError, match="lesion_mask"):
        asymmetry_loss(f, f, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="has_mask"):
        asymmetry_loss(f, f, torch.zeros(2, 1, 4, 4), torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="no lesion_mask"):
        asymmetry_loss(f, f, None, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="spatial"):
        asymmetry_loss(f[:, :, 0, 0], f[:, :, 0, 0])
    with pytest.raises(TypeError, match="floating"):
        asymmetry_loss(f.long(), f.long())
