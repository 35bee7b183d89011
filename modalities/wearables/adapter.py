"""The wearable adapter: per-participant recordings → quality-checked 60 s segments → model inputs.

:class:`WearableAdapter` implements :class:`medcl.data.Adapter` for PPG, accelerometer and watch ECG. It
is a thin layer over :class:`~modalities.signals.SignalAdapter`, whose preprocessing spec (NaN filling →
resampling to ``target_fs`` → zero-phase band-pass → per-channel z-score over the recording), trial cache,
windows, contrastive views and encoders it reuses unchanged; what it adds:

1. indexing with :func:`~modalities.wearables.indexing.index_wearables` (BIDMC, or any per-participant
   folder/table of CSV, Parquet, WFDB or EDF files): unreadable recordings are quarantined, and every
   ``segment_s`` segment is checked on the raw samples (NaN, flat, clipped, motion from an
   accelerometer); only kept segments become samples, and the rejected ones are listed in the
   quarantine with their reasons;
2. ids: ``patient_id`` = the participant (for BIDMC, the MIMIC-II subject: recordings 06-09, 20-23 and
   38-39 are three people), ``trial_id`` = the recording/session, ``sample_index`` = the segment's
   position in its recording;
3. labels for probes (BIDMC): ``"sex"`` (F/M), ``"age_65"`` (``<65``/``>=65``) or ``"location"`` (ICU
   type); a folder/table's ``label``/``labels`` column (``"auto"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medcl.data.adapter import IndexedData
from medcl.errors import ConfigError
from modalities.signals.adapter import SignalAdapter
from modalities.signals.pipeline import make_windows, preprocess_recording
from modalities.wearables.indexing import DATASET_CHANNELS, index_wearables, load_index
from modalities.wearables.manifests import build_wearable_manifest
from modalities.wearables.readers import read_wearable

__all__ = ["WEARABLE_LABELS", "WearableAdapter"]

#: label tasks of each data set (None: no labels).
WEARABLE_LABELS: dict[str, tuple[str, ...]] = {
    "bidmc": ("sex", "age_65", "location"),
    "participants": ("auto",),
}
_FIXED_CLASSES = {"sex": ["F", "M"], "age_65": ["<65", ">=65"]}
#: Fill NaN gaps of any length before filtering: segments with NaN were already rejected at indexing.
_FILL_ANY_GAP_S = 1.0e7


class WearableAdapter(SignalAdapter):
    """Adapter for wearable recordings (see the module docstring).

    Args:
        dataset: ``"bidmc"`` or ``"participants"`` (a per-participant folder, or a table via
            ``dataset_kwargs={"table": ...}``).
        root: the data set folder.
        modality: ``"ppg"``, ``"accelerometer"``, ``"ecg"``, ...; for BIDMC it picks the default channel.
        channels: model channels, in this order (default: BIDMC's ``PLETH`` for PPG, ``II`` for ECG;
            required for ``"participants"``).
        target_fs: every recording is resampled to this rate (Hz; the paper: PPG at 64 Hz).
        bandpass_hz: zero-phase band-pass ``(low, high)`` in Hz, or None.
        notch_hz: power-line notch, or None.
        normalize: ``"trial"`` (z-score per channel over the recording), ``"sample"`` (per segment) or
            ``"none"``.
        segment_s: segment length (s); one segment is one sample.
        stride_s: step between segments (default: ``segment_s``).
        labels: a label task of :data:`WEARABLE_LABELS`, or None.
        class_names: classes of a folder's ``label``/``labels`` column (default: the sorted values found).
        max_nan_fraction, max_flat_s, flat_tolerance, max_clipped_fraction, motion_threshold, allow_flat:
            segment checks (:class:`~modalities.wearables.quality.SegmentQuality`).
        accel_channels: accelerometer channels for the motion check (``"auto"``: found by name; None: no
            check).
        index_dir: a folder written by ``medcl index ROOT --modality ppg``; used instead of indexing.
        view_crop_s, aligned_views, encoder, cache_trials: as :class:`~modalities.signals.SignalAdapter`
            (views are for view-based objectives such as hierarchical contrast).
        dataset_kwargs: extra arguments of the manifest builder (``table``, ``pattern``, ``fs``).
    """

    input_key = "signal"

    def __init__(
        self,
        dataset: str = "bidmc",
        root: str = "../shared/data/bidmc",
        modality: str = "ppg",
        channels: Sequence[str] | None = None,
        target_fs: float = 64.0,
        bandpass_hz: tuple[float | None, float | None] | None = (0.5, 8.0),
        notch_hz: float | None = None,
        normalize: str = "trial",
        segment_s: float = 60.0,
        stride_s: float | None = None,
        labels: str | None = None,
        class_names: Sequence[str] | None = None,
        max_nan_fraction: float = 0.0,
        max_flat_s: float = 1.0,
        flat_tolerance: float = 0.0,
        max_clipped_fraction: float = 0.02,
        motion_threshold: float | None = 0.1,
        allow_flat: bool = False,
        accel_channels: Sequence[str] | str | None = "auto",
        index_dir: str | None = None,
        view_crop_s: float | None = None,
        aligned_views: bool = False,
        encoder: str = "InceptionTime",
        cache_trials: int = 512,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dataset not in WEARABLE_LABELS:
            raise ConfigError(f"dataset must be one of {sorted(WEARABLE_LABELS)}, got {dataset!r}")
        if channels is None:
            defaults = DATASET_CHANNELS.get(dataset, {})
            if modality not in defaults:
                raise ConfigError(
                    f"dataset {dataset!r} has no default channel for modality {modality!r}: give channels"
                )
            channels = defaults[modality]
        if labels == "auto":
            labels = WEARABLE_LABELS[dataset][0]
        if labels is not None and labels not in WEARABLE_LABELS[dataset]:
            raise ConfigError(
                f"labels={labels!r} is not a label task of {dataset}; choose one of "
                f"{', '.join(WEARABLE_LABELS[dataset])}, 'auto' or null"
            )
        super().__init__(
            dataset="folder",
            root=root,
            modality=modality,
            channels=channels,
            target_fs=target_fs,
            bandpass_hz=bandpass_hz,
            notch_hz=notch_hz,
            normalize=normalize,
            max_nan_gap_s=_FILL_ANY_GAP_S,
            window_s=segment_s,
            stride_s=stride_s,
            labels=None,
            index_dir=index_dir,
            max_nan_fraction=max_nan_fraction,
            allow_flat=allow_flat,
            view_crop_s=view_crop_s,
            aligned_views=aligned_views,
            encoder=encoder,
            cache_trials=cache_trials,
            dataset_kwargs=dataset_kwargs,
        )
        self.dataset = dataset
        self.labels = labels
        self._class_names = list(class_names) if class_names is not None else None
        self.segment_s = float(segment_s)
        self.stride_s = float(segment_s if stride_s is None else stride_s)
        self.max_flat_s = float(max_flat_s)
        self.flat_tolerance = float(flat_tolerance)
        self.max_clipped_fraction = float(max_clipped_fraction)
        self.motion_threshold = motion_threshold
        if isinstance(accel_channels, str) and accel_channels != "auto":
            raise ConfigError(
                f"accel_channels must be 'auto', a list of names or null, got {accel_channels!r}"
            )
        self.accel_channels = (
            accel_channels
            if accel_channels is None or isinstance(accel_channels, str)
            else list(accel_channels)
        )
        self._trials_for_labels: pd.DataFrame | None = None

    # ----------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        if self.labels is None:
            return None
        if self.labels in _FIXED_CLASSES:
            return list(_FIXED_CLASSES[self.labels])
        if self._class_names is not None:
            return list(self._class_names)
        column = "location" if self.labels == "location" else self._label_column(self._manifest_trials())
        if column is None:
            return None
        values = self._manifest_trials()[column].fillna("").astype(str)
        found = (
            {n for v in values for n in v.split("|") if n} if column == "labels" else {v for v in values if v}
        )
        return sorted(found)

    @property
    def label_mode(self) -> str:
        if self.labels == "auto" and self._label_column(self._manifest_trials()) == "labels":
            return "multilabel"
        return "multiclass"

    @staticmethod
    def _label_column(trials: pd.DataFrame) -> str | None:
        return next((c for c in ("label", "labels") if c in trials.columns), None)

    def _manifest_trials(self) -> pd.DataFrame:
        """The data set's recordings from their headers (for class names; read once)."""
        if self._trials_for_labels is None:
            if self.index_dir is not None:
                self._trials_for_labels = load_index(self.index_dir)[0].trials
            else:
                self._trials_for_labels = build_wearable_manifest(
                    self.dataset, self.root, **self.dataset_kwargs
                ).trials
        return self._trials_for_labels

    def _trial_labels(self, trials: pd.DataFrame) -> pd.Series:
        """One label string per recording (``""``: none)."""
        if self.labels is None:
            return pd.Series("", index=trials.index)
        if self.labels == "sex":
            sex = trials["sex"].fillna("").astype(str)
            return sex.where(sex.isin(["F", "M"]), "")
        if self.labels == "age_65":
            age = trials["age"].astype(float)
            return pd.Series(np.where(age.isna(), "", np.where(age >= 65, ">=65", "<65")), index=trials.index)
        if self.labels == "location":
            return trials["location"].fillna("").astype(str)
        column = self._label_column(trials)
        return trials[column].fillna("").astype(str) if column else pd.Series("", index=trials.index)

    # ----------------------------------------------------------------------------------------------
    def index(self) -> IndexedData:
        """Index the data (or read ``index_dir``): usable recordings, the quarantine (unusable recordings
        and rejected segments) and, as ``events``, the kept segments."""
        if self.index_dir is not None:
            manifest, kept, quarantine = load_index(self.index_dir)
            return IndexedData(manifest.trials, quarantine, kept, source=str(self.index_dir))
        result = index_wearables(
            self.dataset,
            self.root,
            channels=self.channels,
            max_nan_fraction=self.max_nan_fraction,
            allow_flat=self.allow_flat,
            modality=self.modality,
            segment_s=self.segment_s,
            stride_s=self.stride_s,
            accel_channels=self.accel_channels,
            max_flat_s=self.max_flat_s,
            flat_tolerance=self.flat_tolerance,
            max_clipped_fraction=self.max_clipped_fraction,
            motion_threshold=self.motion_threshold,
            **self.dataset_kwargs,
        )
        self._trials_for_labels = result.manifest.trials
        return IndexedData(
            result.manifest.trials,
            result.quarantine_with_segments(),
            result.kept_segments,
            source=f"{self.dataset} at {self.root}: {result.summary()}",
        )

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per kept segment (``events``: the kept-segment table of :meth:`index`; all whole
        segments when None), with ``start``/``stop`` at ``target_fs`` and the recording's label."""
        trials = trials.reset_index(drop=True)
        labels = self._trial_labels(trials)
        kept = None
        if events is not None:
            kept = {tid: group for tid, group in events.groupby(events["trial_id"].astype(str))}
        frames = []
        for i, trial in trials.iterrows():
            length = self._trial_length(int(trial["n_samples"]), float(trial["fs"]))
            if kept is None:
                starts = np.arange(0, max(length - self.window, -1) + 1, self.stride, dtype=np.int64)
                index = np.arange(len(starts))
            else:
                segments = kept.get(str(trial["trial_id"]))
                if segments is None or not len(segments):
                    continue
                index = segments["sample_index"].to_numpy(dtype=np.int64)
                starts = np.round(segments["start_s"].to_numpy(dtype=np.float64) * self.target_fs).astype(
                    np.int64
                )
            inside = starts + self.window <= length
            if not inside.any():
                continue
            frames.append(
                pd.DataFrame(
                    {
                        "patient_id": str(trial["patient_id"]),
                        "trial_id": str(trial["trial_id"]),
                        "sample_index": index[inside],
                        "path": trial["path"],
                        "format": trial["format"],
                        "fs": float(trial["fs"]),
                        "start": starts[inside],
                        "stop": starts[inside] + self.window,
                        "labels": labels.iloc[i],
                    }
                )
            )
        if not frames:
            raise ConfigError(f"no usable {self.segment_s:g} s segment in {self.dataset} at {self.root}")
        return pd.concat(frames, ignore_index=True)

    # ----------------------------------------------------------------------------------------------
    def preprocess_trial(
        self, path: str, fs: float | None = None, file_format: str | None = None
    ) -> np.ndarray:
        """Read one recording (:func:`~modalities.wearables.readers.read_wearable`) and run the
        recording-level preprocessing: ``(len(channels), T')`` float32 at ``target_fs``."""
        table = file_format in ("csv", "parquet") and fs is not None and not pd.isna(fs)
        record = read_wearable(path, channels=self.channels, fs=float(fs) if table else None)
        x, _ = preprocess_recording(record.data, record.fs, self._steps, self.channels, str(path))
        return x

    def example_windows(self, n: int = 16) -> np.ndarray:
        """Up to ``n`` preprocessed segments ``(N, C, window)`` from the first recordings (for export
        parity checks on real data)."""
        trials = build_wearable_manifest(self.dataset, self.root, **self.dataset_kwargs).trials
        windows: list[np.ndarray] = []
        for row in trials.itertuples(index=False):
            x = self.preprocess_trial(str(row.path), float(row.fs), str(row.format))
            windows.extend(make_windows(x, self._steps, str(row.path))[0])
            if len(windows) >= n:
                break
        if not windows:
            raise ConfigError(f"no segment could be read from {self.root}")
        return np.stack(windows[:n])
