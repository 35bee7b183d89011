"""The numpy sliding-window inference against MONAI's, against a slow per-voxel reference, and in closed
form (window starts, Gaussian weights, identity predictors)."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference as monai_sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from export.sliding_window import (
    dense_window_slices,
    importance_map,
    scan_interval,
    sliding_window_inference,
)
from medcl.errors import ConfigError


def _conv_net(in_channels: int, seed: int = 0) -> torch.nn.Module:
    """Two 3×3×3 convolutions: outputs depend on a 5-voxel neighbourhood, so window borders matter."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv3d(4, 3, 3, padding=1),
    ).eval()


def _numpy_fn(net: torch.nn.Module, calls: list[int] | None = None):
    def predict(windows: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(windows))
        with torch.no_grad():
            return net(torch.from_numpy(windows)).numpy()

    return predict


def _monai(image: np.ndarray, roi, net, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return monai_sliding_window_inference(torch.from_numpy(image), roi, predictor=net, **kwargs).numpy()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize(
    ("shape", "roi"),
    [
        ((2, 2, 19, 23, 11), (8, 10, 16)),  # last axis shorter than the window: padded, then cropped
        ((1, 2, 7, 31, 13), (9, 9, 9)),  # odd sizes, first axis padded
        ((2, 2, 17, 9, 12), (17, 4, 5)),  # a window spanning a whole axis
    ],
)
def test_matches_monai_on_odd_sized_random_volumes(
    shape: tuple[int, ...], roi: tuple[int, ...], mode: str, overlap: float
) -> None:
    net = _conv_net(2)
    image = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    expected = _monai(image, roi, net, sw_batch_size=3, overlap=overlap, mode=mode)
    got = sliding_window_inference(image, roi, _numpy_fn(net), overlap=overlap, mode=mode, sw_batch_size=3)
    assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # unbatched input, other batch size: the same numbers
    single = sliding_window_inference(
        image[0], roi, _numpy_fn(net), overlap=overlap, mode=mode, sw_batch_size=1
    )
    np.testing.assert_allclose(single, expected[0], rtol=0, atol=1e-5)


@pytest.mark.shared_data
@pytest.mark.parametrize(("mode", "overlap"), [("constant", 0.0), ("constant", 0.5), ("gaussian", 0.25)])
def test_matches_monai_on_a_real_hippocampus_volume(shared_data: Path, mode: str, overlap: float) -> None:
    path = shared_data / "msd_hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)  # (35, 51, 35) MRI crop
    image = ((data - data.mean()) / data.std())[None]
    net = _conv_net(1, seed=1)
    roi = (16, 24, 16)
    expected = _monai(image[None], roi, net, sw_batch_size=4, overlap=overlap, mode=mode)[0]
    got = sliding_window_inference(image, roi, _numpy_fn(net), overlap=overlap, mode=mode, sw_batch_size=4)
    assert got.shape == (3, *data.shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "roi", "overlap", "starts"),
    [
        (10, 4, 0.25, [0, 3, 6]),  # step int(4·0.75) = 3
        (10, 4, 0.5, [0, 2, 4, 6]),
        (10, 4, 0.0, [0, 4, 6]),  # the last window shifted back to end on the border
        (10, 10, 0.5, [0]),  # the window spans the axis
        (7, 3, 0.9, [0, 1, 2, 3, 4]),  # int(3·0.1) = 0 → step 1
    ],
)
def test_window_starts_by_hand(size: int, roi: int, overlap: float, starts: list[int]) -> None:
    windows = dense_window_slices((size,), (roi,), scan_interval((size,), (roi,), (overlap,)))
    assert [w[0].start for w in windows] == starts
    assert all(w[0].stop - w[0].start == roi for w in windows)


def test_window_placement_equals_monai_on_many_grids() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = tuple(int(s) for s in rng.integers(5, 60, 3))
        roi = tuple(int(min(r, s)) for r, s in zip(rng.integers(2, 40, 3), size, strict=True))
        overlap = tuple(float(o) for o in rng.choice([0.0, 0.25, 0.5, 0.6, 0.75], 3))
        interval = scan_interval(size, roi, overlap)
        assert interval == _get_scan_interval(size, roi, 3, overlap)
        assert dense_window_slices(size, roi, interval) == dense_patch_slices(size, roi, interval)


