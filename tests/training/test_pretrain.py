"""PretrainModule: a real Lightning fit on the bundled ECG, checkpoints, probe isolation, bad data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medcl.checkpoints import load_checkpoint, load_encoder
from medcl.data import contract
from medcl.data.datamodule import PretrainDataModule
from medcl.data.splits import SplitConfig
from medcl.errors import ConfigError, CorruptFileError, TooManyBadSamplesError
from medcl.losses import nt_xent_loss
from medcl.objectives import EncodedViews, Objective, SimCLR
from medcl.training.pretrain import PretrainModule
from modalities.signals import SignalAdapter, TsaiEncoder


def small_encoder(in_channels: int = 12) -> TsaiEncoder:
    return TsaiEncoder("InceptionTime", in_channels=in_channels, arch_kwargs={"nf": 8, "depth": 2})


def datamodule(adapter: SignalAdapter | None = None, **kwargs: Any) -> PretrainDataModule:
    adapter = adapter or SignalAdapter(window_s=2.5, view_crop_s=2.0)
    settings: dict[str, Any] = {"batch_size": 32, "samples_per_trial": 1, "trials_per_patient": 1}
    return PretrainDataModule(adapter, split=SplitConfig(method="fold"), **{**settings, **kwargs})


def trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "accelerator": "cpu",
        "logger": CSVLogger(tmp_path, name="run"),
        "callbacks": [ModelCheckpoint(save_last=True)],
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "log_every_n_steps": 1,
    }
    return L.Trainer(**{**settings, **kwargs})


def test_fit_writes_a_checkpoint_that_rebuilds_the_encoder(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = datamodule()
    model = PretrainModule(
        small_encoder(), SimCLR(temperature=0.2), probe_num_classes=5, probe_task="multilabel"
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit = trainer(tmp_path)
    fit.fit(model, datamodule=dm)

    run = Path(fit.log_dir)
    assert (run / "splits.csv").is_file() and (run / "data.json").is_file()
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)  # weights_only=True
    assert checkpoint["medcl"]["input"]["channels"][0] == "I" and checkpoint["medcl"]["modality"] == "ecg"
    changed = [
        k
        for k, v in model.encoder.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert changed, "training did not change the encoder"

    rebuilt = load_encoder(last)
    batch = next(iter(dm.val_dataloader()))
    x = batch[contract.VIEWS][:, 0]
    model.eval()
    torch.testing.assert_close(rebuilt(x), model.encoder(x), rtol=0, atol=0)

    metrics = pd.read_csv(run / "metrics.csv")
    assert (
        np.isfinite(metrics["train/loss_step"].dropna()).all()
        and len(metrics["train/loss_step"].dropna()) == 4
    )
    auroc = metrics["val/probe_auroc"].dropna()
    assert len(auroc) == 1 and 0.0 <= auroc.iloc[0] <= 1.0
    uniformity = metrics["val/uniformity"].dropna().iloc[0]
    assert -4.0 <= uniformity <= 0.0  # log E exp(-2 d²) of unit vectors lies in [-4, 0]
    assert 0.0 <= metrics["val/alignment"].dropna().iloc[0] <= 4.0


def test_step_loss_is_nt_xent_of_the_two_views(tmp_path: Path) -> None:
    dm = datamodule()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = PretrainModule(small_encoder(), SimCLR(temperature=0.3)).eval()
    with torch.no_grad():
        loss = model._step(batch, "val")
        views = batch[contract.VIEWS]
        z = [model.objective.project(model.encoder(views[:, v])) for v in (0, 1)]
        expected = nt_xent_loss(z[0], z[1], temperature=0.3)
    torch.testing.assert_close(loss, expected)


def test_probe_gradients_never_reach_the_encoder() -> None:
    dm = datamodule()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = PretrainModule(small_encoder(), SimCLR(), probe_num_classes=5, probe_task="multilabel")
    pooled, _ = model.encode(batch[contract.VIEWS][:, 0])
    probe_loss = model._probe_step(pooled.detach(), batch, "train")
    probe_loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.probe[1].weight.grad is not None and model.probe[1].weight.grad.abs().sum() > 0


def test_encoder_channels_must_match_the_data(tmp_path: Path) -> None:
    model = PretrainModule(small_encoder(in_channels=2), SimCLR())
    with pytest.raises(ConfigError, match="takes 2 input channels but the data has 12"):
        trainer(tmp_path).fit(model, datamodule=datamodule())


def test_skipping_bad_samples_stops_past_the_allowed_fraction(tmp_path: Path, flaky_adapter: type) -> None:
    probe = datamodule()
    probe.setup("fit")
    train_trials = probe.samples["train"]["trial_id"].unique()
    bad = tuple(str(t) for t in train_trials[: len(train_trials) // 5])  # ~20 % of training recordings
    adapter = flaky_adapter(bad_trials=bad, window_s=2.5, view_crop_s=2.0)

    strict = PretrainModule(small_encoder(), SimCLR())
    with pytest.raises(TooManyBadSamplesError, match="failed to load"):
        dm = datamodule(adapter, on_error="skip", max_skip_fraction=0.05)
        trainer(tmp_path / "a").fit(strict, datamodule=dm)

    tolerant = PretrainModule(small_encoder(), SimCLR())
    run = trainer(tmp_path / "b", limit_val_batches=0)
    dm = datamodule(adapter, on_error="skip", max_skip_fraction=0.5)
    run.fit(tolerant, datamodule=dm)
    assert 0 < dm.skips.distinct("train") < 0.5 * len(dm.samples["train"])
    assert run.global_step == 4

    raising = PretrainModule(small_encoder(), SimCLR())
    with pytest.raises(CorruptFileError, match="simulated truncated"):
        trainer(tmp_path / "c").fit(raising, datamodule=datamodule(adapter))


def test_objective_needing_features_needs_an_encoder_that_has_them() -> None:
    class NeedsFeatures(Objective):
        needs_features = True

        def forward(self, views: EncodedViews) -> dict[str, torch.Tensor]:
            return {"loss": views.features.sum()}

    class PooledOnly(torch.nn.Module):
        embedding_dim = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(-1)

    with pytest.raises(ConfigError, match="no forward_features"):
        PretrainModule(PooledOnly(), NeedsFeatures())
    with pytest.raises(ConfigError, match="embedding_dim"):
        PretrainModule(torch.nn.Linear(2, 2), SimCLR())
