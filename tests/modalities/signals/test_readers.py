"""Readers on real files (PTB-XL, MIT-BIH, eegmat, BIDMC), a hand-written multi-frequency WFDB record,
and broken copies of real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyedflib
import pytest
import wfdb

from medcl.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    MissingChannelError,
    UnsupportedFormatError,
)
from modalities.signals.readers import (
    SignalHeader,
    normalize_channel_name,
    read_csv_signal,
    read_edf,
    read_signal,
    read_signal_header,
    read_wfdb,
    resample_to_rate,
)

PTBXL_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
EEGMAT_LABELS = (
    "EEG Fp1 EEG Fp2 EEG F3 EEG F4 EEG F7 EEG F8 EEG T3 EEG T4 EEG C3 EEG C4 EEG T5 EEG T6 EEG P3 "
    "EEG P4 EEG O1 EEG O2 EEG Fz EEG Cz EEG Pz"
)


def eegmat_labels() -> tuple[str, ...]:
    words = EEGMAT_LABELS.split()
    return (*(f"{a} {b}" for a, b in zip(words[::2], words[1::2], strict=True)), "EEG A2-A1", "ECG ECG")


# ---------------------------------------------------------------------------------------------- PTB-XL


def test_ptbxl_record_matches_wfdb_and_hand_decoding(ptbxl_record: Path) -> None:
    record = read_wfdb(ptbxl_record)
    assert record.data.shape == (12, 1000)
    assert record.data.dtype == np.float32
    assert record.fs == 100.0
    assert record.channel_names == PTBXL_LEADS
    assert record.units == ("mV",) * 12
    reference = wfdb.rdrecord(str(ptbxl_record)).p_signal.T
    np.testing.assert_allclose(record.data, reference, atol=1e-6)

    # By hand: fmt 16 = little-endian int16, frames of 12 samples; V1 (signal 7) has gain 1000, baseline 0.
    signal_line = (ptbxl_record.parent / "00001_lr.hea").read_text().splitlines()[7]
    fields = signal_line.split()
    assert fields[-1] == "V1" and fields[1] == "16"
    gain, baseline = float(fields[2].split("(")[0]), int(fields[2].split("(")[1].split(")")[0])
    raw = np.frombuffer((ptbxl_record.parent / "00001_lr.dat").read_bytes(), dtype="<i2").reshape(1000, 12)
    np.testing.assert_allclose(record.data[6], (raw[:, 6] - baseline) / gain, atol=1e-6)
    # The first sample of the header's "initial value" column is the first stored value.
    assert raw[0, 6] == int(fields[5])


def test_ptbxl_path_with_or_without_extension(ptbxl_record: Path) -> None:
    plain = read_signal(ptbxl_record)
    for variant in (ptbxl_record.with_name("00001_lr.hea"), ptbxl_record.with_name("00001_lr.dat")):
        again = read_signal(variant)
        np.testing.assert_array_equal(again.data, plain.data)
        assert again.path == str(ptbxl_record)


def test_channels_are_selected_and_ordered_by_normalised_name(ptbxl_record: Path) -> None:
    full = read_wfdb(ptbxl_record)
    picked = read_wfdb(ptbxl_record, channels=["aVR", "i", "ECG V1", "V6-REF"])
    assert picked.channel_names == ("AVR", "I", "V1", "V6")
    np.testing.assert_array_equal(picked.data, full.data[[3, 0, 6, 11]])


def test_missing_channels_are_all_named_with_the_available_ones(ptbxl_record: Path) -> None:
    with pytest.raises(MissingChannelError) as caught:
        read_wfdb(ptbxl_record, channels=["I", "V7", "MLII"])
    message = str(caught.value)
    assert str(ptbxl_record) in message
    assert "missing channel(s) V7, MLII" in message
    assert "the record has I, II, III, AVR" in message


def test_channel_errors_for_bad_requests(ptbxl_record: Path) -> None:
    with pytest.raises(ConfigError, match="not the string"):
        read_wfdb(ptbxl_record, channels="I")
    with pytest.raises(ConfigError, match="more than once"):
        read_wfdb(ptbxl_record, channels=["AVR", "aVR"])


def test_sample_range(ptbxl_record: Path) -> None:
    full = read_wfdb(ptbxl_record)
    part = read_wfdb(ptbxl_record, sampfrom=250, sampto=600)
    np.testing.assert_array_equal(part.data, full.data[:, 250:600])
    with pytest.raises(ConfigError, match="outside"):
        read_wfdb(ptbxl_record, sampfrom=900, sampto=1001)


def test_header_matches_what_the_reader_returns(ptbxl_record: Path) -> None:
    header = read_signal_header(ptbxl_record)
    record = read_signal(ptbxl_record)
    assert header == SignalHeader(str(ptbxl_record), 100.0, 1000, PTBXL_LEADS, ("mV",) * 12, "wfdb")
    assert (header.fs, header.n_samples, header.channel_names) == (
        record.fs,
        record.n_samples,
        record.channel_names,
    )
    assert header.duration_s == 10.0


def test_headers_agree_with_wfdb_on_every_bundled_record(bundled_ptbxl: Path) -> None:
    for hea in sorted((bundled_ptbxl / "records100/00000").glob("*.hea"))[::10]:
        mine = read_signal_header(hea)
        theirs = wfdb.rdheader(str(hea.with_suffix("")))
        assert mine.channel_names == tuple(theirs.sig_name)
        assert (mine.fs, mine.n_samples, list(mine.units)) == (theirs.fs, theirs.sig_len, theirs.units)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AVR", "aVR"),
        ("aVR", "aVR"),
        ("avl", "aVL"),
        ("MLII", "MLII"),
        ("II", "II"),
        ("EEG Fp1", "Fp1"),
        ("EEG FP1-REF", "Fp1"),
        ("Fp1-LE", "Fp1"),
        ("EEG T3", "T7"),
        ("T8", "T8"),
        ("ECG ECG", "ECG"),
        ("EEG A2-A1", "A2-A1"),
        (' "V1" ', "V1"),
        ("PLETH", "PLETH"),
        ("Resp", "RESP"),
    ],
)
def test_normalize_channel_name(name: str, expected: str) -> None:
    assert normalize_channel_name(name) == expected


# --------------------------------------------------------------------------------------------- MIT-BIH


def test_mitdb_record_fmt212(shared_data: Path) -> None:
    base = shared_data / "mitdb" / "101"
    record = read_signal(base.with_suffix(".hea"))
    assert record.data.shape == (2, 650000)
    assert record.fs == 360.0
    assert record.channel_names == ("MLII", "V1")
    assert record.extra["fmt"] == ["212", "212"]
    reference = wfdb.rdrecord(str(base), sampto=5000).p_signal.T
    np.testing.assert_allclose(record.data[:, :5000], reference, atol=1e-6)
    # By hand: fmt 212 packs two 12-bit two's-complement samples in 3 bytes; gain 200, baseline 1024.
    raw = np.frombuffer((shared_data / "mitdb" / "101.dat").read_bytes()[:300], dtype=np.uint8).astype(
        np.int64
    )
    b0, b1, b2 = raw[0::3], raw[1::3], raw[2::3]
    first = b0 | ((b1 & 0x0F) << 8)
    second = b2 | ((b1 & 0xF0) << 4)
    first, second = (np.where(v >= 2048, v - 4096, v) for v in (first, second))
    np.testing.assert_allclose(record.data[0, :100], (first - 1024) / 200.0, atol=1e-6)
    np.testing.assert_allclose(record.data[1, :100], (second - 1024) / 200.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ EDF


def test_eegmat_edf(shared_data: Path) -> None:
    path = shared_data / "eeg_mental_arithmetic" / "Subject00_2.edf"
    record = read_edf(path)
    assert record.data.shape == (21, 31000)
    assert record.fs == 500.0
    assert record.channel_names == eegmat_labels()
    assert record.units == ("uV",) * 20 + ("mV",)
    reader = pyedflib.EdfReader(str(path))
    try:
        np.testing.assert_allclose(record.data[0], reader.readSignal(0), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(record.data[20], reader.readSignal(20), rtol=1e-6, atol=1e-4)
    finally:
        reader.close()
    picked = read_signal(path, channels=["Fp1", "T7", "ECG"])
    assert picked.channel_names == ("EEG Fp1", "EEG T3", "ECG ECG")
    np.testing.assert_array_equal(picked.data, record.data[[0, 6, 20]])
    assert read_signal_header(path) == SignalHeader(
        str(path), 500.0, 31000, eegmat_labels(), ("uV",) * 20 + ("mV",), "edf"
    )


def test_edf_with_two_rates_is_resampled_to_the_highest(tmp_path: Path) -> None:
    path = tmp_path / "two_rates.edf"
    t_fast = np.arange(2000) / 200.0
    t_slow = np.arange(500) / 50.0
    writer = pyedflib.EdfWriter(str(path), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        for i, (label, fs) in enumerate((("fast", 200), ("slow", 50))):
            writer.setSignalHeader(
                i,
                {
                    "label": label,
                    "dimension": "uV",
                    "sample_frequency": fs,
                    "physical_max": 200.0,
                    "physical_min": -200.0,
                    "digital_max": 32767,
                    "digital_min": -32768,
                },
            )
        writer.writeSamples([100 * np.sin(2 * np.pi * 5 * t_fast), 100 * np.sin(2 * np.pi * 2 * t_slow)])
    finally:
        writer.close()
    record = read_edf(path)
    assert record.fs == 200.0 and record.data.shape == (2, 2000)
    np.testing.assert_allclose(
        record.data[1, 100:-100], 100 * np.sin(2 * np.pi * 2 * t_fast[100:-100]), atol=1.0
    )
    slow_only = read_edf(path, channels=["slow"])
    assert slow_only.fs == 50.0 and slow_only.data.shape == (1, 500)


# ------------------------------------------------------------------------------------------------ CSV


def test_bidmc_csv_columns_by_name(shared_data: Path) -> None:
    folder = shared_data / "bidmc" / "bidmc_csv"
    for name in ("bidmc_01_Signals.csv.gz", "bidmc_02_Signals.csv.gz"):
        path = folder / name
        record = read_csv_signal(path, channels=["II", "PLETH", "aVR"])
        assert record.fs == 125.0
        assert record.channel_names == ("II", "PLETH", "AVR")
        table = pd.read_csv(path)
        table.columns = [c.strip() for c in table.columns]
        np.testing.assert_allclose(record.data, table[["II", "PLETH", "AVR"]].to_numpy().T, rtol=1e-6)
        header = read_signal_header(path)
        assert (header.fs, header.n_samples) == (125.0, len(table))
        assert "Time" not in header.channel_names


def test_csv_rate_from_argument_or_error(tmp_path: Path) -> None:
    path = tmp_path / "no_time.csv"
    path.write_text("a,b\n1,2\n3,4\n5,\n")
    with pytest.raises(DataError, match="no sampling rate"):
        read_csv_signal(path)
    record = read_csv_signal(path, fs=10.0)
    assert record.fs == 10.0 and record.channel_names == ("a", "b")
    assert np.isnan(record.data[1, 2])
    assert read_signal_header(path, fs=10.0).n_samples == 3


def test_csv_time_in_ms_and_irregular_time(tmp_path: Path) -> None:
    regular = tmp_path / "ms.csv.gz"
    with gzip.open(regular, "wt") as f:
        f.write('"Time [ms]","x [mV]"\n' + "".join(f"{4 * i},{i}\n" for i in range(50)))
    record = read_signal(regular)
    assert record.fs == 250.0 and record.units == ("mV",)
    # Five samples missing in the middle: stamps drift far more than their rounding (0.5 ms) allows.
    irregular = tmp_path / "gap.csv"
    stamps = [4 * i for i in range(100) if not 40 <= i < 45]
    irregular.write_text("time [ms],x\n" + "".join(f"{t},{t}\n" for t in stamps))
    with pytest.raises(CorruptFileError, match="not regularly spaced") as caught:
        read_signal(irregular)
    assert str(irregular) in str(caught.value)
    assert read_signal(irregular, fs=250.0).n_samples == 95
    # Stamps rounded to the digits they are written with (as in BIDMC) are regular.
    rounded = tmp_path / "rounded.csv"
    rounded.write_text("Time [s],x\n" + "".join(f"{round(i / 7, 2)},{i}\n" for i in range(700)))
    assert read_signal(rounded).fs == 7.0


def test_csv_non_numeric_cell_names_the_column(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "bidmc" / "bidmc_csv" / "bidmc_01_Signals.csv.gz"
    lines = gzip.decompress(source.read_bytes()).decode().splitlines()
    fields = lines[101].split(",")
    fields[2] = "lead off"  # the PLETH column
    lines[101] = ",".join(fields)
    broken = tmp_path / "bidmc_01_Signals.csv"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptFileError) as caught:
        read_signal(broken)
    assert "column 'PLETH' holds non-numeric values (first on line 102: 'lead off')" in str(caught.value)
    assert str(broken) in str(caught.value)
    assert read_signal(broken, channels=["II"]).n_samples == len(lines) - 1


# ------------------------------------------------------------------------- multi-frequency WFDB record


def write_multifrequency_record(folder: Path) -> tuple[Path, dict[str, tuple[int, float]]]:
    """A 3-signal fmt-16 WFDB record at 100 frames/s with 1, 4 and 2 samples per frame (100, 400 and
    200 Hz), holding sines of known frequency, written byte by byte. Signal ``mid`` has an invalid stretch."""
    frames, fs = 300, 100
    spec = {"slow": (1, 2.0), "fast": (4, 30.0), "mid": (2, 9.0)}  # samples per frame, sine Hz
    gain = 1000.0
    per_signal = {}
    for name, (spf, hz) in spec.items():
        t = np.arange(frames * spf) / (fs * spf)
        per_signal[name] = np.round(np.sin(2 * np.pi * hz * t) * gain).astype("<i2")
    per_signal["mid"][200:210] = -32768  # WFDB's invalid-sample value for fmt 16
    frame_rows = [per_signal[name].reshape(frames, spec[name][0]) for name in spec]
    (folder / "multi.dat").write_bytes(np.concatenate(frame_rows, axis=1).astype("<i2").tobytes())
    lines = [f"multi 3 {fs} {frames}"]
    for name, (spf, _) in spec.items():
        lines.append(f"multi.dat 16x{spf} {gain:g}(0)/mV 16 0 {int(per_signal[name][0])} 0 0 {name}")
    (folder / "multi.hea").write_text("\n".join(lines) + "\n")
    return folder / "multi", spec


def test_multifrequency_record_is_resampled_to_the_highest_rate(tmp_path: Path) -> None:
    record_path, spec = write_multifrequency_record(tmp_path)
    record = read_signal(record_path)
    assert record.fs == 400.0
    assert record.data.shape == (3, 1200)
    assert record.extra["samps_per_frame"] == [1, 4, 2] and record.extra["resampled"]
    t = np.arange(1200) / 400.0
    away = np.zeros(1200, dtype=bool)
    away[40:-40] = True  # away from the edges
    for row, (name, (_, hz)) in enumerate(spec.items()):
        expected = np.sin(2 * np.pi * hz * t)
        use = away.copy()
        if name == "mid":
            use[380:440] = False  # and from the invalid stretch, bridged linearly before filtering
        error = np.abs(record.data[row][use] - expected[use])
        assert error.max() < 0.005, name
    # The native 400 Hz channel is not resampled at all: it equals wfdb's expanded samples.
    raw = wfdb.rdrecord(str(record_path), smooth_frames=False).e_p_signal[1]
    np.testing.assert_array_equal(record.data[1], raw.astype(np.float32))
    # The invalid stretch of "mid" (samples 200-209 at 200 Hz = 400-419 at 400 Hz) stays NaN, nothing else.
    nan = np.flatnonzero(np.isnan(record.data[2]))
    assert nan.min() >= 399 and nan.max() <= 420 and {400, 410, 418} <= set(nan)
    assert not np.isnan(record.data[[0, 1]]).any()
    header = read_signal_header(record_path)
    assert (header.fs, header.n_samples) == (400.0, 1200)
    # A sample range at the output rate.
    part = read_signal(record_path, channels=["fast", "slow"], sampfrom=401, sampto=803)
    assert part.data.shape == (2, 402)
    np.testing.assert_array_equal(part.data[0], record.data[1, 401:803])
    # Selecting only the slow channel returns it at its own rate.
    slow = read_signal(record_path, channels=["slow"])
    assert slow.fs == 100.0 and slow.data.shape == (1, 300)


def test_resample_to_rate_keeps_nan_and_length() -> None:
    x = np.sin(np.linspace(0, 20, 500))
    x[100:110] = np.nan
    y = resample_to_rate(x, 3, 2)
    assert y.shape == (750,)
    assert np.isnan(y[151:164]).all() and not np.isnan(y[:148]).any() and not np.isnan(y[167:]).any()
    assert np.isnan(resample_to_rate(np.full(10, np.nan), 2, 1)).all()
    np.testing.assert_array_equal(resample_to_rate(x, 2, 2), x)


# -------------------------------------------------------------------------------------- broken files


def test_truncated_dat(broken_wfdb: dict[str, Path]) -> None:
    with pytest.raises(CorruptFileError) as caught:
        read_signal(broken_wfdb["truncated"])
    message = str(caught.value)
    assert str(broken_wfdb["truncated"].with_name("truncated.dat")) in message
    assert "header declares 1000 samples (24000 bytes) but the .dat holds 12000 bytes" in message
    assert "truncated" in message
    with pytest.raises(CorruptFileError, match="12000 bytes"):
        read_signal_header(broken_wfdb["truncated"])


def test_header_longer_or_shorter_than_the_data(broken_wfdb: dict[str, Path]) -> None:
    with pytest.raises(
        CorruptFileError, match=r"header declares 1200 samples \(28800 bytes\) but the .dat holds 24000"
    ):
        read_signal(broken_wfdb["long_header"])
    with pytest.raises(CorruptFileError, match=r"declares 900 samples .* too small for its data"):
        read_signal(broken_wfdb["short_header"])


def test_missing_dat(broken_wfdb: dict[str, Path]) -> None:
    with pytest.raises(CorruptFileError, match=r"data file named by no_dat\.hea is missing") as caught:
        read_signal(broken_wfdb["no_dat"])
    assert str(broken_wfdb["no_dat"].with_name("no_dat.dat")) in str(caught.value)


def test_text_file_named_hea(broken_wfdb: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        UnsupportedFormatError, match="not a WFDB header: first line 'Patient notes"
    ) as caught:
        read_signal(broken_wfdb["text_hea"].with_name("notes.hea"))
    assert "notes.hea" in str(caught.value)
    empty = tmp_path / "empty.hea"
    empty.write_text("")
    with pytest.raises(UnsupportedFormatError, match="no record line"):
        read_signal(empty)
    binary = tmp_path / "binary.hea"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UnsupportedFormatError, match="not ASCII"):
        read_signal(binary)
    damaged = tmp_path / "damaged.hea"
    damaged.write_text("damaged 2 100 1000\ndamaged.dat 16 1000/mV 16 0 0 0 0 I\n")
    with pytest.raises(CorruptFileError, match="declares 2 signals but has 1 signal lines"):
        read_signal(damaged)


def test_nan_and_flat_channels_read_as_they_are(broken_wfdb: dict[str, Path], ptbxl_record: Path) -> None:
    nan_record = read_signal(broken_wfdb["all_nan"])
    v3 = nan_record.channel_names.index("V3")
    assert np.isnan(nan_record.data[v3]).all()
    assert not np.isnan(np.delete(nan_record.data, v3, axis=0)).any()
    original = read_signal(ptbxl_record)
    np.testing.assert_allclose(
        np.delete(nan_record.data, v3, axis=0), np.delete(original.data, v3, axis=0), atol=1e-6
    )
    flat = read_signal(broken_wfdb["flat"])
    assert np.ptp(flat.data[0]) == 0.0


def test_broken_edf_files(shared_data: Path, tmp_path: Path) -> None:
    source = (shared_data / "eeg_mental_arithmetic" / "Subject00_2.edf").read_bytes()
    truncated = tmp_path / "truncated.edf"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(CorruptFileError) as caught:
        read_signal(truncated)
    assert str(truncated) in str(caught.value)
    assert (
        f"header declares 62 data records ({len(source)} bytes) but the file holds {len(source) // 2} bytes"
        in str(caught.value)
    )
    with pytest.raises(CorruptFileError, match="62 data records"):
        read_signal_header(truncated)

    garbage = tmp_path / "garbage.edf"
    garbage.write_bytes(b"this is not an EDF file\n" * 40)
    with pytest.raises(UnsupportedFormatError, match="not an EDF/BDF file") as caught:
        read_signal(garbage)
    assert str(garbage) in str(caught.value)

    bad_field = tmp_path / "bad_field.edf"
    bad_field.write_bytes(source[:236] + b"sixtytwo" + source[244:])
    with pytest.raises(CorruptFileError, match="'number of data records' is not a number: 'sixtytwo'"):
        read_signal(bad_field)

    header_only = tmp_path / "header_only.edf"
    header_only.write_bytes(source[:1000])
    with pytest.raises(CorruptFileError, match="signal headers are truncated"):
        read_signal(header_only)

    with pytest.raises(MissingChannelError, match="missing channel"):
        read_signal(shared_data / "eeg_mental_arithmetic" / "Subject00_2.edf", channels=["V1"])


def test_unknown_or_absent_files(tmp_path: Path) -> None:
    odd = tmp_path / "signal.mat"
    odd.write_bytes(b"\x00" * 10)
    with pytest.raises(UnsupportedFormatError, match=r"unknown signal file type '\.mat'"):
        read_signal(odd)
    with pytest.raises(DataError, match="not found"):
        read_signal(tmp_path / "nothing_here")
    with pytest.raises(DataError, match="not found"):
        read_signal(tmp_path / "nothing.edf")
    with pytest.raises(DataError, match="WFDB header file not found"):
        read_signal(tmp_path / "nothing.dat")
