"""Wearable manifests: BIDMC's participants (MIMIC-II subjects) and any per-participant folder or table."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medcl.errors import ConfigError, DataError
from modalities.wearables.manifests import (
    bidmc_manifest,
    build_wearable_manifest,
    detect_wearable_layout,
    participant_manifest,
    read_bidmc_fix,
)

pytestmark = pytest.mark.shared_data
HAS_PARQUET = any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def test_bidmc_participants_are_mimic_subjects(bidmc: Path) -> None:
    manifest = bidmc_manifest(bidmc.parent)  # the data set folder; its bidmc_csv/ is found
    trials = manifest.trials.set_index("trial_id")
    assert len(trials) == 40 and manifest.n_patients == 33 and len(manifest.missing) == 0
    by_participant = trials.groupby("patient_id").size()
    assert by_participant["s03386"] == 4 and by_participant["s11342"] == 4 and by_participant["s25323"] == 2
    assert (by_participant == 1).sum() == 30
    assert list(trials.loc[["bidmc_06", "bidmc_07", "bidmc_08", "bidmc_09"], "patient_id"].unique()) == [
        "s03386"
    ]
    assert trials.loc["bidmc_01", "patient_id"] == "s01182"
    assert trials.loc["bidmc_01", "fs"] == 125.0 and trials.loc["bidmc_01", "n_samples"] == 60001
    assert "PLETH" in trials.loc["bidmc_01", "channel_names"].split("|")
    # _Fix.txt values: "Age: 90+" -> 90, "Age: NaN" / "Gender: ?" -> unknown, ICU type lower case
    assert trials.loc["bidmc_28", "age"] == 90.0 and math.isnan(trials.loc["bidmc_18", "age"])
    assert trials.loc["bidmc_18", "sex"] == "" and trials.loc["bidmc_01", "sex"] == "M"
    assert trials.loc["bidmc_15", "location"] == "ccu" and trials.loc["bidmc_01", "location"] == "micu"
    assert bidmc_manifest(bidmc).trials.equals(manifest.trials)  # bidmc_csv/ itself works too


def test_fix_file_parsing(bidmc: Path, tmp_path: Path) -> None:
    fix = read_bidmc_fix(bidmc / "bidmc_32_Fix.txt")
    assert fix == {
        "participant": "s17756",
        "mimic_segment": "2946-04-06-17-40",
        "age": 90.0,
        "sex": "F",
        "location": "micu",
    }
    bad = tmp_path / "bidmc_99_Fix.txt"
    bad.write_text("just some notes\n")
    with pytest.raises(DataError, match=r"not a BIDMC _Fix\.txt"):
        read_bidmc_fix(bad)


def test_recording_without_fix_goes_to_missing(bidmc: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bidmc_csv"
    folder.mkdir()
    for number in ("01", "02"):
        shutil.copyfile(bidmc / f"bidmc_{number}_Signals.csv.gz", folder / f"bidmc_{number}_Signals.csv.gz")
    shutil.copyfile(bidmc / "bidmc_01_Fix.txt", folder / "bidmc_01_Fix.txt")
    shutil.copyfile(bidmc / "bidmc_03_Fix.txt", folder / "bidmc_03_Fix.txt")  # signals absent
    manifest = bidmc_manifest(tmp_path)
    assert manifest.trials["trial_id"].tolist() == ["bidmc_01"]
    reasons = dict(
        zip(manifest.missing["path"].map(lambda p: Path(p).name), manifest.missing["reason"], strict=True)
    )
    assert "participant unknown" in reasons["bidmc_02_Signals.csv.gz"]
    assert "signals are not" in reasons["bidmc_03_Signals.csv.gz"]


def test_participant_folder_scan(bidmc: Path, tmp_path: Path) -> None:
    root = tmp_path / "study"
    for participant, sessions in {"p01": ["day1/watch", "day2/watch"], "p02": ["visit"]}.items():
        for k, session in enumerate(sessions):
            target = root / participant / f"{session}.csv.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bidmc / f"bidmc_0{k + 1}_Signals.csv.gz", target)
    (root / "p02" / "wrist.parquet").write_bytes(b"PAR1" + b"\0" * 8 + b"PAR1")
    (root / ".hidden").mkdir()
    shutil.copyfile(bidmc / "bidmc_04_Signals.csv.gz", root / ".hidden" / "x.csv.gz")
    manifest = participant_manifest(root)
    trials = manifest.trials.sort_values("trial_id")
    assert trials["trial_id"].tolist() == ["p01/day1/watch", "p01/day2/watch", "p02/visit"]
    assert trials["patient_id"].tolist() == ["p01", "p01", "p02"]
    assert (trials["fs"] == 125.0).all()
    if not HAS_PARQUET:  # the Parquet file is listed as unusable, with the package to install
        assert len(manifest.missing) == 1 and "pyarrow" in manifest.missing["reason"].iloc[0]
    assert detect_wearable_layout(root) == "participants" and detect_wearable_layout(bidmc.parent) == "bidmc"


def test_participant_table(bidmc: Path, tmp_path: Path) -> None:
    root = tmp_path / "study"
    root.mkdir()
    for number in ("05", "06"):
        shutil.copyfile(bidmc / f"bidmc_{number}_Signals.csv.gz", root / f"rec{number}.csv.gz")
    pd.DataFrame(
        {
            "path": ["rec05.csv.gz", "rec06.csv.gz", "absent.csv"],
            "participant_id": ["a", "b", "c"],
            "session_id": ["a-1", "b-1", "c-1"],
            "label": ["F", "M", "F"],
            "site": ["x", "y", "z"],
        }
    ).to_csv(root / "participants.csv", index=False)
    manifest = build_wearable_manifest("participants", root, table="participants.csv")
    assert manifest.trials[["patient_id", "trial_id", "label", "site"]].values.tolist() == [
        ["a", "a-1", "F", "x"],
        ["b", "b-1", "M", "y"],
    ]
    assert "not on disk" in manifest.missing["reason"].iloc[0]
    with pytest.raises(ConfigError, match="takes no argument"):
        build_wearable_manifest("bidmc", root, table="participants.csv")
    with pytest.raises(ConfigError, match="unknown wearable dataset"):
        build_wearable_manifest("fitbit", root)
    with pytest.raises(ConfigError, match="is not a folder"):
        bidmc_manifest(tmp_path / "nowhere")
