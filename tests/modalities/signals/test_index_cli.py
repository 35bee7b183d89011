"""``medcl index`` on a folder of real and broken records: manifest, quarantine.csv, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def medcl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medcl", *args], capture_output=True, text=True, timeout=300)


def test_index_quarantines_each_broken_file_with_its_reason(
    tmp_path: Path,
    broken_wfdb: dict[str, Path],
    ptbxl_record: Path,
    copy_record: Callable[..., Path],
    write_record: Callable[..., Path],
) -> None:
    folder = broken_wfdb["truncated"].parent
    for name in ("00002_lr", "00003_lr", "00004_lr"):
        copy_record(ptbxl_record.with_name(name), folder / "good")
    write_record(ptbxl_record, folder, "no_v6", lambda signal, names: None, drop="V6")

    result = medcl(
        "index", str(folder), "--modality", "ecg", "--out", str(tmp_path / "out"), "--channels", *LEADS
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.startswith("indexed 3 of 11 recordings (1 patients); 8 quarantined")

    quarantine = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    reasons = {Path(p).name: r for p, r in zip(quarantine["path"], quarantine["reason"], strict=True)}
    assert "header declares 1000 samples" in reasons["truncated"]
    assert "header declares 1200 samples" in reasons["long_header"]
    assert "header declares 900 samples" in reasons["short_header"]
    assert "missing channel(s) V6" in reasons["no_v6"]
    assert "V3" in reasons["nan_v3"] and "NaN" in reasons["nan_v3"]
    assert "flat" in reasons["flat_i"]
    assert reasons["notes"].startswith("not a WFDB header")
    assert ".dat" in reasons["no_dat"]
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert sorted(Path(p).name for p in trials["path"]) == ["00002_lr", "00003_lr", "00004_lr"]
    assert (tmp_path / "out" / "index.json").is_file()


def test_index_of_a_missing_folder_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = medcl("index", str(tmp_path / "nowhere"), "--modality", "ecg", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("medcl index: error:")
    assert "nowhere" in result.stderr
