"""Tests of modalities.signals.augment: seeding, independence from global RNGs, and each effect."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import wfdb

from medcl.errors import ConfigError, InvalidSignalError
from modalities.signals.augment import (
    RandAmplitudeScale,
    RandAmplitudeScaled,
    RandBaselineWander,
    RandBaselineWanderd,
    RandChannelDropout,
    RandChannelDropoutd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandTimeCrop,
    RandTimeCropd,
    RandTimeMask,
    RandTimeMaskd,
    RandTimeShift,
    RandTimeShiftd,
    ecg_contrastive_views,
)
from modalities.signals.transforms import NormalizePerChannel

FS = 100.0

# name -> factory(prob, seed) of an array transform; applied with probability ``prob``.
ARRAY_TRANSFORMS: dict[str, Callable[[float, int], Any]] = {
    "scale": lambda prob, seed: RandAmplitudeScale(prob, 0.5, 1.5, seed=seed),
    "noise": lambda prob, seed: RandGaussianNoise(prob, 0.1, seed=seed),
    "wander": lambda prob, seed: RandBaselineWander(prob, 0.2, 0.5, fs=FS, seed=seed),
    "mask": lambda prob, seed: RandTimeMask(prob, 0.2, 2, seed=seed),
    "dropout": lambda prob, seed: RandChannelDropout(prob, 0.5, seed=seed),
    "shift": lambda prob, seed: RandTimeShift(prob, 40, seed=seed),
}
# the same for the dictionary wrappers, on keys "a" and "b"
DICT_TRANSFORMS: dict[str, Callable[[float, int], Any]] = {
    "scale": lambda prob, seed: RandAmplitudeScaled(["a", "b"], prob, 0.5, 1.5, seed=seed),
    "noise": lambda prob, seed: RandGaussianNoised(["a", "b"], prob, 0.1, seed=seed),
    "wander": lambda prob, seed: RandBaselineWanderd(["a", "b"], prob, 0.2, 0.5, seed=seed),
    "mask": lambda prob, seed: RandTimeMaskd(["a", "b"], prob, 0.2, 2, seed=seed),
    "dropout": lambda prob, seed: RandChannelDropoutd(["a", "b"], prob, 0.5, seed=seed),
    "shift": lambda prob, seed: RandTimeShiftd(["a", "b"], prob, 40, seed=seed),
    "crop": lambda prob, seed: RandTimeCropd(["a", "b"], 100, seed=seed),
}


def _signal(n_channels: int = 6, n_samples: int = 300, seed: int = 123) -> np.ndarray:
    """A signal without zeros (so masks and dropouts are visible), float32 ``(C, T)``."""
    rng = np.random.default_rng(seed)
    return (1.0 + np.abs(rng.standard_normal((n_channels, n_samples)))).astype(np.float32)


def _sample(x: np.ndarray) -> dict[str, Any]:
    return {"a": x, "b": x.copy(), "meta": {"fs": FS, "channel_names": [], "path": "/data/r.dat"}}


def _all_array(prob: float, seed: int) -> list[Any]:
    return [make(prob, seed) for make in ARRAY_TRANSFORMS.values()] + [RandTimeCrop(100, seed=seed)]


# ----------------------------------------------------------------------------------------------------
# seeding and random state
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ARRAY_TRANSFORMS, "crop"])
def test_same_seed_same_output_different_seed_different(name: str) -> None:
    make = ARRAY_TRANSFORMS.get(name, lambda prob, seed: RandTimeCrop(100, seed=seed))
    x = _signal()
    first = [make(1.0, 7)(x) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert first[0].dtype == np.float32
    others = [make(1.0, seed)(x) for seed in (8, 9, 10)]
    assert any(not np.array_equal(first[0], other) for other in others)


@pytest.mark.parametrize("name", list(ARRAY_TRANSFORMS))
def test_prob_zero_is_identity(name: str) -> None:
    x = _signal()
    transform = ARRAY_TRANSFORMS[name](0.0, 0)
    for _ in range(5):
        out = transform(x)
        np.testing.assert_array_equal(out, x)
        assert out is not x and out.dtype == np.float32
    d = _sample(x)
    out_d = DICT_TRANSFORMS[name](0.0, 0)(d)
    np.testing.assert_array_equal(out_d["a"], x)


def test_prob_is_the_fraction_of_calls_transformed() -> None:
    x = _signal()
    transform = RandGaussianNoise(prob=0.3, seed=0)
    changed = sum(not np.array_equal(transform(x), x) for _ in range(1000))
    assert 240 <= changed <= 360


@pytest.mark.parametrize("name", list(ARRAY_TRANSFORMS))
def test_instances_with_the_same_seed_are_independent(name: str) -> None:
    """With a shared (class-level) generator, interleaved calls would give different draws."""
    x = _signal()
    a, b = ARRAY_TRANSFORMS[name](1.0, 5), ARRAY_TRANSFORMS[name](1.0, 5)
    assert a.R is not b.R
    a1, b1, a2, b2 = a(x), b(x), a(x), b(x)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_global_numpy_and_torch_rngs_untouched(bundled_ptbxl: Path) -> None:
    np.random.seed(42)
    torch.manual_seed(42)
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    x = _signal()
    for transform in _all_array(0.7, 3):
        for _ in range(3):
            transform(x)
    for make in DICT_TRANSFORMS.values():
        make(0.7, 3)(_sample(x))
    views = ecg_contrastive_views(FS, crop_length=100, seed=1)
    views({"signal": x, "meta": {"fs": FS}})
    after = np.random.get_state()
    assert (
        after[0] == numpy_state[0]
        and np.array_equal(after[1], numpy_state[1])
        and after[2:] == numpy_state[2:]
    )
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_set_random_state_reseeds() -> None:
    x = _signal()
    transform = RandGaussianNoise(1.0, seed=0)
    first = transform(x)
    transform.set_random_state(seed=0)
    np.testing.assert_array_equal(transform(x), first)
    wrapper = RandGaussianNoised(["a", "b"], 1.0, seed=0)
    first_d = wrapper(_sample(x))["a"]
    wrapper.set_random_state(seed=0)
    np.testing.assert_array_equal(wrapper(_sample(x))["a"], first_d)


# ----------------------------------------------------------------------------------------------------
# dictionary wrappers
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DICT_TRANSFORMS))
def test_dict_wrapper_same_draw_for_every_key_and_no_mutation(name: str) -> None:
    x = _signal()
    d = _sample(x)
    original = copy.deepcopy(d)
    transform = DICT_TRANSFORMS[name](1.0, 11)
    outs = [transform(d) for _ in range(3)]
    for out in outs:
        np.testing.assert_array_equal(out["a"], out["b"])
        assert out["a"].dtype == np.float32
    assert any(not np.array_equal(out["a"], outs[0]["a"]) for out in outs[1:])  # new draw per call
    assert not np.array_equal(outs[0]["a"][:, :100], x[:, :100]) or name == "crop"
    assert d.keys() == original.keys() and d["meta"] == original["meta"]
    np.testing.assert_array_equal(d["a"], original["a"])
    np.testing.assert_array_equal(d["b"], original["b"])


def test_dict_wrapper_generators_are_not_copies() -> None:
    """The wrapper's generator (prob draw) and its array transform's (parameters) are distinct streams."""
    wrapper = RandAmplitudeScaled("a", prob=0.5, seed=0)
    assert wrapper.R is not wrapper.transform.R
    assert not np.array_equal(wrapper.R.rand(10), wrapper.transform.R.rand(10))


def test_dict_wrapper_prob_and_factor_distribution() -> None:
    x = _signal(n_channels=1)
    transform = RandAmplitudeScaled("a", prob=0.5, low=0.5, high=1.5, seed=0)
    factors = [float(transform({"a": x})["a"][0, 0] / x[0, 0]) for _ in range(400)]
    applied = [f for f in factors if f != 1.0]
    assert 150 < len(applied) < 250
    assert 0.3 < np.mean(np.array(applied) > 1.0) < 0.7


def test_allow_missing_keys() -> None:
    x = _signal()
    out = RandGaussianNoised(["a", "z"], 1.0, allow_missing_keys=True)({"a": x})
    assert set(out) == {"a"}
    with pytest.raises(KeyError):
        RandGaussianNoised(["a", "z"], 1.0)({"a": x})


# ----------------------------------------------------------------------------------------------------
# effects
# ----------------------------------------------------------------------------------------------------
def test_time_crop_is_a_window_of_the_input() -> None:
    x = np.tile(np.arange(300, dtype=np.float32), (2, 1))
    crop = RandTimeCrop(100, seed=0)
    starts = set()
    for _ in range(2000):
        out = crop(x)
        assert out.shape == (2, 100)
        start = int(out[0, 0])
        np.testing.assert_array_equal(out, x[:, start : start + 100])
        starts.add(start)
    assert starts == set(range(201))  # every start reachable, none beyond
    np.testing.assert_array_equal(RandTimeCrop(300)(x), x)


def test_time_crop_rejects_short_signals_naming_the_file() -> None:
    x = _signal(n_samples=50)
    with pytest.raises(InvalidSignalError, match="50 samples, fewer than the crop length 100"):
        RandTimeCrop(100)(x)
    with pytest.raises(InvalidSignalError) as info:
        RandTimeCropd(["a", "b"], 100)(_sample(x))
    assert info.value.path == "/data/r.dat"


@pytest.mark.parametrize("per_channel", [True, False])
def test_amplitude_scale_within_bounds(per_channel: bool) -> None:
    x = _signal()
    transform = RandAmplitudeScale(1.0, 0.8, 1.2, per_channel=per_channel, seed=1)
    for _ in range(50):
        ratio = transform(x) / x
        factors = ratio[:, 0]
        np.testing.assert_allclose(ratio, factors[:, None] * np.ones_like(x), rtol=1e-6)
        assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
        assert (np.ptp(factors) > 1e-4) == per_channel


def test_gaussian_noise_statistics() -> None:
    x = _signal(n_channels=4, n_samples=20000)
    noise = RandGaussianNoise(1.0, std=0.05, seed=2)(x) - x
    assert abs(noise.mean()) < 2e-3
    assert noise.std() == pytest.approx(0.05, rel=0.02)


def test_baseline_wander_is_a_bounded_slow_sinusoid() -> None:
    x = _signal(n_samples=1000)
    transform = RandBaselineWander(1.0, max_amplitude=0.1, max_freq_hz=0.5, fs=FS, seed=3)
    for _ in range(20):
        added = transform(x) - x
        assert 0.0 <= transform.freq_hz <= 0.5
        assert np.all(transform.amplitudes <= 0.1)
        t = np.arange(1000) / FS
        expected = transform.amplitudes * np.sin(2 * np.pi * transform.freq_hz * t + transform.phases)
        np.testing.assert_allclose(added, expected, atol=1e-5)
        assert np.abs(added).max() <= 0.1 + 1e-6


def test_baseline_wanderd_reads_fs_from_meta() -> None:
    x = _signal(n_samples=1000)
    sample = {"a": x, "meta": {"fs": 500.0}}
    transform = RandBaselineWanderd("a", 1.0, seed=4)
    transform(sample)
    assert transform.transform.fs == 500.0
    with pytest.raises(ConfigError, match="fs"):
        RandBaselineWanderd("a", 1.0)({"a": x})


def test_time_mask_zeros_one_span_per_mask() -> None:
    x = _signal(n_samples=200)
    transform = RandTimeMask(1.0, max_fraction=0.1, n_masks=1, seed=5)
    lengths = set()
    for _ in range(300):
        out = transform(x)
        zero = out == 0.0
        columns = zero.all(axis=0)
        np.testing.assert_array_equal(zero, np.broadcast_to(columns, zero.shape))  # every channel alike
        span = np.flatnonzero(columns)
        assert 1 <= span.size <= 20  # <= max_fraction * T
        np.testing.assert_array_equal(span, np.arange(span[0], span[-1] + 1))  # one contiguous span
        np.testing.assert_array_equal(out[:, ~columns], x[:, ~columns])  # the rest untouched
        lengths.add(span.size)
    assert lengths == set(range(1, 21))


def test_channel_dropout_never_drops_all() -> None:
    x = _signal(n_channels=3)
    always = RandChannelDropout(1.0, p=1.0, seed=6)
    for _ in range(50):
        out = always(x)
        kept = ~(out == 0.0).all(axis=1)
        assert kept.sum() == 1
        np.testing.assert_array_equal(out[kept], x[kept])
    sometimes = RandChannelDropout(1.0, p=0.5, seed=7)
    counts = []
    for _ in range(200):
        out = sometimes(x)
        dropped = (out == 0.0).all(axis=1)
        assert not dropped.all()
        np.testing.assert_array_equal(out[~dropped], x[~dropped])
        counts.append(dropped.sum())
    assert set(counts) == {0, 1, 2}
    single = _signal(n_channels=1)
    np.testing.assert_array_equal(RandChannelDropout(1.0, p=1.0)(single), single)


@pytest.mark.parametrize("mode", ["circular", "zeros"])
def test_time_shift(mode: str) -> None:
    x = _signal(n_channels=2, n_samples=100)
    transform = RandTimeShift(1.0, max_shift=10, mode=mode, seed=8)  # type: ignore[arg-type]
    shifts = set()
    for _ in range(200):
        out = transform(x)
        s = transform.shift
        shifts.add(s)
        if mode == "circular":
            np.testing.assert_array_equal(out, np.roll(x, s, axis=1))
        elif s >= 0:
            np.testing.assert_array_equal(out[:, s:], x[:, : 100 - s])
            np.testing.assert_array_equal(out[:, :s], 0.0)
        else:
            np.testing.assert_array_equal(out[:, :s], x[:, -s:])
            np.testing.assert_array_equal(out[:, s:], 0.0)
    assert shifts == set(range(-10, 11))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandGaussianNoise(prob=1.5),
        lambda: RandGaussianNoise(std=0.0),
        lambda: RandAmplitudeScale(low=1.2, high=0.8),
        lambda: RandAmplitudeScale(low=0.0),
        lambda: RandTimeMask(max_fraction=0.0),
        lambda: RandTimeMask(max_fraction=1.5),
        lambda: RandTimeMask(n_masks=0),
        lambda: RandChannelDropout(p=1.5),
        lambda: RandTimeShift(max_shift=-1),
        lambda: RandTimeShift(mode="wrap"),  # type: ignore[arg-type]
        lambda: RandBaselineWander(max_freq_hz=60.0, fs=100.0),
        lambda: RandTimeCrop(0),
        lambda: RandGaussianNoise(seed=-1),
        lambda: ecg_contrastive_views(0.0),
    ],
)
def test_bad_settings_raise_config_error(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError):
        make()


# ----------------------------------------------------------------------------------------------------
# default ECG pipeline
# ----------------------------------------------------------------------------------------------------
def test_ecg_contrastive_views_on_real_ptbxl(bundled_ptbxl: Path) -> None:
    record = wfdb.rdrecord(str(bundled_ptbxl / "records100/00000/00002_lr"))
    signal = NormalizePerChannel()(record.p_signal.T)
    sample = {"signal": signal, "meta": {"fs": 100.0, "channel_names": record.sig_name, "path": "r"}}
    original = copy.deepcopy(sample)
    views = ecg_contrastive_views(100.0, crop_length=250, seed=0)
    first, second = views(sample), views(sample)
    for view in (first, second):
        assert view["signal"].shape == (12, 250) and view["signal"].dtype == np.float32
        assert np.isfinite(view["signal"]).all()
        assert view["meta"] == original["meta"]
    assert not np.array_equal(first["signal"], second["signal"])  # two calls, two views
    again = ecg_contrastive_views(100.0, crop_length=250, seed=0)
    np.testing.assert_array_equal(again(sample)["signal"], first["signal"])
    other = ecg_contrastive_views(100.0, crop_length=250, seed=1)
    assert not np.array_equal(other(sample)["signal"], first["signal"])
    np.testing.assert_array_equal(sample["signal"], original["signal"])
    whole = ecg_contrastive_views(100.0, crop_length=None, seed=0)(sample)
    assert whole["signal"].shape == (12, 1000)
