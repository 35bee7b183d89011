"""The wearable adapter on real BIDMC PPG: kept segments become samples, preprocessed as the spec says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.data.adapter import Adapter
from medcl.errors import ConfigError
from modalities.signals.pipeline import preprocess_recording
from modalities.signals.readers import read_csv_signal
from modalities.wearables import WearableAdapter
from modalities.wearables.indexing import index_wearables, save_index

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def adapter(bidmc: Path) -> WearableAdapter:
    return WearableAdapter(root=str(bidmc.parent), labels="sex")


@pytest.fixture(scope="module")
def samples(adapter: WearableAdapter):
    indexed = adapter.index()
    return indexed, adapter.make_samples(indexed.trials, indexed.events)


def test_kept_segments_are_the_samples(adapter: WearableAdapter, samples) -> None:
    indexed, table = samples
    assert isinstance(adapter, Adapter) and adapter.input_key == "signal" and adapter.num_channels == 1
    assert len(indexed.trials) == 40 and len(table) == 306 and table["patient_id"].nunique() == 33
    assert (indexed.quarantine["error"] == "LowQualitySegment").sum() == 14
    fourteen = table[table["trial_id"] == "bidmc_14"]
    assert fourteen["sample_index"].tolist() == [0, 2]  # its other six minutes are clipped
    assert (table["stop"] - table["start"] == 3840).all()  # 60 s at 64 Hz
    assert (table["start"] == table["sample_index"] * 3840).all()
    assert set(table.loc[table["trial_id"] == "bidmc_06", "patient_id"]) == {"s03386"}


def test_load_sample_is_the_spec_applied_to_the_raw_file(
    adapter: WearableAdapter, samples, bidmc: Path
) -> None:
    _, table = samples
    row = table[(table["trial_id"] == "bidmc_07") & (table["sample_index"] == 3)].iloc[0]
    sample = adapter.load_sample(row)
    x = sample["signal"]
    assert x.shape == (1, 3840) and x.dtype == np.float32
    assert (
        sample["patient_id"] == "s03386" and sample["trial_id"] == "bidmc_07" and sample["sample_index"] == 3
    )
    raw = read_csv_signal(bidmc / "bidmc_07_Signals.csv.gz", channels=["PLETH"])
    steps = adapter.input_spec()["preprocessing"]
    assert [s["op"] for s in steps] == ["read", "fill_nan", "resample", "bandpass", "zscore", "window"]
    full, fs = preprocess_recording(raw.data, raw.fs, steps)
    assert fs == 64.0 and full.shape == (1, 30721)  # 60001 samples at 125 Hz -> 64 Hz
    np.testing.assert_allclose(x, full[:, 3 * 3840 : 4 * 3840], rtol=0, atol=1e-6)
    assert abs(float(full.mean())) < 1e-3 and float(full.std()) == pytest.approx(1.0, abs=1e-3)


def test_labels(adapter: WearableAdapter, samples, bidmc: Path) -> None:
    _, table = samples
    assert adapter.class_names == ["F", "M"] and adapter.label_mode == "multiclass"
    labels = table.groupby("trial_id")["labels"].first()
    assert labels["bidmc_01"] == "M" and labels["bidmc_03"] == "F" and labels["bidmc_18"] == ""
    age = WearableAdapter(root=str(bidmc.parent), labels="age_65")
    trials = age.index().trials
    by_trial = age.make_samples(trials, None).groupby("trial_id")["labels"].first()
    assert by_trial["bidmc_02"] == ">=65" and by_trial["bidmc_06"] == "<65" and by_trial["bidmc_18"] == ""
    location = WearableAdapter(root=str(bidmc.parent), labels="location")
    assert location.class_names == ["ccu", "micu"]


def test_reads_a_saved_index(bidmc: Path, samples, tmp_path: Path) -> None:
    _, table = samples
    save_index(index_wearables("bidmc", bidmc.parent), tmp_path)
    from_index = WearableAdapter(root=str(bidmc.parent), index_dir=str(tmp_path))
    indexed = from_index.index()
    again = from_index.make_samples(indexed.trials, indexed.events)
    assert again[["trial_id", "sample_index", "start", "stop"]].equals(
        table[["trial_id", "sample_index", "start", "stop"]]
    )


def test_settings_are_checked(bidmc: Path) -> None:
    with pytest.raises(ConfigError, match="dataset"):
        WearableAdapter(dataset="fitbit")
    with pytest.raises(ConfigError, match="label task"):
        WearableAdapter(root=str(bidmc.parent), labels="aami")
    with pytest.raises(ConfigError, match="give channels"):
        WearableAdapter(dataset="participants", root=str(bidmc.parent))
    ecg = WearableAdapter(root=str(bidmc.parent), modality="ecg", target_fs=125, bandpass_hz=(0.5, 40.0))
    assert ecg.channels == ["II"]


def test_a_recording_with_a_nan_span_keeps_its_other_segments(
    bidmc_table, write_copy, tmp_path: Path
) -> None:
    table = bidmc_table("01")
    ppg = table[" PLETH"].to_numpy(dtype=np.float64).copy()
    ppg[310 * 125 : 315 * 125] = np.nan  # 5 s lost in segment 5
    table[" PLETH"] = ppg
    write_copy(table, tmp_path / "bidmc_csv")
    adapter = WearableAdapter(root=str(tmp_path))
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials, indexed.events)
    assert samples["sample_index"].tolist() == [0, 1, 2, 3, 4, 6, 7]
    for _, row in samples.iterrows():  # the gap is bridged before filtering, so every kept segment loads
        x = adapter.load_sample(row)["signal"]
        assert x.shape == (1, 3840) and np.isfinite(x).all()
