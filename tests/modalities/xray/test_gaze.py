"""Gaze readers and heatmaps (modalities.xray.gaze) on hand-made files in the exact REFLACX and EGD-CXR
formats, and the annotation-derived priors on the real covid_cxr lung masks and boxes."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError, CorruptFileError, DataError, UnsupportedFormatError
from medcl.losses.gaze import pool_heatmaps_to_patches
from modalities.xray.adapter import XrayAdapter
from modalities.xray.gaze import (
    SOURCE_BOXES,
    SOURCE_EGD,
    SOURCE_LUNG_MASK,
    SOURCE_REFLACX,
    EgdGazeTable,
    GazeHeatmapProvider,
    ReflacxIndex,
    fixation_heatmap,
    heatmap_from_boxes,
    heatmap_from_mask,
    letterbox_geometry,
    lung_mask_path,
    pool_to_grid,
    read_egd_fixations,
    read_lung_boxes,
    read_lung_mask,
    read_reflacx_fixations,
    resize_heatmap,
    transform_heatmap_like_image,
)

# --- the exact file formats -------------------------------------------------------------------------

# REFLACX main_data/<id>/fixations.csv, all columns in the dataset's order
REFLACX_FIXATION_COLUMNS = [
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "pupil_area_normalized",
    "window_level",
    "window_width",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
    "xmin_in_screen_coordinates",
    "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
]
REFLACX_METADATA_COLUMNS = [
    "id",
    "split",
    "eye_tracking_data_discarded",
    "image",
    "dicom_id",
    "subject_id",
    "image_size_x",
    "image_size_y",
    "Atelectasis",
    "Consolidation",
    "Support devices",
    "Other",
]
# EGD-CXR fixations.csv (GazePoint export + the authors' mapping columns) and master_sheet.csv
EGD_FIXATION_COLUMNS = [
    "SESSION_ID",
    "MEDIA_ID",
    "DICOM_ID",
    "CNT",
    "TIME(in secs)",
    "TIMETICK(f=10000000)",
    "FPOGX",
    "FPOGY",
    "FPOGS",
    "FPOGD",
    "FPOGID",
    "FPOGV",
    "BPOGX",
    "BPOGY",
    "BPOGV",
    "LPMM",
    "RPMM",
    "X_ORIGINAL",
    "Y_ORIGINAL",
]
EGD_MASTER_COLUMNS = [
    "dicom_id",
    "path",
    "study_id",
    "patient_id",
    "stay_id",
    "gender",
    "anchor_age",
    "image_top_pad",
    "image_bottom_pad",
    "image_left_pad",
    "image_right_pad",
    "Normal",
    "CHF",
    "pneumonia",
]


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def reflacx_row(
    start: float, end: float, x: object, y: object, ang: tuple[float, float] = (6, 4), shown=(0, 0, 96, 64)
) -> dict[str, object]:
    return {
        "timestamp_start_fixation": start,
        "timestamp_end_fixation": end,
        "x_position": x,
        "y_position": y,
        "pupil_area_normalized": 0.93,
        "window_level": 0.5,
        "window_width": 1.0,
        "angular_resolution_x_pixels_per_degree": ang[0],
        "angular_resolution_y_pixels_per_degree": ang[1],
        "xmin_shown_from_image": shown[0],
        "ymin_shown_from_image": shown[1],
        "xmax_shown_from_image": shown[2],
        "ymax_shown_from_image": shown[3],
        "xmin_in_screen_coordinates": 100,
        "ymin_in_screen_coordinates": 0,
        "xmax_in_screen_coordinates": 1820,
        "ymax_in_screen_coordinates": 1080,
    }


def make_reflacx(root: Path, readings: dict[str, tuple[str, list[dict[str, object]]]], size=(64, 96)) -> Path:
    """``main_data`` with ``metadata_phase_3.csv`` and one ``<id>/fixations.csv`` per reading."""
    main = root / "main_data"
    meta = []
    for rid, (dicom_id, rows) in readings.items():
        write_csv(main / rid / "fixations.csv", REFLACX_FIXATION_COLUMNS, rows)
        meta.append(
            {
                "id": rid,
                "split": "train",
                "eye_tracking_data_discarded": False,
                "image": f"physionet.org/files/mimic-cxr/2.0.0/files/p10/p100/s500/{dicom_id}.dcm",
                "dicom_id": dicom_id,
                "subject_id": 100,
                "image_size_x": size[1],
                "image_size_y": size[0],
                "Atelectasis": 0,
                "Consolidation": 3,
                "Support devices": False,
                "Other": "",
            }
        )
    meta.append(
        {**meta[0], "id": "P300R999999", "eye_tracking_data_discarded": True, "dicom_id": "discarded"}
    )
    write_csv(main / "metadata_phase_3.csv", REFLACX_METADATA_COLUMNS, meta)
    return main


def moments(heat: np.ndarray) -> tuple[float, float, float, float]:
    """Mean row, mean column, variance along rows, variance along columns of a heatmap summing to 1."""
    heat = heat.astype(np.float64)
    rows = np.arange(heat.shape[0])[:, None]
    cols = np.arange(heat.shape[1])[None, :]
    my, mx = float((heat * rows).sum()), float((heat * cols).sum())
    return my, mx, float((heat * (rows - my) ** 2).sum()), float((heat * (cols - mx) ** 2).sum())


# --- REFLACX --------------------------------------------------------------------------------------


def test_single_reflacx_fixation_is_a_gaussian_of_one_degree(tmp_path: Path) -> None:
    main = make_reflacx(tmp_path, {"P300R000001": ("d1", [reflacx_row(1.0, 1.4, 45, 30, ang=(6, 4))])})
    fix = read_reflacx_fixations(main / "P300R000001")  # the folder; size from metadata_phase_3.csv
    assert fix.image_size == (64, 96) and len(fix) == 1 and fix.source == SOURCE_REFLACX
    np.testing.assert_allclose(fix.px_per_degree, [[6.0, 4.0]])
    assert fix.duration[0] == pytest.approx(0.4)
    heat = fixation_heatmap(fix)
    assert heat is not None and heat.shape == (64, 96) and heat.dtype == np.float32
    assert float(heat.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (30, 45)
    my, mx, vy, vx = moments(heat)
    assert (my, mx) == (pytest.approx(30.0, abs=1e-4), pytest.approx(45.0, abs=1e-4))
    # σ = 1° = 6 px along x, 4 px along y at the file's angular resolution (+1/12 px² of pixel binning)
    assert vx == pytest.approx(6.0**2 + 1 / 12, abs=2e-3)
    assert vy == pytest.approx(4.0**2 + 1 / 12, abs=2e-3)
    two = fixation_heatmap(fix, sigma_degrees=1.5)
    assert moments(two)[3] == pytest.approx(9.0**2 + 1 / 12, abs=2e-2)
    fixed = fixation_heatmap(fix, sigma_px=3.0)
    assert moments(fixed)[2] == pytest.approx(9 + 1 / 12, abs=2e-3)


def test_duration_weighting(tmp_path: Path) -> None:
    rows = [reflacx_row(0.0, 1.0, 20, 32), reflacx_row(2.0, 5.0, 75, 32)]  # 1 s and 3 s, 55 px apart
    main = make_reflacx(tmp_path, {"P300R000002": ("d2", rows)})
    heat = fixation_heatmap(read_reflacx_fixations(main / "P300R000002" / "fixations.csv"))
    assert heat is not None
    left, right = float(heat[:, :48].sum(dtype=np.float64)), float(heat[:, 48:].sum(dtype=np.float64))
    assert left + right == pytest.approx(1.0, abs=1e-6)
    assert right / left == pytest.approx(3.0, rel=1e-5)
    assert heat[32, 75] / heat[32, 20] == pytest.approx(3.0, rel=1e-5)


def test_reflacx_bad_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        reflacx_row(0.0, 0.5, 40, 30),
        reflacx_row(0.6, 0.9, "", 30),  # NaN x
        reflacx_row(1.0, 1.0, 41, 30),  # zero duration
        reflacx_row(1.2, 1.5, 200, 30),  # right of a 96-px-wide image
        reflacx_row(1.6, 1.9, 10, -3),  # above the image
        reflacx_row(2.0, 2.2, 20, 20, ang=(0, 4)),  # non-positive angular resolution
        reflacx_row(2.3, 2.6, 95, 63),  # last pixel: kept
    ]
    main = make_reflacx(tmp_path, {"P300R000003": ("d3", rows)})
    fix = read_reflacx_fixations(main / "P300R000003")
    assert len(fix) == 2
    np.testing.assert_array_equal(fix.x, [40, 95])
    assert fix.dropped == {
        "nan_position": 1,
        "nonpositive_duration": 1,
        "outside_image": 2,
        "bad_angular_resolution": 1,
    }


def test_reflacx_format_errors_name_the_file(tmp_path: Path) -> None:
    main = make_reflacx(tmp_path, {"P300R000004": ("d4", [reflacx_row(0, 1, 10, 10)])})
    path = main / "P300R000004" / "fixations.csv"
    write_csv(path, [c for c in REFLACX_FIXATION_COLUMNS if c != "x_position"], [reflacx_row(0, 1, 10, 10)])
    with pytest.raises(UnsupportedFormatError, match="x_position") as err:
        read_reflacx_fixations(path)
    assert str(path) in str(err.value)
    write_csv(path, REFLACX_FIXATION_COLUMNS, [reflacx_row(0, 1, "ten", 10)])
    with pytest.raises(CorruptFileError, match="non-numeric"):
        read_reflacx_fixations(path)
    orphan = write_csv(tmp_path / "elsewhere" / "X1" / "fixations.csv", REFLACX_FIXATION_COLUMNS, [])
    with pytest.raises(DataError, match="image size"):
        read_reflacx_fixations(orphan)
    empty = read_reflacx_fixations(orphan, image_size=(64, 96))
    assert len(empty) == 0 and fixation_heatmap(empty) is None  # no fixation: no gaze
    with pytest.raises(DataError, match="not found"):
        read_reflacx_fixations(tmp_path / "nope.csv", image_size=(4, 4))
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(CorruptFileError):
        read_reflacx_fixations(tmp_path / "blank.csv", image_size=(4, 4))


def test_rescaled_grid_equals_pooled_full_resolution(tmp_path: Path) -> None:
    """Positions and σ are rescaled analytically: the half-resolution heatmap is exactly the 2×2 block
    sums of the full-resolution one (checks the pixel-centre convention x' = (x + 0.5)/2 - 0.5)."""
    rows = [reflacx_row(0, 0.3, 17, 9, ang=(5, 7)), reflacx_row(0.5, 1.5, 70, 50, ang=(3, 3))]
    main = make_reflacx(tmp_path, {"P300R000005": ("d5", rows)})
    fix = read_reflacx_fixations(main / "P300R000005")
    full = fixation_heatmap(fix)
    half = fixation_heatmap(fix, (32, 48))
    assert full is not None and half is not None
    blocks = full.astype(np.float64).reshape(32, 2, 48, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(half, blocks, atol=1e-7)
    np.testing.assert_allclose(resize_heatmap(full, (32, 48)), blocks, atol=1e-7)
    np.testing.assert_allclose(pool_to_grid(full, (32, 48)), blocks, atol=1e-7)


def test_restrict_to_shown_cuts_the_gaussian(tmp_path: Path) -> None:
    row = reflacx_row(0, 1, 40, 30, ang=(6, 6), shown=(0, 0, 42, 64))  # zoomed: columns >= 42 off screen
    main = make_reflacx(tmp_path, {"P300R000006": ("d6", [row])})
    fix = read_reflacx_fixations(main / "P300R000006")
    cut = fixation_heatmap(fix, restrict_to_shown=True)
    free = fixation_heatmap(fix)
    assert cut is not None and free is not None
    assert np.all(cut[:, 42:] == 0) and free[:, 42:].sum() > 0.3
    np.testing.assert_allclose(cut[:, :42], free[:, :42] / free[:, :42].sum(), rtol=1e-5, atol=1e-9)


def test_reflacx_index_by_dicom_id(tmp_path: Path) -> None:
    main = make_reflacx(
        tmp_path,
        {
            "P300R000007": ("dA", [reflacx_row(0, 1, 20, 20)]),
            "P301R000008": ("dA", [reflacx_row(0, 1, 70, 40)]),
            "P300R000009": ("dB", [reflacx_row(0, 1, 50, 30)]),
        },
    )
    index = ReflacxIndex(main)
    assert len(index) == 2 and index.readings("discarded") == []
    assert [r for r, _ in index.readings("dA")] == ["P300R000007", "P301R000008"]
    assert index.readings("dA")[0][1] == (64, 96)


# --- EGD-CXR ---------------------------------------------------------------------------------------


def egd_row(dicom: str, fx: float, fy: float, dur: float, fid: int, valid: int = 1) -> dict[str, object]:
    return {
        "SESSION_ID": 1,
        "MEDIA_ID": 0,
        "DICOM_ID": dicom,
        "CNT": fid * 10,
        "TIME(in secs)": 12.5 + fid,
        "TIMETICK(f=10000000)": 123456789 + fid,
        "FPOGX": fx,
        "FPOGY": fy,
        "FPOGS": 12.0 + fid,
        "FPOGD": dur,
        "FPOGID": fid,
        "FPOGV": valid,
        "BPOGX": fx,
        "BPOGY": fy,
        "BPOGV": 1,
        "LPMM": 4.1,
        "RPMM": 4.0,
        "X_ORIGINAL": -1,
        "Y_ORIGINAL": -1,
    }


def make_egd(root: Path, pad_columns: Sequence[str] = EGD_MASTER_COLUMNS) -> tuple[Path, Path]:
    """A 2000 × 2500 (W × H) image shown on the 1920 × 1080 screen as 800 × 1000 with pads
    top 40, bottom 40, left 560, right 560."""
    fixations = [
        egd_row("img-1", 0.5, 0.25, 0.30, 1),  # screen (960, 270) → image (999.5, 574.5)
        egd_row("img-1", 0.5, 0.25, 0.10, 2),  # same fixation id ...
        egd_row("img-1", 0.5, 0.25, 0.45, 2),  # ... completed later: only this row is kept
        egd_row("img-1", 0.1, 0.5, 0.50, 3),  # on the left pad: off the image
        egd_row("img-1", 0.4, 0.5, 0.20, 4, valid=0),  # invalid
        egd_row("img-2", 0.5, 0.5, 1.00, 1),  # another image
    ]
    fix_csv = write_csv(root / "egd-cxr" / "fixations.csv", EGD_FIXATION_COLUMNS, fixations)
    pads = dict(zip(EGD_MASTER_COLUMNS[7:11], (40, 40, 560, 560), strict=True))
    master = [
        {"dicom_id": "img-1", "path": "files/p1/p1/s1/img-1.dcm", "study_id": 1, "patient_id": 1, **pads},
        {"dicom_id": "img-2", "path": "files/p2/p2/s2/img-2.dcm", "study_id": 2, "patient_id": 2, **pads},
    ]
    if list(pad_columns) != list(EGD_MASTER_COLUMNS):
        rename = dict(zip(EGD_MASTER_COLUMNS, pad_columns, strict=True))
        master = [{rename[k]: v for k, v in row.items()} for row in master]
    sheet = write_csv(root / "egd-cxr" / "master_sheet.csv", pad_columns, master)
    return fix_csv, sheet


def test_egd_screen_fractions_map_to_image_pixels(tmp_path: Path) -> None:
    fix_csv, sheet = make_egd(tmp_path)
    fix = read_egd_fixations(fix_csv, sheet, "img-1", image_size=(2500, 2000))
    assert fix.source == SOURCE_EGD and fix.image_size == (2500, 2000)
    # x = (0.5·1920 - 560)·2000/800 - 0.5, y = (0.25·1080 - 40)·2500/1000 - 0.5 (hand-computed)
    np.testing.assert_allclose(fix.x, [999.5, 999.5])
    np.testing.assert_allclose(fix.y, [574.5, 574.5])
    np.testing.assert_allclose(sorted(fix.duration), [0.30, 0.45])
    assert fix.dropped == {"invalid": 1, "outside_image": 1, "duplicate_id": 1}
    assert fix.px_per_degree is None
    with pytest.raises(ConfigError, match="angular resolution"):
        fixation_heatmap(fix)


def test_egd_heatmap_with_screen_resolution_and_any_grid(tmp_path: Path) -> None:
    fix_csv, sheet = make_egd(tmp_path)
    table = EgdGazeTable(fix_csv, sheet)
    assert table.dicom_ids == {"img-1", "img-2"}
    fix = table.fixations("img-1", image_size=(2500, 2000), screen_px_per_degree=40.0)
    # 40 screen px per degree; the image is shown at 800/2000 of its size: 100 image px per degree
    np.testing.assert_allclose(fix.px_per_degree, [[100.0, 100.0]] * 2)
    heat = fixation_heatmap(fix, (125, 100))  # 1/20 of the image: σ = 5 px, centre (28.25, 49.5)
    assert heat is not None and heat.shape == (125, 100)
    my, mx, vy, vx = moments(heat)
    assert my == pytest.approx(28.25, abs=1e-4) and mx == pytest.approx(49.5, abs=1e-4)
    assert vy == pytest.approx(25 + 1 / 12, abs=1e-3) and vx == pytest.approx(25 + 1 / 12, abs=1e-3)
    # without the DICOM size the fixations live on the displayed 1000 × 800 grid: same heatmap
    shown = table.fixations("img-1", screen_px_per_degree=40.0)
    assert shown.image_size == (1000, 800)
    np.testing.assert_allclose(shown.x, [399.5, 399.5])
    np.testing.assert_allclose(fixation_heatmap(shown, (125, 100)), heat, atol=1e-7)


def test_egd_legacy_pad_names_and_errors(tmp_path: Path) -> None:
    legacy = [
        *EGD_MASTER_COLUMNS[:7],
        "image_top",
        "image_bottom",
        "image_left",
        "image_right",
        *EGD_MASTER_COLUMNS[11:],
    ]
    fix_csv, sheet = make_egd(tmp_path, legacy)
    fix = read_egd_fixations(fix_csv, sheet, "img-1", image_size=(2500, 2000))
    np.testing.assert_allclose(fix.y, [574.5, 574.5])
    with pytest.raises(DataError, match="not in the master sheet"):
        read_egd_fixations(fix_csv, sheet, "img-9")
    no_pads = write_csv(tmp_path / "sheet2.csv", ["dicom_id", "path"], [{"dicom_id": "img-1", "path": "x"}])
    with pytest.raises(UnsupportedFormatError, match="padding"):
        read_egd_fixations(fix_csv, no_pads, "img-1")
    no_x = write_csv(tmp_path / "fix2.csv", [c for c in EGD_FIXATION_COLUMNS if c != "FPOGX"], [])
    with pytest.raises(UnsupportedFormatError, match="FPOGX"):
        read_egd_fixations(no_x, sheet, "img-1")


# --- resampling, pooling, letterbox ----------------------------------------------------------------


@pytest.mark.parametrize("new_size", [(13, 29), (64, 96), (7, 5), (100, 150), (82, 134), (1, 1)])
def test_resize_preserves_mass(new_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    heat = rng.random((41, 67)) ** 4
    heat /= heat.sum()
    out = resize_heatmap(heat, new_size)
    assert out.shape == new_size and out.dtype == np.float32
    assert float(out.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    if new_size == (82, 134):  # an integer enlargement splits each pixel; shrinking back sums them
        np.testing.assert_allclose(out[::2, ::2] * 4, heat, rtol=1e-5)
        np.testing.assert_allclose(resize_heatmap(out, (41, 67)), heat, rtol=1e-5, atol=1e-12)


def test_pool_to_grid_block_sums_and_torch_version() -> None:
    rng = np.random.default_rng(1)
    heat = rng.random((64, 48))
    heat /= heat.sum()
    grid = pool_to_grid(heat, (4, 3))
    np.testing.assert_allclose(grid, heat.reshape(4, 16, 3, 16).sum(axis=(1, 3)), atol=1e-7)
    assert float(grid.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    odd = rng.random((50, 37))
    torch_pooled = pool_heatmaps_to_patches(torch.from_numpy(odd)[None], (7, 5))
    np.testing.assert_allclose(torch_pooled.numpy().reshape(7, 5), pool_to_grid(odd, (7, 5)), atol=1e-6)
    with pytest.raises(ValueError, match="no mass"):
        pool_to_grid(np.zeros((4, 4)), (2, 2))


@pytest.mark.parametrize(
    ("size", "target", "mode"),
    [((60, 100), 32, "symmetric"), ((97, 41), 64, "symmetric"), ((50, 80), 40, "end")],
)
def test_letterbox_matches_monai(size: tuple[int, int], target: int, mode: str) -> None:
    from monai.transforms import Resize, SpatialPad

    ones = torch.ones(1, *size)
    image = SpatialPad((target, target), method=mode)(
        Resize(target, size_mode="longest", mode="nearest")(ones)
    )
    box = letterbox_geometry(size, target, mode)  # type: ignore[arg-type]
    assert box.size == (target, target)
    inside = np.argwhere(np.asarray(image[0]) > 0)
    assert tuple(inside.min(0)) == (box.pad[0], box.pad[2])
    assert tuple(inside.max(0) + 1) == (box.pad[0] + box.resized[0], box.pad[2] + box.resized[1])

    rng = np.random.default_rng(2)
    heat = rng.random(size)
    heat /= heat.sum()
    out = transform_heatmap_like_image(heat, target, mode)  # type: ignore[arg-type]
    assert out.shape == (target, target)
    assert float(out.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    outside = np.ones((target, target), dtype=bool)
    outside[inside[:, 0], inside[:, 1]] = False
    assert np.all(out[outside] == 0)


# --- annotation-derived priors ----------------------------------------------------------------------


def test_heatmap_from_mask_and_boxes_closed_forms() -> None:
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:7] = 255
    for m in (mask, mask > 0, (mask > 0).astype(np.uint8), mask / 255.0):
        heat = heatmap_from_mask(m)
        assert heat is not None
        np.testing.assert_allclose(heat, (mask > 0) / 12.0, atol=1e-8)
    assert heatmap_from_mask(np.zeros((4, 4))) is None

    heat = heatmap_from_boxes([[3, 2, 7, 5]], (10, 12))  # x0, y0, x1, y1 on pixel edges
    assert heat is not None
    np.testing.assert_allclose(heat, (mask > 0) / 12.0, atol=1e-8)
    half = heatmap_from_boxes([[0.5, 0, 1.5, 1]], (3, 3))  # half of pixels (0, 0) and (0, 1)
    assert half is not None
    np.testing.assert_allclose(half[0, :2], [0.5, 0.5])
    assert half[1:].sum() == 0 and half[0, 2] == 0
    union = heatmap_from_boxes([[0, 0, 2, 2], [1, 1, 3, 3]], (3, 3))  # overlap counted once
    assert union is not None
    np.testing.assert_allclose(
        union, np.where(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]]) > 0, 1 / 7, 0), atol=1e-8
    )
    assert heatmap_from_boxes(np.zeros((0, 4)), (3, 3)) is None


@pytest.fixture(scope="module")
def covid(shared_data: Path) -> Path:
    root = shared_data / "covid_cxr"
    if not (root / "annotations" / "lungVAE-masks").is_dir():
        pytest.skip("covid_cxr annotations not in the shared data folder")
    return root


def image_512(covid: Path, original_name: str) -> tuple[Path, tuple[int, int]]:
    path = covid / "images_512" / f"{Path(original_name).stem}.jpg"
    with Image.open(path) as img:
        return path, (img.height, img.width)


@pytest.mark.shared_data
def test_real_lung_mask_prior(covid: Path) -> None:
    name = "covid-19-pneumonia-rapidly-progressive-3-days.jpg"
    mask_file = lung_mask_path(covid / "annotations" / "lungVAE-masks", f"images_512/{Path(name).stem}.jpg")
    mask = read_lung_mask(mask_file)
    assert mask.shape == (913, 1064) and 0.2 < mask.mean() < 0.6  # original size, lungs a third of it
    heat = heatmap_from_mask(mask)
    assert heat is not None and float(heat.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(heat[mask], 1.0 / mask.sum(), rtol=1e-6)

    provider = GazeHeatmapProvider.covid_cxr(covid)
    path, shape = image_512(covid, name)
    assert shape == (439, 512)  # 1064 × 913 scaled to a 512 px long side
    found = provider.lookup({"path": str(path)}, shape)
    assert found is not None and found.source == SOURCE_LUNG_MASK
    assert found.heatmap.shape == shape and found.heatmap.dtype == np.float32
    assert float(found.heatmap.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    small_mask = np.asarray(Image.fromarray(mask).resize((512, 439), Image.NEAREST))
    assert float(found.heatmap[small_mask].sum()) > 0.97  # the mass sits on the (rescaled) lungs
    # the metadata.csv name (original extension) finds the same prior
    same = provider.heatmap({"filename": name}, shape)
    np.testing.assert_array_equal(same, found.heatmap)
    # a letterboxed shape is refused; an image without annotation gets None
    with pytest.raises(DataError, match="aspect ratio"):
        provider.heatmap({"path": str(path)}, (512, 512))
    assert provider.heatmap({"path": "images_512/no-such-image.jpg"}, (512, 512)) is None


@pytest.mark.shared_data
def test_real_lung_boxes_scale_onto_the_512_images(covid: Path) -> None:
    boxes_json = covid / "annotations" / "imageannotation_ai_lung_bounding_boxes.json"
    plain = read_lung_boxes(boxes_json)
    assert plain.skipped_null_boxes == 2 and plain.skipped_size_mismatch == 0
    entry = plain.get("auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg")
    assert entry is not None and entry.size == (888, 882) and entry.labels == ("Right Lung", "Left Lung")
    np.testing.assert_allclose(entry.boxes[0], [42, 72, 42 + 245, 72 + 504])  # COCO [x, y, w, h]

    provider = GazeHeatmapProvider.covid_cxr(covid, sources=(SOURCE_BOXES,))
    checked = 0
    for name in (
        "ARDSSevere.png",
        "lancet-case2a.jpg",
        "covid-19-pneumonia-rapidly-progressive-3-days.jpg",
        "all14238-fig-0001-m-b.jpg",
    ):
        path, shape = image_512(covid, name)
        found = provider.lookup({"path": str(path)}, shape)
        assert found is not None and found.source == SOURCE_BOXES and found.heatmap.shape == shape
        assert float(found.heatmap.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
        mask = read_lung_mask(lung_mask_path(covid / "annotations" / "lungVAE-masks", name))
        small = np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))
        # boxes in original pixels, rescaled with width_512/width: the lungs fall inside them
        assert (small & (found.heatmap > 0)).sum() / small.sum() > 0.9
        checked += 1
    assert checked == 4
    # boxes drawn on another version of the picture (JSON size 466 × 399 vs file 359 × 345) are dropped
    assert provider._boxes is not None and provider._boxes.skipped_size_mismatch == 3
    path, shape = image_512(covid, "ciaa199.pdf-001-a.png")
    assert provider.heatmap({"path": str(path)}, shape) is None


# --- provider over gaze datasets --------------------------------------------------------------------


def test_provider_and_an_adapter_holding_it_rebuild_from_their_specs(tmp_path: Path) -> None:
    """A checkpoint records the adapter as a spec: its gaze provider (paths included) must survive."""
    main = make_reflacx(tmp_path, {"P300R000011": ("dA", [reflacx_row(0, 1, 20, 20)])})
    provider = GazeHeatmapProvider((SOURCE_REFLACX,), reflacx_dir=main, sigma_degrees=1.5)
    spec = module_spec(provider)
    assert spec is not None and spec["init_args"]["reflacx_dir"] == str(main)
    rebuilt = instantiate_spec(spec)
    np.testing.assert_array_equal(
        rebuilt.heatmap({"dicom_id": "dA"}, (32, 48)), provider.heatmap({"dicom_id": "dA"}, (32, 48))
    )
    adapter = XrayAdapter(str(tmp_path), dataset="covid_cxr", image_size=32, gaze=provider)
    adapter_spec = module_spec(adapter)
    assert adapter_spec is not None and adapter_spec["init_args"]["gaze"] == spec
    assert module_spec(instantiate_spec(adapter_spec).gaze) == spec


def test_provider_reflacx_averages_readings_and_falls_back(tmp_path: Path) -> None:
    main = make_reflacx(
        tmp_path,
        {
            "P300R000011": ("dA", [reflacx_row(0, 1, 20, 20)]),
            "P301R000012": ("dA", [reflacx_row(0, 3, 70, 40)]),
        },
    )
    fix_csv, sheet = make_egd(tmp_path)
    provider = GazeHeatmapProvider(
        (SOURCE_REFLACX, SOURCE_EGD),
        reflacx_dir=main,
        egd_fixations_csv=fix_csv,
        egd_master_sheet_csv=sheet,
        egd_screen_px_per_degree=40.0,
    )
    found = provider.lookup({"dicom_id": "dA", "path": "x.jpg"}, (32, 48))
    assert found is not None and found.source == SOURCE_REFLACX
    one = fixation_heatmap(read_reflacx_fixations(main / "P300R000011"), (32, 48))
    two = fixation_heatmap(read_reflacx_fixations(main / "P301R000012"), (32, 48))
    np.testing.assert_allclose(found.heatmap, (one + two) / 2, atol=1e-7)  # readings weigh equally
    egd = provider.lookup({"dicom_id": "img-1"}, (125, 100))
    assert egd is not None and egd.source == SOURCE_EGD
    peak = tuple(int(v) for v in np.unravel_index(np.argmax(egd.heatmap), egd.heatmap.shape))
    assert peak in {(28, 49), (28, 50)}  # the mapped centre (28.25, 49.5) sits between two columns
    assert provider.heatmap({"dicom_id": "unknown"}, (10, 10)) is None
    assert provider.heatmap({"path": "x.jpg"}, (10, 10)) is None


def test_provider_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources"):
        GazeHeatmapProvider(("gaze",))
    with pytest.raises(ConfigError, match="reflacx_dir"):
        GazeHeatmapProvider((SOURCE_REFLACX,))
    with pytest.raises(ConfigError, match="egd_screen_px_per_degree"):
        GazeHeatmapProvider((SOURCE_EGD,), egd_fixations_csv="f.csv", egd_master_sheet_csv="m.csv")
    with pytest.raises(ConfigError, match="lung_masks_dir"):
        GazeHeatmapProvider((SOURCE_LUNG_MASK,))


def test_lung_boxes_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "boxes.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError, match="JSON"):
        read_lung_boxes(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(UnsupportedFormatError, match="COCO"):
        read_lung_boxes(bad)
    with pytest.raises(DataError, match="not found"):
        read_lung_boxes(tmp_path / "missing.json")
