"""The bad-data policy (``on_error`` and ``max_skip_fraction``) in real pretraining runs, and the SkipTracker.

The runs use a copy of 32 bundled PTB-XL records, indexed while they were good (so nothing is
quarantined), then two training records go bad the way files on long-running storage do: one ``.dat`` is
truncated, one header is overwritten with garbage. Batches hold the 4 windows of one record
(``samples_per_trial=4``), so every batch of a bad record fails completely: the training step must then
make no step rather than crash.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from medcl.data import contract
from medcl.data.datamodule import PretrainDataModule
from medcl.data.dataset import SKIPPED, SkippedSample, SkipTracker, collate_skipping
from medcl.data.splits import SplitConfig
from medcl.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    TooManyBadSamplesError,
    UnsupportedFormatError,
)
from medcl.objectives import SimCLR
from medcl.training.pretrain import PretrainModule
from modalities.signals import SignalAdapter, TsaiEncoder
from modalities.signals.indexing import index_signals, save_index

EPOCHS = 2
WINDOWS = 4  # 10 s records, 2.5 s windows


@dataclass(frozen=True)
class BadCopy:
    """An indexed PTB-XL copy of which two training records went bad after indexing."""

    root: Path
    index: Path
    truncated: Path  # the truncated .dat
    garbage: Path  # the garbage .hea
    bad_patients: tuple[str, ...]
    n_train_records: int


@pytest.fixture(scope="module")
def bad_copy(
    tmp_path_factory: pytest.TempPathFactory, bundled_ptbxl: Path, copy_record: Callable[..., Path]
) -> BadCopy:
    root = tmp_path_factory.mktemp("ptbxl_copy")
    db = pd.read_csv(bundled_ptbxl / "ptbxl_database.csv")
    train = db[db["strat_fold"] <= 8].head(24)
    chosen = pd.concat([train, db[db["strat_fold"] == 9].head(4), db[db["strat_fold"] == 10].head(4)])
    chosen.to_csv(root / "ptbxl_database.csv", index=False)
    shutil.copyfile(bundled_ptbxl / "scp_statements.csv", root / "scp_statements.csv")
    for relative in chosen["filename_lr"]:
        copy_record(bundled_ptbxl / relative, (root / relative).parent)
    index = tmp_path_factory.mktemp("ptbxl_index")
    indexed = index_signals("ptbxl", root)
    assert len(indexed.quarantine) == 0 and len(indexed.manifest.trials) == 32
    save_index(indexed, index)

    victims = train.iloc[[2, 9]]
    truncated = root / f"{victims['filename_lr'].iloc[0]}.dat"
    truncated.write_bytes(truncated.read_bytes()[:12000])
    garbage = root / f"{victims['filename_lr'].iloc[1]}.hea"
    garbage.write_bytes(bytes(range(256)) * 2)
    patients = tuple(str(p) for p in victims["patient_id"])
    return BadCopy(root, index, truncated, garbage, patients, len(train))


def datamodule(copy: BadCopy, **kwargs: Any) -> PretrainDataModule:
    adapter = SignalAdapter(root=str(copy.root), index_dir=str(copy.index), window_s=2.5, view_crop_s=2.0)
    settings: dict[str, Any] = {"batch_size": WINDOWS, "samples_per_trial": WINDOWS, "trials_per_patient": 1}
    return PretrainDataModule(adapter, split=SplitConfig(method="fold"), **{**settings, **kwargs})


class WeightWatch(L.Callback):
    """Records, per training batch, whether every sample failed and whether the encoder's weights moved."""

    def __init__(self) -> None:
        self.batches: list[tuple[bool, bool]] = []
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self._before = [p.detach().clone() for p in module.encoder.parameters()]

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        moved = any(
            not torch.equal(a, p) for a, p in zip(self._before, module.encoder.parameters(), strict=True)
        )
        self.batches.append((contract.VIEWS not in batch, moved))


def trainer(tmp_path: Path, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        callbacks=callbacks,
        max_epochs=EPOCHS,
        limit_val_batches=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )


def model() -> PretrainModule:
    encoder = TsaiEncoder("InceptionTime", in_channels=12, arch_kwargs={"nf": 8, "depth": 2})
    return PretrainModule(encoder, SimCLR())


