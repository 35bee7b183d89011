"""Clinical inference without torch: onnxruntime + numpy/SciPy + the file readers.

:class:`OnnxPredictor` opens a model written by ``medcl export`` and reads the preprocessing spec from its
metadata. A signal classifier turns raw files (WFDB, EDF, CSV) into class probabilities with the same
preprocessing code as training (:mod:`modalities.signals.pipeline`). An image classifier (an X-ray model:
metadata ``input.layout`` ``"(B, C, H, W)"``) turns a PNG, JPEG or DICOM radiograph (the format found from
the file's content, so DICOM files without a suffix work) into class probabilities through the same
numpy preprocessing as training (:func:`modalities.xray.transforms.preprocess_file` run on the metadata's
``preprocessing`` spec). A volume segmentation model (metadata
``task`` ``"segmentation"``) turns a NIfTI/NRRD file or a DICOM series into a label map on the input's
own grid: the numpy twin of the MONAI training transforms (:mod:`export.volume_preprocess`), sliding-window
inference over the model's ROI (:mod:`export.sliding_window`), softmax, argmax, and the inverse of the
spatial steps; :func:`predict_volumes` writes one NIfTI mask per input. This module imports neither torch,
Lightning nor MONAI (tests run it with those imports blocked).

The segmentation metadata (``"medcl"`` JSON, format ``medcl-onnx/1``)::

    {"format": "medcl-onnx/1", "task": "segmentation", "modality": "MR",
     "class_names": ["background", "anterior", "posterior"],
     "input": {"name": "input", "layout": "(B, C, H, W, D)", "dtype": "float32", "channels": ["image"]},
     "outputs": {"logits": "(B, K, H, W, D) raw scores"},
     "preprocessing": [{"op": "load", "channels": 1},
                       {"op": "orientation", "axcodes": "RAS"},
                       {"op": "spacing", "pixdim": [1.0, 1.0, 1.0], "image_mode": "bilinear",
                        "mask_mode": "nearest", "padding_mode": "border", "align_corners": false},
                       {"op": "zscore", "nonzero": true, "channel_wise": true},
                       {"op": "pad", "min_size": [96, 96, 96], "method": "symmetric", "value": 0.0}],
     "segmentation": {"roi_size": [96, 96, 96], "overlap": 0.25, "mode": "gaussian", "sigma_scale": 0.125,
                      "sw_batch_size": 4, "padding_mode": "constant", "cval": 0.0, "output": "logits",
                      "activation": "softmax", "inverse_interpolation": "nearest"}}

``preprocessing`` is the training spec of :mod:`modalities.volumes.transforms` (run here by
:mod:`export.volume_preprocess`). Only ``segmentation.roi_size`` is required in the block; the other
entries default to the values shown. The graph takes ``input`` ``(B, C, *roi_size)`` float32 and returns
``output`` ``(B, K, *roi_size)``; the window outputs are blended (MONAI's ``sliding_window_inference``
with ``overlap``, ``mode``, ``sigma_scale``, ``padding_mode``, ``cval``), then ``activation`` over K.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.sliding_window import BLEND_MODES, PADDING_MODES, sliding_window_inference
from export.volume_preprocess import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    Volume,
    VolumeGeometry,
    check_steps,
    preprocess_volume,
    read_volume,
    to_input_grid,
)
from medcl.errors import ConfigError, InvalidSignalError, InvalidVolumeError
from modalities.signals.pipeline import make_windows, preprocess_recording, split_steps
from modalities.signals.readers import read_signal, select_channels
from modalities.xray.transforms import Geometry, check_spec, image_size_of, preprocess_file

__all__ = [
    "FilePrediction",
    "ImagePrediction",
    "ModelMetadataError",
    "OnnxPredictor",
    "VolumePrediction",
    "mask_path_for",
    "predict_volumes",
    "save_mask",
]

METADATA_KEY = "medcl"
SUPPORTED_FORMATS = ("medcl-onnx/1",)
SIGNAL_LAYOUT = "(B, C, T)"
IMAGE_LAYOUT = "(B, C, H, W)"
VOLUME_LAYOUT = "(B, C, H, W, D)"
SEGMENTATION_TASK = "segmentation"
# the "segmentation" metadata block: its keys and their defaults (roi_size has none: it is required)
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "overlap": 0.25,
    "mode": "gaussian",
    "sigma_scale": 0.125,
    "sw_batch_size": 4,
    "padding_mode": "constant",
    "cval": 0.0,
    "output": "logits",
    "activation": "softmax",
    "inverse_interpolation": "nearest",
}
MASK_SUFFIX = "_mask.nii.gz"


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


@dataclass
class ImagePrediction:
    """Predictions for one image (a radiograph).

    Attributes:
        path: the input file.
        probabilities: ``(K,)``.
        image: ``(C, H, W)`` float32, the model's input (the file after the model's preprocessing).
        geometry: where the original image went in the model's input (letterbox scale and padding).
    """

    path: str
    probabilities: np.ndarray
    image: np.ndarray
    geometry: Geometry


@dataclass
class VolumePrediction:
    """The segmentation of one volume.

    Attributes:
        path: the input (a file, a DICOM series folder, or ``"<array>"``).
        labels: ``(H, W, D)`` uint8 (int32 beyond 256 classes): the label map on the input's grid.
        affine: ``(4, 4)``, the input's voxel → RAS affine (the one to write ``labels`` with).
        probabilities: ``(K, H', W', D')`` float32, softmax of the blended logits on the model's grid.
        model_labels: ``(H', W', D')``, the argmax of ``probabilities``.
        geometry: how the model's grid maps onto the input's grid.
    """

    path: str
    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray
    model_labels: np.ndarray
    geometry: VolumeGeometry

    @property
    def model_affine(self) -> np.ndarray:
        """``(4, 4)``, the voxel → RAS affine of the model's grid."""
        return self.geometry.model_affine


def _label_dtype(n_classes: int) -> type:
    return np.uint8 if n_classes <= 256 else np.int32


def _softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=axis, keepdims=True)).astype(np.float32)


