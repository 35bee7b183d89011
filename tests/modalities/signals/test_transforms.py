"""Tests of modalities.signals.transforms: closed-form signals, real PTB-XL records, error messages."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy import signal as sps

from medcl.errors import ConfigError, InvalidSignalError, MissingChannelError
from modalities.signals.transforms import (
    BandPass,
    BandPassd,
    FillNaN,
    FillNaNd,
    NormalizePerChannel,
    NormalizePerChanneld,
    Notch,
    Notchd,
    Resample,
    Resampled,
    Segment,
    SelectChannels,
    SelectChannelsd,
    segment_starts,
)

RECORD = "records100/00000/00001_lr"


def _sine(freq: float, fs: float, seconds: float, amplitude: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * fs)) / fs
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def _amplitude(x: np.ndarray, freq: float, fs: float) -> float:
    """Amplitude of the ``freq`` component of ``x`` (1-D), by projection on sine and cosine."""
    t = np.arange(x.size) / fs
    return float(
        2 * np.hypot(np.mean(x * np.cos(2 * np.pi * freq * t)), np.mean(x * np.sin(2 * np.pi * freq * t)))
    )


def _db(ratio: float) -> float:
    return float(20 * np.log10(ratio))


@pytest.fixture(scope="module")
def ptbxl_sample(bundled_ptbxl: Path) -> dict:
    """One real bundled PTB-XL record as a sample dict (12 x 1000 at 100 Hz, mV)."""
    path = bundled_ptbxl / RECORD
    record = wfdb.rdrecord(str(path))
    return {
        "signal": record.p_signal.T.astype(np.float32),
        "meta": {"fs": float(record.fs), "channel_names": list(record.sig_name), "path": str(path)},
    }


# ----------------------------------------------------------------------------------------------------
# resampling
# ----------------------------------------------------------------------------------------------------
def test_resample_sine_360_to_100_keeps_frequency_and_amplitude() -> None:
    x = _sine(5.0, 360.0, 10.0, amplitude=1.5, phase=0.3)[None].astype(np.float32)
    y = Resample(360.0, 100.0)(x)
    assert y.shape == (1, 1000) and y.dtype == np.float32
    expected = _sine(5.0, 100.0, 10.0, amplitude=1.5, phase=0.3)
    middle = slice(50, -50)  # away from the edges (0.5 s)
    np.testing.assert_allclose(y[0, middle], expected[middle], atol=5e-3)
    assert _amplitude(y[0, middle], 5.0, 100.0) == pytest.approx(1.5, rel=3e-3)  # FIR ripple


@pytest.mark.parametrize(
    ("n_samples", "src_fs", "dst_fs", "up", "down", "expected_length"),
    [
        (3600, 360.0, 100.0, 5, 18, 1000),
        (1000, 100.0, 250.0, 5, 2, 2500),
        (1001, 100.0, 250.0, 5, 2, 2503),  # ceil(1001 * 5 / 2)
        (1000, 500.0, 128.0, 32, 125, 256),
        (1000, 100.0, 100.0, 1, 1, 1000),
    ],
)
def test_resample_ratio_and_length(
    n_samples: int, src_fs: float, dst_fs: float, up: int, down: int, expected_length: int
) -> None:
    resample = Resample(src_fs, dst_fs)
    assert (resample.up, resample.down) == (up, down)
    out = resample(np.zeros((2, n_samples), dtype=np.float32))
    assert out.shape == (2, expected_length) == (2, resample.output_length(n_samples))


@pytest.mark.parametrize(
    ("src_fs", "dst_fs"), [(0.0, 100.0), (100.0, -1.0), (1009.0, 997.0), (float("nan"), 1.0)]
)
def test_resample_rejects_bad_rates(src_fs: float, dst_fs: float) -> None:
    with pytest.raises(ConfigError):
        Resample(src_fs, dst_fs)


def test_resample_round_trip_on_real_ptbxl(ptbxl_sample: dict) -> None:
    x = ptbxl_sample["signal"]
    up = Resample(100.0, 250.0)(x)
    back = Resample(250.0, 100.0)(up)
    assert up.shape == (12, 2500) and back.shape == x.shape
    assert np.isfinite(back).all()
    # Content below the 50 Hz Nyquist survives both anti-aliasing filters: errors are a few uV.
    assert np.abs(back - x).max() < 0.02
    assert np.sqrt(np.mean((back - x) ** 2)) < 0.002


def test_resampled_updates_meta_without_mutating_input(ptbxl_sample: dict) -> None:
    original = copy.deepcopy(ptbxl_sample)
    out = Resampled("signal", target_fs=250.0)(ptbxl_sample)
    assert out["signal"].shape == (12, 2500) and out["signal"].dtype == np.float32
    assert out["meta"]["fs"] == 250.0
    assert out["meta"]["channel_names"] == original["meta"]["channel_names"]
    # the input dict, its meta and its array are untouched
    assert ptbxl_sample["meta"] == original["meta"]
    assert ptbxl_sample["meta"] is not out["meta"]
    np.testing.assert_array_equal(ptbxl_sample["signal"], original["signal"])


def test_resampled_is_a_no_op_at_the_target_rate(ptbxl_sample: dict) -> None:
    out = Resampled("signal", target_fs=100.0)(ptbxl_sample)
    assert out is not ptbxl_sample
    assert out["signal"] is ptbxl_sample["signal"] and out["meta"]["fs"] == 100.0


def test_dictionary_wrappers_need_meta() -> None:
    with pytest.raises(ConfigError, match="fs"):
        Resampled("signal", target_fs=100.0)({"signal": np.zeros((1, 10), dtype=np.float32)})
    with pytest.raises(ConfigError, match="fs"):
        BandPassd("signal", 0.5, 40.0)({"signal": np.zeros((1, 100), dtype=np.float32), "meta": {}})


# ----------------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------------
FS = 500.0
MIDDLE = slice(1000, 4000)  # 2 s to 8 s of a 10 s signal


def test_bandpass_keeps_10hz_and_removes_dc() -> None:
    x = (3.0 + _sine(10.0, FS, 10.0))[None].astype(np.float32)
    y = BandPass(FS, 0.5, 40.0)(x)[0]
    assert abs(_db(_amplitude(y[MIDDLE], 10.0, FS))) < 0.5
    assert abs(y[MIDDLE].mean()) < 1e-3  # the 3.0 offset is gone
    np.testing.assert_allclose(y[MIDDLE], _sine(10.0, FS, 10.0)[MIDDLE], atol=0.02)


@pytest.mark.parametrize(("order", "at_least_db"), [(4, 28.0), (6, 40.0), (8, 55.0)])
def test_bandpass_attenuates_60hz_as_designed(order: int, at_least_db: float) -> None:
    x = _sine(60.0, FS, 10.0)[None].astype(np.float32)
    bandpass = BandPass(FS, 0.5, 40.0, order=order)
    y = bandpass(x)[0]
    attenuation = -_db(_amplitude(y[MIDDLE], 60.0, FS))
    # forward-backward: twice the single-pass attenuation of the designed filter
    _, response = sps.sosfreqz(bandpass.sos, worN=[60.0], fs=FS)
    assert attenuation == pytest.approx(-2 * _db(abs(response[0])), abs=0.5)
    assert attenuation >= at_least_db


def test_lowpass_and_highpass_modes() -> None:
    x = (2.0 + _sine(60.0, FS, 10.0))[None].astype(np.float32)
    low = BandPass(FS, None, 20.0)(x)[0]  # keeps the offset, removes 60 Hz
    high = BandPass(FS, 1.0, None)(x)[0]  # removes the offset, keeps 60 Hz
    assert np.abs(low[MIDDLE] - 2.0).max() < 1e-3
    assert abs(high[MIDDLE].mean()) < 1e-3
    assert _amplitude(high[MIDDLE], 60.0, FS) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("fs", "low", "high", "order"),
    [
        (500.0, 40.0, 0.5, 4),  # low >= high
        (500.0, None, None, 4),  # nothing to do
        (500.0, 0.5, 250.0, 4),  # high at Nyquist
        (100.0, 0.5, 60.0, 4),  # above Nyquist
        (500.0, -1.0, 40.0, 4),
        (500.0, 0.5, 40.0, 0),
    ],
)
def test_bandpass_rejects_bad_settings(fs: float, low: float | None, high: float | None, order: int) -> None:
    with pytest.raises(ConfigError):
        BandPass(fs, low, high, order)


def test_bandpass_refuses_too_short_signals_naming_the_file() -> None:
    bandpass = BandPass(100.0, 0.5, 40.0)
    with pytest.raises(InvalidSignalError, match="more than 27 samples"):
        bandpass(np.zeros((1, bandpass.min_samples - 1), dtype=np.float32))
    assert bandpass(np.ones((1, bandpass.min_samples), dtype=np.float32)).shape == (1, bandpass.min_samples)
    sample = {"signal": np.zeros((1, 20), dtype=np.float32), "meta": {"fs": 100.0, "path": "/data/r1.hea"}}
    with pytest.raises(InvalidSignalError, match=r"/data/r1\.hea"):
        BandPassd("signal", 0.5, 40.0)(sample)


def test_bandpass_on_real_ptbxl(ptbxl_sample: dict) -> None:
    original = copy.deepcopy(ptbxl_sample)
    out = BandPassd("signal", 0.5, 40.0)(ptbxl_sample)
    y = out["signal"]
    assert y.shape == (12, 1000) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(y.mean(axis=1)).max() < 0.02  # baseline removed, per lead
    assert out["meta"] == original["meta"]
    np.testing.assert_array_equal(ptbxl_sample["signal"], original["signal"])


def test_bandpass_edges_match_the_whole_record(bundled_ptbxl: Path) -> None:
    """Filtering a 4 s piece gives about what filtering the whole 10 s record gives on that piece
    (10 real records), clearly closer than SciPy's default edge padding."""
    bandpass = BandPass(100.0, 0.5, 40.0)
    ours, scipy_default = [], []
    for i in range(1, 11):
        x = wfdb.rdrecord(str(bundled_ptbxl / f"records100/00000/{i:05d}_lr")).p_signal.T.astype(np.float32)
        whole = bandpass(x)[:, 300:700]
        ours.append(np.sqrt(np.mean((bandpass(x[:, 300:700]) - whole) ** 2)))
        default = sps.sosfiltfilt(bandpass.sos, x[:, 300:700].astype(np.float64), axis=-1)
        scipy_default.append(np.sqrt(np.mean((default - whole) ** 2)))
    assert np.mean(ours) < 0.018  # mV
    assert np.mean(ours) < 0.5 * np.mean(scipy_default)


