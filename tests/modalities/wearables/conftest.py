"""Fixtures of the wearable tests: the real BIDMC folder and modified copies of its real recordings."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def bidmc(shared_data: Path) -> Path:
    """``../shared/data/bidmc/bidmc_csv`` (skips, saying why, when absent)."""
    folder = shared_data / "bidmc" / "bidmc_csv"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: the BIDMC recordings are not in this copy of the shared data")
    return folder


@pytest.fixture(scope="session")
def bidmc_table(bidmc: Path) -> Callable[[str], pd.DataFrame]:
    """``bidmc_table("01")``: the raw table of a real recording, as pandas reads it (header names as in the
    file, e.g. ``" PLETH"`` with its leading space)."""
    cache: dict[str, pd.DataFrame] = {}

    def read(number: str) -> pd.DataFrame:
        if number not in cache:
            cache[number] = pd.read_csv(bidmc / f"bidmc_{number}_Signals.csv.gz")
        return cache[number].copy()

    return read


@pytest.fixture()
def write_copy(bidmc: Path) -> Callable[..., Path]:
    """Write a (possibly modified) copy of a real recording's table, with its ``_Fix.txt``.

    ``write_copy(table, folder, number="01", gz=True, fix=True)`` → the signals file.
    """

    def write(
        table: pd.DataFrame, folder: Path, number: str = "01", gz: bool = True, fix: bool = True
    ) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bidmc_{number}_Signals.csv{'.gz' if gz else ''}"
        text = table.to_csv(index=False, float_format="%.5f").encode()
        if gz:
            with gzip.open(path, "wb") as handle:
                handle.write(text)
        else:
            path.write_bytes(text)
        if fix:
            shutil.copyfile(bidmc / f"bidmc_{number}_Fix.txt", folder / f"bidmc_{number}_Fix.txt")
        return path

    return write


def column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A column of a raw BIDMC table by its name without the leading space."""
    matches = [c for c in table.columns if c.strip() == name]
    assert len(matches) == 1, table.columns
    return table[matches[0]].to_numpy(dtype=np.float64)
