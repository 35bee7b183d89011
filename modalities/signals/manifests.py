"""Manifest builders: one table row per trial (recording) of an ECG/EEG dataset, from headers only.

Every builder returns a :class:`Manifest`. Its ``trials`` table has these columns, in this order:

=================  ===============================================================================
``path``           absolute path of the recording as a string (WFDB: the record path without
                   extension, e.g. ``/data/mitdb/101``; EDF/CSV: the file)
``patient_id``     the person, a string (``"15709"``, ``"201"``, ``"Subject03"``)
``trial_id``       the recording, a string unique in the manifest
``format``         ``"wfdb"``, ``"edf"`` or ``"csv"``
``fs``             sampling rate in Hz as the reader returns it (float)
``n_samples``      samples per channel at ``fs`` (int)
``channel_names``  the file's channel names joined by ``"|"``
=================  ===============================================================================

then, where the dataset has them, ``labels`` (class names joined by ``"|"``, ``""`` = none),
``label`` (one class name), ``fold`` (int) and dataset extras (``age``, ``sex``, ...), documented per
builder. ``events`` (or ``None``) holds per-dataset annotations with a ``trial_id`` column; ``missing``
(columns ``path``, ``reason``, and ``error``: ``"NotOnDisk"`` or the :class:`~medcl.errors.DataError`
type) lists the entries the dataset's own index (``ptbxl_database.csv``, ``RECORDS``, a manifest
table, a folder scan) names but that are not on disk, or whose header or data size is wrong (the
header check includes the ``.dat``/EDF size check): the indexer (:mod:`modalities.signals.indexing`)
quarantines them.

Builders read headers, never samples (:func:`~modalities.signals.readers.read_signal_header`), so
they take about a second for a few hundred records. Roots may be ``"bundled:<name>"``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import wfdb

from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.bundled import resolve_root
from modalities.signals.labels import aami_class, ptbxl_superclasses, read_scp_statements
from modalities.signals.readers import SignalHeader, read_signal_header

__all__ = [
    "EVENT_COLUMNS",
    "MISSING_COLUMNS",
    "MITDB_DS1",
    "MITDB_DS2",
    "MITDB_PACED",
    "MITDB_SAME_PATIENT",
    "REQUIRED_COLUMNS",
    "SIGNAL_SUFFIXES",
    "Manifest",
    "build_manifest",
    "detect_layout",
    "eegmat_manifest",
    "folder_manifest",
    "mitdb_manifest",
    "ptbxl_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "trial_id",
    "format",
    "fs",
    "n_samples",
    "channel_names",
)
MISSING_COLUMNS: tuple[str, ...] = ("path", "reason")
EVENT_COLUMNS: tuple[str, ...] = ("trial_id", "sample", "symbol", "aami_class")
"""Columns of MIT-BIH's ``events``: the trial, the annotation's sample index at the record's ``fs``,
the WFDB beat symbol and its AAMI class."""

MITDB_SAME_PATIENT: dict[str, str] = {"202": "201"}
_DS1 = "101 106 108 109 112 114 115 116 118 119 122 124 201 203 205 207 208 209 215 220 223 230"
_DS2 = "100 103 105 111 113 117 121 123 200 202 210 212 213 214 219 221 222 228 231 232 233 234"
MITDB_DS1: tuple[str, ...] = tuple(_DS1.split())
"""Training half (DS1) of de Chazal et al.'s (2004) inter-patient split of MIT-BIH (no paced records)."""
MITDB_DS2: tuple[str, ...] = tuple(_DS2.split())
"""Test half (DS2) of the same split."""
MITDB_PACED: tuple[str, ...] = ("102", "104", "107", "217")
"""The four MIT-BIH records with paced beats, left out of both halves by de Chazal et al."""
"""MIT-BIH records of one person: 201 and 202 come from the same man (PhysioNet's mitdb directory)."""

SIGNAL_SUFFIXES: tuple[str, ...] = (".hea", ".edf", ".bdf", ".csv", ".csv.gz")
_STRING_COLUMNS = ("path", "patient_id", "trial_id", "format", "channel_names", "labels", "label")


