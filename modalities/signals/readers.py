"""Readers for physiological signal files: WFDB, EDF/BDF and CSV, each returning a :class:`SignalRecord`.

Every reader returns samples in physical units, channel first, ``float32``, with NaN where the file
marks a sample invalid, and one sampling rate for all channels. Bad files never leak a raw library
exception: each reader checks what it can before calling the library (header against data size,
format signature) and re-raises whatever the library still throws as a :class:`~medcl.errors.DataError`
subclass naming the file, the problem and, where known, the fix:

- :class:`~medcl.errors.UnsupportedFormatError`: the file is not what its name says (a text file
  named ``.hea``, a non-EDF file named ``.edf``) or a format medcl does not read;
- :class:`~medcl.errors.CorruptFileError`: truncated data, a header that disagrees with its data, a
  missing ``.dat``, non-numeric CSV cells;
- :class:`~medcl.errors.MissingChannelError`: a requested channel is not in the record;
- :class:`~medcl.errors.DataError` itself: the file does not exist.

Channels are selected and ordered by name through :func:`normalize_channel_name`, so ``"aVR"`` finds
``"AVR"`` and ``"Fp1"`` finds ``"EEG Fp1"`` or ``"FP1-REF"``.

Multi-rate records (WFDB signals with different samples per frame, EDF signals with different samples
per data record) are resampled to the highest rate among the returned channels with
:func:`scipy.signal.resample_poly` at the exact integer ratio; see :func:`resample_to_rate`.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyedflib
import wfdb
from scipy.signal import resample_poly
from wfdb.io.header import rx_record, rx_signal

from medcl.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    MissingChannelError,
    UnsupportedFormatError,
)
from modalities.signals.record import SignalRecord

__all__ = [
    "FS_RANGE",
    "SignalHeader",
    "check_no_infinite",
    "normalize_channel_name",
    "read_csv_signal",
    "read_edf",
    "read_signal",
    "read_signal_header",
    "read_wfdb",
    "resample_to_rate",
    "select_channels",
    "signal_format",
]

# --------------------------------------------------------------------------------------------------
# Channel names
# --------------------------------------------------------------------------------------------------

_NAME_PREFIXES = ("EEG ", "ECG ", "EKG ")
_NAME_SUFFIXES = ("-REF", "-LE")
# Old 10-20 names of the temporal/parietal sites and their 10-10 names (same electrode positions).
_NAME_ALIASES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
# Standard spellings returned for known names (keys are upper case).
_STANDARD_NAMES: tuple[str, ...] = (
    *("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6", "MLI", "MLII", "MLIII"),
    *("Fp1", "Fp2", "Fpz", "AF3", "AF4", "AF7", "AF8", "AFz", "F1", "F2", "F3", "F4", "F5", "F6", "F7"),
    *("F8", "F9", "F10", "Fz", "FC1", "FC2", "FC3", "FC4", "FC5", "FC6", "FCz", "FT7", "FT8", "FT9"),
    *("FT10", "C1", "C2", "C3", "C4", "C5", "C6", "Cz", "T7", "T8", "T9", "T10", "CP1", "CP2", "CP3"),
    *("CP4", "CP5", "CP6", "CPz", "TP7", "TP8", "TP9", "TP10", "P1", "P2", "P3", "P4", "P5", "P6", "P7"),
    *("P8", "P9", "P10", "Pz", "PO3", "PO4", "PO7", "PO8", "POz", "O1", "O2", "Oz", "Iz", "A1", "A2"),
    *("M1", "M2"),
)
_CANONICAL = {name.upper(): name for name in _STANDARD_NAMES}


def normalize_channel_name(name: str) -> str:
    """The name used to match channels across files and configs.

    Strips whitespace and quotes, an ``"EEG "``/``"ECG "``/``"EKG "`` prefix and a ``"-REF"``/``"-LE"``
    suffix, ignores case, maps the old 10-20 names T3/T4/T5/T6 to their 10-10 names T7/T8/P7/P8, and
    returns the standard spelling of known ECG leads and EEG sites (``"AVR"`` → ``"aVR"``,
    ``"EEG FP1-REF"`` → ``"Fp1"``); other names come back upper case (``"ECG ECG"`` → ``"ECG"``,
    ``"PLETH"``). ``"MLII"`` (modified lead II of Holter ECGs) stays ``"MLII"``: it is not lead II.
    """
    text = str(name).strip().strip("'\"").strip()
    upper = text.upper()
    for prefix in _NAME_PREFIXES:
        if upper.startswith(prefix) and len(upper) > len(prefix):
            upper = upper[len(prefix) :].strip()
            break
    for suffix in _NAME_SUFFIXES:
        if upper.endswith(suffix) and len(upper) > len(suffix):
            upper = upper[: -len(suffix)].strip()
            break
    upper = _NAME_ALIASES.get(upper, upper)
    return _CANONICAL.get(upper, upper)


def select_channels(path: str | Path, available: Sequence[str], requested: Sequence[str] | None) -> list[int]:
    """Indices into ``available`` of the ``requested`` channels, in the requested order.

    A requested name matches an available one exactly, or else through :func:`normalize_channel_name`.

    Raises:
        MissingChannelError: naming every requested channel the record lacks (or matches twice) and
            listing the channels it has.
        ConfigError: ``requested`` is a bare string, or names one channel twice.
    """
    if requested is None:
        return list(range(len(available)))
    if isinstance(requested, str):
        raise ConfigError(f"channels must be a list of names, not the string {requested!r}")
    if len(requested) == 0:
        raise ConfigError("channels is empty: pass None to read every channel, or name at least one")
    keys = [normalize_channel_name(a) for a in available]
    indices: list[int] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for name in requested:
        exact = [i for i, a in enumerate(available) if a == name]
        matches = exact or [i for i, k in enumerate(keys) if k == normalize_channel_name(name)]
        if not matches:
            missing.append(str(name))
        elif len(matches) > 1:
            ambiguous.append(f"{name} (matches {', '.join(available[i] for i in matches)})")
        else:
            indices.append(matches[0])
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"missing channel(s) {', '.join(missing)}")
        if ambiguous:
            parts.append(f"ambiguous channel(s) {'; '.join(ambiguous)}")
        raise MissingChannelError(
            path,
            f"{' and '.join(parts)}; the record has {', '.join(available) or 'no channels'}",
            hint="ask only for channels every record has, or let index_signals quarantine this record",
        )
    if len(set(indices)) != len(indices):
        raise ConfigError(f"channels {list(requested)} name the same channel of {path} more than once")
    return indices


# --------------------------------------------------------------------------------------------------
# Header summary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalHeader:
    """What a signal file holds, read without reading its samples.

    Attributes:
        path: the file (for WFDB, the record path without extension).
        fs: the sampling rate the reader will return, in Hz (the highest channel rate of a multi-rate
            record).
        n_samples: samples per channel the reader will return at ``fs``.
        channel_names: channel names as stored in the file.
        units: physical unit per channel (``""`` when the file does not say).
        format: ``"wfdb"``, ``"edf"`` or ``"csv"``.
    """

    path: str
    fs: float
    n_samples: int
    channel_names: tuple[str, ...]
    units: tuple[str, ...]
    format: str

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


#: sampling rates a physiological recording can have, in Hz (outside: a corrupted header or time column)
FS_RANGE: tuple[float, float] = (1e-6, 1e6)


def _check_rate(path: str | Path, fs: float, source: str) -> float:
    """``fs`` if it lies in :data:`FS_RANGE`, else a CorruptFileError naming ``source`` (its origin)."""
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise CorruptFileError(
            path,
            f"{source} gives a sampling rate of {fs:.6g} Hz, outside any physiological recording's "
            f"{FS_RANGE[0]:g} Hz to {FS_RANGE[1]:g} Hz",
            hint="the header (or time column) is corrupted; repair it or re-export the recording",
        )
    return fs


def check_no_infinite(path: str | Path, data: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """Return ``data`` ``(C, T)`` (float32, as readers return it) after checking that no sample is
    infinite: readers return finite values or NaN (invalid samples). An infinite sample comes from a
    broken file: a gain or physical range that overflows (also when float64 values exceed float32), or
    ``inf`` written in a table.

    Raises:
        CorruptFileError: naming the first channel with infinite values and how many there are.
    """
    infinite = np.isinf(data)
    if infinite.any():
        per_channel = infinite.sum(axis=1)
        first = int(np.flatnonzero(per_channel)[0])
        raise CorruptFileError(
            path,
            f"channel {channel_names[first]!r} has {int(per_channel[first])} infinite sample(s) "
            f"({int(np.count_nonzero(per_channel))} channel(s) affected): the header's gain or physical "
            "range overflows, or the file holds infinite values",
            hint="repair the channel's scaling in the header, or mark invalid samples as missing (NaN)",
        )
    return data


# --------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------


def resample_to_rate(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Resample one channel by ``up/down`` with :func:`scipy.signal.resample_poly` (anti-aliased
    polyphase FIR, linear padding at the ends), keeping NaN where the input was NaN.

    NaN gaps are bridged by linear interpolation before filtering (so they do not spread through the
    filter), then every output sample whose nearest input samples (floor and ceil of its position) are
    NaN is set back to NaN. An all-NaN channel stays all NaN.

    Args:
        x: one channel. Shape ``(T,)``.
        up, down: the rate ratio; the output has ``ceil(T * up / down)`` samples.

    Returns:
        Shape ``(ceil(T * up / down),)``, float64.
    """
    ratio = Fraction(up, down)
    up, down = ratio.numerator, ratio.denominator
    x = np.asarray(x, dtype=np.float64)
    n_out = math.ceil(len(x) * up / down)
    if up == down:
        return x.copy()
    if len(x) == 0:
        return np.zeros(0)
    mask = np.isnan(x)
    if mask.all():
        return np.full(n_out, np.nan)
    if mask.any():
        idx = np.arange(len(x))
        x = np.where(mask, np.interp(idx, idx[~mask], x[~mask]), x)
    y = resample_poly(x, up, down, padtype="line")[:n_out]
    if mask.any():
        pos = np.arange(n_out) * down / up
        lo = np.clip(np.floor(pos).astype(np.int64), 0, len(x) - 1)
        hi = np.clip(np.ceil(pos).astype(np.int64), 0, len(x) - 1)
        y[mask[lo] | mask[hi]] = np.nan
    return y


