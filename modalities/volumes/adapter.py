"""The CT/MRI volume adapter: real files → validated manifest → preprocessed studies → contrastive views.

:class:`VolumeAdapter` implements :class:`medcl.data.Adapter` for 3-D volumes (NIfTI, NRRD, DICOM
series). It

1. indexes a dataset (MSD, BTCV, a CSV table or paired files; every image and mask read and checked,
   bad ones quarantined: :func:`~modalities.volumes.indexing.index_volumes`) or reads a saved
   ``medcl index --modality volume`` output;
2. preprocesses each study by running its preprocessing spec (:meth:`VolumeAdapter.input_spec`,
   see :mod:`modalities.volumes.transforms`): load → RAS orientation → resampling to ``spacing`` → CT
   window or MR z-score → optional foreground crop → padding to at least the ROI; cached on disk by
   MONAI's ``PersistentDataset`` when ``cache_dir`` is set (the cache key includes the whole spec);
3. makes one sample per study (``sample_index`` 0): image ``(C, H, W, D)`` float32 in RAS, mask
   ``(1, H, W, D)`` int64 when the study has one;
4. makes contrastive views (:func:`~modalities.volumes.transforms.volume_views`: a random ROI crop and
   intensity augmentations, each with its own seeded generator);
5. provides a default encoder (``UNetBackbone``, or ``SwinUNETRBackbone`` with ``encoder="swinunetr"``).

Labels are segmentation masks (``label_mode`` ``"segmentation"``); ``class_names`` are the mask's label
names (``label_names``, or those of MSD's ``dataset.json``/task, or BTCV's organs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from medcl.configurable import Configurable
from medcl.data.adapter import IndexedData
from medcl.errors import ConfigError
from modalities.bundled import resolve_root
from modalities.volumes.indexing import index_volumes, load_index
from modalities.volumes.manifests import build_manifest
from modalities.volumes.readers import GRID_ATOL
from modalities.volumes.transforms import CT_WINDOW, preprocess, preprocessing_spec, volume_views

__all__ = ["ENCODERS", "VolumeAdapter"]

#: ``encoder`` names → class in :mod:`modalities.volumes.encoders`.
ENCODERS: dict[str, str] = {"unet": "UNetBackbone", "swinunetr": "SwinUNETRBackbone"}
_SPATIAL_MULTIPLE = {"unet": 16, "swinunetr": 32}


class VolumeAdapter(Configurable):
    """CT/MRI volume adapter (see the module docstring).

    Args:
        root: the dataset folder, or ``"bundled:msd_hippocampus"`` (40 labelled MRI crops that ship
            with medcl).
        dataset: layout — ``"auto"``, ``"msd"``, ``"btcv"``, ``"csv"`` or ``"paired"``.
        image_modality: ``"CT"`` or ``"MR"``; with ``intensity="auto"`` CT is windowed and MR z-scored.
            Studies whose manifest names the other modality make :meth:`make_samples` fail.
        roi: the training crop ``(H, W, D)`` in voxels; volumes are padded to at least this, views are
            crops of this size. Each side must suit the encoder (UNet: multiple of 16, ≥ 32; SwinUNETR:
            multiple of 32, ≥ 64).
        spacing: voxel size (mm) every study is resampled to, or None to keep each file's own.
        intensity: ``"auto"``, ``"window"``, ``"zscore"`` or ``"none"``.
        window: CT window ``(a_min, a_max)`` in HU, mapped to 0…1 and clipped.
        crop_foreground: crop each study to its non-background bounding box before padding.
        foreground_margin: voxels kept around the foreground.
        image_interp: ``"bilinear"`` or ``"nearest"`` resampling of images (masks: nearest).
        channels: image channels (files with another count fail to load).
        label_names: names of the mask labels 0..K-1; default: from the layout (MSD, BTCV) or None.
        labelled_only: keep only studies with a mask in :meth:`make_samples`.
        cache_dir: folder for the preprocessed-study cache (MONAI ``PersistentDataset``), or None.
        index_dir: a folder written by ``medcl index --modality volume``; used instead of indexing.
        grid_atol: tolerance (mm) of the mask-on-image-grid check.
        view_flip_axes: spatial axes (1: posterior-anterior, 2: inferior-superior) the views may flip;
            the left-right axis (0) is never flipped.
        view_intensity: strength of the views' random intensity scale and shift (± fraction / offset).
        view_noise_std: the views' largest Gaussian noise std.
        view_prob: probability of each random intensity step and flip.
        encoder: ``"unet"`` (MONAI BasicUNet, light) or ``"swinunetr"`` (MONAI SwinUNETR v2).
        encoder_kwargs: extra arguments of the encoder class (e.g. ``{"features": [8, 8, 16, 32, 64, 8]}``).
        dataset_kwargs: extra arguments of the layout's manifest builder (``{"table": "studies.csv"}``,
            ``{"include_test": false}``, ...).
    """

    input_key = "image"
    modality = "volume"

    def __init__(
        self,
        root: str = "bundled:msd_hippocampus",
        dataset: str = "auto",
        image_modality: str = "MR",
        roi: Sequence[int] = (32, 32, 32),
        spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
        intensity: str = "auto",
        window: Sequence[float] = CT_WINDOW,
        crop_foreground: bool = False,
        foreground_margin: int = 0,
        image_interp: str = "bilinear",
        channels: int = 1,
        label_names: Sequence[str] | None = None,
        labelled_only: bool = False,
        cache_dir: str | None = None,
        index_dir: str | None = None,
        grid_atol: float = GRID_ATOL,
        view_flip_axes: Sequence[int] = (),
        view_intensity: float = 0.1,
        view_noise_std: float = 0.05,
        view_prob: float = 0.5,
        encoder: str = "unet",
        encoder_kwargs: dict[str, Any] | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dataset not in ("auto", "msd", "btcv", "csv", "paired"):
            raise ConfigError(f"dataset must be auto, msd, btcv, csv or paired, got {dataset!r}")
        if encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if not grid_atol >= 0:
            raise ConfigError(f"grid_atol must be >= 0, got {grid_atol}")
        self.root = str(root)
        self.dataset = dataset
        self.image_modality = image_modality
        self.roi = tuple(int(s) for s in roi)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.channels = int(channels)
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.labelled_only = bool(labelled_only)
        self.cache_dir = cache_dir
        self.index_dir = index_dir
        self.grid_atol = float(grid_atol)
        self.encoder_name = encoder
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.dataset_kwargs = dict(dataset_kwargs or {})
        multiple = _SPATIAL_MULTIPLE[encoder]
        if len(self.roi) != 3 or any(s % multiple or s < 2 * multiple for s in self.roi):
            raise ConfigError(
                f"roi {list(self.roi)} does not suit the {encoder} encoder: every side must be a multiple of "
                f"{multiple} and at least {2 * multiple} (e.g. {[2 * multiple] * 3})"
            )
        # Checks every preprocessing setting (ConfigError) and fixes the spec once.
        self._steps = preprocessing_spec(
            image_modality=image_modality,
            channels=self.channels,
            spacing=self.spacing,
            roi=self.roi,
            intensity=intensity,
            window=tuple(window),
            crop_foreground=crop_foreground,
            foreground_margin=foreground_margin,
            image_interp=image_interp,
        )
        self._view_settings = {
            "flip_axes": [int(a) for a in view_flip_axes],
            "flip_prob": float(view_prob),
            "intensity_scale": float(view_intensity),
            "intensity_shift": float(view_intensity),
            "intensity_prob": float(view_prob),
            "noise_std": float(view_noise_std),
            "noise_prob": float(view_prob),
        }
        volume_views(self.roi, **self._view_settings)  # validates the view settings now, not in a worker
        self._layout_labels: tuple[str, ...] | None = None
        self._layout_labels_known = False

    # ----------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        """Mask label names by value (``class_names[k]`` is label ``k``), or None when unknown."""
        if self.label_names is not None:
            return list(self.label_names)
        names = self._labels_from_layout()
        return None if names is None else list(names)

    @property
    def label_mode(self) -> str:
        return "segmentation"

    def _labels_from_layout(self) -> tuple[str, ...] | None:
        """Label names the layout knows (``dataset.json``, MSD task, BTCV), read once (file names only)."""
        if not self._layout_labels_known:
            if self.index_dir is not None:
                self._layout_labels = load_index(self.index_dir).label_names
            else:
                manifest = build_manifest(self.dataset, resolve_root(self.root), **self.dataset_kwargs)
                self._layout_labels = manifest.label_names
            self._layout_labels_known = True
        return self._layout_labels

    # ----------------------------------------------------------------------------------------------
    def index(self) -> IndexedData:
        """Index and validate the dataset (or read ``index_dir``); bad files go to the quarantine."""
        if self.index_dir is not None:
            manifest = load_index(self.index_dir)
            return IndexedData(manifest.trials, manifest.missing, None, source=str(self.index_dir))
        result = index_volumes(
            self.dataset, resolve_root(self.root), grid_atol=self.grid_atol, **self.dataset_kwargs
        )
        self._layout_labels = result.manifest.label_names
        self._layout_labels_known = True
        return IndexedData(
            result.manifest.trials, result.quarantine, None, source=f"{result.dataset} at {self.root}"
        )

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        """One sample per study: ``patient_id``, ``trial_id``, ``sample_index`` (0), ``path``,
        ``mask_path`` (``""`` = none), ``modality``.

        Raises:
            ConfigError: a study's known modality differs from ``image_modality`` (its intensities would be
                normalised the wrong way), or no study is left (``labelled_only`` with no mask).
        """
        trials = trials.reset_index(drop=True)
        mask_paths = trials["mask_path"].fillna("").astype(str) if "mask_path" in trials else ""
        modality = trials["modality"].fillna("").astype(str) if "modality" in trials else ""
        samples = pd.DataFrame(
            {
                "patient_id": trials["patient_id"].astype(str),
                "trial_id": trials["trial_id"].astype(str),
                "sample_index": np.zeros(len(trials), dtype=np.int64),
                "path": trials["path"].astype(str),
                "mask_path": mask_paths,
                "modality": modality,
            }
        )
        other = samples[(samples["modality"] != "") & (samples["modality"] != self.image_modality)]
        if len(other):
            kinds = ", ".join(sorted(set(other["modality"])))
            raise ConfigError(
                f"{len(other)} of {len(samples)} studies are {kinds} but the adapter preprocesses "
                f"{self.image_modality} (e.g. {other['path'].iloc[0]}); set image_modality: "
                f"{other['modality'].iloc[0]} or index the modalities apart"
            )
        if self.labelled_only:
            samples = samples[samples["mask_path"] != ""].reset_index(drop=True)
        if not len(samples):
            raise ConfigError(
                "no study to make samples from"
                + (" (labelled_only: no study has a mask)" if len(trials) else "")
            )
        return samples

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        """The preprocessed study (DESIGN.md §1.1): ``image`` float32 ``(C, H, W, D)`` in RAS, ``mask``
        int64 ``(1, H, W, D)`` when the study has one, ids, and ``meta`` (``path``, ``mask_path``,
        ``spacing``, ``affine`` of the preprocessed array as nested lists, ``modality``).

        Raises:
            DataError: the image or mask cannot be used (names the file; the dataset's skip policy relies
                on it).
        """
        mask_path = str(row.get("mask_path", "") or "")
        out = preprocess(
            self._steps,
            str(row["path"]),
            mask_path or None,
            cache_dir=self.cache_dir,
            grid_atol=self.grid_atol,
        )
        affine = out["affine"]
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        sample: dict[str, Any] = {
            self.input_key: out["image"],
            "patient_id": str(row["patient_id"]),
            "trial_id": str(row["trial_id"]),
            "sample_index": int(row.get("sample_index", 0)),
            "meta": {
                "path": str(row["path"]),
                "mask_path": mask_path,
                "spacing": [float(s) for s in spacing],
                "affine": affine.tolist(),
                "modality": self.image_modality,
            },
        }
        if "mask" in out:
            sample["mask"] = out["mask"]
        return sample

    # ----------------------------------------------------------------------------------------------
    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fresh random view pipeline (the dataset seeds it per sample and view)."""
        return volume_views(self.roi, image_key=self.input_key, seed=0, **self._view_settings)

    def default_encoder(self) -> nn.Module:
        """``UNetBackbone(in_channels=channels, **encoder_kwargs)`` (or ``SwinUNETRBackbone``)."""
        import importlib

        module = importlib.import_module("modalities.volumes.encoders")
        return getattr(module, ENCODERS[self.encoder_name])(in_channels=self.channels, **self.encoder_kwargs)

    def input_spec(self) -> dict[str, Any]:
        """What the model sees and every step that turns a raw file into it (JSON-able)."""
        return {
            "modality": self.modality,
            "image_modality": self.image_modality,
            "input_key": self.input_key,
            "layout": "(C, H, W, D)",
            "orientation": "RAS",
            "channels": self.channels,
            "roi": list(self.roi),
            "spacing": None if self.spacing is None else list(self.spacing),
            "label_mode": self.label_mode,
            "preprocessing": [dict(step) for step in self._steps],
        }
