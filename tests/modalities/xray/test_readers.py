"""read_xray on real radiographs: covid_cxr JPEGs, PNGs (8/16-bit, colour) written from them, pydicom's real
test DICOMs, CR DICOMs written from real radiograph pixels (MONOCHROME1, 12-bit, rescale, window, VOI LUT,
checked against hand computations), and broken copies."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medcl.errors import CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError
from modalities.xray.readers import LUMA_WEIGHTS, read_xray, sniff_format


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Reference BT.601 luma of uint8 RGB, in [0, 1] (written out per channel)."""
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def dicom_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to [0, 1], written from the standard's pseudo-code."""
    out = np.empty_like(x, dtype=np.float64)
    for index, value in np.ndenumerate(x):
        if value <= center - 0.5 - (width - 1) / 2:
            out[index] = 0.0
        elif value > center - 0.5 + (width - 1) / 2:
            out[index] = 1.0
        else:
            out[index] = (value - (center - 0.5)) / (width - 1) + 0.5
    return out


# --- PNG and JPEG --------------------------------------------------------------------------------------


def test_real_covid_jpeg_is_pillows_grey_over_255(covid_jpegs: list[Path]) -> None:
    for path in covid_jpegs[:3]:
        image = read_xray(path)
        expected = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        assert image.pixels.dtype == np.float32 and image.pixels.shape == expected.shape
        np.testing.assert_allclose(image.pixels, expected, atol=1e-7)
        assert (image.source_format, image.bits_stored, image.photometric) == ("jpeg", 8, "MONOCHROME2")
        assert image.view is None and image.pixel_spacing is None and image.path == str(path)


def test_16_bit_png_from_a_real_radiograph(tmp_path: Path, real_grey: np.ndarray) -> None:
    stored = (real_grey.astype(np.uint32) * 257).astype(np.uint16)  # 0…255 → 0…65535 (65535 = 255 · 257)
    path = tmp_path / "cxr16.png"
    Image.fromarray(stored).save(path)
    image = read_xray(path)
    assert image.bits_stored == 16 and image.source_format == "png"
    np.testing.assert_allclose(image.pixels, stored / 65535.0, atol=1e-7)
    np.testing.assert_allclose(image.pixels, real_grey / 255.0, atol=1e-6)