def test_notch_removes_50hz_and_keeps_10hz() -> None:
    x = (_sine(50.0, FS, 10.0) + _sine(10.0, FS, 10.0, amplitude=0.5))[None].astype(np.float32)
    y = Notch(FS, 50.0, 30.0)(x)[0]
    assert _db(_amplitude(y[MIDDLE], 50.0, FS)) < -40.0
    assert abs(_db(_amplitude(y[MIDDLE], 10.0, FS) / 0.5)) < 0.1


def test_notchd_reads_fs_and_rejects_nyquist() -> None:
    x = (_sine(60.0, FS, 10.0))[None].astype(np.float32)
    out = Notchd("signal", freq=60.0)({"signal": x, "meta": {"fs": FS}})
    assert _db(_amplitude(out["signal"][0, MIDDLE], 60.0, FS)) < -40.0
    with pytest.raises(ConfigError, match="Nyquist"):
        Notch(100.0, 50.0)
    with pytest.raises(ConfigError, match="Nyquist"):
        Notchd("signal", freq=50.0)({"signal": np.zeros((1, 100), np.float32), "meta": {"fs": 100.0}})


# ----------------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------------
def test_normalize_per_channel_and_flat_channel() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([5.0 + 3.0 * rng.standard_normal(500), np.full(500, 7.3), rng.standard_normal(500) * 1e-3])
    y = NormalizePerChannel()(x.astype(np.float32))
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(y[[0, 2]].mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(y[[0, 2]].std(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(y[1], 0.0)


def test_normalize_per_channeld(ptbxl_sample: dict) -> None:
    out = NormalizePerChanneld("signal")(ptbxl_sample)
    np.testing.assert_allclose(out["signal"].std(axis=1), 1.0, atol=1e-5)
    assert out["meta"] is ptbxl_sample["meta"]  # nothing about the meta changes


# ----------------------------------------------------------------------------------------------------
# channels
# ----------------------------------------------------------------------------------------------------
def test_select_channelsd_orders_as_asked_case_insensitively(ptbxl_sample: dict) -> None:
    names = ptbxl_sample["meta"]["channel_names"]  # PTB-XL spells "AVR"
    assert "AVR" in names
    original = copy.deepcopy(ptbxl_sample)
    out = SelectChannelsd("signal", ["V1", "aVR", "I"])(ptbxl_sample)
    expected = ptbxl_sample["signal"][[names.index("V1"), names.index("AVR"), names.index("I")]]
    np.testing.assert_array_equal(out["signal"], expected)
    assert out["meta"]["channel_names"] == ["V1", "aVR", "I"]
    assert ptbxl_sample["meta"] == original["meta"]


def test_select_channels_missing_lead_error_names_file_and_leads(ptbxl_sample: dict) -> None:
    with pytest.raises(MissingChannelError) as info:
        SelectChannelsd("signal", ["I", "V7", "X1"])(ptbxl_sample)
    message = str(info.value)
    assert info.value.path == ptbxl_sample["meta"]["path"]
    assert message.startswith(ptbxl_sample["meta"]["path"])
    assert "missing channel(s) V7, X1" in message
    assert "the record has I, II, III, AVR, AVL, AVF, V1, V2, V3, V4, V5, V6" in message


@pytest.mark.parametrize("channels", [[], "I", ["I", "i"], [1, 2]])
def test_select_channels_rejects_bad_lists(channels: object) -> None:
    with pytest.raises(ConfigError):
        SelectChannels(channels)  # type: ignore[arg-type]


def test_select_channels_matches_eeg_names_like_the_readers() -> None:
    signal = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = SelectChannels(["Fp1", "T7"])(signal, ["EEG T3-REF", "EEG Fp1", "ECG"])
    np.testing.assert_array_equal(out, signal[[1, 0]])


def test_select_channels_checks_names_against_signal() -> None:
    with pytest.raises(InvalidSignalError, match="2 channels in the signal but 3"):
        SelectChannels(["I"])(np.zeros((2, 5), np.float32), ["I", "II", "III"])


# ----------------------------------------------------------------------------------------------------
# missing values
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([0.0, np.nan, np.nan, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]),
        ([1.0, np.nan, 2.0, np.nan, np.nan, 8.0], [1.0, 1.5, 2.0, 4.0, 6.0, 8.0]),
        ([np.nan, 5.0, 6.0], [5.0, 5.0, 6.0]),  # edge: nearest valid value
        ([5.0, 6.0, np.nan, np.nan], [5.0, 6.0, 6.0, 6.0]),
        ([1.0, np.inf, 3.0], [1.0, 2.0, 3.0]),
    ],
)
def test_fill_nan_interpolates_short_gaps_exactly(row: list[float], expected: list[float]) -> None:
    x = np.array([row, np.arange(len(row))], dtype=np.float32)
    y = FillNaN(max_gap_s=2.0, fs=1.0)(x)
    np.testing.assert_array_equal(y[0], np.array(expected, dtype=np.float32))
    np.testing.assert_array_equal(y[1], x[1])


def test_fill_nand_rejects_long_gap_and_all_nan_naming_file_and_channel() -> None:
    x = np.ones((2, 100), dtype=np.float32)
    x[1, 10:40] = np.nan  # 30 samples = 0.3 s at 100 Hz
    sample = {"signal": x, "meta": {"fs": 100.0, "channel_names": ["I", "V2"], "path": "/data/r7.dat"}}
    assert np.isfinite(FillNaNd("signal", max_gap_s=0.3)(sample)["signal"]).all()
    with pytest.raises(InvalidSignalError) as info:
        FillNaNd("signal", max_gap_s=0.29)(sample)
    assert info.value.path == "/data/r7.dat"
    assert "channel 'V2'" in str(info.value) and "30 invalid samples" in str(info.value)
    x[0] = np.nan
    with pytest.raises(InvalidSignalError, match="channel 'I' has no valid sample"):
        FillNaNd("signal", max_gap_s=10.0)(sample)
    with pytest.raises(InvalidSignalError, match="channel 0 has no valid sample"):
        FillNaN(10.0, 100.0)(x)


# ----------------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_samples", "window", "stride", "expected"),
    [
        (10, 4, 2, [0, 2, 4, 6]),
        (10, 4, 4, [0, 4]),  # trailing 2 samples dropped
        (10, 3, 5, [0, 5]),
        (4, 4, 1, [0]),
        (3, 4, 1, []),  # shorter than a window
        (0, 1, 1, []),
        (1000, 250, 250, [0, 250, 500, 750]),
    ],
)
def test_segment_starts(n_samples: int, window: int, stride: int, expected: list[int]) -> None:
    starts = segment_starts(n_samples, window, stride)
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize(
    ("n_samples", "window", "stride"), [(10, 0, 1), (10, 2, 0), (-1, 2, 1), (10, 2.5, 1)]
)
def test_segment_starts_rejects_bad_arguments(n_samples: int, window: int, stride: int) -> None:
    with pytest.raises(ConfigError):
        segment_starts(n_samples, window, stride)


def test_segment_windows_and_empty_case() -> None:
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    windows = Segment(window=4, stride=3)(x)
    assert windows.shape == (3, 2, 4) and windows.dtype == np.float32
    for i, start in enumerate([0, 3, 6]):
        np.testing.assert_array_equal(windows[i], x[:, start : start + 4])
    windows[0, 0, 0] = -1.0  # a copy, not a view of the input
    assert x[0, 0] == 0.0
    empty = Segment(window=20, stride=5)(x)
    assert empty.shape == (0, 2, 20) and empty.dtype == np.float32
