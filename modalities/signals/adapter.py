"""The ECG/EEG adapter: real files → validated manifest → preprocessed windows → contrastive views.

:class:`SignalAdapter` implements :class:`medcl.data.Adapter` for 1-D physiological signals (ECG, EEG,
and anything else in WFDB, EDF or CSV). It

1. indexes a dataset (PTB-XL, MIT-BIH, eegmat or a generic folder/CSV layout; every file read and
   checked, bad ones quarantined) or reads a saved ``medcl index`` output;
2. preprocesses each *trial* (recording) once — NaN-gap filling → resampling to ``target_fs`` →
   zero-phase band-pass → optional notch → per-channel z-scoring over the whole trial (or per window) —
   by running its preprocessing spec (:meth:`SignalAdapter.input_spec`) through
   :mod:`modalities.signals.pipeline`, the same code the torch-free ONNX predictor runs, and caches the
   result per worker;
3. cuts trials into *samples* (windows of ``window_s`` every ``stride_s``, or windows centred on
   annotated events such as MIT-BIH beats), with their patient, trial and sample ids and labels;
4. makes contrastive views with :func:`~modalities.signals.augment.ecg_contrastive_views`;
5. provides a default encoder (tsai InceptionTime, or any :func:`~modalities.signals.encoders.build_encoder`
   name such as ``"ts2vec"``).

Label tasks (``labels``; ``"auto"`` picks the first of each dataset):

- PTB-XL: ``"superclass"`` (the five diagnostic superclasses, multi-label) or ``"norm_vs_mi"`` (a record
  is NORM if its superclasses are exactly {NORM}, MI if MI is among them and NORM is not; other records
  have no label; two classes);
- MIT-BIH: ``"aami"`` (AAMI beat classes: multi-label per window, the classes of the beats inside it;
  one class per beat window with ``segmentation="events"``);
- eegmat: ``"task"`` (rest vs mental arithmetic);
- folder: ``"auto"`` — the table's ``label`` (one class) or ``labels`` (``|``-separated) column.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from medcl.configurable import Configurable
from medcl.data.adapter import IndexedData
from medcl.errors import ConfigError, DataError
from modalities.bundled import resolve_root
from modalities.signals.augment import ecg_contrastive_views
from modalities.signals.dsp import Resample, segment_starts
from modalities.signals.encoders import build_encoder
from modalities.signals.indexing import index_signals, load_index
from modalities.signals.labels import AAMI_CLASSES, PTBXL_SUPERCLASSES
from modalities.signals.manifests import build_manifest
from modalities.signals.pipeline import finish_window, make_windows, preprocess_recording
from modalities.signals.readers import read_signal

__all__ = ["DATASET_CHANNELS", "LABEL_TASKS", "SignalAdapter"]

PTBXL_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
EEGMAT_CHANNELS: tuple[str, ...] = (
    *("Fp1", "Fp2", "F3", "F4", "F7", "F8", "T3", "T4", "C3", "C4"),
    *("T5", "T6", "P3", "P4", "O1", "O2", "Fz", "Cz", "Pz"),
)
#: Channels used when ``channels`` is not given.
DATASET_CHANNELS: dict[str, tuple[str, ...]] = {
    "ptbxl": PTBXL_LEADS,
    "mitdb": ("MLII",),  # the one lead (almost) every MIT-BIH record has; 102 and 104 lack it
    "eegmat": EEGMAT_CHANNELS,
}
#: Label tasks of each dataset; the first is what ``labels="auto"`` means.
LABEL_TASKS: dict[str, tuple[str, ...]] = {
    "ptbxl": ("superclass", "norm_vs_mi"),
    "mitdb": ("aami",),
    "eegmat": ("task",),
    "folder": ("auto",),
}


class SignalAdapter(Configurable):
    """ECG/EEG adapter (see the module docstring).

    Args:
        dataset: ``"ptbxl"``, ``"mitdb"``, ``"eegmat"`` or ``"folder"``.
        root: the dataset folder, or ``"bundled:ptbxl"`` for the subset that ships with medcl.
        modality: ``"ecg"``, ``"eeg"``, ... (recorded with runs and exported models).
        channels: channels to use, in this order; a recording without one of them is quarantined.
            Default: the dataset's standard set (:data:`DATASET_CHANNELS`); required for ``"folder"``.
        target_fs: sampling rate every trial is resampled to (Hz).
        bandpass_hz: ``(low, high)`` of the zero-phase Butterworth band-pass (either may be None for a
            high- or low-pass); None disables filtering.
        notch_hz: power-line notch frequency (50 or 60), or None.
        normalize: ``"trial"`` (z-score each channel over the whole recording), ``"sample"`` (over each
            window) or ``"none"``.
        max_nan_gap_s: NaN runs up to this long are linearly interpolated; longer ones make the sample
            fail (0: any NaN fails). Indexing quarantines recordings with NaN unless
            ``max_nan_fraction`` > 0.
        window_s: length of a sample in seconds.
        stride_s: step between windows (default: ``window_s``, no overlap).
        segmentation: ``"windows"`` (fixed windows) or ``"events"`` (one window centred on every
            annotated event, e.g. MIT-BIH beats).
        labels: the label task (see the module docstring), ``"auto"``, or None (no labels).
        class_names: label classes for the folder layout (default: the sorted values found).
        index_dir: a folder written by ``medcl index``; used instead of indexing again.
        max_nan_fraction: NaN fraction per channel tolerated when indexing.
        allow_flat: keep recordings with a flat channel when indexing.
        view_crop_s: length of each contrastive view (a random crop of the sample), or None for the
            whole sample.
        aligned_views: keep the two views aligned in time (no crop or shift; amplitude, noise, wander,
            cut-out and lead dropout only), as the observation and sample levels of hierarchical
            contrast need.
        encoder: name of the default encoder (:func:`~modalities.signals.encoders.build_encoder`).
        cache_trials: preprocessed trials kept in memory per worker.
        dataset_kwargs: extra arguments of the manifest builder (e.g. ``{"records": [...]}`` for MIT-BIH,
            ``{"table": "labels.csv"}`` for a folder).
    """

    input_key = "signal"

    def __init__(
        self,
        dataset: str = "ptbxl",
        root: str = "bundled:ptbxl",
        modality: str = "ecg",
        channels: Sequence[str] | None = None,
        target_fs: float = 100.0,
        bandpass_hz: tuple[float | None, float | None] | None = (0.5, 40.0),
        notch_hz: float | None = None,
        normalize: str = "trial",
        max_nan_gap_s: float = 0.0,
        window_s: float = 2.5,
        stride_s: float | None = None,
        segmentation: str = "windows",
        labels: str | None = "auto",
        class_names: Sequence[str] | None = None,
        index_dir: str | None = None,
        max_nan_fraction: float = 0.0,
        allow_flat: bool = False,
        view_crop_s: float | None = None,
        aligned_views: bool = False,
        encoder: str = "InceptionTime",
        cache_trials: int = 512,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dataset not in LABEL_TASKS:
            raise ConfigError(f"dataset must be one of {sorted(LABEL_TASKS)}, got {dataset!r}")
        if channels is None:
            if dataset not in DATASET_CHANNELS:
                raise ConfigError(f"dataset {dataset!r} needs an explicit channels list")
            channels = DATASET_CHANNELS[dataset]
        if isinstance(channels, str) or len(channels) == 0:
            raise ConfigError(f"channels must be a non-empty list of names, got {channels!r}")
        if not target_fs > 0:
            raise ConfigError(f"target_fs must be > 0, got {target_fs}")
        if normalize not in ("trial", "sample", "none"):
            raise ConfigError(f"normalize must be 'trial', 'sample' or 'none', got {normalize!r}")
        if segmentation not in ("windows", "events"):
            raise ConfigError(f"segmentation must be 'windows' or 'events', got {segmentation!r}")
        if labels == "auto":
            labels = LABEL_TASKS[dataset][0]
        if labels is not None and labels not in LABEL_TASKS[dataset]:
            raise ConfigError(
                f"labels={labels!r} is not a label task of {dataset}; choose one of "
                f"{', '.join(LABEL_TASKS[dataset])}, 'auto' or null"
            )
        if not window_s > 0 or (stride_s is not None and not stride_s > 0):
            raise ConfigError(f"window_s and stride_s must be > 0, got {window_s} and {stride_s}")
        self.dataset = dataset
        self.root = str(root)
        self.modality = modality
        self.channels = [str(c) for c in channels]
        self.target_fs = float(target_fs)
        self.bandpass_hz = None if bandpass_hz is None else (bandpass_hz[0], bandpass_hz[1])
        self.notch_hz = notch_hz
        self.normalize = normalize
        self.max_nan_gap_s = float(max_nan_gap_s)
        self.window = round(window_s * self.target_fs)
        self.stride = self.window if stride_s is None else round(stride_s * self.target_fs)
        if self.window < 2 or self.stride < 1:
            raise ConfigError(
                f"window_s={window_s} / stride_s={stride_s} are too short at {self.target_fs} Hz"
            )
        self.segmentation = segmentation
        self.labels = labels
        self.index_dir = index_dir
        self.max_nan_fraction = max_nan_fraction
        self.allow_flat = allow_flat
        self.view_crop = None if view_crop_s is None else round(view_crop_s * self.target_fs)
        if self.view_crop is not None and not 2 <= self.view_crop <= self.window:
            raise ConfigError(f"view_crop_s={view_crop_s} must be shorter than window_s={window_s}")
        if aligned_views and self.view_crop is not None:
            raise ConfigError(
                "aligned_views needs view_crop_s: null (a random crop moves the views apart in time)"
            )
        self.aligned_views = aligned_views
        self.encoder_name = encoder
        self.cache_trials = int(cache_trials)
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self._class_names = list(class_names) if class_names is not None else None
        self._folder_label_info: tuple[str | None, list[str] | None] | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._steps = self.input_spec()["preprocessing"]

    # ----------------------------------------------------------------------------------------------
    # pickling for DataLoader workers: the trial cache stays behind
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    # ----------------------------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def class_names(self) -> list[str] | None:
        if self.labels is None:
            return None
        if self.labels == "norm_vs_mi":
            return ["NORM", "MI"]
        if self.dataset == "ptbxl":
            return list(PTBXL_SUPERCLASSES)
        if self.dataset == "mitdb":
            return list(AAMI_CLASSES)
        if self.dataset == "eegmat":
            return ["rest", "task"]
        return self._folder_labels()[1]

    @property
    def label_mode(self) -> str:
        if self.labels == "norm_vs_mi":
            return "multiclass"
        if self.dataset == "ptbxl":
            return "multilabel"
        if self.dataset == "mitdb":
            return "multiclass" if self.segmentation == "events" else "multilabel"
        if self.dataset == "eegmat":
            return "multiclass"
        return "multilabel" if self._folder_labels()[0] == "labels" else "multiclass"

    def _folder_labels(self) -> tuple[str | None, list[str] | None]:
        """Folder layout: the label column (``label``: one class, ``labels``: ``|``-joined classes) and
        the class names (given, or the sorted values found). Reads the manifest's headers once."""
        if self._folder_label_info is None:
            trials = build_manifest(self.dataset, resolve_root(self.root), **self.dataset_kwargs).trials
            column = self._folder_label_column(trials)
            names = self._class_names
            if names is None and column is not None:
                values = trials[column].dropna().astype(str)
                found = {n for v in values for n in v.split("|") if n} if column == "labels" else set(values)
                names = sorted(found)
            self._folder_label_info = (column, names)
        return self._folder_label_info

    @staticmethod
    def _folder_label_column(trials: pd.DataFrame) -> str | None:
        for column in ("label", "labels"):
            if column in trials.columns:
                return column
        return None

    # ----------------------------------------------------------------------------------------------
    def index(self) -> IndexedData:
        """Index and validate the dataset (or read ``index_dir``); bad files go to the quarantine."""
        if self.index_dir is not None:
            manifest = load_index(self.index_dir)
            return IndexedData(manifest.trials, manifest.missing, manifest.events, source=str(self.index_dir))
        result = index_signals(
            self.dataset,
            resolve_root(self.root),
            channels=self.channels,
            max_nan_fraction=self.max_nan_fraction,
            allow_flat=self.allow_flat,
            **self.dataset_kwargs,
        )
        return IndexedData(
            result.manifest.trials,
            result.quarantine,
            result.manifest.events,
            source=f"{self.dataset} at {self.root}",
        )

    def _trial_length(self, n_samples: int, fs: float) -> int:
        """Samples of a trial after resampling to ``target_fs``."""
        if float(fs) == self.target_fs:
            return int(n_samples)
        return Resample(float(fs), self.target_fs).output_length(int(n_samples))

    def _trial_labels(self, trials: pd.DataFrame) -> pd.Series:
        """One label string per trial (``|``-joined class names, ``""`` for none)."""
        if self.labels is None:
            return pd.Series("", index=trials.index)
        if self.labels == "norm_vs_mi":
            superclasses = trials["labels"].fillna("").astype(str).str.split("|")
            return superclasses.map(
                lambda names: (
                    "NORM"
                    if set(names) == {"NORM"}
                    else ("MI" if "MI" in names and "NORM" not in names else "")
                )
            )
        if self.dataset == "ptbxl":
            return trials["labels"].fillna("").astype(str)
        if self.dataset == "eegmat":
            return trials["label"].astype(str)
        if self.dataset == "folder":
            column = self._folder_label_column(trials)
            return trials[column].fillna("").astype(str) if column else pd.Series("", index=trials.index)
        return pd.Series("", index=trials.index)  # mitdb: labels come from the beat events

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        """The sample table: one row per window, with ids, where to cut (``start``/``stop`` at
        ``target_fs``) and the window's labels."""
        trials = trials.reset_index(drop=True)
        lengths = np.array(
            [self._trial_length(n, fs) for n, fs in zip(trials["n_samples"], trials["fs"], strict=True)]
        )
        trial_labels = self._trial_labels(trials)
        by_trial = None
        if events is not None and len(events):
            by_trial = {tid: group.sort_values("sample") for tid, group in events.groupby("trial_id")}
        if self.segmentation == "events" and by_trial is None:
            raise ConfigError(
                f"segmentation='events' needs annotated events; dataset {self.dataset!r} has none"
            )
        frames = []
        for i, trial in trials.iterrows():
            trial_events = by_trial.get(trial["trial_id"]) if by_trial is not None else None
            scale = self.target_fs / float(trial["fs"])
            if self.segmentation == "windows":
                starts = segment_starts(int(lengths[i]), self.window, self.stride)
                labels = self._window_labels(trial_events, starts, scale) if self.dataset == "mitdb" else None
            else:
                if trial_events is None or not len(trial_events):
                    continue
                centres = np.round(trial_events["sample"].to_numpy() * scale).astype(np.int64)
                starts = centres - self.window // 2
                inside = (starts >= 0) & (starts + self.window <= lengths[i])
                starts = starts[inside]
                labels = trial_events["aami_class"].astype(str).to_numpy()[inside] if self.labels else None
            if len(starts) == 0:
                continue
            frame = pd.DataFrame(
                {
                    "patient_id": str(trial["patient_id"]),
                    "trial_id": str(trial["trial_id"]),
                    "sample_index": np.arange(len(starts)),
                    "path": trial["path"],
                    "format": trial["format"],
                    "fs": float(trial["fs"]),
                    "start": starts.astype(np.int64),
                    "stop": (starts + self.window).astype(np.int64),
                    "labels": labels if labels is not None else trial_labels.iloc[i],
                }
            )
            frames.append(frame)
        if not frames:
            raise ConfigError(
                f"no recording is at least {self.window / self.target_fs:g} s long: no samples to train on"
            )
        return pd.concat(frames, ignore_index=True)

    def _window_labels(
        self, trial_events: pd.DataFrame | None, starts: np.ndarray, scale: float
    ) -> np.ndarray | None:
        """AAMI classes of the annotated beats inside each window (``|``-joined, AAMI order)."""
        if self.labels is None:
            return None
        out = np.full(len(starts), "", dtype=object)
        if trial_events is None or not len(trial_events):
            return out
        beat_at = trial_events["sample"].to_numpy() * scale
        classes = trial_events["aami_class"].astype(str).to_numpy()
        lo = np.searchsorted(beat_at, starts, side="left")
        hi = np.searchsorted(beat_at, starts + self.window, side="left")
        order = {name: k for k, name in enumerate(AAMI_CLASSES)}
        for w, (a, b) in enumerate(zip(lo, hi, strict=True)):
            out[w] = "|".join(sorted(set(classes[a:b]), key=lambda c: order.get(c, len(order))))
        return out

    # ----------------------------------------------------------------------------------------------
    def preprocess_trial(
        self, path: str, fs: float | None = None, file_format: str | None = None
    ) -> np.ndarray:
        """Read one recording and run the recording-level preprocessing of :meth:`input_spec` on it
        (:func:`modalities.signals.pipeline.preprocess_recording`, the code the ONNX predictor runs too):
        ``(len(channels), T')`` float32 at ``target_fs``."""
        kwargs = {"fs": float(fs)} if file_format == "csv" and fs is not None else {}
        record = read_signal(path, channels=self.channels, **kwargs)
        x, _ = preprocess_recording(record.data, record.fs, self._steps, self.channels, str(path))
        return x

    def example_windows(self, n: int = 16) -> np.ndarray:
        """Up to ``n`` preprocessed windows ``(N, C, window)`` from the first recordings the dataset lists
        (read from their headers only; for export parity checks on real data)."""
        trials = build_manifest(self.dataset, resolve_root(self.root), **self.dataset_kwargs).trials
        windows: list[np.ndarray] = []
        for row in trials.itertuples(index=False):
            x = self.preprocess_trial(str(row.path), float(row.fs), str(row.format))
            windows.extend(make_windows(x, self._steps, str(row.path))[0])
            if len(windows) >= n:
                break
        if not windows:
            raise ConfigError(f"no window could be read from {self.root}")
        return np.stack(windows[:n])

    def _trial(self, row: pd.Series) -> np.ndarray:
        path = str(row["path"])
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        trial = self.preprocess_trial(path, row.get("fs"), row.get("format"))
        if self.cache_trials > 0:
            self._cache[path] = trial
            while len(self._cache) > self.cache_trials:
                self._cache.popitem(last=False)
        return trial

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        """One preprocessed window ``(C, window)`` with its ids (DESIGN.md §1.1)."""
        trial = self._trial(row)
        start, stop = int(row["start"]), int(row["stop"])
        window = trial[:, start:stop]
        if window.shape[1] != stop - start:
            raise DataError(
                row["path"],
                f"window {start}:{stop} lies outside the recording ({trial.shape[1]} samples at "
                f"{self.target_fs:g} Hz); the file changed since it was indexed",
                "index the data again",
            )
        window = finish_window(window, self._steps)
        return {
            self.input_key: np.ascontiguousarray(window),
            "patient_id": str(row["patient_id"]),
            "trial_id": str(row["trial_id"]),
            "sample_index": int(row["sample_index"]),
            "meta": {"fs": self.target_fs, "channel_names": list(self.channels), "path": str(row["path"])},
        }

    # ----------------------------------------------------------------------------------------------
    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fresh random view pipeline (the dataset seeds it per sample and view)."""
        return ecg_contrastive_views(
            self.target_fs, crop_length=self.view_crop, seed=0, key=self.input_key, aligned=self.aligned_views
        )

    def default_encoder(self) -> nn.Module:
        """``build_encoder(encoder, in_channels=len(channels))``."""
        return build_encoder(self.encoder_name, self.num_channels)

    def input_spec(self) -> dict[str, Any]:
        """What the model sees and every step that turns a raw file into it (JSON-able)."""
        view = self.view_crop if self.view_crop is not None else self.window
        steps: list[dict[str, Any]] = [
            {"op": "read", "channels": list(self.channels)},
            {"op": "fill_nan", "max_gap_s": self.max_nan_gap_s},
            {"op": "resample", "to_hz": self.target_fs, "method": "polyphase"},
        ]
        if self.bandpass_hz is not None:
            steps.append(
                {
                    "op": "bandpass",
                    "low_hz": self.bandpass_hz[0],
                    "high_hz": self.bandpass_hz[1],
                    "order": 4,
                    "zero_phase": True,
                }
            )
        if self.notch_hz is not None:
            steps.append({"op": "notch", "freq_hz": self.notch_hz, "quality": 30.0})
        if self.normalize == "trial":
            steps.append({"op": "zscore", "scope": "recording", "eps": 1e-6})
        steps.append({"op": "window", "length": self.window, "stride": self.stride})
        if self.normalize == "sample":
            steps.append({"op": "zscore", "scope": "window", "eps": 1e-6})
        return {
            "modality": self.modality,
            "input_key": self.input_key,
            "layout": "(C, T)",
            "channels": list(self.channels),
            "fs": self.target_fs,
            "window_samples": self.window,
            "view_samples": view,
            "preprocessing": steps,
        }
