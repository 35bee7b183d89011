"""Per-participant wearable recordings (PPG, accelerometer, watch ECG) as :class:`SignalRecord`.

A thin layer over :mod:`modalities.signals.readers`: CSV/CSV.gz tables, WFDB records and EDF files are
read by the signal readers (columns selected by name through
:func:`~modalities.signals.readers.normalize_channel_name`, whatever their order, a time column giving
the rate); this module adds Parquet tables (same column rules; needs ``pyarrow`` or ``fastparquet``,
and says so when neither is installed) and the accelerometer helpers used by motion filtering.

Errors are those of the signal readers: :class:`~medcl.errors.MissingChannelError` naming the file and
the channels it has, :class:`~medcl.errors.CorruptFileError`, and
:class:`~medcl.errors.UnsupportedFormatError` for an unknown type or a Parquet file without an engine.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medcl.errors import ConfigError, CorruptFileError, DataError, UnsupportedFormatError
from modalities.signals.readers import (
    SignalHeader,
    _find_time_column,
    _fs_from_time,
    _numeric_column,
    _split_column,
    check_no_infinite,
    read_signal,
    read_signal_header,
    select_channels,
    signal_format,
)
from modalities.signals.record import SignalRecord

__all__ = [
    "PARQUET_SUFFIXES",
    "WEARABLE_SUFFIXES",
    "accelerometer_channels",
    "accelerometer_magnitude",
    "parquet_engine",
    "read_parquet_signal",
    "read_wearable",
    "read_wearable_header",
    "wearable_format",
]

PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
WEARABLE_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", *PARQUET_SUFFIXES, ".hea", ".edf", ".bdf")
"""File names a wearable folder scan picks up (``.dat`` files come with their ``.hea``)."""

#: accelerometer axis columns: ``ACC_X``, ``accel-y``, ``Accelerometer Z``, ``ax``, ...
_ACCEL_AXIS = re.compile(r"^(acc|accel|accelerometer|a)[ _\-.]?([xyz])$", re.IGNORECASE)
_ACCEL_MAGNITUDE = re.compile(r"^(acc|accel|accelerometer)[ _\-.]?(mag|magnitude|norm|enmo)?$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------------
def wearable_format(path: str | Path) -> str:
    """``"parquet"`` for ``.parquet``/``.pq``, else what :func:`~modalities.signals.readers.signal_format`
    says (``"csv"``, ``"wfdb"``, ``"edf"``).

    Raises:
        DataError: nothing at ``path``. UnsupportedFormatError: any other file type.
    """
    if Path(path).suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    try:
        return signal_format(path)
    except UnsupportedFormatError as error:
        raise UnsupportedFormatError(
            error.path,
            error.reason,
            hint="wearable recordings are read from CSV (.csv, .csv.gz), Parquet (.parquet), "
            "WFDB (.hea/.dat) "
            "and EDF (.edf/.bdf)",
        ) from None


def parquet_engine(path: str | Path | None = None) -> str:
    """The installed Parquet engine pandas will use: ``"pyarrow"`` or ``"fastparquet"``.

    Raises:
        UnsupportedFormatError: neither is installed (naming both packages and the way out).
    """
    for engine in ("pyarrow", "fastparquet"):
        if importlib.util.find_spec(engine) is not None:
            return engine
    raise UnsupportedFormatError(
        path,
        "reading Parquet needs the package pyarrow (or fastparquet), and neither is installed",
        hint="pip install pyarrow, or save the table as CSV (.csv or .csv.gz)",
    )


def _read_parquet_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    engine = parquet_engine(path)
    try:
        return pd.read_parquet(path, engine=engine, columns=None if columns is None else list(columns))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptFileError(path, f"not a readable Parquet table ({type(exc).__name__}: {exc})") from None


def _parquet_columns(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Raw names, cleaned names and units of a Parquet table's columns (read from its schema)."""
    engine = parquet_engine(path)
    try:
        if engine == "pyarrow":
            import pyarrow.parquet as pq

            raw = [str(name) for name in pq.read_schema(path).names]
        else:
            from fastparquet import ParquetFile

            raw = [str(name) for name in ParquetFile(str(path)).columns]
    except Exception as exc:  # each engine raises its own types for a damaged file
        raise CorruptFileError(path, f"not a readable Parquet table ({type(exc).__name__}: {exc})") from None
    raw = [name for name in raw if not name.startswith("__index_level_")]
    split = [_split_column(c) for c in raw]
    names = [s[0] for s in split]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CorruptFileError(path, f"Parquet table names column(s) {', '.join(duplicated)} more than once")
    return raw, names, [s[1] for s in split]


