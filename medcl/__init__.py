"""medcl: contrastive self-supervised learning for medical imaging and physiological time series.

The public face of the library. Names are imported lazily (``import medcl`` itself imports neither
torch nor Lightning, so torch-free tools can read ``medcl.__version__``)::

    import medcl
    data = medcl.PretrainDataModule(adapter, split=medcl.SplitConfig(method="fold"))
    model = medcl.PretrainModule(encoder, medcl.objectives.SimCLR())

Subpackages: :mod:`medcl.losses` (pure loss functions), :mod:`medcl.dist` (cross-rank gathers),
:mod:`medcl.objectives`, :mod:`medcl.data`, :mod:`medcl.training`, :mod:`medcl.checkpoints`,
:mod:`medcl.errors`. Modality adapters live in the ``modalities`` package.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PretrainDataModule": "medcl.data.datamodule",
    "ManifestDataset": "medcl.data.dataset",
    "GroupedBatchSampler": "medcl.data.sampler",
    "SplitConfig": "medcl.data.splits",
    "IndexedData": "medcl.data.adapter",
    "Adapter": "medcl.data.adapter",
    "PretrainModule": "medcl.training.pretrain",
    "load_checkpoint": "medcl.checkpoints",
    "load_encoder": "medcl.checkpoints",
}
_SUBMODULES = {"checkpoints", "data", "dist", "errors", "losses", "objectives", "training", "configurable"}

__all__ = ["__version__", *sorted(_EXPORTS), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"medcl.{name}")
    raise AttributeError(f"module 'medcl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
