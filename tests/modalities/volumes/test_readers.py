"""Volume readers on real files (MSD NIfTI, PyRadiomics NRRD, a DICOM series made from pydicom's real CT
slice, pydicom's real multi-series folders) and on broken copies of real files."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medcl.errors import CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError
from modalities.volumes.readers import Volume, check_same_grid, read_mask, read_volume, volume_format

DICOMDIR_TESTS = Path(os.path.dirname(get_testdata_file("CT_small.dcm"))) / "dicomdirtests" / "98892003"


# ------------------------------------------------------------------------------------------- NIfTI


def test_nifti_image_and_mask_match_nibabel(hippo_case: tuple[Path, Path]) -> None:
    image_path, label_path = hippo_case
    volume = read_volume(image_path)
    reference = nib.load(image_path)
    assert volume.format == "nifti" and volume.modality is None
    assert volume.array.shape == (1, 35, 51, 35) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], reference.get_fdata().astype(np.float32))
    np.testing.assert_allclose(volume.affine, reference.affine)
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.shape == (35, 51, 35) and volume.channels == 1

    mask = read_mask(label_path, image=volume)
    assert mask.array.dtype == np.int64 and mask.array.shape == (1, 35, 51, 35)
    np.testing.assert_array_equal(mask.array[0], np.asarray(nib.load(label_path).dataobj))
    assert set(np.unique(mask.array)) == {0, 1, 2}


def test_four_d_nifti_becomes_channel_first(tmp_path: Path, hippo_case: tuple[Path, Path]) -> None:
    """MSD stores multi-channel tasks (BrainTumour: 4 MR sequences) as (H, W, D, C)."""
    img = nib.load(hippo_case[0])
    data = np.asarray(img.dataobj).astype(np.float32)
    stacked = np.stack([data, 2 * data, -data], axis=-1)
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(stacked, img.affine), path)
    volume = read_volume(path)
    assert volume.array.shape == (3, 35, 51, 35)
    for c in range(3):
        np.testing.assert_array_equal(volume.array[c], stacked[..., c])


# -------------------------------------------------------------------------------------------- NRRD


def test_nrrd_matches_pynrrd_with_lps_to_ras_affine(breast1: tuple[Path, Path]) -> None:
    image_path, label_path = breast1
    volume = read_volume(image_path)
    data, header = nrrd.read(str(image_path))
    assert volume.format == "nrrd" and volume.array.shape == (1, 45, 120, 21)
    np.testing.assert_array_equal(volume.array[0], data.astype(np.float32))
    # voxel → LPS from the header, then LPS → RAS negates x and y
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header["space directions"]).T
    lps[:3, 3] = header["space origin"]
    np.testing.assert_allclose(volume.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)
    np.testing.assert_allclose(volume.spacing, (0.664062, 0.664062, 2.1))

    mask = read_mask(label_path, image=volume)
    assert set(np.unique(mask.array)) == {0, 1}
    assert mask.array.sum() == (nrrd.read(str(label_path))[0] == 1).sum()


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_series_is_stacked_by_position_with_hu_and_ras_affine(ct_series: Path) -> None:
    volume = read_volume(ct_series)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = src.pixel_array.astype(np.float32)
    slope, intercept = float(src.RescaleSlope), float(src.RescaleIntercept)
    assert volume.format == "dicom" and volume.modality == "CT"
    # MONAI's convention: axis 0 = columns, axis 1 = rows, axis 2 = slices (in position order, although
    # the file names are shuffled), values in HU.
    assert volume.array.shape == (1, 128, 128, 4)
    for k in range(4):
        np.testing.assert_array_equal(volume.array[0, :, :, k], ((pixels + 100 * k) * slope + intercept).T)
    # nibabel's DICOM affine formula, then LPS → RAS
    row_cos = np.asarray(src.ImageOrientationPatient[:3], dtype=float)
    col_cos = np.asarray(src.ImageOrientationPatient[3:], dtype=float)
    d_row, d_col = (float(v) for v in src.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * d_col
    lps[:3, 1] = col_cos * d_row
    lps[:3, 2] = np.cross(row_cos, col_cos) * 2.5
    lps[:3, 3] = [float(v) for v in src.ImagePositionPatient]
    np.testing.assert_allclose(volume.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-6)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path, make_ct_series) -> None:
    folder = make_ct_series(tmp_path / "gap", n_slices=5, names=[f"s{k}.dcm" for k in range(5)])
    (folder / "s2.dcm").unlink()
    with pytest.raises(InvalidVolumeError, match="uneven slice spacing") as raised:
        read_volume(folder)
    assert raised.value.path == str(folder)


def test_dicom_instance_numbers_against_positions_are_refused(tmp_path: Path, make_ct_series) -> None:
    folder = make_ct_series(tmp_path / "scrambled", n_slices=3, names=["a.dcm", "b.dcm", "c.dcm"])
    ds = pydicom.dcmread(folder / "c.dcm")
    ds.InstanceNumber = 0  # now first by number, but last by position
    ds.save_as(folder / "c.dcm")
    with pytest.raises(InvalidVolumeError, match="InstanceNumber order does not follow"):
        read_volume(folder)


def test_truncated_dicom_slice_is_named(tmp_path: Path, make_ct_series) -> None:
    folder = make_ct_series(tmp_path / "cut", n_slices=4, names=[f"s{k}.dcm" for k in range(4)])
    data = (folder / "s2.dcm").read_bytes()
    (folder / "s2.dcm").write_bytes(data[: len(data) - 3000])
    with pytest.raises(CorruptFileError, match="pixel data of a slice") as raised:
        read_volume(folder)
    assert raised.value.path == str(folder / "s2.dcm")


def test_real_localizer_and_mixed_series_folders_are_refused() -> None:
    # pydicom's test files: MR700 holds 7 radial slices of one series, MR2 three series.
    with pytest.raises(InvalidVolumeError, match="different orientations"):
        read_volume(DICOMDIR_TESTS / "MR700")
    with pytest.raises(UnsupportedFormatError, match="holds 3 DICOM series"):
        read_volume(DICOMDIR_TESTS / "MR2")


# ------------------------------------------------------------------------------------- broken files

BROKEN_IMAGES = [
    # fixture key, error type, words in the reason
    ("truncated_gz", CorruptFileError, "truncated"),
    ("text_gz", UnsupportedFormatError, "named .gz but not gzip-compressed: it is text"),
    ("plain_named_gz", UnsupportedFormatError, "it is an uncompressed NIfTI-1 file"),
    ("gzip_named_nii", UnsupportedFormatError, "named .nii but gzip-compressed"),
    ("truncated_nii", CorruptFileError, "Expected 62475 bytes, got 57475"),
    ("empty", CorruptFileError, "empty"),
    ("zero_pixdim", InvalidVolumeError, "pixdim[1:4]) is [1.0, 0.0, 1.0]"),
    ("negative_pixdim", InvalidVolumeError, "pixdim[1:4]) is [-1.0, 1.0, 1.0]"),
    ("nan_pixdim", InvalidVolumeError, "pixdim[1:4]) is [1.0, 1.0, nan]"),
    ("singular_affine", InvalidVolumeError, "singular"),
    ("nan_voxels", InvalidVolumeError, "2 of 62475 voxels"),
    ("mha", UnsupportedFormatError, "not a volume format"),
    ("single_dicom", UnsupportedFormatError, "a single DICOM file is one slice"),
]


@pytest.mark.parametrize(("key", "error", "words"), BROKEN_IMAGES)
def test_broken_image_raises_a_data_error_naming_the_file(
    broken_volumes: dict[str, Path], key: str, error: type, words: str
) -> None:
    path = broken_volumes[key]
    with pytest.raises(error) as raised:
        read_volume(path)
    assert type(raised.value) is error
    assert raised.value.path == str(path)
    assert words in raised.value.reason


def test_falsely_gzipped_nifti_says_how_to_fix_it(broken_volumes: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedFormatError) as raised:
        read_volume(broken_volumes["plain_named_gz"])
    assert raised.value.hint == "rename it to plain.nii, or gzip it"
    # ... and the fix works: the same bytes under the right name are the real image.
    fixed = broken_volumes["plain_named_gz"].with_name("plain.nii")
    broken_volumes["plain_named_gz"].rename(fixed)
    np.testing.assert_array_equal(read_volume(fixed).array, read_volume(broken_volumes["image"]).array)


def test_missing_file_and_folder_without_dicom(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "empty_series").mkdir()
    (tmp_path / "empty_series" / "notes.txt").write_text("no images here")
    with pytest.raises(UnsupportedFormatError, match="no DICOM image files"):
        read_volume(tmp_path / "empty_series")


def test_volume_format_by_name(tmp_path: Path, ct_series: Path, hippo_case: tuple[Path, Path]) -> None:
    assert volume_format(hippo_case[0]) == "nifti"
    assert volume_format(ct_series) == "dicom"
    (tmp_path / "x.nrrd").write_bytes(b"NRRD0004\n")
    assert volume_format(tmp_path / "x.nrrd") == "nrrd"


# -------------------------------------------------------------------------------------------- masks


def test_mask_off_the_image_grid_names_both_grids_and_the_fix(broken_volumes: dict[str, Path]) -> None:
    image = read_volume(broken_volumes["image"])
    with pytest.raises(InvalidVolumeError) as raised:
        read_mask(broken_volumes["mask_cropped"], image=image)
    error = raised.value
    assert error.path == str(broken_volumes["mask_cropped"])
    assert "image shape 35x51x35, spacing 1x1x1 mm" in error.reason
    assert "mask shape 35x51x34, spacing 1x1x1 mm" in error.reason
    assert str(broken_volumes["image"]) in error.reason
    assert "nearest-neighbour" in error.hint and "ResampleToMatchd" in error.hint

    with pytest.raises(InvalidVolumeError, match=r"affines differ by up to 2 mm.*origin \(3, 1, 1\)"):
        read_mask(broken_volumes["mask_shifted"], image=image)
    # a rounding-size difference is within the tolerance
    assert read_mask(broken_volumes["mask_rounding"], image=image).shape == image.shape
    with pytest.raises(InvalidVolumeError, match="affines differ"):
        read_mask(broken_volumes["mask_rounding"], image=image, atol=1e-6)


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("mask_fractional", "fractional (e.g. 0.5)"),
        ("mask_negative", "labels >= 0, found -1"),
        ("mask_two_channels", "one channel, this one has 2"),
    ],
)
def test_bad_mask_values(broken_volumes: dict[str, Path], key: str, words: str) -> None:
    with pytest.raises(InvalidVolumeError) as raised:
        read_mask(broken_volumes[key])
    assert words in raised.value.reason and raised.value.path == str(broken_volumes[key])


def test_check_same_grid_accepts_the_real_pair(hippo_case: tuple[Path, Path]) -> None:
    image = read_volume(hippo_case[0])
    mask = read_mask(hippo_case[1])
    check_same_grid(image, mask)  # no error
    with pytest.raises(InvalidVolumeError):
        check_same_grid(image, Volume(mask.array[:, :-2], mask.affine, mask.path, "nifti"))
