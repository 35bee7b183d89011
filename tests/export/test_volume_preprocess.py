"""The numpy volume preprocessing against MONAI's transforms on real NIfTI, NRRD and DICOM volumes:
readers vs ``LoadImage``, ``Orientationd("RAS")``, ``Spacingd`` (bilinear), ``ScaleIntensityRanged``,
``NormalizeIntensityd``, the training pipeline of :mod:`modalities.volumes.transforms` (with foreground
crop and padding), and the inverse mapping vs ``Invertd``."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Invertd,
    LoadImage,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from nibabel import orientations

from export.volume_preprocess import (
    preprocess_volume,
    read_volume,
    reorient,
    to_input_grid,
    window,
    zscore,
)
from medcl.errors import ConfigError, CorruptFileError, DataError, InvalidVolumeError, UnsupportedFormatError

DICOM_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT_SERIES = DICOM_TESTS / "98892001" / "CT5N"  # 5 real CT slices of 16×16, 2.5 mm apart, z descending
UNEVEN_SERIES = DICOM_TESTS / "77654033" / "CT2"  # 4 slices: one 200 mm away from the other three
MR_NORMALIZE = {"op": "zscore", "nonzero": True, "channel_wise": True}
CT_WINDOW = {
    "op": "window",
    "a_min": -175.0,
    "a_max": 250.0,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
}

# (data-relative path or DICOM folder, target spacing, CT or MR intensity step)
CASES = {
    "hippocampus_nifti": ("msd_hippocampus/imagesTr/hippocampus_001.nii.gz", (1.2, 1.2, 1.5), "MR"),
    "breast1_nrrd": ("radiomics_ct_mri/breast1_image.nrrd", (1.0, 1.0, 1.0), "MR"),  # 0.66×0.66×2.1 mm
    "brain1_nrrd": ("radiomics_ct_mri/brain1_image.nrrd", (1.5, 1.5, 3.0), "MR"),  # one flipped axis
    "lung1_nrrd": ("radiomics_ct_mri/lung1_image.nrrd", (2.5, 2.5, 4.0), "CT"),  # 512×512×48 CT
    "ct_dicom_series": (None, (0.7, 0.7, 2.0), "CT"),
}


def _spatial(pixdim: tuple[float, ...] | None) -> list[dict[str, Any]]:
    """load → orientation (→ spacing), in the training spec's format."""
    steps: list[dict[str, Any]] = [{"op": "load", "channels": 1}, {"op": "orientation", "axcodes": "RAS"}]
    if pixdim is not None:
        steps.append(
            {
                "op": "spacing",
                "pixdim": list(pixdim),
                "image_mode": "bilinear",
                "mask_mode": "nearest",
                "padding_mode": "border",
                "align_corners": False,
            }
        )
    return steps


def _path(case: str, shared: Path | None) -> str:
    relative = CASES[case][0]
    if relative is None:
        return str(CT_SERIES)
    if shared is None:
        pytest.skip("needs ../shared/data")
    return str(shared / relative)


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def case_path(case: str, request: pytest.FixtureRequest) -> str:
    shared = request.getfixturevalue("shared_data") if CASES[case][0] is not None else None
    return _path(case, shared)


def _monai(path: str, transforms: list) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Compose([LoadImaged("image", ensure_channel_first=True), *transforms])({"image": path})


def _intensity(kind: str) -> tuple[Any, dict[str, Any]]:
    if kind == "CT":
        return ScaleIntensityRanged("image", -175, 250, 0, 1, clip=True), CT_WINDOW
    return NormalizeIntensityd("image", nonzero=True, channel_wise=True), MR_NORMALIZE


