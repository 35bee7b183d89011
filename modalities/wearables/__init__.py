"""Wearables (PPG, accelerometer, watch ECG): per-participant readers, manifests, segment quality, adapter.

A thin layer over :mod:`modalities.signals` (whose readers, preprocessing pipeline, views and encoders it
reuses): Parquet tables next to CSV/WFDB/EDF, manifests whose patient is the *participant* and whose
trials are their recordings (BIDMC, any per-participant folder or table), 60 s segments checked for NaN,
flat lines, clipping and motion, and :class:`WearableAdapter`. Names are imported lazily, as in
:mod:`modalities.signals`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WEARABLE_LABELS": "modalities.wearables.adapter",
    "WearableAdapter": "modalities.wearables.adapter",
    "WearableIndexResult": "modalities.wearables.indexing",
    "index_wearables": "modalities.wearables.indexing",
    "load_index": "modalities.wearables.indexing",
    "save_index": "modalities.wearables.indexing",
    "bidmc_manifest": "modalities.wearables.manifests",
    "build_wearable_manifest": "modalities.wearables.manifests",
    "detect_wearable_layout": "modalities.wearables.manifests",
    "participant_manifest": "modalities.wearables.manifests",
    "read_bidmc_fix": "modalities.wearables.manifests",
    "SegmentQuality": "modalities.wearables.quality",
    "assess_segment": "modalities.wearables.quality",
    "accelerometer_channels": "modalities.wearables.readers",
    "accelerometer_magnitude": "modalities.wearables.readers",
    "read_parquet_signal": "modalities.wearables.readers",
    "read_wearable": "modalities.wearables.readers",
    "read_wearable_header": "modalities.wearables.readers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modalities.wearables' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
