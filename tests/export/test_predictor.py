"""The torch-free predictor: no torch import, same preprocessing as training, clear errors, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import wfdb
from onnx import TensorProto, helper

from export.onnx import export_classifier, load_classifier
from export.predictor import ModelMetadataError, OnnxPredictor
from medcl.errors import DataError, InvalidSignalError, MissingChannelError
from modalities.signals import SignalAdapter

RECORDS = "records100/00000"
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "lightning", "pytorch_lightning", "monai", "torchmetrics"}:
            raise ImportError(f"{name} is blocked: the predictor must not need it")
sys.meta_path.insert(0, Block())
"""


@pytest.fixture(scope="module")
def model_path(classifier_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("predictor") / "model.onnx"
    export_classifier(classifier_checkpoint, path)
    return path


def test_predictor_runs_with_torch_lightning_and_monai_blocked(model_path: Path, bundled_ptbxl: Path) -> None:
    records = [str(bundled_ptbxl / RECORDS / f"{n:05d}_lr.hea") for n in (1, 2, 8)]
    script = (
        BLOCK_TORCH
        + f"""
import json
from export import OnnxPredictor
predictor = OnnxPredictor({str(model_path)!r})
out = [predictor.predict_file(p).probabilities.tolist() for p in {records!r}]
from medcl.cli import main
main(["predict", "--model", {str(model_path)!r}, *{records!r}])
blocked = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "lightning", "monai"}})
print("RESULT", json.dumps({{"probabilities": out, "imported": blocked}}))
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert payload["imported"] == []
    assert result.stdout.startswith("file,windows,p_NORM,p_MI,predicted")
    assert len(payload["probabilities"]) == 3 and all(
        abs(sum(p) - 1) < 1e-5 for p in payload["probabilities"]
    )


def test_predictions_equal_the_torch_model_on_training_windows(
    model_path: Path, classifier_checkpoint: Path, bundled_ptbxl: Path
) -> None:
    """Predictor (numpy preprocessing + onnxruntime) vs training (adapter + torch) on real records."""
    predictor = OnnxPredictor(model_path)
    model, _ = load_classifier(classifier_checkpoint)
    adapter = SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0)
    trials = adapter.index().trials.head(6)
    samples = adapter.make_samples(trials)
    for _, rows in samples.groupby("trial_id"):
        training = np.stack([adapter.load_sample(row)["signal"] for _, row in rows.iterrows()])
        prediction = predictor.predict_file(rows["path"].iloc[0])
        windows, starts = predictor.preprocess_file(rows["path"].iloc[0])
        np.testing.assert_allclose(windows, training, rtol=0, atol=1e-6)  # the same preprocessing
        np.testing.assert_array_equal(starts, rows["start"].to_numpy() / 100.0)
        with torch.no_grad():
            expected = model(torch.from_numpy(training))[1].numpy()
        np.testing.assert_allclose(prediction.window_probabilities, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(prediction.probabilities, expected.mean(axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.shared_data
def test_preprocessing_matches_training_with_resampling(shared_data: Path, tmp_path: Path) -> None:
    """MIT-BIH at 360 Hz resampled to 100 Hz, MLII only: predictor windows == adapter windows."""
    adapter = SignalAdapter(
        dataset="mitdb",
        root=str(shared_data / "mitdb"),
        channels=["MLII"],
        window_s=2.0,
        stride_s=2.0,
        dataset_kwargs={"records": ["101", "208"]},
    )
    steps = adapter.input_spec()
    # a predictor needs a model: any graph of the right input shape, with this adapter's spec as metadata
    path = tmp_path / "mitdb.onnx"
    _write_identity_model(path, steps, channels=1, length=200)
    predictor = OnnxPredictor(path)
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials, indexed.events)
    rows = samples[samples["trial_id"] == "208"].iloc[[0, 17, 400]]
    windows, _ = predictor.preprocess_file(rows["path"].iloc[0])
    for _, row in rows.iterrows():
        np.testing.assert_allclose(
            windows[int(row["sample_index"])], adapter.load_sample(row)["signal"], rtol=0, atol=1e-6
        )


def _write_identity_model(path: Path, spec: dict, channels: int, length: int) -> None:
    """A tiny ONNX graph (mean over time → 'probabilities') carrying a medcl metadata entry."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, length])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", channels])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["probabilities"], axes=[2], keepdims=0)], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    metadata = {
        "format": "medcl-onnx/1",
        "task": "multilabel",
        "class_names": [f"c{k}" for k in range(channels)],
        "input": {
            "name": "input",
            "layout": "(B, C, T)",
            "channels": spec["channels"],
            "fs": spec["fs"],
            "window_samples": length,
        },
        "preprocessing": spec["preprocessing"],
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = "medcl", json.dumps(metadata)
    onnx.save(model, str(path))


def test_models_without_medcl_metadata_are_refused(tmp_path: Path, model_path: Path) -> None:
    model = onnx.load(str(model_path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelMetadataError, match="not a medcl model"):
        OnnxPredictor(tmp_path / "plain.onnx")
    entry = model.metadata_props.add()
    entry.key, entry.value = "medcl", "__import__('os').system('echo pwned')"
    onnx.save(model, str(tmp_path / "evil.onnx"))
    with pytest.raises(ModelMetadataError, match="not valid JSON"):
        OnnxPredictor(tmp_path / "evil.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelMetadataError, match="not a readable ONNX model"):
        OnnxPredictor(tmp_path / "garbage.onnx")


def test_wrong_leads_rate_shape_and_length_are_clear_errors(
    model_path: Path, bundled_ptbxl: Path, tmp_path: Path, write_record: object
) -> None:
    predictor = OnnxPredictor(model_path)
    record = bundled_ptbxl / RECORDS / "00001_lr"
    # a lead the model needs is missing
    no_v6 = write_record(record, tmp_path, "no_v6", lambda signal, names: None, drop="V6")
    with pytest.raises(MissingChannelError, match=r"no_v6.*missing channel\(s\) V6"):
        predictor.predict_file(str(no_v6) + ".hea")
    # a sampling rate too low for the 0.5-40 Hz band the model was trained on
    raw = wfdb.rdrecord(str(record)).p_signal.T.astype(np.float32)
    with pytest.raises(InvalidSignalError, match="sampled at 50 Hz, too low"):
        predictor.predict_array(raw[:, ::2], fs=50.0, channel_names=predictor.channels)
    # a higher rate is resampled to the model's 100 Hz: same windows as the original
    up = np.repeat(raw, 5, axis=1)
    assert predictor.preprocess_array(up, 500.0, predictor.channels)[0].shape == (9, 12, 200)
    # wrong shapes
    with pytest.raises(InvalidSignalError, match=r"do not fit the model, which takes \(N, 12, 200\)"):
        predictor.predict_windows(np.zeros((2, 12, 150), np.float32))
    with pytest.raises(InvalidSignalError, match="expected \\(channels, samples\\) with 12 channels"):
        predictor.predict_array(raw[:5], fs=100.0, channel_names=predictor.channels)
    # too short for one window
    with pytest.raises(DataError, match="fewer than one window"):
        predictor.predict_array(raw[:, :150], fs=100.0, channel_names=predictor.channels)


def test_predict_cli_writes_csv_and_json_and_can_skip_bad_files(
    model_path: Path, bundled_ptbxl: Path, tmp_path: Path
) -> None:
    good = [str(bundled_ptbxl / RECORDS / f"{n:05d}_lr.hea") for n in (3, 4)]
    (tmp_path / "bad.hea").write_text("not a header\n")
    base = [sys.executable, "-m", "medcl", "predict", "--model", str(model_path)]
    result = subprocess.run(
        [*base, *good, "--out", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == good and {"p_NORM", "p_MI", "predicted", "windows"} <= set(rows[0])
    assert all(abs(float(r["p_NORM"]) + float(r["p_MI"]) - 1) < 1e-5 for r in rows)

    result = subprocess.run(
        [*base, good[0], "--per-window", "--out", str(tmp_path / "p.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    windows = json.loads((tmp_path / "p.json").read_text())
    assert len(windows) == 9 and windows[3]["start_s"] == 3.0

    strict = subprocess.run(
        [*base, good[0], str(tmp_path / "bad.hea")], capture_output=True, text=True, timeout=300
    )
    assert strict.returncode == 2 and "Traceback" not in strict.stderr and "bad.hea" in strict.stderr
    lenient = subprocess.run(
        [*base, good[0], str(tmp_path / "bad.hea"), "--on-error", "skip"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lenient.returncode == 0 and "1 of 2 file(s) skipped" in lenient.stderr
    assert len(pd.read_csv(pd.io.common.StringIO(lenient.stdout))) == 1


def test_csv_and_edf_inputs_give_the_wfdb_predictions(
    model_path: Path, bundled_ptbxl: Path, tmp_path: Path
) -> None:
    """The same real recording as WFDB, as CSV (with a time column) and as EDF: the same predictions."""
    import pyedflib

    predictor = OnnxPredictor(model_path)
    record = wfdb.rdrecord(str(bundled_ptbxl / RECORDS / "00005_lr"))
    reference = predictor.predict_file(str(bundled_ptbxl / RECORDS / "00005_lr.hea"))

    table = pd.DataFrame(record.p_signal, columns=record.sig_name)
    table.insert(0, "Time [s]", np.arange(record.sig_len) / record.fs)
    table.to_csv(tmp_path / "00005.csv", index=False, float_format="%.6f")
    from_csv = predictor.predict_file(tmp_path / "00005.csv")
    np.testing.assert_allclose(from_csv.window_probabilities, reference.window_probabilities, atol=1e-5)

    edf = pyedflib.EdfWriter(
        str(tmp_path / "00005.edf"), len(record.sig_name), file_type=pyedflib.FILETYPE_EDFPLUS
    )
    edf.setSignalHeaders(
        [
            {
                "label": name,
                "dimension": "mV",
                "sample_frequency": record.fs,
                "physical_max": 10.0,
                "physical_min": -10.0,
                "digital_max": 32767,
                "digital_min": -32768,
            }
            for name in record.sig_name
        ]
    )
    edf.writeSamples([np.ascontiguousarray(record.p_signal[:, k]) for k in range(len(record.sig_name))])
    edf.close()
    from_edf = predictor.predict_file(tmp_path / "00005.edf")
    # EDF stores 16-bit integers over ±10 mV: a quantisation of 0.3 uV, far below ECG amplitudes
    np.testing.assert_allclose(from_edf.window_probabilities, reference.window_probabilities, atol=1e-3)
