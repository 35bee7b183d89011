"""Fixtures for the volume tests: real volumes (bundled MSD hippocampus, PyRadiomics NRRD, a DICOM series
made from pydicom's real CT slice) and broken copies of real files written in tmp_path."""

from __future__ import annotations

import copy
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from modalities.bundled import bundled_hippocampus_root

HIPPO_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007")


@pytest.fixture(scope="session")
def hippo_root() -> Path:
    """The bundled MSD hippocampus subset (40 real labelled MRI crops)."""
    return bundled_hippocampus_root()


@pytest.fixture(scope="session")
def hippo_case(hippo_root: Path) -> tuple[Path, Path]:
    """(image, label) of real case hippocampus_001 (35x51x35, 1 mm, labels 0/1/2)."""
    name = "hippocampus_001.nii.gz"
    return hippo_root / "imagesTr" / name, hippo_root / "labelsTr" / name


@pytest.fixture(scope="session")
def breast1(shared_data: Path) -> tuple[Path, Path]:
    """PyRadiomics' breast1 MR (NRRD, 45x120x21, LPS) and its lesion mask."""
    folder = shared_data / "radiomics_ct_mri"
    return folder / "breast1_image.nrrd", folder / "breast1_label.nrrd"


def copy_msd_cases(src_root: Path, dst_root: Path, cases: tuple[str, ...] = HIPPO_CASES) -> Path:
    """Copy some MSD cases (image + label, unmodified) into ``dst_root/{imagesTr,labelsTr}``."""
    for sub in ("imagesTr", "labelsTr"):
        (dst_root / sub).mkdir(parents=True, exist_ok=True)
        for case in cases:
            shutil.copyfile(src_root / sub / f"{case}.nii.gz", dst_root / sub / f"{case}.nii.gz")
    return dst_root


@pytest.fixture(scope="session")
def copy_cases() -> object:
    """:func:`copy_msd_cases`, for tests."""
    return copy_msd_cases


