"""ONNX export of classification models, with the preprocessing embedded and a parity proof.

:func:`export_classifier` turns a checkpoint written by :class:`tasks.ClassificationModule` into one
self-contained ONNX file (opset >= 17, dynamic batch axis) whose metadata (key ``"medcl"``, a JSON string)
holds everything needed to go from a raw file to class probabilities: the medcl version, modality,
task type, label names, the input spec (channels, sampling rate, window length) and the complete
preprocessing spec, and the parity result. Before the file is written, onnxruntime's outputs are
compared with torch's on random inputs and on real windows; above the tolerance the export fails and
no file is left behind. (Segmentation models: :mod:`export.segmentation`, which uses this module's
graph export, parity check and atomic write.)

The exported graph takes ``input`` ``(B, C, T)`` float32 (preprocessed signal windows) or ``(B, C, H, W)``
(preprocessed images: X-rays, whose adapter's input spec has layout ``"(C, H, W)"``) and returns
``logits`` ``(B, K)`` and ``probabilities`` ``(B, K)`` (softmax for multi-class, per-class sigmoid for
multi-label).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

import medcl
from export.numerics import onnx_friendly
from medcl.checkpoints import encoder_state_dict, load_checkpoint
from medcl.configurable import instantiate_spec
from medcl.errors import ConfigError, MedclError
from tasks.classification import build_head

__all__ = [
    "METADATA_KEY",
    "ExportParityError",
    "ExportableClassifier",
    "atomic_output",
    "check_parity",
    "export_classifier",
    "export_graph",
    "load_classifier",
    "parity_failures",
]

METADATA_KEY = "medcl"
FORMAT = "medcl-onnx/1"
CLASSIFIER_OUTPUTS = ("logits", "probabilities")


class ExportParityError(MedclError):
    """onnxruntime's outputs differ from torch's by more than the tolerance."""


class ExportableClassifier(nn.Module):
    """Encoder + head returning ``(logits, probabilities)``: ``(B, C, T)`` or ``(B, C, H, W)`` →
    ``(B, K), (B, K)``."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(self.encoder(x))
        probabilities = torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=-1)
        return logits, probabilities


