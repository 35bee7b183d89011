"""Wearable readers on real BIDMC recordings: columns by name in any order, missing channels, formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from medcl.errors import MissingChannelError, UnsupportedFormatError
from modalities.wearables.readers import (
    accelerometer_channels,
    accelerometer_magnitude,
    read_parquet_signal,
    read_wearable,
    read_wearable_header,
    wearable_format,
)

pytestmark = pytest.mark.shared_data
HAS_PARQUET = any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _col(table: pd.DataFrame, name: str) -> np.ndarray:
    return table[next(c for c in table.columns if c.strip() == name)].to_numpy(dtype=np.float64)


def test_real_record_by_name(bidmc: Path, bidmc_table) -> None:
    path = bidmc / "bidmc_01_Signals.csv.gz"
    table = bidmc_table("01")
    assert " PLETH" in table.columns  # the real header has a leading space
    record = read_wearable(path, channels=["PLETH", "II"])
    assert record.fs == 125.0 and record.data.shape == (2, 60001) and record.channel_names == ("PLETH", "II")
    np.testing.assert_allclose(record.data[0], _col(table, "PLETH"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(record.data[1], _col(table, "II"), rtol=0, atol=1e-6)
    header = read_wearable_header(path)
    assert header.fs == 125.0 and header.n_samples == 60001 and "PLETH" in header.channel_names


def test_column_order_does_not_matter(bidmc: Path, bidmc_table, write_copy, tmp_path: Path) -> None:
    # Records 01 and 33 store PLETH in different positions; a shuffled copy of 01 reads the same again.
    assert list(bidmc_table("01").columns).index(" PLETH") != list(bidmc_table("33").columns).index(" PLETH")
    table = bidmc_table("01")
    shuffled = table[[table.columns[0], *reversed(table.columns[1:])]]
    copy = write_copy(shuffled, tmp_path / "shuffled")
    original = read_wearable(bidmc / "bidmc_01_Signals.csv.gz", channels=["II", "PLETH"])
    again = read_wearable(copy, channels=["II", "PLETH"])
    assert again.channel_names == ("II", "PLETH")
    np.testing.assert_allclose(again.data, original.data, rtol=0, atol=1e-5)
    for number in ("01", "17", "33"):
        ppg = read_wearable(bidmc / f"bidmc_{number}_Signals.csv.gz", channels=["PLETH"]).data[0]
        np.testing.assert_allclose(ppg, _col(bidmc_table(number), "PLETH"), rtol=0, atol=1e-6)


def test_missing_pleth_names_the_file(bidmc_table, write_copy, tmp_path: Path) -> None:
    table = bidmc_table("02").drop(columns=[" PLETH"])
    copy = write_copy(table, tmp_path / "no_pleth", number="02")
    with pytest.raises(MissingChannelError) as raised:
        read_wearable(copy, channels=["PLETH"])
    message = str(raised.value)
    assert str(copy) in message and "PLETH" in message and "RESP" in message  # what it lacks and has


def test_wfdb_copy_reads_like_the_csv(bidmc: Path, tmp_path: Path) -> None:
    record = read_wearable(bidmc / "bidmc_03_Signals.csv.gz", channels=["PLETH", "RESP"])
    wfdb.wrsamp(
        "bidmc03",
        fs=125,
        units=["NU", "NU"],
        sig_name=["PLETH", "RESP"],
        p_signal=record.data.T.astype(np.float64),
        fmt=["16", "16"],
        write_dir=str(tmp_path),
    )
    again = read_wearable(tmp_path / "bidmc03.hea", channels=["RESP", "PLETH"])
    assert wearable_format(tmp_path / "bidmc03.hea") == "wfdb" and again.fs == 125.0
    np.testing.assert_allclose(again.data[[1, 0]], record.data, atol=1e-3)


@pytest.mark.skipif(
    HAS_PARQUET, reason="a Parquet engine is installed: the missing-engine error cannot occur"
)
def test_parquet_without_an_engine_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "p01.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
    assert wearable_format(path) == "parquet"
    with pytest.raises(UnsupportedFormatError) as raised:
        read_wearable(path, channels=["PLETH"])
    assert "pyarrow" in str(raised.value) and str(path) in str(raised.value)


@pytest.mark.skipif(not HAS_PARQUET, reason="needs pyarrow or fastparquet (not installed here)")
def test_parquet_round_trip(bidmc_table, tmp_path: Path) -> None:
    table = bidmc_table("05")
    path = tmp_path / "p05.parquet"
    table.to_parquet(path)
    record = read_parquet_signal(path, channels=["PLETH"])
    assert record.fs == 125.0
    np.testing.assert_allclose(record.data[0], _col(table, "PLETH"), atol=1e-6)


def test_accelerometer_helpers() -> None:
    assert accelerometer_channels(["PPG", "ACC_Y", "acc_x", "ACC_Z"]) == ["acc_x", "ACC_Y", "ACC_Z"]
    assert accelerometer_channels(["Accelerometer X", "Accelerometer Y", "Accelerometer Z"]) == [
        "Accelerometer X",
        "Accelerometer Y",
        "Accelerometer Z",
    ]
    assert accelerometer_channels(["PLETH", "acc_mag"]) == ["acc_mag"]
    assert accelerometer_channels(["PLETH", "ACC_X"]) == []  # one axis is not a magnitude
    axes = np.array([[3.0, 0.0], [4.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(accelerometer_magnitude(axes), [5.0, 2.0])
    np.testing.assert_allclose(accelerometer_magnitude(np.array([[-1.5, 2.0]])), [1.5, 2.0])
    with pytest.raises(ValueError, match="accelerometer"):
        accelerometer_magnitude(np.zeros((2, 4)))
