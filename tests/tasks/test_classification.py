"""ClassificationModule: linear / fine-tune / scratch arms on the bundled PTB-XL, metrics, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from medcl.checkpoints import encoder_state_dict, load_checkpoint
from medcl.data import SplitConfig
from medcl.errors import ConfigError
from modalities.signals import SignalAdapter
from tasks import ClassificationDataModule, ClassificationModule, classification_metrics

REPO = Path(__file__).resolve().parents[2]


def data(**kwargs: Any) -> ClassificationDataModule:
    adapter = kwargs.pop("adapter", None) or SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0)
    return ClassificationDataModule(adapter, split=SplitConfig(method="fold"), batch_size=32, **kwargs)


def fit(
    model: ClassificationModule, dm: ClassificationDataModule, tmp_path: Path, steps: int = 3
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_linear_mode_freezes_the_encoder(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    model = ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), mode="linear", num_classes=2)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.clone()
    fit(model, data(), tmp_path)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # weights and BN statistics
    assert not torch.equal(model.head.weight, head_before)
    assert isinstance(model.head, torch.nn.Linear)


def test_finetune_starts_from_the_checkpoint_and_trains_the_encoder_slower(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    model = ClassificationModule(
        encoder_ckpt=str(pretrained_checkpoint), mode="finetune", num_classes=2, lr=1e-3, encoder_lr_scale=0.1
    )
    pretrained = encoder_state_dict(load_checkpoint(pretrained_checkpoint))
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, pretrained[key], rtol=0, atol=0)
    trainer = fit(model, data(), tmp_path)
    groups = trainer.optimizers[0].param_groups
    assert groups[0]["initial_lr"] == pytest.approx(1e-3) and groups[1]["initial_lr"] == pytest.approx(1e-4)
    assert any(
        not torch.equal(v, pretrained[k])
        for k, v in model.encoder.state_dict().items()
        if v.is_floating_point()
    )


def test_scratch_uses_the_architecture_but_not_the_weights(pretrained_checkpoint: Path) -> None:
    model = ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), mode="scratch", num_classes=2)
    pretrained = encoder_state_dict(load_checkpoint(pretrained_checkpoint))
    state = model.encoder.state_dict()
    assert set(state) == set(pretrained)
    assert any(not torch.equal(state[k], pretrained[k]) for k in state if "weight" in k)


def test_test_metrics_cover_the_whole_test_split(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    dm = data(label_fraction=0.1)
    model = ClassificationModule(
        encoder_ckpt=str(pretrained_checkpoint), mode="finetune", num_classes=2, class_names=["NORM", "MI"]
    )
    trainer = fit(model, dm, tmp_path)
    train_patients = dm.samples["train"]["patient_id"].nunique()
    labelled = dm.samples["val"]  # never subsampled
    assert train_patients == math.ceil(0.1 * 154) and len(labelled) == 297
    trainer.test(model, datamodule=dm)
    saved = json.loads((Path(trainer.log_dir) / "test_metrics.json").read_text())
    # Recompute from the model's own predictions on the test loader.
    model.eval()
    probabilities, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            probabilities.append(model.predict_proba(batch["signal"]))
            targets.append(batch["label"])
    expected = classification_metrics(
        torch.cat(probabilities).numpy(), torch.cat(targets).numpy(), "multiclass"
    )
    assert saved["n"] == len(dm.samples["test"]) == expected["n"]
    assert saved["auroc"] == pytest.approx(expected["auroc"], abs=1e-6)


def test_mismatched_pretraining_data_is_refused(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    model = ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), mode="finetune", num_classes=2)
    other = SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0, target_fs=250.0)
    with pytest.raises(ConfigError, match=r"pretrained on fs=100\.0 but the data gives fs=250\.0"):
        fit(model, data(adapter=other), tmp_path)


def test_input_key_comes_from_the_data_module_unless_it_disagrees(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    model = ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), mode="linear", num_classes=2)
    assert model.hparams["input_key"] is None
    trainer = fit(model, data(), tmp_path)
    assert model.hparams["input_key"] == "signal"
    saved = tmp_path / "taken.ckpt"
    trainer.save_checkpoint(saved, weights_only=True)
    assert load_checkpoint(saved)["hyper_parameters"]["input_key"] == "signal"
    wrong = ClassificationModule(
        encoder_ckpt=str(pretrained_checkpoint), mode="linear", num_classes=2, input_key="image"
    )
    with pytest.raises(ConfigError, match="input_key is 'image' but the data module's samples hold 'signal'"):
        fit(wrong, data(), tmp_path)
    with pytest.raises(ConfigError, match="the batch has no input 'image'"):
        wrong._inputs({"signal": torch.zeros(1), "label": torch.zeros(1)})


def test_settings_errors(pretrained_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="needs a pretrained encoder"):
        ClassificationModule(mode="finetune", num_classes=2)
    with pytest.raises(ConfigError, match="mode must be"):
        ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), mode="probe")
    with pytest.raises(ConfigError, match="2 class names for 3 classes"):
        ClassificationModule(encoder_ckpt=str(pretrained_checkpoint), num_classes=3, class_names=["a", "b"])


def test_finetune_cli_fits_then_tests(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcl",
            "finetune",
            "--config",
            str(REPO / "configs/finetune/ptbxl_norm_mi.yaml"),
            f"--model.encoder_ckpt={pretrained_checkpoint}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.label_fraction=0.1",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "finetune_ptbxl_norm_mi" / "version_0"
    scores = json.loads((run / "test_metrics.json").read_text())
    assert scores["n"] == 288 and 0.0 <= scores["auroc"] <= 1.0
    train = pd.read_csv(run / "samples_train.csv", dtype={"patient_id": str})
    assert train["patient_id"].nunique() == math.ceil(0.1 * 154)
    meta = load_checkpoint(run / "checkpoints" / "last.ckpt")["medcl"]
    assert meta["class_names"] == ["NORM", "MI"] and meta["task"] == "multiclass"
    assert meta["input"]["channels"][0] == "I"


def test_multilabel_superclasses_from_the_shipped_config(pretrained_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medcl",
            "finetune",
            "--config",
            str(REPO / "configs/finetune/ptbxl_superclass.yaml"),
            f"--model.encoder_ckpt={pretrained_checkpoint}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "finetune_ptbxl_superclass" / "version_0"
    scores = json.loads((run / "test_metrics.json").read_text())
    test = pd.read_csv(run / "samples_test.csv")
    assert scores["n"] == len(test) and scores["classes_scored"] == 5
    meta = load_checkpoint(run / "checkpoints" / "last.ckpt")["medcl"]
    assert meta["task"] == "multilabel" and meta["class_names"] == ["NORM", "MI", "STTC", "CD", "HYP"]
