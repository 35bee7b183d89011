"""Volume reading and preprocessing for torch-free inference (numpy, SciPy, nibabel, pynrrd, pydicom).

The numpy twin of the MONAI training pipeline (:mod:`modalities.volumes.transforms`: load →
``Orientationd`` → ``Spacingd`` → ``ScaleIntensityRanged`` / ``NormalizeIntensityd`` → ``CropForegroundd``
→ ``SpatialPadd``), plus the inverse of its spatial steps, so that a label map predicted on the model's
grid can be written back onto the input's own grid (same shape, same affine). Tests check every step
against MONAI and the training pipeline on real NIfTI, NRRD and DICOM volumes.

Known difference: ``zscore`` with ``nonzero`` tests voxels for exactly 0. Bilinear resampling of a zero
background gives exact zeros here but ~1e-12 (float64) / ~1e-7 (float32) noise in torch at some voxels,
depending on torch's float rounding of the sampling grid (CPU-vector-width dependent, so not reproducible
bit for bit); MONAI then normalises those voxels too. Measured on brain1 (MR, 1.5×1.5×3 mm): 0.02–0.2% of
the voxels are 0 here and ≈ −1.06 there, and the other voxels differ by ≤ 2e-3. Everything else agrees
within 1e-5 (float64 resampling) / 1e-4 (the training pipeline resamples in float32).

Readers (:func:`read_volume`) return a :class:`Volume`: ``(C, H, W, D)`` float32 in the file's voxel order
and the voxel → world affine in RAS millimetres, as MONAI's readers give them:

- NIfTI (``.nii``, ``.nii.gz``; nibabel): ``img.affine``, intensities with ``scl_slope/scl_inter``
  applied; a 4-D file is ``(H, W, D, C)`` and becomes channel-first;
- NRRD (``.nrrd``, ``.nhdr``; pynrrd): the affine from ``space directions`` / ``space origin``, turned
  from the file's space (LPS, the default, or RAS/LAS) into RAS;
- DICOM series (a folder of one series' slices; pydicom): slices ordered along the slice normal, the
  affine from ``ImageOrientationPatient`` / ``ImagePositionPatient`` / ``PixelSpacing`` in LPS turned into
  RAS, axis 0 along the rows (MONAI's ``PydicomReader(swap_ij=True)``), ``RescaleSlope/Intercept``
  applied.

The preprocessing spec is the training one (:mod:`modalities.volumes.transforms`, written by
``preprocessing_spec``; the ``"preprocessing"`` entry of a segmentation model's metadata): JSON steps run
in order, each the numpy twin of a MONAI transform::

    [{"op": "load", "channels": 1},                                   # channel count check
     {"op": "orientation", "axcodes": "RAS"},                         # Orientationd
     {"op": "spacing", "pixdim": [1.5, 1.5, 2.0], "image_mode": "bilinear", "mask_mode": "nearest",
      "padding_mode": "border", "align_corners": false},              # Spacingd
     {"op": "window", "a_min": -175.0, "a_max": 250.0, "b_min": 0.0, "b_max": 1.0, "clip": true},
                                                                      # ScaleIntensityRanged (CT)
     {"op": "zscore", "nonzero": true, "channel_wise": true},         # NormalizeIntensityd (MR)
     {"op": "crop_foreground", "background": 0.0, "margin": 0},       # CropForegroundd (optional)
     {"op": "pad", "min_size": [96, 96, 96], "method": "symmetric", "value": 0.0}]  # SpatialPadd

Coordinate conventions (read from MONAI 1.6's ``Spacing``, ``SpatialResample``, ``compute_shape_offset``
and ``AffineTransform``): the output grid keeps the input's axis directions with the new voxel sizes
(``zoom_affine(diagonal=False)``), its shape is ``round(extent / new spacing) + 1`` voxel centres and its
origin the input corner that is smallest in output coordinates; an output voxel ``j`` samples the input
at voxel coordinates ``i = inv(A_in) · A_out · j`` (the normalisation of ``grid_sample`` cancels out for
either ``align_corners``), bilinearly, with coordinates clamped to the volume (``padding_mode="border"``;
``"zeros"`` reads 0 outside; ``"reflection"`` is not supported).
A resampling whose affines agree within 1e-3 is skipped, as in MONAI. ``align_corners`` does not change
that mapping (both normalisations cancel), so it is accepted and has no effect. The spatial steps
(orientation, spacing, crop, pad) are recorded in a :class:`VolumeGeometry` and undone in reverse order
by :func:`to_input_grid`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from medcl.errors import ConfigError, CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError

__all__ = [
    "KNOWN_OPS",
    "Volume",
    "VolumeGeometry",
    "check_steps",
    "foreground_box",
    "orient",
    "pad_widths",
    "preprocess_volume",
    "read_dicom_series",
    "read_nifti",
    "read_nrrd",
    "read_volume",
    "reorient",
    "resample",
    "spacing_grid",
    "to_input_grid",
    "window",
    "zscore",
]

# each op and the keys it needs (the training spec may carry more, e.g. spacing's mask_mode)
KNOWN_OPS: dict[str, tuple[str, ...]] = {
    "load": ("channels",),
    "orientation": ("axcodes",),
    "spacing": ("pixdim",),
    "window": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "zscore": ("nonzero", "channel_wise"),
    "crop_foreground": ("background", "margin"),
    "pad": ("min_size",),
}
RESAMPLE_PADDING = ("border", "zeros")
AFFINE_TOL = 1e-3  # MONAI's tolerance for "the affine did not change"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# NRRD world spaces → the sign of each world axis relative to RAS
NRRD_SPACES = {
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
}

Step = Mapping[str, Any]


@dataclass(frozen=True)
class Volume:
    """One image volume as read from disk.

    Attributes:
        array: ``(C, H, W, D)`` float32, in the file's voxel order.
        affine: ``(4, 4)`` float64, voxel index → world (RAS, mm).
        path: where it was read from (``"<array>"`` for arrays).
    """

    array: np.ndarray
    affine: np.ndarray
    path: str = "<array>"


@dataclass(frozen=True)
class _Reorientation:
    ornt: np.ndarray  # nibabel orientation (axis, flip) per input axis
    shape: tuple[int, ...]  # spatial shape before
    affine: np.ndarray  # affine before


@dataclass(frozen=True)
class _Resampling:
    shape: tuple[int, ...]  # spatial shape before
    affine: np.ndarray  # affine before
    changed: bool  # False when MONAI would skip it (affines equal within AFFINE_TOL)
    padding_mode: str = "border"


@dataclass(frozen=True)
class _Crop:
    shape: tuple[int, ...]  # spatial shape before
    start: tuple[int, ...]
    end: tuple[int, ...]


@dataclass(frozen=True)
class _Pad:
    before: tuple[int, ...]
    shape: tuple[int, ...]  # spatial shape before


@dataclass(frozen=True)
class VolumeGeometry:
    """Where the model's grid lies relative to the input's grid: what :func:`to_input_grid` inverts.

    Attributes:
        input_shape: the input's spatial shape ``(H, W, D)``.
        input_affine: the input's voxel → RAS affine.
        model_shape: the spatial shape after the spatial steps (the array the model sees).
        model_affine: its voxel → RAS affine.
        operations: the spatial steps applied, in order.
    """

    input_shape: tuple[int, ...]
    input_affine: np.ndarray
    model_shape: tuple[int, ...]
    model_affine: np.ndarray
    operations: tuple[_Reorientation | _Resampling | _Crop | _Pad, ...] = field(default=())


# --------------------------------------------------------------------------------------------------
# Readers


def _name(path: str | Path) -> str:
    return Path(path).name.lower()


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file, an NRRD file or a folder holding one DICOM series.

    Raises:
        DataError: the path does not exist.
        UnsupportedFormatError: not one of those formats, or a lone 2-D DICOM slice.
        CorruptFileError: the file cannot be parsed, or its geometry is unusable.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "volume not found", hint="check the path")
    if path.is_dir():
        return read_dicom_series(path)
    name = _name(path)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(NRRD_SUFFIXES):
        return read_nrrd(path)
    if name.endswith(".dcm") or _is_dicom(path):
        raise UnsupportedFormatError(
            path,
            "a single DICOM file is one 2-D slice, not a volume",
            hint="pass the folder that holds all the slices of its series",
        )
    raise UnsupportedFormatError(
        path,
        "not a volume format medcl reads",
        hint="use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or a folder of one DICOM series",
    )


def _channel_first(data: np.ndarray, path: Path, spatial_last: bool) -> np.ndarray:
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, -1, 0) if spatial_last else data
    raise UnsupportedFormatError(
        path, f"array of shape {data.shape} is not a 3-D volume (optionally with one channel axis)"
    )


def read_nifti(path: str | Path) -> Volume:
    """A NIfTI volume as MONAI's ``NibabelReader`` + ``EnsureChannelFirst`` give it."""
    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise CorruptFileError(path, f"not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI keeps dim 4 for time, dim 5 for vector components
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    array = _channel_first(data.astype(np.float32), path, spatial_last=True)
    return Volume(array, np.asarray(image.affine, dtype=np.float64), str(path))


def read_nrrd(path: str | Path) -> Volume:
    """An NRRD volume as MONAI's ``NrrdReader`` gives it (affine turned from the file's space to RAS)."""
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except (nrrd.NRRDError, OSError, EOFError, ValueError) as error:
        raise CorruptFileError(path, f"not a readable NRRD file ({type(error).__name__}: {error})") from None
    if "space directions" not in header or "space origin" not in header:
        raise CorruptFileError(
            path,
            "the NRRD header has no 'space directions' / 'space origin', so the volume cannot be placed in "
            "patient space",
            hint="re-save it with its geometry (e.g. from 3D Slicer or SimpleITK)",
        )
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space not in NRRD_SPACES:
        raise UnsupportedFormatError(
            path, f"NRRD space {space!r} is not one medcl reads ({', '.join(sorted(NRRD_SPACES))})"
        )
    directions = np.asarray(header["space directions"], dtype=float)
    spatial = ~np.isnan(directions).any(axis=1)  # a 'none' row marks a channel (list/vector) axis
    if spatial.sum() != 3 or data.ndim not in (3, 4):
        raise UnsupportedFormatError(path, f"NRRD of shape {data.shape} is not a 3-D volume")
    if data.ndim == 4:
        channel_axis = int(np.flatnonzero(~spatial)[0])
        data = np.moveaxis(data, channel_axis, 0)
    else:
        data = data[None]
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T
    affine[:3, 3] = np.asarray(header["space origin"], dtype=float)
    affine = np.diag([*NRRD_SPACES[space], 1.0]) @ affine
    return Volume(data.astype(np.float32), affine, str(path))


def _is_dicom(path: Path) -> bool:
    import pydicom

    try:
        return bool(pydicom.misc.is_dicom(str(path)))
    except OSError:
        return False


def read_dicom_series(folder: str | Path) -> Volume:
    """A folder of one DICOM series as a volume (MONAI ``PydicomReader`` geometry, RAS affine).

    Slices are ordered along the slice normal (``row × column`` direction cosines); their positions must
    be evenly spaced, their size, orientation and pixel spacing equal.

    Raises:
        UnsupportedFormatError: no DICOM files, several series, a single slice, or slices without the
            geometry tags.
        CorruptFileError: slices that disagree or are unevenly spaced.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(Path(f) for f in glob.glob(os.path.join(folder, "*")) if Path(f).is_file())
    slices = []
    for file in files:
        if not _is_dicom(file):
            continue
        try:
            slices.append((file, pydicom.dcmread(str(file))))
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as error:
            raise CorruptFileError(file, f"not a readable DICOM file ({error})") from None
    if not slices:
        raise UnsupportedFormatError(folder, "the folder holds no DICOM files")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise UnsupportedFormatError(
            folder,
            f"the folder holds {len(series)} DICOM series",
            hint="put each series in its own folder and pass one folder per volume",
        )
    if len(slices) < 2:
        raise UnsupportedFormatError(
            folder, "the series has a single slice, not a volume", hint="pass a series of 2 or more slices"
        )
    missing = [
        str(file)
        for file, ds in slices
        if not all(hasattr(ds, tag) for tag in ("ImageOrientationPatient", "ImagePositionPatient"))
    ]
    if missing:
        raise UnsupportedFormatError(
            missing[0],
            "slice without ImageOrientationPatient / ImagePositionPatient: cannot build the volume",
        )
    cosines = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in slices])
    if not np.allclose(cosines, cosines[0], atol=1e-4):
        raise CorruptFileError(folder, "the slices of the series have different orientations")
    row, column = cosines[0, :3], cosines[0, 3:]
    normal = np.cross(row, column)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions, axis=0)
    if np.linalg.norm(steps, axis=1).min() < 1e-6:
        raise CorruptFileError(folder, "two slices of the series are at the same position")
    if not np.allclose(steps, steps.mean(axis=0), atol=1e-2 * max(np.linalg.norm(steps[0]), 1.0)):
        gaps = np.round(np.linalg.norm(steps, axis=1), 3).tolist()
        raise CorruptFileError(
            folder,
            f"the slices are unevenly spaced (gaps {gaps} mm): missing slices or several stacks",
            hint="pass a complete, evenly spaced series",
        )
    spacing = [[float(v) for v in getattr(ds, "PixelSpacing", (1.0, 1.0))] for _, ds in slices]
    if not np.allclose(spacing, spacing[0]):
        raise CorruptFileError(folder, "the slices of the series have different pixel spacings")
    arrays = []
    for file, ds in slices:
        try:
            pixels = ds.pixel_array
        except Exception as error:  # pydicom raises many types for missing/undecodable pixel data
            raise CorruptFileError(file, f"pixel data cannot be decoded ({error})") from None
        if pixels.ndim != 2:
            raise UnsupportedFormatError(file, f"pixel data of shape {pixels.shape} is not one 2-D slice")
        values = pixels.astype(np.float32)
        if hasattr(ds, "RescaleSlope") or hasattr(ds, "RescaleIntercept"):
            values = values * float(getattr(ds, "RescaleSlope", 1.0)) + float(
                getattr(ds, "RescaleIntercept", 0.0)
            )
        arrays.append(values.astype(np.float32))
    if len({a.shape for a in arrays}) > 1:
        raise CorruptFileError(folder, "the slices of the series have different sizes")
    data = np.stack(arrays, axis=-1).swapaxes(0, 1)  # (columns, rows, slices): axis 0 along a row
    row_spacing, column_spacing = spacing[0]
    affine = np.eye(4)
    affine[:3, 0] = row * column_spacing
    affine[:3, 1] = column * row_spacing
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS → RAS
    return Volume(np.ascontiguousarray(data[None]), affine, str(folder))


# --------------------------------------------------------------------------------------------------
# Spatial steps


def orient(
    array: np.ndarray, affine: np.ndarray, axcodes: str = "RAS"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip/transpose ``array`` ``(C, H, W, D)`` so its axes run along ``axcodes`` (MONAI ``Orientation``).

    Returns:
        the reoriented array, its affine, and the nibabel orientation transform that was applied.
    """
    spatial_shape = array.shape[1:]
    source = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(tuple(axcodes))
    ornt = orientations.ornt_transform(source, target)
    return reorient(array, ornt), affine @ orientations.inv_ornt_aff(ornt, spatial_shape), ornt


def reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation transform to the spatial axes of ``(C, *spatial)`` (flips, then the
    axis permutation), as MONAI's ``orientation`` does."""
    flips = tuple(int(axis) + 1 for axis, flip in enumerate(ornt[:, 1]) if flip == -1)
    out = np.flip(array, axis=flips) if flips else array
    order = (0, *(int(a) + 1 for a in np.argsort(ornt[:, 0])))
    return np.ascontiguousarray(np.transpose(out, order))


def _spacing_of(affine: np.ndarray) -> np.ndarray:
    spacing = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    spacing[spacing == 0] = 1.0
    return spacing


def spacing_grid(
    affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float] | float
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The output grid of MONAI's ``Spacing(pixdim, diagonal=False, scale_extent=False)``: its affine and
    spatial shape for an input of ``shape`` with ``affine``.

    ``pixdim`` entries ``<= 0`` keep the input's spacing; an input spacing within 1e-3 of the target is
    kept as it is (MONAI's ``AFFINE_TOL``).
    """
    target = np.atleast_1d(np.asarray(pixdim, dtype=np.float64))[:3]
    if target.size < 3:
        target = np.append(target, [target[-1]] * (3 - target.size))
    original = _spacing_of(affine)
    out = target.copy()
    for k in range(3):
        if target[k] - AFFINE_TOL <= original[k] <= target[k] + AFFINE_TOL:
            out[k] = original[k]
    out = np.where(out > 0, out, original)
    out[out == 0] = 1.0
    # zoom_affine(diagonal=False): keep the rotation (and axis signs), set the zooms, drop shears
    rzs = affine[:3, :3]
    zooms = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zooms)
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation @ np.diag(np.sign(np.diag(zooms)) * np.abs(out))
    # compute_shape_offset(scale_extent=False)
    size = np.asarray(shape, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in size], indexing="ij")).reshape(3, -1)
    corners = np.concatenate([corners, np.ones_like(corners[:1])])
    corners_out = np.linalg.solve(new_affine, affine) @ corners
    corners_world = affine @ corners
    distances = corners_out[:-1].copy()
    corners_out = corners_out[:-1] / corners_out[-1]
    out_shape = np.round(np.ptp(corners_out, axis=1) + 1.0)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(distances - distances[:, i : i + 1], 1), 0.0, rtol=AFFINE_TOL):
            offset = corners_world[:-1, i]
            break
    if offset is None:
        offset = affine[:3, :3] @ (size / 2.0) + affine[:3, 3] - new_affine[:3, :3] @ (out_shape / 2.0)
    new_affine[:3, 3] = offset
    return new_affine, tuple(int(n) for n in out_shape)


def _unchanged(src: np.ndarray, dst: np.ndarray, src_shape: Sequence[int], dst_shape: Sequence[int]) -> bool:
    if tuple(src_shape) != tuple(dst_shape):
        return False
    xform = np.linalg.solve(src, dst)
    return bool(
        np.allclose(src, dst, rtol=1e-5, atol=AFFINE_TOL)
        or np.allclose(xform, np.eye(4), rtol=1e-5, atol=AFFINE_TOL)
    )


def _nearest_indices(
    xform: np.ndarray, shape_in: Sequence[int], shape_out: Sequence[int]
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Index arrays into the input for every output voxel, ``rint(xform · j)`` (torch's ``nearbyint``:
    ties to even) clamped to the volume, and where that clamping was needed (outside). Separable when
    ``xform`` has no rotation."""
    matrix, shift = xform[:3, :3], xform[:3, 3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0, atol=1e-12):
        raw = [np.rint(matrix[k, k] * np.arange(shape_out[k]) + shift[k]) for k in range(3)]
        inside = [(r >= 0) & (r <= shape_in[k] - 1) for k, r in enumerate(raw)]
        clipped = [np.clip(r, 0, shape_in[k] - 1).astype(np.intp) for k, r in enumerate(raw)]
        outside = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
        return tuple(np.ix_(*clipped)), outside
    grid = np.indices(tuple(shape_out), dtype=np.float64).reshape(3, -1)
    raw = np.rint(matrix @ grid + shift[:, None])
    inside = np.all((raw >= 0) & (raw <= np.asarray(shape_in)[:, None] - 1), axis=0)
    clipped = [
        np.clip(raw[k], 0, shape_in[k] - 1).astype(np.intp).reshape(tuple(shape_out)) for k in range(3)
    ]
    return tuple(clipped), ~inside.reshape(tuple(shape_out))


def resample(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> np.ndarray:
    """Resample ``array`` ``(C, *src_shape)`` onto the grid ``(dst_affine, dst_shape)`` (MONAI
    ``SpatialResample``).

    ``mode="bilinear"``: trilinear interpolation in float64, returned as float32. ``"nearest"``: the
    nearest voxel (ties rounded to even, as torch), values and dtype kept. ``padding_mode="border"``
    clamps sampling positions to the volume; ``"zeros"`` reads 0 outside it. Returns the input (as
    float32 for ``"bilinear"``) when the two grids agree within 1e-3, as MONAI does.
    """
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"resampling mode must be 'bilinear' or 'nearest', got {mode!r}")
    if padding_mode not in RESAMPLE_PADDING:
        raise ConfigError(f"resampling padding_mode must be one of {RESAMPLE_PADDING}, got {padding_mode!r}")
    src_shape = array.shape[1:]
    dst_shape = tuple(int(n) for n in dst_shape)
    if _unchanged(src_affine, dst_affine, src_shape, dst_shape):
        return array.astype(np.float32) if mode == "bilinear" else array
    xform = np.linalg.solve(src_affine, dst_affine)
    if mode == "nearest":
        index, outside = _nearest_indices(xform, src_shape, dst_shape)
        out = np.stack([channel[index] for channel in array])
        if padding_mode == "zeros":
            out[:, outside] = 0
        return out
    matrix, shift = xform[:3, :3], xform[:3, 3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0, atol=1e-12):
        matrix = np.diag(matrix)  # SciPy's faster path for axis-aligned zooms
    scipy_mode = "nearest" if padding_mode == "border" else "grid-constant"  # torch's border / zeros
    return np.stack(
        [
            ndimage.affine_transform(
                channel.astype(np.float64),
                matrix,
                offset=shift,
                output_shape=dst_shape,
                order=1,
                mode=scipy_mode,
                cval=0.0,
                prefilter=False,
            ).astype(np.float32)
            for channel in array
        ]
    )


def foreground_box(
    array: np.ndarray, background: float, margin: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(start, end)`` of the bounding box of the voxels where any channel of ``(C, H, W, D)`` differs from
    ``background``, widened by ``margin`` and clipped to the volume (MONAI ``CropForeground`` with
    ``allow_smaller=True``); ``((0, 0, 0), (0, 0, 0))`` when there is no foreground, as in MONAI."""
    foreground = (array != background).any(axis=0)
    if not foreground.any():
        return (0, 0, 0), (0, 0, 0)
    start, end = [], []
    for axis in range(3):
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(max(int(hits[0]) - margin, 0))
        end.append(min(int(hits[-1]) + margin + 1, foreground.shape[axis]))
    return tuple(start), tuple(end)


def pad_widths(shape: Sequence[int], min_size: Sequence[int]) -> list[tuple[int, int]]:
    """Per axis ``(before, after)`` to reach at least ``min_size``: half (rounded down) before, the rest
    after (MONAI ``SpatialPad(method="symmetric")``)."""
    widths = []
    for n, size in zip(shape, min_size, strict=True):
        missing = max(int(size) - int(n), 0)
        widths.append((missing // 2, missing - missing // 2))
    return widths


# --------------------------------------------------------------------------------------------------
# Intensity steps


def window(
    array: np.ndarray, a_min: float, a_max: float, b_min: float, b_max: float, clip: bool = False
) -> np.ndarray:
    """``(x − a_min)/(a_max − a_min)·(b_max − b_min) + b_min``, optionally clipped to ``[b_min, b_max]``
    (MONAI ``ScaleIntensityRange``; a CT window maps HU ``a_min…a_max`` to ``b_min…b_max``)."""
    x = np.asarray(array, dtype=np.float32)
    if a_max - a_min == 0.0:
        return (x - np.float32(a_min) + np.float32(b_min)).astype(np.float32)
    x = (x - np.float32(a_min)) / np.float32(a_max - a_min)
    x = x * np.float32(b_max - b_min) + np.float32(b_min)
    if clip:
        x = np.clip(x, np.float32(b_min), np.float32(b_max))
    return x.astype(np.float32)


def _normalize(x: np.ndarray, nonzero: bool) -> np.ndarray:
    x = x.astype(np.float32, copy=True)
    mask = x != 0 if nonzero else np.ones(x.shape, dtype=bool)
    if not mask.any():
        return x
    values = x[mask].astype(np.float64)
    mean, std = values.mean(), values.std()
    x[mask] = ((values - mean) / (std if std != 0 else 1.0)).astype(np.float32)
    return x


def zscore(array: np.ndarray, nonzero: bool = False, channel_wise: bool = False) -> np.ndarray:
    """Subtract the mean and divide by the (population) standard deviation, over the non-zero voxels only
    when ``nonzero`` (zeros stay zero), per channel when ``channel_wise`` (MONAI ``NormalizeIntensity``)."""
    if channel_wise:
        return np.stack([_normalize(channel, nonzero) for channel in array])
    return _normalize(np.asarray(array), nonzero)


# --------------------------------------------------------------------------------------------------
# The spec


def check_steps(steps: Sequence[Step]) -> None:
    """Raise :class:`ConfigError` for unknown ops, missing keys or settings the torch-free path cannot run
    in a volume preprocessing spec (the full rules of the spec are
    ``modalities.volumes.transforms.check_spec``; this checks what inference needs)."""
    if isinstance(steps, Mapping) or not isinstance(steps, Sequence):
        raise ConfigError(f"a preprocessing spec is a list of steps, got {type(steps).__name__}")
    unknown = [
        str(step.get("op")) if isinstance(step, Mapping) else repr(step)
        for step in steps
        if not isinstance(step, Mapping) or step.get("op") not in KNOWN_OPS
    ]
    if unknown:
        raise ConfigError(
            f"unknown volume preprocessing step(s) {unknown}; this medcl knows {', '.join(KNOWN_OPS)} "
            "(a model exported by a newer medcl needs a newer medcl)"
        )
    for step in steps:
        op = step["op"]
        missing = [key for key in KNOWN_OPS[op] if key not in step]
        if missing:
            raise ConfigError(f"preprocessing step {op!r} lacks {', '.join(missing)}")
        if op == "orientation" and len(str(step["axcodes"])) != 3:
            raise ConfigError(f"orientation axcodes must be 3 letters, got {step['axcodes']!r}")
        if op == "spacing":
            if step.get("image_mode", "bilinear") not in ("bilinear", "nearest"):
                raise ConfigError(
                    f"spacing image_mode must be 'bilinear' or 'nearest', got {step['image_mode']!r}"
                )
            if step.get("padding_mode", "border") not in RESAMPLE_PADDING:
                raise ConfigError(
                    f"spacing padding_mode {step['padding_mode']!r} is not supported without torch "
                    f"(only {', '.join(RESAMPLE_PADDING)})"
                )
            if len(step["pixdim"]) != 3:
                raise ConfigError(f"spacing pixdim must be three numbers, got {step['pixdim']!r}")
        if op == "pad":
            if step.get("method", "symmetric") != "symmetric":
                raise ConfigError(f"pad method must be 'symmetric', got {step['method']!r}")
            if len(step["min_size"]) != 3:
                raise ConfigError(f"pad min_size must be three integers, got {step['min_size']!r}")


def preprocess_volume(volume: Volume, steps: Sequence[Step]) -> tuple[np.ndarray, VolumeGeometry]:
    """Run the spec's steps on ``volume``: the model's input ``(C, H', W', D')`` float32 and the geometry
    that maps it back onto the input's grid.

    Raises:
        ConfigError: a bad spec (see :func:`check_steps`).
        InvalidVolumeError: the volume's channel count differs from the spec's ``load`` step.
    """
    check_steps(steps)
    x = np.asarray(volume.array, dtype=np.float32)
    if x.ndim != 4:
        raise InvalidVolumeError(volume.path, f"expected a (C, H, W, D) volume, got shape {x.shape}")
    affine = np.asarray(volume.affine, dtype=np.float64)
    operations: list[_Reorientation | _Resampling | _Crop | _Pad] = []
    for step in steps:
        op = step["op"]
        shape = tuple(int(n) for n in x.shape[1:])
        if op == "load":
            if x.shape[0] != int(step["channels"]):
                raise InvalidVolumeError(
                    volume.path,
                    f"{x.shape[0]} channel(s), but the preprocessing expects {int(step['channels'])}",
                )
        elif op == "orientation":
            before = affine
            x, affine, ornt = orient(x, affine, str(step["axcodes"]))
            operations.append(_Reorientation(ornt, shape, before))
        elif op == "spacing":
            new_affine, new_shape = spacing_grid(affine, shape, step["pixdim"])
            changed = not _unchanged(affine, new_affine, shape, new_shape)
            padding = str(step.get("padding_mode", "border"))
            operations.append(_Resampling(shape, affine, changed, padding))
            x = resample(x, affine, new_affine, new_shape, str(step.get("image_mode", "bilinear")), padding)
            affine = new_affine if changed else affine
        elif op == "window":
            x = window(
                x,
                float(step["a_min"]),
                float(step["a_max"]),
                float(step["b_min"]),
                float(step["b_max"]),
                bool(step["clip"]),
            )
        elif op == "zscore":
            x = zscore(x, bool(step["nonzero"]), bool(step["channel_wise"]))
        elif op == "crop_foreground":
            start, end = foreground_box(x, float(step["background"]), int(step["margin"]))
            operations.append(_Crop(shape, start, end))
            x = x[(slice(None), *(slice(a, b) for a, b in zip(start, end, strict=True)))]
            affine = affine @ _translation(start)
        elif op == "pad":
            widths = pad_widths(shape, step["min_size"])
            operations.append(_Pad(tuple(before for before, _ in widths), shape))
            x = np.pad(x, [(0, 0), *widths], mode="constant", constant_values=float(step.get("value", 0.0)))
            affine = affine @ _translation([-before for before, _ in widths])
    geometry = VolumeGeometry(
        input_shape=tuple(volume.array.shape[1:]),
        input_affine=np.asarray(volume.affine, dtype=np.float64),
        model_shape=tuple(x.shape[1:]),
        model_affine=affine,
        operations=tuple(operations),
    )
    return np.ascontiguousarray(x, dtype=np.float32), geometry


def _translation(offset: Sequence[int]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(offset, dtype=np.float64)
    return shift


def to_input_grid(
    array: np.ndarray,
    geometry: VolumeGeometry,
    mode: str = "nearest",
    fill: Sequence[float] | float = 0.0,
) -> np.ndarray:
    """Map ``array`` on the model's grid — ``(H', W', D')`` or ``(K, H', W', D')`` — back onto the input's
    grid (``(H, W, D)`` / ``(K, H, W, D)``): the spatial steps undone in reverse order (pads cropped off,
    crops put back into volumes of ``fill`` — per channel, e.g. a background one-hot for probabilities —
    resamplings with ``mode``: ``"nearest"`` for label maps, ``"bilinear"`` for probabilities, as MONAI's
    ``Invertd``, and reorientations flipped/transposed back)."""
    squeeze = array.ndim == 3
    x = array[None] if squeeze else array
    if tuple(x.shape[1:]) != tuple(geometry.model_shape):
        raise ConfigError(
            f"array of spatial shape {x.shape[1:]} is not on the model grid {geometry.model_shape}"
        )
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (x.shape[0],))
    affine = geometry.model_affine
    for operation in reversed(geometry.operations):
        if isinstance(operation, _Pad):
            x = x[
                (
                    slice(None),
                    *(slice(b, b + n) for b, n in zip(operation.before, operation.shape, strict=True)),
                )
            ]
            affine = affine @ _translation(operation.before)
        elif isinstance(operation, _Crop):
            full = np.empty((x.shape[0], *operation.shape), dtype=x.dtype)
            full[...] = fills.astype(x.dtype)[:, None, None, None]
            box = tuple(slice(a, b) for a, b in zip(operation.start, operation.end, strict=True))
            full[(slice(None), *box)] = x
            x = full
            affine = affine @ _translation([-a for a in operation.start])
        elif isinstance(operation, _Resampling):
            if operation.changed:
                x = resample(x, affine, operation.affine, operation.shape, mode, operation.padding_mode)
            affine = operation.affine
        else:
            source = orientations.io_orientation(operation.affine)
            current = orientations.io_orientation(affine)
            x = reorient(x, orientations.ornt_transform(current, source))
            affine = operation.affine
    return x[0] if squeeze else x
