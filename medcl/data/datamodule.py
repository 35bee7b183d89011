"""Data modules: manifest → patient-disjoint split → sample tables → batches.

:class:`ManifestDataModule` asks its adapter to index the data (every file validated, bad ones
quarantined), splits *patients* into train/val/test and makes the sample tables. Everything needed to
audit or reproduce the data side of a run is written next to the run (the trainer's ``log_dir``):
``trials.csv``, ``quarantine.csv``, ``splits.csv``, ``samples_<split>.csv`` and ``data.json``. The saved
split is read back and verified: a patient in two splits is an error.

:class:`PretrainDataModule` serves grouped batches of contrastive views; the classification data module
(``tasks.ClassificationDataModule``) serves labelled samples at a chosen label fraction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader

import medcl
from medcl.data import contract
from medcl.data.adapter import Adapter, IndexedData
from medcl.data.dataset import ManifestDataset, SkipTracker, collate_skipping
from medcl.data.sampler import GroupedBatchSampler, ResumableDataLoader
from medcl.data.splits import SPLITS, SplitConfig, assign_splits, load_splits, save_splits, verify_disjoint
from medcl.errors import ConfigError

__all__ = ["ManifestDataModule", "PretrainDataModule"]

#: the data split each trainer stage reads
_STAGE_SPLITS = {
    "train": "train",
    "validate": "val",
    "sanity_check": "val",
    "test": "test",
    "predict": "predict",
}


class ManifestDataModule(L.LightningDataModule):
    """Indexing, patient-disjoint splitting and sample tables, shared by every medcl data module.

    Args:
        adapter: the modality adapter (e.g. ``modalities.signals.SignalAdapter``).
        batch_size: samples per batch (per process).
        split: how patients are split (:class:`~medcl.data.splits.SplitConfig`).
        seed: seed of batch order and random views.
        num_workers: DataLoader worker processes.
        on_error: ``"raise"`` (default) or ``"skip"`` for samples that fail to load.
        use_labels: load labels when the adapter has classes.
        run_dir: where to write the data record; default: the trainer's ``log_dir``.
        max_skip_fraction: with ``on_error="skip"``, the run stops with
            :class:`~medcl.errors.TooManyBadSamplesError` once more than this fraction of a split is known
            to be bad (its failed samples, or, earlier, a failure rate of the recordings drawn so far that
            is above it with 99.9 % confidence). Every bad file is logged once with its reason, every skip
            is counted (metrics ``data/skipped`` over the run and ``data/skipped_epoch`` for training,
            ``data/skipped_<split>`` for the others) and every bad sample is written to
            ``skipped_samples.csv`` in the run folder (see :class:`~medcl.data.dataset.SkipTracker`).

    Subclasses may filter the sample table in :meth:`select_samples` and define the loaders.
    """

    def __init__(
        self,
        adapter: Adapter,
        batch_size: int = 64,
        split: SplitConfig | None = None,
        seed: int = 0,
        num_workers: int = 0,
        on_error: str = "raise",
        use_labels: bool = True,
        run_dir: str | None = None,
        max_skip_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.adapter = adapter
        self.batch_size = batch_size
        self.split = split if split is not None else SplitConfig()
        self.seed = seed
        self.num_workers = num_workers
        self.on_error = on_error
        self.use_labels = use_labels
        self.run_dir = run_dir
        self.max_skip_fraction = max_skip_fraction
        #: the skipped-sample ledger of this process (its report goes to the run folder at setup)
        self.skips = SkipTracker(max_skip_fraction)
        self.n_views = 0
        #: set by a BatchObjective's training module (see PretrainModule.setup): replaces the views
        self.item_transform: Any = None
        #: the item transform of validation and test samples where it differs (None: item_transform)
        self.eval_item_transform: Any = None
        self.indexed: IndexedData | None = None
        self.assignment: pd.Series | None = None
        self.samples: dict[str, pd.DataFrame] = {}

    @property
    def class_names(self) -> list[str] | None:
        """The adapter's classification classes (None without labels, with ``use_labels=False``, or
        when the labels are not per-sample classes, e.g. segmentation masks)."""
        if not self.use_labels or self.adapter.label_mode not in ("multilabel", "multiclass"):
            return None
        return self.adapter.class_names

    def select_samples(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Hook: the sample table (all splits, column ``split``) that this data module uses."""
        return samples

    # ----------------------------------------------------------------------------------------------
    def _resolve_run_dir(self) -> Path | None:
        if self.run_dir is not None:
            return Path(self.run_dir)
        trainer = self.trainer
        # Without a logger, Lightning's log_dir is the current directory: write nothing there.
        if trainer is not None and trainer.logger is not None and trainer.log_dir is not None:
            return Path(trainer.log_dir)
        return None

    def setup(self, stage: str | None = None) -> None:
        """Index, split and segment once (idempotent); write and verify the data record."""
        self._place_skip_report()
        if self.indexed is not None:
            return
        indexed = self.adapter.index()
        if len(indexed.trials) == 0:
            raise ConfigError(
                f"no usable recordings in {indexed.source or 'the data'}: "
                f"{len(indexed.quarantine)} file(s) quarantined"
            )
        assignment = assign_splits(indexed.trials, self.split)
        trials = indexed.trials.assign(patient_id=indexed.trials["patient_id"].astype(str))
        trials = trials[trials["patient_id"].isin(assignment.index)]
        samples = self.adapter.make_samples(trials, indexed.events)
        samples = samples.assign(split=samples["patient_id"].astype(str).map(assignment).to_numpy())
        samples = self.select_samples(samples)
        verify_disjoint(samples[["patient_id", "split"]])
        self.samples = {name: samples[samples["split"] == name].reset_index(drop=True) for name in SPLITS}
        if len(self.samples["train"]) == 0:
            raise ConfigError("the training split has no samples; check the split settings")
        self.indexed = indexed
        self.assignment = assignment
        run_dir = self._resolve_run_dir()
        if run_dir is not None:
            self._write_record(run_dir, trials, indexed, assignment)
            self._verify_saved_split(run_dir, assignment)
        rank_zero_info(self.describe())

    def _place_skip_report(self) -> None:
        """Put the skip report in the run folder (one file per rank beyond the first)."""
        run_dir = self._resolve_run_dir()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        name = "skipped_samples.csv" if rank == 0 else f"skipped_samples_rank{rank}.csv"
        self.skips.report_path = run_dir / name if run_dir is not None else None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Account for the samples skipped in this batch (``on_error="skip"``): log, count, report, and
        stop past ``max_skip_fraction`` (:class:`~medcl.data.dataset.SkipTracker`)."""
        if not isinstance(batch, dict) or contract.N_SKIPPED not in batch:
            return batch
        trainer = self.trainer
        stage = trainer.state.stage if trainer is not None else None
        split = _STAGE_SPLITS.get(str(getattr(stage, "value", stage)), "train")
        epoch = trainer.current_epoch if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        sanity = trainer is not None and trainer.sanity_checking
        n = self.skips.update(batch, split, epoch=epoch, step=step, count=not sanity)
        if n and not sanity and trainer is not None and trainer.loggers:
            if split == "train":
                metrics = {
                    "data/skipped": self.skips.total["train"],
                    "data/skipped_epoch": self.skips.in_epoch["train"],
                }
            else:
                metrics = {f"data/skipped_{split}": self.skips.total[split]}
            for logger in trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        return batch

    def teardown(self, stage: str) -> None:
        if any(self.skips.total.values()) or self.skips.first:
            rank_zero_info(self.skips.summary())

    @rank_zero_only
    def _write_record(
        self, run_dir: Path, trials: pd.DataFrame, indexed: IndexedData, assignment: pd.Series
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        trials.to_csv(run_dir / "trials.csv", index=False)
        indexed.quarantine.to_csv(run_dir / "quarantine.csv", index=False)
        save_splits(assignment, run_dir / "splits.csv")
        for name, table in self.samples.items():
            table.to_csv(run_dir / f"samples_{name}.csv", index=False)
        record = {
            "medcl_version": medcl.__version__,
            "source": indexed.source,
            "modality": self.adapter.modality,
            "input": self.adapter.input_spec(),
            "split": {
                **self.split.__dict__,
                "val_folds": list(self.split.val_folds),
                "test_folds": list(self.split.test_folds),
            },
            "counts": self.counts(),
            "quarantined_files": len(indexed.quarantine),
        }
        with (run_dir / "data.json").open("w") as handle:
            json.dump(record, handle, indent=2, default=str)

    @staticmethod
    @rank_zero_only
    def _verify_saved_split(run_dir: Path, assignment: pd.Series) -> None:
        path = run_dir / "splits.csv"
        if path.is_file():
            saved = load_splits(path)  # verifies disjointness of what is on disk
            if not saved.sort_index().equals(assignment.sort_index()):
                raise ConfigError(f"{path} does not hold the split this run uses")

    def counts(self) -> dict[str, dict[str, int]]:
        """Patients, trials and samples per split."""
        return {
            name: {
                "patients": int(table["patient_id"].nunique()),
                "trials": int(table["trial_id"].nunique()),
                "samples": len(table),
            }
            for name, table in self.samples.items()
        }

    def describe(self) -> str:
        """One line about the data of this run (after :meth:`setup`)."""
        if self.indexed is None:
            return "data: not set up yet"
        parts = [
            f"{name} {c['patients']} patients/{c['samples']} samples" for name, c in self.counts().items()
        ]
        text = f"data: {self.indexed.summary()}; " + ", ".join(parts)
        if len(self.indexed.quarantine):
            run_dir = self._resolve_run_dir()
            if run_dir is not None:
                text += f"; quarantine reasons in {run_dir / 'quarantine.csv'}"
        return text

    # ----------------------------------------------------------------------------------------------
    def dataset(self, split: str, n_views: int | None = None) -> ManifestDataset:
        """The dataset of one split (after :meth:`setup`); ``n_views=0`` gives preprocessed inputs.

        A batch objective's ``item_transform`` applies to every split, except that validation and test
        samples get ``eval_item_transform`` when one is set (e.g. the same inputs without augmentation).
        """
        if split not in self.samples:
            raise ConfigError(f"unknown split {split!r} or setup() not run yet")
        item_transform = self.item_transform
        if split != "train" and self.eval_item_transform is not None:
            item_transform = self.eval_item_transform
        return ManifestDataset(
            self.samples[split],
            self.adapter,
            n_views=self.n_views if n_views is None else n_views,
            seed=self.seed,
            on_error=self.on_error,
            label_names=self.class_names,
            label_mode=self.adapter.label_mode,
            item_transform=item_transform if (n_views is None or n_views > 0) else None,
        )


class PretrainDataModule(ManifestDataModule):
    """Data for contrastive pretraining: grouped batches of ``n_views`` random views per sample.

    Args:
        adapter: the modality adapter (e.g. ``modalities.signals.SignalAdapter``).
        batch_size: samples per batch (per process).
        samples_per_trial: samples of one trial kept together in a batch (trial-level positives).
        trials_per_patient: trials of one patient kept together in a batch (patient-level positives).
        n_views: contrastive views per sample.
        split: how patients are split (:class:`~medcl.data.splits.SplitConfig`).
        seed: seed of the batch plan and of the views.
        num_workers: DataLoader worker processes.
        on_error: ``"raise"`` (default) or ``"skip"`` for samples that fail to load.
        use_labels: load labels (for the online linear probe) when the adapter has classes.
        run_dir: where to write the data record; default: the trainer's ``log_dir``.
        max_skip_fraction: with ``on_error="skip"``, the fraction of a split's samples allowed to fail
            before the run stops (see :class:`ManifestDataModule`).
    """

    def __init__(
        self,
        adapter: Adapter,
        batch_size: int = 64,
        samples_per_trial: int = 2,
        trials_per_patient: int = 2,
        n_views: int = 2,
        split: SplitConfig | None = None,
        seed: int = 0,
        num_workers: int = 0,
        on_error: str = "raise",
        use_labels: bool = True,
        run_dir: str | None = None,
        max_skip_fraction: float = 0.05,
    ) -> None:
        super().__init__(
            adapter, batch_size, split, seed, num_workers, on_error, use_labels, run_dir, max_skip_fraction
        )
        self.samples_per_trial = samples_per_trial
        self.trials_per_patient = trials_per_patient
        self.n_views = n_views

    # what the model needs to know about the data (LightningCLI links these on instantiation)
    @property
    def probe_num_classes(self) -> int | None:
        """Number of label classes for the online probe (None: no labels)."""
        names = self.class_names
        return len(names) if names else None

    @property
    def probe_task(self) -> str | None:
        """``"multilabel"`` or ``"multiclass"`` (None: no labels)."""
        return self.adapter.label_mode if self.probe_num_classes else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if len(dataset) == 0:
            raise ConfigError(f"the {split} split has no samples")
        sampler = GroupedBatchSampler(
            dataset.patient_codes,
            dataset.trial_codes,
            batch_size=min(self.batch_size, len(dataset)),
            samples_per_trial=self.samples_per_trial,
            trials_per_patient=self.trials_per_patient,
            seed=self.seed,
            shuffle=shuffle,
            drop_last=shuffle,
        )
        # Resumable: a run resumed from a mid-epoch checkpoint continues after the last trained batch.
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_skipping,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | Sequence[Any]:
        return self._loader("val", shuffle=False) if len(self.samples.get("val", [])) else []

    def test_dataloader(self) -> DataLoader | Sequence[Any]:
        return self._loader("test", shuffle=False) if len(self.samples.get("test", [])) else []
