"""The stochastic augmentation module of participant contrast: each augmentation's behaviour, exactly.

Signals are real BIDMC PPG segments where the data is there (the behaviour checked does not depend on
it, so a seeded random signal stands in when ../shared/data is absent), plus hand-made ones for the
closed forms (ramps, constants).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from medcl.data.augment import (
    RandChannelPermutation,
    RandCutOut,
    RandGaussianNoise,
    RandMagnitudeWarp,
    RandTimeWarp,
    StochasticAugment,
    natural_cubic_spline,
)
from medcl.errors import ConfigError

ALWAYS = 1.0


def _signal(shared: Path | None, channels: int = 3, length: int = 640) -> np.ndarray:
    """``(channels, length)`` float32: consecutive PPG stretches of BIDMC record 1 (or noise)."""
    path = None if shared is None else shared / "bidmc" / "bidmc_csv" / "bidmc_01_Signals.csv.gz"
    if path is not None and path.is_file():
        from modalities.signals.readers import read_csv_signal

        ppg = read_csv_signal(path, channels=["PLETH"]).data[0]
        x = np.stack([ppg[i * length : (i + 1) * length] for i in range(channels)])
        return ((x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)).astype(np.float32)
    return np.random.default_rng(0).normal(size=(channels, length)).astype(np.float32)


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    env = os.environ.get("MEDCL_SHARED_DATA")
    shared = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return _signal(shared if shared.is_dir() else None)


ALL = [
    lambda seed: RandCutOut(ALWAYS, 0.2, seed=seed),
    lambda seed: RandMagnitudeWarp(ALWAYS, 0.3, 4, seed=seed),
    lambda seed: RandTimeWarp(ALWAYS, 0.3, 4, seed=seed),
    lambda seed: RandGaussianNoise(ALWAYS, 0.1, seed=seed),
    lambda seed: RandChannelPermutation(ALWAYS, seed=seed),
    lambda seed: StochasticAugment(1.0, 0.3, 1.0, 0.3, 4, 1.0, 1.0, 0.1, 1.0, 0.2, seed=seed),
]


@pytest.mark.parametrize("make", ALL)
def test_seeded_reproducible_and_input_untouched(make, signal: np.ndarray) -> None:
    before = signal.copy()
    a, b, c = make(7), make(7), make(8)
    out_a, out_b, out_c = a(signal), b(signal), c(signal)
    np.testing.assert_array_equal(signal, before)
    assert out_a.dtype == np.float32 and out_a.shape == signal.shape
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, out_c)
    # set_random_state replays the same draw; a second call draws anew
    second = a(signal)
    assert not np.array_equal(second, out_a)
    a.set_random_state(seed=7)
    np.testing.assert_array_equal(a(signal), out_a)


@pytest.mark.parametrize(
    "transform",
    [
        RandCutOut(0.0),
        RandMagnitudeWarp(0.0),
        RandTimeWarp(0.0),
        RandGaussianNoise(0.0),
        RandChannelPermutation(0.0),
    ],
)
def test_probability_zero_is_identity(transform, signal: np.ndarray) -> None:
    out = transform(signal)
    np.testing.assert_array_equal(out, signal)
    assert out is not signal


def test_probability_is_the_application_rate(signal: np.ndarray) -> None:
    transform = RandGaussianNoise(0.3, 0.1, seed=0)
    applied = [not np.array_equal(transform(signal[:, :32]), signal[:, :32]) for _ in range(2000)]
    assert abs(np.mean(applied) - 0.3) < 0.035  # 3.5 binomial standard deviations


def test_cutout_zeroes_exactly_the_stated_span(signal: np.ndarray) -> None:
    transform = RandCutOut(ALWAYS, max_fraction=0.25, seed=3)
    lengths = []
    for _ in range(200):
        out = transform(signal)
        start, stop = transform.span
        lengths.append(stop - start)
        assert 0 <= start < stop <= signal.shape[1] and stop - start <= int(0.25 * signal.shape[1])
        np.testing.assert_array_equal(out[:, start:stop], 0.0)
        outside = np.ones(signal.shape[1], dtype=bool)
        outside[start:stop] = False
        np.testing.assert_array_equal(out[:, outside], signal[:, outside])
    assert min(lengths) < 30 and max(lengths) > 130  # lengths spread over 1..160
    short = np.ones((2, 3), dtype=np.float32)  # 0.25 * 3 < 1: nothing to cut
    np.testing.assert_array_equal(RandCutOut(ALWAYS, 0.25)(short), short)


def test_channel_permutation_is_a_permutation(signal: np.ndarray) -> None:
    transform = RandChannelPermutation(ALWAYS, seed=1)
    seen = set()
    for _ in range(60):
        out = transform(signal)
        perm = transform.permutation
        assert sorted(perm.tolist()) == [0, 1, 2]
        np.testing.assert_array_equal(out, signal[perm])
        seen.add(tuple(perm.tolist()))
    assert len(seen) == 6  # all 3! orders occur
    one = signal[:1]
    np.testing.assert_array_equal(RandChannelPermutation(ALWAYS)(one), one)


def test_gaussian_noise_is_the_drawn_noise_with_its_std(signal: np.ndarray) -> None:
    transform = RandGaussianNoise(ALWAYS, std=0.2, seed=5)
    out = transform(signal)
    np.testing.assert_allclose(out, signal + transform.noise, rtol=0, atol=1e-6)
    assert transform.noise.std() == pytest.approx(0.2, rel=0.05)
    assert abs(transform.noise.mean()) < 0.02


def test_time_warp_keeps_length_and_endpoints_and_is_monotone(signal: np.ndarray) -> None:
    transform = RandTimeWarp(ALWAYS, sigma=0.5, n_knots=4, seed=2)
    for _ in range(20):
        out = transform(signal)
        p = transform.positions(signal.shape[1])
        assert out.shape == signal.shape
        np.testing.assert_array_equal(out[:, 0], signal[:, 0])
        np.testing.assert_array_equal(out[:, -1], signal[:, -1])
        assert p[0] == 0.0 and p[-1] == signal.shape[1] - 1 and np.all(np.diff(p) > 0)
        # output sample t is the input linearly interpolated at p(t)
        grid = np.arange(signal.shape[1])
        np.testing.assert_allclose(out[1], np.interp(p, grid, signal[1]), atol=1e-6)
    # on a ramp x(t) = t the output is the warp itself: time really moves
    ramp = np.arange(500, dtype=np.float32)[None, :]
    warped = transform(ramp)[0]
    np.testing.assert_allclose(warped, transform.positions(500), atol=1e-3)
    assert np.abs(warped - ramp[0]).max() > 5.0


def test_time_warp_with_unit_speed_is_identity() -> None:
    transform = RandTimeWarp(ALWAYS, seed=0)
    transform.knot_values = np.zeros(6)  # log-speed 0: speed 1 everywhere
    p = transform.positions(101)
    np.testing.assert_allclose(p, np.arange(101), atol=1e-9)


def test_magnitude_warp_is_a_smooth_curve_through_the_knots(signal: np.ndarray) -> None:
    transform = RandMagnitudeWarp(ALWAYS, sigma=0.3, n_knots=3, seed=4)
    out = transform(signal)
    n = signal.shape[1]
    curve = transform.curve(n)
    assert curve.shape == (3, n)
    np.testing.assert_allclose(out, signal * curve, rtol=1e-5, atol=1e-5)
    knots = np.linspace(0, n - 1, 5)
    for c in range(3):
        spline = CubicSpline(knots, transform.knot_values[c], bc_type="natural")
        np.testing.assert_allclose(curve[c], spline(np.arange(n)), atol=1e-10)
    shared = RandMagnitudeWarp(ALWAYS, per_channel=False, seed=4)
    shared(signal)
    assert shared.knot_values.shape == (1, 6)


@pytest.mark.parametrize("n_knots", [2, 3, 6, 9])
def test_natural_cubic_spline_matches_scipy(n_knots: int) -> None:
    rng = np.random.default_rng(n_knots)
    kx = np.sort(rng.uniform(0, 10, size=n_knots))
    ky = rng.normal(size=(2, n_knots))
    x = np.linspace(kx[0], kx[-1], 97)
    expected = np.stack([CubicSpline(kx, row, bc_type="natural")(x) for row in ky])
    np.testing.assert_allclose(natural_cubic_spline(kx, ky, x), expected, atol=1e-10)


def test_module_members_have_distinct_streams_and_order() -> None:
    module = StochasticAugment(seed=11)
    states = [t.R.randint(2**31) for t in module.transforms]
    assert len(set(states)) == len(states)
    names = [type(t).__name__ for t in module.transforms]
    assert names == [
        "RandTimeWarp",
        "RandMagnitudeWarp",
        "RandChannelPermutation",
        "RandGaussianNoise",
        "RandCutOut",
    ]


def test_module_with_only_cutout_equals_cutout_alone(signal: np.ndarray) -> None:
    module = StochasticAugment(0.0, 0.2, 0.0, 0.2, 4, 0.0, 0.0, 0.05, 1.0, 0.1, seed=3)
    out = module(signal)
    start, stop = module.cutout.span
    assert stop > start
    expected = signal.copy()
    expected[:, start:stop] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_bad_settings_and_inputs() -> None:
    with pytest.raises(ConfigError, match="prob"):
        RandCutOut(1.5)
    with pytest.raises(ConfigError, match="max_fraction"):
        RandCutOut(0.5, max_fraction=1.5)
    with pytest.raises(ConfigError, match="sigma"):
        RandTimeWarp(0.5, sigma=0.0)
    with pytest.raises(ConfigError, match="n_knots"):
        RandMagnitudeWarp(0.5, n_knots=-1)
    with pytest.raises(ConfigError, match="std"):
        RandGaussianNoise(0.5, std=float("nan"))
    with pytest.raises(ValueError, match=r"\(C, T\)"):
        RandCutOut(1.0)(np.zeros(10))