def planned_failures(dm: PretrainDataModule, bad_trials: set[int]) -> tuple[int, list[int]]:
    """(batches per epoch, bad samples drawn in each epoch) from the training plan itself."""
    loader = dm.train_dataloader()
    sampler, codes = loader.batch_sampler, loader.dataset.trial_codes
    per_epoch = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        per_epoch.append(sum(int(codes[i] in bad_trials) for batch in batches for i, _ in batch))
        # every batch is the 4 windows of one record: a bad record's batch fails completely
        assert all(len({int(codes[i]) for i, _ in batch}) == 1 for batch in batches)
    return len(batches), per_epoch


def test_skip_mode_finishes_and_reports_exactly_the_bad_files(
    bad_copy: BadCopy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    L.seed_everything(0)
    dm = datamodule(bad_copy, on_error="skip", max_skip_fraction=0.25, num_workers=1)
    watch = WeightWatch()
    fit = trainer(tmp_path, [watch])
    with caplog.at_level(logging.WARNING, logger="medcl.data.dataset"):
        fit.fit(model(), datamodule=dm)

    train = dm.samples["train"]
    bad_trials = {
        int(code)
        for code, path in zip(dm.dataset("train").trial_codes, train["path"], strict=True)
        if Path(path).name in (bad_copy.truncated.stem, bad_copy.garbage.stem)
    }
    assert len(bad_trials) == 2
    n_batches, drawn_bad = planned_failures(dm, bad_trials)
    assert n_batches == bad_copy.n_train_records and drawn_bad == [2 * WINDOWS] * EPOCHS

    # Counts: per epoch and over the run, in the tracker and as logged metrics.
    assert dm.skips.total["train"] == sum(drawn_bad) and dm.skips.in_epoch["train"] == drawn_bad[-1]
    assert dm.skips.distinct("train") == 2 * WINDOWS
    run = Path(fit.log_dir)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["data/skipped"].max() == sum(drawn_bad)
    assert metrics["data/skipped_epoch"].max() == drawn_bad[0]
    # Every batch of a bad record failed completely and left the weights as they were; the others trained.
    assert len(watch.batches) == EPOCHS * n_batches
    assert sorted(watch.batches) == [(False, True)] * EPOCHS * (n_batches - 2) + [(True, False)] * EPOCHS * 2
    assert np.isfinite(metrics["train/loss_step"].dropna()).all()

    # The report lists exactly the two files, with their reasons, once per bad sample.
    report = pd.read_csv(run / "skipped_samples.csv")
    assert sorted(set(report["path"])) == sorted({str(bad_copy.truncated), str(bad_copy.garbage)})
    assert len(report) == 2 * WINDOWS and (report["split"] == "train").all()
    reasons = dict(zip(report["path"], report["reason"], strict=False))
    assert "the .dat is truncated" in reasons[str(bad_copy.truncated)]
    assert "not a WFDB header" in reasons[str(bad_copy.garbage)]
    errors = dict(zip(report["path"], report["error"], strict=False))
    assert errors == {
        str(bad_copy.truncated): "CorruptFileError",
        str(bad_copy.garbage): "UnsupportedFormatError",
    }

    # Each bad file is logged once (not once per window and epoch), with its reason; no patient id.
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert len(warnings) == 2
    assert {str(bad_copy.truncated), str(bad_copy.garbage)} == {
        w.split(": ")[0][len("skipping ") :] for w in warnings
    }
    for patient in bad_copy.bad_patients:
        for text in (*warnings, (run / "skipped_samples.csv").read_text()):
            assert patient not in text and patient.removesuffix(".0") not in text


def test_raise_mode_fails_naming_the_file(bad_copy: BadCopy, tmp_path: Path) -> None:
    with pytest.raises(DataError) as raised:
        trainer(tmp_path).fit(model(), datamodule=datamodule(bad_copy))
    assert isinstance(raised.value, (CorruptFileError, UnsupportedFormatError))
    assert raised.value.path in (str(bad_copy.truncated), str(bad_copy.garbage))
    assert raised.value.path in str(raised.value) and "[sample " in str(raised.value)


def test_past_the_allowed_fraction_the_run_fails_with_the_files_and_the_report(
    bad_copy: BadCopy, tmp_path: Path
) -> None:
    # 2 of 24 training records (8 of 96 samples) are bad: more than 5 %.
    dm = datamodule(bad_copy, on_error="skip", max_skip_fraction=0.05)
    fit = trainer(tmp_path)
    with pytest.raises(TooManyBadSamplesError) as raised:
        fit.fit(model(), datamodule=dm)
    message = str(raised.value)
    assert "8 of the 96 samples of the train split failed to load" in message
    assert "max_skip_fraction=0.05" in message
    assert str(bad_copy.truncated) in message and str(bad_copy.garbage) in message
    report = Path(fit.log_dir) / "skipped_samples.csv"
    assert f"in {report}" in message
    assert set(pd.read_csv(report)["path"]) == {str(bad_copy.truncated), str(bad_copy.garbage)}
    assert fit.current_epoch == 0 and fit.global_step < bad_copy.n_train_records  # stopped in epoch 1


# -------------------------------------------------------------------------------------------- SkipTracker


def batch(loaded_trials: list[int], bad: list[tuple[int, int]], size: int = 1000) -> dict[str, Any]:
    """A collated batch: loaded samples of ``loaded_trials`` and skipped (sample, trial) pairs."""
    items: list[Any] = [{contract.TRIAL: t, contract.INDEX: 500 + k} for k, t in enumerate(loaded_trials)]
    items += [SkippedSample(i, t, f"/data/rec{t}.dat", "truncated", "CorruptFileError", size) for i, t in bad]
    return collate_skipping(items)


def test_many_bad_recordings_stop_early_by_an_exact_binomial_test() -> None:
    # At max_fraction 0.05: P(3 of 3 bad) = 0.05**3 < 1e-3 stops; 1 of 1 (0.05) and 2 of 2 (0.0025) do not.
    tracker = SkipTracker(max_fraction=0.05)
    tracker.update(batch([], [(0, 0)]), "train")
    tracker.update(batch([], [(1, 1)]), "train")
    with pytest.raises(TooManyBadSamplesError, match=r"3 of the 3 recordings drawn so far"):
        tracker.update(batch([], [(2, 2)]), "train")

    # The same 3 bad recordings among 40 good ones: P(X >= 3 | 43, 0.05) = 0.37, no reason to stop.
    tracker = SkipTracker(max_fraction=0.05)
    tracker.update(batch(list(range(10, 50)), []), "train")
    for k in range(3):
        tracker.update(batch([], [(k, k)]), "train")
    assert tracker.total["train"] == 3 and tracker.seen["train"] == 43


def test_the_certain_rule_counts_distinct_samples_of_the_split() -> None:
    tracker = SkipTracker(max_fraction=0.1, alpha=0.0)  # alpha 0: only the certain rule
    for epoch in range(3):  # the same bad sample in every epoch counts 3 times, is one distinct sample
        tracker.update(batch([1, 2], [(7, 9)], size=20), "train", epoch=epoch)
    assert tracker.total["train"] == 3 and tracker.in_epoch["train"] == 1 and tracker.distinct("train") == 1
    tracker.update(batch([], [(8, 9)], size=20), "train", epoch=3)  # 2 of 20 = 10 %: allowed
    with pytest.raises(TooManyBadSamplesError, match=r"3 of the 20 samples of the train split"):
        tracker.update(batch([], [(11, 4)], size=20), "train", epoch=3)


def test_tracker_state_round_trip_and_settings(tmp_path: Path) -> None:
    tracker = SkipTracker(max_fraction=0.5, report_path=tmp_path / "skips.csv")
    tracker.update(batch([1, 2, 3], [(4, 5), (6, 5)]), "train", epoch=0, step=3)
    tracker.update(batch([1], [(4, 5)]), "val", count=False)  # sanity check: recorded, not counted
    restored = SkipTracker(max_fraction=0.5)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()
    assert restored.files("train") == [("/data/rec5.dat", "truncated")] and "val" not in restored.total
    rows = pd.read_csv(tmp_path / "skips.csv")
    assert rows[["split", "sample", "step"]].values.tolist() == [
        ["train", 4, 3],
        ["train", 6, 3],
        ["val", 4, 0],
    ]
    assert collate_skipping([None, None]) == {contract.N_SKIPPED: 2}
    assert SKIPPED not in batch([1], [])
    with pytest.raises(ConfigError, match="max_skip_fraction"):
        SkipTracker(max_fraction=1.5)
    assert isinstance(torch.as_tensor(batch([1], [(2, 3)])[contract.TRIAL]), torch.Tensor)
