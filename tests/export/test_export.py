"""ONNX export: metadata, parity (random and real inputs), dynamic batch, failure above tolerance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import ExportParityError, export_classifier, load_classifier
from medcl.errors import ConfigError


@pytest.fixture(scope="module")
def exported(classifier_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    metadata = export_classifier(classifier_checkpoint, out)
    return out, metadata


def test_metadata_holds_everything_needed_for_inference(exported: tuple[Path, dict]) -> None:
    path, metadata = exported
    model = onnx.load(str(path))
    stored = json.loads({p.key: p.value for p in model.metadata_props}["medcl"])
    assert stored == json.loads(json.dumps(metadata))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert stored["task"] == "multiclass" and stored["class_names"] == ["NORM", "MI"]
    assert stored["modality"] == "ecg"
    assert stored["input"]["channels"][:3] == ["I", "II", "III"] and stored["input"]["fs"] == 100.0
    assert stored["input"]["window_samples"] == 200
    ops = [step["op"] for step in stored["preprocessing"]]
    assert ops == ["read", "fill_nan", "resample", "bandpass", "zscore", "window"]
    assert not list(path.parent.glob("*.data")), "one self-contained file"


def test_parity_on_random_and_real_inputs(exported: tuple[Path, dict]) -> None:
    parity = exported[1]["parity"]
    for name in ("random", "real"):
        assert parity[name]["passed"] is True
        assert parity[name]["n_inputs"] >= 8
        assert parity[name]["max_abs_error"] <= 1e-5
    assert parity["rtol"] == 1e-4 and parity["atol"] == 1e-5


def test_dynamic_batch_matches_torch(exported: tuple[Path, dict], classifier_checkpoint: Path) -> None:
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    model, _ = load_classifier(classifier_checkpoint)
    for batch in (1, 7, 33):
        x = np.random.default_rng(batch).standard_normal((batch, 12, 200)).astype(np.float32)
        logits, probabilities = session.run(["logits", "probabilities"], {"input": x})
        with torch.no_grad():
            expected_logits, expected_probabilities = model(torch.from_numpy(x))
        np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probabilities, expected_probabilities.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_export_fails_above_tolerance_and_writes_nothing(
    classifier_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx as module

    class OffByAMillesimal(ort.InferenceSession):
        def run(self, names, feeds, run_options=None):  # type: ignore[override]
            return [out + 1e-3 for out in super().run(names, feeds, run_options)]

    monkeypatch.setattr(module.ort, "InferenceSession", OffByAMillesimal)
    with pytest.raises(
        ExportParityError, match=r"disagree beyond rtol=0\.0001, atol=1e-05.*no model written"
    ):
        export_classifier(classifier_checkpoint, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_only_classification_checkpoints_export(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a classification checkpoint"):
        export_classifier(pretrained_checkpoint, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="opset must be >= 17"):
        export_classifier(pretrained_checkpoint, tmp_path / "m.onnx", opset=13)


def test_export_cli(classifier_checkpoint: Path, pretrained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "medcl", "export", "--ckpt", str(classifier_checkpoint), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        out.is_file() and "multiclass over NORM, MI" in result.stdout and "real windows (16)" in result.stdout
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcl",
            "export",
            "--ckpt",
            str(pretrained_checkpoint),
            "--out",
            str(tmp_path / "x.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not a classification checkpoint" in bad.stderr