# --------------------------------------------------------------------------------------------------
# WFDB
# --------------------------------------------------------------------------------------------------

# Bytes per sample of each uncompressed WFDB format (as in the WFDB specification, signal(5)).
_WFDB_BYTES_PER_SAMPLE = {
    "8": 1.0,
    "16": 2.0,
    "24": 3.0,
    "32": 4.0,
    "61": 2.0,
    "80": 1.0,
    "160": 2.0,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}
_WFDB_COMPRESSED = {"508", "516", "524"}  # FLAC: wfdb checks these itself
# A strict WFDB record line: name[/n_seg] n_sig [fs[/counter_freq[(base_counter)]] [sig_len [time [date]]]]
_RECORD_LINE = re.compile(
    r"^[-\w]+(/\d+)?[ \t]+\d+"
    r"([ \t]+\d*\.?\d+([eE][+-]?\d+)?(/\d*\.?\d+(\(-?\d*\.?\d+\))?)?"
    r"([ \t]+\d+"
    r"([ \t]+\d{1,2}(:\d{1,2}){0,2}(\.\d+)?"
    r"([ \t]+\d{1,2}/\d{1,2}/\d{4})?)?)?)?[ \t]*$"
)


def _wfdb_record_path(path: str | Path) -> Path:
    """The record path without extension (``x/101.hea`` → ``x/101``)."""
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in (".hea", ".dat") else p


