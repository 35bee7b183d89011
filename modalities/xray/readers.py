"""Read radiographs (PNG, JPEG, DICOM) into one grey image in [0, 1], bright = dense.

:func:`read_xray` returns an :class:`XrayImage`: ``pixels`` float32 ``(H, W)`` in ``[0, 1]`` in the
MONOCHROME2 convention (0 black = air, 1 white = bone/metal; rows run head→feet, columns the patient's
right→left as radiographs are displayed), with what the file says about itself (bit depth, photometric
interpretation, view position, pixel spacing). The format is found from the file's first bytes, not its
name. Torch-free (numpy, Pillow, pydicom): the ONNX predictor uses the same reader.

How the pixel values become ``[0, 1]``:

===========  ========================================================================================
format       rule
===========  ========================================================================================
PNG          8-bit: ``v / 255``; 16-bit: ``v / (2**b − 1)`` with ``b`` the significant bits of the
             ``sBIT`` chunk when present, else 16 (values above are clipped); 1-bit: ``v``. Colour
             (RGB, RGBA, palette, grey+alpha) becomes luminance ``0.299 R + 0.587 G + 0.114 B``
             (ITU-R BT.601, as Pillow's ``convert("L")``, but in float); alpha is ignored.
JPEG         as PNG (8-bit grey or colour → luminance). 12-bit JPEGs are not read by Pillow.
DICOM        1. stored values (pydicom applies ``BitsStored``, ``PixelRepresentation``);
             2. modality LUT or ``RescaleSlope``/``RescaleIntercept`` (``pydicom.pixels.apply_modality_lut``);
             3. VOI: the ``VOILUTSequence`` when present (preferred, as the standard says), else
                ``WindowCenter``/``WindowWidth`` (``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID), both
                by ``pydicom.pixels.apply_voi_lut``; the output is scaled to ``[0, 1]`` by the VOI output
                range (windowing: the range pydicom maps to; LUT: ``0 … 2**n − 1``, ``n`` the bits its
                largest entry needs, at most the descriptor's); without either (or with
                ``voi="minmax"``): min-max over the image's own values;
             4. ``MONOCHROME1`` (bright = low values) is inverted: ``1 − x``.
===========  ========================================================================================

Refused, each with a :class:`~medcl.errors.DataError` naming the file, the problem and what to do:

==========================================================  ===============================================
problem                                                     error
==========================================================  ===============================================
no such file                                                :class:`~medcl.errors.DataError`
empty, truncated (PNG without ``IEND`` or a cut chunk, a    :class:`~medcl.errors.CorruptFileError`
bad chunk CRC; JPEG without its end marker after the last
scan; DICOM pixel data shorter than its header declares),
undecodable
not PNG/JPEG/DICOM; DICOM without pixel data, with several  :class:`~medcl.errors.UnsupportedFormatError`
frames, real colour (RGB/YBR whose channels differ, palette
colour), a compression no installed decoder reads
a constant image (every pixel equal after the steps above)  :class:`~medcl.errors.InvalidVolumeError`
==========================================================  ===============================================

A DICOM stored in colour whose three channels are equal (a grey radiograph saved as RGB) is read as grey.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ConfigError, CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError

__all__ = [
    "LUMA_WEIGHTS",
    "XRAY_SUFFIXES",
    "XrayImage",
    "read_xray",
    "sniff_format",
]

XRAY_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File suffixes manifests look for (the reader itself goes by content)."""

LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B (what Pillow's ``convert("L")`` uses)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_MIN_SIDE = 2
# Grey stored as colour: channels equal within this many levels (JPEG-compressed colour DICOMs drift by 1-2).
_GREY_TOLERANCE_LEVELS = 2


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A radiograph as read from disk.

    Attributes:
        pixels: float32 ``(H, W)`` in ``[0, 1]``, MONOCHROME2 convention (bright = dense).
        path: the file.
        source_format: ``"png"``, ``"jpeg"`` or ``"dicom"``.
        bits_stored: significant bits of a stored sample (8 for 8-bit PNG/JPEG, 16 or the ``sBIT`` value
            for 16-bit PNG, DICOM ``BitsStored``).
        photometric: DICOM ``PhotometricInterpretation`` (``"MONOCHROME1"``, ``"MONOCHROME2"``, ...), or for
            PNG/JPEG ``"MONOCHROME2"`` (grey), ``"RGB"``, ``"RGBA"``, ``"PALETTE COLOR"``: what the file held
            before the conversion to grey.
        view: DICOM ``ViewPosition`` as written (``"PA"``, ``"AP"``, ``"LL"``, ...), None when the file does
            not say (always for PNG/JPEG).
        pixel_spacing: ``(row, column)`` spacing in mm (DICOM ``PixelSpacing``, else
            ``ImagerPixelSpacing``), None when unknown.
        extra: other facts: ``"voi"`` (``"voi_lut"``, ``"window"``, ``"minmax"`` or ``"full_range"``), the
            window used, ``"modality"`` (DICOM), ``"mode"`` (Pillow), ``"exif_orientation"`` (JPEG, not
            applied), ``"inverted"`` (MONOCHROME1), ...
    """

    pixels: np.ndarray
    path: str
    source_format: str
    bits_stored: int
    photometric: str
    view: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``: rows, columns."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


# --------------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------------


def _head(path: Path, n: int = 132) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(n)
    except OSError as exc:
        raise CorruptFileError(path, f"cannot be opened ({exc.strerror or exc})") from None


def sniff_format(path: str | Path) -> str:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's first bytes (``DICM`` at byte 128; a DICOM
    file without the 128-byte preamble is recognised only when named ``.dcm``/``.dicom``).

    Raises:
        DataError: nothing at ``path`` (or a folder).
        CorruptFileError: the file is empty or unreadable.
        UnsupportedFormatError: anything else.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file", "give the radiograph's file")
    head = _head(path)
    if not head:
        raise CorruptFileError(path, "the file is empty (0 bytes)", "copy it again from its source")
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom"  # no preamble (old ACR-NEMA style); pydicom decides
    raise UnsupportedFormatError(
        path,
        f"not a PNG, JPEG or DICOM file: it starts with {_describe(head)}",
        "radiographs are read from PNG, JPEG or DICOM files",
    )


def _describe(head: bytes) -> str:
    sample = head[:48]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return f"text ({sample[:40].decode('ascii', 'replace')!r})"
    if head[:2] == b"\x1f\x8b":
        return "gzip data"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF data (not supported)"
    return f"the bytes {head[:8].hex(' ')}"


# --------------------------------------------------------------------------------------------------
# PNG and JPEG
# --------------------------------------------------------------------------------------------------


def _png_chunks(path: Path, data: bytes) -> dict[str, Any]:
    """Walk the PNG chunks: check lengths, CRCs and the final ``IEND``; return IHDR facts and sBIT.

    Raises:
        CorruptFileError: a cut chunk, a CRC mismatch, no IHDR first or no IEND.
    """
    pos = len(_PNG_SIGNATURE)
    info: dict[str, Any] = {}
    first = True
    while True:
        if pos + 8 > len(data):
            raise CorruptFileError(
                path,
                f"truncated PNG: the file ends after {len(data)} bytes without the IEND chunk",
                "copy the file again from its source",
            )
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        name = kind.decode("latin-1")
        if end > len(data):
            raise CorruptFileError(
                path,
                f"truncated PNG: chunk {name} declares {length} bytes but the file ends after "
                f"{len(data) - pos - 8}",
                "copy the file again from its source",
            )
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CorruptFileError(
                path, f"damaged PNG: the CRC of chunk {name} at byte {pos} does not match its data"
            )
        if first and name != "IHDR":
            raise CorruptFileError(path, f"damaged PNG: the first chunk is {name}, not IHDR")
        first = False
        if name == "IHDR" and length >= 10:
            info["bit_depth"] = body[8]
            info["color_type"] = body[9]
        elif name == "sBIT" and length >= 1:
            info["sbit"] = max(body)
        elif name == "IEND":
            return info
        pos = end


def _check_jpeg_end(path: Path, data: bytes) -> None:
    """The end-of-image marker must follow the last start-of-scan (markers cannot occur inside
    entropy-coded data, where 0xFF is stuffed as 0xFF00)."""
    last_scan = data.rfind(b"\xff\xda")
    if last_scan < 0:
        raise CorruptFileError(path, "damaged JPEG: no start-of-scan marker (no image data)")
    if data.find(b"\xff\xd9", last_scan + 2) < 0:
        raise CorruptFileError(
            path,
            f"truncated JPEG: no end-of-image marker after the last scan ({len(data)} bytes)",
            "copy the file again from its source",
        )


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` → ``(H, W)`` float64 with :data:`LUMA_WEIGHTS`."""
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float64)
    return rgb[..., :3].astype(np.float64) @ weights