class OnnxPredictor:
    """Predictions from a medcl ONNX model, on raw files or preprocessed arrays.

    Signal classifiers: :meth:`predict_file`, :meth:`predict_array`, :meth:`predict_windows`. Image
    classifiers (X-rays): :meth:`predict_file` / :meth:`predict_image`, :meth:`preprocess_image`,
    :meth:`predict_images`. Volume
    segmentation models (``task == "segmentation"``): :meth:`predict_volume`, :meth:`write_mask`,
    :meth:`preprocess_volume`, :meth:`predict_preprocessed`; calling the other kind's methods raises
    :class:`ModelMetadataError`.

    Args:
        path: the ``.onnx`` file (written by ``medcl export``).
        batch_size: windows per onnxruntime call (signal models; a segmentation model runs
            ``segmentation.sw_batch_size`` windows per call).
        providers: onnxruntime execution providers (default: CPU).

    Raises:
        ModelMetadataError: no medcl metadata, metadata that is not JSON, an unknown format version, a
            graph whose input or output does not match the metadata, or (segmentation) a missing or bad
            ``segmentation`` block or preprocessing step.
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
        if not isinstance(self.metadata, dict):
            raise ModelMetadataError(
                f"{path}: the {METADATA_KEY!r} metadata is JSON but not an object "
                f"({type(self.metadata).__name__})"
            )
        if self.metadata.get("format") not in SUPPORTED_FORMATS:
            raise ModelMetadataError(
                f"{path}: model format {self.metadata.get('format')!r} is not one this predictor reads "
                f"({', '.join(SUPPORTED_FORMATS)})"
            )
        self.task: str = str(self.metadata.get("task"))
        self.batch_size = batch_size
        if self.task == SEGMENTATION_TASK:
            self.kind = "volume"
            self._init_segmentation()
            return
        layout = (self.metadata.get("input") or {}).get("layout")
        self.kind = "image" if layout == IMAGE_LAYOUT else "signal"
        try:
            self._init_images() if self.kind == "image" else self._init_signals()
        except ModelMetadataError:
            raise
        except ConfigError as error:  # e.g. an unknown preprocessing step
            raise ModelMetadataError(f"{path}: {error}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # data of the wrong shape
            raise ModelMetadataError(
                f"{path}: malformed {self.kind} model metadata ({type(error).__name__}: {error})"
            ) from None

    def _init_images(self) -> None:
        path = self.path
        spec = self.metadata["input"]
        self.steps = check_spec(self.metadata["preprocessing"])  # ConfigError on an unknown/bad step
        self.image_size: tuple[int, int] = image_size_of(self.steps)
        self.n_channels = int(spec["channels"])
        self.channels = [f"channel_{c}" for c in range(self.n_channels)]
        self.class_names = list(self.metadata["class_names"])
        graph_input = self.session.get_inputs()[0]
        expected = [self.n_channels, *self.image_size]
        if list(graph_input.shape[1:]) != expected or self.n_channels != 1:
            raise ModelMetadataError(
                f"{path}: the graph takes {graph_input.shape} but the preprocessing makes (B, 1, "
                f"{self.image_size[0]}, {self.image_size[1]}) grey images"
            )

    def _init_signals(self) -> None:
        path = self.path
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
        graph_input = self.session.get_inputs()[0]
        expected = [len(self.channels), self.window]
        if list(graph_input.shape[1:]) != expected:
            raise ModelMetadataError(
                f"{path}: the graph takes {graph_input.shape} but the metadata describes (B, {expected[0]}, "
                f"{expected[1]})"
            )

    def _init_segmentation(self) -> None:
        path, meta = self.path, self.metadata
        spec = meta.get("input") or {}
        if spec.get("layout") != VOLUME_LAYOUT:
            raise ModelMetadataError(
                f"{path}: input layout {spec.get('layout')!r} is not a volume model's {VOLUME_LAYOUT}"
            )
        block = meta.get("segmentation")
        if not isinstance(block, dict) or "roi_size" not in block:
            raise ModelMetadataError(
                f"{path}: a segmentation model needs a 'segmentation' metadata block with at least 'roi_size'"
            )
        unknown = sorted(set(block) - set(SEGMENTATION_DEFAULTS) - {"roi_size"})
        if unknown:
            raise ModelMetadataError(
                f"{path}: unknown 'segmentation' metadata entries {unknown} (a model exported by a newer "
                "medcl needs a newer medcl)"
            )
        settings = {**SEGMENTATION_DEFAULTS, **block}
        roi = settings["roi_size"]
        if not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r > 0 for r in roi)):
            raise ModelMetadataError(
                f"{path}: segmentation roi_size must be 3 positive integers, got {roi!r}"
            )
        overlap = settings["overlap"]
        overlaps = overlap if isinstance(overlap, list) else [overlap]
        if not all(isinstance(o, (int, float)) and 0 <= o < 1 for o in overlaps):
            raise ModelMetadataError(f"{path}: segmentation overlap must be in [0, 1), got {overlap!r}")
        for key, allowed in (
            ("mode", BLEND_MODES),
            ("padding_mode", tuple(PADDING_MODES)),
            ("activation", ("softmax",)),
            ("inverse_interpolation", ("nearest", "bilinear")),
        ):
            if settings[key] not in allowed:
                raise ModelMetadataError(
                    f"{path}: segmentation {key} {settings[key]!r} is not one of {', '.join(allowed)}"
                )
        self.segmentation: dict[str, Any] = settings
        self.roi_size: tuple[int, int, int] = (int(roi[0]), int(roi[1]), int(roi[2]))
        self.channels = [str(c) for c in spec.get("channels") or ["image"]]
        self.class_names = list(meta.get("class_names") or [])
        self.steps = list(meta.get("preprocessing") or [])
        try:
            check_steps(self.steps)
        except ConfigError as error:
            raise ModelMetadataError(f"{path}: {error}") from None
        loads = [int(step["channels"]) for step in self.steps if step["op"] == "load"]
        if loads and loads[0] != len(self.channels):
            raise ModelMetadataError(
                f"{path}: the preprocessing loads {loads[0]} channel(s) but the input names "
                f"{len(self.channels)} ({', '.join(self.channels)})"
            )
        graph_input = self.session.get_inputs()[0]
        expected = [len(self.channels), *self.roi_size]
        if len(graph_input.shape) != 5 or list(graph_input.shape[1:]) != expected:
            raise ModelMetadataError(
                f"{path}: the graph takes {graph_input.shape} but the metadata describes (B, {expected[0]}, "
                f"{', '.join(map(str, self.roi_size))})"
            )
        self.input_name: str = graph_input.name
        outputs = {o.name: o for o in self.session.get_outputs()}
        if settings["output"] not in outputs:
            raise ModelMetadataError(
                f"{path}: the graph has no output {settings['output']!r} (it has {', '.join(outputs)})"
            )
        n_classes = outputs[settings["output"]].shape[1]
        if not self.class_names or (isinstance(n_classes, int) and n_classes != len(self.class_names)):
            raise ModelMetadataError(
                f"{path}: the graph returns {n_classes} classes but the metadata names "
                f"{len(self.class_names)} ({self.class_names})"
            )

    def _require(self, kind: str) -> None:
        """Refuse the methods of one kind of model (signal, image, volume) on another kind."""
        if kind != self.kind and "image" in (kind, self.kind):
            hint = (
                "use predict_file / predict_image on image files"
                if self.kind == "image"
                else "this model does not take images"
            )
            raise ModelMetadataError(f"{self.path}: a {self.kind} model, not a(n) {kind} model; {hint}")
        if kind == "volume" and self.task != SEGMENTATION_TASK:
            raise ModelMetadataError(
                f"{self.path}: a {self.task} model of signals, not a volume segmentation model; "
                "use predict_file"
            )
        if kind == "signal" and self.task == SEGMENTATION_TASK:
            raise ModelMetadataError(
                f"{self.path}: a volume segmentation model; use predict_volume / predict_volumes "
                "(medcl predict --out DIR writes one mask per volume)"
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
        self._require("signal")
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
        self._require("signal")
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
        self._require("signal")
        kwargs = {"fs": fs} if fs is not None else {}
        record = read_signal(path, channels=self.channels, **kwargs)
        return self.preprocess_array(record.data, record.fs, record.channel_names, str(path))

    def predict_file(self, path: str | Path, fs: float | None = None) -> FilePrediction | ImagePrediction:
        """Probabilities of one raw file: per window and their mean (signal models), or of one image
        (image models; ``fs`` must then be None)."""
        if self.kind == "image":
            if fs is not None:
                raise ConfigError("fs is an option of signal models; this model classifies images")
            return self.predict_image(path)
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

    # ----------------------------------------------------------------------------------------------
    # Images (X-ray classifiers)

    def preprocess_image(self, path: str | Path) -> tuple[np.ndarray, Geometry]:
        """The model's input ``(1, H, W)`` float32 for a PNG, JPEG or DICOM radiograph (the training
        preprocessing, :func:`modalities.xray.transforms.preprocess_file`), and its letterbox geometry.

        Raises:
            DataError: the file cannot be read or used (names the file and the problem).
        """
        self._require("image")
        image, geometry, _ = preprocess_file(path, self.steps)
        return image, geometry

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` of preprocessed images ``(N, 1, H, W)``."""
        self._require("image")
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.n_channels, *self.image_size):
            raise ConfigError(
                f"images of shape {images.shape} do not fit the model, which takes (N, {self.n_channels}, "
                f"{self.image_size[0]}, {self.image_size[1]})"
            )
        outputs = [
            self.session.run(["probabilities"], {"input": images[i : i + self.batch_size]})[0]
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.class_names)), np.float32)

    def predict_image(self, path: str | Path) -> ImagePrediction:
        """Probabilities ``(K,)`` of one radiograph file (PNG, JPEG, DICOM; found from the content)."""
        image, geometry = self.preprocess_image(path)
        probabilities = self.predict_images(image[None])[0]
        return ImagePrediction(str(path), probabilities, image, geometry)

    def decide(self, probabilities: np.ndarray) -> str:
        """The predicted label(s): the most probable class, or (multi-label) every class >= 0.5."""
        if self.task == "multilabel":
            return "|".join(name for name, p in zip(self.class_names, probabilities, strict=True) if p >= 0.5)
        return self.class_names[int(np.argmax(probabilities))]

    def rows(
        self, prediction: FilePrediction | ImagePrediction, per_window: bool = False
    ) -> list[dict[str, Any]]:
        """Table rows (one per file, or one per window) with a probability column per label name (an
        image: one row, ``per_window`` refused)."""

        def row(probabilities: np.ndarray, **where: Any) -> dict[str, Any]:
            return {
                "file": prediction.path,
                **where,
                **{f"p_{name}": float(p) for name, p in zip(self.class_names, probabilities, strict=True)},
                "predicted": self.decide(probabilities),
            }

        if isinstance(prediction, ImagePrediction):
            if per_window:
                raise ConfigError("per-window rows are for signal models; an image has one prediction")
            return [row(prediction.probabilities)]
        if per_window:
            return [
                row(p, window=i, start_s=float(start))
                for i, (p, start) in enumerate(
                    zip(prediction.window_probabilities, prediction.window_starts_s, strict=True)
                )
            ]
        return [row(prediction.probabilities, windows=len(prediction.window_probabilities))]

    # ----------------------------------------------------------------------------------------------
    # Volumes (segmentation models)

    def _volume(self, source: str | Path | Volume | np.ndarray, affine: np.ndarray | None) -> Volume:
        if isinstance(source, Volume):
            volume = source
        elif hasattr(source, "array") and hasattr(source, "affine"):  # e.g. modalities.volumes' Volume
            volume = Volume(
                np.asarray(source.array), np.asarray(source.affine), str(getattr(source, "path", ""))
            )
        elif isinstance(source, np.ndarray):
            if affine is None:
                raise ConfigError(
                    "an array needs its voxel → RAS affine (4×4, mm) so that the model's spacing and "
                    "orientation can be applied; pass affine="
                )
            array = source[None] if source.ndim == 3 else source
            volume = Volume(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=np.float64))
        else:
            volume = read_volume(source)
        if volume.array.ndim != 4:
            raise InvalidVolumeError(
                volume.path,
                f"array of shape {volume.array.shape} is not a volume: expected (H, W, D) or (C, H, W, D)",
            )
        if volume.array.shape[0] != len(self.channels):
            raise InvalidVolumeError(
                volume.path,
                f"{volume.array.shape[0]} channel(s), but the model takes {len(self.channels)} "
                f"({', '.join(self.channels)})",
            )
        affine_ = np.asarray(volume.affine, dtype=np.float64)
        if (
            affine_.shape != (4, 4)
            or not np.isfinite(affine_).all()
            or abs(np.linalg.det(affine_[:3, :3])) < 1e-12
        ):
            raise InvalidVolumeError(
                volume.path, f"unusable affine (singular or not finite): {affine_.tolist()}"
            )
        if not np.isfinite(volume.array).all():
            raise InvalidVolumeError(volume.path, "the volume has NaN or infinite voxels")
        return volume

    def preprocess_volume(
        self, source: str | Path | Volume | np.ndarray, affine: np.ndarray | None = None
    ) -> tuple[np.ndarray, VolumeGeometry]:
        """The model's input ``(C, H', W', D')`` float32 for a volume (a path, a :class:`Volume`, or an
        array ``(H, W, D)`` / ``(C, H, W, D)`` with its ``affine``), and its geometry.

        Raises:
            InvalidVolumeError: wrong rank or channel count, NaN voxels, a singular affine.
            DataError: the file cannot be read (see :func:`export.volume_preprocess.read_volume`).
        """
        self._require("volume")
        volume = self._volume(source, affine)
        return preprocess_volume(volume, self.steps)

    def predict_preprocessed(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(K, H', W', D')`` of a preprocessed volume ``(C, H', W', D')``: the model's
        logits blended over sliding windows of its ROI, then a softmax over classes."""
        self._require("volume")
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != len(self.channels):
            raise InvalidVolumeError(
                None,
                f"preprocessed volume of shape {image.shape} does not fit the model, which takes "
                f"(C, H, W, D) with C = {len(self.channels)} ({', '.join(self.channels)})",
            )
        settings = self.segmentation
        output = str(settings["output"])

        def predict_fn(windows: np.ndarray) -> np.ndarray:
            return self.session.run([output], {self.input_name: windows})[0]

        logits = sliding_window_inference(
            image,
            self.roi_size,
            predict_fn,
            overlap=settings["overlap"],
            mode=str(settings["mode"]),
            sigma_scale=settings["sigma_scale"],
            sw_batch_size=int(settings["sw_batch_size"]),
            padding_mode=str(settings["padding_mode"]),
            cval=float(settings["cval"]),
        )
        return _softmax(logits, axis=0)

    def predict_volume(
        self,
        source: str | Path | Volume | np.ndarray,
        affine: np.ndarray | None = None,
        interpolation: str | None = None,
    ) -> VolumePrediction:
        """Segment one volume: preprocess, sliding-window inference, softmax, argmax on the model's grid,
        then the label map mapped back onto the input's grid.

        Args:
            source: a NIfTI/NRRD file, a DICOM series folder, a :class:`Volume`, or an array
                ``(H, W, D)`` / ``(C, H, W, D)`` (with ``affine``).
            affine: ``(4, 4)`` voxel → RAS affine of an array ``source``.
            interpolation: how the map goes back to the input's grid: ``"nearest"`` (the argmax label map,
                nearest voxel) or ``"bilinear"`` (the probabilities, then the argmax); default: the model's
                ``segmentation.inverse_interpolation``.
        """
        self._require("volume")
        mode = interpolation or str(self.segmentation["inverse_interpolation"])
        if mode not in ("nearest", "bilinear"):
            raise ConfigError(f"interpolation must be 'nearest' or 'bilinear', got {mode!r}")
        volume = self._volume(source, affine)
        image, geometry = preprocess_volume(volume, self.steps)
        probabilities = self.predict_preprocessed(image)
        dtype = _label_dtype(len(self.class_names))
        model_labels = probabilities.argmax(axis=0).astype(dtype)
        if mode == "nearest":
            labels = to_input_grid(model_labels, geometry, "nearest")
        else:
            background = np.eye(len(self.class_names), dtype=np.float32)[0]  # outside a foreground crop
            labels = to_input_grid(probabilities, geometry, "bilinear", fill=background).argmax(axis=0)
            labels = labels.astype(dtype)
        return VolumePrediction(
            volume.path,
            np.ascontiguousarray(labels),
            geometry.input_affine,
            probabilities,
            model_labels,
            geometry,
        )

    def write_mask(self, path_in: str | Path, out_path: str | Path) -> Path:
        """Segment the volume at ``path_in`` and write its label map as NIfTI (``.nii`` / ``.nii.gz``) with
        the input's shape and affine (for NRRD and DICOM inputs, their RAS affine)."""
        if not Path(out_path).name.lower().endswith(NIFTI_SUFFIXES):
            raise ConfigError(f"mask path {out_path} must end with .nii or .nii.gz")
        prediction = self.predict_volume(path_in)
        return save_mask(prediction.labels, prediction.affine, out_path, reference=path_in)


