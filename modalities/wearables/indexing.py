"""Index a wearable data set once: read every recording, check every segment, save the result.

:func:`index_wearables` builds the manifest (:mod:`modalities.wearables.manifests`), reads each
recording's model channels (and its accelerometer, when it has one) and checks every segment of
``segment_s`` seconds on the raw samples (:mod:`modalities.wearables.quality`). A recording that cannot
be read (missing channel, corrupt file, no Parquet engine, ...) is quarantined whole, with the reason; a
readable recording keeps its good segments, and each rejected segment is listed with its problems.
Counts per problem are in :meth:`WearableIndexResult.summary` and ``index.json``.

Saved files (:func:`save_index`): ``trials.csv`` (usable recordings), ``segments.csv`` (every
checked segment, with ``kept``, ``problems``, ``detail`` and the quality metrics), ``quarantine.csv``
(unusable recordings *and* rejected segments: ``path``, ``reason``, ``error`` = the exception type or
``LowQualitySegment``) and ``index.json``. :func:`load_index` reads them back.
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
from modalities.signals.indexing import QUARANTINE_COLUMNS, _read_table, _reason
from modalities.signals.manifests import MISSING_COLUMNS, REQUIRED_COLUMNS, Manifest
from modalities.wearables.manifests import build_wearable_manifest, detect_wearable_layout
from modalities.wearables.quality import SEGMENT_PROBLEMS, SegmentQuality, assess_segment, segment_bounds
from modalities.wearables.readers import accelerometer_channels, accelerometer_magnitude, read_wearable

__all__ = [
    "DATASET_CHANNELS",
    "SEGMENT_COLUMNS",
    "WearableIndexResult",
    "index_wearables",
    "load_index",
    "save_index",
]

#: Model channels of each data set and modality when none are given.
DATASET_CHANNELS: dict[str, dict[str, tuple[str, ...]]] = {
    "bidmc": {"ppg": ("PLETH",), "ecg": ("II",), "resp": ("RESP",)},
}
SEGMENT_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "trial_id",
    "sample_index",
    "start_s",
    "stop_s",
    "kept",
    "problems",
    "detail",
    "nan_fraction",
    "longest_flat_s",
    "clipped_fraction",
    "motion",
)
"""Columns of the segment table: ids, the segment's span in seconds, whether it was kept, its problems
(``|``-joined :data:`~modalities.wearables.quality.SEGMENT_PROBLEMS`, ``""`` when kept), the findings in
words, and the worst channel's quality metrics (``motion``: accelerometer-magnitude std in g, NaN
without accelerometer)."""


@dataclass(frozen=True, eq=False)
class WearableIndexResult:
    """The outcome of :func:`index_wearables`.

    Attributes:
        manifest: the usable recordings; ``missing`` = every quarantined file (``path``, ``reason``).
        segments: every checked segment of the usable recordings (:data:`SEGMENT_COLUMNS`).
        quarantine: unusable recordings (``path``, ``reason``, ``error``).
        dataset, root: what was indexed.
        settings: channels, segment length and stride, quality thresholds, accelerometer channels.
    """

    manifest: Manifest
    segments: pd.DataFrame
    quarantine: pd.DataFrame
    dataset: str
    root: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_segments(self) -> pd.DataFrame:
        """The segments that passed every check."""
        return self.segments[self.segments["kept"].astype(bool)].reset_index(drop=True)

    @property
    def n_listed(self) -> int:
        return len(self.manifest.trials) + len(self.quarantine)

    def counts(self) -> dict[str, Any]:
        """Recordings, participants and segments: listed, kept, rejected per problem (a segment with two
        problems counts under both), and how many usable recordings had an accelerometer."""
        problems = self.segments["problems"].fillna("").astype(str)
        rejected = {
            p: int(problems.str.split("|").map(lambda ps, p=p: p in ps).sum()) for p in SEGMENT_PROBLEMS
        }
        return {
            "listed": self.n_listed,
            "indexed": len(self.manifest.trials),
            "quarantined": len(self.quarantine),
            "participants": self.manifest.n_patients,
            "segments": len(self.segments),
            "segments_kept": int(self.segments["kept"].astype(bool).sum()),
            "segments_rejected": int((~self.segments["kept"].astype(bool)).sum()),
            "rejected_by_problem": rejected,
            "recordings_with_accelerometer": int(self.settings.get("recordings_with_accelerometer", 0)),
        }

    def summary(self) -> str:
        """One line, e.g. ``"indexed 40 of 40 recordings (34 participants); none quarantined; segments of
        60 s: 305 of 320 kept, rejected 2 flat, 13 clipped (motion not checked: no accelerometer)"``."""
        c = self.counts()
        text = f"indexed {c['indexed']} of {c['listed']} recordings ({c['participants']} participants)"
        text += f"; {c['quarantined']} quarantined" if c["quarantined"] else "; none quarantined"
        segment_s = float(self.settings.get("segment_s", float("nan")))
        text += f"; segments of {segment_s:g} s: {c['segments_kept']} of {c['segments']} kept"
        rejected = [f"{n} {p}" for p, n in c["rejected_by_problem"].items() if n]
        text += f", rejected {', '.join(rejected)}" if rejected else ", none rejected"
        if c["recordings_with_accelerometer"] == 0:
            text += " (motion not checked: no accelerometer channel)"
        if c["quarantined"] or c["segments_rejected"]:
            text += " → see quarantine.csv"
        return text

    def quarantine_with_segments(self) -> pd.DataFrame:
        """The quarantine plus one row per rejected segment (``error`` = ``"LowQualitySegment"``)."""
        rejected = self.segments[~self.segments["kept"].astype(bool)]
        paths = self.manifest.trials.set_index("trial_id")["path"]
        rows = [
            (
                str(paths.get(row.trial_id, row.trial_id)),
                f"segment {row.sample_index} ({row.start_s:g}-{row.stop_s:g} s) rejected: {row.detail}",
                "LowQualitySegment",
            )
            for row in rejected.itertuples(index=False)
        ]
        extra = pd.DataFrame(rows, columns=list(QUARANTINE_COLUMNS))
        return (
            pd.concat([self.quarantine, extra], ignore_index=True) if len(extra) else self.quarantine.copy()
        )