def test_readers_give_monai_loadimage_voxels_and_affines(case: str, case_path: str) -> None:
    volume = read_volume(case_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LoadImage(image_only=True, ensure_channel_first=True)(case_path)
    expected, expected_affine = reference.numpy(), reference.affine.numpy()
    assert volume.array.dtype == np.float32 and volume.array.shape == expected.shape
    if case == "ct_dicom_series":
        # MONAI stacks by InstanceNumber (here: z descending); we stack along the slice normal (z ascending):
        # the same voxels in the same world places
        assert np.allclose(volume.affine[:, 2], -expected_affine[:, 2])
        n = expected.shape[-1]
        indices = np.array([[3, 7, 0, 1], [15, 0, 4, 1], [0, 9, 2, 1]]).T
        flipped = indices.copy()
        flipped[2] = n - 1 - flipped[2]
        np.testing.assert_allclose(volume.affine @ indices, expected_affine @ flipped, atol=1e-6)
        np.testing.assert_array_equal(volume.array, expected[..., ::-1])
        assert -1100 < volume.array.min() < volume.array.max() < 3100  # RescaleIntercept applied: HU
    else:
        np.testing.assert_array_equal(volume.array, expected)
        np.testing.assert_allclose(volume.affine, expected_affine, rtol=0, atol=1e-9)


def test_orientation_and_spacing_equal_monai(case: str, case_path: str) -> None:
    pixdim = CASES[case][1]
    oriented = _monai(case_path, [Orientationd("image", "RAS", labels=None)])["image"]
    volume = read_volume(case_path)
    x, geometry = preprocess_volume(volume, _spatial(None))
    np.testing.assert_array_equal(x, oriented.numpy())
    np.testing.assert_allclose(geometry.model_affine, oriented.affine.numpy(), rtol=0, atol=1e-9)
    assert np.all(np.diag(geometry.model_affine)[:3] > 0)  # RAS: every axis runs along +x, +y, +z

    spaced = _monai(
        case_path, [Orientationd("image", "RAS", labels=None), Spacingd("image", pixdim, mode="bilinear")]
    )["image"]
    x, geometry = preprocess_volume(volume, _spatial(pixdim))
    assert x.shape == tuple(spaced.shape) and x.shape != volume.array.shape  # really resampled
    np.testing.assert_allclose(geometry.model_affine, spaced.affine.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sqrt((geometry.model_affine[:3, :3] ** 2).sum(0)), pixdim, rtol=1e-9)
    scale = float(np.abs(volume.array).max())
    np.testing.assert_allclose(x, spaced.numpy(), rtol=0, atol=1e-6 * scale)


def test_full_pipeline_equals_monai(case: str, case_path: str) -> None:
    """Orientation → spacing → CT window / MR z-score, within 1e-5 of MONAI, with one exception.

    ``NormalizeIntensityd(nonzero=True)`` tests every voxel for exactly 0. Where bilinear resampling of a
    zero background gives 0 here and ~1e-12 in MONAI (float noise of torch's sampling coordinates, which
    depends on the CPU's vector width: it cannot be reproduced bit for bit), MONAI normalises the voxel
    (≈ −mean/std) and counts it in the mean and std, and we leave it at 0. On brain1 (1.5×1.5×3 mm) that
    is 0.18% of the voxels and shifts the others by ~2e-3; the normalisation itself is MONAI's exactly."""
    pixdim, kind = CASES[case][1], CASES[case][2]
    transform, step = _intensity(kind)
    spatial = [Orientationd("image", "RAS", labels=None), Spacingd("image", pixdim, mode="bilinear")]
    before = _monai(case_path, spatial)["image"].numpy()
    expected = _monai(case_path, [*spatial, transform])["image"].numpy()
    steps = [*_spatial(pixdim), step]
    x, _ = preprocess_volume(read_volume(case_path), steps)
    assert x.dtype == np.float32
    x_before, _ = preprocess_volume(read_volume(case_path), steps[:-1])
    noise = (before == 0) != (x_before == 0)
    assert np.abs(np.where(noise, before + x_before, 0)).max() < 1e-9  # only float-noise values differ
    if kind == "CT" or not noise.any():  # a CT window has no zero test
        np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
        return
    assert noise.mean() < 0.005, f"{noise.sum()} voxels differ in being exactly 0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_on_ours = transform({"image": MetaTensor(torch.from_numpy(x_before.copy()))})["image"].numpy()
    np.testing.assert_allclose(x, monai_on_ours, rtol=0, atol=1e-5)
    assert np.abs(x - expected)[~noise].max() < 5e-3


def test_intensity_steps_by_hand() -> None:
    hu = np.array([[[[-1000.0, -175.0, 37.5, 250.0, 3000.0]]]], dtype=np.float32)
    np.testing.assert_allclose(window(hu, -175, 250, 0, 1, clip=True)[0, 0, 0], [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(
        window(hu, -175, 250, 0, 1, clip=False)[0, 0, 0, [0, 4]],
        [-825 / 425, 3175 / 425],
        rtol=1e-6,
    )
    x = np.array([[[[0.0, 1.0, 3.0, 0.0]]], [[[2.0, 2.0, 2.0, 2.0]]]], dtype=np.float32)
    out = zscore(x, nonzero=True, channel_wise=True)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, -1.0, 1.0, 0.0])  # mean 2, std 1 over {1, 3}; zeros kept
    np.testing.assert_allclose(out[1], 0.0)  # a constant channel: std 0 → divide by 1
    joint = zscore(x, nonzero=False, channel_wise=False)
    values = x.ravel()
    np.testing.assert_allclose(joint.ravel(), (values - values.mean()) / values.std(), rtol=1e-6)


@pytest.mark.shared_data
def test_orientation_crop_and_pad_invert_exactly(shared_data: Path) -> None:
    """lung1 CT (LPS file: orientation flips two axes), windowed so that air is exactly 0, cropped to the
    body and padded: the spatial steps are undone bit for bit (float maps and labels; outside the crop box
    the windowed input is 0 by construction, and that is what comes back)."""
    volume = read_volume(shared_data / "radiomics_ct_mri" / "lung1_image.nrrd")
    steps = [
        *_spatial(None),
        CT_WINDOW,
        {"op": "crop_foreground", "background": 0.0, "margin": 2},
        {"op": "pad", "min_size": [100, 400, 51], "method": "symmetric", "value": 0.0},
    ]
    x, geometry = preprocess_volume(volume, steps)
    crop = geometry.operations[1]
    assert np.prod(np.subtract(crop.end, crop.start)) < 0.8 * np.prod(volume.array.shape)  # really cropped
    assert x.shape[2:] == (400, 51)  # the cropped axis padded again, and the slices padded (1 + 2)
    windowed = window(volume.array, -175.0, 250.0, 0.0, 1.0, clip=True)
    np.testing.assert_array_equal(to_input_grid(x, geometry, "bilinear"), windowed)
    back = to_input_grid((x[0] > 0.5).astype(np.uint8), geometry)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, (windowed[0] > 0.5).astype(np.uint8))
    # what the model never saw (outside the crop box) is filled per channel
    filled = to_input_grid(np.ones((2, *x.shape[1:]), np.float32), geometry, "bilinear", fill=[5.0, 7.0])
    oriented_box = np.zeros(crop.shape, bool)
    oriented_box[tuple(slice(a, b) for a, b in zip(crop.start, crop.end, strict=True))] = True
    outside = ~to_input_grid(oriented_box[None], _orientation_only(volume))[0]
    assert outside.any()
    np.testing.assert_array_equal(filled[0][outside], 5.0)
    np.testing.assert_array_equal(filled[1][outside], 7.0)
    np.testing.assert_array_equal(filled[:, ~outside], 1.0)