def _read_pillow(path: Path, kind: str) -> XrayImage:
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    png = _png_chunks(path, data) if kind == "png" else {}
    if kind == "jpeg":
        _check_jpeg_end(path, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnsupportedFormatError(
            path, f"the image is too large to read safely ({exc})", "downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise CorruptFileError(
            path,
            f"the {kind.upper()} data cannot be decoded ({exc})",
            "the file is damaged or truncated; copy it again from its source",
        ) from None
    mode = image.mode
    extra: dict[str, Any] = {"mode": mode, "voi": "full_range"}
    if kind == "jpeg":
        orientation = image.getexif().get(0x0112)
        if orientation not in (None, 1):
            extra["exif_orientation"] = int(orientation)
    bits = 8
    photometric = "MONOCHROME2"
    if mode in ("L", "LA"):
        values = np.asarray(image.getchannel(0), dtype=np.float64) / 255.0
    elif mode == "1":
        values = np.asarray(image, dtype=np.float64)
        bits = 1
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        raw = np.asarray(image).astype(np.float64)
        bits = int(png.get("sbit", png.get("bit_depth", 16)))
        top = float(2**bits - 1)
        if raw.max(initial=0) > top:
            extra["clipped_above_sbit"] = int((raw > top).sum())
        values = np.clip(raw, 0.0, top) / top
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        photometric = {"P": "PALETTE COLOR", "PA": "PALETTE COLOR", "RGBA": "RGBA"}.get(mode, "RGB")
        rgb = image.convert("RGB")
        values = _luminance(np.asarray(rgb)) / 255.0
    elif mode == "F":
        raise UnsupportedFormatError(
            path, "a floating-point image (Pillow mode F)", "save it as an 8- or 16-bit PNG"
        )
    else:
        raise UnsupportedFormatError(path, f"unsupported {kind.upper()} pixel mode {mode!r}")
    pixels = values.astype(np.float32)
    _check_usable(path, pixels)
    return XrayImage(pixels, str(path), kind, bits, photometric, None, None, extra)


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


def _dicom_float(ds: Any, keyword: str) -> float | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1:
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword, None)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0:
                return (row, col)
    return None