def read_parquet_signal(
    path: str | Path,
    fs: float | None = None,
    channels: Sequence[str] | None = None,
    time_column: str | None = None,
) -> SignalRecord:
    """Read a signal table stored as Parquet, with the rules of
    :func:`~modalities.signals.readers.read_csv_signal` (one column per channel, ``"name [unit]"``
    headers, a time column giving the rate unless ``fs`` is given, channels matched by name).

    Raises:
        DataError (no file, or no rate), UnsupportedFormatError (no Parquet engine installed),
        CorruptFileError, MissingChannelError; ConfigError for ``fs <= 0``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    if fs is not None and not float(fs) > 0:
        raise ConfigError(f"{p}: fs must be > 0, got {fs}")
    raw, names, units = _parquet_columns(p)
    t_idx = _find_time_column(p, names, time_column)
    signal_cols = [i for i in range(len(names)) if i != t_idx]
    picked = select_channels(p, [names[i] for i in signal_cols], channels)
    cols = [signal_cols[k] for k in picked]
    if not cols:
        raise CorruptFileError(p, "Parquet table has no signal columns")
    table = _read_parquet_table(p, [raw[i] for i in ([t_idx] if t_idx is not None else []) + cols])
    if fs is None:
        if t_idx is None:
            raise DataError(
                p,
                "no sampling rate: fs not given and no time column found",
                hint="pass fs=... or time_column=...",
            )
        rate = _fs_from_time(p, table[raw[t_idx]], names[t_idx], units[t_idx])
    else:
        rate = float(fs)
    if len(table) == 0:
        raise CorruptFileError(p, "Parquet table has columns but no rows")
    with np.errstate(over="ignore"):
        data = np.stack([_numeric_column(p, table[raw[i]], names[i]) for i in cols]).astype(np.float32)
    check_no_infinite(p, data, [names[i] for i in cols])
    return SignalRecord(
        data=data,
        fs=rate,
        channel_names=tuple(names[i] for i in cols),
        units=tuple(units[i] for i in cols),
        path=str(p),
        extra={"format": "parquet", "time_column": None if t_idx is None else names[t_idx]},
    )


def _parquet_header(path: Path, fs: float | None = None, time_column: str | None = None) -> SignalHeader:
    if not path.is_file():
        raise DataError(path, "file not found")
    raw, names, units = _parquet_columns(path)
    t_idx = _find_time_column(path, names, time_column)
    if fs is None and t_idx is None:
        raise DataError(path, "no sampling rate: fs not given and no time column found", hint="pass fs=...")
    first = raw[t_idx] if t_idx is not None else raw[0]
    column = _read_parquet_table(path, [first])[first]
    rate = float(fs) if fs is not None else _fs_from_time(path, column, names[t_idx], units[t_idx])
    signal_cols = [i for i in range(len(names)) if i != t_idx]
    if not signal_cols:
        raise CorruptFileError(path, "Parquet table has no signal columns")
    if len(column) == 0:
        raise CorruptFileError(path, "Parquet table has columns but no rows")
    return SignalHeader(
        path=str(path),
        fs=rate,
        n_samples=len(column),
        channel_names=tuple(names[i] for i in signal_cols),
        units=tuple(units[i] for i in signal_cols),
        format="parquet",
    )


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------
def read_wearable(
    path: str | Path,
    channels: Sequence[str] | None = None,
    fs: float | None = None,
    time_column: str | None = None,
) -> SignalRecord:
    """Read one wearable recording: Parquet here, CSV/WFDB/EDF with
    :func:`~modalities.signals.readers.read_signal`. ``fs`` and ``time_column`` apply to tables only
    (a WFDB or EDF header knows its rate).

    Args:
        path: the file (a WFDB record may be named without extension).
        channels: channels to read, in this order, matched by name (``" PLETH"`` finds ``PLETH``).
        fs: sampling rate of a table without a time column (overrides the time column).
        time_column: the time column's name when it is not ``time``/``t``/``timestamp``/...

    Raises:
        the reader's :class:`~medcl.errors.DataError` subclasses (see the module docstring).
    """
    kind = wearable_format(path)
    if kind == "parquet":
        return read_parquet_signal(path, fs=fs, channels=channels, time_column=time_column)
    if kind == "csv":
        return read_signal(path, channels=channels, fs=fs, time_column=time_column)
    return read_signal(path, channels=channels)


def read_wearable_header(
    path: str | Path, fs: float | None = None, time_column: str | None = None
) -> SignalHeader:
    """Rate, length, channels and units of a wearable recording, without reading its samples (Parquet:
    the schema and one column; CSV/WFDB/EDF: :func:`~modalities.signals.readers.read_signal_header`)."""
    kind = wearable_format(path)
    if kind == "parquet":
        return _parquet_header(Path(path), fs=fs, time_column=time_column)
    if kind == "csv":
        return read_signal_header(path, fs=fs, time_column=time_column)
    return read_signal_header(path)


# --------------------------------------------------------------------------------------------------
# accelerometer
# --------------------------------------------------------------------------------------------------
def accelerometer_channels(channel_names: Sequence[str]) -> list[str]:
    """The accelerometer channels among ``channel_names``: three axis channels (``ACC_X``, ``accel_y``,
    ``Accelerometer Z``, ``ax`` ...), in x, y, z order, when all three are there; else one magnitude
    channel (``ACC``, ``acc_mag``, ``accelerometer magnitude``, ``ENMO``); else none."""
    axes: dict[str, str] = {}
    magnitude: list[str] = []
    for name in channel_names:
        text = str(name).strip()
        match = _ACCEL_AXIS.match(text)
        if match:
            axes.setdefault(match.group(2).lower(), str(name))
        elif _ACCEL_MAGNITUDE.match(text) or text.lower() == "enmo":
            magnitude.append(str(name))
    if all(axis in axes for axis in "xyz"):
        return [axes["x"], axes["y"], axes["z"]]
    return magnitude[:1]


def accelerometer_magnitude(data: np.ndarray) -> np.ndarray:
    """Per-sample magnitude of an accelerometer: ``sqrt(x² + y² + z²)`` of 3 axis channels, or the one
    channel itself when it already is a magnitude.

    Args:
        data: ``(3, T)`` axes or ``(1, T)`` magnitude.

    Returns:
        ``(T,)`` float64 (NaN where any axis is NaN).
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] not in (1, 3):
        raise ValueError(f"accelerometer data must be (3, T) axes or (1, T) magnitude, got {x.shape}")
    if x.shape[0] == 1:
        return np.abs(x[0])
    return np.sqrt((x * x).sum(axis=0))
