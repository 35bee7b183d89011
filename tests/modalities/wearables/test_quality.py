"""Segment quality on real recordings: injected flat, NaN and clipped spans are counted where they were put;
motion is found from an accelerometer channel (in g or m/s²)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcl.errors import ConfigError
from modalities.wearables.indexing import index_wearables
from modalities.wearables.quality import SegmentQuality, assess_segment, constant_runs, segment_bounds

pytestmark = pytest.mark.shared_data
FS = 125


def _span(seconds_from: float, seconds_to: float) -> slice:
    return slice(round(seconds_from * FS), round(seconds_to * FS))


def test_injected_flat_nan_and_clipped_spans_are_counted(bidmc_table, write_copy, tmp_path: Path) -> None:
    table = bidmc_table("01")  # a clean recording: all 8 segments pass as it is
    ppg = table[" PLETH"].to_numpy(dtype=np.float64).copy()
    ppg[_span(130, 150)] = ppg[round(130 * FS)]  # segment 2: the sensor freezes for 20 s
    ppg[_span(310, 315)] = np.nan  # segment 5: 5 s of missing samples
    sixth = _span(360, 420)
    ceiling = np.percentile(ppg[sixth], 90)
    ppg[sixth] = np.minimum(ppg[sixth], ceiling)  # segment 6: the top 10 % saturates
    table[" PLETH"] = ppg
    write_copy(table, tmp_path / "bidmc_csv")
    result = index_wearables("bidmc", tmp_path)
    segments = result.segments.set_index("sample_index")
    assert len(segments) == 8
    assert segments["problems"].to_dict() == {
        0: "",
        1: "",
        2: "flat",
        3: "",
        4: "",
        5: "nan",
        6: "clipped",
        7: "",
    }
    assert "PLETH constant for 20.00 s from 10.00 s" in segments.loc[2, "detail"]
    assert segments.loc[5, "nan_fraction"] == pytest.approx(5 / 60, abs=1e-3)
    assert segments.loc[6, "clipped_fraction"] == pytest.approx(0.10, abs=0.01)
    counts = result.counts()
    assert counts["segments_kept"] == 5 and counts["rejected_by_problem"] == {
        "nan": 1,
        "flat": 1,
        "clipped": 1,
        "motion": 0,
    }
    assert "5 of 8 kept, rejected 1 nan, 1 flat, 1 clipped" in result.summary()
    quarantine = result.quarantine_with_segments()
    assert (quarantine["error"] == "LowQualitySegment").sum() == 3
    assert quarantine["reason"].str.contains(r"segment 5 \(300-360 s\) rejected: PLETH 8.3% NaN").any()
    # the thresholds decide: tolerate NaN up to 10 %, keep flat segments
    lenient = index_wearables("bidmc", tmp_path, max_nan_fraction=0.1, allow_flat=True)
    assert lenient.segments["problems"].tolist() == ["", "", "", "", "", "", "clipped", ""]


@pytest.mark.parametrize("unit, scale", [("", 1.0), (" [m/s^2]", 9.80665)])
def test_motion_from_an_accelerometer(bidmc_table, tmp_path: Path, unit: str, scale: float) -> None:
    ppg = bidmc_table("07")[" PLETH"].to_numpy(dtype=np.float64)
    t = np.arange(len(ppg)) / FS
    rng = np.random.default_rng(0)
    accel = np.zeros((3, len(ppg)))
    accel[2] = 1.0  # at rest: gravity only
    accel += rng.normal(0.0, 0.005, size=accel.shape)
    walking = _span(240, 300)  # segment 4: 2 Hz vertical bounce of 0.6 g (walking)
    accel[2, walking] += 0.6 * np.sin(2 * np.pi * 2.0 * t[walking])
    folder = tmp_path / "p01"
    folder.mkdir()
    columns = {"Time [s]": np.round(t, 3), "PLETH": ppg}
    columns.update({f"ACC_{axis}{unit}": scale * accel[i] for i, axis in enumerate("XYZ")})
    pd.DataFrame(columns).to_csv(folder / "watch.csv.gz", index=False, float_format="%.5f")
    result = index_wearables("participants", tmp_path, channels=["PLETH"])
    assert result.settings["recordings_with_accelerometer"] == 1
    segments = result.segments.set_index("sample_index")
    assert segments["problems"].to_dict() == {k: ("motion" if k == 4 else "") for k in range(8)}
    assert segments.loc[4, "motion"] == pytest.approx(0.6 / np.sqrt(2), rel=0.1)  # std of the swing, in g
    assert segments.loc[0, "motion"] < 0.01
    assert "motion not checked" not in result.summary()
    assert (
        index_wearables("participants", tmp_path, channels=["PLETH"], accel_channels=None).counts()[
            "segments_kept"
        ]
        == 8
    )


def test_constant_runs_and_segment_bounds() -> None:
    x = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 3.0, np.nan, 3.0, 3.0])
    starts, lengths, values = constant_runs(x)
    assert (
        starts.tolist() == [0, 4, 7] and lengths.tolist() == [3, 2, 2] and values.tolist() == [1.0, 3.0, 3.0]
    )
    starts, lengths, _ = constant_runs(np.array([0.0, 0.01, 0.02, 0.5]), tolerance=0.015)
    assert starts.tolist() == [0] and lengths.tolist() == [3]
    np.testing.assert_array_equal(
        segment_bounds(60001, 125.0, 60.0, 60.0), [[60.0 * k, 60.0 * k + 60] for k in range(8)]
    )
    assert segment_bounds(7499, 125.0, 60.0, 60.0).shape == (0, 2)
    np.testing.assert_array_equal(
        segment_bounds(1000, 10.0, 30.0, 20.0), [[0, 30], [20, 50], [40, 70], [60, 90]]
    )


def test_assess_segment_whole_flat_and_rail_saturation() -> None:
    quality = SegmentQuality()
    flat = np.full((1, 500), 0.3)
    problems, details, _ = assess_segment(flat, 125.0, ["PPG"], quality)
    assert problems == ["flat"] and "constant over the whole segment" in details[0]
    saturated = np.sin(np.linspace(0, 40, 1250))[None, :]
    saturated[0, 100:300] = 1.5  # 1.6 s at the maximum: a rail, i.e. clipping, not a dropout
    problems, details, metrics = assess_segment(saturated, 125.0, ["PPG"], quality)
    assert problems == ["clipped"] and metrics["longest_flat_s"] == pytest.approx(1.6)
    with pytest.raises(ConfigError, match="max_clipped_fraction"):
        SegmentQuality(max_clipped_fraction=2.0)