def load_classifier(checkpoint_path: str | Path) -> tuple[ExportableClassifier, dict[str, Any]]:
    """The classifier of a ``tasks.ClassificationModule`` checkpoint, in eval mode, and its medcl metadata.

    Only plain data is read (``weights_only=True``); the encoder is rebuilt from its recorded spec
    (medcl's own classes only).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    meta = checkpoint.get("medcl") or {}
    if meta.get("kind") != "classification":
        raise ConfigError(
            f"{checkpoint_path} is not a classification checkpoint (medcl export needs a model trained with "
            "medcl finetune or tasks.ClassificationModule; a pretraining checkpoint has no head)"
        )
    if meta.get("encoder") is None or meta.get("input") is None:
        raise ConfigError(f"{checkpoint_path} does not record its encoder and input spec; cannot export it")
    hparams = checkpoint.get("hyper_parameters") or {}
    encoder = instantiate_spec(meta["encoder"])
    kind = hparams.get("head") or ("linear" if hparams.get("mode") == "linear" else "mlp")
    head = build_head(
        kind,
        encoder.embedding_dim,
        int(hparams["num_classes"]),
        int(hparams.get("hidden_dim", 128)),
        float(hparams.get("dropout", 0.1)),
    )
    encoder.load_state_dict(encoder_state_dict(checkpoint))
    head.load_state_dict(encoder_state_dict(checkpoint, prefix="head."))
    model = ExportableClassifier(encoder, head, meta["task"]).eval()
    return model, {**meta, "num_classes": int(hparams["num_classes"])}


def _errors(
    reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float, relative_to: str = "element"
) -> dict[str, Any]:
    """Max abs/rel error and pass/fail: every element within ``atol + rtol·|reference element|``
    (``relative_to="element"``, numpy's ``allclose``) or within ``atol + rtol·max|reference|``
    (``relative_to="output"``: the rounding of a long sum scales with its largest terms, not with an
    output that happens to cancel to ~0)."""
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    magnitude = np.abs(reference.astype(np.float64))
    relative = difference / np.maximum(magnitude, 1e-12)
    if relative_to == "output":
        passed = bool((difference <= atol + rtol * magnitude.max(initial=0.0)).all())
    else:
        passed = bool(np.allclose(candidate, reference, rtol=rtol, atol=atol))
    return {
        "max_abs_error": float(difference.max(initial=0.0)),
        "max_rel_error": float(relative.max(initial=0.0)),
        "max_abs_reference": float(magnitude.max(initial=0.0)),
        "relative_to": relative_to,
        "passed": passed,
    }


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    inputs: np.ndarray,
    rtol: float,
    atol: float,
    output_names: Sequence[str] = CLASSIFIER_OUTPUTS,
    batch_size: int | None = None,
    relative_to: str = "element",
) -> dict[str, Any]:
    """Compare torch and onnxruntime on ``inputs`` ``(N, C, *spatial)``: max abs/rel error per output,
    pass/fail (``relative_to``: see :func:`_errors`).

    ``model`` returns one tensor or a tuple of tensors, in the order of ``output_names`` (the graph's
    outputs); both run ``batch_size`` inputs at a time (default: all at once).
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = inputs.astype(np.float32)
    names = list(output_names)
    step = max(int(batch_size or len(batch)), 1)
    expected_parts: list[list[np.ndarray]] = []
    got_parts: list[list[np.ndarray]] = []
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        with torch.no_grad():
            outputs = model(torch.from_numpy(chunk))
        expected_parts.append([t.numpy() for t in ((outputs,) if isinstance(outputs, Tensor) else outputs)])
        got_parts.append(session.run(names, {"input": chunk}))
    expected = [np.concatenate([part[i] for part in expected_parts]) for i in range(len(names))]
    got = [np.concatenate([part[i] for part in got_parts]) for i in range(len(names))]
    per_output = {
        name: _errors(e, g, rtol, atol, relative_to) for name, e, g in zip(names, expected, got, strict=True)
    }
    return {
        "n_inputs": len(batch),
        "max_abs_error": max(v["max_abs_error"] for v in per_output.values()),
        "max_rel_error": max(v["max_rel_error"] for v in per_output.values()),
        "passed": all(v["passed"] for v in per_output.values()),
        "outputs": per_output,
    }


def export_graph(
    model: nn.Module,
    example: np.ndarray,
    path: str | Path,
    opset: int = 17,
    output_names: Sequence[str] = CLASSIFIER_OUTPUTS,
) -> None:
    """Write ``model`` (``input`` ``(B, C, *spatial)`` → ``output_names``, by default ``logits`` and
    ``probabilities``) as ONNX with a dynamic batch axis (the other axes fixed to ``example``'s), in one
    self-contained file, and check it with the ONNX checker.

    What is exported is :func:`export.numerics.onnx_friendly` of ``model``: the same function with instance
    normalisation reduced one axis at a time, which onnxruntime computes far more accurately in float32
    (see :mod:`export.numerics`); ``model`` itself is not changed."""
    names = list(output_names)
    model = onnx_friendly(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model,
            (torch.from_numpy(np.asarray(example, dtype=np.float32)),),
            str(path),
            input_names=["input"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["input", *names]},
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


@contextmanager
def atomic_output(out_path: str | Path) -> Iterator[Path]:
    """A temporary file next to ``out_path`` to write the model into; moved onto ``out_path`` when the block
    ends normally, deleted when it raises (so a failed export leaves no file behind)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".onnx", dir=out_path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, out_path)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def parity_failures(parity: dict[str, Any], names: Sequence[str]) -> str | None:
    """``"<name>: max abs error …, max rel error …; …"`` for the checks in ``names`` that failed, or None."""
    failed = [name for name in names if parity[name]["passed"] is False]
    if not failed:
        return None
    return "; ".join(
        f"{name}: max abs error {parity[name]['max_abs_error']:.3g}, max rel error "
        f"{parity[name]['max_rel_error']:.3g}"
        for name in failed
    )


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _set_metadata(model_path: Path, metadata: dict[str, Any]) -> None:
    model = onnx.load(str(model_path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(model_path))


def export_classifier(
    checkpoint_path: str | Path,
    out_path: str | Path,
    real_inputs: np.ndarray | None = None,
    opset: int = 17,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    n_random: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Export a classification checkpoint to ONNX; returns the metadata written into the model.

    Args:
        checkpoint_path: a ``tasks.ClassificationModule`` checkpoint.
        out_path: the ``.onnx`` file to write (one self-contained file).
        real_inputs: preprocessed real windows ``(N, C, T)`` (or images ``(N, C, H, W)``) for the parity
            check; by default taken from the training data through the adapter recorded in the checkpoint
            (its ``example_windows``), when it can be rebuilt.
        opset: ONNX opset (>= 17).
        rtol, atol: parity tolerance: every output must satisfy ``|ort - torch| <= atol + rtol·|torch|``.
        n_random: random standard-normal inputs in the parity check.
        seed: seed of the random inputs.

    Raises:
        ExportParityError: onnxruntime and torch disagree beyond the tolerance (no file is written).
    """
    if opset < 17:
        raise ConfigError(f"opset must be >= 17, got {opset}")
    model, meta = load_classifier(checkpoint_path)
    spec = meta["input"]
    shape, input_block, aggregation = _model_input(spec)
    random_inputs = np.random.default_rng(seed).standard_normal((n_random, *shape)).astype(np.float32)
    real_skipped = None
    if real_inputs is None:
        real_inputs, real_skipped = _real_windows(meta, n=16)
    if real_inputs is not None and tuple(real_inputs.shape[1:]) != shape:
        raise ConfigError(f"real inputs have shape {tuple(real_inputs.shape[1:])}, the model takes {shape}")

    with atomic_output(out_path) as temporary_path:
        export_graph(model, random_inputs[:2], temporary_path, opset)
        parity = {
            "rtol": rtol,
            "atol": atol,
            "random": check_parity(model, temporary_path, random_inputs, rtol, atol),
        }
        if real_inputs is not None:
            parity["real"] = check_parity(model, temporary_path, real_inputs, rtol, atol)
        else:
            parity["real"] = {"skipped": real_skipped, "passed": None}
        details = parity_failures(parity, ("random", "real"))
        if details is not None:
            raise ExportParityError(
                f"onnxruntime and torch disagree beyond rtol={rtol}, atol={atol} ({details}); "
                "no model written"
            )
        metadata = {
            "format": FORMAT,
            "medcl_version": medcl.__version__,
            "modality": meta.get("modality"),
            "task": meta["task"],
            "class_names": meta.get("class_names") or [f"class_{k}" for k in range(meta["num_classes"])],
            "outputs": {
                "logits": "(B, K) raw scores",
                "probabilities": "(B, K) "
                + ("per-class sigmoid" if meta["task"] == "multilabel" else "softmax"),
            },
            "input": input_block,
            "preprocessing": spec["preprocessing"],
            "aggregation": aggregation,
            "parity": {
                **parity,
                "opset": opset,
                "torch_version": torch.__version__,
                "onnxruntime_version": ort.__version__,
            },
            "source_checkpoint": {"file": Path(checkpoint_path).name, "sha256": _sha256(checkpoint_path)},
        }
        _set_metadata(temporary_path, metadata)
    return metadata


#: the layout of an image adapter's input spec (``modalities.xray.XrayAdapter.input_spec``)
IMAGE_SPEC_LAYOUT = "(C, H, W)"


def _model_input(spec: dict[str, Any]) -> tuple[tuple[int, ...], dict[str, Any], str]:
    """From a checkpoint's input spec: the model's input shape without the batch axis (``(C, T)`` for
    signals, ``(C, H, W)`` for images), the metadata's ``input`` block and its ``aggregation`` note."""
    if spec.get("layout") == IMAGE_SPEC_LAYOUT:
        channels = int(spec["channels"])
        height, width = (int(v) for v in spec["image_size"])
        block = {
            "name": "input",
            "layout": "(B, C, H, W)",
            "dtype": "float32",
            "channels": channels,
            "image_size": [height, width],
            "photometric": spec.get("photometric"),
            "views": spec.get("views"),
        }
        return (channels, height, width), block, "one image, one probability vector (no aggregation)"
    channels, length = len(spec["channels"]), int(spec["window_samples"])
    block = {
        "name": "input",
        "layout": "(B, C, T)",
        "dtype": "float32",
        "channels": list(spec["channels"]),
        "fs": float(spec["fs"]),
        "window_samples": length,
    }
    return (channels, length), block, "a recording's probabilities are the mean of its windows' probabilities"


def _real_windows(meta: dict[str, Any], n: int) -> tuple[np.ndarray | None, str | None]:
    """Real preprocessed windows ``(N, C, T)`` or images ``(N, C, H, W)`` from the data the model was trained
    on (the recorded adapter's ``example_windows``), or ``(None, why not)``."""
    spec = meta.get("adapter")
    if spec is None:
        return None, "the checkpoint does not record its data adapter; pass real inputs"
    try:
        return instantiate_spec(spec).example_windows(n), None
    except MedclError as error:
        return None, f"the training data could not be read: {error}"