def _orientation_only(volume: Any) -> Any:
    """The geometry of the orientation step alone (to map an oriented-grid array back)."""
    _, oriented = preprocess_volume(volume, _spatial(None))
    return oriented


@pytest.mark.parametrize(
    ("case", "modality", "pixdim", "roi", "crop"),
    [
        ("hippocampus_nifti", "MR", (1.2, 1.2, 1.5), (32, 48, 32), False),  # padded on every axis
        ("breast1_nrrd", "MR", (1.0, 1.0, 1.0), (32, 32, 32), True),
        ("brain1_nrrd", "MR", (1.5, 1.5, 3.0), (32, 32, 64), True),
        ("lung1_nrrd", "CT", (2.5, 2.5, 4.0), (32, 32, 32), True),
        ("ct_dicom_series", "CT", (0.7, 0.7, 2.0), (32, 32, 8), False),
    ],
)
def test_training_pipeline_parity(
    case: str,
    modality: str,
    pixdim: tuple[float, ...],
    roi: tuple[int, ...],
    crop: bool,
    request: pytest.FixtureRequest,
) -> None:
    """The spec written by training (``modalities.volumes.transforms.preprocessing_spec``) run by its MONAI
    pipeline and by ours: same shape and affine, voxels within 1e-4 (the training pipeline resamples in
    float32, we in float64: ~1e-5 relative), except for z-scored voxels that are exactly 0 in one and
    float noise in the other (see test_full_pipeline_equals_monai), which stay below 0.1%."""
    from modalities.volumes.transforms import preprocess, preprocessing_spec

    shared = request.getfixturevalue("shared_data") if CASES[case][0] is not None else None
    path = _path(case, shared)
    spec = preprocessing_spec(modality, spacing=pixdim, roi=roi, crop_foreground=crop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = preprocess(spec, path)
    x, geometry = preprocess_volume(read_volume(path), spec)
    assert x.shape == expected["image"].shape and all(n >= r for n, r in zip(x.shape[1:], roi, strict=True))
    np.testing.assert_allclose(geometry.model_affine, expected["affine"], rtol=0, atol=1e-9)
    noise = (x == 0) != (expected["image"] == 0) if modality == "MR" else np.zeros(x.shape, bool)
    assert noise.mean() < 0.001
    np.testing.assert_allclose(
        x[~noise], expected["image"][~noise], rtol=0, atol=1e-4 if not noise.any() else 1e-3
    )


def _invertd(path: str, pixdim: tuple[float, ...], model_map: np.ndarray, nearest: bool) -> np.ndarray:
    """MONAI's inverse (``Invertd``) of Orientationd + Spacingd applied to ``model_map`` (K, H', W', D')."""
    pipeline = Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            Orientationd("image", "RAS", labels=None),
            Spacingd("image", pixdim),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = pipeline({"image": path})
        image = data["image"]
        prediction = MetaTensor(
            torch.from_numpy(model_map.astype(np.float32)), affine=image.affine, meta=dict(image.meta)
        )
        prediction.applied_operations = image.applied_operations
        inverted = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=nearest)(
            {"pred": prediction, "image": image}
        )
    return inverted["pred"].numpy()


