"""ECG/EEG (and other 1-D physiological signals): readers, manifests, transforms, views, encoders.

The adapter (:class:`SignalAdapter`) is what configs name; the pieces below are public for users who
compose their own pipelines. Names are imported lazily, so that torch-free code (the ONNX predictor)
can use the readers and :mod:`modalities.signals.dsp` without importing torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASET_CHANNELS": "modalities.signals.adapter",
    "LABEL_TASKS": "modalities.signals.adapter",
    "SignalAdapter": "modalities.signals.adapter",
    "TS2VecEncoder": "modalities.signals.encoders",
    "TsaiEncoder": "modalities.signals.encoders",
    "build_encoder": "modalities.signals.encoders",
    "IndexResult": "modalities.signals.indexing",
    "index_signals": "modalities.signals.indexing",
    "load_index": "modalities.signals.indexing",
    "save_index": "modalities.signals.indexing",
    "Manifest": "modalities.signals.manifests",
    "build_manifest": "modalities.signals.manifests",
    "read_edf": "modalities.signals.readers",
    "read_signal": "modalities.signals.readers",
    "read_signal_header": "modalities.signals.readers",
    "read_wfdb": "modalities.signals.readers",
    "SignalRecord": "modalities.signals.record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modalities.signals' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
