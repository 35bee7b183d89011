"""Determinism: the same seed gives the same losses, batches and weights on CPU; another seed does not.

Real runs on the bundled PTB-XL records: a small TS2Vec encoder (its timestamp masks and dropout draw
from torch's global generator) under hierarchical contrast with two random views per sample, 6 steps
over two epochs. Losses are compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medcl.data import PretrainDataModule, SplitConfig
from medcl.objectives import HierarchicalContrast
from medcl.training import PretrainModule
from modalities.signals import SignalAdapter, TS2VecEncoder
from modalities.signals.indexing import index_signals, save_index


class Recorder(Callback):
    """``(epoch, global step, sample indices, loss)`` of every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, tuple[int, ...], float]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        keys = tuple(int(i) for i in batch["index"])
        self.steps.append((trainer.current_epoch, trainer.global_step, keys, float(outputs["loss"])))


@pytest.fixture(scope="module")
def ptbxl_index(tmp_path_factory: pytest.TempPathFactory, bundled_ptbxl: Path) -> Path:
    return save_index(index_signals("ptbxl", bundled_ptbxl), tmp_path_factory.mktemp("ptbxl_index"))


def run(index: Path, seed: int, num_workers: int = 0) -> tuple[Recorder, dict[str, torch.Tensor]]:
    """A fresh 6-step fit (epochs of 3 batches of 8 windows) with ``seed`` for everything."""
    L.seed_everything(seed, verbose=False)
    adapter = SignalAdapter(window_s=2.0, stride_s=1.0, aligned_views=True, index_dir=str(index))
    data = PretrainDataModule(
        adapter,
        batch_size=8,
        samples_per_trial=2,
        trials_per_patient=2,
        split=SplitConfig(method="fold"),
        seed=seed,
        use_labels=False,
        num_workers=num_workers,
    )
    module = PretrainModule(
        TS2VecEncoder(12, hidden_dims=8, output_dims=16, depth=1),
        HierarchicalContrast(gather_distributed=False),
        lr=3e-3,
    )
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=6,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    return recorder, {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def seed0(ptbxl_index: Path) -> tuple[Recorder, dict[str, torch.Tensor]]:
    return run(ptbxl_index, seed=0)


def test_same_seed_same_losses_batches_and_weights(
    seed0: tuple[Recorder, dict[str, torch.Tensor]], ptbxl_index: Path
) -> None:
    first, first_state = seed0
    second, second_state = run(ptbxl_index, seed=0)
    assert [s[:2] for s in first.steps] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    assert [s[2] for s in second.steps] == [s[2] for s in first.steps]
    assert [s[3] for s in second.steps] == [s[3] for s in first.steps]  # bit for bit
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)


def test_worker_processes_do_not_change_the_losses(
    seed0: tuple[Recorder, dict[str, torch.Tensor]], ptbxl_index: Path
) -> None:
    """Views are seeded per sample from (seed, epoch, index), so loading in 2 worker processes gives the
    same batches and losses as loading in the main process."""
    with_workers, _ = run(ptbxl_index, seed=0, num_workers=2)
    assert with_workers.steps == seed0[0].steps


def test_another_seed_gives_other_batches_and_losses(
    seed0: tuple[Recorder, dict[str, torch.Tensor]], ptbxl_index: Path
) -> None:
    other, _ = run(ptbxl_index, seed=1)
    first = seed0[0]
    assert [s[:2] for s in other.steps] == [s[:2] for s in first.steps]
    assert all(a[2] != b[2] for a, b in zip(other.steps, first.steps, strict=True))
    assert all(a[3] != b[3] for a, b in zip(other.steps, first.steps, strict=True))
