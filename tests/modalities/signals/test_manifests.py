"""Manifest builders on the real datasets (bundled and shared PTB-XL, MIT-BIH, eegmat, BIDMC) and on
folders made of copies of real files."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from medcl.errors import ConfigError, DataError
from modalities.signals.manifests import (
    EVENT_COLUMNS,
    MITDB_DS1,
    REQUIRED_COLUMNS,
    Manifest,
    build_manifest,
    eegmat_manifest,
    folder_manifest,
    mitdb_manifest,
    ptbxl_manifest,
)


def check_required_columns(manifest: Manifest) -> None:
    trials = manifest.trials
    assert tuple(trials.columns[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    assert trials["trial_id"].is_unique
    for column in ("path", "patient_id", "trial_id", "format", "channel_names"):
        assert all(isinstance(v, str) for v in trials[column]), column
    assert trials["fs"].dtype == np.float64 and trials["n_samples"].dtype == np.int64
    assert all(Path(p).is_absolute() for p in trials["path"])
    assert list(manifest.missing.columns[:2]) == ["path", "reason"]


# ---------------------------------------------------------------------------------------------- PTB-XL


def test_ptbxl_bundled(bundled_ptbxl: Path) -> None:
    manifest = build_manifest("ptbxl", "bundled:ptbxl")
    check_required_columns(manifest)
    trials = manifest.trials.set_index("trial_id")
    assert len(trials) == 300 and manifest.missing.empty and manifest.events is None
    assert trials["patient_id"].nunique() == 275
    assert (trials["fs"] == 100.0).all() and (trials["n_samples"] == 1000).all()
    assert (trials["format"] == "wfdb").all()
    assert trials.loc["1", "channel_names"] == "I|II|III|AVR|AVL|AVF|V1|V2|V3|V4|V5|V6"
    assert trials.loc["1", "path"] == str(bundled_ptbxl.resolve() / "records100/00000/00001_lr")
    # Read by hand from ptbxl_database.csv: patient_id 15709.0 → "15709", strat_fold, age, sex.
    assert trials.loc["1", ["patient_id", "fold", "age", "sex"]].tolist() == ["15709", 3, 56.0, 1]
    assert trials.loc["2", "patient_id"] == "13243"
    assert trials.loc["1", "labels"] == "NORM"
    assert trials.loc["20", "labels"] == ""
    assert trials.loc["45", "labels"] == "CD|HYP"
    assert trials.loc["263", "labels"] == "MI|STTC"
    assert set(trials["fold"]) == set(range(1, 11))
    # Patient 13619 has several ECGs (ecg_id 20, 26, 28, 39, ...).
    assert {"20", "26", "28", "39"} <= set(trials.index[trials["patient_id"] == "13619"])


def test_ptbxl_shared(shared_data: Path) -> None:
    manifest = ptbxl_manifest(shared_data / "ptbxl")
    check_required_columns(manifest)
    assert len(manifest.trials) == 500 and manifest.n_patients == 466 and manifest.missing.empty
    labels = Counter(c for text in manifest.trials["labels"] for c in text.split("|") if c)
    assert labels == {"NORM": 297, "STTC": 96, "CD": 78, "MI": 73, "HYP": 40}


def test_ptbxl_rows_without_files_go_to_missing(
    bundled_ptbxl: Path, tmp_path: Path, copy_record: Callable
) -> None:
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copyfile(bundled_ptbxl / name, tmp_path / name)
    for ecg_id in (1, 2, 3):
        copy_record(bundled_ptbxl / f"records100/00000/{ecg_id:05d}_lr", tmp_path / "records100/00000")
    manifest = ptbxl_manifest(tmp_path)
    assert manifest.trials["trial_id"].tolist() == ["1", "2", "3"]
    assert len(manifest.missing) == 297
    first = manifest.missing.iloc[0]
    assert first["path"] == str(tmp_path.resolve() / "records100/00000/00004_lr")
    assert first["reason"] == "listed in ptbxl_database.csv row ecg_id 4 but 00004_lr.hea is not on disk"


def test_ptbxl_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ptbxl_database\.csv: PTB-XL database table not found"):
        ptbxl_manifest(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        ptbxl_manifest(tmp_path / "absent")
    with pytest.raises(ConfigError, match="100 or 500"):
        ptbxl_manifest("bundled:ptbxl", sampling_rate=250)


# --------------------------------------------------------------------------------------------- MIT-BIH


def test_mitdb_shared(shared_data: Path) -> None:
    folder = shared_data / "mitdb"
    manifest = mitdb_manifest(folder)
    check_required_columns(manifest)
    trials = manifest.trials.set_index("trial_id")
    assert len(trials) == 26
    # 201 and 202 are one person, but 202 (DS2) is not in the shared copy: 26 records, 26 people here.
    assert manifest.n_patients == 26 and "202" not in trials.index
    assert (trials["fs"] == 360.0).all() and (trials["n_samples"] == 650000).all()
    assert trials.loc["101", ["channel_names", "age", "sex"]].tolist() == ["MLII|V1", 75.0, "F"]
    # RECORDS lists all 48: the 22 DS2 records are missing.
    assert len(manifest.missing) == 22
    assert "listed in RECORDS but 100.hea is not on disk" in manifest.missing["reason"].tolist()

    events = manifest.events
    assert events is not None and tuple(events.columns) == EVENT_COLUMNS
    beats_101 = events[events["trial_id"] == "101"]
    # PhysioNet's table for record 101: 1860 normal, 3 APC, 2 unclassifiable beats.
    assert beats_101["aami_class"].value_counts().to_dict() == {"N": 1860, "S": 3, "Q": 2}
    # Counted independently from the annotation file.
    annotation = wfdb.rdann(str(folder / "101"), "atr")
    groups = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
    independent = {k: sum(s in v for s in annotation.symbol) for k, v in groups.items()}
    assert beats_101["aami_class"].value_counts().reindex(list(groups), fill_value=0).to_dict() == independent
    kept = [i for i, s in enumerate(annotation.symbol) if any(s in v for v in groups.values())]
    np.testing.assert_array_equal(beats_101["sample"].to_numpy(), annotation.sample[kept])
    assert trials.loc["101", "n_beats"] == 1865
    assert set(events["aami_class"]) <= {"N", "S", "V", "F", "Q"}


def test_mitdb_ds1_has_no_missing_record(shared_data: Path) -> None:
    manifest = mitdb_manifest(shared_data / "mitdb", records=MITDB_DS1)
    assert manifest.trials["trial_id"].tolist() == list(MITDB_DS1) and manifest.missing.empty


def test_mitdb_201_and_202_are_one_patient(shared_data: Path, tmp_path: Path, copy_record: Callable) -> None:
    for name in ("201", "202"):
        copy_record(shared_data / "mitdb" / "201", tmp_path, name)
        shutil.copyfile(shared_data / "mitdb" / "201.atr", tmp_path / f"{name}.atr")
    manifest = mitdb_manifest(tmp_path)
    assert manifest.trials["patient_id"].tolist() == ["201", "201"]
    assert manifest.trials["trial_id"].tolist() == ["201", "202"]
    assert manifest.n_patients == 1


def test_mitdb_without_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MIT-BIH records"):
        mitdb_manifest(tmp_path)


# --------------------------------------------------------------------------------------------- eegmat


def test_eegmat_shared(shared_data: Path) -> None:
    manifest = eegmat_manifest(shared_data / "eeg_mental_arithmetic")
    check_required_columns(manifest)
    trials = manifest.trials.set_index("trial_id")
    assert len(trials) == 16 and manifest.n_patients == 8 and manifest.missing.empty
    assert trials["label"].value_counts().to_dict() == {"rest": 8, "task": 8}
    assert trials.loc["Subject00_1", ["patient_id", "label", "n_samples"]].tolist() == [
        "Subject00",
        "rest",
        91000,
    ]
    assert trials.loc["Subject00_2", ["label", "n_samples"]].tolist() == ["task", 31000]
    assert (trials["fs"] == 500.0).all() and (trials["format"] == "edf").all()
    assert trials.loc["Subject00_1", "channel_names"].split("|")[:2] == ["EEG Fp1", "EEG Fp2"]
    # subject-info.csv: Subject00,21,F,2011,9.7,0 and Subject01,18,F,2011,29.35,1.
    assert trials.loc["Subject00_2", ["age", "gender", "count_quality"]].tolist() == [21, "F", 0]
    assert trials.loc["Subject01_1", ["age", "number_of_subtractions", "count_quality"]].tolist() == [
        18,
        29.35,
        1,
    ]


def test_eegmat_partner_recording_missing(shared_data: Path, tmp_path: Path) -> None:
    shutil.copyfile(shared_data / "eeg_mental_arithmetic" / "Subject00_2.edf", tmp_path / "Subject00_2.edf")
    manifest = eegmat_manifest(tmp_path)
    assert manifest.trials["trial_id"].tolist() == ["Subject00_2"]
    assert manifest.missing["path"].tolist() == [str(tmp_path.resolve() / "Subject00_1.edf")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no eegmat recordings"):
        eegmat_manifest(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ any folder


def test_folder_scan(bundled_ptbxl: Path, tmp_path: Path, copy_record: Callable) -> None:
    source = bundled_ptbxl / "records100/00000"
    copy_record(source / "00001_lr", tmp_path / "patient_a")
    copy_record(source / "00002_lr", tmp_path / "patient_a")
    copy_record(source / "00003_lr", tmp_path / "site" / "patient_b")
    copy_record(source / "00004_lr", tmp_path)
    (tmp_path / "patient_a" / "readme.txt").write_text("not a signal")
    (tmp_path / "notes.hea").write_text("free text, not WFDB\n")
    manifest = folder_manifest(tmp_path)
    check_required_columns(manifest)
    got = dict(zip(manifest.trials["trial_id"], manifest.trials["patient_id"], strict=True))
    assert got == {
        "00004_lr": "00004_lr",
        "patient_a/00001_lr": "patient_a",
        "patient_a/00002_lr": "patient_a",
        "site/patient_b/00003_lr": "site/patient_b",
    }
    # WFDB entries are named by record path (without .hea), as in trials.
    assert manifest.missing[["path", "error"]].values.tolist() == [
        [str(tmp_path.resolve() / "notes"), "UnsupportedFormatError"]
    ]
    assert "not a WFDB header" in manifest.missing["reason"].iloc[0]
    only_a = folder_manifest(tmp_path, pattern="patient_a/*.hea")
    assert only_a.trials["trial_id"].tolist() == ["patient_a/00001_lr", "patient_a/00002_lr"]
    with pytest.raises(DataError, match=r"no signal files .* matching '\*\.edf'"):
        folder_manifest(tmp_path, pattern="*.edf")


def test_folder_scan_bidmc(shared_data: Path) -> None:
    manifest = folder_manifest(shared_data / "bidmc" / "bidmc_csv", pattern="*_Signals.csv.gz")
    assert len(manifest.trials) == 40 and manifest.missing.empty
    assert (manifest.trials["fs"] == 125.0).all() and (manifest.trials["format"] == "csv").all()
    assert all("II" in names.split("|") for names in manifest.trials["channel_names"])


def test_folder_table(bundled_ptbxl: Path, tmp_path: Path, copy_record: Callable) -> None:
    source = bundled_ptbxl / "records100/00000"
    copy_record(source / "00001_lr", tmp_path / "recs")
    copy_record(source / "00002_lr", tmp_path / "recs")
    (tmp_path / "recs" / "resp.csv").write_text(
        "resp\n" + "".join(f"{np.sin(i / 10):.4f}\n" for i in range(200))
    )
    table = tmp_path / "table.csv"
    table.write_text(
        "path,patient_id,trial_id,label,fs,age\n"
        "recs/00001_lr.hea,0042,ecg-a,afib,,63\n"
        "recs/00002_lr,0042,,,,\n"
        "recs/resp.csv,0043,resp-1,normal,25,70\n"
        "recs/absent.hea,0044,gone,normal,,\n"
    )
    manifest = folder_manifest(tmp_path, table="table.csv")
    check_required_columns(manifest)
    trials = manifest.trials.set_index("trial_id")
    assert trials.index.tolist() == ["ecg-a", "recs/00002_lr", "resp-1"]
    assert trials["patient_id"].tolist() == ["0042", "0042", "0043"]
    assert trials["label"].tolist() == ["afib", "", "normal"]
    assert trials.loc["resp-1", ["format", "fs", "n_samples", "channel_names"]].tolist() == [
        "csv",
        25.0,
        200,
        "resp",
    ]
    assert trials.loc["ecg-a", "age"] == 63
    assert trials.loc["ecg-a", "path"] == str(tmp_path.resolve() / "recs" / "00001_lr")
    assert manifest.missing["reason"].tolist() == ["listed on line 5 of table.csv but not on disk"]

    table.write_text("path,patient_id,trial_id\nrecs/00001_lr,1,x\nrecs/00002_lr,2,x\n")
    with pytest.raises(DataError, match="trial_id\\(s\\) x appear on more than one line"):
        folder_manifest(tmp_path, table=table)
    table.write_text("path,subject\nrecs/00001_lr,1\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) patient_id"):
        folder_manifest(tmp_path, table=table)
    with pytest.raises(DataError, match="manifest table not found"):
        folder_manifest(tmp_path, table="nope.csv")


def test_build_manifest_dispatch(bundled_ptbxl: Path) -> None:
    with pytest.raises(ConfigError, match="unknown signal dataset 'ptb'"):
        build_manifest("ptb", bundled_ptbxl)
    with pytest.raises(ConfigError, match="takes no argument\\(s\\) pattern"):
        build_manifest("ptbxl", bundled_ptbxl, pattern="*")
    assert len(build_manifest("ptbxl", str(bundled_ptbxl), sampling_rate=100).trials) == 300


def test_manifest_rejects_repeated_trial_ids() -> None:
    row = {"path": "/x", "patient_id": "p", "trial_id": "t", "format": "wfdb", "fs": 1.0, "n_samples": 1}
    with pytest.raises(ConfigError, match="required column"):
        Manifest(trials=pd.DataFrame([row]))
    row["channel_names"] = "I"
    with pytest.raises(ConfigError, match="more than once"):
        Manifest(trials=pd.DataFrame([row, row]))