def _hea_path(base: Path) -> Path:
    return base.with_name(base.name + ".hea")


@dataclass(frozen=True)
class _WfdbHeader:
    """The fields of a single-segment WFDB header that the checks and the channel selection need,
    parsed with wfdb's own line patterns (``wfdb.io.header.rx_record``/``rx_signal``) and defaults
    (fs 250, 1 sample per frame, units mV) but without wfdb's slower full parse."""

    n_seg: int | None
    fs: float
    sig_len: int | None
    file_name: tuple[str, ...]
    fmt: tuple[str, ...]
    samps_per_frame: tuple[int, ...]
    byte_offset: tuple[int | None, ...]
    units: tuple[str, ...]
    sig_name: tuple[str, ...]
    comments: tuple[str, ...]

    @property
    def n_sig(self) -> int:
        return len(self.sig_name)


def _read_wfdb_header(base: Path) -> _WfdbHeader:
    """Parse ``<base>.hea`` after checking that it is a WFDB header at all.

    Raises:
        DataError: no header file. UnsupportedFormatError: not WFDB text. CorruptFileError: a WFDB
        record line followed by missing or malformed signal lines.
    """
    hea = _hea_path(base)
    if not hea.is_file():
        raise DataError(hea, "WFDB header file not found", hint="check the record path")
    try:
        text = hea.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise UnsupportedFormatError(
            hea, "not a WFDB header: the file is not ASCII text", hint="is it a binary file named .hea?"
        ) from None
    except OSError as exc:
        raise CorruptFileError(hea, f"header cannot be read ({exc.strerror or exc})") from None
    stripped = [line.strip() for line in text.splitlines()]
    comments = tuple(line[1:].strip() for line in stripped if line.startswith("#"))
    lines = [line for line in stripped if line and not line.startswith("#")]
    if not lines:
        raise UnsupportedFormatError(hea, "not a WFDB header: the file has no record line (it is empty)")
    record = rx_record.match(lines[0]) if _RECORD_LINE.match(lines[0]) else None
    if record is None:
        raise UnsupportedFormatError(
            hea,
            f"not a WFDB header: first line {lines[0][:60]!r} is not a WFDB record line "
            "('<record> <n_signals> [<fs> [<n_samples>]]')",
        )
    n_seg = int(record["n_seg"]) if record["n_seg"] else None
    n_sig = int(record["n_sig"])
    fs = float(record["fs"]) if record["fs"] else 250.0
    sig_len = int(record["sig_len"]) if record["sig_len"] else None
    if n_seg is not None:
        return _WfdbHeader(n_seg, fs, sig_len, (), (), (), (), (), (), comments)
    if len(lines) - 1 < n_sig:
        raise CorruptFileError(
            hea, f"WFDB header declares {n_sig} signals but has {len(lines) - 1} signal lines"
        )
    fields: dict[str, list[Any]] = {k: [] for k in ("file", "fmt", "spf", "offset", "units", "name")}
    for k, line in enumerate(lines[1 : n_sig + 1], start=1):
        signal = rx_signal.match(line)
        if signal is None or not signal["fmt"] or not signal["file_name"]:
            raise CorruptFileError(
                hea, f"WFDB signal line {k} is not valid: {line[:60]!r}", hint="repair the header"
            )
        fields["file"].append(signal["file_name"])
        fields["fmt"].append(signal["fmt"])
        fields["spf"].append(int(signal["samps_per_frame"]) if signal["samps_per_frame"] else 1)
        fields["offset"].append(int(signal["byte_offset"]) if signal["byte_offset"] else None)
        fields["units"].append(signal["units"] or "mV")
        fields["name"].append(signal["sig_name"].strip())
    if not fs > 0 or min(fields["spf"], default=1) < 1:
        raise CorruptFileError(hea, f"WFDB header declares a sampling frequency of {fs} Hz")
    _check_rate(hea, fs * max(fields["spf"], default=1), "the WFDB header")
    return _WfdbHeader(
        n_seg,
        fs,
        sig_len,
        tuple(fields["file"]),
        tuple(fields["fmt"]),
        tuple(fields["spf"]),
        tuple(fields["offset"]),
        tuple(fields["units"]),
        tuple(fields["name"]),
        comments,
    )


