"""Index a signal dataset once: read and check every recording, quarantine the bad ones, save the result.

:func:`index_signals` builds the dataset's manifest (headers only), then reads every recording in full
and validates it (:func:`~modalities.signals.quality.validate_record`). It never stops at the first
bad file: each file's failure becomes one quarantine row with the reason in words, and only usable
trials stay in the manifest. :func:`save_index` writes the result next to a run so every split and
run is reproducible and auditable; :func:`load_index` reads it back.

Saved files (in ``out_dir``): ``trials.csv`` (the usable trials, manifest columns), ``events.csv``
(when the dataset has events), ``quarantine.csv`` (always; columns ``path``, ``reason``, ``error``)
and ``index.json`` (dataset, root, counts, settings, medcl version).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import medcl
from medcl.errors import ConfigError, DataError
from modalities.signals.manifests import (
    MISSING_COLUMNS,
    REQUIRED_COLUMNS,
    Manifest,
    build_manifest,
    detect_layout,
)
from modalities.signals.quality import validate_record
from modalities.signals.readers import read_signal

__all__ = ["QUARANTINE_COLUMNS", "IndexResult", "index_signals", "load_index", "save_index"]

QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "reason", "error")
"""``path`` of the unusable recording, ``reason`` in words, ``error``: the exception type
(``CorruptFileError``, ``MissingChannelError``, ``InvalidSignalError``, ..., or the type of an unexpected
exception), ``NotOnDisk`` for an entry the dataset names that is not there (``NotListed`` when a
builder gave no type)."""


@dataclass(frozen=True, eq=False)
class IndexResult:
    """The outcome of :func:`index_signals`.

    Attributes:
        manifest: the usable trials (and their events); its ``missing`` holds every quarantined entry
            (``path``, ``reason``).
        quarantine: one row per unusable recording, columns :data:`QUARANTINE_COLUMNS`.
        dataset, root: what was indexed.
        settings: the checks applied (``channels``, ``max_nan_fraction``, ``allow_flat``) and the
            builder's arguments.
    """

    manifest: Manifest
    quarantine: pd.DataFrame
    dataset: str
    root: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_listed(self) -> int:
        return len(self.manifest.trials) + len(self.quarantine)

    def summary(self) -> str:
        """One line, e.g. ``"indexed 498 of 500 recordings (466 patients); 2 quarantined → see
        quarantine.csv"``."""
        kept = len(self.manifest.trials)
        text = f"indexed {kept} of {self.n_listed} recordings ({self.manifest.n_patients} patients)"
        n_bad = len(self.quarantine)
        return text + (f"; {n_bad} quarantined → see quarantine.csv" if n_bad else "; none quarantined")


def _reason(exc: Exception) -> tuple[str, str]:
    """(reason, error type) of a failure; never a traceback."""
    if isinstance(exc, DataError):
        return exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error ({type(exc).__name__}): {message}", type(exc).__name__


def index_signals(
    dataset: str,
    root: str | Path,
    channels: Sequence[str] | None = None,
    max_nan_fraction: float = 0.0,
    allow_flat: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **builder_kwargs: Any,
) -> IndexResult:
    """Build ``dataset``'s manifest, read every recording in full, and quarantine the unusable ones.

    A recording is quarantined when the builder could not list it (named by the dataset but not on
    disk, header unreadable, not a WFDB file though named ``.hea``), when reading fails (truncated
    data, header/data length mismatch, garbage EDF, non-numeric CSV cells, a requested channel
    missing), or when :func:`~modalities.signals.quality.validate_record` rejects it (an all-NaN
    channel, more NaN than ``max_nan_fraction``, a flat channel unless ``allow_flat``). Every
    exception of one file is caught: a :class:`~medcl.errors.DataError` gives its reason, anything
    else ``"unexpected error (<type>): <message>"``.

    For usable trials read with ``channels``, ``fs`` and ``n_samples`` are those of the record as read
    (they differ from the header's only for multi-rate files whose fastest channel was not selected).

    Args:
        dataset: ``"ptbxl"``, ``"mitdb"``, ``"eegmat"``, ``"folder"`` or ``"auto"`` (detected from the
            files, :func:`~modalities.signals.manifests.detect_layout`).
        root: the dataset folder (or ``"bundled:<name>"``).
        channels: channels every usable recording must have (and that are checked); ``None``: all.
        max_nan_fraction: NaN fraction allowed per channel.
        allow_flat: keep recordings with flat channels.
        progress: called as ``progress(done, total)`` after each recording.
        builder_kwargs: passed to the manifest builder (see
            :func:`~modalities.signals.manifests.build_manifest`).

    Raises:
        ConfigError / DataError: the builder cannot start (root missing, no ``ptbxl_database.csv``, ...)
            or a setting is invalid. Bad files never raise.
    """
    if isinstance(channels, str):
        raise ConfigError(f"channels must be a list of names, not the string {channels!r}")
    if not 0.0 <= max_nan_fraction <= 1.0:
        raise ConfigError(f"max_nan_fraction must be in [0, 1], got {max_nan_fraction}")
    if dataset == "auto":
        dataset = detect_layout(root)
    listed = build_manifest(dataset, root, **builder_kwargs)
    trials = listed.trials
    missing = listed.missing
    errors = missing["error"] if "error" in missing.columns else pd.Series("NotListed", index=missing.index)
    quarantine: list[tuple[str, str, str]] = [
        (str(path), str(reason), str(error))
        for path, reason, error in zip(
            missing["path"], missing["reason"], errors.fillna("NotListed"), strict=True
        )
    ]
    keep = np.zeros(len(trials), dtype=bool)
    fs_read = trials["fs"].to_numpy(dtype=np.float64).copy()
    n_read = trials["n_samples"].to_numpy(dtype=np.int64).copy()
    total = len(trials)
    for i, row in enumerate(trials.itertuples(index=False)):
        try:
            kwargs = {"fs": float(row.fs)} if row.format == "csv" else {}
            record = read_signal(row.path, channels=channels, **kwargs)
            validate_record(record, max_nan_fraction=max_nan_fraction, allow_flat=allow_flat)
            keep[i] = True
            fs_read[i], n_read[i] = record.fs, record.n_samples
        except Exception as exc:  # one bad file must never stop the index
            reason, error = _reason(exc)
            quarantine.append((str(row.path), reason, error))
        if progress is not None:
            progress(i + 1, total)
    good = trials.assign(fs=fs_read, n_samples=n_read)[keep].reset_index(drop=True)
    events = listed.events
    if events is not None:
        events = events[events["trial_id"].isin(set(good["trial_id"]))].reset_index(drop=True)
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    manifest = Manifest(trials=good, events=events, missing=quarantine_frame[list(MISSING_COLUMNS)].copy())
    settings = {
        "channels": None if channels is None else [str(c) for c in channels],
        "max_nan_fraction": float(max_nan_fraction),
        "allow_flat": bool(allow_flat),
        "builder_kwargs": {k: str(v) for k, v in builder_kwargs.items()},
    }
    return IndexResult(manifest, quarantine_frame, dataset, str(root), settings)


