"""Manifests of wearable data sets: one row per recording (a *session*) of a *participant*.

The table has the columns of :mod:`modalities.signals.manifests` (``path``, ``patient_id``,
``trial_id``, ``format``, ``fs``, ``n_samples``, ``channel_names``; ``patient_id`` is the participant
and ``trial_id`` the session/recording), plus per-data-set extras. Builders read headers only.

- :func:`bidmc_manifest`: BIDMC PPG and Respiration (Pimentel et al. 2016; ``../shared/data/bidmc``).
  One trial per 8-minute recording ``bidmc_NN_Signals.csv(.gz)``; the participant is the MIMIC-II
  subject the recording came from (``_Fix.txt``: "MIMIC II matched wdb ID"). Several BIDMC recordings
  are one person: 06-09 are MIMIC-II subject s03386, 20-23 are s11342, 38-39 are s25323, so subjects
  01-40 are 33 participants. Keeping them together matters twice: participant contrast gets real
  positives across recordings, and participant-held-out evaluation does not test on a person it
  trained on. Extras: ``record`` (``"06"``), ``age`` (float; ``"90+"`` → 90, unknown → NaN), ``sex``
  (``"M"``/``"F"``/``""``), ``location`` (ICU type: ``"micu"``, ``"ccu"``, ...), ``mimic_segment``.
- :func:`participant_manifest`: any folder of per-participant files, ``ROOT/<participant>/<session>.csv``
  (also ``.csv.gz``, ``.parquet``, WFDB, EDF; sessions may sit in sub-folders), or a table listing
  them.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.bundled import resolve_root
from modalities.signals.manifests import Manifest, _Missing, _relative, _trial, _trials_frame
from modalities.signals.readers import SignalHeader
from modalities.wearables.readers import PARQUET_SUFFIXES, WEARABLE_SUFFIXES, read_wearable_header

__all__ = [
    "BIDMC_EXTRAS",
    "WEARABLE_BUILDERS",
    "bidmc_manifest",
    "build_wearable_manifest",
    "detect_wearable_layout",
    "participant_manifest",
    "read_bidmc_fix",
]

BIDMC_EXTRAS: tuple[str, ...] = ("record", "age", "sex", "location", "mimic_segment")
_BIDMC_SIGNALS = re.compile(r"^bidmc_(\d+)_Signals\.csv(\.gz)?$")
_TABLE_TEXT = ("path", "participant_id", "patient_id", "session_id", "trial_id", "label", "labels")


# --------------------------------------------------------------------------------------------------
# BIDMC
# --------------------------------------------------------------------------------------------------
def _bidmc_folder(root: str | Path) -> Path:
    folder = resolve_root(root)
    if not any(_BIDMC_SIGNALS.match(p.name) for p in folder.iterdir()) and (folder / "bidmc_csv").is_dir():
        folder = folder / "bidmc_csv"
    return folder.resolve()


def read_bidmc_fix(path: str | Path) -> dict[str, Any]:
    """The fixed parameters of one BIDMC recording (``bidmc_NN_Fix.txt``: ``Key: value`` lines).

    Returns:
        ``participant`` (the MIMIC-II subject, e.g. ``"s03386"``; ``None`` if the file has none),
        ``mimic_segment``, ``age`` (float; ``"90+"`` → 90.0, ``NaN`` when unknown), ``sex`` (``"M"``,
        ``"F"`` or ``""``), ``location`` (lower case, ``""`` when absent).

    Raises:
        DataError: the file is missing. CorruptFileError: it is not a text file of ``Key: value`` lines.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, OSError) as exc:
        raise CorruptFileError(p, f"not a readable text file ({type(exc).__name__})") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    if "age" not in fields and "gender" not in fields and "mimic ii matched wdb id" not in fields:
        raise CorruptFileError(
            p, "no 'Age:', 'Gender:' or 'MIMIC II matched wdb ID:' line: not a BIDMC _Fix.txt"
        )
    raw_age = fields.get("age", "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*\+?", raw_age)
    age = float(match.group(1)) if match else math.nan
    sex = fields.get("gender", "").strip().upper()
    return {
        "participant": fields.get("mimic ii matched wdb id") or None,
        "mimic_segment": fields.get("mimic ii data segment", ""),
        "age": age,
        "sex": sex if sex in ("M", "F") else "",
        "location": fields.get("location", "").strip().lower(),
    }