def _wfdb_frames_in_file(header: _WfdbHeader, base: Path) -> int | None:
    """Check every ``.dat`` the header names against its declared size; return ``sig_len`` (frames),
    inferred from the data size when the header does not give it (``None`` if it cannot be inferred).

    Raises:
        CorruptFileError: a ``.dat`` is missing, truncated or longer than the header says.
        UnsupportedFormatError: a format wfdb does not read.
    """
    hea = _hea_path(base)
    groups: dict[str, list[int]] = {}
    for i, file_name in enumerate(header.file_name):
        groups.setdefault(file_name, []).append(i)
    sig_len = header.sig_len
    inferred: int | None = None
    for file_name, idx in groups.items():
        if file_name.startswith("~"):
            continue
        dat = base.parent / file_name
        fmts = {str(header.fmt[i]) for i in idx}
        if len(fmts) != 1:
            raise UnsupportedFormatError(
                hea, f"signals stored in {file_name} have different formats {sorted(fmts)}"
            )
        fmt = fmts.pop()
        if fmt in _WFDB_COMPRESSED:
            if not dat.is_file():
                raise CorruptFileError(dat, f"data file named by {hea.name} is missing")
            continue
        if fmt not in _WFDB_BYTES_PER_SAMPLE:
            raise UnsupportedFormatError(hea, f"WFDB signal format {fmt} is not supported")
        if not dat.is_file():
            raise CorruptFileError(
                dat, f"data file named by {hea.name} is missing", hint="copy the .dat next to the .hea"
            )
        bytes_per_sample = _WFDB_BYTES_PER_SAMPLE[fmt]
        per_frame = sum(header.samps_per_frame[i] for i in idx)
        offset = header.byte_offset[idx[0]] or 0
        actual = dat.stat().st_size
        data_bytes = actual - offset
        frame_bytes = math.ceil(per_frame * bytes_per_sample)
        if sig_len is None:
            if data_bytes < 0:
                raise CorruptFileError(
                    dat, f"header declares a byte offset of {offset} but the .dat holds {actual} bytes"
                )
            frames = int(data_bytes // (per_frame * bytes_per_sample))
            inferred = frames if inferred is None else min(inferred, frames)
            continue
        expected = math.ceil(int(sig_len) * per_frame * bytes_per_sample)
        # Writers may pad the last block (fmt 212/310/311) by a few bytes; never by a whole frame.
        if data_bytes < expected or data_bytes - expected >= max(frame_bytes, 4):
            what = (
                "the .dat is truncated or the header's sample count is too large"
                if data_bytes < expected
                else "the header's sample count is too small for its data"
            )
            raise CorruptFileError(
                dat,
                f"header declares {sig_len} samples ({offset + expected} bytes) but the .dat holds "
                f"{actual} bytes: {what}",
                hint="re-copy or re-download the record",
            )
    return int(sig_len) if sig_len is not None else inferred


def _wfdb_checked_header(path: str | Path) -> tuple[Path, _WfdbHeader, int]:
    base = _wfdb_record_path(path)
    header = _read_wfdb_header(base)
    if header.n_seg is not None:
        raise UnsupportedFormatError(
            _hea_path(base),
            "multi-segment WFDB records are not supported",
            hint="merge the segments into one record, e.g. with wfdb.rdrecord(..., m2s=True) + wfdb.wrsamp",
        )
    if not header.n_sig:
        raise UnsupportedFormatError(_hea_path(base), "WFDB record has no signals")
    frames = _wfdb_frames_in_file(header, base)
    if frames is None:
        raise CorruptFileError(_hea_path(base), "the header gives no length and no data file to infer it")
    if frames == 0:
        raise CorruptFileError(
            _hea_path(base), "the record holds no samples (its length is 0 or its .dat is empty)"
        )
    return base, header, frames


def read_wfdb(
    path: str | Path,
    channels: Sequence[str] | None = None,
    sampfrom: int = 0,
    sampto: int | None = None,
) -> SignalRecord:
    """Read a WFDB record with ``wfdb.rdrecord``, in physical units.

    Before wfdb reads anything, the header is checked (it must be WFDB text) and every ``.dat`` it
    names must exist and hold exactly ``byte_offset + sig_len × samples-per-frame × bytes-per-sample``
    bytes for its format (8, 16, 24, 32, 61, 80, 160, 212, 310, 311; FLAC formats 508/516/524 are left
    to wfdb).

    Multi-frequency records (signals with different samples per frame) are read with
    ``smooth_frames=False`` and every returned channel is resampled to the highest rate among them,
    ``fs × max(samples per frame)``, with :func:`resample_to_rate` (exact integer ratio). A record whose
    signals all have the same samples per frame ``k > 1`` is returned at ``fs × k`` without resampling.

    Args:
        path: the record, with or without ``.hea``/``.dat``.
        channels: names to read, in this order (matched through :func:`normalize_channel_name`);
            ``None`` reads all.
        sampfrom, sampto: the sample range ``[sampfrom, sampto)`` at the returned rate (for a
            multi-frequency record the enclosing frames are read, resampled, then cut).

    Returns:
        A :class:`SignalRecord`, data ``(C, T)`` float32 with gain and baseline applied and NaN where
        the file holds WFDB's invalid-sample value; ``extra`` holds the format, gains, baselines,
        header comments and samples per frame.

    Raises:
        DataError (no header), UnsupportedFormatError, CorruptFileError, MissingChannelError;
        ConfigError for a sample range outside the record.
    """
    base, header, frames = _wfdb_checked_header(path)
    names = list(header.sig_name)
    indices = select_channels(base, names, channels)
    spf = [header.samps_per_frame[i] for i in indices]
    per_frame = max(spf)
    multi = per_frame > 1
    n_total = frames * per_frame
    stop = n_total if sampto is None else int(sampto)
    if not 0 <= int(sampfrom) < stop <= n_total:
        raise ConfigError(f"{base}: sample range [{sampfrom}, {sampto}) is outside the record's {n_total}")
    frame_from = int(sampfrom) // per_frame
    frame_to = math.ceil(stop / per_frame)
    order = sorted(set(indices))
    try:
        rec = wfdb.rdrecord(
            str(base),
            sampfrom=frame_from,
            sampto=frame_to,
            channels=order,
            physical=True,
            smooth_frames=not multi,
            return_res=64,
        )
    except Exception as exc:  # whatever wfdb/numpy raise for data the checks above did not catch
        raise CorruptFileError(
            _hea_path(base), f"wfdb could not read the samples ({type(exc).__name__}: {exc})"
        ) from None
    position = {ch: k for k, ch in enumerate(order)}
    if multi:
        columns = []
        for ch, k in zip(indices, spf, strict=True):
            x = np.asarray(rec.e_p_signal[position[ch]], dtype=np.float64)
            columns.append(resample_to_rate(x, per_frame, k))
        data = np.stack(columns)
    else:
        data = np.asarray(rec.p_signal, dtype=np.float64).T[[position[ch] for ch in indices]]
    start = int(sampfrom) - frame_from * per_frame
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(data[:, start : start + stop - int(sampfrom)], dtype=np.float32)
    check_no_infinite(_hea_path(base), data, [names[i] for i in indices])
    units = tuple(
        "" if rec.units[position[i]] in (None, "NU") else str(rec.units[position[i]]) for i in indices
    )
    extra: dict[str, Any] = {
        "format": "wfdb",
        "fmt": [str(rec.fmt[position[i]]) for i in indices],
        "adc_gain": [float(rec.adc_gain[position[i]]) for i in indices],
        "baseline": [int(rec.baseline[position[i]]) for i in indices],
        "samps_per_frame": spf,
        "frame_fs": float(header.fs),
        "resampled": bool(multi and len(set(spf)) > 1),
        "comments": list(header.comments),
        "sampfrom": int(sampfrom),
    }
    if rec.base_date is not None:
        extra["base_date"] = rec.base_date.isoformat()
    if rec.base_time is not None:
        extra["base_time"] = rec.base_time.isoformat()
    return SignalRecord(
        data=data,
        fs=float(header.fs) * per_frame,
        channel_names=tuple(names[i] for i in indices),
        units=units,
        path=str(base),
        extra=extra,
    )


def _wfdb_header(path: str | Path) -> SignalHeader:
    base, header, frames = _wfdb_checked_header(path)
    per_frame = max(header.samps_per_frame)
    return SignalHeader(
        path=str(base),
        fs=float(header.fs) * per_frame,
        n_samples=frames * per_frame,
        channel_names=header.sig_name,
        units=tuple("" if u == "NU" else u for u in header.units),
        format="wfdb",
    )


# --------------------------------------------------------------------------------------------------
# EDF / BDF
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EdfHeader:
    file_type: str  # "EDF" or "BDF"
    header_bytes: int
    n_records: int  # -1 = unknown
    record_duration: float
    labels: tuple[str, ...]  # every signal, annotation signals included
    units: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    file_size: int

    @property
    def data_indices(self) -> list[int]:
        """Indices of the ordinary (non-annotation) signals, in file order (pyedflib's numbering)."""
        return [
            i for i, label in enumerate(self.labels) if label not in ("EDF Annotations", "BDF Annotations")
        ]

    @property
    def bytes_per_sample(self) -> int:
        return 3 if self.file_type == "BDF" else 2


def _edf_number(path: Path, raw: bytes, what: str, kind: type) -> Any:
    text = raw.decode("ascii", errors="replace").strip()
    try:
        return kind(text)
    except ValueError:
        raise CorruptFileError(path, f"EDF header field '{what}' is not a number: {text!r}") from None


def _parse_edf_header(path: Path) -> _EdfHeader:
    """Parse the fixed EDF/BDF header and check the file size against it.

    Raises:
        DataError (no file), UnsupportedFormatError (not EDF/BDF), CorruptFileError (bad header fields,
        truncated or over-long data).
    """
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            fixed = f.read(256)
            if fixed[:8] == b"0       ":
                file_type = "EDF"
            elif fixed[:8] == b"\xffBIOSEMI":
                file_type = "BDF"
            else:
                raise UnsupportedFormatError(
                    path,
                    "not an EDF/BDF file: it does not start with the EDF version field '0' "
                    "(or BDF's '\\xffBIOSEMI')",
                )
            if len(fixed) < 256:
                raise CorruptFileError(path, f"EDF header is truncated: the file holds {size} bytes")
            header_bytes = _edf_number(path, fixed[184:192], "number of bytes in header", int)
            n_records = _edf_number(path, fixed[236:244], "number of data records", int)
            duration = _edf_number(path, fixed[244:252], "duration of a data record", float)
            ns = _edf_number(path, fixed[252:256], "number of signals", int)
            if ns <= 0 or header_bytes != 256 * (ns + 1):
                raise CorruptFileError(
                    path, f"EDF header declares {ns} signals but a header of {header_bytes} bytes"
                )
            signal_header = f.read(256 * ns)
    except OSError as exc:
        raise CorruptFileError(path, f"file cannot be read ({exc.strerror or exc})") from None
    if len(signal_header) < 256 * ns:
        raise CorruptFileError(path, f"EDF signal headers are truncated: the file holds {size} bytes")

    def field(offset: int, width: int, i: int) -> bytes:
        start = offset * ns + width * i
        return signal_header[start : start + width]

    labels = tuple(field(0, 16, i).decode("latin-1").strip() for i in range(ns))
    units = tuple(field(96, 8, i).decode("latin-1").strip() for i in range(ns))
    spr = tuple(
        _edf_number(path, field(216, 8, i), f"samples per record of signal {labels[i]!r}", int)
        for i in range(ns)
    )
    if min(spr) < 0:
        raise CorruptFileError(path, f"EDF header declares a negative number of samples per record {spr}")
    if n_records < -1:
        raise CorruptFileError(path, f"EDF header declares {n_records} data records")
    if any(spr) and not (math.isfinite(duration) and duration > 0 and math.isfinite(max(spr) / duration)):
        raise CorruptFileError(path, f"EDF header declares a data record duration of {duration} s")
    if any(spr):
        _check_rate(path, max(spr) / duration, "the EDF header (samples per record / record duration)")
    for i, label in enumerate(labels):
        if label not in ("EDF Annotations", "BDF Annotations"):
            _check_edf_scaling(path, label, *(field(offset, 8, i) for offset in (104, 112, 120, 128)))
    header = _EdfHeader(file_type, header_bytes, n_records, duration, labels, units, spr, size)
    if n_records >= 0:
        expected = header_bytes + n_records * sum(spr) * header.bytes_per_sample
        if size != expected:
            what = "the file is truncated" if size < expected else "the file is longer than its header says"
            raise CorruptFileError(
                path,
                f"header declares {n_records} data records ({expected} bytes) but the file holds "
                f"{size} bytes: {what}",
                hint="re-copy or re-export the recording",
            )
    return header


def _check_edf_scaling(
    path: Path, label: str, physical_min: bytes, physical_max: bytes, digital_min: bytes, digital_max: bytes
) -> None:
    """The digital → physical scaling of one signal must be finite and invertible (as EDF requires:
    digital maximum > digital minimum, physical maximum != physical minimum)."""
    pmin = _edf_number(path, physical_min, f"physical minimum of signal {label!r}", float)
    pmax = _edf_number(path, physical_max, f"physical maximum of signal {label!r}", float)
    dmin = _edf_number(path, digital_min, f"digital minimum of signal {label!r}", int)
    dmax = _edf_number(path, digital_max, f"digital maximum of signal {label!r}", int)
    with np.errstate(over="ignore"):
        gain = (np.float64(pmax) - np.float64(pmin)) / (dmax - dmin) if dmax != dmin else np.inf
    usable = math.isfinite(pmin) and math.isfinite(pmax) and pmax != pmin and dmax > dmin
    if not (usable and np.isfinite(gain)):
        raise CorruptFileError(
            path,
            f"signal {label!r} has an unusable scaling: physical range {pmin:g}..{pmax:g}, digital range "
            f"{dmin}..{dmax} (EDF needs finite physical limits that differ and digital maximum > minimum)",
            hint="repair the signal header or re-export the recording",
        )


def _edf_n_records(header: _EdfHeader) -> int:
    if header.n_records >= 0:
        return header.n_records
    per_record = sum(header.samples_per_record) * header.bytes_per_sample
    return (header.file_size - header.header_bytes) // per_record if per_record else 0


def read_edf(path: str | Path, channels: Sequence[str] | None = None) -> SignalRecord:
    """Read an EDF, EDF+ or BDF file with pyedflib, in physical units.

    The fixed header is parsed and the file size checked against it first (pyedflib would otherwise
    only print a size mismatch). Annotation signals (``EDF Annotations``) are skipped. Channels with
    different rates are resampled to the highest rate among the returned channels (all, or those
    ``channels`` selects) with :func:`resample_to_rate` at the exact ratio of samples per data record.

    Args:
        path: the ``.edf``/``.bdf`` file.
        channels: names to read, in this order (matched through :func:`normalize_channel_name`).

    Returns:
        A :class:`SignalRecord`; units from each signal's physical dimension (``"uV"``, ``"mV"``);
        ``extra`` holds the file type, start time and data-record duration (not the patient fields).

    Raises:
        DataError (no file), UnsupportedFormatError, CorruptFileError, MissingChannelError.
    """
    p = Path(path)
    header = _parse_edf_header(p)
    data_idx = header.data_indices
    names = [header.labels[i] for i in data_idx]
    indices = select_channels(p, names, channels)
    n_records = _edf_n_records(header)
    counts = [header.samples_per_record[data_idx[i]] * n_records for i in indices]
    if not counts or max(counts) == 0:
        raise CorruptFileError(p, "EDF file holds no samples for the requested channels")
    try:
        reader = pyedflib.EdfReader(str(p))
    except Exception as exc:  # pyedflib raises OSError with its own reason
        raise CorruptFileError(p, f"pyedflib cannot open the file ({type(exc).__name__}: {exc})") from None
    try:
        if reader.signals_in_file != len(names):
            raise CorruptFileError(
                p, f"pyedflib sees {reader.signals_in_file} signals but the header lists {len(names)}"
            )
        start = reader.getStartdatetime()
        columns = []
        n_max = max(counts)
        for i, n in zip(indices, counts, strict=True):
            x = np.asarray(reader.readSignal(i), dtype=np.float64)
            if len(x) != n:
                raise CorruptFileError(p, f"signal {names[i]!r}: read {len(x)} samples, header declares {n}")
            columns.append(resample_to_rate(x, n_max, n) if n != n_max else x)
    except DataError:
        raise
    except Exception as exc:
        raise CorruptFileError(p, f"pyedflib cannot read the samples ({type(exc).__name__}: {exc})") from None
    finally:
        reader.close()
    spr_max = max(header.samples_per_record[data_idx[i]] for i in indices)
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(np.stack(columns), dtype=np.float32)
    check_no_infinite(p, data, [names[i] for i in indices])
    return SignalRecord(
        data=data,
        fs=spr_max / header.record_duration,
        channel_names=tuple(names[i] for i in indices),
        units=tuple(header.units[data_idx[i]] for i in indices),
        path=str(p),
        extra={
            "format": header.file_type.lower(),
            "start": start.isoformat(),
            "record_duration_s": header.record_duration,
            "n_data_records": n_records,
            "resampled": len(set(counts)) > 1,
        },
    )


def _edf_header(path: str | Path) -> SignalHeader:
    p = Path(path)
    header = _parse_edf_header(p)
    data_idx = header.data_indices
    if not data_idx:
        raise CorruptFileError(p, "EDF file holds no signals (only annotations)")
    spr_max = max(header.samples_per_record[i] for i in data_idx)
    if spr_max == 0:
        raise CorruptFileError(p, "EDF header declares 0 samples per data record for every signal")
    return SignalHeader(
        path=str(p),
        fs=spr_max / header.record_duration,
        n_samples=_edf_n_records(header) * spr_max,
        channel_names=tuple(header.labels[i] for i in data_idx),
        units=tuple(header.units[i] for i in data_idx),
        format="edf",
    )


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------

_UNIT_IN_NAME = re.compile(r"^(?P<name>.*?)\s*\[(?P<unit>[^\]]*)\]$")
_TIME_NAMES = {"time", "t", "timestamp", "times", "seconds", "sec", "elapsed time"}
_TIME_SCALE = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "min": 60.0,
}


