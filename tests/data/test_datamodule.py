"""PretrainDataModule and ManifestDataset on the bundled PTB-XL subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medcl.data import contract
from medcl.data.datamodule import PretrainDataModule
from medcl.data.dataset import ManifestDataset, collate_skipping
from medcl.data.splits import SplitConfig, load_splits
from medcl.errors import ConfigError, CorruptFileError, SplitLeakError
from modalities.signals import SignalAdapter


def make_datamodule(tmp_path: Path, **kwargs: Any) -> PretrainDataModule:
    adapter = kwargs.pop("adapter", None) or SignalAdapter(window_s=2.5, view_crop_s=2.0)
    defaults: dict[str, Any] = {
        "batch_size": 16,
        "samples_per_trial": 2,
        "trials_per_patient": 1,
        "split": SplitConfig(method="fold"),
        "run_dir": str(tmp_path / "run"),
    }
    return PretrainDataModule(adapter, **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory) -> PretrainDataModule:
    dm = make_datamodule(tmp_path_factory.mktemp("dm"))
    dm.setup("fit")
    return dm


def test_setup_writes_a_verified_patient_disjoint_record(datamodule: PretrainDataModule) -> None:
    run = Path(datamodule.run_dir)
    for name in (
        "trials.csv",
        "quarantine.csv",
        "splits.csv",
        "samples_train.csv",
        "samples_val.csv",
        "data.json",
    ):
        assert (run / name).is_file(), name
    splits = load_splits(run / "splits.csv")
    assert len(splits) == 275
    patients = {
        name: set(pd.read_csv(run / f"samples_{name}.csv", dtype={"patient_id": str})["patient_id"])
        for name in ("train", "val", "test")
    }
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert patients["test"] == set(splits[splits == "test"].index)
    counts = datamodule.counts()
    assert sum(c["samples"] for c in counts.values()) == 1200
    # PTB-XL's strat_fold 10 is the test split.
    trials = pd.read_csv(run / "trials.csv", dtype={"patient_id": str})
    assert set(trials[trials["fold"] == 10]["patient_id"]) == patients["test"]


def test_a_split_file_with_a_leak_is_refused(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("patient_id,split\n15709,train\n13243,train\n15709,test\n")
    dm = make_datamodule(tmp_path, split=SplitConfig(method="file", file=str(leaky)))
    with pytest.raises(SplitLeakError, match=r"1 patient\(s\) appear in more than one split") as raised:
        dm.setup("fit")
    assert raised.value.patient_ids == ["15709"]  # named in the message only with MEDCL_LOG_IDS=1


def test_train_batches_hold_views_ids_and_labels(datamodule: PretrainDataModule) -> None:
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    assert batch[contract.VIEWS].shape == (16, 2, 12, 200)
    assert batch[contract.PATIENT].dtype == torch.long and batch[contract.TRIAL].shape == (16,)
    assert batch[contract.LABEL].shape == (16, 5) and batch[contract.HAS_LABEL].all()
    assert batch[contract.N_SKIPPED] == 0
    # samples_per_trial=2: every trial in the batch appears (at least) twice.
    _, counts = torch.unique(batch[contract.TRIAL], return_counts=True)
    assert (counts >= 2).all()
    assert not any(isinstance(value, str) for value in batch.values()), "no string ids in a batch"
    # Labels are the trial's diagnostic superclasses.
    table = datamodule.samples["train"]
    index = int(batch[contract.INDEX][0])
    names = [
        name
        for name, flag in zip(datamodule.adapter.class_names, batch[contract.LABEL][0], strict=True)
        if flag
    ]
    assert "|".join(names) == table.iloc[index]["labels"]


def test_views_depend_only_on_seed_epoch_and_index(datamodule: PretrainDataModule) -> None:
    dataset = datamodule.dataset("train")
    a, b = dataset[(5, 0)], dataset[(5, 0)]
    c = dataset[(5, 1)]
    torch.testing.assert_close(a[contract.VIEWS], b[contract.VIEWS], rtol=0, atol=0)
    assert not torch.equal(a[contract.VIEWS], c[contract.VIEWS])
    assert not torch.equal(a[contract.VIEWS][0], a[contract.VIEWS][1])
    plain = datamodule.dataset("train", n_views=0)[5]
    assert plain["signal"].shape == (12, 250)


def test_bad_samples_raise_by_default_and_are_counted_when_skipping(
    datamodule: PretrainDataModule, flaky_adapter: type
) -> None:
    samples = datamodule.samples["train"]
    bad = str(samples["trial_id"].iloc[0])
    adapter = flaky_adapter(bad_trials=(bad,), window_s=2.5, view_crop_s=2.0)
    raising = ManifestDataset(samples, adapter)
    with pytest.raises(CorruptFileError, match=r"00\d+_lr: simulated truncated \.dat \[sample 0"):
        raising[0]
    skipping = ManifestDataset(samples, adapter, on_error="skip")
    assert skipping[0].index == 0 and skipping[0].reason == "simulated truncated .dat"
    good = np.flatnonzero((samples["trial_id"] != bad).to_numpy())[:3]
    batch = collate_skipping([skipping[int(i)] for i in [0, 1, *good]])
    assert batch[contract.N_SKIPPED] == 2 and batch[contract.VIEWS].shape[0] == 3
    assert collate_skipping([None, None]) == {contract.N_SKIPPED: 2}


def test_no_usable_recording_is_a_clear_error(tmp_path: Path) -> None:
    dm = make_datamodule(tmp_path, adapter=SignalAdapter(channels=["I", "V9"]))
    with pytest.raises(ConfigError, match=r"no usable recordings.*300 file"):
        dm.setup("fit")


def test_probe_settings_follow_the_adapter(tmp_path: Path) -> None:
    dm = make_datamodule(tmp_path)
    assert dm.probe_num_classes == 5 and dm.probe_task == "multilabel"
    unlabelled = make_datamodule(tmp_path, use_labels=False)
    assert unlabelled.probe_num_classes is None and unlabelled.probe_task is None


def test_validation_plan_is_fixed(datamodule: PretrainDataModule) -> None:
    loader = datamodule.val_dataloader()
    first = [np.asarray(b[contract.INDEX]) for b in loader]
    loader.batch_sampler.set_epoch(3)
    again = [np.asarray(b[contract.INDEX]) for b in loader]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert sum(len(x) for x in first) == datamodule.counts()["val"]["samples"]
