"""Data contract, manifests, splits, samplers and the pretraining data module."""

from medcl.data.adapter import Adapter, IndexedData
from medcl.data.datamodule import ManifestDataModule, PretrainDataModule
from medcl.data.dataset import ManifestDataset, collate_skipping
from medcl.data.sampler import GroupedBatchSampler
from medcl.data.splits import SplitConfig, assign_splits, load_splits, save_splits, verify_disjoint

__all__ = [
    "Adapter",
    "GroupedBatchSampler",
    "IndexedData",
    "ManifestDataModule",
    "ManifestDataset",
    "PretrainDataModule",
    "SplitConfig",
    "assign_splits",
    "collate_skipping",
    "load_splits",
    "save_splits",
    "verify_disjoint",
]