def test_importance_map_closed_form_and_monai() -> None:
    # roi 16, sigma_scale 0.125 → σ = 2: offsets −7.5 … 7.5; exp(−7.5²/8) ≈ 8.8e-4 is clamped to 1e-3
    x = np.arange(16) - 7.5
    profile = np.exp(-(x**2) / 8.0)
    expected_1d = np.maximum(profile, 1e-3)
    np.testing.assert_allclose(importance_map((16,), "gaussian"), expected_1d, rtol=1e-6)
    # 3-D: the outer product of the 1-D profiles (σ per axis), then the same clamp
    roi = (16, 5, 9)
    profiles = [np.exp(-((np.arange(n) - (n - 1) / 2) ** 2) / (2 * (n * 0.25) ** 2)) for n in roi]
    product = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    weights = importance_map(roi, "gaussian", sigma_scale=0.25)
    np.testing.assert_allclose(weights, np.maximum(product, max(product.min(), 1e-3)), rtol=1e-6)
    assert weights.max() <= 1.0 and weights.dtype == np.float32
    np.testing.assert_array_equal(importance_map(roi, "constant"), np.ones(roi, np.float32))
    for sigma in (0.125, (0.1, 0.3, 0.2)):
        reference = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma).numpy()
        np.testing.assert_allclose(importance_map(roi, "gaussian", sigma), reference, rtol=1e-6, atol=1e-7)


def _slow_blend(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, mode: str) -> np.ndarray:
    """Per voxel: Σ_w weight_w(voxel)·id_w / Σ_w weight_w(voxel), over the windows w covering it, where
    window w predicts the constant id_w = its index; written as plain loops."""
    windows = dense_window_slices(image_shape, roi, scan_interval(image_shape, roi, (overlap,) * 3))
    weights = importance_map(roi, mode).astype(np.float64)
    out = np.zeros(image_shape)
    for voxel in itertools.product(*(range(n) for n in image_shape)):
        numerator = denominator = 0.0
        for index, window in enumerate(windows):
            if all(s.start <= v < s.stop for s, v in zip(window, voxel, strict=True)):
                weight = weights[tuple(v - s.start for s, v in zip(window, voxel, strict=True))]
                numerator += weight * index
                denominator += weight
        out[voxel] = numerator / denominator
    return out


@pytest.mark.parametrize(("overlap", "mode"), [(0.5, "gaussian"), (0.25, "constant"), (0.0, "gaussian")])
def test_blending_equals_a_slow_per_voxel_reference(overlap: float, mode: str) -> None:
    shape, roi = (11, 9, 7), (5, 4, 6)
    counter = iter(range(10**6))

    def window_index(windows: np.ndarray) -> np.ndarray:  # called in window order, batch after batch
        ids = np.array([next(counter) for _ in range(len(windows))], dtype=np.float32)
        return np.broadcast_to(ids[:, None, None, None, None], (len(windows), 1, *roi)).copy()

    got = sliding_window_inference(
        np.zeros((1, *shape), np.float32), roi, window_index, overlap=overlap, mode=mode, sw_batch_size=3
    )
    np.testing.assert_allclose(got[0], _slow_blend(shape, roi, overlap, mode), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["constant", "reflect", "replicate", "circular"])
def test_an_identity_predictor_returns_the_image(padding_mode: str) -> None:
    """Blending identical values gives them back, whatever the weights, overlap and padding."""
    image = np.random.default_rng(1).standard_normal((2, 6, 13, 20)).astype(np.float32)
    for overlap, mode in [(0.0, "constant"), (0.5, "gaussian"), (0.25, "gaussian")]:
        got = sliding_window_inference(
            image, (8, 8, 8), lambda w: w, overlap=overlap, mode=mode, padding_mode=padding_mode, cval=3.0
        )
        np.testing.assert_allclose(got, image, rtol=1e-6, atol=1e-6)


def test_windows_are_batched_by_sw_batch_size() -> None:
    calls: list[int] = []
    image = np.zeros((2, 1, 16, 16, 16), np.float32)  # 2 images × 8 windows of 8³ without overlap
    sliding_window_inference(image, 8, _numpy_fn(_conv_net(1), calls), overlap=0.0, sw_batch_size=5)
    assert calls == [5, 5, 5, 1]


def test_bad_settings_and_bad_predictors_raise() -> None:
    image = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="overlap must be >= 0 and < 1"):
        sliding_window_inference(image, 4, lambda w: w, overlap=1.0)
    with pytest.raises(ConfigError, match="mode must be one of"):
        sliding_window_inference(image, 4, lambda w: w, mode="linear")
    with pytest.raises(ConfigError, match="padding_mode"):
        sliding_window_inference(image, 4, lambda w: w, padding_mode="wrap")
    with pytest.raises(ConfigError, match=r"does not fit a 3-D roi_size"):
        sliding_window_inference(np.zeros((8, 8, 8), np.float32), (4, 4, 4), lambda w: w)
    with pytest.raises(ConfigError, match=r"predict_fn returned shape \(4, 1, 2, 2, 2\)"):
        sliding_window_inference(image, 4, lambda w: w[:, :, ::2, ::2, ::2])
    with pytest.raises(ConfigError, match="overlap must be one number or 3 numbers"):
        sliding_window_inference(image, 4, lambda w: w, overlap=(0.1, 0.2))