@dataclass(frozen=True, eq=False)
class Manifest:
    """A dataset's trials, its events and the entries that could not be listed.

    Attributes:
        trials: one row per trial; columns :data:`REQUIRED_COLUMNS` first, then the optional ones
            (see the module docstring).
        events: per-dataset annotations (MIT-BIH beats: :data:`EVENT_COLUMNS`), or ``None``.
        missing: ``path``, ``reason`` (and ``error``, where known) of every entry named by the dataset
            but not usable.

    Raises:
        ConfigError: a required column is absent or a ``trial_id`` repeats.
    """

    trials: pd.DataFrame
    events: pd.DataFrame | None = None
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(MISSING_COLUMNS)))

    def __post_init__(self) -> None:
        absent = [c for c in REQUIRED_COLUMNS if c not in self.trials.columns]
        if absent:
            raise ConfigError(f"manifest trials lack required column(s) {', '.join(absent)}")
        repeated = self.trials["trial_id"][self.trials["trial_id"].duplicated()].unique()
        if len(repeated):
            raise ConfigError(
                f"manifest trial_id(s) {', '.join(map(str, repeated[:5]))} appear more than once"
            )
        absent = [c for c in MISSING_COLUMNS if c not in self.missing.columns]
        if absent:
            raise ConfigError(f"manifest missing table lacks column(s) {', '.join(absent)}")

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    @property
    def n_patients(self) -> int:
        return int(self.trials["patient_id"].nunique())


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _root(root: str | Path) -> Path:
    """The dataset folder, absolute (``bundled:<name>`` allowed); ConfigError if it is not a folder."""
    return resolve_root(root).resolve()


def _trial(header: SignalHeader, patient_id: str, trial_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": header.path,
        "patient_id": str(patient_id),
        "trial_id": str(trial_id),
        "format": header.format,
        "fs": float(header.fs),
        "n_samples": int(header.n_samples),
        "channel_names": "|".join(header.channel_names),
        **extra,
    }


