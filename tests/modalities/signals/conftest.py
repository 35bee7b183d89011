"""Fixtures for the signal reader/manifest/indexer tests: real records, and broken copies of them.

Every broken file is made from a copy of a real record in ``tmp_path`` (never by touching the real
data): truncated data, a header that lies about the length, a text file named ``.hea``, channels set
to NaN or to a constant with ``wfdb.wrsamp``, truncated or garbage EDF.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import wfdb

PTBXL_RECORD = "records100/00000/00001_lr"


@pytest.fixture(scope="session")
def ptbxl_record(bundled_ptbxl: Path) -> Path:
    """Record 1 of the bundled PTB-XL copy (path without extension)."""
    return bundled_ptbxl / PTBXL_RECORD


def copy_wfdb_record(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    """Copy a WFDB record (``.hea`` + every ``.dat`` it names) into ``dst_dir``, optionally renamed
    (the record line and the file names in the header follow the new name). Returns the new record path."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    name = name or src.name
    header = (src.parent / f"{src.name}.hea").read_text()
    for dat in sorted(src.parent.glob(f"{src.name}.dat")):
        shutil.copyfile(dat, dst_dir / f"{name}.dat")
    if name != src.name:
        header = header.replace(f"{src.name}.dat", f"{name}.dat")
        lines = header.splitlines(keepends=True)
        lines[0] = lines[0].replace(src.name, name, 1)
        header = "".join(lines)
    (dst_dir / f"{name}.hea").write_text(header)
    return dst_dir / name


def set_header_length(record: Path, n_samples: int) -> None:
    """Rewrite the record line's sample count (4th field) of ``record``'s header."""
    hea = record.with_name(record.name + ".hea")
    lines = hea.read_text().splitlines(keepends=True)
    fields = lines[0].split()
    fields[3] = str(n_samples)
    lines[0] = " ".join(fields) + "\n"
    hea.write_text("".join(lines))


def write_modified_record(
    src: Path,
    dst_dir: Path,
    name: str,
    modify: Callable[[np.ndarray, list[str]], None],
    drop: str | None = None,
) -> Path:
    """Write a copy of the real record ``src`` with ``wfdb.wrsamp`` (same gains, baselines, format 16)
    after ``modify(p_signal, names)`` changed its samples in place; ``drop`` removes one lead."""
    rec = wfdb.rdrecord(str(src))
    signal = rec.p_signal.copy()
    names = list(rec.sig_name)
    modify(signal, names)
    keep = [i for i, n in enumerate(names) if n != drop]
    dst_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=rec.fs,
        units=[rec.units[i] for i in keep],
        sig_name=[names[i] for i in keep],
        p_signal=signal[:, keep],
        fmt=["16"] * len(keep),
        adc_gain=[rec.adc_gain[i] for i in keep],
        baseline=[rec.baseline[i] for i in keep],
        write_dir=str(dst_dir),
    )
    return dst_dir / name


@pytest.fixture()
def broken_wfdb(tmp_path: Path, ptbxl_record: Path) -> dict[str, Path]:
    """Broken WFDB records made from PTB-XL record 1, by what is wrong with them."""
    out = tmp_path / "broken"
    made: dict[str, Path] = {}

    rec = copy_wfdb_record(ptbxl_record, out, "truncated")
    dat = rec.with_name("truncated.dat")
    dat.write_bytes(dat.read_bytes()[:12000])
    made["truncated"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "long_header")
    set_header_length(rec, 1200)
    made["long_header"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "short_header")
    set_header_length(rec, 900)
    made["short_header"] = rec

    rec = copy_wfdb_record(ptbxl_record, out, "no_dat")
    rec.with_name("no_dat.dat").unlink()
    made["no_dat"] = rec

    (out / "notes.hea").write_text("Patient notes: ECG looked fine.\nRepeat in 3 months.\n")
    made["text_hea"] = out / "notes"

    def nan_v3(signal: np.ndarray, names: list[str]) -> None:
        signal[:, names.index("V3")] = np.nan

    made["all_nan"] = write_modified_record(ptbxl_record, out, "nan_v3", nan_v3)

    def flat_i(signal: np.ndarray, names: list[str]) -> None:
        signal[:, names.index("I")] = 0.0

    made["flat"] = write_modified_record(ptbxl_record, out, "flat_i", flat_i)
    return made


@pytest.fixture(scope="session")
def copy_record() -> Callable[..., Path]:
    """:func:`copy_wfdb_record`, for tests."""
    return copy_wfdb_record


@pytest.fixture(scope="session")
def write_record() -> Callable[..., Path]:
    """:func:`write_modified_record`, for tests."""
    return write_modified_record


@pytest.fixture(scope="session")
def set_length() -> Callable[[Path, int], None]:
    """:func:`set_header_length`, for tests."""
    return set_header_length
