"""The wearable and cross-modality configs parse and train through ``medcl pretrain``'s CLI class.

Any adapter × any objective: participant contrast on PPG (``participant_ppg``) and on ECG through the
ECG/EEG adapter (``participant_ecg``), and the hierarchical objective on PPG through the wearable adapter
(``comet_ppg``). Each shipped config runs for 2 training batches and 1 validation batch, from the
repository root (its data paths are relative to it), with a smaller encoder and batch (``SPEED``) so the
three runs take seconds on 2 CPU cores; data, segmentation, views, objective and logging are the
shipped ones. The run is in-process (``PretrainCLI(args=...)``, what ``medcl pretrain`` runs), which
spares three interpreter start-ups; tests/test_cli.py covers the ``medcl`` command itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medcl.checkpoints import load_checkpoint
from medcl.training.cli import PretrainCLI

pytestmark = pytest.mark.shared_data

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "pretrain"
TINY_INCEPTION = ["--model.encoder.init_args.arch_kwargs={nf: 4, depth: 1}"]
SPEED = {
    "participant_ppg": [*TINY_INCEPTION, "--data.batch_size=8", "--model.objective.init_args.hidden_dim=16"],
    "participant_ecg": [*TINY_INCEPTION, "--data.batch_size=8", "--model.objective.init_args.hidden_dim=16"],
    "comet_ppg": [
        "--data.batch_size=8",
        "--model.encoder.init_args.hidden_dims=8",
        "--model.encoder.init_args.output_dims=16",
        "--model.encoder.init_args.depth=2",
    ],
}
DATA = {"participant_ppg": "bidmc", "comet_ppg": "bidmc", "participant_ecg": "mitdb"}


@pytest.fixture()
def in_repo(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip(
            f"the configs read ../shared/data relative to the repository; MEDCL_SHARED_DATA is {shared_data}"
        )
    monkeypatch.chdir(REPO)
    return shared_data


def run_config(name: str, save_dir: Path, *extra: str) -> Path:
    """Fit ``configs/pretrain/<name>.yaml`` for 2 batches; return the run folder."""
    args = [
        "fit",
        "--config",
        str(CONFIGS / f"{name}.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        *SPEED[name],
        *extra,
    ]
    PretrainCLI(args=args)
    return save_dir / name / "version_0"


def _epoch_values(run: Path, *names: str) -> dict[str, float]:
    metrics = pd.read_csv(run / "metrics.csv")
    values = {}
    for name in names:
        column = metrics[f"train/{name}_epoch"].dropna()
        assert len(column) == 1, (name, column)
        values[name] = float(column.iloc[0])
    return values


@pytest.mark.parametrize("positives", ["participant", "segment"])
def test_participant_ppg(in_repo: Path, tmp_path: Path, positives: str) -> None:
    if not (in_repo / DATA["participant_ppg"]).is_dir():
        pytest.skip("BIDMC is not in the shared data")
    run = run_config("participant_ppg", tmp_path, f"--model.objective.init_args.positives={positives}")
    values = _epoch_values(run, "info_nce", "koleo", "pairs", "unpaired")
    assert all(math.isfinite(v) for v in values.values())
    # 2 recordings x 2 segments of each participant per group: every batch of 8 has pairs
    assert values["pairs"] >= (8 if positives == "segment" else 2)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    spec = checkpoint["medcl"]["objective"]
    assert spec["class_path"] == "medcl.objectives.participant.ParticipantContrast"
    assert spec["init_args"]["positives"] == positives and spec["init_args"]["temperature"] == 0.04
    assert spec["init_args"]["koleo_weight"] == 0.1 and spec["init_args"]["momentum"] == 0.99
    assert spec["init_args"]["projection_dim"] == 256
    assert any(k.startswith("objective.momentum_encoder.") for k in checkpoint["state_dict"])
    assert checkpoint["medcl"]["adapter"]["class_path"] == "modalities.wearables.adapter.WearableAdapter"
    assert (
        checkpoint["medcl"]["input"]["fs"] == 64.0 and checkpoint["medcl"]["input"]["window_samples"] == 3840
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["adapter"]["init_args"]["root"] == "../shared/data/bidmc"
    samples = pd.read_csv(run / "samples_train.csv")
    assert samples["patient_id"].str.startswith("s").all()  # participants are MIMIC-II subjects


def test_comet_ppg(in_repo: Path, tmp_path: Path) -> None:
    if not (in_repo / DATA["comet_ppg"]).is_dir():
        pytest.skip("BIDMC is not in the shared data")
    run = run_config("comet_ppg", tmp_path)
    values = _epoch_values(run, "observation", "sample", "trial", "patient")
    assert all(math.isfinite(v) and v > 0 for v in values.values())
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (
        checkpoint["medcl"]["objective"]["class_path"] == "medcl.objectives.hierarchical.HierarchicalContrast"
    )
    assert checkpoint["medcl"]["input"]["window_samples"] == 640  # 10 s at 64 Hz


def test_participant_ecg(in_repo: Path, tmp_path: Path) -> None:
    if not (in_repo / DATA["participant_ecg"]).is_dir():
        pytest.skip("MIT-BIH is not in the shared data")
    run = run_config("participant_ecg", tmp_path)
    values = _epoch_values(run, "info_nce", "pairs")
    assert math.isfinite(values["info_nce"]) and values["pairs"] >= 2
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["medcl"]["adapter"]["class_path"] == "modalities.signals.adapter.SignalAdapter"
    assert checkpoint["medcl"]["objective"]["init_args"]["augmentation"] == {"channel_permutation_prob": 0.0}
    assert (
        checkpoint["medcl"]["input"]["fs"] == 128.0 and checkpoint["medcl"]["input"]["window_samples"] == 7680
    )
    counts = pd.read_csv(run / "samples_train.csv").groupby("patient_id").size()
    assert (counts == 30).all()  # 30 one-minute segments of every person: participant positives