def _insert_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with a chunk inserted right after IHDR (8 + 25 bytes)."""
    chunk = (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )
    return png[:33] + chunk + png[33:]


def test_16_bit_png_with_sbit_scales_by_its_significant_bits(tmp_path: Path, real_grey: np.ndarray) -> None:
    stored = (real_grey.astype(np.uint16) * 16).astype(np.uint16)  # 12-bit values in 16-bit words
    path = tmp_path / "cxr12.png"
    Image.fromarray(stored).save(path)
    path.write_bytes(_insert_chunk(path.read_bytes(), b"sBIT", bytes([12])))
    image = read_xray(path)
    assert image.bits_stored == 12
    np.testing.assert_allclose(image.pixels, stored / 4095.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_png_becomes_bt601_luminance(tmp_path: Path, real_grey: np.ndarray, mode: str) -> None:
    g = real_grey.astype(np.float64)
    rgb = np.stack([g, 255 - g, np.clip(g * 0.5 + 40, 0, 255)], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = (np.arange(rgb.shape[1])[None, :] % 256).repeat(rgb.shape[0], 0).astype(np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "P":
        image = image.quantize(64)
    elif mode == "LA":
        image = Image.fromarray(np.dstack([real_grey, 255 - real_grey]), "LA")
    path = tmp_path / f"cxr_{mode}.png"
    image.save(path)
    read = read_xray(path)
    stored = Image.open(path)
    if mode == "LA":
        expected = np.asarray(stored.getchannel(0), dtype=np.float64) / 255.0
        assert read.photometric == "MONOCHROME2"
    else:
        expected = luminance(np.asarray(stored.convert("RGB")))
        assert read.photometric == {"RGB": "RGB", "RGBA": "RGBA", "P": "PALETTE COLOR"}[mode]
    np.testing.assert_allclose(read.pixels, expected, atol=1e-6)
    assert LUMA_WEIGHTS == (0.299, 0.587, 0.114)


def test_colour_jpeg_becomes_luminance(tmp_path: Path, real_grey: np.ndarray) -> None:
    rgb = np.stack([real_grey, real_grey // 2, 255 - real_grey], axis=-1).astype(np.uint8)
    path = tmp_path / "colour.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    expected = luminance(np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_allclose(read_xray(path).pixels, expected, atol=1e-6)


def test_format_comes_from_the_content_not_the_name(tmp_path: Path, covid_jpegs: list[Path]) -> None:
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(covid_jpegs[0].read_bytes())
    assert sniff_format(path) == "jpeg"
    assert read_xray(path).source_format == "jpeg"


# --- DICOM: pydicom's real files ------------------------------------------------------------------------


def test_real_mr_dicom_window_matches_the_standards_formula(dicom_testfile: Callable[[str], Path]) -> None:
    path = dicom_testfile("MR_small.dcm")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    assert float(ds.WindowCenter) == 600 and float(ds.WindowWidth) == 1600 and "RescaleSlope" not in ds
    image = read_xray(path)
    expected = dicom_linear_window(stored, 600.0, 1600.0)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    # a hand-checked pixel: value 1000 → (1000 − 599.5) / 1599 + 0.5
    assert abs(dicom_linear_window(np.array([1000.0]), 600, 1600)[0] - (400.5 / 1599 + 0.5)) < 1e-12
    assert image.extra["voi"] == "window" and image.pixel_spacing == (0.3125, 0.3125)
    assert image.bits_stored == 16 and image.photometric == "MONOCHROME2"


def test_real_ct_dicom_without_window_is_min_max_of_rescaled_values(
    dicom_testfile: Callable[[str], Path],
) -> None:
    path = dicom_testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_xray(path)
    np.testing.assert_allclose(image.pixels, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert image.extra["voi"] == "minmax" and image.extra["minmax"] == [hu.min(), hu.max()]


def test_compressed_real_dicoms_decode_to_the_same_pixels(dicom_testfile: Callable[[str], Path]) -> None:
    plain = read_xray(dicom_testfile("MR_small.dcm")).pixels
    np.testing.assert_array_equal(read_xray(dicom_testfile("MR_small_RLE.dcm")).pixels, plain)
    j2k = read_xray(dicom_testfile("JPEG2000.dcm"))
    assert j2k.shape == (1024, 256) and j2k.pixels.min() >= 0.0 and j2k.pixels.max() <= 1.0


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("MR_truncated.dcm", CorruptFileError, "less than expected"),
        ("rtdose.dcm", UnsupportedFormatError, "15 frames"),
        ("examples_ybr_color.dcm", UnsupportedFormatError, "multi-frame"),
        ("SC_rgb_jpeg.dcm", UnsupportedFormatError, "colour DICOM"),
        ("examples_palette.dcm", UnsupportedFormatError, "palette"),
        ("rtplan.dcm", UnsupportedFormatError, "no image"),
        ("JPEG-lossy.dcm", UnsupportedFormatError, "no installed decoder"),
        ("badVR.dcm", CorruptFileError, "1A"),
    ],
)
def test_unusable_real_dicoms_raise_naming_file_and_reason(
    dicom_testfile: Callable[[str], Path], name: str, error: type[DataError], words: str
) -> None:
    path = dicom_testfile(name)
    with pytest.raises(error) as raised:
        read_xray(path)
    assert raised.value.path == str(path) and words in str(raised.value)


# --- DICOM radiographs written from real pixels ------------------------------------------------------


def test_monochrome1_cr_12_bit_round_trips_a_real_radiograph(
    tmp_path: Path, real_grey: np.ndarray, make_cr_dicom: Callable[..., Path]
) -> None:
    """A MONOCHROME1 CR stores bright (dense) as low values; reading inverts it back."""
    grey = real_grey.astype(np.float64) / 255.0
    stored = np.rint((1.0 - grey) * 4095).astype(np.uint16)
    path = make_cr_dicom(tmp_path / "cr_mono1.dcm", stored, photometric="MONOCHROME1", view="PA")
    image = read_xray(path)
    lo, hi = stored.min(), stored.max()
    expected = 1.0 - (stored - lo) / (hi - lo)  # min-max of the stored range, then inverted
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert np.corrcoef(image.pixels.ravel(), grey.ravel())[0, 1] > 0.999  # the radiograph, bright = dense
    assert (image.photometric, image.bits_stored, image.view) == ("MONOCHROME1", 12, "PA")
    assert image.pixel_spacing == (0.139, 0.143) and image.extra["inverted"] is True
    assert image.extra["modality"] == "CR"


def test_cr_rescale_and_window_against_a_hand_computation(
    tmp_path: Path, real_grey: np.ndarray, make_cr_dicom: Callable[..., Path]
) -> None:
    stored = (real_grey.astype(np.uint16) * 16).astype(np.uint16)  # 0 … 4080
    path = make_cr_dicom(
        tmp_path / "cr_window.dcm",
        stored,
        RescaleSlope="2",
        RescaleIntercept="-100",
        WindowCenter="3000",
        WindowWidth="4001",
    )
    image = read_xray(path)
    value = stored.astype(np.float64) * 2 - 100
    # window [3000 − 0.5 − 2000, 3000 − 0.5 + 2000] = [999.5, 4999.5] → 0 … 1
    expected = np.clip((value - 2999.5) / 4000 + 0.5, 0, 1)
    expected[value <= 999.5] = 0.0
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.extra["window_center"] == 3000 and image.extra["window_width"] == 4001
    x = 1800.0  # one pixel by hand: stored 1800 → 3500 → (3500 − 2999.5) / 4000 + 0.5 = 0.625125
    assert abs((x * 2 - 100 - 2999.5) / 4000 + 0.5 - 0.625125) < 1e-12
    lookup = np.argwhere(stored == 1808)
    if len(lookup):
        r, c = lookup[0]
        assert abs(float(image.pixels[r, c]) - ((1808 * 2 - 100 - 2999.5) / 4000 + 0.5)) < 1e-6


def test_cr_window_on_monochrome1_is_inverted_after_windowing(
    tmp_path: Path, real_grey: np.ndarray, make_cr_dicom: Callable[..., Path]
) -> None:
    stored = (real_grey.astype(np.uint16) * 16).astype(np.uint16)
    path = make_cr_dicom(
        tmp_path / "cr_m1_window.dcm",
        stored,
        photometric="MONOCHROME1",
        WindowCenter="2048",
        WindowWidth="2049",
    )
    expected = 1.0 - dicom_linear_window(stored.astype(np.float64), 2048, 2049)
    np.testing.assert_allclose(read_xray(path).pixels, expected, atol=1e-6)


def test_voi_lut_is_preferred_to_the_window(
    tmp_path: Path,
    real_grey: np.ndarray,
    make_cr_dicom: Callable[..., Path],
    make_voi_lut: Callable[..., object],
) -> None:
    stored = (real_grey.astype(np.uint16) * 16).astype(np.uint16)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(np.uint16)  # a non-linear 12-bit LUT
    path = make_cr_dicom(
        tmp_path / "cr_lut.dcm",
        stored,
        WindowCenter="100",
        WindowWidth="10",
        VOILUTSequence=make_voi_lut(lut),
    )
    image = read_xray(path)
    np.testing.assert_allclose(image.pixels, lut[stored] / 4095.0, atol=1e-6)
    assert image.extra["voi"] == "voi_lut" and image.extra["lut_bits"] == 12
    # voi="minmax" ignores both
    plain = read_xray(path, voi="minmax")
    np.testing.assert_allclose(
        plain.pixels, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6
    )


def test_grey_stored_as_rgb_dicom_is_read_as_grey(
    tmp_path: Path, real_grey: np.ndarray, dicom_testfile: Callable[[str], Path]
) -> None:
    ds = pydicom.dcmread(dicom_testfile("SC_rgb_small_odd.dcm"))  # uncompressed RGB, 3x3
    small = np.asarray(Image.fromarray(real_grey).resize((ds.Columns, ds.Rows)))
    ds.PixelData = np.repeat(small[..., None], 3, axis=-1).astype(np.uint8).tobytes()
    path = tmp_path / "grey_rgb.dcm"
    ds.save_as(path)
    image = read_xray(path)
    np.testing.assert_allclose(image.pixels, (small - small.min()) / (small.max() - small.min()), atol=1e-6)
    assert image.extra["grey_from_colour"] is True


# --- broken files ---------------------------------------------------------------------------------------


@pytest.fixture()
def broken(
    tmp_path: Path, covid_jpegs: list[Path], real_grey: np.ndarray, make_cr_dicom: Callable[..., Path]
) -> dict[str, Path]:
    out = tmp_path / "broken"
    out.mkdir()
    made: dict[str, Path] = {}
    jpeg = covid_jpegs[0].read_bytes()
    made["truncated_jpeg"] = out / "cut.jpg"
    made["truncated_jpeg"].write_bytes(jpeg[: int(len(jpeg) * 0.6)])
    png_path = out / "whole.png"
    Image.fromarray(real_grey).save(png_path)
    png = png_path.read_bytes()
    made["truncated_png"] = out / "cut.png"
    made["truncated_png"].write_bytes(png[: len(png) // 2])
    damaged = bytearray(png)
    damaged[len(png) // 2] ^= 0xFF
    made["bad_crc_png"] = out / "damaged.png"
    made["bad_crc_png"].write_bytes(bytes(damaged))
    made["no_iend_png"] = out / "no_iend.png"
    made["no_iend_png"].write_bytes(png[:-12])
    made["empty"] = out / "empty.jpg"
    made["empty"].write_bytes(b"")
    made["text"] = out / "notes.png"
    made["text"].write_text("Radiology report: no acute cardiopulmonary process.\n")
    stored = (real_grey.astype(np.uint16) * 16).astype(np.uint16)
    dicom = make_cr_dicom(out / "whole.dcm", stored).read_bytes()
    made["truncated_dicom"] = out / "cut.dcm"
    made["truncated_dicom"].write_bytes(dicom[: len(dicom) - 5000])
    made["constant"] = out / "flat.png"
    Image.fromarray(np.full((80, 90), 37, dtype=np.uint8)).save(made["constant"])
    return made


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("truncated_jpeg", CorruptFileError, "truncated JPEG"),
        ("truncated_png", CorruptFileError, "truncated PNG"),
        ("bad_crc_png", CorruptFileError, "CRC"),
        ("no_iend_png", CorruptFileError, "IEND"),
        ("empty", CorruptFileError, "empty"),
        ("text", UnsupportedFormatError, "not a PNG, JPEG or DICOM"),
        ("truncated_dicom", CorruptFileError, "less than expected"),
        ("constant", InvalidVolumeError, "constant"),
    ],
)
def test_broken_files_raise_a_data_error_naming_the_file(
    broken: dict[str, Path], kind: str, error: type[DataError], words: str
) -> None:
    with pytest.raises(error) as raised:
        read_xray(broken[kind])
    assert raised.value.path == str(broken[kind])
    assert words in raised.value.reason and str(broken[kind]) in str(raised.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_xray(tmp_path / "nothing.png")
    with pytest.raises(DataError, match="folder"):
        read_xray(tmp_path)