def _trials_frame(rows: list[dict[str, Any]], optional: Iterable[str] = ()) -> pd.DataFrame:
    columns = list(REQUIRED_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns += [c for c in optional if c not in columns]
    frame = pd.DataFrame(rows, columns=columns)
    frame["fs"] = frame["fs"].astype(np.float64)
    frame["n_samples"] = frame["n_samples"].astype(np.int64)
    for column in ("patient_id", "trial_id", "path", "format", "channel_names"):
        frame[column] = frame[column].astype(str)
    return frame.reset_index(drop=True)


@dataclass
class _Missing:
    """Rows of ``missing``, collected while a builder lists a dataset; ``error`` is the DataError type
    that made the entry unusable, or ``"NotOnDisk"``."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, path: str | Path, reason: str, error: str = "NotOnDisk") -> None:
        self.rows.append((str(path), reason, error))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=[*MISSING_COLUMNS, "error"])


def _header_or_reason(path: Path, missing: _Missing, **kwargs: Any) -> SignalHeader | None:
    """The file's header, or ``None`` after recording why it cannot be read in ``missing``."""
    try:
        return read_signal_header(path, **kwargs)
    except DataError as exc:
        entry = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
        missing.add(entry, exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__)
        return None


def _int_like(value: Any) -> str | None:
    """``15709.0`` → ``"15709"``; ``"abc"`` → ``"abc"``; NaN/empty → ``None``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0*", text):
        return text.split(".")[0]
    return text or None


def _wfdb_comments(base: Path) -> list[str]:
    """The ``#`` comment lines of a WFDB header (text after ``#``, stripped)."""
    hea = base.with_name(base.name + ".hea")
    try:
        text = hea.read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return [line.strip()[1:].strip() for line in text.splitlines() if line.strip().startswith("#")]


# --------------------------------------------------------------------------------------------------
# PTB-XL
# --------------------------------------------------------------------------------------------------


def ptbxl_manifest(root: str | Path, sampling_rate: int = 100) -> Manifest:
    """PTB-XL (Wagner et al. 2020) from ``ptbxl_database.csv``: one trial per ECG.

    Columns beyond the required ones: ``labels`` (diagnostic superclasses, see
    :func:`~modalities.signals.labels.ptbxl_superclasses`, joined by ``"|"`` in NORM|MI|STTC|CD|HYP
    order, ``""`` when the record has none), ``fold`` (``strat_fold``, 1-10), ``ecg_id`` (int), ``age``
    (float; 300 means > 89 in PTB-XL), ``sex`` (0 male, 1 female, as PTB-XL codes it), ``scp_codes``
    (the raw text). ``patient_id`` is PTB-XL's ``patient_id`` written as an integer string
    (``15709.0`` → ``"15709"``); ``trial_id`` is ``ecg_id`` as a string. Rows whose record files are
    absent, whose header cannot be read or whose ``scp_codes``/``patient_id`` cannot be used go to
    ``missing``.

    Args:
        root: the PTB-XL folder (``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/``) or
            ``"bundled:ptbxl"``.
        sampling_rate: 100 (``filename_lr``) or 500 (``filename_hr``).

    Raises:
        ConfigError: ``root`` is not a folder or ``sampling_rate`` is not 100 or 500.
        DataError/CorruptFileError: ``ptbxl_database.csv`` or ``scp_statements.csv`` is absent or lacks
            the columns used.
    """
    column = {100: "filename_lr", 500: "filename_hr"}.get(int(sampling_rate))
    if column is None:
        raise ConfigError(f"PTB-XL sampling_rate must be 100 or 500, got {sampling_rate}")
    folder = _root(root)
    db_path = folder / "ptbxl_database.csv"
    if not db_path.is_file():
        raise DataError(
            db_path,
            "PTB-XL database table not found",
            hint="root must be the PTB-XL folder with ptbxl_database.csv, scp_statements.csv, records100/",
        )
    try:
        database = pd.read_csv(db_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(db_path, f"not a readable CSV table ({type(exc).__name__}: {exc})") from None
    needed = {"ecg_id", "patient_id", "scp_codes", "strat_fold", column}
    if needed - set(database.columns):
        raise CorruptFileError(
            db_path, f"lacks column(s) {', '.join(sorted(needed - set(database.columns)))}"
        )
    statements = read_scp_statements(folder / "scp_statements.csv")
    rows: list[dict[str, Any]] = []
    missing = _Missing()
    for record in database.itertuples(index=False):
        ecg_id = int(record.ecg_id)
        base = folder / str(getattr(record, column))
        where = f"ptbxl_database.csv row ecg_id {ecg_id}"
        if not base.with_name(base.name + ".hea").is_file():
            missing.add(str(base), f"listed in {where} but {base.name}.hea is not on disk")
            continue
        patient = _int_like(record.patient_id)
        if patient is None:
            missing.add(base, f"{where} has no patient_id", "CorruptFileError")
            continue
        try:
            labels = ptbxl_superclasses(record.scp_codes, statements)
        except ValueError as exc:
            missing.add(base, f"{where}: {exc}", "CorruptFileError")
            continue
        header = _header_or_reason(base, missing)
        if header is None:
            continue
        fold = _int_like(record.strat_fold)
        rows.append(
            _trial(
                header,
                patient,
                str(ecg_id),
                labels="|".join(labels),
                fold=int(fold) if fold is not None else -1,
                ecg_id=ecg_id,
                age=float(getattr(record, "age", np.nan)),
                sex=getattr(record, "sex", np.nan),
                scp_codes=str(record.scp_codes),
            )
        )
    trials = _trials_frame(rows, optional=("labels", "fold", "ecg_id", "age", "sex", "scp_codes"))
    trials["fold"] = trials["fold"].astype(np.int64)
    trials["labels"] = trials["labels"].fillna("").astype(str)
    return Manifest(trials=trials, events=None, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# MIT-BIH Arrhythmia
# --------------------------------------------------------------------------------------------------


def _record_names(folder: Path) -> list[str]:
    records_file = folder / "RECORDS"
    if records_file.is_file():
        names = [line.strip() for line in records_file.read_text(errors="replace").splitlines()]
        return [n for n in names if n and not n.startswith("#")]
    return sorted(p.stem for p in folder.glob("*.hea"))


def _age_sex(comments: list[str]) -> tuple[float, str | None]:
    """MIT-BIH's first header comment ``"<age> <sex> ..."`` → ``(age, "M"/"F")`` (NaN/None if absent)."""
    tokens = comments[0].split() if comments else []
    try:
        age = float(tokens[0]) if tokens else np.nan
    except ValueError:
        age = np.nan
    age = age if age >= 0 else np.nan
    sex = tokens[1] if len(tokens) > 1 and tokens[1] in ("M", "F") else None
    return age, sex


def mitdb_manifest(root: str | Path, records: Sequence[str] | None = None) -> Manifest:
    """MIT-BIH Arrhythmia Database: one trial per record, beat annotations as events.

    Records are ``records`` when given (e.g. :data:`MITDB_DS1`), else those in ``RECORDS`` (or every
    ``.hea`` when there is no ``RECORDS``); names listed but not on disk go to ``missing`` (the shared
    copy's ``RECORDS`` lists all 48 records and the folder holds 26: DS1 and the paced records).
    ``patient_id`` is the record name, except that record 202 belongs to patient ``"201"``
    (:data:`MITDB_SAME_PATIENT`); ``trial_id`` is the record name. Extra columns: ``age`` (float),
    ``sex`` (``"M"``/``"F"``) from the header's first comment, ``n_beats`` (beat annotations kept).

    ``events`` has :data:`EVENT_COLUMNS`: one row per beat annotation of the reference ``.atr`` file,
    ``sample`` at the record's ``fs``; non-beat annotations (rhythm changes, noise, ...) are dropped
    (see :func:`~modalities.signals.labels.aami_class`). A record without ``.atr`` has no events; one
    whose ``.atr`` cannot be read goes to ``missing``.

    Raises:
        ConfigError: ``root`` is not a folder. DataError: no record (neither RECORDS nor any .hea).
    """
    if isinstance(records, str):
        raise ConfigError(f"records must be a list of record names, not the string {records!r}")
    folder = _root(root)
    names = [str(r) for r in records] if records is not None else _record_names(folder)
    if not names:
        raise DataError(folder, "no MIT-BIH records here: neither a RECORDS file nor any .hea file")
    rows: list[dict[str, Any]] = []
    events: list[pd.DataFrame] = []
    missing = _Missing()
    for name in names:
        base = folder / name
        if not base.with_name(base.name + ".hea").is_file():
            missing.add(str(base), f"listed in RECORDS but {name}.hea is not on disk")
            continue
        header = _header_or_reason(base, missing)
        if header is None:
            continue
        n_beats = 0
        if base.with_name(base.name + ".atr").is_file():
            try:
                annotation = wfdb.rdann(str(base), "atr")
            except Exception as exc:  # wfdb raises assorted errors for a damaged annotation file
                reason = f"beat annotations {name}.atr cannot be read ({type(exc).__name__}: {exc})"
                missing.add(base, reason, "CorruptFileError")
                continue
            symbols = pd.Series(annotation.symbol, dtype=object)
            classes = symbols.map(aami_class)
            keep = classes.notna().to_numpy()
            beats = pd.DataFrame(
                {
                    "trial_id": name,
                    "sample": np.asarray(annotation.sample, dtype=np.int64)[keep],
                    "symbol": symbols[keep].astype(str).to_numpy(),
                    "aami_class": classes[keep].astype(str).to_numpy(),
                }
            )
            n_beats = len(beats)
            events.append(beats)
        age, sex = _age_sex(_wfdb_comments(base))
        rows.append(
            _trial(header, MITDB_SAME_PATIENT.get(name, name), name, age=age, sex=sex, n_beats=n_beats)
        )
    trials = _trials_frame(rows, optional=("age", "sex", "n_beats"))
    event_frame = (
        pd.concat(events, ignore_index=True) if events else pd.DataFrame(columns=list(EVENT_COLUMNS))
    )
    event_frame["sample"] = event_frame["sample"].astype(np.int64)
    return Manifest(trials=trials, events=event_frame, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# EEG during mental arithmetic (PhysioNet eegmat)
# --------------------------------------------------------------------------------------------------

_EEGMAT_FILE = re.compile(r"^(Subject\d+)_([12])\.edf$")
_EEGMAT_LABELS = {"1": "rest", "2": "task"}


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def eegmat_manifest(root: str | Path) -> Manifest:
    """PhysioNet eegmat (Zyma et al. 2019): ``SubjectNN_1.edf`` (rest) and ``SubjectNN_2.edf``
    (mental arithmetic), one trial each.

    ``patient_id`` is ``"SubjectNN"``, ``trial_id`` the file stem (``"Subject00_1"``), ``label``
    ``"rest"`` or ``"task"``. ``subject-info.csv`` (when present) is merged by subject, its columns in
    snake case: ``age``, ``gender``, ``recording_year``, ``number_of_subtractions``, ``count_quality``
    (1 good, 0 bad counter). A subject with only one of its two recordings on disk gets the other in
    ``missing``, as does any ``RECORDS`` entry not on disk.

    Raises:
        ConfigError: ``root`` is not a folder. DataError: no ``SubjectNN_[12].edf`` file in it.
    """
    folder = _root(root)
    matches = sorted(
        ((m, p) for p in folder.iterdir() if (m := _EEGMAT_FILE.match(p.name)) is not None and p.is_file()),
        key=lambda pair: pair[1].name,
    )
    files = [p for _, p in matches]
    if not files:
        raise DataError(folder, "no eegmat recordings here (files named SubjectNN_1.edf / SubjectNN_2.edf)")
    info: pd.DataFrame | None = None
    info_path = folder / "subject-info.csv"
    if info_path.is_file():
        try:
            info = pd.read_csv(info_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise CorruptFileError(
                info_path, f"not a readable CSV table ({type(exc).__name__}: {exc})"
            ) from None
        info.columns = [_snake(c) for c in info.columns]
        if "subject" not in info.columns:
            raise CorruptFileError(info_path, "subject-info.csv lacks its 'Subject' column")
        info = info.drop_duplicates("subject").set_index("subject")
    expected = {f"{m.group(1)}_{k}.edf" for m, _ in matches for k in "12"}
    records_file = folder / "RECORDS"
    if records_file.is_file():
        expected |= {
            line.strip() for line in records_file.read_text(errors="replace").splitlines() if line.strip()
        }
    present = {f.name for f in files}
    missing = _Missing()
    for name in sorted(expected - present):
        missing.add(
            folder / name,
            f"{name} is expected (RECORDS, or its subject's other recording is here) but not on disk",
        )
    rows: list[dict[str, Any]] = []
    for match, file in matches:
        subject, kind = match.group(1), match.group(2)
        header = _header_or_reason(file, missing)
        if header is None:
            continue
        extra: dict[str, Any] = {"label": _EEGMAT_LABELS[kind]}
        if info is not None and subject in info.index:
            extra.update(info.loc[subject].to_dict())
        rows.append(_trial(header, subject, file.name[: -len(".edf")], **extra))
    optional = ["label"] + ([] if info is None else list(info.columns))
    return Manifest(trials=_trials_frame(rows, optional=optional), events=None, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# Any folder
# --------------------------------------------------------------------------------------------------


def _strip_signal_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(SIGNAL_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_signal_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SIGNAL_SUFFIXES) and not path.name.startswith(".")


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def folder_manifest(
    root: str | Path,
    table: str | Path | None = None,
    pattern: str | None = None,
    fs: float | None = None,
) -> Manifest:
    """Any folder of signal files, described by a table or found by scanning.

    With ``table`` (a CSV; a relative path is looked up in ``root`` first, then the working directory):
    one trial per line. Columns: ``path`` (relative to ``root``, or absolute), ``patient_id``
    (required), ``trial_id`` (default: ``path`` relative to ``root``), ``label``/``labels`` (kept as
    text, ``""`` when empty), ``fs`` (for CSV signals without a time column), and any other column,
    carried over as a dataset extra. Lines whose file is absent or unreadable go to ``missing``.

    Without ``table``: every file under ``root`` (recursively, hidden files skipped) named ``.hea``,
    ``.edf``, ``.bdf``, ``.csv`` or ``.csv.gz`` and matching ``pattern`` (``Path.match`` on the path
    relative to ``root``, e.g. ``"*_Signals.csv.gz"``) is one trial; ``.dat`` files come with their
    ``.hea``. ``patient_id`` is the file's folder relative to ``root`` (``"p01"``,
    ``"site_a/p01"``), or the file name without extension for files at the top of ``root``; ``trial_id``
    is the trial's ``path`` relative to ``root`` (WFDB without extension). Files whose header cannot be
    read go to ``missing``.

    Args:
        root: the folder.
        table: optional manifest table.
        pattern: optional filter for the scan.
        fs: sampling rate for CSV signals that have no time column (a table's ``fs`` column wins).

    Raises:
        ConfigError: ``root`` is not a folder. DataError: the table is absent, lacks ``path`` or
            ``patient_id``, or repeats a ``trial_id``; the scan finds no signal file.
    """
    folder = _root(root)
    rows: list[dict[str, Any]] = []
    missing = _Missing()
    if table is None:
        files = sorted(p for p in folder.rglob("*") if _is_signal_file(p))
        if pattern is not None:
            files = [p for p in files if Path(_relative(p, folder)).match(pattern)]
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if not files:
            raise DataError(
                folder,
                f"no signal files ({', '.join(SIGNAL_SUFFIXES)}) found"
                + (f" matching {pattern!r}" if pattern else ""),
            )
        for file in files:
            kwargs = {"fs": fs} if file.name.lower().endswith((".csv", ".csv.gz")) else {}
            header = _header_or_reason(file, missing, **kwargs)
            if header is None:
                continue
            parent = _relative(file.parent, folder)
            patient = _strip_signal_suffix(file.name) if parent in ("", ".") else parent
            rows.append(_trial(header, patient, _relative(Path(header.path), folder)))
        return Manifest(trials=_trials_frame(rows), events=None, missing=missing.frame())

    table_path = Path(table)
    if not table_path.is_absolute() and (folder / table_path).is_file():
        table_path = folder / table_path
    if not table_path.is_file():
        raise DataError(table_path, "manifest table not found")
    text_columns = {c: str for c in ("path", "patient_id", "trial_id", "label", "labels")}
    try:
        frame = pd.read_csv(table_path, dtype=text_columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(
            table_path, f"not a readable CSV table ({type(exc).__name__}: {exc})"
        ) from None
    absent = [c for c in ("path", "patient_id") if c not in frame.columns]
    if absent:
        raise DataError(table_path, f"manifest table lacks column(s) {', '.join(absent)}")
    extras = [c for c in frame.columns if c not in ("path", "patient_id", "trial_id", "fs", "format")]
    for line, entry in enumerate(frame.to_dict("records"), start=2):
        raw_path = entry["path"]
        patient = entry["patient_id"]
        if not isinstance(raw_path, str) or not raw_path.strip() or not isinstance(patient, str):
            missing.add(
                str(raw_path), f"line {line} of {table_path.name} has no path or no patient_id", "DataError"
            )
            continue
        file = Path(raw_path.strip())
        file = file if file.is_absolute() else folder / file
        if not file.exists() and not file.with_name(file.name + ".hea").is_file():
            missing.add(str(file), f"listed on line {line} of {table_path.name} but not on disk")
            continue
        kwargs: dict[str, Any] = {}
        if file.name.lower().endswith((".csv", ".csv.gz")):
            row_fs = entry.get("fs")
            kwargs["fs"] = float(row_fs) if row_fs is not None and not pd.isna(row_fs) else fs
        header = _header_or_reason(file, missing, **kwargs)
        if header is None:
            continue
        trial_id = entry.get("trial_id")
        if not isinstance(trial_id, str) or not trial_id.strip():
            trial_id = _relative(Path(header.path), folder)
        extra = {c: entry[c] for c in extras}
        for c in ("label", "labels"):
            if c in extra and not isinstance(extra[c], str):
                extra[c] = ""
        rows.append(_trial(header, patient.strip(), trial_id.strip(), **extra))
    trials = _trials_frame(rows, optional=extras)
    repeated = trials["trial_id"][trials["trial_id"].duplicated()].unique()
    if len(repeated):
        raise DataError(table_path, f"trial_id(s) {', '.join(repeated[:5])} appear on more than one line")
    return Manifest(trials=trials, events=None, missing=missing.frame())


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., Manifest]] = {
    "ptbxl": ptbxl_manifest,
    "mitdb": mitdb_manifest,
    "eegmat": eegmat_manifest,
    "folder": folder_manifest,
}


def detect_layout(root: str | Path) -> str:
    """Which builder fits the folder: ``"ptbxl"`` (has ``ptbxl_database.csv``), ``"mitdb"`` (WFDB
    records with ``.atr`` beat annotations), ``"eegmat"`` (``SubjectNN_1.edf``/``SubjectNN_2.edf``),
    else ``"folder"``."""
    folder = _root(root)
    if (folder / "ptbxl_database.csv").is_file():
        return "ptbxl"
    if any(folder.glob("*.atr")) and any(folder.glob("*.hea")):
        return "mitdb"
    if any(_EEGMAT_FILE.match(p.name) for p in folder.glob("Subject*_*.edf")):
        return "eegmat"
    return "folder"


def build_manifest(dataset: str, root: str | Path, **kwargs: Any) -> Manifest:
    """Build the manifest of ``dataset`` (``"ptbxl"``, ``"mitdb"``, ``"eegmat"``, ``"folder"``, or
    ``"auto"``: :func:`detect_layout`) at ``root``; ``kwargs`` go to that builder (``sampling_rate`` for
    PTB-XL; ``records`` for MIT-BIH; ``table``, ``pattern``, ``fs`` for a folder).

    Raises:
        ConfigError: an unknown dataset or an argument its builder does not take; and whatever the
            builder raises.
    """
    if dataset == "auto":
        dataset = detect_layout(root)
    builder = BUILDERS.get(dataset)
    if builder is None:
        raise ConfigError(f"unknown signal dataset {dataset!r}; choose one of {', '.join(BUILDERS)}")
    accepted = [name for name in inspect.signature(builder).parameters if name != "root"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{dataset} manifest takes no argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) or 'none'}"
        )
    return builder(root, **kwargs)