def _voi_output_range(ds: Any, values: np.ndarray) -> tuple[float, float, str, dict[str, Any]]:
    """Apply the file's VOI (LUT or window) to ``values``; return (lower, upper) of its output range,
    the kind, and the settings used; the transformed values are stored under ``"out"``."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    sequence = ds.get("VOILUTSequence", None)
    if sequence:
        item = sequence[0]
        descriptor = item.get("LUTDescriptor", None)
        if descriptor is not None and item.get("LUTData", None) is not None:
            indices = np.rint(values).astype(np.int64)
            out = np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True), dtype=np.float64)
            # Every entry of the LUT (whatever its VR): the LUT applied to each input it maps.
            n_entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
            entries = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds, index=0)
            largest = int(np.asarray(entries).max())
            bits = min(int(descriptor[2]), max(largest.bit_length(), 1))
            return 0.0, float(2**bits - 1), "voi_lut", {"out": out, "lut_bits": bits}
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        center = _dicom_float(ds, "WindowCenter")
        width = _dicom_float(ds, "WindowWidth")
        out = np.asarray(apply_windowing(values.astype(np.float64), ds, index=0), dtype=np.float64)
        with np.errstate(over="ignore"):
            ends = np.asarray(
                apply_windowing(np.array([-1e300, 1e300], dtype=np.float64), ds, index=0), dtype=np.float64
            )
        settings = {
            "out": out,
            "window_center": center,
            "window_width": width,
            "voi_function": str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper(),
        }
        return float(ends[0]), float(ends[1]), "window", settings
    return 0.0, 0.0, "none", {}


def _read_dicom(path: Path, voi: str) -> XrayImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=path.suffix.lower() in (".dcm", ".dicom"))
    except InvalidDicomError as exc:
        raise UnsupportedFormatError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types for cut or garbled headers
        raise CorruptFileError(
            path,
            f"the DICOM header cannot be read ({type(exc).__name__}: {exc})",
            "the file is truncated or damaged; copy it again from its source",
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _dicom_image(path, ds, voi)
    except DataError:
        raise
    except Exception as exc:  # an invalid header value (e.g. NumberOfFrames "1A") surfaces late
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            path,
            f"an unusable DICOM header or image ({type(exc).__name__}: {first})",
            "the file is damaged or does not follow the standard; re-export it",
        ) from None


def _dicom_image(path: Path, ds: Any, voi: str) -> XrayImage:
    """The checks and pixel conversions of :func:`read_xray` for a parsed DICOM dataset."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = str(ds.get("Modality", "") or ds.get("SOPClassUID", "") or "unknown")
        raise UnsupportedFormatError(
            path, f"the DICOM file holds no image (no pixel data; modality/class {kind})"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedFormatError(
            path,
            f"a multi-frame DICOM ({frames} frames); a radiograph is one frame",
            "save the frame you want as its own file (e.g. pydicom: ds.pixel_array[k])",
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        raise UnsupportedFormatError(
            path, "a palette-colour DICOM (PhotometricInterpretation PALETTE COLOR), not a grey radiograph"
        )
    try:
        stored = np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "missing dependencies" in str(exc) or "does not support" in str(exc) or "plugins" in str(exc):
            raise UnsupportedFormatError(
                path,
                f"the pixel data is compressed as {name}, which no installed decoder reads ({first})",
                "decompress it (e.g. dcmdjpeg, gdcmconv --raw) or install a pydicom decoder plugin",
            ) from None
        raise CorruptFileError(path, f"the pixel data cannot be decoded ({first})") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            path,
            f"the pixel data cannot be read ({first})",
            "the file is truncated or damaged, or its image header (group 0028) is wrong",
        ) from None
    extra: dict[str, Any] = {"modality": str(ds.get("Modality", "") or "")}
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        spread = int(np.ptp(stored[..., :3].astype(np.int64), axis=-1).max(initial=0))
        if spread > _GREY_TOLERANCE_LEVELS:
            raise UnsupportedFormatError(
                path,
                f"a colour DICOM ({photometric}; channels differ by up to {spread} levels), not a grey "
                "radiograph",
                "convert it to grey first if it really is a radiograph",
            )
        stored = np.rint(stored[..., :3].astype(np.float64).mean(axis=-1)).astype(np.int64)
        extra["grey_from_colour"] = True
        photometric = "MONOCHROME2"
    elif stored.ndim != 2:
        raise UnsupportedFormatError(path, f"pixel array of shape {stored.shape} is not one 2-D image")
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedFormatError(
            path, f"PhotometricInterpretation {photometric or '(missing)'} is not a grey radiograph"
        )
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidVolumeError(path, "the pixel values contain NaN or infinity after the modality LUT")
    kind = "none"
    if voi == "auto" and "grey_from_colour" not in extra:
        lower, upper, kind, settings = _voi_output_range(ds, values)
        if kind != "none":
            out = settings.pop("out")
            extra.update(settings)
            if not upper > lower:
                raise InvalidVolumeError(path, f"the VOI output range [{lower}, {upper}] is empty")
            values = (np.clip(out, lower, upper) - lower) / (upper - lower)
    if kind == "none":
        low, high = float(values.min()), float(values.max())
        _check_not_constant(path, low, high)
        values = (values - low) / (high - low)
        extra["minmax"] = [low, high]
        kind = "minmax"
    extra["voi"] = kind
    if photometric == "MONOCHROME1":
        values = 1.0 - values
        extra["inverted"] = True
    pixels = values.astype(np.float32)
    _check_usable(path, pixels)
    view = str(ds.get("ViewPosition", "") or "").strip() or None
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
    return XrayImage(pixels, str(path), "dicom", bits, photometric, view, _dicom_spacing(ds), extra)


# --------------------------------------------------------------------------------------------------
# checks and entry point
# --------------------------------------------------------------------------------------------------


def _check_not_constant(path: Path, low: float, high: float) -> None:
    if not high > low:
        raise InvalidVolumeError(
            path,
            f"the image is constant (every pixel is {low:g}): nothing to learn from",
            "check the export that made it, or drop the file",
        )


def _check_usable(path: Path, pixels: np.ndarray) -> None:
    if pixels.ndim != 2 or min(pixels.shape) < _MIN_SIDE:
        raise UnsupportedFormatError(path, f"an image of shape {pixels.shape} is not a 2-D radiograph")
    _check_not_constant(path, float(pixels.min()), float(pixels.max()))


def read_xray(path: str | Path, voi: str = "auto") -> XrayImage:
    """Read a radiograph (PNG, JPEG or DICOM, found from its content) as grey ``[0, 1]`` pixels.

    Args:
        path: the file.
        voi: DICOM only: ``"auto"`` applies the file's VOI LUT or window (see the module docstring);
            ``"minmax"`` ignores them and scales the image's own min-max to ``[0, 1]``.

    Returns:
        an :class:`XrayImage` (``pixels`` float32 ``(H, W)`` in ``[0, 1]``, bright = dense).

    Raises:
        DataError: the file cannot be used (the subclass and message say why; see the module docstring).
        ConfigError: an unknown ``voi``.
    """
    if voi not in ("auto", "minmax"):
        raise ConfigError(f"voi must be 'auto' or 'minmax', got {voi!r}")
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        return _read_dicom(path, voi)
    return _read_pillow(path, kind)
