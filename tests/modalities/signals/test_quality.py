"""Signal-quality checks on a real PTB-XL record and on copies with NaN or flat channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.errors import ConfigError, InvalidSignalError
from modalities.signals.quality import ChannelIssue, check_signal_quality, validate_record
from modalities.signals.readers import read_signal
from modalities.signals.record import SignalRecord


@pytest.fixture()
def record(ptbxl_record: Path) -> SignalRecord:
    return read_signal(ptbxl_record)


def test_real_record_has_no_issue(record: SignalRecord) -> None:
    assert check_signal_quality(record) == []
    validate_record(record)


def test_every_problem_channel_is_reported(record: SignalRecord) -> None:
    data = record.data.copy()
    data[0] = 0.0  # I flat
    data[8] = np.nan  # V3 all NaN
    data[10, :100] = np.nan  # V5: 10 % NaN
    issues = check_signal_quality(record.with_data(data))
    assert issues == [
        ChannelIssue("I", "flat", "channel I is flat (peak-to-peak 0 mV)"),
        ChannelIssue("V3", "all_nan", "channel V3 is all NaN"),
        ChannelIssue("V5", "nan", "channel V5 has 10.0% NaN samples (100 of 1000; at most 0.0% allowed)"),
    ]
    with pytest.raises(InvalidSignalError) as caught:
        validate_record(record.with_data(data))
    message = str(caught.value)
    assert message.startswith(
        f"{record.path}: channel I is flat (peak-to-peak 0 mV); channel V3 is all NaN; "
        "channel V5 has 10.0% NaN"
    )
    assert caught.value.path == record.path


def test_nan_fraction_threshold(record: SignalRecord) -> None:
    data = record.data.copy()
    data[10, :100] = np.nan
    assert check_signal_quality(record.with_data(data), max_nan_fraction=0.1) == []
    assert [i.problem for i in check_signal_quality(record.with_data(data), max_nan_fraction=0.099)] == [
        "nan"
    ]


def test_flat_threshold_and_allow_flat(record: SignalRecord) -> None:
    data = record.data.copy()
    data[1] = 0.5
    data[1, 7] = 0.5 + 1e-3  # peak-to-peak 1 µV-ish in mV
    flat = record.with_data(data)
    assert check_signal_quality(flat, flat_peak_to_peak=1e-6) == []
    assert [i.channel for i in check_signal_quality(flat, flat_peak_to_peak=2e-3)] == ["II"]
    data[1] = 0.5
    constant = record.with_data(data)
    with pytest.raises(InvalidSignalError, match="channel II is flat"):
        validate_record(constant)
    validate_record(constant, allow_flat=True)
    # A channel that is flat and partly NaN has both problems; allow_flat still rejects the NaN.
    data[1, :10] = np.nan
    problems = [i.problem for i in check_signal_quality(record.with_data(data))]
    assert problems == ["nan", "flat"]
    with pytest.raises(InvalidSignalError, match="NaN samples"):
        validate_record(record.with_data(data), allow_flat=True)


def test_records_written_with_nan_or_flat_leads(broken_wfdb: dict[str, Path]) -> None:
    with pytest.raises(InvalidSignalError, match="channel V3 is all NaN") as caught:
        validate_record(read_signal(broken_wfdb["all_nan"]))
    assert str(broken_wfdb["all_nan"]) in str(caught.value)
    with pytest.raises(InvalidSignalError, match=r"channel I is flat \(peak-to-peak 0 mV\)"):
        validate_record(read_signal(broken_wfdb["flat"]))


def test_bad_settings(record: SignalRecord) -> None:
    with pytest.raises(ConfigError):
        check_signal_quality(record, max_nan_fraction=1.5)
    with pytest.raises(ConfigError):
        check_signal_quality(record, flat_peak_to_peak=-1.0)