def _split_column(raw: object) -> tuple[str, str]:
    """``' "II [mV]"'`` → ``("II", "mV")``: strip whitespace and quotes, split a trailing ``[unit]``."""
    text = str(raw).strip().strip("'\"").strip()
    match = _UNIT_IN_NAME.match(text)
    if match and match.group("name"):
        return match.group("name").strip(), match.group("unit").strip()
    return text, ""


def _csv_columns(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Raw header names, cleaned names and units of a CSV file."""
    head = _read_csv(path, nrows=0)
    raw = [str(c) for c in head.columns]
    split = [_split_column(c) for c in raw]
    names = [s[0] for s in split]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CorruptFileError(path, f"CSV header names column(s) {', '.join(duplicated)} more than once")
    if all(_is_number(name) for name in names):
        raise CorruptFileError(
            path,
            f"the first row holds numbers ({', '.join(raw[:4])}{', ...' if len(raw) > 4 else ''}), not "
            "column names: the header row is missing",
            hint="add a header row naming the columns (e.g. 'Time [s], PLETH, II')",
        )
    return raw, names, [s[1] for s in split]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _find_time_column(path: Path, names: list[str], time_column: str | None) -> int | None:
    if time_column is not None:
        wanted = _split_column(time_column)[0].lower()
        for i, n in enumerate(names):
            if n.lower() == wanted:
                return i
        raise MissingChannelError(
            path, f"time column {time_column!r} not found; the columns are {', '.join(names)}"
        )
    for i, n in enumerate(names):
        if n.lower() in _TIME_NAMES:
            return i
    return None


def _fs_from_time(path: Path, values: pd.Series, name: str, unit: str) -> float:
    """Sampling rate from a time column that must be regularly spaced."""
    if len(values) < 2:
        raise CorruptFileError(path, f"time column {name!r} has {len(values)} rows: too few to give a rate")
    if not pd.api.types.is_numeric_dtype(values):
        try:
            stamps = pd.to_datetime(values, format="ISO8601")
        except (ValueError, TypeError):
            raise CorruptFileError(
                path, f"time column {name!r} holds values that are neither numbers nor ISO dates"
            ) from None
        t = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    else:
        scale = _TIME_SCALE.get(unit.lower())
        if scale is None:
            raise CorruptFileError(
                path, f"time column {name!r} has an unknown unit {unit!r}", hint="pass fs="
            )
        t = values.to_numpy(dtype=np.float64) * scale
    if len(t) < 2:
        raise CorruptFileError(path, f"time column {name!r} has {len(t)} rows: too few to give a rate")
    if not np.isfinite(t).all():
        raise CorruptFileError(
            path, f"time column {name!r} has empty or infinite cells", hint="pass fs= explicitly"
        )
    if not t[-1] > t[0]:
        raise CorruptFileError(path, f"time column {name!r} does not increase", hint="pass fs= explicitly")
    # Time stamps are often written rounded (BIDMC: 3 decimals, then 2 after 100 s): each stamp may sit
    # half a unit of its last written digit off the least-squares regular grid, plus 1 % of a step.
    index = np.arange(len(t), dtype=np.float64)
    step, offset = np.polyfit(index, t, 1)
    quantum = 0.5 * _decimal_quantum(t)
    deviation = np.abs(t - (offset + step * index))
    worst = int(np.argmax(deviation - quantum))
    if deviation[worst] > quantum[worst] + 0.01 * step:
        raise CorruptFileError(
            path,
            f"time column {name!r} is not regularly spaced (line {worst + 2}: {t[worst]:.6g} s is "
            f"{deviation[worst]:.3g} s off the {step:.6g} s grid)",
            hint="pass fs= explicitly if the time stamps are only rounded, or resample the file first",
        )
    fs = _check_rate(path, 1.0 / step, f"time column {name!r}")
    # Prefer a round rate (to 0.01 Hz) when the rounding of the first and last stamps allows it.
    tolerance = fs * (quantum[0] + quantum[-1]) / (t[-1] - t[0]) + fs * 1e-9
    return float(round(fs, 2)) if abs(round(fs, 2) - fs) <= tolerance else float(fs)


def _decimal_quantum(t: np.ndarray) -> np.ndarray:
    """Per value, ``10**-d`` for the fewest decimals ``d`` (≤ 9) that write it exactly."""
    quantum = np.full(len(t), 1e-9)
    for d in range(9, -1, -1):
        exact = np.abs(t - np.round(t, d)) <= 1e-9 * np.maximum(1.0, np.abs(t))
        quantum[exact] = 10.0**-d
    return quantum


def read_csv_signal(
    path: str | Path,
    fs: float | None = None,
    channels: Sequence[str] | None = None,
    time_column: str | None = None,
) -> SignalRecord:
    """Read a signal table (``.csv`` or ``.csv.gz``, one column per channel) with pandas.

    Column names are stripped of whitespace and quotes; a trailing ``[unit]`` becomes the channel's
    unit (``"Time [s]"`` → column ``Time``, unit ``s``). The time column is ``time_column`` or, when not
    given, the first column named ``time``, ``t``, ``timestamp``, ``seconds`` or ``sec`` (any case); it is
    never returned as a channel. The rate is ``fs`` when given, else ``1 / step`` of the time column,
    which must be regularly spaced (within 1 % of its mean step) and in s, ms, us or min (from its
    ``[unit]``, seconds by default), or ISO date-times. Empty cells become NaN.

    Args:
        path: the file.
        fs: sampling rate in Hz; overrides the time column.
        channels: names to read, in this order (matched through :func:`normalize_channel_name`).
        time_column: the time column's name, when it is not one of the names above.

    Raises:
        DataError (no file, or no rate: neither ``fs`` nor a time column), CorruptFileError (unreadable,
        non-numeric cells, irregular time column), MissingChannelError; ConfigError for ``fs <= 0``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    if fs is not None and not float(fs) > 0:
        raise ConfigError(f"{p}: fs must be > 0, got {fs}")
    raw, names, units = _csv_columns(p)
    t_idx = _find_time_column(p, names, time_column)
    signal_cols = [i for i in range(len(names)) if i != t_idx]
    picked = select_channels(p, [names[i] for i in signal_cols], channels)
    cols = [signal_cols[k] for k in picked]
    if not cols:
        raise CorruptFileError(p, "CSV file has no signal columns")
    table = _read_csv(p, usecols=[raw[i] for i in ([t_idx] if t_idx is not None else []) + cols])
    if fs is None:
        if t_idx is None:
            raise DataError(
                p,
                "no sampling rate: fs not given and no time column found",
                hint="pass fs=..., or time_column=... naming the time column",
            )
        rate = _fs_from_time(p, table[raw[t_idx]], names[t_idx], units[t_idx])
    else:
        rate = float(fs)
    data = np.empty((len(cols), len(table)), dtype=np.float32)
    with np.errstate(over="ignore"):
        for row, i in enumerate(cols):
            data[row] = _numeric_column(p, table[raw[i]], names[i])
    if data.shape[1] == 0:
        raise CorruptFileError(p, "CSV file has a header but no rows")
    check_no_infinite(p, data, [names[i] for i in cols])
    return SignalRecord(
        data=data,
        fs=rate,
        channel_names=tuple(names[i] for i in cols),
        units=tuple(units[i] for i in cols),
        path=str(p),
        extra={"format": "csv", "time_column": None if t_idx is None else names[t_idx]},
    )


def _numeric_column(path: Path, column: pd.Series, name: str) -> np.ndarray:
    """Numbers of one column as pandas parsed it; empty/NA cells → NaN; any other text → CorruptFileError."""
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna() & column.astype(str).str.strip().ne("")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CorruptFileError(
            path,
            f"column {name!r} holds non-numeric values (first on line {row + 2}: {column.iloc[row]!r})",
            hint="fix or remove those cells, or leave them empty to mark missing samples",
        )
    return values.to_numpy(dtype=np.float64)


def _count_csv_rows(path: Path) -> int:
    """Data rows of a CSV file, counted by parsing its first column with pandas, so that blank lines, a
    lone ``\\r`` or control characters count exactly as they do when the file is read."""
    return len(_read_csv(path, usecols=[0], dtype=str))


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with every failure on a malformed file (pandas raises ParserError, EmptyDataError
    and plain ValueErrors; gzip raises EOFError, zlib.error, OSError) as a CorruptFileError."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise CorruptFileError(path, "the CSV file is empty (no header row)") from None
    except (ValueError, UnicodeDecodeError, EOFError, OSError, zlib.error, OverflowError) as exc:
        raise CorruptFileError(path, f"not a readable CSV table ({type(exc).__name__}: {exc})") from None


def _csv_header(path: str | Path, fs: float | None = None, time_column: str | None = None) -> SignalHeader:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    raw, names, units = _csv_columns(p)
    t_idx = _find_time_column(p, names, time_column)
    signal_cols = [i for i in range(len(names)) if i != t_idx]
    if fs is None:
        if t_idx is None:
            raise DataError(
                p,
                "no sampling rate: fs not given and no time column found",
                hint="pass fs=... (or give an fs column in the manifest table)",
            )
        t_table = _read_csv(p, usecols=[raw[t_idx]])
        rate = _fs_from_time(p, t_table[raw[t_idx]], names[t_idx], units[t_idx])
        n_rows = len(t_table)
    else:
        rate = float(fs)
        n_rows = _count_csv_rows(p)
    if not signal_cols:
        raise CorruptFileError(p, "CSV file has no signal columns")
    if n_rows == 0:
        raise CorruptFileError(p, "CSV file has a header but no rows")
    return SignalHeader(
        path=str(p),
        fs=rate,
        n_samples=n_rows,
        channel_names=tuple(names[i] for i in signal_cols),
        units=tuple(units[i] for i in signal_cols),
        format="csv",
    )


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def signal_format(path: str | Path) -> str:
    """``"wfdb"``, ``"edf"`` or ``"csv"`` from the file name (a WFDB record may be named without
    extension when its ``.hea`` exists).

    Raises:
        DataError: nothing exists at ``path``.
        UnsupportedFormatError: any other file type.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if p.suffix.lower() in (".edf", ".bdf"):
        return "edf"
    if p.suffix.lower() in (".hea", ".dat") or _hea_path(p).is_file():
        return "wfdb"
    if not p.exists():
        raise DataError(p, "file not found (and no WFDB header next to it)")
    raise UnsupportedFormatError(
        p,
        f"unknown signal file type {p.suffix or '(no extension)'!r}",
        hint="medcl reads WFDB (.hea/.dat), EDF/BDF (.edf/.bdf) and CSV (.csv, .csv.gz)",
    )


def read_signal(path: str | Path, channels: Sequence[str] | None = None, **kwargs: Any) -> SignalRecord:
    """Read any supported signal file, choosing the reader by name: ``.hea``/``.dat`` or a record path
    with a ``.hea`` sibling → :func:`read_wfdb`; ``.edf``/``.bdf`` → :func:`read_edf`; ``.csv``/``.csv.gz``
    → :func:`read_csv_signal`. ``kwargs`` go to that reader (``sampfrom``/``sampto`` for WFDB,
    ``fs``/``time_column`` for CSV).

    Raises:
        UnsupportedFormatError for other file types, and whatever the chosen reader raises.
    """
    kind = signal_format(path)
    if kind == "wfdb":
        return read_wfdb(path, channels=channels, **kwargs)
    if kind == "edf":
        return read_edf(path, channels=channels, **kwargs)
    return read_csv_signal(path, channels=channels, **kwargs)


def read_signal_header(path: str | Path, **kwargs: Any) -> SignalHeader:
    """What :func:`read_signal` would return (rate, length, channels, units), without reading samples.

    WFDB: the header (parsed with wfdb's line patterns) plus the data-size check of :func:`read_wfdb`
    (a ``stat``, not a read).
    EDF/BDF: the fixed header and the size check of :func:`read_edf`. CSV: the header row plus one
    column (the time column, to get the rate, or the first column, to count rows, when ``fs`` is given);
    ``kwargs`` are ``fs`` and ``time_column`` as for :func:`read_csv_signal`.

    Raises:
        the same :class:`~medcl.errors.DataError` subclasses as the readers, for the same files.
    """
    kind = signal_format(path)
    if kind == "csv":
        return _csv_header(path, **kwargs)
    if kwargs:
        raise TypeError(f"read_signal_header got arguments {sorted(kwargs)} that only CSV files take")
    return _wfdb_header(path) if kind == "wfdb" else _edf_header(path)