def _resolve_channels(dataset: str, modality: str | None, channels: Sequence[str] | None) -> list[str] | None:
    if isinstance(channels, str):
        raise ConfigError(f"channels must be a list of names, not the string {channels!r}")
    if channels is not None:
        return [str(c) for c in channels]
    defaults = DATASET_CHANNELS.get(dataset)
    if defaults is None:
        return None
    key = modality if modality in defaults else "ppg"
    return list(defaults[key])


def index_wearables(
    dataset: str,
    root: str | Path,
    channels: Sequence[str] | None = None,
    max_nan_fraction: float = 0.0,
    allow_flat: bool = False,
    progress: Callable[[int, int], None] | None = None,
    modality: str | None = None,
    segment_s: float = 60.0,
    stride_s: float | None = None,
    accel_channels: Sequence[str] | str | None = "auto",
    max_flat_s: float = 1.0,
    flat_tolerance: float = 0.0,
    max_clipped_fraction: float = 0.02,
    motion_threshold: float | None = 0.1,
    **builder_kwargs: Any,
) -> WearableIndexResult:
    """Build the manifest, read every recording, check every segment; never stops at a bad file.

    Args:
        dataset: ``"bidmc"``, ``"participants"`` or ``"auto"``
            (:func:`~modalities.wearables.manifests.detect_wearable_layout`).
        root: the data set folder.
        channels: model channels every usable recording must have (matched by name). Default: the data
            set's channel for ``modality`` (BIDMC: ``PLETH`` for PPG, ``II`` for ECG), else every channel.
        max_nan_fraction: invalid samples allowed per channel and segment.
        allow_flat: keep flat segments (no ``"flat"`` check).
        progress: called as ``progress(done, total)`` after each recording.
        modality: ``"ppg"``, ``"ecg"``, ``"resp"``: picks the default channel.
        segment_s: segment length in seconds; ``stride_s``: step between segments (default: no overlap).
        accel_channels: accelerometer channels for the motion check: ``"auto"`` (found by name, see
            :func:`~modalities.wearables.readers.accelerometer_channels`), a list (3 axes or 1 magnitude),
            or None (no motion check).
        max_flat_s, flat_tolerance, max_clipped_fraction, motion_threshold: see
            :class:`~modalities.wearables.quality.SegmentQuality`.
        builder_kwargs: for the manifest builder (``table``, ``pattern``, ``fs`` of ``"participants"``).

    Raises:
        ConfigError / DataError: the builder cannot start or a setting is invalid. Bad files never raise.
    """
    stride_s = segment_s if stride_s is None else stride_s
    quality = SegmentQuality(
        max_nan_fraction=max_nan_fraction,
        max_flat_s=max_flat_s,
        flat_tolerance=flat_tolerance,
        max_clipped_fraction=max_clipped_fraction,
        motion_threshold=motion_threshold,
        check_flat=not allow_flat,
    )
    if not (segment_s > 0 and stride_s > 0):
        raise ConfigError(f"segment_s and stride_s must be > 0, got {segment_s} and {stride_s}")
    if dataset == "auto":
        dataset = detect_wearable_layout(root)
    wanted = _resolve_channels(dataset, modality, channels)
    if isinstance(accel_channels, str) and accel_channels != "auto":
        raise ConfigError(f"accel_channels must be 'auto', a list of names or None, got {accel_channels!r}")
    listed = build_wearable_manifest(dataset, root, **builder_kwargs)
    trials = listed.trials
    missing = listed.missing
    errors = missing["error"] if "error" in missing.columns else pd.Series("NotListed", index=missing.index)
    quarantine = [
        (str(p), str(r), str(e))
        for p, r, e in zip(missing["path"], missing["reason"], errors.fillna("NotListed"), strict=True)
    ]
    keep = np.zeros(len(trials), dtype=bool)
    segment_rows: list[dict[str, Any]] = []
    with_accel = 0
    for i, row in enumerate(trials.itertuples(index=False)):
        try:
            table_kwargs = {"fs": float(row.fs)} if row.format in ("csv", "parquet") else {}
            record = read_wearable(row.path, channels=wanted, **table_kwargs)
            available = str(row.channel_names).split("|")
            accel_names = accelerometer_channels(available) if accel_channels == "auto" else accel_channels
            magnitude, accel_unit = None, "g"
            if accel_names:
                accel = read_wearable(row.path, channels=list(accel_names), **table_kwargs)
                if accel.fs != record.fs or accel.n_samples != record.n_samples:
                    raise DataError(row.path, "the accelerometer channels have another rate or length")
                magnitude, accel_unit = accelerometer_magnitude(accel.data), accel.units[0]
                with_accel += 1
            bounds = segment_bounds(record.n_samples, record.fs, segment_s, stride_s)
            for k, (start_s, stop_s) in enumerate(bounds):
                a, b = round(start_s * record.fs), min(round(stop_s * record.fs), record.n_samples)
                problems, details, metrics = assess_segment(
                    record.data[:, a:b],
                    record.fs,
                    record.channel_names,
                    quality,
                    None if magnitude is None else magnitude[a:b],
                    accel_unit,
                )
                segment_rows.append(
                    {
                        "patient_id": str(row.patient_id),
                        "trial_id": str(row.trial_id),
                        "sample_index": k,
                        "start_s": float(start_s),
                        "stop_s": float(stop_s),
                        "kept": not problems,
                        "problems": "|".join(problems),
                        "detail": "; ".join(details),
                        **metrics,
                    }
                )
            keep[i] = True
        except Exception as exc:  # one bad file must never stop the index
            reason, error = _reason(exc)
            quarantine.append((str(row.path), reason, error))
        if progress is not None:
            progress(i + 1, len(trials))
    good = trials[keep].reset_index(drop=True)
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    manifest = Manifest(trials=good, events=None, missing=quarantine_frame[list(MISSING_COLUMNS)].copy())
    segments = pd.DataFrame(segment_rows, columns=list(SEGMENT_COLUMNS))
    segments["kept"] = segments["kept"].astype(bool)
    settings = {
        "channels": wanted,
        "modality": modality,
        "segment_s": float(segment_s),
        "stride_s": float(stride_s),
        "accel_channels": accel_channels
        if accel_channels is None or isinstance(accel_channels, str)
        else list(accel_channels),
        "recordings_with_accelerometer": with_accel,
        "quality": quality.as_dict(),
        "builder_kwargs": {k: str(v) for k, v in builder_kwargs.items()},
    }
    return WearableIndexResult(manifest, segments, quarantine_frame, dataset, str(root), settings)


