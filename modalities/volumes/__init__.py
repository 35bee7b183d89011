"""3-D CT/MRI volumes: readers, manifests, indexing, preprocessing, views and encoders.

The adapter (:class:`VolumeAdapter`) is what configs name; the pieces below are public for users who
compose their own pipelines. Names are imported lazily, so that importing the readers does not import
torch or the networks.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VolumeAdapter": "modalities.volumes.adapter",
    "SwinUNETRBackbone": "modalities.volumes.encoders",
    "UNetBackbone": "modalities.volumes.encoders",
    "VolumeIndexResult": "modalities.volumes.indexing",
    "index_volumes": "modalities.volumes.indexing",
    "load_index": "modalities.volumes.indexing",
    "save_index": "modalities.volumes.indexing",
    "VolumeManifest": "modalities.volumes.manifests",
    "build_manifest": "modalities.volumes.manifests",
    "detect_layout": "modalities.volumes.manifests",
    "Volume": "modalities.volumes.readers",
    "check_same_grid": "modalities.volumes.readers",
    "read_mask": "modalities.volumes.readers",
    "read_volume": "modalities.volumes.readers",
    "build_pipeline": "modalities.volumes.transforms",
    "preprocess": "modalities.volumes.transforms",
    "preprocessing_spec": "modalities.volumes.transforms",
    "volume_views": "modalities.volumes.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modalities.volumes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
