"""``medcl demo`` end to end (smoke-test sized): every promised output exists and is consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

LEVELS = ("observation", "sample", "trial", "patient")


def test_quick_demo_writes_the_report_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "medcl", "demo", "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/5] pretraining" in result.stdout and "[5/5] report" in result.stdout

    report = json.loads((out / "report.json").read_text())
    runs = pd.DataFrame(report["label_efficiency"]["runs"])
    # every fraction x arm, one seed in quick mode
    assert len(runs) == 9 and set(runs["arm"]) == {"linear_probe", "finetune", "scratch"}
    assert sorted(runs["fraction"].unique()) == [0.01, 0.1, 1.0]
    for _, row in runs.iterrows():
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["f1_macro"] <= 1.0
        assert row["test_patients"] == 28 and row["test_samples"] == 288
    patients = runs.groupby("fraction")["train_patients"].first().to_dict()
    assert patients == {0.01: 2, 0.1: 16, 1.0: 154}  # ceil(f * 154), by patient
    losses = report["pretraining"]["final_train_loss"]
    assert set(LEVELS) <= set(losses) and all(v > 0 for v in losses.values())
    assert report["wall_time_s"]["total"] > 0
    assert report["embedding_map"]["patients"] == 28

    for name in ("label_efficiency.png", "pretraining_loss.png", "embeddings.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (out / "report.md").read_text()
    assert "| 10% | pretrained, fine-tuned | 16 / 144 |" in markdown
    for name in ("label_efficiency.png", "pretraining_loss.png", "embeddings.png"):
        assert f"]({name})" in markdown
    # the summary table holds exactly the runs' numbers
    summary = pd.DataFrame(report["label_efficiency"]["summary"])
    merged = summary.merge(runs, on=["fraction", "arm"])
    assert (merged["auroc_mean"] - merged["auroc"]).abs().max() < 1e-12

    # the exported model: parity recorded, and the torch-free predictor agrees with torch on raw records
    exported = report["export"]
    assert (out / "model.onnx").is_file() and exported["label_fraction"] == 1.0
    assert exported["parity"]["random"]["passed"] and exported["parity"]["real"]["passed"]
    assert exported["records"] == 5 and exported["max_abs_difference"] <= 1e-5
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcl",
            "predict",
            "--model",
            str(out / "model.onnx"),
            *[f"{p}.hea" for p in pd.read_csv(out / exported["record_list"])["path"][:2]],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = predicted.stdout.strip().splitlines()
    assert lines[0] == "file,windows,p_NORM,p_MI,predicted" and len(lines) == 3


def test_quick_volume_demo_writes_the_report_and_a_mask_equal_to_torch(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    out = tmp_path / "volume_demo"
    result = subprocess.run(
        [sys.executable, "-m", "medcl", "demo", "--modality", "volume", "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/4] pretraining" in result.stdout and "[4/4] report" in result.stdout

    report = json.loads((out / "report.json").read_text())
    runs = pd.DataFrame(report["segmentation"]["runs"])
    assert len(runs) == 4 and set(runs["arm"]) == {"finetune", "scratch"}
    patients = runs.groupby("fraction")["train_patients"].first().to_dict()
    assert patients == {0.25: 6, 1.0: 24}  # ceil(f * 24) training patients, one volume each
    assert (runs["test_patients"] == 8).all()
    assert ((runs["dice"] >= 0) & (runs["dice"] <= 1)).all()
    csv = pd.read_csv(out / "segmentation_efficiency.csv")
    assert np.allclose(
        csv.sort_values(["fraction", "arm"])["dice"], runs.sort_values(["fraction", "arm"])["dice"]
    )
    assert report["pretraining"]["loss_per_epoch"]["loss"]

    exported = report["export"]
    assert exported["parity"]["random"]["passed"] and exported["parity"]["volume"]["passed"]
    assert exported["volumes"] == 3 and exported["voxel_agreement"] >= 0.999
    # a written mask is on its input's grid
    checked = pd.read_csv(out / exported["volume_list"])  # the report itself names no volume
    image = nib.load(checked["path"][0])
    mask = nib.load(checked["mask"][0])
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (out / "report.md").read_text()
    assert "| 25% (6) |" in markdown and "| 100% (24) |" in markdown