def write_ct_series(
    folder: Path, n_slices: int = 4, gap: float = 2.5, names: list[str] | None = None
) -> Path:
    """A DICOM series made from pydicom's real ``CT_small.dcm`` (128x128, 0.66 mm, int16 with
    RescaleIntercept -1024): slice ``k`` holds the original pixels + 100·k, lies ``gap·k`` mm further
    along z and has InstanceNumber ``k + 1``; files are named ``names[k]`` (default: shuffled order)."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = src.pixel_array.astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    names = names or [f"slice_{(3 * k + 2) % n_slices}.dcm" for k in range(n_slices)]
    for k in range(n_slices):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        position = [float(v) for v in src.ImagePositionPatient]
        position[2] += gap * k
        ds.ImagePositionPatient = position
        ds.PixelData = (base + 100 * k).astype(np.int16).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return folder


@pytest.fixture()
def ct_series(tmp_path: Path) -> Path:
    """A 4-slice CT series folder (see :func:`write_ct_series`) with a README next to the slices."""
    folder = write_ct_series(tmp_path / "ct_series")
    (folder / "README.txt").write_text("exported by the test suite\n")
    return folder


@pytest.fixture(scope="session")
def make_ct_series() -> object:
    """:func:`write_ct_series`, for tests."""
    return write_ct_series


@pytest.fixture()
def broken_volumes(tmp_path: Path, hippo_case: tuple[Path, Path]) -> dict[str, Path]:
    """Broken copies of the real hippocampus_001 image/label, by what is wrong with them."""
    image_path, label_path = hippo_case
    out = tmp_path / "broken"
    out.mkdir()
    raw = image_path.read_bytes()
    img = nib.load(image_path)
    data = np.asarray(img.dataobj)
    made: dict[str, Path] = {}

    made["truncated_gz"] = out / "truncated.nii.gz"
    made["truncated_gz"].write_bytes(raw[: len(raw) // 2])

    made["text_gz"] = out / "notes.nii.gz"
    made["text_gz"].write_text("Radiology notes: volume to be re-exported.\n")

    plain = gzip.decompress(raw)
    made["plain_named_gz"] = out / "plain.nii.gz"
    made["plain_named_gz"].write_bytes(plain)

    made["gzip_named_nii"] = out / "packed.nii"
    made["gzip_named_nii"].write_bytes(raw)

    made["truncated_nii"] = out / "short.nii"
    made["truncated_nii"].write_bytes(plain[: len(plain) - 5000])

    made["empty"] = out / "empty.nii.gz"
    made["empty"].write_bytes(b"")

    zero = nib.Nifti1Image(data, img.affine, img.header.copy())
    zero.header["pixdim"][2] = 0.0
    made["zero_pixdim"] = out / "zero_pixdim.nii.gz"
    nib.save(zero, made["zero_pixdim"])

    negative = nib.Nifti1Image(data, img.affine, img.header.copy())
    negative.header["pixdim"][1] = -1.0
    made["negative_pixdim"] = out / "negative_pixdim.nii.gz"
    nib.save(negative, made["negative_pixdim"])

    nan_pixdim = nib.Nifti1Image(data, img.affine, img.header.copy())
    nan_pixdim.header["pixdim"][3] = np.nan
    made["nan_pixdim"] = out / "nan_pixdim.nii.gz"
    nib.save(nan_pixdim, made["nan_pixdim"])

    singular = nib.Nifti1Image(data, None, img.header.copy())
    flat = img.affine.copy()
    flat[1, :3] = 0.0
    singular.header.set_sform(flat, code=1)
    singular.header.set_qform(None, code=0)
    made["singular_affine"] = out / "singular.nii.gz"
    nib.save(singular, made["singular_affine"])

    with_nan = data.astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    with_nan[10, 11, 12] = np.nan
    made["nan_voxels"] = out / "nan_voxels.nii.gz"
    nib.save(nib.Nifti1Image(with_nan, img.affine), made["nan_voxels"])

    made["mha"] = out / "image.mha"
    made["mha"].write_bytes(b"ObjectType = Image\nNDims = 3\n")

    made["single_dicom"] = out / "slice.dcm"
    shutil.copyfile(get_testdata_file("CT_small.dcm"), made["single_dicom"])

    made["image"] = out / "image.nii.gz"
    shutil.copyfile(image_path, made["image"])
    label = nib.load(label_path)
    labels = np.asarray(label.dataobj)

    made["mask_cropped"] = out / "mask_cropped.nii.gz"
    nib.save(nib.Nifti1Image(labels[:, :, :-1], label.affine, label.header.copy()), made["mask_cropped"])

    shifted = label.affine.copy()
    shifted[0, 3] += 2.0
    made["mask_shifted"] = out / "mask_shifted.nii.gz"
    nib.save(nib.Nifti1Image(labels, shifted), made["mask_shifted"])

    tiny_shift = label.affine.copy()
    tiny_shift[0, 3] += 1e-5
    made["mask_rounding"] = out / "mask_rounding.nii.gz"
    nib.save(nib.Nifti1Image(labels, tiny_shift), made["mask_rounding"])

    fractional = labels.astype(np.float32)
    fractional[fractional == 2] = 0.5
    made["mask_fractional"] = out / "mask_fractional.nii.gz"
    nib.save(nib.Nifti1Image(fractional, label.affine), made["mask_fractional"])

    negative_labels = labels.astype(np.int16)
    negative_labels[negative_labels == 2] = -1
    made["mask_negative"] = out / "mask_negative.nii.gz"
    nib.save(nib.Nifti1Image(negative_labels, label.affine), made["mask_negative"])

    two = np.stack([labels, labels], axis=-1)
    made["mask_two_channels"] = out / "mask_two_channels.nii.gz"
    nib.save(nib.Nifti1Image(two, label.affine), made["mask_two_channels"])
    return made
