"""The shipped volume pretraining configs run through ``medcl pretrain`` on the real lung CTs.

Each config is fitted for one epoch (a smaller ROI and encoder than shipped, to stay quick) and the run is
checked: the logged total equals the sum of its logged terms, the checkpoint rebuilds the encoder that
was trained (same weights, weights_only loading) and records the CT preprocessing it was trained with.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from medcl.checkpoints import load_checkpoint, load_encoder

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "pretrain"

QUICK_ENCODER = ["--model.encoder.init_args.features=[4,4,8,8,16,4]"]
QUICK = {
    "voco_ct": [
        "--model.encoder=modalities.volumes.UNetBackbone",  # the shipped SwinUNETR is too slow for a test
        *QUICK_ENCODER,
        "--model.objective.init_args.crop_size=32",
        "--data.adapter.init_args.spacing=[4.0,4.0,5.0]",
        "--data.adapter.init_args.roi=[64,64,32]",
        "--model.objective.init_args.n_bases_per_side=2",
    ],
    "asymmetry_ct": [
        *QUICK_ENCODER,
        "--data.adapter.init_args.spacing=[4.0,4.0,5.0]",
        "--data.adapter.init_args.roi=[80,64,32]",
        "--model.objective.init_args.roi_size=[80,64,32]",
    ],
}
TERMS = {"voco_ct": ("voco_pred", "voco_reg"), "asymmetry_ct": ("asym_symmetry", "asym_margin")}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(QUICK))
def test_volume_config_trains_on_real_ct(name: str, tmp_path: Path, shared_data: Path) -> None:
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip(
            f"the config reads ../shared/data relative to the repository, MEDCL_SHARED_DATA={shared_data}"
        )
    command = [
        sys.executable,
        "-m",
        "medcl",
        "pretrain",
        "--config",
        str(CONFIGS / f"{name}.yaml"),
        "--trainer.max_epochs=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *QUICK[name],
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / name / "version_0"

    metrics = pd.read_csv(run / "metrics.csv")
    step = metrics.dropna(subset=["train/loss_step"]).iloc[0]
    total = sum(step[f"train/{term}_step"] for term in TERMS[name])
    assert step["train/loss_step"] == pytest.approx(total, rel=1e-5)

    trials = pd.read_csv(run / "trials.csv")
    assert sorted(trials["trial_id"]) == ["lung1", "lung2"]

    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    record = checkpoint["medcl"]
    steps = {s["op"]: s for s in record["input"]["preprocessing"]}
    assert steps["window"]["a_min"] == -175.0 and steps["window"]["a_max"] == 250.0
    assert steps["orientation"]["axcodes"] == "RAS"
    encoder = load_encoder(run / "checkpoints" / "last.ckpt")
    trained = {
        k[len("encoder.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.")
    }
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, trained[key])
