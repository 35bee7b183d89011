"""Indexing the real BIDMC PPG: counts, the saved index, ``medcl index --modality ppg``, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medcl.cli import main
from modalities.wearables.indexing import index_wearables, load_index, save_index

pytestmark = pytest.mark.shared_data

# Measured on subjects 01-40 with the default checks (60 s segments; flat >= 1 s; > 2 % clipped).
REJECTED = {
    ("bidmc_05", 2): "flat",
    ("bidmc_32", 6): "flat",
    ("bidmc_14", 1): "clipped",
    ("bidmc_14", 3): "clipped",
    ("bidmc_14", 4): "clipped",
    ("bidmc_14", 5): "clipped",
    ("bidmc_14", 6): "clipped",
    ("bidmc_14", 7): "clipped",
    ("bidmc_23", 1): "clipped",
    ("bidmc_27", 7): "clipped",
    ("bidmc_30", 1): "clipped",
    ("bidmc_40", 1): "clipped",
    ("bidmc_40", 3): "clipped",
    ("bidmc_40", 7): "clipped",
}


@pytest.fixture(scope="module")
def indexed(bidmc: Path):
    return index_wearables("auto", bidmc.parent)


def test_real_bidmc_counts(indexed) -> None:
    assert indexed.dataset == "bidmc" and indexed.settings["channels"] == ["PLETH"]
    counts = indexed.counts()
    assert counts["indexed"] == 40 and counts["quarantined"] == 0 and counts["participants"] == 33
    assert counts["segments"] == 320 and counts["segments_kept"] == 306
    assert counts["rejected_by_problem"] == {"nan": 0, "flat": 2, "clipped": 12, "motion": 0}
    rejected = indexed.segments[~indexed.segments["kept"]]
    assert (
        dict(
            zip(
                zip(rejected["trial_id"], rejected["sample_index"], strict=True),
                rejected["problems"],
                strict=True,
            )
        )
        == REJECTED
    )
    assert indexed.summary().startswith(
        "indexed 40 of 40 recordings (33 participants); none quarantined; segments of 60 s: 306 of 320 kept, "
        "rejected 2 flat, 12 clipped (motion not checked: no accelerometer channel)"
    )


def test_saved_index_round_trip(indexed, tmp_path: Path) -> None:
    save_index(indexed, tmp_path)
    manifest, kept, quarantine = load_index(tmp_path)
    pd.testing.assert_frame_equal(manifest.trials, indexed.manifest.trials, check_dtype=False)
    assert len(kept) == 306 and kept["kept"].all()
    assert (quarantine["error"] == "LowQualitySegment").sum() == 14
    info = json.loads((tmp_path / "index.json").read_text())
    assert info["counts"]["segments_kept"] == 306 and info["settings"]["quality"]["max_flat_s"] == 1.0


def test_cli_index_ppg(bidmc: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    assert (
        main(["index", str(bidmc.parent), "--modality", "ppg", "--dataset", "bidmc", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "indexed 40 of 40 recordings (33 participants)" in printed and "306 of 320 kept" in printed
    assert {p.name for p in out.iterdir()} == {"trials.csv", "segments.csv", "quarantine.csv", "index.json"}


def test_a_bad_recording_is_quarantined_not_fatal(bidmc: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "study"
    for participant, number in (("p01", "01"), ("p02", "02")):
        (root / participant).mkdir(parents=True)
        shutil.copyfile(bidmc / f"bidmc_{number}_Signals.csv.gz", root / participant / "rec.csv.gz")
    table = pd.read_csv(bidmc / "bidmc_03_Signals.csv.gz").drop(columns=[" PLETH"])
    (root / "p03").mkdir()
    table.to_csv(root / "p03" / "rec.csv.gz", index=False)
    (root / "p04").mkdir()
    (root / "p04" / "rec.csv").write_text("Time [s], PLETH\n0,0.5\n0.008,oops\n")
    result = index_wearables("participants", root, channels=["PLETH"])
    assert sorted(result.manifest.trials["patient_id"]) == ["p01", "p02"]
    errors = dict(
        zip(
            result.quarantine["path"].map(lambda p: Path(p).parent.name),
            result.quarantine["error"],
            strict=True,
        )
    )
    assert errors == {"p03": "MissingChannelError", "p04": "CorruptFileError"}
    assert (
        main(
            [
                "index",
                str(root),
                "--modality",
                "wearable",
                "--channels",
                "PLETH",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert "indexed 2 of 4 recordings (2 participants); 2 quarantined" in capsys.readouterr().out