def save_mask(
    labels: np.ndarray, affine: np.ndarray, out_path: str | Path, reference: str | Path | None = None
) -> Path:
    """Write a label map ``(H, W, D)`` as NIfTI with ``affine`` in both sform and qform (intent "label").

    The sform/qform codes and units are those of ``reference`` when it is a NIfTI file, else "scanner".
    """
    import nibabel as nib

    out_path = Path(out_path)
    if not out_path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ConfigError(f"mask path {out_path} must end with .nii or .nii.gz")
    sform_code, qform_code, units = 1, 1, ("mm", "sec")
    if reference is not None and Path(reference).name.lower().endswith(NIFTI_SUFFIXES):
        header = nib.load(str(reference)).header
        sform_code = int(header["sform_code"]) or 1
        qform_code = int(header["qform_code"]) or 1
        units = header.get_xyzt_units()
    image = nib.Nifti1Image(np.asarray(labels), np.asarray(affine, dtype=np.float64))
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    image.header.set_xyzt_units(*units)
    image.header.set_intent("label")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(out_path))
    return out_path


def mask_path_for(input_path: str | Path, out_dir: str | Path) -> Path:
    """``out_dir / "<name>_mask.nii.gz"``, ``<name>`` being the input's file name without its volume suffix
    (or the DICOM series folder's name)."""
    name = Path(input_path).name
    for suffix in (*NIFTI_SUFFIXES[::-1], *NRRD_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(out_dir) / f"{name}{MASK_SUFFIX}"


def predict_volumes(model_path: str | Path, inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Segment each input volume with a segmentation model and write ``out_dir/<name>_mask.nii.gz`` (the
    input's shape and affine); returns the written paths in input order. What ``medcl predict --model
    m.onnx VOL... --out DIR`` runs for segmentation models.

    Raises:
        ConfigError: two inputs would write the same mask file (nothing is written then).
        ModelMetadataError: the model is not a segmentation model.
        DataError: an input cannot be read or used (the masks of the inputs before it are written).
    """
    targets = [mask_path_for(path, out_dir) for path in inputs]
    seen: dict[Path, str] = {}
    for path, target in zip(inputs, targets, strict=True):
        if target in seen:
            raise ConfigError(
                f"{seen[target]} and {path} would both be written to {target}; rename one or run them "
                "separately"
            )
        seen[target] = str(path)
    predictor = OnnxPredictor(model_path)
    predictor._require("volume")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return [predictor.write_mask(path, target) for path, target in zip(inputs, targets, strict=True)]