@pytest.mark.shared_data
@pytest.mark.parametrize("case", ["hippocampus_nifti", "breast1_nrrd"])
def test_inverse_mapping_equals_monai_invertd(case: str, shared_data: Path) -> None:
    """Labels go back by nearest voxel: with the model's voxel index along each axis as the label, ours
    and MONAI's agree everywhere except on input voxels whose model coordinate is exactly halfway between
    two model voxels (a tie torch breaks by float noise), where they differ by one voxel. Probabilities go
    back bilinearly and agree within float error."""
    path = _path(case, shared_data)
    pixdim = CASES[case][1]
    steps = _spatial(pixdim)
    volume = read_volume(path)
    x, geometry = preprocess_volume(volume, steps)
    resampling = geometry.operations[1]
    xform = np.linalg.solve(geometry.model_affine, resampling.affine)  # oriented input voxel → model voxel
    for axis in range(3):
        index_map = np.indices(x.shape[1:])[axis][None]
        ours = to_input_grid(index_map, geometry, "nearest")[0]
        theirs = _invertd(path, pixdim, index_map, nearest=True)[0]
        assert ours.shape == theirs.shape == volume.array.shape[1:]
        coordinate = xform[axis, axis] * np.arange(resampling.shape[axis]) + xform[axis, 3]
        tie = np.abs(coordinate - np.floor(coordinate) - 0.5) < 1e-9  # along the oriented axis
        shape = [1, 1, 1]
        shape[axis] = -1
        tie_oriented = np.broadcast_to(tie.reshape(shape), resampling.shape)
        # the tie planes through the (flip/transpose only) orientation back onto the input's axes
        back = orientations.ornt_transform(
            orientations.io_orientation(resampling.affine), orientations.io_orientation(volume.affine)
        )
        tie_input = reorient(tie_oriented[None], back)[0]
        differ = ours != theirs
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
        assert not (differ & ~tie_input).any(), "ours and MONAI's differ away from exact ties"
        if case == "hippocampus_nifti" and axis == 0:
            assert tie.any() and differ.any()  # this case does hit ties (1.2 mm vs 1 mm)
    smooth = np.stack(
        [np.sin(np.indices(x.shape[1:]).sum(0) / 7.0), np.cos(np.indices(x.shape[1:])[0] / 5.0)]
    )
    np.testing.assert_allclose(
        to_input_grid(smooth, geometry, "bilinear"), _invertd(path, pixdim, smooth, nearest=False), atol=1e-6
    )


