"""VoCo's crop geometry and VoCoCropsd: labels checked exactly on hand-computed layouts, against a loop
written like the reference's ``get_position_label``, and on real MRI volumes traced back to the file."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medcl.errors import ConfigError
from medcl.objectives.voco_geometry import (
    BASES_KEY,
    CROPS_KEY,
    OVERLAP_KEY,
    VoCoCropsd,
    base_corners,
    check_grid,
    extract_crops,
    fit_volume,
    is_grid_aligned,
    overlap_labels,
    region_shape,
    sample_crop_corners,
    sample_fit_offset,
)

# --------------------------------------------------------------------------------------------------
# slow reference: the reference repository's loop, on corners instead of centres, in exact fractions
# --------------------------------------------------------------------------------------------------


def reference_labels(corner: tuple[int, int], n: int, r: int) -> list[Fraction]:
    x_min, y_min = corner
    x_max, y_max = x_min + r, y_min + r
    labels = []
    for i in range(n):
        for j in range(n):
            dx = min((i + 1) * r, x_max) - max(i * r, x_min)
            dy = min((j + 1) * r, y_max) - max(j * r, y_min)
            labels.append(Fraction(0) if dx <= 0 or dy <= 0 else Fraction(dx * dy, r * r))
    return labels


# --------------------------------------------------------------------------------------------------
# labels: hand-computed layouts
# --------------------------------------------------------------------------------------------------

Q, H = 0.25, 0.5


@pytest.mark.parametrize(
    ("corner", "expected"),
    [
        ((2, 2), [Q, Q, Q, Q]),  # the centre: a quarter of each base
        ((0, 0), [1, 0, 0, 0]),  # exactly base 0
        ((4, 4), [0, 0, 0, 1]),  # exactly base 3 (the last position)
        ((0, 4), [0, 1, 0, 0]),  # base 1 = (i=0, j=1): second axis moves first
        ((4, 0), [0, 0, 1, 0]),
        ((0, 2), [H, H, 0, 0]),  # half on base 0, half on base 1
        ((2, 0), [H, 0, H, 0]),  # half on base 0, half on base 2
        ((4, 2), [0, 0, H, H]),
        ((1, 3), [3 / 16, 9 / 16, 1 / 16, 3 / 16]),  # x: 3|1 voxels, y: 1|3 voxels
        ((3, 0), [1 / 4, 0, 3 / 4, 0]),
    ],
)
def test_labels_n2_r4_hand_computed(corner: tuple[int, int], expected: list[float]) -> None:
    labels = overlap_labels([corner], n=2, r=4)
    assert labels.shape == (1, 4)
    assert labels.dtype == np.float64
    np.testing.assert_array_equal(labels[0], np.array(expected, dtype=np.float64))


def test_labels_n3_r2_hand_computed() -> None:
    corners = [(1, 3), (2, 2), (0, 1), (4, 3)]
    expected = np.zeros((4, 9))
    expected[0, [1, 2, 4, 5]] = 0.25  # x 1..2 → rows 0,1; y 3..4 → cols 1,2
    expected[1, 4] = 1.0  # the centre base
    expected[2, [0, 1]] = 0.5
    expected[3, [7, 8]] = 0.5  # x 4..5 → row 2; y 3..4 → cols 1,2
    np.testing.assert_array_equal(overlap_labels(corners, n=3, r=2), expected)


def test_base_corners_order() -> None:
    np.testing.assert_array_equal(base_corners(2, 4), [[0, 0], [0, 4], [4, 0], [4, 4]])
    np.testing.assert_array_equal(base_corners(3, 2)[[0, 1, 3, 8]], [[0, 0], [0, 2], [2, 0], [4, 4]])
    # a base crop is labelled one-hot with its own index
    np.testing.assert_array_equal(overlap_labels(base_corners(3, 5), 3, 5), np.eye(9))


def test_region_shape() -> None:
    assert region_shape(2, 32) == (64, 64, 32)
    assert region_shape(3, 64) == (192, 192, 64)


# --------------------------------------------------------------------------------------------------
# labels: properties
# --------------------------------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, np.ndarray]:
    n = draw(st.integers(2, 5))
    r = draw(st.integers(2, 9))
    k = draw(st.integers(1, 6))
    high = (n - 1) * r
    corners = draw(st.lists(st.tuples(st.integers(0, high), st.integers(0, high)), min_size=k, max_size=k))
    return n, r, np.array(corners, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_label_properties(layout: tuple[int, int, np.ndarray]) -> None:
    n, r, corners = layout
    labels = overlap_labels(corners, n, r)
    assert labels.shape == (len(corners), n * n)
    assert (labels >= 0).all()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    bases = base_corners(n, r)
    for q, (x, y) in enumerate(corners.tolist()):
        # the reference loop's exact fractions, correctly rounded
        assert labels[q].tolist() == [float(f) for f in reference_labels((x, y), n, r)]
        for b, (bx, by) in enumerate(bases.tolist()):
            disjoint = x + r <= bx or bx + r <= x or y + r <= by or by + r <= y
            assert (labels[q, b] == 0) == disjoint
        # at most 2 bases per axis, 4 in all, and exactly 1 when on the grid
        n_overlapped = int((labels[q] > 0).sum())
        assert n_overlapped == (1 + (x % r != 0)) * (1 + (y % r != 0))
        assert (n_overlapped == 1) == bool(is_grid_aligned([(x, y)], r)[0])


def test_labels_reject_crops_outside_the_region() -> None:
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        overlap_labels([(5, 0)], n=2, r=4)
    with pytest.raises(ValueError, match="corner"):
        overlap_labels([(-1, 0)], n=2, r=4)
    with pytest.raises(ValueError, match="integer"):
        overlap_labels(np.array([[0.5, 0.0]]), n=2, r=4)
    with pytest.raises(ValueError, match=r"\(k, 2\)"):
        overlap_labels(np.zeros((0, 2), dtype=int), n=2, r=4)


@pytest.mark.parametrize(("n", "r", "k"), [(1, 4, 2), (2, 1, 2), (2, 4, 0), (True, 4, 2), (2, 4.0, 2)])
def test_degenerate_grids_are_config_errors(n: int, r: int, k: int) -> None:
    with pytest.raises(ConfigError):
        check_grid(n, r, k)


# --------------------------------------------------------------------------------------------------
# random crop positions
# --------------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(2, 5), st.integers(1, 5))
def test_crop_corners_inside_and_never_all_on_the_grid(seed: int, n: int, r: int, k: int) -> None:
    corners = sample_crop_corners(np.random.RandomState(seed), n, r, k)
    assert corners.shape == (k, 2)
    assert corners.dtype == np.int64
    assert corners.min() >= 0
    assert corners.max() <= (n - 1) * r
    assert not is_grid_aligned(corners, r).all()


def test_single_crops_are_uniform_over_the_positions_off_the_grid() -> None:
    # n = 2, r = 2: corners in {0, 1, 2}²; the grid-aligned ones have both coordinates even.
    rng = np.random.RandomState(0)
    counts = Counter(tuple(sample_crop_corners(rng, 2, 2, 1)[0].tolist()) for _ in range(1000))
    off_grid = {(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)}
    assert set(counts) == off_grid  # every such position, the border ones included; none on the grid
    assert all(150 <= c <= 250 for c in counts.values()), counts  # 200 expected each


def test_only_the_all_aligned_draw_is_rejected() -> None:
    rng = np.random.RandomState(1)
    draws = [sample_crop_corners(rng, 2, 2, 2) for _ in range(300)]
    aligned = np.array([is_grid_aligned(c, 2) for c in draws])
    assert not aligned.all(axis=1).any()
    assert (
        aligned.any(axis=1).sum() > 50
    )  # one crop of the pair on the grid is allowed (P = 2·4/9·5/9 / (1 - 16/81))


def test_corners_use_only_the_given_generator() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = sample_crop_corners(np.random.RandomState(7), 3, 4, 5)
    b = sample_crop_corners(np.random.RandomState(7), 3, 4, 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# --------------------------------------------------------------------------------------------------
# fitting the volume to the region, and cutting crops
# --------------------------------------------------------------------------------------------------


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def test_extract_crops_are_the_slices() -> None:
    region = _volume((2, 6, 6, 3))
    crops = extract_crops(region, [(0, 0), (1, 2), (3, 3)], 3)
    assert crops.shape == (3, 2, 3, 3, 3)
    np.testing.assert_array_equal(crops[1], region[:, 1:4, 2:5, :])
    np.testing.assert_array_equal(crops[2], region[:, 3:6, 3:6, :])
    with pytest.raises(ValueError, match="region"):
        extract_crops(region[:, :, :, :2], [(0, 0)], 3)


def test_random_crop_of_a_larger_volume_is_a_window() -> None:
    volume = _volume((1, 10, 9, 7))
    rng = np.random.RandomState(3)
    seen = set()
    for _ in range(50):
        offset = sample_fit_offset(rng, (10, 9, 7), (8, 8, 4), "random_crop")
        assert offset is not None
        assert 0 <= offset[0] <= 2 and 0 <= offset[1] <= 1 and 0 <= offset[2] <= 3
        seen.add(offset)
        out = fit_volume(volume, (8, 8, 4), "random_crop", offset)
        x, y, z = offset
        np.testing.assert_array_equal(out, volume[:, x : x + 8, y : y + 8, z : z + 4])
    assert len(seen) > 10


def test_padding_is_symmetric_with_the_pad_value() -> None:
    volume = _volume((1, 5, 8, 2)) + 1.0  # values in [1, 2): padding is recognisable
    offset = sample_fit_offset(np.random.RandomState(0), (5, 8, 2), (8, 8, 4), "random_crop")
    assert offset == (0, 0, 0)  # nothing to choose once padded to exactly the region
    out = fit_volume(volume, (8, 8, 4), "random_crop", offset, pad_value=-3.0)
    assert out.shape == (1, 8, 8, 4)
    # axis 0: 3 missing → 1 before, 2 after; axis 2: 2 missing → 1 before, 1 after
    np.testing.assert_array_equal(out[:, 1:6, :, 1:3], volume)
    mask = np.ones(out.shape, dtype=bool)
    mask[:, 1:6, :, 1:3] = False
    assert (out[mask] == -3.0).all()


def test_center_crop_takes_the_middle_without_drawing() -> None:
    rng = np.random.RandomState(0)
    state = rng.get_state()[1].copy()
    offset = sample_fit_offset(rng, (11, 8, 3), (8, 8, 4), "center_crop")
    np.testing.assert_array_equal(rng.get_state()[1], state)
    assert offset == (1, 0, 0)  # 11 → 8: slack 3 → offset 1; depth padded 3 → 4
    volume = _volume((1, 11, 8, 3))
    out = fit_volume(volume, (8, 8, 4), "center_crop", offset)
    np.testing.assert_array_equal(out[:, :, :, 0:3], volume[:, 1:9, :, :])  # 1 missing: 0 before, 1 after
    assert (out[:, :, :, 3] == 0).all()


def test_resize_is_trilinear_with_aligned_corners() -> None:
    volume = _volume((2, 7, 5, 6))
    assert sample_fit_offset(np.random.RandomState(0), (7, 5, 6), (8, 8, 4), "resize") is None
    out = fit_volume(volume, (8, 8, 4), "resize", None)
    expected = F.interpolate(
        torch.from_numpy(volume)[None], size=(8, 8, 4), mode="trilinear", align_corners=True
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected[0].numpy(), rtol=0, atol=1e-6)


def test_unknown_fit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fit"):
        sample_fit_offset(np.random.RandomState(0), (4, 4, 4), (4, 4, 4), "stretch")
    with pytest.raises(ConfigError, match="fit"):
        VoCoCropsd(keys="image", fit="stretch")


# --------------------------------------------------------------------------------------------------
# VoCoCropsd
# --------------------------------------------------------------------------------------------------


def _check_sample(transform: VoCoCropsd, volume: np.ndarray, out: dict) -> None:
    """Every output traced back to the input with the offset and corners the transform drew."""
    n, r, k = transform.n, transform.r, transform.k
    c = volume.shape[0]
    assert out[BASES_KEY].shape == (n * n, c, r, r, r) and out[BASES_KEY].dtype == np.float32
    assert out[CROPS_KEY].shape == (k, c, r, r, r) and out[CROPS_KEY].dtype == np.float32
    assert out[OVERLAP_KEY].shape == (k, n * n) and out[OVERLAP_KEY].dtype == np.float32
    region = fit_volume(volume, transform.region, transform.fit, transform.fit_offset, transform.pad_value)
    # the bases tile the region
    tiled = np.zeros_like(region)
    for b, (x, y) in enumerate(base_corners(n, r).tolist()):
        tiled[:, x : x + r, y : y + r, :] = out[BASES_KEY][b]
    np.testing.assert_array_equal(tiled, region)
    corners = transform.crop_corners
    assert corners is not None
    for q, (x, y) in enumerate(corners.tolist()):
        np.testing.assert_array_equal(out[CROPS_KEY][q], region[:, x : x + r, y : y + r, :])
    np.testing.assert_array_equal(out[OVERLAP_KEY], overlap_labels(corners, n, r).astype(np.float32))


@pytest.mark.parametrize("fit", ["random_crop", "center_crop", "resize"])
def test_transform_outputs(fit: str) -> None:
    volume = _volume((2, 9, 7, 5))
    transform = VoCoCropsd(keys="image", n_bases_per_side=2, crop_size=4, n_random_crops=3, fit=fit)
    transform.set_random_state(seed=5)
    sample = {"image": volume, "patient_id": "p1"}
    out = transform(sample)
    _check_sample(transform, volume, out)
    assert out["patient_id"] == "p1" and out["image"] is volume  # the rest of the sample is untouched
    assert set(sample) == {"image", "patient_id"}  # the input dict is not modified
    assert transform.output_keys == (BASES_KEY, CROPS_KEY, OVERLAP_KEY)


def test_same_seed_same_output_other_seed_other_output() -> None:
    volume = _volume((1, 12, 12, 6))
    transform = VoCoCropsd(keys="image", n_bases_per_side=2, crop_size=4, n_random_crops=4)
    outputs = []
    for seed in (11, 11, 12):
        transform.set_random_state(seed=seed)
        outputs.append(transform({"image": volume}))
    for key in transform.output_keys:
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    assert any(not np.array_equal(outputs[0][key], outputs[2][key]) for key in transform.output_keys)


def test_transform_leaves_the_global_generators_alone() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    transform = VoCoCropsd(keys="image", n_bases_per_side=3, crop_size=2, n_random_crops=2)
    transform.set_random_state(seed=1)
    transform({"image": _volume((1, 9, 9, 9))})
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_transform_accepts_tensors() -> None:
    from monai.data import MetaTensor

    volume = _volume((1, 8, 8, 4))
    transform = VoCoCropsd(keys="image", n_bases_per_side=2, crop_size=4, n_random_crops=2)
    results = []
    for value in (volume, torch.from_numpy(volume), MetaTensor(torch.from_numpy(volume))):
        transform.set_random_state(seed=2)
        results.append(transform({"image": value}))
    for out in results[1:]:
        for key in transform.output_keys:
            assert isinstance(out[key], np.ndarray)
            np.testing.assert_array_equal(out[key], results[0][key])


def test_transform_errors() -> None:
    with pytest.raises(ConfigError, match=r"\(C, H, W, D\).*case\.nii"):
        VoCoCropsd(keys="image", crop_size=4)({"image": _volume((8, 8, 4)), "meta": {"path": "case.nii"}})
    with pytest.raises(ConfigError, match="exactly one"):
        VoCoCropsd(keys=["image", "mask"])
    with pytest.raises(ConfigError, match="n_bases_per_side"):
        VoCoCropsd(keys="image", n_bases_per_side=1)


# --------------------------------------------------------------------------------------------------
# real volumes (MSD hippocampus MRI crops, ~35 × 51 × 35)
# --------------------------------------------------------------------------------------------------


def _hippocampus(shared_data: Path, name: str) -> np.ndarray:
    path = shared_data / "msd_hippocampus" / "imagesTr" / name
    if not path.is_file():
        pytest.skip(f"{path} not found in the shared data folder")
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)[None]


@pytest.mark.parametrize(("n", "r"), [(2, 16), (2, 32), (3, 16)])
def test_real_mri_crops_trace_back_to_the_file(shared_data: Path, n: int, r: int) -> None:
    volume = _hippocampus(shared_data, "hippocampus_001.nii.gz")
    transform = VoCoCropsd(keys="image", n_bases_per_side=n, crop_size=r, n_random_crops=3, pad_value=-1.0)
    transform.set_random_state(seed=0)
    out = transform({"image": volume})
    _check_sample(transform, volume, out)
    # independently of fit_volume: every non-padded voxel of the region is the file's voxel
    offset = transform.fit_offset
    assert offset is not None
    region = np.zeros((1, *transform.region), dtype=np.float32)
    for b, (x, y) in enumerate(base_corners(n, r).tolist()):
        region[:, x : x + r, y : y + r, :] = out[BASES_KEY][b]
    # symmetric padding puts (missing // 2) voxels before the volume on each axis that is too short
    before = [max(0, t - s) // 2 for s, t in zip(volume.shape[1:], transform.region, strict=True)]
    n_inside = 0
    for point in np.ndindex(*transform.region):
        source = [p + o - b for p, o, b in zip(point, offset, before, strict=True)]
        inside = all(0 <= s < size for s, size in zip(source, volume.shape[1:], strict=True))
        n_inside += inside
        assert region[(0, *point)] == (volume[(0, *source)] if inside else -1.0)
    assert n_inside > 0.3 * np.prod(transform.region)