def save_index(result: IndexResult, out_dir: str | Path) -> Path:
    """Write ``trials.csv``, ``events.csv`` (when the dataset has events), ``quarantine.csv`` (always,
    with its header even when empty) and ``index.json`` into ``out_dir`` (created if needed).

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = result.manifest
    manifest.trials.to_csv(out / "trials.csv", index=False)
    if manifest.events is not None:
        manifest.events.to_csv(out / "events.csv", index=False)
    elif (out / "events.csv").exists():
        (out / "events.csv").unlink()  # a stale file from an earlier index would be read back
    result.quarantine.to_csv(out / "quarantine.csv", index=False)
    info = {
        "dataset": result.dataset,
        "root": result.root,
        "medcl_version": medcl.__version__,
        "counts": {
            "listed": result.n_listed,
            "indexed": len(manifest.trials),
            "quarantined": len(result.quarantine),
            "patients": manifest.n_patients,
            "events": None if manifest.events is None else len(manifest.events),
        },
        "channels": result.settings.get("channels"),
        "settings": result.settings,
        "summary": result.summary(),
    }
    (out / "index.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


_TEXT_COLUMNS = ("path", "patient_id", "trial_id", "format", "channel_names", "labels", "label")


def _read_table(path: Path, text_columns: Sequence[str]) -> pd.DataFrame:
    """A saved table with identifier/label columns kept as text (``"00123"`` stays ``"00123"``, an
    empty label stays ``""``) and every other column parsed as pandas would."""
    frame = pd.read_csv(path)
    text = [c for c in frame.columns if c in text_columns]
    if text:
        # Re-read the text columns without NA conversion, so "NA", "00123" and "" survive as written.
        frame[text] = pd.read_csv(path, usecols=text, dtype=str, keep_default_na=False)[text]
    return frame


def load_index(out_dir: str | Path) -> Manifest:
    """Read an index written by :func:`save_index` back into a :class:`Manifest` (``missing`` = the
    quarantine's ``path`` and ``reason``).

    Raises:
        DataError: ``out_dir`` holds no index (no ``index.json`` or ``trials.csv``).
    """
    out = Path(out_dir)
    for name in ("index.json", "trials.csv"):
        if not (out / name).is_file():
            raise DataError(out / name, "no saved index here", hint="run index_signals + save_index first")
    trials = _read_table(out / "trials.csv", _TEXT_COLUMNS)
    if "n_samples" in trials.columns:
        trials["n_samples"] = trials["n_samples"].astype(np.int64)
    if "fs" in trials.columns:
        trials["fs"] = trials["fs"].astype(np.float64)
    events = None
    if (out / "events.csv").is_file():
        events = _read_table(out / "events.csv", ("trial_id", "symbol", "aami_class"))
        if "sample" in events.columns:
            events["sample"] = events["sample"].astype(np.int64)
    quarantine_path = out / "quarantine.csv"
    if quarantine_path.is_file():
        missing = _read_table(quarantine_path, QUARANTINE_COLUMNS)[list(MISSING_COLUMNS)]
    else:
        missing = pd.DataFrame(columns=list(MISSING_COLUMNS))
    absent = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if absent:
        raise DataError(out / "trials.csv", f"saved trials lack column(s) {', '.join(absent)}")
    return Manifest(trials=trials, events=events, missing=missing)
