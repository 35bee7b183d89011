"""Read 3-D medical images (NIfTI, NRRD, DICOM series) into channel-first arrays with their geometry.

Every reader returns a :class:`Volume`: the voxels as a float32 array ``(C, H, W, D)`` (the file's own
voxel order; orientation to RAS happens in the preprocessing pipeline), the affine that maps voxel
indices ``(i, j, k, 1)`` to RAS world coordinates in mm (the convention of nibabel and MONAI), the path
and the format. The voxels are read by MONAI's readers (``NibabelReader``, ``NrrdReader``,
``PydicomReader``), so they are what MONAI's ``LoadImage`` gives; before that, every file is checked so
that a bad one raises a :class:`~medcl.errors.DataError` naming the file, what is wrong and what to do,
never a library traceback:

==============================================  ===========================================================
problem                                         error
==============================================  ===========================================================
file or folder not there                        :class:`~medcl.errors.DataError`
not a format we read; named ``.gz`` but not      :class:`~medcl.errors.UnsupportedFormatError`
gzip ("falsely gzipped"), gzip but named
``.nii``; a folder of several DICOM series
unreadable header, truncated data               :class:`~medcl.errors.CorruptFileError`
zero / negative / NaN voxel size (``pixdim``,   :class:`~medcl.errors.InvalidVolumeError`
``PixelSpacing``, NRRD ``space directions``),
singular or non-finite affine, NaN/inf voxels,
uneven or duplicated DICOM slices
a mask with non-integer or negative values, or  :class:`~medcl.errors.InvalidVolumeError`
off its image's grid (:func:`check_same_grid`)
==============================================  ===========================================================

Supported: ``.nii``/``.nii.gz`` (NIfTI-1 and -2; 3-D, or 4-D with the channels last, as MSD's
multi-channel tasks store them), ``.nrrd`` (3-D; 4-D with one non-spatial axis as channels) and a folder
holding the slices of one DICOM series (a single 2-D DICOM file is not a volume).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError

__all__ = [
    "GRID_ATOL",
    "MAX_EXTENT_MM",
    "MAX_INTENSITY",
    "VOLUME_SUFFIXES",
    "Volume",
    "check_same_grid",
    "describe_grid",
    "read_mask",
    "read_volume",
    "volume_format",
]

VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd")
"""File suffixes read as volumes (a DICOM series is a folder)."""

GRID_ATOL: float = 1e-3
"""Default tolerance (mm) when comparing a mask's affine with its image's."""

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_LABEL = 2**24
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_MAX_REPORTED = 5


@dataclass(frozen=True, eq=False)
class Volume:
    """A volume as read from disk.

    Attributes:
        array: ``(C, H, W, D)`` voxels in the file's voxel order (float32 for images; masks from
            :func:`read_mask` are int64 ``(1, H, W, D)``).
        affine: ``(4, 4)`` float64, voxel index ``(i, j, k, 1)`` → RAS world coordinates in mm.
        path: the file (or DICOM folder) it was read from.
        format: ``"nifti"``, ``"nrrd"`` or ``"dicom"``.
        modality: the DICOM ``Modality`` tag (``"CT"``, ``"MR"``, ...) when the file records it, else None.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str
    format: str
    modality: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(H, W, D)``."""
        return (int(self.array.shape[1]), int(self.array.shape[2]), int(self.array.shape[3]))

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes (norms of the affine's columns)."""
        return _spacing(self.affine)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _fmt(values: Sequence[float] | np.ndarray) -> str:
    return "x".join(f"{float(v):.6g}" for v in values)


def describe_grid(shape: Sequence[int], affine: np.ndarray) -> str:
    """``"shape 35x51x35, spacing 1x1x1 mm, origin (1, 1, 1)"`` — for error messages."""
    origin = ", ".join(f"{float(v):.6g}" for v in np.asarray(affine)[:3, 3])
    sides = "x".join(str(int(s)) for s in shape)
    return f"shape {sides}, spacing {_fmt(_spacing(affine))} mm, origin ({origin})"


