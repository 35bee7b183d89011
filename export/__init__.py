"""Export of trained models to ONNX, and a torch-free predictor.

- :func:`export_classifier` / :func:`export_segmentation` (need torch): checkpoint → one ONNX file with the
  preprocessing spec, label names and a parity report in its metadata;
- :class:`OnnxPredictor` (onnxruntime + numpy/SciPy + the file readers; no torch, Lightning or MONAI):
  raw files → class probabilities, or volumes → label maps (:func:`predict_volumes` writes the masks).

Names are imported lazily so that ``from export import OnnxPredictor`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportParityError": "export.onnx",
    "export_classifier": "export.onnx",
    "load_classifier": "export.onnx",
    "ExportableSegmenter": "export.segmentation",
    "export_segmentation": "export.segmentation",
    "load_segmenter": "export.segmentation",
    "FilePrediction": "export.predictor",
    "ModelMetadataError": "export.predictor",
    "OnnxPredictor": "export.predictor",
    "VolumePrediction": "export.predictor",
    "predict_volumes": "export.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
