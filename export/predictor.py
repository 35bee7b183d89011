"""Clinical inference without torch: onnxruntime + numpy/SciPy + the file readers.

:class:`OnnxPredictor` opens a model written by ``medcl export``, reads the preprocessing spec from its
metadata, and turns raw files (WFDB, EDF, CSV) into class probabilities with the same preprocessing code
as training (:mod:`modalities.signals.pipeline`). This module imports neither torch, Lightning nor MONAI
(a test runs it with those imports blocked).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ConfigError, InvalidSignalError
from modalities.signals.pipeline import make_windows, preprocess_recording, split_steps
from modalities.signals.readers import read_signal, select_channels

__all__ = ["FilePrediction", "ModelMetadataError", "OnnxPredictor"]

METADATA_KEY = "medcl"
SUPPORTED_FORMATS = ("medcl-onnx/1",)
SIGNAL_LAYOUT = "(B, C, T)"


class ModelMetadataError(ConfigError):
    """The ONNX file is not a medcl model, or its metadata is unusable."""


@dataclass
class FilePrediction:
    """Predictions for one recording.

    Attributes:
        path: the input file.
        probabilities: ``(K,)``, the mean of the window probabilities.
        window_probabilities: ``(N, K)``, one row per window.
        window_starts_s: ``(N,)``, where each window starts, in seconds from the start of the recording.
    """

    path: str
    probabilities: np.ndarray
    window_probabilities: np.ndarray
    window_starts_s: np.ndarray


class OnnxPredictor:
    """Predictions from a medcl ONNX model, on raw files or preprocessed arrays.

    Args:
        path: the ``.onnx`` file (written by ``medcl export``).
        batch_size: windows per onnxruntime call.
        providers: onnxruntime execution providers (default: CPU).

    Raises:
        ModelMetadataError: no medcl metadata, metadata that is not JSON, an unknown format version, or
            a graph whose input does not match the metadata.
    """

    def __init__(
        self, path: str | Path, batch_size: int = 64, providers: Sequence[str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"model {path} does not exist")
        try:
            self.session = ort.InferenceSession(
                self.path, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ModelMetadataError(
                f"{path}: not a readable ONNX model ({type(error).__name__}: {error})"
            ) from error
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelMetadataError(
                f"{path}: not a medcl model (its metadata has no {METADATA_KEY!r} entry); export models with "
                "`medcl export`"
            )
        try:
            self.metadata: dict[str, Any] = json.loads(raw)  # parsed as JSON, never evaluated
        except json.JSONDecodeError as error:
            raise ModelMetadataError(
                f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({error})"
            ) from error
        if self.metadata.get("format") not in SUPPORTED_FORMATS:
            raise ModelMetadataError(
                f"{path}: model format {self.metadata.get('format')!r} is not one this predictor reads "
                f"({', '.join(SUPPORTED_FORMATS)})"
            )
        spec = self.metadata["input"]
        if spec.get("layout") != SIGNAL_LAYOUT:
            raise ModelMetadataError(
                f"{path}: input layout {spec.get('layout')!r} is not a signal model's {SIGNAL_LAYOUT}"
            )
        self.channels: list[str] = list(spec["channels"])
        self.fs = float(spec["fs"])
        self.window = int(spec["window_samples"])
        self.steps: list[dict[str, Any]] = list(self.metadata["preprocessing"])
        split_steps(self.steps)  # every step known, one window step
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.task: str = self.metadata["task"]
        self.batch_size = batch_size
        graph_input = self.session.get_inputs()[0]
        expected = [len(self.channels), self.window]
        if list(graph_input.shape[1:]) != expected:
            raise ModelMetadataError(
                f"{path}: the graph takes {graph_input.shape} but the metadata describes (B, {expected[0]}, "
                f"{expected[1]})"
            )

    # ----------------------------------------------------------------------------------------------
    def minimum_fs(self) -> float:
        """The lowest recording rate that holds the frequency band the model was trained on."""
        highs = [
            step.get("high_hz") for step in self.steps if step["op"] == "bandpass" and step.get("high_hz")
        ]
        return 2.0 * float(highs[0]) if highs else self.fs

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` of preprocessed windows ``(N, C, T)``."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[1:] != (len(self.channels), self.window):
            raise InvalidSignalError(
                None,
                f"windows of shape {windows.shape} do not fit the model, which takes "
                f"(N, {len(self.channels)}, {self.window}): {len(self.channels)} channels "
                f"({', '.join(self.channels)}) of {self.window} samples at {self.fs:g} Hz",
            )
        outputs = [
            self.session.run(["probabilities"], {"input": windows[i : i + self.batch_size]})[0]
            for i in range(0, len(windows), self.batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.class_names)), np.float32)

    def preprocess_array(
        self, data: np.ndarray, fs: float, channel_names: Sequence[str], path: str = "<array>"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``(N, C, T)`` and their starts (seconds) of a raw recording ``(C_raw, T_raw)``.

        Raises:
            MissingChannelError: a channel the model needs is not in ``channel_names``.
            InvalidSignalError: the rate is too low for the model's frequency band, or the shape is wrong.
            DataError: too short for one window, NaN gaps, ...
        """
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 2 or data.shape[0] != len(channel_names):
            raise InvalidSignalError(
                path,
                f"expected (channels, samples) with {len(channel_names)} channels, got shape {data.shape}",
            )
        if fs < self.minimum_fs() * (1 - 1e-9):
            raise InvalidSignalError(
                path,
                f"sampled at {fs:g} Hz, too low for this model: it was trained on {self.fs:g} Hz signals "
                f"with content up to {self.minimum_fs() / 2:g} Hz (needs >= {self.minimum_fs():g} Hz)",
            )
        selected = data[select_channels(path, [str(c) for c in channel_names], self.channels)]
        x, fs_out = preprocess_recording(selected, float(fs), self.steps, self.channels, path)
        windows, starts = make_windows(x, self.steps, path)
        return windows, starts / fs_out

    def preprocess_file(self, path: str | Path, fs: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Windows and their starts (seconds) of a raw file (WFDB, EDF/BDF, CSV; ``fs`` for CSV without a
        time column)."""
        kwargs = {"fs": fs} if fs is not None else {}
        record = read_signal(path, channels=self.channels, **kwargs)
        return self.preprocess_array(record.data, record.fs, record.channel_names, str(path))

    def predict_file(self, path: str | Path, fs: float | None = None) -> FilePrediction:
        """Probabilities of one raw file: per window and their mean."""
        windows, starts = self.preprocess_file(path, fs)
        probabilities = self.predict_windows(windows)
        return FilePrediction(str(path), probabilities.mean(axis=0), probabilities, starts)

    def predict_array(
        self, data: np.ndarray, fs: float, channel_names: Sequence[str], path: str = "<array>"
    ) -> FilePrediction:
        """Probabilities of one raw recording given as an array ``(C_raw, T_raw)``."""
        windows, starts = self.preprocess_array(data, fs, channel_names, path)
        probabilities = self.predict_windows(windows)
        return FilePrediction(path, probabilities.mean(axis=0), probabilities, starts)

    def decide(self, probabilities: np.ndarray) -> str:
        """The predicted label(s): the most probable class, or (multi-label) every class >= 0.5."""
        if self.task == "multilabel":
            return "|".join(name for name, p in zip(self.class_names, probabilities, strict=True) if p >= 0.5)
        return self.class_names[int(np.argmax(probabilities))]

    def rows(self, prediction: FilePrediction, per_window: bool = False) -> list[dict[str, Any]]:
        """Table rows (one per file, or one per window) with a probability column per label name."""

        def row(probabilities: np.ndarray, **where: Any) -> dict[str, Any]:
            return {
                "file": prediction.path,
                **where,
                **{f"p_{name}": float(p) for name, p in zip(self.class_names, probabilities, strict=True)},
                "predicted": self.decide(probabilities),
            }

        if per_window:
            return [
                row(p, window=i, start_s=float(start))
                for i, (p, start) in enumerate(
                    zip(prediction.window_probabilities, prediction.window_starts_s, strict=True)
                )
            ]
        return [row(prediction.probabilities, windows=len(prediction.window_probabilities))]
