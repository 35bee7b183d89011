"""Patient-disjoint splits: random, by fold, from a file; leaks are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcl.data.splits import (
    SplitConfig,
    assign_splits,
    load_splits,
    save_splits,
    split_rows,
    verify_disjoint,
)
from medcl.errors import ConfigError, SplitLeakError


def manifest(n_patients: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "MI" if p % 4 == 0 else "NORM"
        for t in range(int(rng.integers(1, 4))):
            rows.append({"patient_id": f"p{p}", "trial_id": f"p{p}-t{t}", "label": label, "fold": p % 10 + 1})
    return pd.DataFrame(rows)


def test_random_split_is_by_patient_and_deterministic() -> None:
    trials = manifest()
    config = SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=3)
    a = assign_splits(trials, config)
    assert a.equals(assign_splits(trials, config))
    assert not a.equals(assign_splits(trials, SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=4)))
    assert set(a.index) == set(trials["patient_id"])
    assert (a == "test").sum() == 10 and (a == "val").sum() == 20 and (a == "train").sum() == 70
    per_split = {name: set(split_rows(trials, a, name)["patient_id"]) for name in ("train", "val", "test")}
    assert not per_split["train"] & per_split["val"] and not per_split["train"] & per_split["test"]
    assert sum(len(split_rows(trials, a, name)) for name in ("train", "val", "test")) == len(trials)


def test_stratified_split_keeps_class_balance() -> None:
    trials = manifest(n_patients=200)
    a = assign_splits(
        trials, SplitConfig(val_fraction=0.2, test_fraction=0.2, stratify_column="label", seed=0)
    )
    label = trials.drop_duplicates("patient_id").set_index("patient_id")["label"]
    for split in ("train", "val", "test"):
        share = (label[a[a == split].index] == "MI").mean()
        assert share == pytest.approx(0.25, abs=0.01)


def test_fold_split_uses_folds_and_refuses_patient_in_two_folds() -> None:
    trials = manifest()
    a = assign_splits(trials, SplitConfig(method="fold", val_folds=(9,), test_folds=(10,)))
    folds = trials.drop_duplicates("patient_id").set_index("patient_id")["fold"]
    assert (a[folds[folds == 10].index] == "test").all()
    assert (a[folds[folds == 9].index] == "val").all()
    assert (a[folds[folds <= 8].index] == "train").all()
    broken = pd.concat([trials, trials.iloc[[0]].assign(fold=10, trial_id="extra")], ignore_index=True)
    broken.loc[0, "fold"] = 1
    with pytest.raises(SplitLeakError, match="more than one split"):
        assign_splits(broken, SplitConfig(method="fold"))


def test_fold_split_on_real_ptbxl_manifest(bundled_ptbxl: Path) -> None:
    table = pd.read_csv(bundled_ptbxl / "ptbxl_database.csv")
    trials = table.rename(columns={"strat_fold": "fold"}).assign(
        patient_id=lambda t: t["patient_id"].astype(int)
    )
    a = assign_splits(trials, SplitConfig(method="fold"))
    rows = trials.assign(split=trials["patient_id"].astype(str).map(a))
    verify_disjoint(rows)
    assert set(a.unique()) == {"train", "val", "test"}


def test_split_file_round_trip_and_json(tmp_path: Path) -> None:
    trials = manifest()
    a = assign_splits(trials, SplitConfig(seed=1))
    save_splits(a, tmp_path / "splits.csv")
    assert load_splits(tmp_path / "splits.csv").sort_index().equals(a.sort_index())
    from_file = assign_splits(trials, SplitConfig(method="file", file=str(tmp_path / "splits.csv")))
    assert from_file.sort_index().equals(a.sort_index())
    (tmp_path / "s.json").write_text(json.dumps({"train": ["p1", "p2"], "test": ["p3"]}))
    loaded = load_splits(tmp_path / "s.json")
    assert loaded.to_dict() == {"p1": "train", "p2": "train", "p3": "test"}


def test_unassigned_patients_can_join_training(tmp_path: Path) -> None:
    trials = manifest(n_patients=10)
    (tmp_path / "s.json").write_text(json.dumps({"train": ["p1"], "val": ["p2"], "test": ["p3"]}))
    dropped = assign_splits(trials, SplitConfig(method="file", file=str(tmp_path / "s.json")))
    assert dropped.to_dict() == {"p1": "train", "p2": "val", "p3": "test"}
    kept = assign_splits(
        trials, SplitConfig(method="file", file=str(tmp_path / "s.json"), unassigned="train")
    )
    assert len(kept) == 10 and kept[["p2", "p3"]].tolist() == ["val", "test"]
    assert (kept.drop(["p2", "p3"]) == "train").all()
    with pytest.raises(ConfigError):
        SplitConfig(method="file", file="x.csv", unassigned="test")


def test_split_file_with_a_leaking_patient_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("patient_id,split\np1,train\np2,val\np1,test\n")
    with pytest.raises(SplitLeakError, match=r"1 patient\(s\) appear") as raised:
        load_splits(tmp_path / "bad.csv")
    assert raised.value.patient_ids == ["p1"]  # named in the message only with MEDCL_LOG_IDS=1
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["p1"], "val": ["p1"]}))
    with pytest.raises(SplitLeakError):
        load_splits(tmp_path / "bad.json")


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError):
        SplitConfig(method="by-record")
    with pytest.raises(ConfigError):
        SplitConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ConfigError):
        SplitConfig(method="file")
    with pytest.raises(ConfigError):
        SplitConfig(val_folds=(9,), test_folds=(9,))
    with pytest.raises(ConfigError, match="unknown split"):
        verify_disjoint(pd.DataFrame({"patient_id": ["a"], "split": ["holdout"]}))
