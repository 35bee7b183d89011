"""The numpy X-ray preprocessing (spec, antialiased resize, letterbox geometry) and the view maths, against
torch/Pillow references and closed forms; and that the predictor's side imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.errors import ConfigError
from modalities.xray.readers import read_xray
from modalities.xray.transforms import (
    Geometry,
    adjust_intensity,
    check_spec,
    letterbox,
    preprocess_file,
    preprocess_pixels,
    preprocessing_spec,
    resize,
    resize_weights,
    warp_affine,
    warp_matrix,
)

SIZES = [((512, 420), (224, 184)), ((100, 80), (224, 179)), ((37, 53), (19, 64)), ((61, 61), (61, 61))]


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_resize_matches_torch_antialias_and_pillow_bilinear(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    x = np.random.default_rng(0).random(shape)
    ours = resize(x, size)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=size, mode="bilinear", antialias=True, align_corners=False
    )[0, 0].numpy()
    pillow = np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize(size[::-1], Image.BILINEAR))
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours, pillow, atol=1e-5)


def test_resize_weights_rows_sum_to_one_and_shrink_by_two_is_a_box_like_filter() -> None:
    weights = resize_weights(8, 4).toarray()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # halving: centre of output 1 is input coordinate 3.0; support 2 → weights 1/8, 3/8, 3/8, 1/8 on 1..4
    np.testing.assert_allclose(weights[1], [0, 1 / 8, 3 / 8, 3 / 8, 1 / 8, 0, 0, 0])
    # edges renormalised: output 0 sees inputs 0, 1, 2 with 3/8, 3/8, 1/8 → divided by 7/8
    np.testing.assert_allclose(weights[0], [3 / 7, 3 / 7, 1 / 7, 0, 0, 0, 0, 0])


def test_letterbox_geometry_padding_and_point_mapping() -> None:
    x = np.random.default_rng(1).random((100, 50)).astype(np.float32)
    out, geometry = letterbox(x, (64, 64), pad_value=0.25)
    assert geometry == Geometry((100, 50), (64, 32), (64, 64), (0, 16))
    np.testing.assert_array_equal(out[:, :16], 0.25)
    np.testing.assert_array_equal(out[:, 48:], 0.25)
    np.testing.assert_allclose(out[:, 16:48], resize(x, (64, 32)), atol=0)
    corners = geometry.map_points(np.array([[0.0, 0.0], [50.0, 100.0], [25.0, 50.0]]))
    np.testing.assert_allclose(corners, [[16, 0], [48, 64], [32, 32]])


def test_heatmap_goes_where_its_point_goes() -> None:
    heatmap = np.zeros((90, 120))
    heatmap[30, 80] = 1.0  # pixel (row 30, col 80): centre (x, y) = (80.5, 30.5)
    geometry = letterbox(np.ones((90, 120)) * np.arange(120), (48, 48))[1]
    on_grid = geometry.apply_heatmap(heatmap)
    assert on_grid is not None and abs(float(on_grid.sum()) - 1) < 1e-6
    rows, cols = np.indices(on_grid.shape)
    centroid = np.array([(cols * on_grid).sum() + 0.5, (rows * on_grid).sum() + 0.5])
    np.testing.assert_allclose(centroid, geometry.map_points(np.array([80.5, 30.5])), atol=0.05)
    assert geometry.apply_heatmap(np.zeros((90, 120))) is None
    with pytest.raises(ConfigError):
        geometry.apply_heatmap(-heatmap)


def test_preprocess_file_equals_read_letterbox_normalize(covid_jpegs: list[Path]) -> None:
    steps = preprocessing_spec(96, normalize=(0.5, 0.25))
    image, geometry, raw = preprocess_file(covid_jpegs[1], steps)
    pixels = read_xray(covid_jpegs[1]).pixels
    boxed, expected_geometry = letterbox(pixels, (96, 96))
    assert geometry == expected_geometry and raw.shape == pixels.shape
    np.testing.assert_allclose(image[0], (boxed - 0.5) / 0.25, atol=1e-6)
    assert image.shape == (1, 96, 96) and image.dtype == np.float32
    assert json.loads(json.dumps(steps)) == steps


@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "letterbox", "size": [64, 64]}, {"op": "read"}],
        [{"op": "read"}, {"op": "normalize", "mean": 0, "std": 1}],
        [{"op": "read"}, {"op": "letterbox", "size": [64, 64]}, {"op": "flip"}],
        [{"op": "read"}, {"op": "letterbox", "size": [64, 64], "pad_value": 2.0}],
        [{"op": "read"}, {"op": "letterbox", "size": [64, 64]}, {"op": "normalize", "mean": 0, "std": 0}],
        [{"op": "read", "voi": "lung"}, {"op": "letterbox", "size": [64, 64]}],
        [{"op": "read"}, {"op": "letterbox", "size": [4, 64]}],
    ],
)
def test_bad_specs_are_refused(steps: list[dict[str, object]]) -> None:
    with pytest.raises(ConfigError):
        check_spec(steps)


def test_preprocess_pixels_without_normalize_keeps_unit_range() -> None:
    x = np.random.default_rng(2).random((70, 90)).astype(np.float32)
    out, _ = preprocess_pixels(x, preprocessing_spec([40, 60]))
    assert out.shape == (1, 40, 60) and out.min() >= 0.0 and out.max() <= 1.0


# --- view maths ------------------------------------------------------------------------------------------


def test_warp_rotation_direction_shift_and_identity() -> None:
    x = np.random.default_rng(3).random((40, 40))
    np.testing.assert_allclose(warp_affine(x, 90.0), np.rot90(x), atol=1e-6)  # counter-clockwise
    np.testing.assert_allclose(warp_affine(x, -90.0), np.rot90(x, -1), atol=1e-6)
    moved = warp_affine(x, 0.0, 1.0, (3, -2), cval=-1.0)
    np.testing.assert_allclose(moved[3:, :-2], x[:-3, 2:], atol=1e-6)
    assert (moved[:3] == -1).all() and (moved[:, -2:] == -1).all()
    np.testing.assert_allclose(warp_affine(x), x, atol=1e-6)


def test_warp_matrix_maps_content_points_as_documented() -> None:
    shape, angle, scale, shift = (50, 70), 7.0, 1.08, (2.5, -4.0)
    matrix, offset = warp_matrix(shape, angle, scale, shift)
    centre = (np.array(shape) - 1) / 2
    theta = np.radians(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    p = np.array([11.0, 52.0])  # a content point (row, col) of the input
    lands = centre + scale * rotation @ (p - centre) + np.array(shift)
    np.testing.assert_allclose(matrix @ lands + offset, p, atol=1e-9)


def test_adjust_intensity_closed_form() -> None:
    x = np.array([[0.0, 0.2], [0.6, 1.0]])
    mean = x.mean()
    expected = np.clip((x - mean) * 1.1 + mean + 0.05, 0, 1) ** 0.8
    np.testing.assert_allclose(adjust_intensity(x, 1.1, 0.05, 0.8), expected, atol=1e-6)
    np.testing.assert_allclose(adjust_intensity(x), x, atol=1e-7)


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "lightning", "pytorch_lightning", "monai", "torchmetrics"}:
            raise ImportError(f"{name} is blocked: the predictor must not need it")
sys.meta_path.insert(0, Block())
"""


def test_reader_and_preprocessing_run_without_torch(covid_jpegs: list[Path], tmp_path: Path) -> None:
    script = (
        BLOCK_TORCH
        + f"""
import json
from modalities.xray.transforms import preprocess_file, preprocessing_spec
image, geometry, raw = preprocess_file({str(covid_jpegs[0])!r}, preprocessing_spec(64))
blocked = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "lightning", "monai"}})
print("RESULT", json.dumps({{"shape": list(image.shape), "imported": blocked}}))
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert payload == {"shape": [1, 64, 64], "imported": []}
