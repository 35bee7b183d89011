"""The signal preprocessing spec and the one code path that executes it (numpy/SciPy only).

An adapter describes its preprocessing as a list of JSON-able steps (``SignalAdapter.input_spec()``)::

    [{"op": "read", "channels": [...]},
     {"op": "fill_nan", "max_gap_s": 0.0},
     {"op": "resample", "to_hz": 100.0, "method": "polyphase"},
     {"op": "bandpass", "low_hz": 0.5, "high_hz": 40.0, "order": 4, "zero_phase": true},
     {"op": "notch", "freq_hz": 50.0, "quality": 30.0},          # optional
     {"op": "zscore", "scope": "recording", "eps": 1e-06},         # or scope "window" after "window"
     {"op": "window", "length": 200, "stride": 100}]

Training (the adapter) and inference (the torch-free ONNX predictor, which reads the spec from the
model's metadata) both run the steps through :func:`preprocess_recording` and :func:`make_windows`, with
the kernels of :mod:`modalities.signals.dsp`: a raw file becomes the same model input in both.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medcl.errors import ConfigError, DataError
from modalities.signals import dsp

__all__ = ["KNOWN_OPS", "finish_window", "make_windows", "preprocess_recording", "split_steps", "window_step"]

KNOWN_OPS = ("read", "fill_nan", "resample", "bandpass", "notch", "zscore", "window")

Step = Mapping[str, Any]


def split_steps(steps: Sequence[Step]) -> tuple[list[Step], Step, list[Step]]:
    """``(recording-level steps, the window step, window-level steps)``; checks every op is known."""
    unknown = [str(step.get("op")) for step in steps if step.get("op") not in KNOWN_OPS]
    if unknown:
        raise ConfigError(
            f"unknown preprocessing step(s) {unknown}; this medcl knows {', '.join(KNOWN_OPS)} "
            "(a model exported by a newer medcl needs a newer medcl)"
        )
    positions = [i for i, step in enumerate(steps) if step["op"] == "window"]
    if len(positions) != 1:
        raise ConfigError(f"a preprocessing spec needs exactly one 'window' step, got {len(positions)}")
    i = positions[0]
    return list(steps[:i]), steps[i], list(steps[i + 1 :])


def window_step(steps: Sequence[Step]) -> Step:
    """The ``window`` step (``length`` and ``stride`` in samples at the output rate)."""
    return split_steps(steps)[1]


@functools.lru_cache(maxsize=64)
def _bandpass(fs: float, low: float | None, high: float | None, order: int) -> dsp.BandPass:
    return dsp.BandPass(fs, low, high, order)


@functools.lru_cache(maxsize=64)
def _notch(fs: float, freq: float, quality: float) -> dsp.Notch:
    return dsp.Notch(fs, freq, quality)


def _apply(
    step: Step, x: np.ndarray, fs: float, channel_names: Sequence[str], path: str
) -> tuple[np.ndarray, float]:
    op = step["op"]
    if op == "read":
        return x, fs
    if op == "fill_nan":
        return dsp.FillNaN(float(step["max_gap_s"]), fs)(x, channel_names, path), fs
    if op == "resample":
        target = float(step["to_hz"])
        if np.isclose(fs, target, rtol=1e-9, atol=0.0):
            return x, fs
        return dsp.Resample(fs, target)(x), target
    if op == "bandpass":
        return _bandpass(fs, step.get("low_hz"), step.get("high_hz"), int(step.get("order", 4)))(x), fs
    if op == "notch":
        return _notch(fs, float(step["freq_hz"]), float(step.get("quality", 30.0)))(x), fs
    if op == "zscore":
        return dsp.NormalizePerChannel(float(step.get("eps", 1e-6)))(x), fs
    raise ConfigError(f"preprocessing step {op!r} cannot run here")


def preprocess_recording(
    data: np.ndarray,
    fs: float,
    steps: Sequence[Step],
    channel_names: Sequence[str] = (),
    path: str = "<signal>",
) -> tuple[np.ndarray, float]:
    """Run the recording-level steps (everything before ``window``) on a whole recording.

    Args:
        data: the recording, ``(C, T)`` in physical units, channels already selected and ordered as the
            ``read`` step names them.
        fs: its sampling rate in Hz.
        steps: the preprocessing spec.
        channel_names, path: for error messages.

    Returns:
        ``(x, fs_out)``: the preprocessed recording ``(C, T')`` float32 and its rate.

    Raises:
        DataError: the recording cannot be processed (gaps, too short for the filters, ...), naming ``path``.
    """
    recording_steps, _, _ = split_steps(steps)
    x = dsp.ensure_signal(data)
    try:
        for step in recording_steps:
            x, fs = _apply(step, x, fs, channel_names, path)
    except DataError as error:
        if error.path is None:
            raise type(error)(path, error.reason, error.hint) from error
        raise
    return x, fs


def finish_window(window: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """The window-level steps (after ``window``) on one window ``(C, L)``."""
    _, _, window_steps = split_steps(steps)
    for step in window_steps:
        window, _ = _apply(step, window, 0.0, (), "<window>")
    return window


def make_windows(
    x: np.ndarray, steps: Sequence[Step], path: str = "<signal>"
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a preprocessed recording ``(C, T')`` into model inputs.

    Returns:
        ``(windows, starts)``: ``(N, C, length)`` float32 and the start of each window (samples at the
        output rate).

    Raises:
        DataError: the recording is shorter than one window.
    """
    _, window, window_steps = split_steps(steps)
    length, stride = int(window["length"]), int(window["stride"])
    starts = dsp.segment_starts(x.shape[1], length, stride)
    if starts.size == 0:
        raise DataError(
            path,
            f"the recording has {x.shape[1]} samples after preprocessing, fewer than one window ({length})",
        )
    windows = dsp.Segment(length, stride)(x)
    if window_steps:
        windows = np.stack([finish_window(w, steps) for w in windows])
    return windows.astype(np.float32), starts
