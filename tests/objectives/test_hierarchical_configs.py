"""The shipped COMET-style configs run end to end through ``medcl pretrain`` and log every level.

Each config is run as a user would (``python -m medcl pretrain --config ...`` from the repository root,
whose relative data paths it uses) for two training batches and one validation batch. The ECG config
runs with its shipped sizes; the EEG one with a smaller encoder and batch (``SPEED``) to keep the test
quick on 2 CPU cores: everything else (data, views, grouping, objective, logging, checkpoint) is the
shipped config.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medcl.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "pretrain"
LEVELS = ("observation", "sample", "trial", "patient")
SPEED = {
    "comet_ecg": [],
    "comet_eeg": [
        "--data.batch_size=16",
        "--model.encoder.init_args.hidden_dims=16",
        "--model.encoder.init_args.output_dims=32",
        "--model.encoder.init_args.depth=3",
    ],
}


def run_config(name: str, save_dir: Path) -> Path:
    """Fit ``configs/pretrain/<name>.yaml`` for 2 batches; return the run folder."""
    command = [
        sys.executable,
        "-m",
        "medcl",
        "pretrain",
        "--config",
        str(CONFIGS / f"{name}.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        *SPEED[name],
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return save_dir / name / "version_0"


def check_run(run: Path) -> None:
    metrics = pd.read_csv(run / "metrics.csv")
    for level in LEVELS:
        column = f"train/{level}_epoch"
        assert column in metrics.columns, f"{column} not logged; columns: {sorted(metrics.columns)}"
        values = metrics[column].dropna()
        assert len(values) == 1 and math.isfinite(values.iloc[0]) and values.iloc[0] > 0, (column, values)
        assert f"val/{level}" in metrics.columns
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    spec = checkpoint["medcl"]["objective"]
    assert spec is not None and spec["class_path"] == "medcl.objectives.hierarchical.HierarchicalContrast"
    assert spec["init_args"]["trial_weight"] == 0.25 and spec["init_args"]["patient_weight"] == 0.25
    assert checkpoint["medcl"]["encoder"]["class_path"].endswith("TS2VecEncoder")


def test_comet_ecg_config_runs_on_the_bundled_ptbxl(tmp_path: Path) -> None:
    check_run(run_config("comet_ecg", tmp_path))


@pytest.mark.shared_data
def test_comet_eeg_config_runs_on_eegmat(tmp_path: Path, shared_data: Path) -> None:
    if not (shared_data / "eeg_mental_arithmetic").is_dir():
        pytest.skip(f"{shared_data / 'eeg_mental_arithmetic'} not found: the eegmat recordings are not here")
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip(
            "the EEG config reads ../shared/data relative to the repository root, and MEDCL_SHARED_DATA "
            f"points elsewhere ({shared_data})"
        )
    run = run_config("comet_eeg", tmp_path)
    check_run(run)
    counts = pd.read_csv(run / "samples_train.csv").groupby("patient_id")["trial_id"].nunique()
    assert (counts == 2).all()  # rest and task recording of every subject: a meaningful patient level
