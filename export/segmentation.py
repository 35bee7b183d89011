"""ONNX export of volume segmentation models, with parity proofs on ROI crops and on whole volumes.

:func:`export_segmentation` turns a checkpoint written by :class:`tasks.segmentation.SegmentationModule`
into one self-contained ONNX file (opset >= 17) that the torch-free
:class:`export.predictor.OnnxPredictor` runs on raw NIfTI/NRRD/DICOM volumes. The graph is the backbone's
``forward_dense`` followed by the 1×1 convolution head on one ROI: ``input`` ``(B, C, *roi)`` float32
(preprocessed, batch axis dynamic) → ``logits`` ``(B, K, *roi)``. The metadata (key ``"medcl"``, JSON,
format ``medcl-onnx/1``; the layout :mod:`export.predictor` documents) holds the checkpoint's
preprocessing spec (the training one, :mod:`modalities.volumes.transforms`), the label names, the image
modality, the sliding-window settings the model was validated with, the source checkpoint's hash and the
parity report.

Before the file is written, three checks compare the ONNX model with the torch one, and any failure
raises :class:`~export.onnx.ExportParityError` and leaves no file behind:

- ``random``: onnxruntime vs torch logits on standard-normal ROI inputs;
- ``real``: the same on ROI crops of real volumes preprocessed by the training pipeline
  (:func:`modalities.volumes.transforms.preprocess` with the checkpoint's spec), one crop centred on the
  mask's foreground (or a random one) and one at the centre of each volume;
  both within ``|ort − torch| <= atol + rtol·|torch|``;
- ``volume``: whole-volume class probabilities of the torch-free predictor
  (:meth:`OnnxPredictor.predict_preprocessed`: numpy sliding windows over onnxruntime, softmax) vs
  the torch model's MONAI ``sliding_window_inference`` (:meth:`SegmentationModule.infer`, softmax) on real
  preprocessed volumes (a random volume when no real one can be read): max abs difference <=
  ``volume_atol``.

The real volumes come from ``real_volumes`` or else from the data adapter recorded in the checkpoint (the
training data); when neither can be read, ``real`` is reported as skipped (with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

import medcl
from export.onnx import (
    FORMAT,
    ExportParityError,
    _set_metadata,
    _sha256,
    atomic_output,
    check_parity,
    export_graph,
    parity_failures,
)
from medcl.checkpoints import load_checkpoint
from medcl.configurable import instantiate_spec
from medcl.errors import ConfigError, DataError, MedclError

__all__ = [
    "SEGMENTATION_OUTPUTS",
    "ExportableSegmenter",
    "RealVolume",
    "check_volume_parity",
    "export_segmentation",
    "load_real_volumes",
    "load_segmenter",
    "roi_crops",
]

SEGMENTATION_OUTPUTS = ("logits",)
VOLUME_LAYOUT = "(B, C, H, W, D)"
#: MONAI ``sliding_window_inference`` defaults that :meth:`SegmentationModule.infer` keeps
_MONAI_WINDOW_DEFAULTS = {"sigma_scale": 0.125, "padding_mode": "constant", "cval": 0.0}

VolumeSource = str | Path | tuple[str | Path, str | Path | None]


class ExportableSegmenter(nn.Module):
    """Backbone + 1×1 convolution head: ``(B, C, *roi) → (B, K, *roi)`` logits (what the ONNX graph
    computes; the same as :meth:`SegmentationModule.forward`)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder.forward_dense(x))


