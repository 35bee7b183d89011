"""The classification data module: labelled samples, patient-disjoint splits, label fractions by patient."""

from __future__ import annotations

import pandas as pd
from torch.utils.data import DataLoader

from medcl.data.adapter import Adapter
from medcl.data.datamodule import ManifestDataModule
from medcl.data.dataset import collate_skipping
from medcl.data.sampler import GroupedBatchSampler
from medcl.data.splits import SplitConfig
from medcl.errors import ConfigError
from tasks.fractions import select_label_fraction

__all__ = ["ClassificationDataModule"]


class ClassificationDataModule(ManifestDataModule):
    """Labelled samples for fine-tuning and evaluation.

    Samples without a label are dropped (e.g. PTB-XL records that are neither NORM nor MI for
    ``norm_vs_mi``, or records without a diagnostic superclass). The training split then keeps the
    first ``ceil(label_fraction · n)`` patients of a seeded, class-stratified patient order
    (:mod:`tasks.fractions`): whole patients only, nested across fractions for one seed. Validation
    and test splits are never subsampled.

    Args:
        adapter: the modality adapter (its label task decides the classes).
        label_fraction: fraction of labelled training *patients* to train on, in (0, 1].
        fraction_seed: seed of the patient draw.
        batch_size: samples per batch.
        split: how patients are split into train/val/test.
        seed: seed of the batch order (and of augmentations).
        num_workers: DataLoader worker processes.
        on_error: ``"raise"`` or ``"skip"``.
        augment: train on one random view per sample (the adapter's view transform) instead of the
            plain sample.
        run_dir: where to write the data record; default: the trainer's ``log_dir``.
    """

    def __init__(
        self,
        adapter: Adapter,
        label_fraction: float = 1.0,
        fraction_seed: int = 0,
        batch_size: int = 64,
        split: SplitConfig | None = None,
        seed: int = 0,
        num_workers: int = 0,
        on_error: str = "raise",
        augment: bool = False,
        run_dir: str | None = None,
    ) -> None:
        super().__init__(adapter, batch_size, split, seed, num_workers, on_error, True, run_dir)
        if not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {label_fraction}")
        if not adapter.class_names:
            raise ConfigError("classification needs labels: the adapter has no label classes (labels: null?)")
        self.label_fraction = label_fraction
        self.fraction_seed = fraction_seed
        self.augment = augment

    # what the model needs to know (LightningCLI links these on instantiation)
    @property
    def num_classes(self) -> int:
        return len(self.adapter.class_names or [])

    @property
    def task(self) -> str:
        """``"multiclass"`` (one class per sample; two-class problems included) or ``"multilabel"``."""
        return self.adapter.label_mode

    @property
    def input_key(self) -> str:
        return self.adapter.input_key

    def select_samples(self, samples: pd.DataFrame) -> pd.DataFrame:
        labelled = samples[samples["labels"].fillna("").astype(str) != ""]
        train = select_label_fraction(
            labelled[labelled["split"] == "train"], self.label_fraction, self.fraction_seed
        )
        return pd.concat([train, labelled[labelled["split"] != "train"]], ignore_index=True)

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", n_views=1 if self.augment else 0)
        if len(dataset) < 2:
            raise ConfigError(f"the training split has {len(dataset)} labelled sample(s); need at least 2")
        # Reshuffled every epoch from (seed, epoch); (index, epoch) keys also reseed the augmentations.
        sampler = GroupedBatchSampler(
            dataset.patient_codes,
            dataset.trial_codes,
            batch_size=min(self.batch_size, len(dataset)),
            samples_per_trial=1,
            trials_per_patient=1,
            seed=self.seed,
            shuffle=True,
            drop_last=True,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_skipping,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.dataset(split, n_views=0),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate_skipping,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val") if len(self.samples.get("val", [])) else []

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test") if len(self.samples.get("test", [])) else []

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
