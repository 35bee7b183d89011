"""Volume preprocessing: each step against an independent numpy/nibabel/scipy computation, the spec's
validation, the disk cache's keys, and the seeded contrastive views."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from monai.data import PersistentDataset
from monai.data.utils import json_hashing
from scipy.ndimage import map_coordinates

import modalities.volumes.transforms as transforms_module
from medcl.errors import ConfigError, CorruptFileError, InvalidVolumeError
from modalities.volumes.transforms import (
    SpecHash,
    build_pipeline,
    check_spec,
    preprocess,
    preprocessing_spec,
    spec_hash,
    volume_views,
)


def spec_without_pad_effect(**kwargs: object) -> list[dict]:
    """A spec whose ROI (8³) never pads the hippocampus crops."""
    return preprocessing_spec(roi=(8, 8, 8), **kwargs)  # type: ignore[arg-type]


def zscore_nonzero(x: np.ndarray) -> np.ndarray:
    nonzero = x != 0
    out = np.zeros_like(x, dtype=np.float32)
    out[nonzero] = (x[nonzero] - x[nonzero].mean()) / x[nonzero].std()
    return out


# -------------------------------------------------------------------------------------- orientation


def test_flipped_and_permuted_volume_loads_in_ras_like_nibabel_canonical(
    tmp_path: Path, hippo_case: tuple[Path, Path]
) -> None:
    image, label = (nib.load(p) for p in hippo_case)
    data = np.asarray(image.dataobj).astype(np.float32)
    labels = np.asarray(label.dataobj)
    # voxel axis 0 runs right→left (L), axis 1 inferior→superior (S), axis 2 anterior→posterior (P):
    # an "LSP"-style affine, with the origin placed so the volume stays in the same region.
    affine = np.array(
        [[-1.0, 0.0, 0.0, 40.0], [0.0, 0.0, -1.0, 60.0], [0.0, 1.0, 0.0, -5.0], [0.0, 0.0, 0.0, 1.0]]
    )
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lsp.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "lsp_label.nii.gz")
    assert nib.aff2axcodes(affine) == ("L", "S", "P")

    out = preprocess(
        spec_without_pad_effect(intensity="none"), tmp_path / "lsp.nii.gz", tmp_path / "lsp_label.nii.gz"
    )
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "lsp.nii.gz"))
    expected = canonical.get_fdata().astype(np.float32)
    assert out["image"].shape == (1, *expected.shape) == (1, 35, 35, 51)
    np.testing.assert_array_equal(out["image"][0], expected)
    np.testing.assert_array_equal(
        out["mask"][0], np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "lsp_label.nii.gz")).dataobj)
    )
    np.testing.assert_allclose(out["affine"], canonical.affine)
    assert nib.aff2axcodes(out["affine"]) == ("R", "A", "S")
    # the same values, moved: RAS voxel (i, j, k) is stored voxel (34 - i, k, 34 - j)
    i, j, k = np.meshgrid(np.arange(35), np.arange(35), np.arange(51), indexing="ij")
    np.testing.assert_array_equal(out["image"][0], data[34 - i, k, 34 - j])


def test_lps_nrrd_is_flipped_to_ras(breast1: tuple[Path, Path]) -> None:
    """breast1 is stored with voxel axes along L, P, S: RAS flips the first two axes."""
    data, _ = nrrd.read(str(breast1[0]))
    labels, _ = nrrd.read(str(breast1[1]))
    out = preprocess(preprocessing_spec(intensity="none", spacing=None, roi=(4, 4, 4)), *breast1)
    np.testing.assert_array_equal(out["image"][0], data[::-1, ::-1, :].astype(np.float32))
    np.testing.assert_array_equal(out["mask"][0], labels[::-1, ::-1, :])
    assert nib.aff2axcodes(out["affine"]) == ("R", "A", "S")


# ----------------------------------------------------------------------------------------- intensity


def test_ct_window_maps_minus_175_to_0_and_250_to_1_and_clips(tmp_path: Path) -> None:
    hu = np.array([-1000.0, -175.0, 0.0, 37.5, 250.0, 1000.0], dtype=np.float32)
    volume = np.broadcast_to(hu[:, None, None], (6, 8, 8)).copy()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "ct.nii.gz")
    spec = preprocessing_spec(image_modality="CT", spacing=None, roi=(4, 4, 4))
    assert [s["op"] for s in spec] == ["load", "orientation", "window", "pad"]
    out = preprocess(spec, tmp_path / "ct.nii.gz")
    expected = np.array([0.0, 0.0, 175.0 / 425.0, 212.5 / 425.0, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(out["image"][0, :, 0, 0], expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out["image"][0, :, 5, 7], expected, rtol=0, atol=1e-7)


def test_mr_zscore_over_nonzero_voxels(hippo_case: tuple[Path, Path]) -> None:
    out = preprocess(spec_without_pad_effect(image_modality="MR"), hippo_case[0])
    data = np.asarray(nib.load(hippo_case[0]).dataobj).astype(np.float32)
    np.testing.assert_allclose(out["image"][0], zscore_nonzero(data), rtol=0, atol=1e-5)
    assert (out["image"][0][data == 0] == 0).all()


# ------------------------------------------------------------------------------------------- spacing


@pytest.mark.parametrize("pixdim", [(1.5, 1.5, 1.5), (0.7, 1.3, 2.0)])
def test_spacing_is_trilinear_sampling_at_i_times_pixdim(
    hippo_case: tuple[Path, Path], pixdim: tuple
) -> None:
    """The reference a numpy predictor can use: output voxel i samples input coordinate i·pixdim/spacing
    (scipy order 1, edges clamped), and the output has round((n-1)·spacing/pixdim)+1 voxels."""
    spec = spec_without_pad_effect(intensity="none", spacing=pixdim)
    out = preprocess(spec, hippo_case[0], hippo_case[1])
    data = np.asarray(nib.load(hippo_case[0]).dataobj).astype(np.float64)
    shape = [round((n - 1) * 1.0 / p) + 1 for n, p in zip(data.shape, pixdim, strict=True)]
    assert out["image"].shape == (1, *shape) and out["mask"].shape == (1, *shape)
    grid = np.meshgrid(*[np.arange(n) * p for n, p in zip(shape, pixdim, strict=True)], indexing="ij")
    reference = map_coordinates(data, grid, order=1, mode="nearest")
    np.testing.assert_allclose(out["image"][0], reference, rtol=0, atol=1e-3)
    np.testing.assert_allclose(np.diag(out["affine"])[:3], pixdim)
    np.testing.assert_allclose(out["affine"][:3, 3], nib.load(hippo_case[0]).affine[:3, 3])
    assert set(np.unique(out["mask"])) <= {0, 1, 2} and out["mask"].dtype == np.int64


# ------------------------------------------------------------------------------- crop and pad


def test_pad_is_symmetric_to_the_roi_with_the_background_value(hippo_case: tuple[Path, Path]) -> None:
    spec = preprocessing_spec(intensity="none", roi=(48, 48, 48))
    out = preprocess(spec, hippo_case[0], hippo_case[1])
    data = np.asarray(nib.load(hippo_case[0]).dataobj).astype(np.float32)
    labels = np.asarray(nib.load(hippo_case[1]).dataobj)
    assert out["image"].shape == (1, 48, 51, 48)  # 35 → 48 (6 before, 7 after); 51 is kept
    np.testing.assert_array_equal(out["image"][0, 6:41, :, 6:41], data)
    np.testing.assert_array_equal(out["mask"][0, 6:41, :, 6:41], labels)
    padded = np.ones(out["image"].shape[1:], dtype=bool)
    padded[6:41, :, 6:41] = False
    assert (out["image"][0][padded] == 0).all() and (out["mask"][0][padded] == 0).all()


def test_crop_foreground_keeps_the_bounding_box_plus_margin(tmp_path: Path) -> None:
    volume = np.zeros((20, 22, 24), dtype=np.float32)
    volume[5:9, 3:15, 10:12] = np.arange(1, 4 * 12 * 2 + 1, dtype=np.float32).reshape(4, 12, 2)
    mask = (volume > 40).astype(np.uint8)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "fg.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "fg_mask.nii.gz")
    spec = preprocessing_spec(
        intensity="none", spacing=None, roi=(2, 2, 2), crop_foreground=True, foreground_margin=2
    )
    out = preprocess(spec, tmp_path / "fg.nii.gz", tmp_path / "fg_mask.nii.gz")
    np.testing.assert_array_equal(out["image"][0], volume[3:11, 1:17, 8:14])
    np.testing.assert_array_equal(out["mask"][0], mask[3:11, 1:17, 8:14])
    np.testing.assert_allclose(out["affine"][:3, 3], [3.0, 1.0, 8.0])  # the crop moves the origin


# --------------------------------------------------------------------------------------------- spec


def test_spec_is_json_and_numbers_are_normalised() -> None:
    spec = preprocessing_spec(image_modality="CT", window=(-175, 250), spacing=(1, 1, 2))
    assert json.loads(json.dumps(spec)) == spec
    window = next(s for s in spec if s["op"] == "window")
    assert window == {
        "op": "window",
        "a_min": -175.0,
        "a_max": 250.0,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    }
    as_ints = json.loads(json.dumps(spec).replace("-175.0", "-175"))
    assert spec_hash(as_ints) == spec_hash(spec)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda s: s.insert(0, {"op": "blur", "sigma": 1.0}), "unknown preprocessing op 'blur'"),
        (lambda s: s[2].pop("mask_mode"), "missing mask_mode"),
        (lambda s: s[2].update(extra=1), "unknown extra"),
        (lambda s: s[2].update(mask_mode="bilinear"), "mask_mode must be 'nearest'"),
        (lambda s: s[2].update(pixdim=[1.0, 0.0, 1.0]), "pixdim must be finite and > 0"),
        (lambda s: s[3].update(a_max=-200.0), "a_max must exceed a_min"),
        (lambda s: s[3].update(clip="yes"), "clip must be true or false"),
        (lambda s: s.reverse(), "comes after"),
        (lambda s: s.pop(0), "starts with a 'load' step"),
        (lambda s: s.pop(), "ends with a 'pad' step"),
        (
            lambda s: s.insert(4, {"op": "zscore", "nonzero": True, "channel_wise": True}),
            "two intensity steps",
        ),
        (lambda s: s[1].update(axcodes="LPS"), "orients volumes to 'RAS'"),
    ],
)
def test_invalid_specs_are_refused(edit, words: str) -> None:
    spec = preprocessing_spec(image_modality="CT")
    edit(spec)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_spec(spec)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="image_modality"):
        preprocessing_spec(image_modality="PET")
    with pytest.raises(ConfigError, match="roi must have three values"):
        preprocessing_spec(roi=(32, 32))
    with pytest.raises(ConfigError, match="intensity"):
        preprocessing_spec(intensity="minmax")


# -------------------------------------------------------------------------------------------- cache


def test_cache_reuses_an_unchanged_spec_and_never_a_stale_one(
    tmp_path: Path, hippo_case: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_read = transforms_module.read_volume

    def counting_read(path):  # type: ignore[no-untyped-def]
        reads.append(str(path))
        return real_read(path)

    monkeypatch.setattr(transforms_module, "read_volume", counting_read)
    cache = tmp_path / "cache"
    image = tmp_path / "image.nii.gz"
    image.write_bytes(hippo_case[0].read_bytes())
    spec = preprocessing_spec(image_modality="CT", roi=(40, 56, 40))

    first = preprocess(spec, image, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1 and len(reads) == 1
    again = preprocess(spec, image, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1 and len(reads) == 1  # read from the cache, not the file
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["affine"], again["affine"])
    assert again["image"].dtype == np.float32 and again["affine"].dtype == np.float64

    changed = [dict(s) for s in spec]
    next(s for s in changed if s["op"] == "window")["a_max"] = 100.0
    windowed = preprocess(changed, image, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and len(reads) == 2
    assert windowed["image"].max() == 1.0 and not np.array_equal(windowed["image"], first["image"])
    preprocess(changed, image, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and len(reads) == 2

    image.write_bytes(hippo_case[1].read_bytes())  # the file is replaced: its stamp changes
    preprocess(spec, image, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3 and len(reads) == 3


def test_spec_hash_sees_settings_that_monai_json_hashing_of_transforms_does_not(
    tmp_path: Path, hippo_case: tuple[Path, Path]
) -> None:
    spec_a = preprocessing_spec(image_modality="CT")
    spec_b = preprocessing_spec(image_modality="CT", window=(-100.0, 300.0))
    item = [{"image": str(hippo_case[0])}]

    def transform_hash(spec: list[dict], hashing) -> str:  # type: ignore[no-untyped-def]
        return PersistentDataset(
            item, build_pipeline(spec), cache_dir=None, hash_transform=hashing
        ).transform_hash

    assert transform_hash(spec_a, json_hashing) == transform_hash(spec_b, json_hashing)
    assert transform_hash(spec_a, SpecHash(spec_a)) != transform_hash(spec_b, SpecHash(spec_b))


def test_preprocess_raises_the_readers_data_error_with_and_without_cache(
    tmp_path: Path, broken_volumes: dict[str, Path]
) -> None:
    spec = preprocessing_spec()
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(CorruptFileError) as raised:
            preprocess(spec, broken_volumes["truncated_gz"], cache_dir=cache)
        assert raised.value.path == str(broken_volumes["truncated_gz"])
        with pytest.raises(InvalidVolumeError, match="does not match its image"):
            preprocess(spec, broken_volumes["image"], broken_volumes["mask_shifted"], cache_dir=cache)
    with pytest.raises(InvalidVolumeError, match="the preprocessing expects 2"):
        preprocess(preprocessing_spec(channels=2), broken_volumes["image"])


# -------------------------------------------------------------------------------------------- views


def find_offset(big: np.ndarray, small: np.ndarray) -> tuple[int, int, int]:
    """Where ``small`` (C, h, w, d) sits in ``big`` (C, H, W, D); asserts there is exactly one place."""
    hits = []
    _, h, w, d = small.shape
    for i in range(big.shape[1] - h + 1):
        for j in range(big.shape[2] - w + 1):
            for k in range(big.shape[3] - d + 1):
                if np.array_equal(big[:, i : i + h, j : j + w, k : k + d], small):
                    hits.append((i, j, k))
    assert len(hits) == 1, hits
    return hits[0]


@pytest.fixture(scope="module")
def sample(hippo_case: tuple[Path, Path]) -> dict:
    return preprocess(preprocessing_spec(roi=(32, 32, 32)), hippo_case[0], hippo_case[1])


def test_view_is_a_roi_crop_of_image_and_mask_at_the_same_place(sample: dict) -> None:
    views = volume_views((32, 32, 32), intensity_scale=0, intensity_shift=0, noise_std=0)
    offsets = set()
    for seed in range(4):
        views.set_random_state(seed=seed)
        view = views(dict(sample))
        assert view["image"].shape == (1, 32, 32, 32) and view["mask"].shape == (1, 32, 32, 32)
        assert isinstance(view["image"], np.ndarray)
        offset = find_offset(sample["image"], view["image"])
        i, j, k = offset
        np.testing.assert_array_equal(view["mask"], sample["mask"][:, i : i + 32, j : j + 32, k : k + 32])
        offsets.add(offset)
    assert len(offsets) > 1  # the position is random


def test_views_are_reproducible_from_the_seed_and_leave_global_generators_alone(sample: dict) -> None:
    views = volume_views((32, 32, 32), flip_axes=(1, 2))
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    views.set_random_state(seed=7)
    a = views(dict(sample))
    views.set_random_state(seed=7)
    b = views(dict(sample))
    views.set_random_state(seed=8)
    c = views(dict(sample))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_flips_only_along_the_allowed_axis(sample: dict) -> None:
    views = volume_views(
        (32, 32, 32), flip_axes=(2,), flip_prob=0.5, intensity_scale=0, intensity_shift=0, noise_std=0
    )
    flipped = 0
    for seed in range(8):
        views.set_random_state(seed=seed)
        view = views(dict(sample))
        try:
            find_offset(sample["image"], view["image"])
        except AssertionError:
            unflipped = view["image"][:, :, :, ::-1]  # spatial axis 2 = array axis 3 (inferior-superior)
            i, j, k = find_offset(sample["image"], unflipped)
            np.testing.assert_array_equal(
                view["mask"][:, :, :, ::-1], sample["mask"][:, i : i + 32, j : j + 32, k : k + 32]
            )
            flipped += 1
    assert 0 < flipped < 8


def test_intensity_view_steps_change_values_by_the_documented_amounts(sample: dict) -> None:
    scale = volume_views(
        (32, 32, 32), intensity_scale=0.1, intensity_shift=0, noise_std=0, intensity_prob=1.0
    )
    shift = volume_views(
        (32, 32, 32), intensity_scale=0, intensity_shift=0.1, noise_std=0, intensity_prob=1.0
    )
    for seed in range(3):
        scale.set_random_state(seed=seed)
        view = scale(dict(sample))
        base = sample["image"][(slice(None), *_where(sample["mask"], view["mask"]))]
        nonzero = base != 0
        factor = view["image"][nonzero] / base[nonzero]
        assert np.ptp(factor) < 1e-5 and 0.9 <= factor.mean() <= 1.1
        shift.set_random_state(seed=seed)
        view = shift(dict(sample))
        base = sample["image"][(slice(None), *_where(sample["mask"], view["mask"]))]
        offset = view["image"] - base
        assert np.ptp(offset) < 1e-5 and -0.1 <= offset.mean() <= 0.1


def _where(full_mask: np.ndarray, crop_mask: np.ndarray) -> tuple[slice, slice, slice]:
    i, j, k = find_offset(full_mask, crop_mask)
    return slice(i, i + 32), slice(j, j + 32), slice(k, k + 32)


def test_view_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="axis 0 is left-right"):
        volume_views((32, 32, 32), flip_axes=(0,))
    with pytest.raises(ConfigError, match="noise_prob"):
        volume_views((32, 32, 32), noise_prob=1.5)
    with pytest.raises(ConfigError, match="noise_std"):
        volume_views((32, 32, 32), noise_std=-1.0)