def bidmc_manifest(root: str | Path) -> Manifest:
    """BIDMC: one trial per ``bidmc_NN_Signals.csv(.gz)`` (see the module docstring).

    ``root`` is the data set folder or its ``bidmc_csv/`` sub-folder. ``trial_id`` is ``"bidmc_NN"``;
    ``patient_id`` the MIMIC-II subject of ``bidmc_NN_Fix.txt``. A recording without a readable
    ``_Fix.txt`` (its participant is unknown) or whose signal header cannot be read goes to ``missing``,
    as does a ``_Fix.txt`` without its signals.

    Raises:
        ConfigError: ``root`` is not a folder. DataError: no ``bidmc_NN_Signals.csv(.gz)`` in it.
    """
    folder = _bidmc_folder(root)
    signals = sorted(
        ((m, p) for p in folder.iterdir() if (m := _BIDMC_SIGNALS.match(p.name)) and p.is_file()),
        key=lambda pair: pair[1].name,
    )
    if not signals:
        raise DataError(folder, "no BIDMC recordings here (files named bidmc_NN_Signals.csv or .csv.gz)")
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    records = {m.group(1) for m, _ in signals}
    for fix in sorted(folder.glob("bidmc_*_Fix.txt")):
        number = fix.name.split("_")[1]
        if number not in records:
            missing.add(
                folder / f"bidmc_{number}_Signals.csv.gz", f"{fix.name} is here but its signals are not"
            )
    for match, path in signals:
        number = match.group(1)
        fix_path = folder / f"bidmc_{number}_Fix.txt"
        try:
            fix = read_bidmc_fix(fix_path)
        except DataError as exc:
            missing.add(path, f"participant unknown: {fix_path.name}: {exc.reason}", type(exc).__name__)
            continue
        if fix["participant"] is None:
            missing.add(
                path, f"participant unknown: {fix_path.name} names no MIMIC II subject", "CorruptFileError"
            )
            continue
        try:
            header = read_wearable_header(path)
        except DataError as exc:
            missing.add(path, exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__)
            continue
        rows.append(
            _trial(
                header,
                fix["participant"],
                f"bidmc_{number}",
                record=number,
                age=fix["age"],
                sex=fix["sex"],
                location=fix["location"],
                mimic_segment=fix["mimic_segment"],
            )
        )
    trials = _trials_frame(rows, optional=BIDMC_EXTRAS)
    for column in ("record", "sex", "location", "mimic_segment"):
        trials[column] = trials[column].fillna("").astype(str)
    trials["age"] = trials["age"].astype(float)
    return Manifest(trials=trials, events=None, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# Any per-participant folder
# --------------------------------------------------------------------------------------------------
def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(WEARABLE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_recording(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(WEARABLE_SUFFIXES) and not path.name.startswith(".")


def _header_or_missing(path: Path, missing: _Missing, fs: float | None) -> SignalHeader | None:
    table = path.name.lower().endswith((".csv", ".csv.gz", *PARQUET_SUFFIXES))
    try:
        return read_wearable_header(path, fs=fs) if table else read_wearable_header(path)
    except DataError as exc:
        entry = path.with_suffix("") if path.suffix.lower() == ".hea" else path
        missing.add(entry, exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__)
        return None


def participant_manifest(
    root: str | Path, table: str | Path | None = None, pattern: str | None = None, fs: float | None = None
) -> Manifest:
    """A folder of per-participant recordings.

    Without ``table``: every ``.csv``, ``.csv.gz``, ``.parquet``/``.pq``, ``.hea``, ``.edf`` or ``.bdf``
    file under ``root`` (hidden files and folders skipped), matching ``pattern`` if given (``Path.match``
    on the path relative to ``root``). The participant is the file's first folder under ``root``
    (``ROOT/p01/day1/watch.csv`` → ``"p01"``); a file at the top of ``root`` is its own participant (its
    name without extension). The session (``trial_id``) is the path relative to ``root`` without extension
    (``"p01/day1/watch"``).

    With ``table`` (a CSV, looked up in ``root`` first): one session per line with ``path`` (relative to
    ``root`` or absolute) and ``participant_id`` (or ``patient_id``), optionally ``session_id`` (or
    ``trial_id``), ``fs`` (for tables without a time column), ``label``/``labels`` and any other column,
    carried over as an extra.

    Files whose header cannot be read (including Parquet without pyarrow) go to ``missing`` with the
    reason.

    Raises:
        ConfigError: ``root`` is not a folder. DataError: no recording found; the table is absent, lacks
            ``path`` or a participant column, or repeats a session id.
    """
    folder = resolve_root(root).resolve()
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    if table is None:
        files = sorted(
            p
            for p in folder.rglob("*")
            if _is_recording(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if pattern is not None:
            files = [p for p in files if Path(_relative(p, folder)).match(pattern)]
        if not files:
            raise DataError(
                folder,
                f"no wearable recordings ({', '.join(WEARABLE_SUFFIXES)}) found"
                + (f" matching {pattern!r}" if pattern else ""),
            )
        for file in files:
            header = _header_or_missing(file, missing, fs)
            if header is None:
                continue
            parts = file.relative_to(folder).parts
            participant = parts[0] if len(parts) > 1 else _strip_suffix(file.name)
            session = _strip_suffix(_relative(file, folder))
            rows.append(_trial(header, participant, session))
        return Manifest(trials=_trials_frame(rows), events=None, missing=missing.frame())

    table_path = Path(table)
    if not table_path.is_absolute() and (folder / table_path).is_file():
        table_path = folder / table_path
    if not table_path.is_file():
        raise DataError(table_path, "participant table not found")
    try:
        frame = pd.read_csv(table_path, dtype={c: str for c in _TABLE_TEXT})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(
            table_path, f"not a readable CSV table ({type(exc).__name__}: {exc})"
        ) from None
    participant_column = next((c for c in ("participant_id", "patient_id") if c in frame.columns), None)
    if "path" not in frame.columns or participant_column is None:
        raise DataError(table_path, "the participant table needs columns path and participant_id")
    session_column = next((c for c in ("session_id", "trial_id") if c in frame.columns), None)
    reserved = {"path", "participant_id", "patient_id", "session_id", "trial_id", "fs", "format"}
    extras = [c for c in frame.columns if c not in reserved]
    for line, entry in enumerate(frame.to_dict("records"), start=2):
        raw_path, participant = entry["path"], entry[participant_column]
        if not isinstance(raw_path, str) or not raw_path.strip() or not isinstance(participant, str):
            missing.add(
                str(raw_path), f"line {line} of {table_path.name} has no path or no participant", "DataError"
            )
            continue
        file = Path(raw_path.strip())
        file = file if file.is_absolute() else folder / file
        if not file.exists() and not file.with_name(file.name + ".hea").is_file():
            missing.add(str(file), f"listed on line {line} of {table_path.name} but not on disk")
            continue
        row_fs = entry.get("fs")
        header = _header_or_missing(
            file, missing, float(row_fs) if row_fs is not None and not pd.isna(row_fs) else fs
        )
        if header is None:
            continue
        session = entry.get(session_column) if session_column else None
        if not isinstance(session, str) or not session.strip():
            session = _strip_suffix(_relative(file, folder))
        extra = {c: entry[c] for c in extras}
        for c in ("label", "labels"):
            if c in extra and not isinstance(extra[c], str):
                extra[c] = ""
        rows.append(_trial(header, participant.strip(), session.strip(), **extra))
    trials = _trials_frame(rows, optional=extras)
    repeated = trials["trial_id"][trials["trial_id"].duplicated()].unique()
    if len(repeated):
        raise DataError(table_path, f"session id(s) {', '.join(repeated[:5])} appear on more than one line")
    return Manifest(trials=trials, events=None, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------
WEARABLE_BUILDERS: dict[str, Callable[..., Manifest]] = {
    "bidmc": bidmc_manifest,
    "participants": participant_manifest,
}


def detect_wearable_layout(root: str | Path) -> str:
    """``"bidmc"`` when ``root`` (or its ``bidmc_csv/``) holds ``bidmc_NN_Signals.csv(.gz)`` files, else
    ``"participants"``."""
    folder = resolve_root(root)
    for candidate in (folder, folder / "bidmc_csv"):
        if candidate.is_dir() and any(_BIDMC_SIGNALS.match(p.name) for p in candidate.iterdir()):
            return "bidmc"
    return "participants"


def build_wearable_manifest(dataset: str, root: str | Path, **kwargs: Any) -> Manifest:
    """The manifest of ``dataset`` (``"bidmc"``, ``"participants"`` or ``"auto"``) at ``root``;
    ``kwargs`` go to the builder (``table``, ``pattern``, ``fs`` for ``"participants"``).

    Raises:
        ConfigError: an unknown data set or an argument its builder does not take.
    """
    if dataset == "auto":
        dataset = detect_wearable_layout(root)
    builder = WEARABLE_BUILDERS.get(dataset)
    if builder is None:
        raise ConfigError(
            f"unknown wearable dataset {dataset!r}; choose one of {', '.join(WEARABLE_BUILDERS)}"
        )
    accepted = [name for name in inspect.signature(builder).parameters if name != "root"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{dataset} manifest takes no argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) or 'none'}"
        )
    return builder(root, **kwargs)
