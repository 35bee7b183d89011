"""The ``medcl`` command: pretraining through LightningCLI on the bundled ECG, and clean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from medcl.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pretrain" / "simclr_ecg.yaml"


def medcl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medcl", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_pretrain_fit_then_validate_from_the_shipped_config(tmp_path: Path) -> None:
    quick = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.lr=0.005",
        "--data.batch_size=16",
    ]
    fit = medcl("pretrain", "--config", str(CONFIG), *quick, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "simclr_ecg" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["lr"] == 0.005  # dotted overrides land in the resolved config saved with the run
    assert saved["data"]["batch_size"] == 16
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["probe_num_classes"] == 5  # linked from the data module
    assert checkpoint["global_step"] == 2
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["train/loss_epoch"].notna().sum() == 1 and metrics["val/loss"].notna().sum() == 1
    for name in ("trials.csv", "splits.csv", "quarantine.csv", "data.json"):
        assert (run / name).is_file()

    validate = medcl(
        "pretrain",
        "validate",
        "--config",
        str(CONFIG),
        "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'validate'}",
        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        cwd=tmp_path,
    )
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "val/loss" in validate.stdout


def test_bad_data_root_is_a_one_line_error(tmp_path: Path) -> None:
    result = medcl(
        "pretrain",
        "--config",
        str(CONFIG),
        f"--data.adapter.init_args.root={tmp_path / 'missing'}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"medcl pretrain: error: data root '{tmp_path / 'missing'}' is not a folder"
    )


def test_unknown_command_and_help() -> None:
    result = medcl("train", cwd=REPO)
    assert result.returncode == 2 and "unknown command 'train'" in result.stderr
    result = medcl("--help", cwd=REPO)
    assert result.returncode == 0 and "pretrain" in result.stdout and "index" in result.stdout