def save_index(result: WearableIndexResult, out_dir: str | Path) -> Path:
    """Write ``trials.csv``, ``segments.csv``, ``quarantine.csv`` (recordings and rejected segments) and
    ``index.json`` into ``out_dir`` (created if needed); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.manifest.trials.to_csv(out / "trials.csv", index=False)
    result.segments.to_csv(out / "segments.csv", index=False)
    result.quarantine_with_segments().to_csv(out / "quarantine.csv", index=False)
    info = {
        "dataset": result.dataset,
        "root": result.root,
        "medcl_version": medcl.__version__,
        "modality": "wearable",
        "counts": result.counts(),
        "channels": result.settings.get("channels"),
        "settings": result.settings,
        "summary": result.summary(),
    }
    (out / "index.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_index(out_dir: str | Path) -> tuple[Manifest, pd.DataFrame, pd.DataFrame]:
    """Read :func:`save_index` output back.

    Returns:
        ``(manifest, kept_segments, quarantine)``; the manifest's ``missing`` is the quarantine's
        ``path`` and ``reason``.

    Raises:
        DataError: ``out_dir`` holds no wearable index (``index.json``, ``trials.csv``, ``segments.csv``).
    """
    out = Path(out_dir)
    for name in ("index.json", "trials.csv", "segments.csv"):
        if not (out / name).is_file():
            raise DataError(
                out / name, "no saved wearable index here", hint="run `medcl index ROOT --modality ppg` first"
            )
    text = (
        "path",
        "patient_id",
        "trial_id",
        "format",
        "channel_names",
        "labels",
        "label",
        "record",
        "sex",
        "location",
    )
    trials = _read_table(out / "trials.csv", text)
    absent = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if absent:
        raise DataError(out / "trials.csv", f"saved trials lack column(s) {', '.join(absent)}")
    trials["n_samples"] = trials["n_samples"].astype(np.int64)
    trials["fs"] = trials["fs"].astype(np.float64)
    segments = _read_table(out / "segments.csv", ("patient_id", "trial_id", "problems", "detail"))
    segments["kept"] = segments["kept"].astype(str).str.lower().isin(("true", "1"))
    quarantine_path = out / "quarantine.csv"
    quarantine = (
        _read_table(quarantine_path, QUARANTINE_COLUMNS)
        if quarantine_path.is_file()
        else pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    )
    manifest = Manifest(trials=trials, events=None, missing=quarantine[list(MISSING_COLUMNS)].copy())
    kept = segments[segments["kept"]].reset_index(drop=True)
    return manifest, kept, quarantine
