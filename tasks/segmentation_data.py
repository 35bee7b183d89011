"""The segmentation data module: volumes with masks, patient-disjoint splits, label fractions by patient.

:class:`SegmentationDataModule` reuses the manifest machinery of every medcl data module
(:class:`~medcl.data.datamodule.ManifestDataModule`: indexing with quarantine, patient-disjoint split,
sample tables and the data record next to the run) and the dataset of every medcl data module
(:class:`~medcl.data.dataset.ManifestDataset`: the adapter loads and preprocesses a sample, bad samples
follow ``on_error``). What is specific to segmentation is the per-sample transform,
:class:`SegmentationItems`:

- training items are random regions of interest (ROI) of each volume, taken with MONAI
  ``RandCropByPosNegLabeld`` (ROI centres on foreground and background voxels 1:1, ``crop="pos_neg"``) or
  ``RandSpatialCropd`` (uniformly placed, ``crop="random"``), or centred on the mirror plane along the
  left-right axis and uniformly placed along the others (``crop="symmetric"``, for the auxiliary
  asymmetry loss, which compares a crop with its left-right flip), seeded from ``(seed, epoch, sample index)``
  like every random view in medcl (:func:`medcl.data.dataset.view_seed`), so the crops are the same with
  any number of workers and after a resume;
- validation and test items are whole volumes (padded to at least the ROI, and to a multiple of
  ``pad_multiple``), one per batch, for sliding-window inference.

Label fractions keep whole training *patients* (:mod:`tasks.fractions`: seeded, nested across fractions
for one seed); validation and test are never subsampled.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_info
from monai.transforms import (
    Compose,
    DivisiblePadd,
    MapTransform,
    RandCropByPosNegLabeld,
    Randomizable,
    RandSpatialCropd,
    SpatialPadd,
)
from monai.utils import convert_to_numpy
from torch.utils.data import DataLoader

from medcl.data.adapter import Adapter
from medcl.data.datamodule import ManifestDataModule
from medcl.data.dataset import ManifestDataset, collate_skipping
from medcl.data.sampler import GroupedBatchSampler
from medcl.data.splits import SplitConfig
from medcl.errors import ConfigError, DataError
from tasks.fractions import select_label_fraction

__all__ = ["CROPS", "MASK_KEY", "SegmentationDataModule", "SegmentationItems"]

#: the sample dict key of the segmentation mask (DESIGN.md §1.1; made by the volume adapter)
MASK_KEY = "mask"
#: how training ROIs are placed
CROPS = ("pos_neg", "random", "symmetric")


class SegmentationItems(Randomizable, MapTransform):
    """Per-sample transform of segmentation items: check, pad, and (for training) crop an ROI.

    Applied by :class:`~medcl.data.dataset.ManifestDataset` to each preprocessed sample (its
    ``item_transform``); the dataset seeds it per ``(seed, epoch, index)`` with :meth:`set_random_state`.

    Args:
        image_key: the sample's image key (``(C, *spatial)`` float).
        mask_key: the sample's mask key (``(1, *spatial)`` integer class indices).
        roi_size: training crop size; ``None`` gives the whole volume (validation and test).
        crop: ``"pos_neg"`` (``RandCropByPosNegLabeld``, foreground:background centres 1:1),
            ``"random"`` (``RandSpatialCropd``, uniformly placed) or ``"symmetric"`` (start
            ``⌊(n − r)/2⌋`` on the first spatial axis, the left-right one in RAS; uniform on the others).
        min_size: whole volumes are padded to at least this size (the inference ROI), so sliding-window
            inference never runs on a side shorter than its window.
        pad_multiple: whole volumes are also padded to a multiple of this on every side.
        num_classes: when given, mask values outside ``0..num_classes-1`` are a :class:`DataError`.

    Output: the sample dict with ``image_key`` ``float32 (C, *roi)`` and ``mask_key`` ``int64 (1, *roi)``
    (whole volumes: ``(C, *padded)`` and ``(1, *padded)``), as numpy arrays (listed in ``output_keys``).
    Padding is zeros in both (background in the mask).
    """

    def __init__(
        self,
        image_key: str = "image",
        mask_key: str = MASK_KEY,
        roi_size: Sequence[int] | None = None,
        crop: str = "pos_neg",
        min_size: Sequence[int] | None = None,
        pad_multiple: int = 1,
        num_classes: int | None = None,
    ) -> None:
        MapTransform.__init__(self, [image_key, mask_key])
        if crop not in CROPS:
            raise ConfigError(f"crop must be one of {CROPS}, got {crop!r}")
        if pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.image_key = image_key
        self.mask_key = mask_key
        self.output_keys = (image_key, mask_key)
        self.roi_size = None if roi_size is None else tuple(int(s) for s in roi_size)
        self.num_classes = num_classes
        keys = [image_key, mask_key]
        steps: list[Any] = []
        if self.roi_size is not None:
            steps.append(SpatialPadd(keys, spatial_size=self.roi_size))
            if crop == "pos_neg":
                steps.append(
                    RandCropByPosNegLabeld(
                        keys, label_key=mask_key, spatial_size=self.roi_size, pos=1.0, neg=1.0, num_samples=1
                    )
                )
            elif crop == "random":
                steps.append(RandSpatialCropd(keys, roi_size=self.roi_size, random_size=False))
        else:
            if min_size is not None:
                steps.append(SpatialPadd(keys, spatial_size=tuple(int(s) for s in min_size)))
            if pad_multiple > 1:
                steps.append(DivisiblePadd(keys, k=pad_multiple))
        self.crop = crop
        self.transform = Compose(steps)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:  # the crops draw from their own generators
        return None

    def _symmetric_crop(self, data: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """The ROI centred on the first spatial axis (left-right), drawn from ``self.R`` on the others."""
        spatial = tuple(data[self.image_key].shape[1:])
        starts = [
            (n - r) // 2 if axis == 0 else int(self.R.randint(0, n - r + 1))
            for axis, (n, r) in enumerate(zip(spatial, self.roi_size or (), strict=True))
        ]
        window = (slice(None), *(slice(s, s + r) for s, r in zip(starts, self.roi_size or (), strict=True)))
        return {key: data[key][window] for key in (self.image_key, self.mask_key)}

    def _check(self, data: Mapping[Hashable, Any]) -> None:
        meta = data.get("meta")
        path = (meta.get("mask_path") or meta.get("path")) if isinstance(meta, Mapping) else None
        if self.mask_key not in data:
            raise DataError(
                path, "the sample has no segmentation mask", "segmentation needs labelled volumes"
            )
        image, mask = np.asarray(data[self.image_key]), np.asarray(data[self.mask_key])
        if mask.ndim != image.ndim or mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:]:
            raise DataError(
                path,
                f"mask of shape {mask.shape} does not match the image {image.shape}: expected (1, "
                f"{', '.join(str(s) for s in image.shape[1:])})",
                "the mask must be resampled on the image's grid",
            )
        if self.num_classes is not None and mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            raise DataError(
                path,
                f"mask values {sorted(int(v) for v in np.unique(mask))} outside 0..{self.num_classes - 1}",
                "check label_names (background included) against the masks",
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self._check(data)
        sample = dict(data)
        made = self.transform({self.image_key: sample[self.image_key], self.mask_key: sample[self.mask_key]})
        if isinstance(made, list):  # RandCropByPosNegLabeld returns num_samples (=1) dicts
            made = made[0]
        if self.roi_size is not None and self.crop == "symmetric":
            made = self._symmetric_crop(made)
        sample[self.image_key] = np.ascontiguousarray(
            convert_to_numpy(made[self.image_key], dtype=np.float32)
        )
        sample[self.mask_key] = np.ascontiguousarray(convert_to_numpy(made[self.mask_key], dtype=np.int64))
        return sample


class SegmentationDataModule(ManifestDataModule):
    """Volumes with segmentation masks for fine-tuning and evaluation (see the module docstring).

    The adapter's ``load_sample(row)`` must give ``image`` ``float32 (C, H, W, D)`` and ``mask``
    ``int64 (1, H, W, D)`` (class indices, 0 = background). Rows of the sample table with an empty
    ``mask_path`` (volumes without a mask) are left out.

    Args:
        adapter: the volume adapter (e.g. ``modalities.volumes.VolumeAdapter``).
        label_names: names of the mask classes, background first (``["background", "anterior",
            "posterior"]``); default: the adapter's ``class_names``.
        roi_size: side lengths of the training crops (and of the model's sliding window).
        crop: ``"pos_neg"`` or ``"random"`` (see :class:`SegmentationItems`).
        label_fraction: fraction of the training *patients* to train on, in (0, 1].
        fraction_seed: seed of the patient draw.
        batch_size: training crops per batch (validation and test: one whole volume per batch).
        split: how patients are split into train/val/test.
        seed: seed of the batch order and of the crops.
        num_workers: DataLoader worker processes.
        on_error: ``"raise"`` (default) or ``"skip"`` for samples that fail to load (skips are logged with
            the file and the reason, and counted in every batch's ``n_skipped``).
        pad_multiple: whole validation/test volumes are zero-padded to a multiple of this on every side
            (default 1: no padding beyond the adapter's, which pads to at least the ROI; sliding-window
            inference needs nothing more, and extra zero padding would add voxels the model never sees in
            training — false positives there lowered Dice by 0.25 in one measured run — and that the
            exported predictor does not score).
        run_dir: where to write the data record; default: the trainer's ``log_dir``.
    """

    def __init__(
        self,
        adapter: Adapter,
        label_names: list[str] | None = None,
        roi_size: list[int] | None = None,
        crop: str = "pos_neg",
        label_fraction: float = 1.0,
        fraction_seed: int = 0,
        batch_size: int = 2,
        split: SplitConfig | None = None,
        seed: int = 0,
        num_workers: int = 0,
        on_error: str = "raise",
        pad_multiple: int = 1,
        run_dir: str | None = None,
    ) -> None:
        super().__init__(adapter, batch_size, split, seed, num_workers, on_error, False, run_dir)
        if not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {label_fraction}")
        if crop not in CROPS:
            raise ConfigError(f"crop must be one of {CROPS}, got {crop!r}")
        names = (
            list(label_names)
            if label_names is not None
            else list(getattr(adapter, "class_names", None) or [])
        )
        if len(names) < 2:
            raise ConfigError(
                "segmentation needs the names of the mask classes, background first (at least 2), e.g. "
                "label_names: [background, anterior, posterior]"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"label_names must be unique, got {names}")
        if roi_size is None or len(roi_size) not in (2, 3) or min(int(s) for s in roi_size) < 1:
            raise ConfigError(f"roi_size must give 2 or 3 positive sides, got {roi_size}")
        self._label_names = names
        self._roi_size = [int(s) for s in roi_size]
        self.crop = crop
        self.label_fraction = label_fraction
        self.fraction_seed = fraction_seed
        self.pad_multiple = int(pad_multiple)
        if self.pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be >= 1, got {pad_multiple}")

    # what the model needs to know (LightningCLI links these on instantiation)
    @property
    def label_names(self) -> list[str]:
        """The mask classes, background first."""
        return list(self._label_names)

    @property
    def num_classes(self) -> int:
        """Number of mask classes ``K``, background included."""
        return len(self._label_names)

    @property
    def input_key(self) -> str:
        return self.adapter.input_key

    @property
    def roi_size(self) -> list[int]:
        return list(self._roi_size)

    # ----------------------------------------------------------------------------------------------
    def select_samples(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Volumes with a mask; the label fraction of the training patients (whole patients only)."""
        if "mask_path" in samples.columns:
            has_mask = samples["mask_path"].fillna("").astype(str).str.len() > 0
            if not has_mask.all():
                rank_zero_info(f"segmentation: {int((~has_mask).sum())} volume(s) without a mask left out")
            samples = samples[has_mask.to_numpy()]
        train = samples[samples["split"] == "train"]
        # One stratum: a segmentation volume has no single class; patients are drawn in a seeded order.
        kept = select_label_fraction(
            train.assign(_stratum="volume"), self.label_fraction, self.fraction_seed, label_column="_stratum"
        ).drop(columns="_stratum")
        return pd.concat([kept, samples[samples["split"] != "train"]], ignore_index=True)

    def items(self, train: bool) -> SegmentationItems:
        """The per-sample transform: random ROI crops (``train``) or whole padded volumes."""
        return SegmentationItems(
            image_key=self.input_key,
            mask_key=MASK_KEY,
            roi_size=self._roi_size if train else None,
            crop=self.crop,
            min_size=None if train else self._roi_size,
            pad_multiple=1 if train else self.pad_multiple,
            num_classes=self.num_classes,
        )

    def segmentation_dataset(self, split: str) -> ManifestDataset:
        """The dataset of one split (after :meth:`setup`): ROI crops for ``train``, whole volumes otherwise.

        Items: ``<input_key>`` ``(C, *spatial)`` float32, ``mask`` ``(1, *spatial)`` int64, and the
        ``patient``/``trial``/``index``/``sample_index`` codes of every medcl item.
        """
        if split not in self.samples:
            raise ConfigError(f"unknown split {split!r} or setup() not run yet")
        return ManifestDataset(
            self.samples[split],
            self.adapter,
            n_views=0,
            seed=self.seed,
            on_error=self.on_error,
            item_transform=self.items(train=split == "train"),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.segmentation_dataset("train")
        # Reshuffled every epoch from (seed, epoch); the (index, epoch) keys also reseed the crops.
        sampler = GroupedBatchSampler(
            dataset.patient_codes,
            dataset.trial_codes,
            batch_size=min(self.batch_size, len(dataset)),
            samples_per_trial=1,
            trials_per_patient=1,
            seed=self.seed,
            shuffle=True,
            drop_last=True,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_skipping,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.segmentation_dataset(split),
            batch_size=1,  # whole volumes differ in size
            shuffle=False,
            collate_fn=collate_skipping,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val") if len(self.samples.get("val", [])) else []

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test") if len(self.samples.get("test", [])) else []

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
