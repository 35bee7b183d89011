"""SignalAdapter on real records: indexing, segmentation, labels, preprocessing, views, input spec."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.signal import butter, sosfiltfilt

from medcl.data.adapter import Adapter
from medcl.errors import ConfigError, DataError
from modalities.signals import SignalAdapter
from modalities.signals.labels import aami_class


@pytest.fixture(scope="module")
def ptbxl_adapter() -> SignalAdapter:
    return SignalAdapter(dataset="ptbxl", root="bundled:ptbxl", window_s=2.5, view_crop_s=2.0)


@pytest.fixture(scope="module")
def ptbxl_samples(ptbxl_adapter: SignalAdapter) -> pd.DataFrame:
    indexed = ptbxl_adapter.index()
    return ptbxl_adapter.make_samples(indexed.trials, indexed.events)


def test_is_an_adapter_and_indexes_the_bundled_subset(ptbxl_adapter: SignalAdapter) -> None:
    assert isinstance(ptbxl_adapter, Adapter)
    indexed = ptbxl_adapter.index()
    assert len(indexed.trials) == 300 and len(indexed.quarantine) == 0
    assert indexed.trials["patient_id"].nunique() == 275
    assert ptbxl_adapter.class_names == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert ptbxl_adapter.label_mode == "multilabel"


def test_windows_cover_each_record_with_ids_and_labels(
    ptbxl_adapter: SignalAdapter, ptbxl_samples: pd.DataFrame
) -> None:
    # 10 s at 100 Hz in windows of 2.5 s: 4 per record, starts 0, 250, 500, 750.
    assert len(ptbxl_samples) == 1200
    first = ptbxl_samples[ptbxl_samples["trial_id"] == "1"]
    assert first["start"].tolist() == [0, 250, 500, 750] and first["stop"].tolist() == [250, 500, 750, 1000]
    assert first["sample_index"].tolist() == [0, 1, 2, 3]
    assert set(first["patient_id"]) == {"15709"}
    database = pd.read_csv(ptbxl_adapter_root() / "ptbxl_database.csv", index_col="ecg_id")
    assert first["labels"].iloc[0] == "NORM" and "'NORM'" in database.loc[1, "scp_codes"]


def ptbxl_adapter_root() -> Path:
    from modalities.bundled import resolve_root

    return resolve_root("bundled:ptbxl")


def test_sample_is_the_filtered_trial_zscored_over_the_whole_record(
    ptbxl_adapter: SignalAdapter, ptbxl_samples: pd.DataFrame
) -> None:
    rows = ptbxl_samples[ptbxl_samples["trial_id"] == "7"]
    windows = [ptbxl_adapter.load_sample(row) for _, row in rows.iterrows()]
    assert all(w["signal"].shape == (12, 250) and w["signal"].dtype == np.float32 for w in windows)
    assert windows[2]["sample_index"] == 2 and windows[2]["patient_id"] == rows["patient_id"].iloc[0]
    whole = np.concatenate([w["signal"] for w in windows], axis=1)
    # z-scored over the recording, not per window: the four windows together have mean 0 and std 1.
    np.testing.assert_allclose(whole.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(whole.std(axis=1), 1.0, atol=1e-4)
    assert abs(windows[0]["signal"].mean(axis=1)).max() > 1e-3
    # Independent reference: wfdb physical values, SciPy's Butterworth band-pass, z-score.
    record = wfdb.rdrecord(str(rows["path"].iloc[0]))
    sos = butter(4, [0.5, 40.0], btype="bandpass", fs=100.0, output="sos")
    filtered = sosfiltfilt(sos, record.p_signal.T, axis=1)
    reference = (filtered - filtered.mean(axis=1, keepdims=True)) / filtered.std(axis=1, keepdims=True)
    # The adapter pads the edges differently from SciPy's default; compare away from them.
    np.testing.assert_allclose(whole[:, 200:800], reference[:, 200:800], atol=0.05)
    assert np.corrcoef(whole.ravel(), reference.ravel())[0, 1] > 0.995


def test_per_window_normalisation() -> None:
    adapter = SignalAdapter(window_s=2.0, normalize="sample")
    indexed = adapter.index()
    sample = adapter.load_sample(adapter.make_samples(indexed.trials.head(2)).iloc[3])
    np.testing.assert_allclose(sample["signal"].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(sample["signal"].std(axis=1), 1.0, atol=1e-3)


def test_views_are_crops_seeded_per_call(ptbxl_adapter: SignalAdapter, ptbxl_samples: pd.DataFrame) -> None:
    sample = ptbxl_adapter.load_sample(ptbxl_samples.iloc[0])
    views = ptbxl_adapter.view_transform()
    views.set_random_state(seed=11)
    a = views(dict(sample))["signal"]
    views.set_random_state(seed=11)
    b = views(dict(sample))["signal"]
    views.set_random_state(seed=12)
    c = views(dict(sample))["signal"]
    assert a.shape == (12, 200)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sample["signal"].shape == (12, 250)  # the sample itself is untouched


def test_resampling_changes_window_positions_consistently(ptbxl_samples: pd.DataFrame) -> None:
    adapter = SignalAdapter(target_fs=250.0, window_s=2.0, stride_s=1.0)
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials.head(3))
    # 10 s at 250 Hz = 2500 samples; windows of 500 every 250: 9 per record.
    assert len(samples) == 27 and samples["stop"].max() == 2500
    assert adapter.load_sample(samples.iloc[8])["signal"].shape == (12, 500)


def test_pickled_adapter_leaves_its_cache_behind(
    ptbxl_adapter: SignalAdapter, ptbxl_samples: pd.DataFrame
) -> None:
    ptbxl_adapter.load_sample(ptbxl_samples.iloc[0])
    assert len(ptbxl_adapter._cache) >= 1
    clone = pickle.loads(pickle.dumps(ptbxl_adapter))
    assert len(clone._cache) == 0
    np.testing.assert_array_equal(
        clone.load_sample(ptbxl_samples.iloc[0])["signal"],
        ptbxl_adapter.load_sample(ptbxl_samples.iloc[0])["signal"],
    )


def test_input_spec_is_json_and_complete(ptbxl_adapter: SignalAdapter) -> None:
    spec = json.loads(json.dumps(ptbxl_adapter.input_spec()))
    assert spec["channels"][3] == "aVR" and spec["fs"] == 100.0 and spec["window_samples"] == 250
    assert [step["op"] for step in spec["preprocessing"]] == [
        "read",
        "fill_nan",
        "resample",
        "bandpass",
        "zscore",
        "window",
    ]


def test_missing_lead_quarantines_every_record() -> None:
    adapter = SignalAdapter(channels=["I", "V7"])
    indexed = adapter.index()
    assert len(indexed.trials) == 0 and len(indexed.quarantine) == 300
    assert indexed.quarantine["reason"].str.contains("missing channel\\(s\\) V7").all()


def test_window_outside_the_recording_is_a_data_error(
    ptbxl_adapter: SignalAdapter, ptbxl_samples: pd.DataFrame
) -> None:
    row = ptbxl_samples.iloc[0].copy()
    row["start"], row["stop"] = 900, 1150
    with pytest.raises(DataError, match="outside the recording"):
        ptbxl_adapter.load_sample(row)


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError):
        SignalAdapter(dataset="ptb")
    with pytest.raises(ConfigError):
        SignalAdapter(normalize="global")
    with pytest.raises(ConfigError):
        SignalAdapter(window_s=2.0, view_crop_s=3.0)
    with pytest.raises(ConfigError, match="explicit channels"):
        SignalAdapter(dataset="folder", root="bundled:ptbxl")


@pytest.mark.shared_data
def test_mitdb_window_labels_are_the_beats_inside(shared_data: Path) -> None:
    adapter = SignalAdapter(dataset="mitdb", root=str(shared_data / "mitdb"), target_fs=250.0, window_s=2.0)
    indexed = adapter.index()
    assert {"102", "104"} <= {Path(p).name for p in indexed.quarantine["path"]}  # they lack MLII
    samples = adapter.make_samples(indexed.trials, indexed.events)
    rows = samples[samples["trial_id"] == "208"]
    annotation = wfdb.rdann(str(shared_data / "mitdb" / "208"), "atr")
    for _, row in rows.iloc[[0, 40, 300]].iterrows():
        lo, hi = row["start"] * 360 / 250, row["stop"] * 360 / 250
        inside = {
            aami_class(s) for t, s in zip(annotation.sample, annotation.symbol, strict=True) if lo <= t < hi
        }
        assert set(filter(None, row["labels"].split("|"))) == inside - {None}
    assert adapter.load_sample(rows.iloc[5])["signal"].shape == (1, 500)


@pytest.mark.shared_data
def test_mitdb_beat_windows_are_centred_on_beats(shared_data: Path) -> None:
    adapter = SignalAdapter(
        dataset="mitdb", root=str(shared_data / "mitdb"), target_fs=360.0, window_s=1.0, segmentation="events"
    )
    assert adapter.label_mode == "multiclass"
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials, indexed.events)
    beats = indexed.events[indexed.events["trial_id"] == "119"]
    rows = samples[samples["trial_id"] == "119"]
    centres = rows["start"].to_numpy() + 180
    assert set(centres) <= set(beats["sample"])
    ventricular = rows[rows["labels"] == "V"].iloc[0]
    beat = beats[beats["sample"] == ventricular["start"] + 180].iloc[0]
    assert beat["symbol"] == "V"


@pytest.mark.shared_data
def test_eegmat_trials_are_rest_and_task_recordings(shared_data: Path) -> None:
    adapter = SignalAdapter(
        dataset="eegmat",
        root=str(shared_data / "eeg_mental_arithmetic"),
        modality="eeg",
        target_fs=128.0,
        window_s=4.0,
    )
    indexed = adapter.index()
    assert len(indexed.trials) == 16 and indexed.trials["patient_id"].nunique() == 8
    samples = adapter.make_samples(indexed.trials)
    per_trial = samples.groupby("trial_id")["labels"].agg(["first", "size"])
    assert set(per_trial["first"]) == {"rest", "task"}
    assert (per_trial[per_trial["first"] == "task"]["size"] == 15).all()  # 60 s / 4 s
    assert adapter.load_sample(samples.iloc[0])["signal"].shape == (19, 512)


def test_folder_layout_with_a_label_table(tmp_path: Path, ptbxl_record: Path) -> None:
    for i, name in enumerate(["00001_lr", "00002_lr", "00003_lr"]):
        folder = tmp_path / f"patient{i}"
        folder.mkdir()
        for suffix in (".hea", ".dat"):
            shutil.copy(ptbxl_record.parent / f"{name}{suffix}", folder / f"{name}{suffix}")
    (tmp_path / "labels.csv").write_text(
        "path,patient_id,label\npatient0/00001_lr.hea,a,sinus\npatient1/00002_lr.hea,b,brady\npatient2/00003_lr.hea,c,sinus\n"
    )
    adapter = SignalAdapter(
        dataset="folder", root=str(tmp_path), channels=["II", "V1"], dataset_kwargs={"table": "labels.csv"}
    )
    assert adapter.class_names == ["brady", "sinus"] and adapter.label_mode == "multiclass"
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials)
    assert len(samples) == 12 and samples.groupby("patient_id")["labels"].first().to_dict() == {
        "a": "sinus",
        "b": "brady",
        "c": "sinus",
    }
    assert adapter.load_sample(samples.iloc[0])["signal"].shape == (2, 250)


def _lag(a: np.ndarray, b: np.ndarray) -> int:
    """The shift (in samples) that best aligns ``b`` with ``a`` (circular cross-correlation)."""
    spectrum = np.fft.rfft(a) * np.conj(np.fft.rfft(b))
    correlation = np.fft.irfft(spectrum, n=len(a))
    lag = int(np.argmax(correlation))
    return lag if lag <= len(a) // 2 else lag - len(a)


def test_aligned_views_keep_time_steps_together(ptbxl_samples: pd.DataFrame) -> None:
    aligned = SignalAdapter(window_s=2.5, aligned_views=True)
    shifted = SignalAdapter(window_s=2.5)
    sample = aligned.load_sample(ptbxl_samples.iloc[10])
    lags = {"aligned": set(), "shifted": set()}
    for name, adapter in (("aligned", aligned), ("shifted", shifted)):
        views = adapter.view_transform()
        for seed in range(12):
            views.set_random_state(seed=2 * seed)
            a = views(dict(sample))["signal"][1]
            views.set_random_state(seed=2 * seed + 1)
            b = views(dict(sample))["signal"][1]
            lags[name].add(_lag(a, b))
    assert lags["aligned"] == {0}
    assert lags["shifted"] != {0}
    with pytest.raises(ConfigError, match="aligned_views"):
        SignalAdapter(window_s=2.5, view_crop_s=2.0, aligned_views=True)
