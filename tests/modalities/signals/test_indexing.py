"""The indexer on real datasets and on a folder mixing good copies of real files with broken ones."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medcl
from medcl.errors import ConfigError, DataError
from modalities.signals import indexing
from modalities.signals.indexing import QUARANTINE_COLUMNS, index_signals, load_index, save_index


@pytest.fixture()
def mixed_folder(
    tmp_path: Path,
    bundled_ptbxl: Path,
    shared_data: Path,
    broken_wfdb: dict[str, Path],
    copy_record: Callable,
) -> tuple[Path, set[str], dict[str, tuple[str, str]]]:
    """``tmp_path`` holding good copies of real WFDB/EDF/CSV files and every kind of broken file.

    Returns the folder, the good trial paths, and for each broken path its expected error type and a
    phrase its reason must contain."""
    source = bundled_ptbxl / "records100/00000"
    good = {
        str(copy_record(source / "00001_lr", tmp_path / "p1")),
        str(copy_record(source / "00002_lr", tmp_path / "p1")),
        str(copy_record(source / "00003_lr", tmp_path / "p2")),
    }
    edf = shared_data / "eeg_mental_arithmetic" / "Subject00_2.edf"
    (tmp_path / "p3").mkdir()
    shutil.copyfile(edf, tmp_path / "p3" / edf.name)
    good.add(str(tmp_path / "p3" / edf.name))
    csv = shared_data / "bidmc" / "bidmc_csv" / "bidmc_01_Signals.csv.gz"
    (tmp_path / "p4").mkdir()
    shutil.copyfile(csv, tmp_path / "p4" / csv.name)
    good.add(str(tmp_path / "p4" / csv.name))

    broken_dir = broken_wfdb["truncated"].parent
    data = edf.read_bytes()
    (broken_dir / "truncated.edf").write_bytes(data[: len(data) // 3])
    (broken_dir / "garbage.edf").write_bytes(b"\x00garbage\x01" * 500)
    lines = gzip.decompress(csv.read_bytes()).decode().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[3], "n/a?", 1)
    (broken_dir / "bad_cell.csv").write_text("\n".join(lines) + "\n")
    expected = {
        str(broken_wfdb["truncated"]): ("CorruptFileError", "header declares 1000 samples (24000 bytes)"),
        str(broken_wfdb["long_header"]): ("CorruptFileError", "header declares 1200 samples (28800 bytes)"),
        str(broken_wfdb["short_header"]): ("CorruptFileError", "too small for its data"),
        str(broken_wfdb["no_dat"]): ("CorruptFileError", "data file named by no_dat.hea is missing"),
        str(broken_wfdb["text_hea"]): ("UnsupportedFormatError", "not a WFDB header"),
        str(broken_wfdb["all_nan"]): ("InvalidSignalError", "channel V3 is all NaN"),
        str(broken_wfdb["flat"]): ("InvalidSignalError", "channel I is flat (peak-to-peak 0 mV)"),
        str(broken_dir / "truncated.edf"): ("CorruptFileError", "header declares 62 data records"),
        str(broken_dir / "garbage.edf"): ("UnsupportedFormatError", "not an EDF/BDF file"),
        str(broken_dir / "bad_cell.csv"): ("CorruptFileError", "column 'V' holds non-numeric values"),
    }
    return tmp_path, good, expected


def test_mixed_folder_quarantines_every_bad_file_and_keeps_every_good_one(
    mixed_folder: tuple[Path, set[str], dict[str, tuple[str, str]]],
) -> None:
    folder, good, expected = mixed_folder
    calls: list[tuple[int, int]] = []
    result = index_signals("folder", folder, progress=lambda done, total: calls.append((done, total)))
    assert set(result.manifest.trials["path"]) == good
    quarantine = result.quarantine
    assert tuple(quarantine.columns) == QUARANTINE_COLUMNS
    assert set(quarantine["path"]) == set(expected)
    for path, reason, error in quarantine.itertuples(index=False):
        want_error, phrase = expected[path]
        assert error == want_error, path
        assert phrase in reason, (path, reason)
        assert "Traceback" not in reason
    # Progress is reported once per listed (readable-header) trial.
    n_read = len(good) + 3  # + the NaN, flat and bad-cell files, whose headers are fine
    assert calls == [(i, n_read) for i in range(1, n_read + 1)]
    assert result.summary() == (
        f"indexed {len(good)} of {len(good) + len(expected)} recordings (4 patients); "
        f"{len(expected)} quarantined → see quarantine.csv"
    )
    # The manifest's missing table lists the same files.
    assert set(result.manifest.missing["path"]) == set(expected)


def test_broken_wfdb_copies_without_shared_data(
    tmp_path: Path, bundled_ptbxl: Path, broken_wfdb: dict[str, Path], copy_record: Callable
) -> None:
    """The same check on the bundled data alone, so it also runs where ../shared/data is absent."""
    good = {str(copy_record(bundled_ptbxl / "records100/00000/00005_lr", tmp_path / "ok"))}
    result = index_signals("folder", tmp_path)
    assert set(result.manifest.trials["path"]) == good
    assert set(result.quarantine["path"]) == {str(p) for p in broken_wfdb.values()}
    reasons = dict(zip(result.quarantine["path"], result.quarantine["reason"], strict=True))
    assert "channel V3 is all NaN" in reasons[str(broken_wfdb["all_nan"])]
    assert "but the .dat holds 12000 bytes" in reasons[str(broken_wfdb["truncated"])]


def test_allow_flat_keeps_the_flat_record(
    mixed_folder: tuple[Path, set[str], dict[str, tuple[str, str]]], broken_wfdb: dict[str, Path]
) -> None:
    folder, _, _ = mixed_folder
    result = index_signals("folder", folder, allow_flat=True)
    assert str(broken_wfdb["flat"]) in set(result.manifest.trials["path"])
    assert str(broken_wfdb["flat"]) not in set(result.quarantine["path"])


def test_missing_requested_channel(
    tmp_path: Path, ptbxl_record: Path, copy_record: Callable, write_record: Callable
) -> None:
    copy_record(ptbxl_record, tmp_path / "a")
    no_v1 = write_record(ptbxl_record, tmp_path / "b", "no_v1", lambda signal, names: None, drop="V1")
    result = index_signals("folder", tmp_path, channels=["I", "V1"])
    assert result.manifest.trials["trial_id"].tolist() == ["a/00001_lr"]
    assert result.quarantine["path"].tolist() == [str(no_v1)]
    assert result.quarantine["error"].tolist() == ["MissingChannelError"]
    assert result.quarantine["reason"].iloc[0].startswith("missing channel(s) V1; the record has I, II, III")
    assert index_signals("folder", tmp_path, channels=["I", "V2"]).quarantine.empty


def test_unexpected_errors_are_quarantined_without_traceback(
    tmp_path: Path, ptbxl_record: Path, copy_record: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_record(ptbxl_record, tmp_path / "a")
    bad = copy_record(ptbxl_record, tmp_path / "b")
    real_read = indexing.read_signal

    def flaky(path: str, **kwargs: object) -> object:
        if str(path) == str(bad):
            raise RuntimeError("disk on fire\nsecond line")
        return real_read(path, **kwargs)

    monkeypatch.setattr(indexing, "read_signal", flaky)
    result = index_signals("folder", tmp_path)
    assert result.quarantine.values.tolist() == [
        [str(bad), "unexpected error (RuntimeError): disk on fire", "RuntimeError"]
    ]
    assert len(result.manifest.trials) == 1


def test_bundled_ptbxl_index_save_and_load(tmp_path: Path) -> None:
    result = index_signals("ptbxl", "bundled:ptbxl", channels=["I", "II", "V1"])
    assert result.summary() == "indexed 300 of 300 recordings (275 patients); none quarantined"
    out = save_index(result, tmp_path / "index")
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "quarantine.csv", "trials.csv"]
    assert (out / "quarantine.csv").read_text().strip() == "path,reason,error"
    info = json.loads((out / "index.json").read_text())
    assert info["dataset"] == "ptbxl" and info["root"] == "bundled:ptbxl"
    assert info["medcl_version"] == medcl.__version__
    assert info["channels"] == ["I", "II", "V1"]
    assert info["counts"] == {
        "listed": 300,
        "indexed": 300,
        "quarantined": 0,
        "patients": 275,
        "events": None,
    }
    loaded = load_index(out)
    pd.testing.assert_frame_equal(loaded.trials, result.manifest.trials, check_dtype=False)
    assert loaded.trials["patient_id"].iloc[0] == "15709"
    assert loaded.trials.set_index("trial_id").loc["20", "labels"] == ""
    assert loaded.events is None and loaded.missing.empty


def test_ptbxl_shared_summary(shared_data: Path) -> None:
    result = index_signals("ptbxl", shared_data / "ptbxl")
    assert result.summary() == "indexed 500 of 500 recordings (466 patients); none quarantined"


def test_mitdb_index_keeps_events_and_quarantines_unlisted_records(shared_data: Path, tmp_path: Path) -> None:
    result = index_signals("mitdb", shared_data / "mitdb")
    assert (
        result.summary() == "indexed 26 of 48 recordings (26 patients); 22 quarantined → see quarantine.csv"
    )
    assert set(result.quarantine["error"]) == {"NotOnDisk"}
    save_index(result, tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.events is not None
    pd.testing.assert_frame_equal(loaded.events, result.manifest.events, check_dtype=False)
    assert loaded.events["sample"].dtype == np.int64
    assert loaded.trials["trial_id"].tolist()[:3] == ["101", "102", "104"]
    assert len(loaded.missing) == 22
    ds1 = index_signals("mitdb", shared_data / "mitdb", records=("101", "106"))
    assert set(ds1.manifest.events["trial_id"]) == {"101", "106"}


def test_builders_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ptbxl_database\.csv"):
        index_signals("ptbxl", tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        index_signals("mitdb", tmp_path / "absent")
    with pytest.raises(ConfigError, match="unknown signal dataset"):
        index_signals("ptb", tmp_path)
    with pytest.raises(ConfigError, match="max_nan_fraction"):
        index_signals("ptbxl", "bundled:ptbxl", max_nan_fraction=2.0)
    with pytest.raises(DataError, match="no saved index here"):
        load_index(tmp_path)