def _check_affine(path: str | Path, affine: np.ndarray, source: str) -> None:
    """Raise InvalidVolumeError unless the 3x3 part of ``affine`` is finite and invertible."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise InvalidVolumeError(
            path,
            f"the voxel-to-world affine ({source}) has NaN or infinite entries: {affine[:3].tolist()}",
            "the file's geometry is broken; re-export it from the scanner software or converter",
        )
    spacing = _spacing(affine)
    det = float(np.linalg.det(affine[:3, :3]))
    if min(spacing) <= 0 or abs(det) <= 1e-12 * max(max(spacing), 1.0) ** 3:
        raise InvalidVolumeError(
            path,
            f"the voxel-to-world affine ({source}) is singular (determinant {det:.3g}, voxel sizes "
            f"{_fmt(spacing)} mm): a voxel size is zero or two axes coincide",
            "fix the header's voxel sizes/directions or re-export the file",
        )


#: the largest voxel magnitude accepted: no scanner's values come near it (CT: HU, MR: arbitrary units up to
#: ~1e6), while float32 statistics of larger values (sums of squares for a z-score) overflow to inf
MAX_INTENSITY: float = 1e15


#: the largest physical size (mm) of an image along an axis: no patient (or scanner bore) is larger, while a
#: corrupted voxel size (1024 mm for 1 mm) makes the image kilometres long and its resampling explode
MAX_EXTENT_MM: float = 5000.0


def _check_extent(volume: Volume) -> None:
    """Raise InvalidVolumeError if the image is longer than :data:`MAX_EXTENT_MM` along an axis."""
    extent = np.asarray(volume.shape, dtype=np.float64) * np.asarray(volume.spacing)
    axis = int(np.argmax(extent))
    if extent[axis] > MAX_EXTENT_MM:
        raise InvalidVolumeError(
            volume.path,
            f"the image spans {extent[axis]:.6g} mm along axis {axis} ({volume.shape[axis]} voxels of "
            f"{volume.spacing[axis]:.6g} mm): no patient is that large (limit {MAX_EXTENT_MM:g} mm)",
            "the voxel size in the header is wrong (or in the wrong unit); fix it or re-export the file",
        )


def _check_finite(volume: Volume) -> None:
    """Raise InvalidVolumeError if any voxel is NaN, infinite, or beyond :data:`MAX_INTENSITY`."""
    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(np.isnan(array).sum())
            kind = "NaN" if n_nan == n_bad else ("infinite" if n_nan == 0 else "NaN or infinite")
            raise InvalidVolumeError(
                volume.path,
                f"{n_bad} of {array.size} voxels ({100.0 * n_bad / array.size:.3g} %) are {kind}",
                "NaN voxels make every loss NaN; fill them (e.g. with the background value) or drop the file",
            )
        largest = float(np.abs(array).max()) if array.size else 0.0
        if largest > MAX_INTENSITY:
            raise InvalidVolumeError(
                volume.path,
                f"voxel values reach {largest:.3g}, beyond any scanner's range (limit {MAX_INTENSITY:g}; "
                "float32 statistics of such values overflow)",
                "the intensity scaling (NIfTI scl_slope/scl_inter, DICOM RescaleSlope/Intercept) or the "
                "voxel type in the header is wrong; fix it or re-export the file",
            )


# --------------------------------------------------------------------------------------------------
# format detection and compression checks
# --------------------------------------------------------------------------------------------------


def volume_format(path: str | Path) -> str:
    """``"nifti"``, ``"nrrd"`` or ``"dicom"`` (a folder), from the name only.

    Raises:
        DataError: nothing at ``path``.
        UnsupportedFormatError: any other suffix, or a single DICOM file.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom"
    if not path.exists():
        raise DataError(path, "file not found")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    if name.endswith(".dcm") or _looks_like_dicom(path):
        raise UnsupportedFormatError(
            path,
            "a single DICOM file is one slice, not a volume",
            "give the folder that holds all slices of the series",
        )
    raise UnsupportedFormatError(
        path,
        f"not a volume format medcl reads (suffix {''.join(path.suffixes) or 'none'})",
        "convert it to NIfTI (.nii.gz) or NRRD, or give a DICOM series as a folder of slices",
    )


def _looks_like_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _nifti_kind(head: bytes) -> str | None:
    """``"NIfTI-1"``/``"NIfTI-2"`` if ``head`` (the first bytes of an uncompressed file) is a NIfTI
    header, else None."""
    if len(head) < 348:
        return None
    sizes = {int(np.frombuffer(head[:4], dtype=f"{order}i4")[0]) for order in ("<", ">")}
    if 348 in sizes and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "NIfTI-1"
    if 540 in sizes and len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "NIfTI-2"
    return None


def _describe_bytes(head: bytes) -> str:
    """What the first bytes of a file look like, for error messages."""
    kind = _nifti_kind(head)
    if kind:
        return f"an uncompressed {kind} file"
    if head.startswith(b"NRRD"):
        return "an NRRD file"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive"
    sample = head[:64]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return f"text ({sample[:40].decode('ascii', 'replace')!r}...)"
    return f"unknown binary data (first bytes {head[:8].hex(' ')})"