def load_segmenter(checkpoint_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The :class:`tasks.segmentation.SegmentationModule` of a checkpoint, in eval mode, and its medcl
    metadata (``checkpoint["medcl"]``). Only plain data is read (``weights_only=True``).

    Raises:
        ConfigError: not a segmentation checkpoint, a 2-D backbone, no recorded input spec, or a
            preprocessing spec that the torch-free predictor cannot run.
    """
    from export.volume_preprocess import check_steps
    from tasks.segmentation import load_segmentation_model

    checkpoint = load_checkpoint(checkpoint_path)
    meta = checkpoint.get("medcl") or {}
    if meta.get("kind") != "segmentation":
        raise ConfigError(
            f"{checkpoint_path} is not a segmentation checkpoint (kind {meta.get('kind')!r}); export volume "
            "models trained with medcl finetune on a segmentation config (tasks.segmentation."
            "SegmentationModule)"
        )
    if int(meta.get("spatial_dims", 3)) != 3:
        raise ConfigError(
            f"{checkpoint_path} holds a {meta.get('spatial_dims')}-D segmentation model; only 3-D volume "
            "models export (the predictor reads volumes)"
        )
    spec = meta.get("input")
    if not isinstance(spec, dict) or "preprocessing" not in spec:
        raise ConfigError(
            f"{checkpoint_path} does not record its input and preprocessing spec (it was trained without a "
            "data module with an adapter); cannot export it"
        )
    try:
        check_steps(spec["preprocessing"])
    except ConfigError as error:
        raise ConfigError(
            f"{checkpoint_path}: its preprocessing cannot be run by the torch-free predictor ({error}); "
            "train on modalities.volumes.VolumeAdapter data"
        ) from None
    return load_segmentation_model(checkpoint), meta


# --------------------------------------------------------------------------------------------------
# Real inputs


@dataclass
class RealVolume:
    """One real volume preprocessed by the training pipeline.

    Attributes:
        path: the image file (or DICOM folder).
        image: ``(C, H, W, D)`` float32, the model's input.
        mask: ``(1, H, W, D)`` int64 on the same grid, or None.
    """

    path: str
    image: np.ndarray
    mask: np.ndarray | None


def _adapter_cases(meta: dict[str, Any]) -> tuple[list[tuple[str, str | None]], str | None]:
    """``(image, mask)`` paths of the training data through the checkpoint's adapter, or ``([], why not)``."""
    spec = meta.get("adapter")
    if spec is None:
        return [], "the checkpoint does not record its data adapter; pass real_volumes"
    try:
        adapter = instantiate_spec(spec)
        samples = adapter.make_samples(adapter.index().trials)
    except MedclError as error:
        return [], f"the training data could not be read: {error}"
    if "path" not in samples.columns:
        return [], f"the samples of {type(adapter).__name__} do not name their files; pass real_volumes"
    masks = samples["mask_path"] if "mask_path" in samples.columns else [""] * len(samples)
    cases = [
        (str(path), str(mask) if isinstance(mask, str) and mask else None)
        for path, mask in zip(samples["path"], masks, strict=True)
    ]
    return cases, None


def load_real_volumes(
    steps: Sequence[dict[str, Any]],
    sources: Sequence[VolumeSource] | None = None,
    meta: dict[str, Any] | None = None,
    n: int = 4,
) -> tuple[list[RealVolume], str | None]:
    """Up to ``n`` real volumes preprocessed by the training pipeline
    (:func:`modalities.volumes.transforms.preprocess` with ``steps``), and why there are none.

    Args:
        steps: the training preprocessing spec (``checkpoint["medcl"]["input"]["preprocessing"]``).
        sources: image paths, or ``(image, mask)`` pairs; default: the training data through the adapter
            recorded in ``meta`` (``checkpoint["medcl"]``), in its sample order.
        meta: the checkpoint's medcl metadata (used when ``sources`` is None).
        n: how many volumes to read; cases that fail to load are passed over.

    Returns:
        the volumes, and None, or ``([], the reason)`` when none could be read.
    """
    from modalities.volumes.transforms import preprocess

    if sources is not None:
        cases = [
            (str(source[0]), None if source[1] is None else str(source[1]))
            if isinstance(source, tuple)
            else (str(source), None)
            for source in sources
        ]
        reason = None if cases else "no real volumes were given"
    else:
        cases, reason = _adapter_cases(meta or {})
    volumes: list[RealVolume] = []
    errors: list[str] = []
    for image_path, mask_path in cases:
        if len(volumes) >= n:
            break
        try:
            out = preprocess(steps, image_path, mask_path)
        except DataError as error:
            errors.append(str(error))
            continue
        volumes.append(RealVolume(image_path, out["image"], out.get("mask")))
    if not volumes:
        reason = reason or (
            f"none of the {len(cases)} real volume(s) could be read"
            + (f" (e.g. {errors[0]})" if errors else "")
        )
        return [], reason
    return volumes, None


def _pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes of ``(C, *spatial)`` to at least ``size``: ``(size − n) // 2`` before."""
    extra = [max(int(s) - n, 0) for n, s in zip(array.shape[1:], size, strict=True)]
    return np.pad(array, [(0, 0)] + [(e // 2, e - e // 2) for e in extra])


def roi_crops(
    image: np.ndarray, roi: Sequence[int], mask: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Two ROI crops ``(2, C, *roi)`` of a preprocessed volume ``(C, H, W, D)`` (zero-padded to at least the
    ROI first): one centred on the centroid of the mask's foreground (a seeded random one without
    foreground), and the central one. Crops stay inside the (padded) volume."""
    roi = [int(r) for r in roi]
    image = _pad_to(image, roi)
    size = np.array(image.shape[1:])
    foreground = None if mask is None else _pad_to(mask, roi)[0] > 0
    if foreground is not None and foreground.any():
        first = np.argwhere(foreground).mean(axis=0)
    else:
        first = np.random.default_rng(seed).uniform(0, size)
    crops = []
    for centre in (first, (size - 1) / 2):
        start = np.clip(np.round(np.asarray(centre) - np.array(roi) / 2).astype(int), 0, size - roi)
        window = tuple(slice(int(s), int(s) + r) for s, r in zip(start, roi, strict=True))
        crops.append(image[(slice(None), *window)])
    return np.stack(crops).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Whole-volume parity


def check_volume_parity(
    model: Any, onnx_path: str | Path, volumes: Sequence[np.ndarray], atol: float
) -> dict[str, Any]:
    """Whole-volume class probabilities of the torch-free predictor vs the torch model's.

    ``OnnxPredictor(onnx_path).predict_preprocessed(v)`` (numpy sliding windows over onnxruntime, softmax)
    against ``softmax(model.infer(v))`` (MONAI ``sliding_window_inference`` over torch) for every
    preprocessed volume ``v`` ``(C, H, W, D)``; the model file must already hold its metadata.

    Returns:
        ``n_volumes``, ``max_abs_error`` (of the probabilities, over all volumes), ``min_label_agreement``
        (the smallest fraction of voxels whose argmax agrees), ``atol``, ``passed`` (max abs error <=
        ``atol``) and ``volumes`` (per volume: ``shape``, ``max_abs_error``, ``label_agreement``).
    """
    from export.predictor import OnnxPredictor

    predictor = OnnxPredictor(onnx_path)
    per_volume = []
    for volume in volumes:
        image = np.asarray(volume, dtype=np.float32)
        got = predictor.predict_preprocessed(image)
        with torch.no_grad():
            expected = torch.softmax(model.infer(torch.from_numpy(image)[None]), dim=1)[0].numpy()
        per_volume.append(
            {
                "shape": [int(s) for s in image.shape[1:]],
                "max_abs_error": float(np.abs(got.astype(np.float64) - expected).max(initial=0.0)),
                "label_agreement": float((got.argmax(axis=0) == expected.argmax(axis=0)).mean()),
            }
        )
    worst = max((v["max_abs_error"] for v in per_volume), default=0.0)
    return {
        "n_volumes": len(per_volume),
        "max_abs_error": worst,
        "min_label_agreement": min((v["label_agreement"] for v in per_volume), default=1.0),
        "atol": atol,
        "passed": bool(worst <= atol),
        "volumes": per_volume,
    }


# --------------------------------------------------------------------------------------------------
# Export


def _channel_names(input_key: str, channels: int) -> list[str]:
    return [input_key] if channels == 1 else [f"{input_key}_{c}" for c in range(channels)]


def _metadata(
    meta: dict[str, Any], model: Any, roi: Sequence[int], checkpoint_path: str | Path
) -> dict[str, Any]:
    """The ``medcl`` metadata of the exported model, without its parity report."""
    spec = meta["input"]
    window = meta.get("sliding_window") or {}
    channels = int(spec.get("channels") or model.encoder.in_channels)
    return {
        "format": FORMAT,
        "medcl_version": medcl.__version__,
        "modality": spec.get("image_modality") or meta.get("modality"),
        "task": "segmentation",
        "class_names": list(model.label_names),
        "input": {
            "name": "input",
            "layout": VOLUME_LAYOUT,
            "dtype": "float32",
            "channels": _channel_names(str(meta.get("input_key") or "image"), channels),
            "orientation": spec.get("orientation"),
            "spacing": spec.get("spacing"),
        },
        "outputs": {"logits": "(B, K, H, W, D) raw scores"},
        "preprocessing": spec["preprocessing"],
        "segmentation": {
            "roi_size": [int(r) for r in roi],
            "overlap": float(window.get("overlap", model.hparams["sw_overlap"])),
            "mode": str(window.get("mode", model.hparams["sw_mode"])),
            **_MONAI_WINDOW_DEFAULTS,
            "sw_batch_size": int(window.get("sw_batch_size", model.hparams["sw_batch_size"])),
            "output": "logits",
            "activation": "softmax",
            "inverse_interpolation": "nearest",
        },
        "source_checkpoint": {"file": Path(checkpoint_path).name, "sha256": _sha256(checkpoint_path)},
    }


def export_segmentation(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    roi_size: Sequence[int] | None = None,
    real_inputs: np.ndarray | None = None,
    real_volumes: Sequence[VolumeSource] | None = None,
    opset: int = 17,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    volume_atol: float = 1e-4,
    n_random: int = 2,
    n_real_volumes: int = 2,
    n_parity_volumes: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Export a segmentation checkpoint to ONNX; returns the metadata written into the model.

    Args:
        checkpoint_path: a :class:`tasks.segmentation.SegmentationModule` checkpoint.
        out_path: the ``.onnx`` file to write (one self-contained file).
        roi_size: the graph's window ``(H, W, D)``; default: the checkpoint's (training crop and validation
            window). Every side must suit the backbone (``spatial_multiple``).
        real_inputs: preprocessed real ROI crops ``(N, C, *roi)`` for the ``real`` check; default: two crops
            of each real volume.
        real_volumes: real volumes (image paths, or ``(image, mask)`` pairs) to crop and to run whole;
            default: the training data through the adapter recorded in the checkpoint.
        opset: ONNX opset (>= 17).
        rtol, atol: crop parity tolerance: every logit must satisfy ``|ort − torch| <= atol + rtol·M``,
            ``M`` the largest ``|torch logit|`` of that check (float32 rounding of a deep 3-D network's
            sums scales with their largest terms, while some logits cancel to ~0: an element-wise relative
            test would fail correct exports there). ``atol`` is 1e-4 by default (the classifier's is 1e-5):
            a 3-D encoder-decoder sums over far more terms per output, so float32 rounding differences
            between two correct runtimes reach about 1e-5 near zero (measured: 1.4e-5 for the demo's
            BasicUNet at ROI 32 x 48 x 32); 1e-4 is far below any change of a label. Instance
            normalisation is exported with per-axis reductions (:mod:`export.numerics`): onnxruntime's own
            kernel drifted by 1.3e-3 from a float64 reference on real CT crops.
        volume_atol: largest tolerated difference of whole-volume probabilities (predictor vs torch).
        n_random: random standard-normal ROI inputs in the ``random`` check.
        n_real_volumes: real volumes read (two crops each, unless ``real_inputs`` is given).
        n_parity_volumes: how many of them the ``volume`` check runs whole.
        seed: seed of the random inputs.

    Raises:
        ConfigError: not a segmentation checkpoint, an unusable ROI or preprocessing spec, ``opset < 17``.
        ExportParityError: a check fails (no file is written).
    """
    if opset < 17:
        raise ConfigError(f"opset must be >= 17, got {opset}")
    model, meta = load_segmenter(checkpoint_path)
    if roi_size is not None:
        model.roi_size = model._checked_roi(roi_size)  # the validated window for infer() too
    roi = [int(r) for r in model.roi_size]
    channels = int(model.encoder.in_channels)
    graph = ExportableSegmenter(model.encoder, model.head).eval()
    batch_size = int(model.hparams["sw_batch_size"])
    rng = np.random.default_rng(seed)
    random_inputs = rng.standard_normal((max(n_random, 1), channels, *roi)).astype(np.float32)

    steps = meta["input"]["preprocessing"]
    volumes, real_skipped = load_real_volumes(steps, real_volumes, meta, n=n_real_volumes)
    if real_inputs is None and volumes:
        real_inputs = np.concatenate(
            [roi_crops(v.image, roi, v.mask, seed=seed + i) for i, v in enumerate(volumes)]
        )
    if real_inputs is not None:
        real_inputs = np.asarray(real_inputs, dtype=np.float32)
        if real_inputs.ndim != 5 or list(real_inputs.shape[1:]) != [channels, *roi]:
            raise ConfigError(
                f"real inputs have shape {list(real_inputs.shape)}, the model takes (N, {channels}, "
                f"{', '.join(map(str, roi))})"
            )
    parity_volumes = [v.image for v in volumes[: max(n_parity_volumes, 0)]]
    volume_source = "real"
    if not parity_volumes and n_parity_volumes > 0:
        # No real volume: a random one a window and a half a side still tests the blending of windows.
        parity_volumes = [rng.standard_normal((channels, *(r + r // 2 for r in roi))).astype(np.float32)]
        volume_source = "random"

    with atomic_output(out_path) as temporary_path:
        export_graph(graph, random_inputs[:2], temporary_path, opset, SEGMENTATION_OUTPUTS)
        parity: dict[str, Any] = {
            "rtol": rtol,
            "atol": atol,
            "random": check_parity(
                graph, temporary_path, random_inputs, rtol, atol, SEGMENTATION_OUTPUTS, batch_size, "output"
            ),
        }
        if real_inputs is not None:
            parity["real"] = check_parity(
                graph, temporary_path, real_inputs, rtol, atol, SEGMENTATION_OUTPUTS, batch_size, "output"
            )
        else:
            parity["real"] = {"skipped": real_skipped, "passed": None}
        details = parity_failures(parity, ("random", "real"))
        if details is not None:
            raise ExportParityError(
                f"onnxruntime and torch disagree beyond rtol={rtol}, atol={atol} ({details}); "
                "no model written"
            )
        metadata = _metadata(meta, model, roi, checkpoint_path)
        _set_metadata(temporary_path, metadata)  # the predictor of the volume check reads it
        if parity_volumes:
            parity["volume"] = {
                "source": volume_source,
                **check_volume_parity(model, temporary_path, parity_volumes, volume_atol),
            }
            if not parity["volume"]["passed"]:
                raise ExportParityError(
                    f"the torch-free predictor's whole-volume probabilities differ from torch's (MONAI "
                    f"sliding_window_inference) by {parity['volume']['max_abs_error']:.3g} > "
                    f"{volume_atol:g} on {volume_source} volumes; no model written"
                )
        else:
            parity["volume"] = {"skipped": "n_parity_volumes is 0", "passed": None}
        metadata["parity"] = {
            **parity,
            "opset": opset,
            "torch_version": torch.__version__,
            "onnxruntime_version": ort.__version__,
        }
        _set_metadata(temporary_path, metadata)
    return metadata
