"""Radiologist gaze and annotation-derived spatial priors for chest X-rays, as heatmaps on the image grid.

A *heatmap* here is a float32 ``(H, W)`` array on the pixel grid of an image (row ``i``, column ``j``),
non-negative and summing to 1: the spatial distribution that the gaze term of gaze-guided alignment
(DESIGN.md §1.3, :func:`medcl.losses.gaze.gaze_alignment_loss`) compares with the model's attention.
Each heatmap carries a *source*: ``"reflacx"`` and ``"egd-cxr"`` for real eye tracking,
``"annotation:lung_mask"`` and ``"annotation:boxes"`` for spatial priors derived from annotations (no
radiologist gaze): configs and reports must name them as such.

Coordinates
-----------
Every coordinate in this module is in *pixel-index* units of a named grid: pixel ``(i, j)`` (row,
column) has its centre at ``(y, x) = (i, j)`` and covers ``[i - 0.5, i + 0.5] × [j - 0.5, j + 0.5]``, so
an image of size ``(H, W)`` spans ``[-0.5, H - 0.5] × [-0.5, W - 0.5]``. This is REFLACX's convention
(integer ``x_position`` = column index; its reference heatmap code evaluates the Gaussians at the
integer grid ``0..W-1``). Changing the grid from ``(H, W)`` to ``(H', W')`` (a pure rescale) maps
``x ↦ (x + 0.5)·W'/W - 0.5`` and ``σ_x ↦ σ_x·W'/W``; :func:`fixation_heatmap` does this analytically,
so a heatmap can be computed directly at the model's resolution.

REFLACX (PhysioNet ``reflacx-xray-localization``, Bigolin Lanfredi et al., Sci Data 2022)
-----------------------------------------------------------------------------------------
Source: the dataset's README (its PhysioNet description of every table and column) and the dataset's
own heatmap code (github ``ricbl/eyetracking``, ``create_heatmap.py``, ``create_heatmap``:
one Gaussian per fixation with ``σ = 1 × angular_resolution_{x,y}_pixels_per_degree``, evaluated on the
image part that was shown, weighted by ``timestamp_end_fixation - timestamp_start_fixation``, the sum
divided by its total). Layout: ``main_data/metadata_phase_{1,2,3}.csv`` and ``main_data/<id>/fixations.csv``.

* ``fixations.csv`` columns we rely on: ``timestamp_start_fixation``, ``timestamp_end_fixation``
  (float, seconds from the start of the audio recording); ``x_position``, ``y_position`` (int, average
  position of the fixation *in image space*, origin top left, x horizontal); and
  ``angular_resolution_x_pixels_per_degree``, ``angular_resolution_y_pixels_per_degree`` (image pixels per
  degree of visual angle for each axis, depending on the screen region and the zoom). Optional, used by
  ``restrict_to_shown``: ``xmin_shown_from_image``, ``ymin_shown_from_image``, ``xmax_shown_from_image``,
  ``ymax_shown_from_image`` (the part of the image shown on the screen; the reference code fills
  ``[ymin:ymax, xmin:xmax]``, end exclusive). Present but unused: ``pupil_area_normalized``,
  ``window_level``, ``window_width``, ``*_in_screen_coordinates``.
* ``metadata_phase_N.csv`` columns we rely on: ``id`` (the reading = the folder name), ``dicom_id``
  (MIMIC-CXR image), ``image_size_x``, ``image_size_y`` (width and height in pixels) and
  ``eye_tracking_data_discarded`` (True: no fixations.csv; such rows are ignored).
* Mapping: none, the positions are already image pixels: ``x = x_position``, ``y = y_position``;
  ``duration = timestamp_end_fixation - timestamp_start_fixation``; ``σ_x = σ° · ang_x``,
  ``σ_y = σ° · ang_y`` (σ° = 1 degree by default, the dataset's choice and DESIGN.md's).

EGD-CXR (PhysioNet ``egd-cxr`` 1.0.0, "Eye Gaze Data for Chest X-rays", Karargyris et al., Sci Data 2021)
---------------------------------------------------------------------------------------------------------
Source: the paper's Table 2 (fixations and eye-gaze spreadsheets: PMC7994908) and the dataset's code
(``cxr-eye-gaze/eye-gaze-dataset``, in ``DataProcessing/DataPostProcessing/``:
``create_heatmap_images_and_or_videos.py`` and ``map_eye_gaze_from_screen_to_image_coordinates.py``;
``DataProcessing/DataPreparation/image_preparation.py``).

* ``fixations.csv`` (one table for all images; a GazePoint export) columns we rely on: ``DICOM_ID``,
  ``FPOGX``, ``FPOGY`` (fixation point of gaze as a *fraction of the screen*: (0, 0) top left, (1, 1)
  bottom right), ``FPOGD`` (fixation duration, seconds). Optional: ``FPOGV`` (valid flag; rows with 0
  are dropped), ``FPOGID`` (fixation id: when an id repeats for one image, as in GazePoint's running
  exports, the row with the longest ``FPOGD``, the completed fixation, is kept). Present but unused:
  ``FPOGS``, ``TIME(in secs)``, ``BPOG*``, pupil and blink columns, and ``X_ORIGINAL``/``Y_ORIGINAL``
  (the authors' own mapping, integer-truncated).
* ``master_sheet.csv`` columns we rely on: ``dicom_id`` and the padding (screen pixels of black border
  around the image as displayed) ``image_top_pad``, ``image_bottom_pad``, ``image_left_pad``,
  ``image_right_pad`` (the names the dataset's heatmap script reads; ``image_preparation.py`` wrote
  them as ``image_top``, ``image_bottom``, ``image_left``, ``image_right``, which are accepted too).
* Mapping (the authors' ``map_eye_gaze_to_image_coordinates``, on the 1920×1080 screen of the
  experiment): ``X = FPOGX·1920``, ``Y = FPOGY·1080`` screen pixels; the fixation is on the image iff
  ``left < X < 1920 - right`` and ``top < Y < 1080 - bottom`` (else dropped, as the authors do); the
  image was shown on ``W_d × H_d = (1920 - left - right) × (1080 - top - bottom)`` screen pixels, so in
  pixel-index units of an ``(H, W)`` image ``x = (X - left)·W/W_d - 0.5`` and
  ``y = (Y - top)·H/H_d - 0.5`` (the authors truncate ``(X - left)·W/W_d`` to an int, i.e. the same
  pixel). ``(H, W)`` is the DICOM's rows × columns; the master sheet does not record it. Without it
  the fixations are returned on the displayed grid ``(H_d, W_d)``; since the map is a pure rescale,
  :func:`fixation_heatmap` gives the same heatmap at any target size either way.
* Visual angle: EGD-CXR records no viewing distance, so ``σ = 1°`` needs the *screen's* pixels per
  degree, ``screen_px_per_degree`` (= viewing distance × tan 1° × screen pixels per unit length); in
  image pixels ``σ_x = σ°·ppd·W/W_d``, ``σ_y = σ°·ppd·H/H_d``. Or give ``sigma_px`` directly.
* Known inconsistency (recorded, not corrected): ``image_preparation.py`` letterboxed the images into a
  1920×**1024** canvas (``resize_pad`` pads to height 1024), while both mapping scripts use a 1080-pixel
  screen height; we follow the mapping scripts, which produced the dataset's own coordinates.

Heatmaps
--------
:func:`fixation_heatmap`: ``h = Σ_k d_k · G_k / Σ(...)``, ``G_k`` an axis-aligned Gaussian centred on
fixation ``k`` with ``σ = σ°`` of visual angle in pixels (isotropic in visual angle; in pixels it is
isotropic when the two angular resolutions agree), *integrated over each pixel's area* (differences of
the normal CDF), so a fixation's mass inside the image is the Gaussian's probability of the image
rectangle (mass falling outside is lost, as in REFLACX's code, and the sum is renormalised to 1). Its
discrete variance is ``σ² + 1/12`` px² (Sheppard's correction for the pixel binning). No fixation (or
no mass on the grid) gives ``None``: the sample has no gaze and skips the gaze term.

Validation: a missing file or row is a :class:`~medcl.errors.DataError`; a table lacking the columns
above an :class:`~medcl.errors.UnsupportedFormatError`; an unreadable table or a non-numeric value an
:class:`~medcl.errors.CorruptFileError`. Rows with NaN coordinates, NaN or non-positive durations or
angular resolutions, invalid flags, or positions outside the image are *dropped* (not clipped: a
fixation off the image is not a look at the image), counted in :attr:`Fixations.dropped` and logged
with counts only.

Annotation-derived priors (``covid_cxr``)
----------------------------------------
* ``annotations/lungVAE-masks/<stem>_mask.png``: 8-bit masks (0/255, a few with interpolated edges) at
  the ORIGINAL image size; ``<stem>`` is the image's file stem (``images_512`` keeps the stems, its
  extension is always ``.jpg``; ``metadata.csv`` keeps the original extension). Lung where
  ``value >= 128``.
* ``annotations/imageannotation_ai_lung_bounding_boxes.json``: COCO-like, ``images`` (``file_name`` with
  the original extension, ``width``, ``height`` of the image the boxes were drawn on, ``id``) and
  ``annotations`` (``image_id``, ``category_id`` 1 "Right Lung" / 2 "Left Lung", ``bbox = [x, y, w, h]``
  in original pixels with ``area = w·h``; two entries have ``bbox = [null]*4``). Boxes are rescaled
  per axis to the loaded image (``x·W'/width``); checked on the real data: after rescaling to the
  512 px copies, a median 99 % of each lung mask lies inside its boxes. Three entries
  (``ciaa199.pdf-001-{a,b,c}.png``) give a size (466 × ~397) that differs from the file's (≈ 360 × 340):
  their boxes were drawn on another version of the image; :func:`read_lung_boxes` drops entries whose
  size disagrees with ``expected_sizes`` (``image_provenance.csv``'s ``orig_width``/``orig_height``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy.special import ndtr

from medcl.configurable import Configurable
from medcl.errors import ConfigError, CorruptFileError, DataError, UnsupportedFormatError

__all__ = [
    "EGD_SCREEN_SIZE",
    "GAZE_SOURCES",
    "SOURCE_BOXES",
    "SOURCE_EGD",
    "SOURCE_LUNG_MASK",
    "SOURCE_REFLACX",
    "EgdGazeTable",
    "Fixations",
    "GazeHeatmap",
    "GazeHeatmapProvider",
    "Letterbox",
    "LungBoxAnnotations",
    "LungBoxes",
    "ReflacxIndex",
    "fixation_heatmap",
    "fixation_sigmas",
    "heatmap_from_boxes",
    "heatmap_from_mask",
    "letterbox_geometry",
    "lung_mask_path",
    "pool_to_grid",
    "read_egd_fixations",
    "read_lung_boxes",
    "read_lung_mask",
    "read_reflacx_fixations",
    "resize_heatmap",
    "transform_heatmap_like_image",
]

log = logging.getLogger(__name__)

SOURCE_REFLACX = "reflacx"
SOURCE_EGD = "egd-cxr"
SOURCE_LUNG_MASK = "annotation:lung_mask"
SOURCE_BOXES = "annotation:boxes"
GAZE_SOURCES: tuple[str, ...] = (SOURCE_REFLACX, SOURCE_EGD, SOURCE_LUNG_MASK, SOURCE_BOXES)
"""Every heatmap source; the ``annotation:`` ones are spatial priors, not gaze."""

EGD_SCREEN_SIZE: tuple[int, int] = (1080, 1920)
"""(height, width) in pixels of the screen of the EGD-CXR experiment ("DO NOT CHANGE" in its code)."""

REFLACX_REQUIRED: tuple[str, ...] = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
)
REFLACX_SHOWN: tuple[str, ...] = (
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
)
REFLACX_METADATA_REQUIRED: tuple[str, ...] = ("id", "dicom_id", "image_size_x", "image_size_y")
EGD_REQUIRED: tuple[str, ...] = ("DICOM_ID", "FPOGX", "FPOGY", "FPOGD")
EGD_PAD_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"),
    ("image_top", "image_bottom", "image_left", "image_right"),
)
LUNG_MASK_SUFFIX = "_mask.png"


# --- fixations ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Fixations:
    """The fixations of one reading of one image, on a named pixel grid.

    Attributes:
        x: ``(N,)`` float64 column coordinate (pixel-index units: pixel centres at integers).
        y: ``(N,)`` float64 row coordinate.
        duration: ``(N,)`` float64 seconds, all > 0.
        image_size: ``(H, W)`` of the grid ``x``, ``y`` refer to (the original image for REFLACX, the
            DICOM's size or the displayed size for EGD-CXR).
        px_per_degree: ``(N, 2)`` float64 pixels of this grid per degree of visual angle along
            ``(x, y)``, or ``None`` when the file does not give it (EGD-CXR without
            ``screen_px_per_degree``).
        shown: ``(N, 4)`` float64 ``(xmin, ymin, xmax, ymax)`` of the image part on screen during the
            fixation (REFLACX; pixels ``xmin <= j < xmax``), or ``None``.
        source: ``"reflacx"`` or ``"egd-cxr"``.
        path: the file read.
        dropped: rows dropped, by reason (``nan_position``, ``nan_time``, ``nonpositive_duration``,
            ``bad_angular_resolution``, ``invalid``, ``outside_image``, ``duplicate_id``).
    """

    x: np.ndarray
    y: np.ndarray
    duration: np.ndarray
    image_size: tuple[int, int]
    px_per_degree: np.ndarray | None
    shown: np.ndarray | None
    source: str
    path: str
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, f"{what} not found", "check the dataset path")
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise CorruptFileError(path, f"{what} is empty (no header line)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(path, f"{what} is not a readable CSV table: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _require_columns(table: pd.DataFrame, columns: Sequence[str], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UnsupportedFormatError(
            path,
            f"not a {what}: missing column(s) {missing} (has {list(table.columns)[:12]}"
            f"{' ...' if len(table.columns) > 12 else ''})",
            f"a {what} needs the columns {list(columns)}",
        )


def _numeric(table: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """``table[column]`` as float64; empty cells are NaN, any other unparsable value is corruption."""
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bool(bad.any()):
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise CorruptFileError(
            path,
            f"column {column!r} has {int(bad.sum())} non-numeric value(s) (first at data row {first + 1}: "
            f"{str(raw.iloc[first])[:30]!r})",
        )
    return values.to_numpy(dtype=np.float64)


def _drop(keep: np.ndarray, reason_mask: np.ndarray, reason: str, dropped: dict[str, int]) -> None:
    """Clear ``keep`` where ``reason_mask`` holds (among rows still kept) and count them."""
    hit = keep & reason_mask
    if hit.any():
        dropped[reason] = dropped.get(reason, 0) + int(hit.sum())
        keep &= ~reason_mask


def _inside(x: np.ndarray, y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def _log_dropped(path: Path | str, dropped: Mapping[str, int], kept: int) -> None:
    if dropped:
        details = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        log.warning("%s: dropped %d fixation(s) (%s); %d kept", path, sum(dropped.values()), details, kept)


def _check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or int(s) < 1 for s in size):
        raise ConfigError(f"{name} must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def read_reflacx_fixations(
    path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    metadata_csv: str | Path | None = None,
) -> Fixations:
    """Read a REFLACX ``main_data/<id>/fixations.csv`` (see the module docstring for the columns).

    Args:
        path: the ``fixations.csv`` file or its ``<id>`` folder.
        image_size: ``(H, W)`` of the read chest X-ray; by default taken from the metadata table
            (``image_size_y``, ``image_size_x`` of the row whose ``id`` is the folder name).
        metadata_csv: the ``metadata_phase_N.csv`` to look the size up in; by default every
            ``metadata_phase_*.csv`` of the folder above ``<id>``.

    Returns:
        :class:`Fixations` on the original image grid, with ``px_per_degree`` and ``shown`` (when the
        four ``*_shown_from_image`` columns exist). Rows with NaN positions or times, non-positive
        durations or angular resolutions, or a position outside the image are dropped and counted.

    Raises:
        DataError: the file, or the reading's metadata row, is missing.
        UnsupportedFormatError: required columns are missing.
        CorruptFileError: the table is unreadable or has non-numeric values.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "fixations.csv"
    table = _read_table(path, "REFLACX fixations table")
    _require_columns(table, REFLACX_REQUIRED, path, "REFLACX fixations.csv")
    if image_size is None:
        image_size = _reflacx_image_size(path.parent.name, path.parent.parent, metadata_csv, path)
    size = _check_size(image_size, "image_size")

    x = _numeric(table, "x_position", path)
    y = _numeric(table, "y_position", path)
    start = _numeric(table, "timestamp_start_fixation", path)
    end = _numeric(table, "timestamp_end_fixation", path)
    ang = np.stack(
        [
            _numeric(table, "angular_resolution_x_pixels_per_degree", path),
            _numeric(table, "angular_resolution_y_pixels_per_degree", path),
        ],
        axis=1,
    )
    has_shown = all(c in table.columns for c in REFLACX_SHOWN)
    shown = np.stack([_numeric(table, c, path) for c in REFLACX_SHOWN], axis=1) if has_shown else None

    duration = end - start
    keep = np.ones(len(table), dtype=bool)
    dropped: dict[str, int] = {}
    _drop(keep, ~(np.isfinite(x) & np.isfinite(y)), "nan_position", dropped)
    _drop(keep, ~(np.isfinite(start) & np.isfinite(end)), "nan_time", dropped)
    with np.errstate(invalid="ignore"):
        _drop(keep, ~(duration > 0), "nonpositive_duration", dropped)
        _drop(keep, ~np.all(np.isfinite(ang) & (ang > 0), axis=1), "bad_angular_resolution", dropped)
        _drop(keep, ~_inside(x, y, size), "outside_image", dropped)
    if shown is not None and not np.all(np.isfinite(shown[keep])):
        shown = None  # an incomplete shown-region record: do not restrict by it
    _log_dropped(path, dropped, int(keep.sum()))
    return Fixations(
        x=x[keep],
        y=y[keep],
        duration=duration[keep],
        image_size=size,
        px_per_degree=ang[keep],
        shown=None if shown is None else shown[keep],
        source=SOURCE_REFLACX,
        path=str(path),
        dropped=dropped,
    )


def _reflacx_metadata_files(main_data: Path, metadata_csv: str | Path | None) -> list[Path]:
    if metadata_csv is not None:
        return [Path(metadata_csv)]
    return sorted(main_data.glob("metadata_phase_*.csv"))


def _read_reflacx_metadata(path: Path) -> pd.DataFrame:
    table = _read_table(path, "REFLACX metadata table")
    _require_columns(table, REFLACX_METADATA_REQUIRED, path, "REFLACX metadata_phase_N.csv")
    return table


def _reflacx_image_size(
    reading_id: str, main_data: Path, metadata_csv: str | Path | None, fixations_path: Path
) -> tuple[int, int]:
    files = _reflacx_metadata_files(main_data, metadata_csv)
    for meta_path in files:
        table = _read_reflacx_metadata(meta_path)
        rows = table[table["id"].astype(str) == reading_id]
        if len(rows):
            w = _numeric(rows, "image_size_x", meta_path)[0]
            h = _numeric(rows, "image_size_y", meta_path)[0]
            if not (np.isfinite(w) and np.isfinite(h) and w >= 1 and h >= 1):
                raise CorruptFileError(meta_path, f"reading {reading_id!r} has no valid image_size_x/y")
            return int(h), int(w)
    where = [str(f) for f in files] or f"no metadata_phase_*.csv in {main_data}"
    raise DataError(
        fixations_path,
        f"the image size of reading {reading_id!r} is not in the REFLACX metadata ({where})",
        "pass image_size=(height, width) or metadata_csv=<main_data/metadata_phase_N.csv>",
    )


class ReflacxIndex:
    """The readings of a REFLACX ``main_data`` folder, by MIMIC-CXR ``dicom_id``.

    Reads every ``metadata_phase_*.csv`` once; readings with ``eye_tracking_data_discarded`` True (no
    fixations file) are left out.

    Args:
        main_data: the ``main_data`` folder.
    """

    def __init__(self, main_data: str | Path) -> None:
        self.main_data = Path(main_data)
        files = _reflacx_metadata_files(self.main_data, None)
        if not files:
            raise DataError(
                self.main_data, "no metadata_phase_*.csv here", "point to REFLACX's main_data folder"
            )
        self._readings: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for meta_path in files:
            table = _read_reflacx_metadata(meta_path)
            if "eye_tracking_data_discarded" in table.columns:
                discarded = table["eye_tracking_data_discarded"].astype(str).str.strip().str.lower()
                table = table[~discarded.isin(["true", "1"])]
            widths = _numeric(table, "image_size_x", meta_path)
            heights = _numeric(table, "image_size_y", meta_path)
            for rid, did, h, w in zip(
                table["id"].astype(str), table["dicom_id"].astype(str), heights, widths, strict=True
            ):
                if np.isfinite(h) and np.isfinite(w):
                    self._readings.setdefault(did, []).append((rid, (int(h), int(w))))

    def readings(self, dicom_id: str) -> list[tuple[str, tuple[int, int]]]:
        """``[(reading id, (H, W)), ...]`` of one image (empty when it was not read)."""
        return list(self._readings.get(str(dicom_id), []))

    def fixations(self, reading_id: str, image_size: tuple[int, int]) -> Fixations:
        """:func:`read_reflacx_fixations` of one reading."""
        return read_reflacx_fixations(self.main_data / reading_id / "fixations.csv", image_size=image_size)

    def __len__(self) -> int:
        return len(self._readings)


class EgdGazeTable:
    """EGD-CXR's ``fixations.csv`` and ``master_sheet.csv``, read once, queried by ``dicom_id``.

    Args:
        fixations_csv: the dataset's ``fixations.csv``.
        master_sheet_csv: the dataset's ``master_sheet.csv``.
        screen_size: ``(height, width)`` of the experiment's screen (:data:`EGD_SCREEN_SIZE`).
    """

    def __init__(
        self,
        fixations_csv: str | Path,
        master_sheet_csv: str | Path,
        screen_size: tuple[int, int] = EGD_SCREEN_SIZE,
    ) -> None:
        self.fixations_csv = Path(fixations_csv)
        self.master_sheet_csv = Path(master_sheet_csv)
        self.screen_size = _check_size(screen_size, "screen_size")
        table = _read_table(self.fixations_csv, "EGD-CXR fixations table")
        _require_columns(table, EGD_REQUIRED, self.fixations_csv, "EGD-CXR fixations.csv")
        self._table = table
        self._table["DICOM_ID"] = table["DICOM_ID"].astype(str).str.strip()
        sheet = _read_table(self.master_sheet_csv, "EGD-CXR master sheet")
        _require_columns(sheet, ("dicom_id",), self.master_sheet_csv, "EGD-CXR master_sheet.csv")
        pads = next((cols for cols in EGD_PAD_COLUMNS if all(c in sheet.columns for c in cols)), None)
        if pads is None:
            raise UnsupportedFormatError(
                self.master_sheet_csv,
                f"no padding columns: expected {list(EGD_PAD_COLUMNS[0])} (or {list(EGD_PAD_COLUMNS[1])})",
                "the screen-to-image mapping needs the padding of the displayed image",
            )
        values = np.stack([_numeric(sheet, c, self.master_sheet_csv) for c in pads], axis=1)
        self._pads = {
            str(did).strip(): tuple(float(v) for v in row)
            for did, row in zip(sheet["dicom_id"], values, strict=True)
        }

    @property
    def dicom_ids(self) -> set[str]:
        """The images that have both fixations and padding."""
        return set(self._table["DICOM_ID"].unique()) & set(self._pads)

    def padding(self, dicom_id: str) -> tuple[float, float, float, float]:
        """``(top, bottom, left, right)`` screen pixels of border around the displayed image."""
        pad = self._pads.get(str(dicom_id))
        if pad is None:
            raise DataError(self.master_sheet_csv, "the requested DICOM_ID is not in the master sheet")
        if not all(np.isfinite(pad)) or min(pad) < 0:
            raise CorruptFileError(
                self.master_sheet_csv, "the requested image's padding is missing or negative"
            )
        top, bottom, left, right = pad
        if top + bottom >= self.screen_size[0] or left + right >= self.screen_size[1]:
            raise CorruptFileError(
                self.master_sheet_csv, f"padding {pad} leaves no image on a {self.screen_size} screen"
            )
        return pad

    def fixations(
        self,
        dicom_id: str,
        *,
        image_size: tuple[int, int] | None = None,
        screen_px_per_degree: float | None = None,
    ) -> Fixations:
        """The fixations on one image, mapped from screen fractions to image pixels.

        Args:
            dicom_id: the MIMIC-CXR image.
            image_size: ``(H, W)`` = the DICOM's (rows, columns); ``None``: the displayed size
                ``(1080 - top - bottom, 1920 - left - right)`` in screen pixels.
            screen_px_per_degree: screen pixels per degree of visual angle, to fill
                :attr:`Fixations.px_per_degree` (EGD-CXR does not record it).

        Returns:
            :class:`Fixations` (``x = (FPOGX·1920 - left)·W/W_d - 0.5``, ``y`` likewise; module
            docstring). Rows with ``FPOGV == 0``, NaN positions, non-positive durations or gaze off
            the displayed image are dropped and counted.
        """
        path = self.fixations_csv
        top, bottom, left, right = self.padding(dicom_id)
        rows = self._table[self._table["DICOM_ID"] == str(dicom_id)]
        if not len(rows):
            raise DataError(path, "no fixation rows for the requested DICOM_ID")
        screen_h, screen_w = self.screen_size
        shown_h, shown_w = screen_h - top - bottom, screen_w - left - right
        size = (
            _check_size(image_size, "image_size")
            if image_size is not None
            else (
                round(shown_h),
                round(shown_w),
            )
        )
        fx = _numeric(rows, "FPOGX", path)
        fy = _numeric(rows, "FPOGY", path)
        duration = _numeric(rows, "FPOGD", path)
        keep = np.ones(len(rows), dtype=bool)
        dropped: dict[str, int] = {}
        if "FPOGV" in rows.columns:
            valid = _numeric(rows, "FPOGV", path)
            _drop(keep, ~(valid == 1), "invalid", dropped)
        _drop(keep, ~(np.isfinite(fx) & np.isfinite(fy)), "nan_position", dropped)
        with np.errstate(invalid="ignore"):
            _drop(keep, ~(duration > 0), "nonpositive_duration", dropped)
            sx, sy = fx * screen_w, fy * screen_h
            on_image = (sx > left) & (sx < screen_w - right) & (sy > top) & (sy < screen_h - bottom)
            _drop(keep, ~on_image, "outside_image", dropped)
        if "FPOGID" in rows.columns:
            ids = _numeric(rows, "FPOGID", path)
            keep &= _longest_per_id(ids, duration, keep, dropped)
        h, w = size
        x = (sx - left) * (w / shown_w) - 0.5
        y = (sy - top) * (h / shown_h) - 0.5
        ppd = None
        if screen_px_per_degree is not None:
            _check_positive_number(screen_px_per_degree, "screen_px_per_degree")
            scale = np.array([w / shown_w, h / shown_h]) * float(screen_px_per_degree)
            ppd = np.tile(scale, (int(keep.sum()), 1))
        _log_dropped(path, dropped, int(keep.sum()))
        return Fixations(
            x=x[keep],
            y=y[keep],
            duration=duration[keep],
            image_size=size,
            px_per_degree=ppd,
            shown=None,
            source=SOURCE_EGD,
            path=str(path),
            dropped=dropped,
        )


def _longest_per_id(
    ids: np.ndarray, duration: np.ndarray, keep: np.ndarray, dropped: dict[str, int]
) -> np.ndarray:
    """Among kept rows, keep per fixation id only the row with the longest duration (the completed one)."""
    out = keep.copy()
    idx = np.flatnonzero(keep & np.isfinite(ids))
    if idx.size == 0:
        return out
    order = idx[np.lexsort((-duration[idx], ids[idx]))]  # by id, longest first
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[order[1:]] != ids[order[:-1]]
    duplicates = order[~first]
    if duplicates.size:
        out[duplicates] = False
        dropped["duplicate_id"] = dropped.get("duplicate_id", 0) + int(duplicates.size)
    return out


def read_egd_fixations(
    fixations_csv: str | Path,
    master_sheet_csv: str | Path,
    dicom_id: str,
    *,
    image_size: tuple[int, int] | None = None,
    screen_px_per_degree: float | None = None,
) -> Fixations:
    """Read the EGD-CXR fixations of one image (:meth:`EgdGazeTable.fixations`; the module docstring
    gives the columns and the mapping). Reading many images: build one :class:`EgdGazeTable`."""
    table = EgdGazeTable(fixations_csv, master_sheet_csv)
    return table.fixations(dicom_id, image_size=image_size, screen_px_per_degree=screen_px_per_degree)


# --- heatmaps -------------------------------------------------------------------------------------


def _check_positive_number(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")


def fixation_sigmas(
    fixations: Fixations,
    *,
    sigma_px: float | tuple[float, float] | None = None,
    px_per_degree: float | tuple[float, float] | None = None,
    sigma_degrees: float = 1.0,
) -> np.ndarray:
    """The Gaussian σ of each fixation along ``(x, y)``, in pixels of ``fixations.image_size``.

    Precedence: ``sigma_px`` (given directly), else ``sigma_degrees × px_per_degree`` (one value for
    every fixation), else ``sigma_degrees ×`` the file's per-fixation :attr:`Fixations.px_per_degree`.

    Returns:
        ``(N, 2)`` float64.

    Raises:
        ConfigError: none of the three is available (EGD-CXR without ``screen_px_per_degree``), or a
            value is not positive.
    """
    n = len(fixations)
    _check_positive_number(sigma_degrees, "sigma_degrees")
    if sigma_px is not None:
        pair = _pair(sigma_px, "sigma_px")
        return np.tile(np.asarray(pair, dtype=np.float64), (n, 1))
    if px_per_degree is not None:
        pair = _pair(px_per_degree, "px_per_degree")
        return np.tile(np.asarray(pair, dtype=np.float64) * float(sigma_degrees), (n, 1))
    if fixations.px_per_degree is None:
        raise ConfigError(
            f"{fixations.path}: the fixations carry no angular resolution ({fixations.source}); pass "
            "sigma_px, or px_per_degree of this image grid (EGD-CXR: read with screen_px_per_degree)"
        )
    return np.asarray(fixations.px_per_degree, dtype=np.float64) * float(sigma_degrees)


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        _check_positive_number(value, name)
        return float(value), float(value)
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"{name} must be a number or an (x, y) pair, got {value!r}")
    for v in value:
        _check_positive_number(v, name)
    return float(value[0]), float(value[1])


def _pixel_gaussian(n: int, centres: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """``(K, n)``: the mass of ``N(centre_k, σ_k²)`` on each pixel ``[i - 0.5, i + 0.5]``, ``i < n``."""
    grid = np.arange(n, dtype=np.float64)[None, :]
    a = (grid - 0.5 - centres[:, None]) / sigmas[:, None]
    b = (grid + 0.5 - centres[:, None]) / sigmas[:, None]
    upper = a > 0  # both in the upper tail: use the mirrored lower tail, no 1 - 1 cancellation
    return np.where(upper, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def fixation_heatmap(
    fixations: Fixations,
    image_size: tuple[int, int] | None = None,
    *,
    sigma_px: float | tuple[float, float] | None = None,
    px_per_degree: float | tuple[float, float] | None = None,
    sigma_degrees: float = 1.0,
    restrict_to_shown: bool = False,
) -> np.ndarray | None:
    """Duration-weighted Gaussian heatmap of the fixations, normalised to sum 1.

    ``h(i, j) ∝ Σ_k d_k · Gy_k(i) · Gx_k(j)`` with ``G_k`` the normal distribution ``N(x_k, σ_xk²)`` (resp.
    ``y``) integrated over pixel ``j`` (resp. ``i``); ``σ`` from :func:`fixation_sigmas` (1° of visual
    angle by default). Computed as one ``(H, K) @ (K, W)`` product.

    Args:
        fixations: from :func:`read_reflacx_fixations` / :func:`read_egd_fixations`.
        image_size: ``(H', W')`` of the output grid; default ``fixations.image_size``. Another size is
            taken as a rescale of the same image: positions and σ are mapped analytically
            (``x' = (x + 0.5)·W'/W - 0.5``, ``σ' = σ·W'/W``), never by resampling a heatmap.
        sigma_px, px_per_degree, sigma_degrees: see :func:`fixation_sigmas` (pixels of the
            *fixations'* grid).
        restrict_to_shown: zero each fixation's Gaussian outside the image part that was on screen
            (REFLACX's ``*_shown_from_image``; its reference code does this), without renormalising it.

    Returns:
        ``(H', W')`` float32 summing to 1, or ``None`` when there is no fixation or none puts mass on
        the grid (then the sample has no gaze).
    """
    src_h, src_w = fixations.image_size
    out_h, out_w = _check_size(image_size, "image_size") if image_size is not None else (src_h, src_w)
    if len(fixations) == 0:
        return None
    sigmas = fixation_sigmas(
        fixations, sigma_px=sigma_px, px_per_degree=px_per_degree, sigma_degrees=sigma_degrees
    )
    scale_x, scale_y = out_w / src_w, out_h / src_h
    x = (fixations.x + 0.5) * scale_x - 0.5
    y = (fixations.y + 0.5) * scale_y - 0.5
    gx = _pixel_gaussian(out_w, x, sigmas[:, 0] * scale_x)  # (K, W')
    gy = _pixel_gaussian(out_h, y, sigmas[:, 1] * scale_y)  # (K, H')
    if restrict_to_shown:
        if fixations.shown is None:
            raise ConfigError(f"{fixations.path}: restrict_to_shown needs the *_shown_from_image columns")
        gx = gx * _shown_mask(out_w, fixations.shown[:, 0], fixations.shown[:, 2], scale_x)
        gy = gy * _shown_mask(out_h, fixations.shown[:, 1], fixations.shown[:, 3], scale_y)
    heat = (gy.T * fixations.duration[None, :]) @ gx  # (H', W')
    total = float(heat.sum())
    if not (total > 0 and math.isfinite(total)):
        return None
    return (heat / total).astype(np.float32)


def _shown_mask(n: int, lo: np.ndarray, hi: np.ndarray, scale: float) -> np.ndarray:
    """``(K, n)``: output pixel ``i`` whose centre, in source pixel units, lies in ``[lo_k, hi_k)``."""
    centre = (np.arange(n, dtype=np.float64)[None, :] + 0.5) / scale - 0.5
    return ((centre >= lo[:, None]) & (centre < hi[:, None])).astype(np.float64)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)``: length of overlap of output cell ``i`` (``[i, i+1]·n_in/n_out``) with input
    pixel ``j`` (``[j, j+1]``). Each column sums to 1, so ``M @ v`` preserves ``sum(v)``."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    j = np.arange(n_in, dtype=np.float64)[None, :]
    lo = np.maximum(edges[:-1, None], j)
    hi = np.minimum(edges[1:, None], j + 1)
    return np.clip(hi - lo, 0.0, None)


def _check_heatmap(heatmap: np.ndarray, name: str = "heatmap") -> np.ndarray:
    arr = np.asarray(heatmap)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty (H, W) array, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ValueError(f"{name} must be finite and non-negative")
    return arr


def resize_heatmap(heatmap: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
    """Resample a heatmap to ``new_size`` preserving its mass exactly (area-overlap resampling).

    Output cell ``(i, j)`` gets the integral of the input, taken as constant on each pixel, over the
    cell's footprint ``[i·H/H', (i+1)·H/H'] × [j·W/W', (j+1)·W/W']``: block sums for integer
    downscales, area-weighted sums otherwise, a piecewise-constant split when enlarging. It is the
    geometry of a resize that maps the image's extent onto the new extent (MONAI ``Resize``,
    PIL ``resize``), so the heatmap stays on the resized image's grid.

    Args:
        heatmap: ``(H, W)`` non-negative.
        new_size: ``(H', W')``.

    Returns:
        ``(H', W')`` float32 with ``sum == heatmap.sum()`` (to float32 rounding).
    """
    arr = _check_heatmap(heatmap)
    new_h, new_w = _check_size(new_size, "new_size")
    rows = _area_matrix(arr.shape[0], new_h)
    cols = _area_matrix(arr.shape[1], new_w)
    return (rows @ arr @ cols.T).astype(np.float32)


def pool_to_grid(heatmap: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The heatmap's mass in each cell of a ``(gh, gw)`` grid of patches, summing to 1.

    The image is split into ``gh × gw`` equal cells (a ViT's patches when ``H = gh·patch``,
    ``W = gw·patch``); a cell's value is the mass inside it (:func:`resize_heatmap`), then the grid is
    renormalised to sum exactly 1. Flatten row-major (``.reshape(-1)``) for the patch order of MONAI's
    ``PatchEmbeddingBlock`` (``flatten(2)`` over ``(h, w)``).

    Returns:
        ``(gh, gw)`` float32.

    Raises:
        ValueError: the heatmap has no mass.
    """
    pooled = resize_heatmap(heatmap, grid).astype(np.float64)
    total = pooled.sum()
    if not total > 0:
        raise ValueError("the heatmap has no mass to pool (all zero)")
    return (pooled / total).astype(np.float32)


class Letterbox(NamedTuple):
    """Geometry of a resize that keeps the aspect ratio followed by padding to a square.

    ``resized = (h, w)`` with ``scale = target / max(H, W)``, ``h = round(H·scale)``,
    ``w = round(W·scale)`` (MONAI ``Resize(spatial_size=target, size_mode="longest")``); ``pad = (top,
    bottom, left, right)``: ``"symmetric"`` puts ``(target - h) // 2`` above and the rest below (MONAI
    ``SpatialPad(method="symmetric")``, ``ResizeWithPadOrCrop``), ``"end"`` puts it all below/right
    (``method="end"``).
    """

    resized: tuple[int, int]
    pad: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        """The padded output size ``(target, target)``."""
        return (self.resized[0] + self.pad[0] + self.pad[1], self.resized[1] + self.pad[2] + self.pad[3])


def letterbox_geometry(
    image_size: tuple[int, int], target_size: int, pad_mode: Literal["symmetric", "end"] = "symmetric"
) -> Letterbox:
    """The :class:`Letterbox` that takes an ``(H, W)`` image to a ``target_size`` square; use the same
    one for the image and its heatmap so both stay on one grid."""
    h, w = _check_size(image_size, "image_size")
    if isinstance(target_size, bool) or not isinstance(target_size, int) or target_size < 1:
        raise ConfigError(f"target_size must be a positive int, got {target_size!r}")
    scale = target_size / max(h, w)
    new_h = min(target_size, max(1, round(h * scale)))
    new_w = min(target_size, max(1, round(w * scale)))
    dh, dw = target_size - new_h, target_size - new_w
    if pad_mode == "symmetric":
        pad = (dh // 2, dh - dh // 2, dw // 2, dw - dw // 2)
    elif pad_mode == "end":
        pad = (0, dh, 0, dw)
    else:
        raise ConfigError(f"pad_mode must be 'symmetric' or 'end', got {pad_mode!r}")
    return Letterbox((new_h, new_w), pad)


def transform_heatmap_like_image(
    heatmap: np.ndarray, target_size: int, pad_mode: Literal["symmetric", "end"] = "symmetric"
) -> np.ndarray:
    """Resize-keep-aspect + zero-pad a heatmap to a ``target_size`` square, as the image is.

    The heatmap must be on the image's grid before the transform (same ``(H, W)``); the geometry is
    :func:`letterbox_geometry` (parameters there), the resampling :func:`resize_heatmap`, so the mass
    is preserved (a heatmap summing to 1 still does; the padding gets 0).

    Returns:
        ``(target_size, target_size)`` float32.
    """
    arr = _check_heatmap(heatmap)
    box = letterbox_geometry(arr.shape, target_size, pad_mode)
    top, _, left, _ = box.pad
    out = np.zeros(box.size, dtype=np.float32)
    out[top : top + box.resized[0], left : left + box.resized[1]] = resize_heatmap(arr, box.resized)
    return out


# --- annotation-derived spatial priors ------------------------------------------------------------


def heatmap_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """Uniform distribution over a binary mask: an *annotation-derived* spatial prior (source
    ``"annotation:lung_mask"`` for the lungVAE lung masks), not gaze.

    Args:
        mask: ``(H, W)`` bool, or numbers: inside where the value is at least half the mask's maximum
            (so 0/1, 0/255 and soft-edged masks alike; the lungVAE PNGs' anti-aliased edges split at 128).

    Returns:
        ``(H, W)`` float32 summing to 1, ``None`` for an empty (all-zero) mask.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"mask must be a non-empty (H, W) array, got shape {arr.shape}")
    if arr.dtype == bool:
        inside = arr
    else:
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)) or values.min() < 0:
            raise ValueError("mask values must be finite and non-negative")
        top = values.max()
        inside = values >= 0.5 * top if top > 0 else np.zeros(arr.shape, dtype=bool)
    count = int(inside.sum())
    if count == 0:
        return None
    return (inside / count).astype(np.float32)


def heatmap_from_boxes(
    boxes: np.ndarray | Sequence[Sequence[float]], image_size: tuple[int, int]
) -> np.ndarray | None:
    """Uniform distribution over the union of boxes: an *annotation-derived* spatial prior (source
    ``"annotation:boxes"``), not gaze.

    Args:
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` in pixel-edge coordinates of the image (``0`` is the left
            edge of column 0, ``W`` the right edge of the last column; a COCO box ``[x, y, w, h]`` is
            ``(x, y, x + w, y + h)``), clipped to the image.
        image_size: ``(H, W)``.

    Returns:
        ``(H, W)`` float32 summing to 1: each pixel weighted by the fraction of its area covered
        (the largest over boxes), ``None`` when no box covers any pixel.
    """
    h, w = _check_size(image_size, "image_size")
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(arr)):
        raise ValueError("boxes must be finite (x0, y0, x1, y1)")
    cover = np.zeros((h, w), dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    rows = np.arange(h, dtype=np.float64)
    for x0, y0, x1, y1 in arr:
        fx = np.clip(np.minimum(cols + 1, x1) - np.maximum(cols, x0), 0, 1)
        fy = np.clip(np.minimum(rows + 1, y1) - np.maximum(rows, y0), 0, 1)
        np.maximum(cover, fy[:, None] * fx[None, :], out=cover)
    total = cover.sum()
    if not total > 0:
        return None
    return (cover / total).astype(np.float32)


def lung_mask_path(masks_dir: str | Path, image_name: str) -> Path:
    """``<masks_dir>/<stem>_mask.png`` for an image file name (any extension, any folder)."""
    return Path(masks_dir) / f"{Path(str(image_name)).stem}{LUNG_MASK_SUFFIX}"


def read_lung_mask(path: str | Path) -> np.ndarray:
    """Read a ``covid_cxr`` lungVAE mask PNG as a bool ``(H, W)`` array (lung where ``value >= 128``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "lung mask not found")
    try:
        with Image.open(path) as img:
            img.load()
            gray = img.convert("L") if img.mode != "L" else img
            arr = np.asarray(gray)
    except (UnidentifiedImageError, OSError) as exc:
        raise CorruptFileError(path, f"not a readable image: {exc}") from exc
    return arr >= 128


@dataclass(frozen=True)
class LungBoxes:
    """The lung boxes of one image of the ``covid_cxr`` box annotations.

    Attributes:
        file_name: as in the JSON (original extension).
        size: ``(height, width)`` of the image the boxes were drawn on.
        boxes: ``(N, 4)`` float64 ``(x0, y0, x1, y1)`` pixel-edge coordinates on that image.
        labels: category name of each box ("Right Lung", "Left Lung").
    """

    file_name: str
    size: tuple[int, int]
    boxes: np.ndarray
    labels: tuple[str, ...]

    def scaled_to(self, image_size: tuple[int, int]) -> np.ndarray:
        """The boxes on a rescaled copy of the image, ``(N, 4)`` (per-axis factors ``W'/W``, ``H'/H``)."""
        h, w = _check_size(image_size, "image_size")
        factors = np.array([w / self.size[1], h / self.size[0], w / self.size[1], h / self.size[0]])
        return self.boxes * factors


@dataclass(frozen=True)
class LungBoxAnnotations:
    """:func:`read_lung_boxes`: ``images`` by file stem, and the counts of what was left out."""

    images: dict[str, LungBoxes]
    skipped_null_boxes: int
    skipped_size_mismatch: int

    def get(self, image_name: str) -> LungBoxes | None:
        """The boxes of an image by any file name with its stem (``x.png``, ``images_512/x.jpg``)."""
        return self.images.get(Path(str(image_name)).stem)


def read_lung_boxes(
    path: str | Path, expected_sizes: Mapping[str, tuple[int, int]] | None = None
) -> LungBoxAnnotations:
    """Read ``covid_cxr``'s ``imageannotation_ai_lung_bounding_boxes.json`` (COCO-like, see module doc).

    Args:
        path: the JSON file.
        expected_sizes: optional ``{file stem: (height, width)}`` of the original images
            (``image_provenance.csv``); an image whose JSON size differs is left out (its boxes were
            drawn on another version of the picture) and counted.

    Returns:
        :class:`LungBoxAnnotations`; boxes with ``null`` coordinates are left out and counted, images
        left with no box are absent.

    Raises:
        DataError / CorruptFileError / UnsupportedFormatError: missing file, bad JSON, not COCO-like.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "lung box annotations not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in ("images", "annotations")):
        raise UnsupportedFormatError(
            path, "not a COCO-like annotation file (needs 'images' and 'annotations')"
        )
    names = {c.get("id"): str(c.get("name")) for c in doc.get("categories", []) if isinstance(c, dict)}
    images: dict[Any, dict[str, Any]] = {}
    for im in doc["images"]:
        try:
            images[im["id"]] = {
                "file_name": str(im["file_name"]),
                "size": (int(im["height"]), int(im["width"])),
                "boxes": [],
                "labels": [],
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedFormatError(
                path, f"an image entry lacks id/file_name/width/height: {exc}"
            ) from exc
    skipped_null = 0
    for ann in doc["annotations"]:
        entry = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if entry is None:
            raise CorruptFileError(path, "an annotation refers to an image id that is not listed")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or any(v is None for v in bbox):
            skipped_null += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        entry["boxes"].append((x, y, x + w, y + h))
        entry["labels"].append(names.get(ann.get("category_id"), str(ann.get("category_id"))))
    out: dict[str, LungBoxes] = {}
    mismatched = 0
    for entry in images.values():
        stem = Path(entry["file_name"]).stem
        if not entry["boxes"]:
            continue
        expected = None if expected_sizes is None else expected_sizes.get(stem)
        if expected is not None and tuple(int(v) for v in expected) != entry["size"]:
            mismatched += 1
            continue
        out[stem] = LungBoxes(
            entry["file_name"],
            entry["size"],
            np.asarray(entry["boxes"], dtype=np.float64),
            tuple(entry["labels"]),
        )
    if skipped_null or mismatched:
        log.info(
            "%s: left out %d box(es) with null coordinates and %d image(s) whose size disagrees with the "
            "file",
            path,
            skipped_null,
            mismatched,
        )
    return LungBoxAnnotations(out, skipped_null, mismatched)


# --- per-sample provider for the X-ray adapter -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class GazeHeatmap:
    """A heatmap and where it came from (one of :data:`GAZE_SOURCES`)."""

    heatmap: np.ndarray
    source: str


class GazeHeatmapProvider(Configurable):
    """Per-sample gaze heatmaps (or annotation-derived priors) for the X-ray adapter.

    ``lookup(row, image_shape)`` tries the configured ``sources`` in order and returns the first that
    exists for the row; ``heatmap`` returns just the array. ``row`` is a manifest row (a ``dict`` or a
    ``pandas.Series``) and may carry:

    * ``dicom_id``: MIMIC-CXR image id, the key of REFLACX (via ``reflacx_dir``'s metadata tables;
      several readings of one image are averaged) and of EGD-CXR;
    * ``path`` (or ``filename``): the image file; its stem is the key of the ``covid_cxr`` lung masks
      (``<stem>_mask.png``) and boxes.

    ``image_shape`` is the ``(H, W)`` of the image *as loaded* (any rescale of the original, e.g.
    ``covid_cxr``'s 512 px copies, before any letterbox/crop): the heatmap is returned on that grid,
    float32, summing to 1. Apply the adapter's later spatial transforms to it (for a letterbox,
    :func:`transform_heatmap_like_image`).

    Args:
        sources: which sources to try, in order (any of :data:`GAZE_SOURCES`).
        reflacx_dir: REFLACX ``main_data`` folder.
        egd_fixations_csv, egd_master_sheet_csv: EGD-CXR tables.
        egd_screen_px_per_degree: the EGD-CXR screen's pixels per degree of visual angle (required
            with ``"egd-cxr"``: the dataset does not record the viewing distance).
        lung_masks_dir: ``covid_cxr/annotations/lungVAE-masks``.
        lung_boxes_json: ``covid_cxr/annotations/imageannotation_ai_lung_bounding_boxes.json``.
        image_provenance_csv: ``covid_cxr/image_provenance.csv``, to drop boxes drawn on another
            version of an image (size check).
        sigma_degrees: σ of each fixation's Gaussian in degrees of visual angle.
        aspect_rtol: largest relative difference between the aspect ratio of ``image_shape`` and that of
            the gaze/annotation's image before it is an error (a letterboxed or cropped shape).
    """

    def __init__(
        self,
        sources: Sequence[str] = (SOURCE_REFLACX, SOURCE_EGD),
        *,
        reflacx_dir: str | Path | None = None,
        egd_fixations_csv: str | Path | None = None,
        egd_master_sheet_csv: str | Path | None = None,
        egd_screen_px_per_degree: float | None = None,
        lung_masks_dir: str | Path | None = None,
        lung_boxes_json: str | Path | None = None,
        image_provenance_csv: str | Path | None = None,
        sigma_degrees: float = 1.0,
        aspect_rtol: float = 0.02,
    ) -> None:
        unknown = [s for s in sources if s not in GAZE_SOURCES]
        if unknown or not sources:
            raise ConfigError(
                f"sources must be a non-empty list of {list(GAZE_SOURCES)}, got {list(sources)}"
            )
        needs = {
            SOURCE_REFLACX: ("reflacx_dir", reflacx_dir),
            SOURCE_LUNG_MASK: ("lung_masks_dir", lung_masks_dir),
            SOURCE_BOXES: ("lung_boxes_json", lung_boxes_json),
        }
        for source in sources:
            if source in needs and needs[source][1] is None:
                raise ConfigError(f"source {source!r} needs {needs[source][0]}")
        if SOURCE_EGD in sources:
            if egd_fixations_csv is None or egd_master_sheet_csv is None:
                raise ConfigError("source 'egd-cxr' needs egd_fixations_csv and egd_master_sheet_csv")
            if egd_screen_px_per_degree is None:
                raise ConfigError(
                    "source 'egd-cxr' needs egd_screen_px_per_degree: EGD-CXR does not record the viewing "
                    "distance (screen px per degree = distance × tan(1°) × screen px per unit length)"
                )
            _check_positive_number(egd_screen_px_per_degree, "egd_screen_px_per_degree")
        _check_positive_number(sigma_degrees, "sigma_degrees")
        _check_positive_number(aspect_rtol, "aspect_rtol")
        self.sources = tuple(sources)
        self.reflacx_dir = None if reflacx_dir is None else Path(reflacx_dir)
        self.egd_fixations_csv = None if egd_fixations_csv is None else Path(egd_fixations_csv)
        self.egd_master_sheet_csv = None if egd_master_sheet_csv is None else Path(egd_master_sheet_csv)
        self.egd_screen_px_per_degree = egd_screen_px_per_degree
        self.lung_masks_dir = None if lung_masks_dir is None else Path(lung_masks_dir)
        self.lung_boxes_json = None if lung_boxes_json is None else Path(lung_boxes_json)
        self.image_provenance_csv = None if image_provenance_csv is None else Path(image_provenance_csv)
        self.sigma_degrees = float(sigma_degrees)
        self.aspect_rtol = float(aspect_rtol)
        self._reflacx: ReflacxIndex | None = None
        self._egd: EgdGazeTable | None = None
        self._boxes: LungBoxAnnotations | None = None

    @classmethod
    def covid_cxr(
        cls, root: str | Path, sources: Sequence[str] = (SOURCE_LUNG_MASK, SOURCE_BOXES)
    ) -> GazeHeatmapProvider:
        """Annotation-derived priors of the ``covid_cxr`` folder (lung masks first, then boxes)."""
        root = Path(root)
        return cls(
            sources,
            lung_masks_dir=root / "annotations" / "lungVAE-masks",
            lung_boxes_json=root / "annotations" / "imageannotation_ai_lung_bounding_boxes.json",
            image_provenance_csv=root / "image_provenance.csv",
        )

    def heatmap(self, row: Mapping[str, Any] | pd.Series, image_shape: tuple[int, int]) -> np.ndarray | None:
        """``(H, W)`` float32 heatmap summing to 1 for the sample, or ``None`` (no source has one)."""
        found = self.lookup(row, image_shape)
        return None if found is None else found.heatmap

    def lookup(self, row: Mapping[str, Any] | pd.Series, image_shape: tuple[int, int]) -> GazeHeatmap | None:
        """The first configured source that has a heatmap for the sample, with its source name."""
        shape = _check_size(tuple(image_shape), "image_shape")
        for source in self.sources:
            heat = self._methods[source](self, row, shape)
            if heat is not None:
                return GazeHeatmap(heat, source)
        return None

    # each returns (H, W) float32 summing to 1, or None when the source has nothing for the row

    def _check_aspect(self, what: str | Path, size: tuple[int, int], shape: tuple[int, int]) -> None:
        a, b = size[1] / size[0], shape[1] / shape[0]
        if abs(a - b) > self.aspect_rtol * a:
            raise DataError(
                what,
                f"image_shape {shape} does not have the aspect ratio of the image the gaze/annotation refers "
                f"to {size}",
                "pass the shape of the image as loaded (a rescale of the original), before any letterbox or "
                "crop, then transform the heatmap like the image (transform_heatmap_like_image)",
            )

    def _from_reflacx(self, row: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        dicom_id = _row_value(row, "dicom_id")
        if dicom_id is None:
            return None
        if self._reflacx is None:
            assert self.reflacx_dir is not None
            self._reflacx = ReflacxIndex(self.reflacx_dir)
        maps = []
        for reading, size in self._reflacx.readings(dicom_id):
            self._check_aspect(self.reflacx_dir / reading, size, shape)  # type: ignore[operator]
            fix = self._reflacx.fixations(reading, size)
            heat = fixation_heatmap(fix, shape, sigma_degrees=self.sigma_degrees)
            if heat is not None:
                maps.append(heat.astype(np.float64))
        if not maps:
            return None
        mean = np.mean(maps, axis=0)
        return (mean / mean.sum()).astype(np.float32)

    def _from_egd(self, row: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        dicom_id = _row_value(row, "dicom_id")
        if dicom_id is None:
            return None
        if self._egd is None:
            assert self.egd_fixations_csv is not None and self.egd_master_sheet_csv is not None
            self._egd = EgdGazeTable(self.egd_fixations_csv, self.egd_master_sheet_csv)
        if dicom_id not in self._egd.dicom_ids:
            return None
        # displayed grid: the mapping is a pure rescale, so the DICOM's size is not needed (module doc)
        fix = self._egd.fixations(dicom_id, screen_px_per_degree=self.egd_screen_px_per_degree)
        self._check_aspect(self._egd.fixations_csv, fix.image_size, shape)
        return fixation_heatmap(fix, shape, sigma_degrees=self.sigma_degrees)

    def _from_lung_mask(self, row: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        name = _image_name(row)
        if name is None:
            return None
        assert self.lung_masks_dir is not None
        path = lung_mask_path(self.lung_masks_dir, name)
        if not path.is_file():
            return None
        mask = read_lung_mask(path)
        self._check_aspect(path, mask.shape, shape)
        heat = heatmap_from_mask(mask)
        return None if heat is None else _renormalised(resize_heatmap(heat, shape))

    def _from_boxes(self, row: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        name = _image_name(row)
        if name is None:
            return None
        if self._boxes is None:
            assert self.lung_boxes_json is not None
            self._boxes = read_lung_boxes(self.lung_boxes_json, self._expected_sizes())
        entry = self._boxes.get(name)
        if entry is None:
            return None
        self._check_aspect(self.lung_boxes_json, entry.size, shape)  # type: ignore[arg-type]
        return heatmap_from_boxes(entry.scaled_to(shape), shape)

    def _expected_sizes(self) -> dict[str, tuple[int, int]] | None:
        if self.image_provenance_csv is None:
            return None
        table = _read_table(self.image_provenance_csv, "image provenance table")
        _require_columns(
            table, ("filename", "orig_width", "orig_height"), self.image_provenance_csv, "provenance"
        )
        widths = _numeric(table, "orig_width", self.image_provenance_csv)
        heights = _numeric(table, "orig_height", self.image_provenance_csv)
        return {
            Path(str(f)).stem: (int(h), int(w))
            for f, h, w in zip(table["filename"], heights, widths, strict=True)
            if np.isfinite(h) and np.isfinite(w)
        }

    _methods: ClassVar[dict[str, Any]] = {
        SOURCE_REFLACX: _from_reflacx,
        SOURCE_EGD: _from_egd,
        SOURCE_LUNG_MASK: _from_lung_mask,
        SOURCE_BOXES: _from_boxes,
    }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sources={list(self.sources)}, sigma_degrees={self.sigma_degrees})"


def _renormalised(heat: np.ndarray) -> np.ndarray:
    arr = heat.astype(np.float64)
    return (arr / arr.sum()).astype(np.float32)


def _row_value(row: Mapping[str, Any] | pd.Series, key: str) -> str | None:
    value = row.get(key) if hasattr(row, "get") else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _image_name(row: Mapping[str, Any] | pd.Series) -> str | None:
    for key in ("path", "filename", "image_path"):
        value = _row_value(row, key)
        if value is not None:
            return Path(value).name
    return None