def _check_compression(path: Path) -> bool:
    """Check that the file's compression matches its name; True if it is gzip-compressed.

    Raises:
        CorruptFileError: the file is empty or unreadable.
        UnsupportedFormatError: named ``.gz`` but not gzip, or gzip but not named ``.gz``.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(540)
    except OSError as exc:
        raise CorruptFileError(path, f"cannot be opened ({exc.strerror or exc})") from None
    if not head:
        raise CorruptFileError(path, "the file is empty (0 bytes)", "copy it again from its source")
    gzipped = head[:2] == _GZIP_MAGIC
    named_gz = path.name.lower().endswith(".gz")
    if named_gz and not gzipped:
        what = _describe_bytes(head)
        hint = (
            f"rename it to {path.name[:-3]}, or gzip it"
            if _nifti_kind(head)
            else "this is not an image file; replace it with the real image"
        )
        raise UnsupportedFormatError(path, f"named .gz but not gzip-compressed: it is {what}", hint)
    if gzipped and not named_gz and path.name.lower().endswith(".nii"):
        raise UnsupportedFormatError(path, "named .nii but gzip-compressed", f"rename it to {path.name}.gz")
    return gzipped


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def _raw_nifti_header(path: Path, gzipped: bool) -> Any:
    """The header exactly as stored (nibabel's ``load`` silently replaces zero voxel sizes by 1)."""
    import nibabel as nib

    try:
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as handle:
            head = handle.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(path, f"the header cannot be read ({type(exc).__name__}: {exc})") from None
    kind = _nifti_kind(head)
    if kind is None:
        raise UnsupportedFormatError(
            path,
            f"not a NIfTI file: the {'decompressed ' if gzipped else ''}data starts like "
            f"{_describe_bytes(head)}",
            "only NIfTI-1/-2 images can be named .nii/.nii.gz",
        )
    header_class = nib.Nifti1Header if kind == "NIfTI-1" else nib.Nifti2Header
    size = 348 if kind == "NIfTI-1" else 540
    try:
        return header_class.from_fileobj(_BytesReader(head[:size]), check=False)
    except Exception as exc:  # nibabel raises several types for a garbled header
        raise CorruptFileError(path, f"unreadable {kind} header ({type(exc).__name__}: {exc})") from None


class _BytesReader:
    """The minimal file object nibabel's ``Header.from_fileobj`` reads from."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else len(self._data) + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos


#: the most a deflate stream can expand (zlib's limit is about 1032:1): a .nii.gz whose header declares
#: more voxel bytes than this times its size cannot hold them
_MAX_DEFLATE_RATIO = 1100


def _check_nifti_header(path: Path, header: Any, gzipped: bool = False) -> None:
    dim = np.asarray(header["dim"], dtype=np.int64)
    ndim = int(dim[0])
    if ndim < 3 or ndim > 4:
        if ndim == 5 and int(dim[4]) == 1:
            raise UnsupportedFormatError(
                path, "5-D NIfTI (x, y, z, 1, vector) images are not supported", "store channels in dim 4"
            )
        raise UnsupportedFormatError(
            path,
            f"a {ndim}-D NIfTI image (dim {dim[1 : ndim + 1].tolist()}); volumes are 3-D, or 4-D with "
            "channels last",
        )
    if (dim[1 : ndim + 1] < 1).any():
        raise CorruptFileError(path, f"the header declares an empty image (dim {dim[1 : ndim + 1].tolist()})")
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)[1:4]
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        raise InvalidVolumeError(
            path,
            f"voxel size (pixdim[1:4]) is {pixdim.tolist()} mm: every size must be a finite number > 0",
            "fix the header (nibabel: img.header.set_zooms(...)) or re-export the file",
        )
    try:
        dtype = header.get_data_dtype()
    except (KeyError, TypeError, ValueError):
        raise CorruptFileError(
            path, f"the header's datatype code {int(header['datatype'])} is not a NIfTI data type"
        ) from None
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating) or dtype.kind not in "iufb":
        raise UnsupportedFormatError(path, f"voxel type {dtype} is not a real number type (RGB or complex)")
    _check_nifti_size(path, header, dim[1 : ndim + 1], dtype, gzipped)
    # NIfTI: a zero or non-finite scl_slope means "no scaling" (nibabel ignores it); a valid slope with a
    # non-finite intercept would make every voxel NaN.
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and np.isfinite(slope) and not np.isfinite(inter):
        raise InvalidVolumeError(
            path,
            f"intensity scaling scl_slope {slope:g} with scl_inter {inter} would make every voxel non-finite",
            "set scl_inter to 0 (or the intended offset), or re-export the file",
        )
    try:
        affine = header.get_best_affine()
    except Exception as exc:  # nibabel's HeaderDataError (a qfac that is not +-1, ...) and friends
        raise InvalidVolumeError(
            path, f"the voxel-to-world geometry (sform/qform) is unusable ({type(exc).__name__}: {exc})"
        ) from None
    _check_affine(path, affine, "NIfTI sform/qform")


def _check_nifti_size(path: Path, header: Any, shape: np.ndarray, dtype: np.dtype, gzipped: bool) -> None:
    """Check the voxel bytes the header declares against the file's size before anything is allocated
    (a corrupted ``dim`` can ask for terabytes)."""
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or offset < 0:
        raise CorruptFileError(path, f"the header's vox_offset {offset} is not a byte position")
    voxel_bytes = int(np.prod([int(n) for n in shape], dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    sides = "x".join(str(int(n)) for n in shape)
    if gzipped and voxel_bytes + int(offset) > size * _MAX_DEFLATE_RATIO:
        raise CorruptFileError(
            path,
            f"the header declares {sides} voxels of {dtype} ({voxel_bytes} bytes), more than a {size}-byte "
            "gzip file can hold: a corrupted header",
            "copy the file again from its source",
        )
    if not gzipped and voxel_bytes + int(offset) > size:
        raise CorruptFileError(
            path,
            f"the voxel data is shorter than the header declares (Expected {voxel_bytes} bytes, got "
            f"{max(size - int(offset), 0)}): {sides} voxels of {dtype} from byte {int(offset)}; the file is "
            "truncated or its header is corrupted",
            "copy the file again from its source",
        )


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array in the file's order, spatial axes first and channels last; RAS affine)."""
    from monai.data import NibabelReader

    gzipped = _check_compression(path)
    header = _raw_nifti_header(path, gzipped)
    _check_nifti_header(path, header, gzipped)
    reader = NibabelReader()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = reader.read(str(path))
            data, meta = reader.get_data(image)
    except (EOFError, zlib.error) as exc:
        raise CorruptFileError(
            path,
            f"truncated: the compressed data ends before the image does ({exc})",
            "copy the file again from its source",
        ) from None
    except (OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            path,
            f"the voxel data cannot be read: {message}",
            "the file is truncated or damaged; copy it again from its source",
        ) from None
    except Exception as exc:  # nibabel raises ImageFileError and friends for garbled files
        raise CorruptFileError(path, f"unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    return np.asarray(data), np.asarray(meta["affine"], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# NRRD
# --------------------------------------------------------------------------------------------------

_NRRD_SPACES = {
    "left-posterior-superior": "LPS",
    "LPS": "LPS",
    "right-anterior-superior": "RAS",
    "RAS": "RAS",
}


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array channels-first for 4-D files, else spatial; RAS affine)."""
    import nrrd

    gzipped = _check_compression(path)
    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, IndexError, ... for a garbled header
        with path.open("rb") as handle:
            head = handle.read(540)
        if not head.startswith(b"NRRD"):
            raise UnsupportedFormatError(
                path, f"not an NRRD file: it starts like {_describe_bytes(head)}"
            ) from None
        raise CorruptFileError(path, f"unreadable NRRD header ({type(exc).__name__}: {exc})") from None
    try:
        return _read_nrrd_checked(path, header, gzipped)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # header values of the wrong shape or type that the checks below did not foresee
        raise CorruptFileError(path, f"inconsistent NRRD header ({type(exc).__name__}: {exc})") from None


def _read_nrrd_checked(path: Path, header: dict[str, Any], gzipped: bool) -> tuple[np.ndarray, np.ndarray]:
    from monai.data import NrrdReader

    ndim = int(header.get("dimension", 0))
    if ndim not in (3, 4):
        raise UnsupportedFormatError(
            path,
            f"an NRRD image with {ndim} axes; volumes have 3 spatial axes (and optionally one channel axis)",
        )
    kinds = [str(k) for k in header.get("kinds", ["domain"] * ndim)]
    sizes = [int(n) for n in header.get("sizes", [])]
    if len(kinds) != ndim or len(sizes) != ndim:
        raise CorruptFileError(
            path, f"the NRRD header declares {ndim} axes but {len(sizes)} sizes and {len(kinds)} kinds"
        )
    # At least one byte per voxel must be there (or fit in the compressed data) before anything is read.
    voxels = int(np.prod(sizes, dtype=object)) if sizes else 0
    compressed = gzipped or str(header.get("encoding", "raw")).lower() in ("gzip", "gz", "bzip2", "bz2")
    available = path.stat().st_size * (_MAX_DEFLATE_RATIO if compressed else 1)
    if min(sizes, default=0) < 1 or voxels > available:
        raise CorruptFileError(
            path,
            f"the NRRD header declares sizes {sizes} ({voxels} voxels) but the file holds "
            f"{path.stat().st_size} bytes: a corrupted header or a truncated file",
            "copy the file again from its source",
        )
    spatial = [i for i, k in enumerate(kinds) if k in ("domain", "space")]
    if len(spatial) != 3 or ndim not in (3, 4) or (ndim == 4 and spatial != [1, 2, 3]):
        raise UnsupportedFormatError(
            path,
            f"an NRRD image with {ndim} axes of kinds {kinds}; volumes have 3 spatial axes "
            "(and optionally one leading channel axis)",
        )
    space = str(header.get("space", "left-posterior-superior"))
    if space not in _NRRD_SPACES:
        raise UnsupportedFormatError(
            path,
            f"NRRD space {space!r} is not a patient space "
            "(left-posterior-superior or right-anterior-superior)",
            "resave it in LPS (3D Slicer and ITK do by default)",
        )
    directions = header.get("space directions")
    if directions is None or "space origin" not in header:
        raise InvalidVolumeError(
            path,
            "the NRRD header has no 'space directions'/'space origin': voxel size and position are unknown",
            "resave it with its geometry (e.g. from 3D Slicer)",
        )
    directions = np.asarray(directions, dtype=np.float64)
    rows = directions[spatial] if directions.ndim == 2 and directions.shape[0] == ndim else directions
    if rows.shape != (3, 3) or not np.isfinite(rows).all():
        raise InvalidVolumeError(
            path, f"NRRD 'space directions' {directions.tolist()} are not three finite vectors"
        )
    spacing = np.sqrt((rows**2).sum(axis=1))
    if (spacing <= 0).any():
        raise InvalidVolumeError(
            path,
            f"NRRD voxel size (norms of 'space directions') is {spacing.tolist()} mm: every size must be > 0",
            "fix the header's space directions",
        )
    reader = NrrdReader(channel_dim=0 if ndim == 4 else None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = reader.read(str(path))
            data, meta = reader.get_data(image)
    except (EOFError, zlib.error) as exc:
        raise CorruptFileError(path, f"truncated: the compressed data ends early ({exc})") from None
    except Exception as exc:  # pynrrd raises NRRDError/ValueError for short or garbled data
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            path, f"the voxel data cannot be read ({type(exc).__name__}: {message})", "copy it again"
        ) from None
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if affine.shape != (4, 4):
        raise UnsupportedFormatError(path, f"NRRD geometry of shape {affine.shape} is not 3-D")
    return np.asarray(data), affine


# --------------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------------


def _dicom_headers(folder: Path) -> list[tuple[Path, Any]]:
    """(file, header) of every DICOM image file in ``folder`` (not recursive; DICOMDIR and non-DICOM files
    such as notes are left out)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: list[tuple[Path, Any]] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        # A file that says it is DICOM (the "DICM" preamble, or the .dcm suffix) and fails to parse is a
        # damaged slice, not a stray file: skipping it would silently drop a slice from the volume.
        claims_dicom = file.suffix.lower() == ".dcm" or _looks_like_dicom(file)
        try:
            # Reads are capped at the file's end (a corrupted element length cannot make pydicom allocate
            # gigabytes) and large values (the pixel data) are skipped, not read.
            with _BoundedFile(file) as handle:
                ds = pydicom.dcmread(handle, defer_size=_DICOM_DEFER_BYTES)
                _decode_elements(ds)
        except (InvalidDicomError, EOFError) as exc:
            if not claims_dicom:
                continue  # not DICOM (a readme, a thumbnail): MONAI's reader skips these too
            raise CorruptFileError(
                file,
                f"damaged DICOM file: its header cannot be parsed ({type(exc).__name__}: {exc})",
                "copy the slice again, or remove it from the series folder",
            ) from None
        except Exception as exc:  # a DICOM file whose header is damaged
            raise CorruptFileError(file, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None
        if "Rows" not in ds:
            if _is_image_storage(ds) or (claims_dicom and not _is_known_non_image(ds)):
                raise CorruptFileError(
                    file,
                    "damaged DICOM image: the header ends before its image size (Rows) is read",
                    "copy the slice again, or remove it from the series folder",
                )
            continue  # DICOMDIR, structured reports, ...: no image
        _check_value_lengths(file, ds)
        found.append((file, ds))
    return found


#: DICOM values longer than this are not read while the headers are checked (pixel data, overlays)
_DICOM_DEFER_BYTES = 4096
_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


class _BoundedFile(io.FileIO):
    """A file whose ``read(n)`` never asks for more than what is left of it (pydicom reads a value with
    ``read(length)``; a corrupted length would otherwise allocate up to 4 GiB)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


def _decode_elements(ds: Any) -> None:
    """Decode every element read so far (pydicom decodes lazily, on first access), so that a garbled
    value (an unknown VR, a number that is not one) fails here, inside the header check, rather than
    wherever it is first used. Deferred values (the pixel data) stay unread."""
    for dataset in (getattr(ds, "file_meta", None), ds):
        if dataset is None:
            continue
        for tag in list(dataset.keys()):
            if getattr(dataset.get_item(tag, keep_deferred=True), "value", b"") is not None:
                _ = dataset[tag]  # the access decodes the element


def _check_value_lengths(file: Path, ds: Any) -> None:
    """Every value left unread (the pixel data, long private values; pydicom defers them) must end within
    the file: a corrupted length would make the pixel reader allocate up to 4 GiB."""
    size = file.stat().st_size
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset itself would read the deferred values
        element = ds.get_item(tag, keep_deferred=True)
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if getattr(element, "value", b"") is not None or length is None or start is None:
            continue  # read already (small), or not a raw element
        if length != _UNDEFINED_LENGTH and start + length > size:
            what = "the pixel data of a slice" if int(tag) == _PIXEL_DATA_TAG else f"DICOM element {tag}"
            raise CorruptFileError(
                file,
                f"{what} is declared as {length} bytes from byte {start}, but the file ends at byte {size}: "
                "the slice is truncated or its header is damaged",
                "copy the slice again from its source",
            )


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "") or getattr(ds, "SOPClassUID", "") or "")


def _sop_class_name(ds: Any) -> str | None:
    """The registered name of the file's SOP class (``"CT Image Storage"``), None when missing or unknown."""
    from pydicom.uid import UID

    uid = _sop_class(ds)
    if uid == _DICOMDIR_SOP_CLASS:
        return "Media Storage Directory Storage"
    try:
        name = str(UID(uid).name) if uid else ""
    except Exception:  # a garbled UID
        return None
    return name if name and name != uid else None


def _is_image_storage(ds: Any) -> bool:
    """True when the file's SOP class is one of DICOM's image storage classes (CT, MR, ... Image Storage)."""
    return "Image Storage" in (_sop_class_name(ds) or "")


def _is_known_non_image(ds: Any) -> bool:
    """True when the file's SOP class is a registered class that holds no image (DICOMDIR, SR, ...)."""
    name = _sop_class_name(ds)
    return name is not None and "Image Storage" not in name


def _floats(ds: Any, keyword: str, n: int, file: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None:
        raise InvalidVolumeError(file, f"DICOM slice has no {keyword}: its position in the volume is unknown")
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidVolumeError(file, f"DICOM {keyword} {value!r} is not numeric") from None
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InvalidVolumeError(file, f"DICOM {keyword} {list(value)} is not {n} finite numbers")
    return out


def _integer(ds: Any, keyword: str, file: Path) -> int:
    """An integer data element (``Rows``, ``InstanceNumber``, ...) of one DICOM file."""
    value = getattr(ds, keyword, None)
    if value is None:
        raise InvalidVolumeError(file, f"DICOM slice has no {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidVolumeError(file, f"DICOM {keyword} {value!r} is not a whole number") from None


def _check_dicom_series(folder: Path, slices: list[tuple[Path, Any]]) -> str | None:
    """Check that ``slices`` form one evenly spaced volume, in the order MONAI stacks them (by
    InstanceNumber). Returns the series' Modality."""
    if not slices:
        raise UnsupportedFormatError(folder, "no DICOM image files in this folder")
    series = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices})
    if len(series) > 1:
        raise UnsupportedFormatError(
            folder,
            f"the folder holds {len(series)} DICOM series (UIDs ending "
            f"{', '.join(s[-12:] for s in series[:_MAX_REPORTED])}"
            f"{', ...' if len(series) > _MAX_REPORTED else ''}); a volume is one series",
            "put each series (SeriesInstanceUID) in its own folder",
        )
    if len(slices) < 2:
        raise InvalidVolumeError(folder, "the series has a single slice: not a volume")
    missing = [f.name for f, ds in slices if getattr(ds, "InstanceNumber", None) is None]
    if missing:
        raise InvalidVolumeError(
            folder,
            f"slice(s) {', '.join(missing[:_MAX_REPORTED])} have no InstanceNumber: the slice order is "
            "unknown",
        )
    numbers = {file: _integer(ds, "InstanceNumber", file) for file, ds in slices}
    ordered = sorted(slices, key=lambda s: numbers[s[0]])
    first_file, first = ordered[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, first_file)
    pixel_spacing = _floats(first, "PixelSpacing", 2, first_file)
    if (pixel_spacing <= 0).any():
        raise InvalidVolumeError(
            first_file, f"PixelSpacing {pixel_spacing.tolist()} mm: voxel sizes must be > 0", "fix the header"
        )
    size = (_integer(first, "Rows", first_file), _integer(first, "Columns", first_file))
    if min(size) < 1:
        raise InvalidVolumeError(first_file, f"the slice is {size[0]}x{size[1]} pixels: an empty image")
    positions = []
    for file, ds in ordered:
        shape = (_integer(ds, "Rows", file), _integer(ds, "Columns", file))
        if shape != size:
            raise InvalidVolumeError(
                file,
                f"slice is {shape[0]}x{shape[1]} pixels, the series' first slice {size[0]}x{size[1]}",
            )
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, file), orientation, atol=1e-4):
            raise InvalidVolumeError(
                folder,
                f"slices have different orientations (ImageOrientationPatient of {file.name} differs from "
                f"{first_file.name}): a localizer or radial series, not one volume",
                "keep only the slices of one parallel stack in the folder",
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, file), pixel_spacing, rtol=1e-4):
            raise InvalidVolumeError(file, "PixelSpacing differs from the series' first slice")
        positions.append(_floats(ds, "ImagePositionPatient", 3, file))
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise InvalidVolumeError(
            first_file, f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    along = np.asarray(positions) @ normal
    gaps = np.diff(along)
    names = [f.name for f, _ in ordered]
    if (np.abs(gaps) < 1e-4).any():
        k = int(np.argmin(np.abs(gaps)))
        raise InvalidVolumeError(
            folder,
            f"slices {names[k]} and {names[k + 1]} lie at the same position: duplicated slices or two series",
            "keep one copy of each slice",
        )
    if not ((gaps > 0).all() or (gaps < 0).all()):
        raise InvalidVolumeError(
            folder,
            "InstanceNumber order does not follow the slice positions (ImagePositionPatient); MONAI stacks "
            "slices by InstanceNumber, so the volume would be scrambled",
            "renumber the slices in position order",
        )
    median = float(np.median(np.abs(gaps)))
    if np.abs(np.abs(gaps) - median).max() > 0.01 * median + 1e-3:
        raise InvalidVolumeError(
            folder,
            f"uneven slice spacing (gaps from {np.abs(gaps).min():.4g} to {np.abs(gaps).max():.4g} mm): a "
            "slice is missing or the folder mixes stacks",
            "complete the series, or resample it to even spacing first",
        )
    modality = getattr(first, "Modality", None)
    return str(modality) if modality else None


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    from monai.data import PydicomReader

    slices = _dicom_headers(folder)
    modality = _check_dicom_series(folder, slices)
    # Read exactly the checked files (not notes or DICOMDIR lying next to them).
    pattern = "^(?:" + "|".join(re.escape(str(folder / f.name)) for f, _ in slices) + ")$"
    reader = PydicomReader(fname_regex=pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = reader.read(str(folder))
            data, meta = reader.get_data(image)
    except Exception as exc:  # pydicom raises many types for truncated or undecodable pixel data
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            _unreadable_slice([f for f, _ in slices]) or folder,
            f"the pixel data of a slice of the series in {folder.name}/ cannot be read "
            f"({type(exc).__name__}: {message})",
            "the slice is truncated or uses a compression without a decoder installed",
        ) from None
    return np.asarray(data), np.asarray(meta["affine"], dtype=np.float64), modality


def _unreadable_slice(files: list[Path]) -> Path | None:
    """The first slice whose pixel data cannot be decoded (only looked for after a failed read)."""
    import pydicom

    for file in files:
        try:
            pydicom.dcmread(file).pixel_array  # noqa: B018 - decoding is the check
        except Exception:
            return file
    return None


# --------------------------------------------------------------------------------------------------
# public readers
# --------------------------------------------------------------------------------------------------


def read_volume(path: str | Path) -> Volume:
    """Read and check one image: a ``.nii``/``.nii.gz``/``.nrrd`` file or a DICOM series folder.

    Returns:
        a :class:`Volume` with ``array`` float32 ``(C, H, W, D)`` in the file's voxel order (DICOM: columns,
        rows, slices — MONAI's convention) and the RAS affine. DICOM values are rescaled
        (``RescaleSlope``/``RescaleIntercept``, so CT is in HU); NIfTI values are scaled by
        ``scl_slope``/``scl_inter``.

    Raises:
        DataError (and subclasses, see the module docstring): the file cannot be used.
    """
    path = Path(path)
    kind = volume_format(path)
    modality = None
    if kind == "nifti":
        data, affine = _read_nifti(path)
        channels_last = data.ndim == 4
    elif kind == "nrrd":
        data, affine = _read_nrrd(path)
        channels_last = False
    else:
        data, affine, modality = _read_dicom_series(path)
        channels_last = data.ndim == 4
    _check_affine(path, affine, f"{kind} geometry")
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4 and channels_last:
        data = np.moveaxis(data, -1, 0)
    elif data.ndim != 4:
        raise UnsupportedFormatError(
            path, f"the image has {data.ndim} axes; volumes have 3 (or 4 with channels)"
        )
    volume = Volume(np.ascontiguousarray(data, dtype=np.float32), affine, str(path), kind, modality)
    _check_extent(volume)
    _check_finite(volume)
    return volume


def check_same_grid(image: Volume, mask: Volume, atol: float = GRID_ATOL) -> None:
    """Raise :class:`~medcl.errors.InvalidVolumeError` (naming the mask, both grids and the fix) unless the
    mask has the image's spatial shape and affine (entries within ``atol`` mm)."""
    same_shape = image.shape == mask.shape
    difference = float(np.abs(np.asarray(image.affine) - np.asarray(mask.affine)).max())
    if same_shape and difference <= atol:
        return
    what = "shape" if not same_shape else f"geometry (affines differ by up to {difference:.3g} mm)"
    raise InvalidVolumeError(
        mask.path,
        f"the mask's {what} does not match its image {image.path}: image "
        f"{describe_grid(image.shape, image.affine)}; mask {describe_grid(mask.shape, mask.affine)}",
        "check that the mask belongs to this image; if it does, resample it onto the image grid with "
        "nearest-neighbour interpolation (e.g. MONAI ResampleToMatchd(keys='mask', key_dst='image', "
        f"mode='nearest')), or raise grid_atol (now {atol:g} mm) if the difference is rounding",
    )


def read_mask(path: str | Path, image: Volume | None = None, atol: float = GRID_ATOL) -> Volume:
    """Read and check a label mask: one channel of whole, non-negative label values.

    Args:
        path: the mask file (any format :func:`read_volume` reads).
        image: its image; when given, the mask must lie on the image's grid (:func:`check_same_grid`).
        atol: tolerance of the affine comparison in mm.

    Returns:
        a :class:`Volume` whose ``array`` is int64 ``(1, H, W, D)``.

    Raises:
        DataError: as :func:`read_volume`; :class:`~medcl.errors.InvalidVolumeError` for several channels,
            non-integer or negative values, or a grid mismatch.
    """
    volume = read_volume(path)
    if volume.channels != 1:
        raise InvalidVolumeError(
            volume.path,
            f"a mask must have one channel, this one has {volume.channels}",
            "store one label map",
        )
    values = volume.array
    fractional = values != np.round(values)
    if fractional.any():
        examples = np.unique(values[fractional])[:_MAX_REPORTED]
        raise InvalidVolumeError(
            volume.path,
            f"a mask must hold whole label numbers, but {int(fractional.sum())} voxels are fractional "
            f"(e.g. {', '.join(f'{v:.4g}' for v in examples)})",
            "was it resampled with linear interpolation? resample masks with nearest-neighbour, or threshold "
            "probability maps into labels",
        )
    if (values < 0).any():
        raise InvalidVolumeError(
            volume.path,
            f"a mask must hold labels >= 0, found {float(values.min()):g}",
            "use 0 for background and 1, 2, ... for the structures",
        )
    if values.size and float(values.max()) > _MAX_LABEL:
        raise InvalidVolumeError(
            volume.path,
            f"a mask must hold label numbers, found {float(values.max()):g} (above {_MAX_LABEL}, where "
            "float32 voxels no longer hold every whole number)",
            "is it an image rather than a mask, or is its intensity scaling (scl_slope) wrong?",
        )
    mask = Volume(values.astype(np.int64), volume.affine, volume.path, volume.format, volume.modality)
    if image is not None:
        check_same_grid(image, mask, atol)
    return mask