def test_multichannel_nifti_is_channel_first_like_monai(tmp_path: Path) -> None:
    volume = read_volume(CT_SERIES)
    channels_last = np.stack([volume.array[0], 2 * volume.array[0] + 1], axis=-1)
    path = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(channels_last, volume.affine), str(path))
    ours = read_volume(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    assert ours.array.shape == (2, 16, 16, 5)
    np.testing.assert_array_equal(ours.array, theirs.numpy())
    np.testing.assert_allclose(ours.affine, volume.affine, atol=1e-5)


def test_unreadable_inputs_raise_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="volume not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(UnsupportedFormatError, match="not a volume format"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedFormatError, match="single DICOM file is one 2-D slice"):
        read_volume(next(CT_SERIES.iterdir()))
    with pytest.raises(CorruptFileError, match=r"unevenly spaced \(gaps"):
        read_volume(UNEVEN_SERIES)
    empty = tmp_path / "empty_series"
    empty.mkdir()
    with pytest.raises(UnsupportedFormatError, match="no DICOM files"):
        read_volume(empty)
    one = tmp_path / "one_slice"
    one.mkdir()
    shutil.copy(next(CT_SERIES.iterdir()), one / "slice.dcm")
    with pytest.raises(UnsupportedFormatError, match="single slice"):
        read_volume(one)
    # a real NIfTI cut short
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), str(good))
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CorruptFileError, match=r"truncated\.nii\.gz: not a readable NIfTI"):
        read_volume(tmp_path / "truncated.nii.gz")


def test_unknown_steps_and_unsupported_settings_are_refused() -> None:
    volume = read_volume(CT_SERIES)
    with pytest.raises(ConfigError, match=r"unknown volume preprocessing step\(s\) \['resize'\]"):
        preprocess_volume(volume, [{"op": "resize", "size": [8, 8, 8]}])
    with pytest.raises(ConfigError, match="'crop_foreground' lacks background, margin"):
        preprocess_volume(volume, [{"op": "crop_foreground"}])
    spacing = _spatial((1.0, 1.0, 1.0))[2]
    with pytest.raises(ConfigError, match="image_mode must be 'bilinear' or 'nearest'"):
        preprocess_volume(volume, [{**spacing, "image_mode": "bicubic"}])
    with pytest.raises(ConfigError, match="padding_mode 'reflection' is not supported without torch"):
        preprocess_volume(volume, [{**spacing, "padding_mode": "reflection"}])
    with pytest.raises(InvalidVolumeError, match=r"1 channel\(s\), but the preprocessing expects 2"):
        preprocess_volume(volume, [{"op": "load", "channels": 2}])
