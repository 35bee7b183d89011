"""Segment-level signal quality and motion checks for wearable recordings.

Wearable recordings are long and only partly usable: a sensor slips (flat line), saturates (clipped at
the ADC rail), loses samples (NaN), or the wearer moves (motion artefacts in PPG). Rather than reject a
whole recording, each fixed-length *segment* is checked on the raw samples (before resampling and
filtering, which would smear plateaus and NaN) and rejected for any of:

- ``"nan"``: more invalid (NaN/inf) samples in a channel than ``max_nan_fraction``;
- ``"flat"``: a channel constant over the whole segment, or for at least ``max_flat_s`` seconds at a value
  that is not the segment's extreme (a dropout);
- ``"clipped"``: a channel sits at its segment maximum or minimum for more than ``max_clipped_fraction``
  of the samples, or for at least ``max_flat_s`` seconds in one run (saturation at a rail);
- ``"motion"``: the standard deviation of the accelerometer magnitude over the segment exceeds
  ``motion_threshold`` (in g; an accelerometer in m/s² is converted), when the recording has one.

"Constant" means consecutive samples differing by at most ``flat_tolerance`` (0: exactly equal).
Defaults were chosen on BIDMC's 125 Hz PPG (subjects 01-40): there, real runs of exactly repeated PPG
samples last at most 0.5 s except in dropouts, and unsaturated segments have < 1 % of their samples at
their extremes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medcl.errors import ConfigError

__all__ = [
    "SEGMENT_PROBLEMS",
    "SegmentQuality",
    "assess_segment",
    "constant_runs",
    "segment_bounds",
]

SEGMENT_PROBLEMS: tuple[str, ...] = ("nan", "flat", "clipped", "motion")
_G = 9.80665
_MS2_UNITS = {"m/s^2", "m/s2", "m/s²", "m s-2", "m/s/s"}


@dataclass(frozen=True)
class SegmentQuality:
    """Thresholds of the segment checks (see the module docstring).

    Args:
        max_nan_fraction: invalid samples allowed per channel, in ``[0, 1]``.
        max_flat_s: longest constant run allowed, in seconds (> 0).
        flat_tolerance: largest step between consecutive samples that still counts as constant (>= 0).
        max_clipped_fraction: fraction of samples allowed at a channel's segment extremes, in ``[0, 1]``.
        motion_threshold: accelerometer-magnitude standard deviation (g) above which a segment is
            motion-corrupted; ``None`` disables the check.
        check_flat: run the ``"flat"`` check (``False`` keeps flat segments, e.g. for a sensor that
            legitimately rests).
    """

    max_nan_fraction: float = 0.0
    max_flat_s: float = 1.0
    flat_tolerance: float = 0.0
    max_clipped_fraction: float = 0.02
    motion_threshold: float | None = 0.1
    check_flat: bool = True

    def __post_init__(self) -> None:
        for name in ("max_nan_fraction", "max_clipped_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if not (math.isfinite(self.max_flat_s) and self.max_flat_s > 0):
            raise ConfigError(f"max_flat_s must be > 0, got {self.max_flat_s}")
        if not (math.isfinite(self.flat_tolerance) and self.flat_tolerance >= 0):
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if self.motion_threshold is not None and not self.motion_threshold > 0:
            raise ConfigError(
                f"motion_threshold must be > 0 (or None to disable), got {self.motion_threshold}"
            )

    def as_dict(self) -> dict[str, float | bool | None]:
        return asdict(self)


def segment_bounds(n_samples: int, fs: float, segment_s: float, stride_s: float) -> np.ndarray:
    """``(start_s, stop_s)`` of every whole segment of a recording of ``n_samples`` at ``fs``.

    Segments start at 0 and every ``stride_s`` seconds; the tail shorter than one segment is dropped.

    Returns:
        ``(N, 2)`` float64 seconds.
    """
    if not (segment_s > 0 and stride_s > 0 and fs > 0):
        raise ConfigError(f"segment_s, stride_s and fs must be > 0, got {segment_s}, {stride_s}, {fs}")
    duration = n_samples / fs
    if duration + 1e-9 < segment_s:
        return np.zeros((0, 2))
    count = math.floor((duration - segment_s) / stride_s + 1e-9) + 1
    starts = np.arange(count) * stride_s
    return np.stack([starts, starts + segment_s], axis=1)


def constant_runs(x: np.ndarray, tolerance: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of (near-)constant samples: consecutive samples differing by at most ``tolerance``.

    NaN breaks a run. A run has at least 2 samples.

    Args:
        x: one channel, ``(T,)``.
        tolerance: largest allowed step, >= 0.

    Returns:
        ``(starts, lengths, values)``: first index, number of samples and first value of every run.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    step = np.abs(np.diff(x))
    same = step <= tolerance  # NaN compares False: it breaks runs
    edges = np.diff(np.concatenate(([0], same.astype(np.int8), [0])))
    begin, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # over the steps
    lengths = end - begin + 1
    return begin.astype(np.int64), lengths.astype(np.int64), x[begin]


def _accel_in_g(magnitude: np.ndarray, unit: str) -> np.ndarray:
    return magnitude / _G if unit.strip().lower() in _MS2_UNITS else magnitude


def assess_segment(
    signal: np.ndarray,
    fs: float,
    channel_names: Sequence[str],
    quality: SegmentQuality,
    accel_magnitude: np.ndarray | None = None,
    accel_unit: str = "g",
) -> tuple[list[str], list[str], dict[str, float]]:
    """Check one raw segment.

    Args:
        signal: the model channels of the segment, ``(C, L)`` in physical units at ``fs``.
        fs: the raw sampling rate, Hz.
        channel_names: ``C`` names, for the details.
        quality: the thresholds.
        accel_magnitude: ``(L,)`` accelerometer magnitude over the same span, or None (no motion check).
        accel_unit: its unit (``"g"``, or ``"m/s^2"``, converted to g).

    Returns:
        ``(problems, details, metrics)``: the failed checks (in :data:`SEGMENT_PROBLEMS` order, each once),
        one sentence per finding, and ``nan_fraction``, ``longest_flat_s``, ``clipped_fraction`` (worst
        channel) and ``motion`` (g; NaN without accelerometer).
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(channel_names):
        raise ValueError(f"signal must be (C, L) with C = {len(channel_names)} channels, got {x.shape}")
    found: dict[str, list[str]] = {problem: [] for problem in SEGMENT_PROBLEMS}
    worst_nan = worst_flat = worst_clip = 0.0
    longest_allowed = quality.max_flat_s * fs
    for name, channel in zip(channel_names, x, strict=True):
        invalid = ~np.isfinite(channel)
        nan_fraction = float(invalid.mean()) if channel.size else 1.0
        worst_nan = max(worst_nan, nan_fraction)
        if nan_fraction > quality.max_nan_fraction:
            found["nan"].append(f"{name} {nan_fraction:.1%} NaN")
        valid = channel[~invalid]
        if valid.size == 0:
            continue
        low, high = float(valid.min()), float(valid.max())
        if high - low <= quality.flat_tolerance:
            worst_flat = max(worst_flat, channel.size / fs)
            if quality.check_flat:
                found["flat"].append(f"{name} constant over the whole segment ({low:.4g})")
            continue
        starts, lengths, values = constant_runs(np.where(invalid, np.nan, channel), quality.flat_tolerance)
        at_extreme = (np.abs(values - high) <= quality.flat_tolerance) | (
            np.abs(values - low) <= quality.flat_tolerance
        )
        long_runs = lengths >= longest_allowed
        if lengths.size:
            worst_flat = max(worst_flat, float(lengths.max()) / fs)
        middle = long_runs & ~at_extreme
        if quality.check_flat and middle.any():
            k = int(np.argmax(np.where(middle, lengths, 0)))
            found["flat"].append(f"{name} constant for {lengths[k] / fs:.2f} s from {starts[k] / fs:.2f} s")
        tol = quality.flat_tolerance
        clipped = float(((np.abs(valid - high) <= tol) | (np.abs(valid - low) <= tol)).mean())
        worst_clip = max(worst_clip, clipped)
        if clipped > quality.max_clipped_fraction:
            found["clipped"].append(f"{name} {clipped:.1%} of samples at its extremes")
        elif (long_runs & at_extreme).any():
            k = int(np.argmax(np.where(long_runs & at_extreme, lengths, 0)))
            found["clipped"].append(f"{name} saturated for {lengths[k] / fs:.2f} s at {values[k]:.4g}")
    motion = math.nan
    if accel_magnitude is not None:
        magnitude = _accel_in_g(np.asarray(accel_magnitude, dtype=np.float64), accel_unit)
        finite = magnitude[np.isfinite(magnitude)]
        motion = float(finite.std()) if finite.size > 1 else math.nan
        if quality.motion_threshold is not None and finite.size > 1 and motion > quality.motion_threshold:
            found["motion"].append(
                f"accelerometer magnitude varies by {motion:.3g} g (std) > {quality.motion_threshold:g} g"
            )
    problems = [problem for problem in SEGMENT_PROBLEMS if found[problem]]
    details = [detail for problem in SEGMENT_PROBLEMS for detail in found[problem]]
    metrics = {
        "nan_fraction": worst_nan,
        "longest_flat_s": worst_flat,
        "clipped_fraction": worst_clip,
        "motion": motion,
    }
    return problems, details, metrics
