"""Objectives that make their own inputs (BatchObjective) through the real data module and Trainer.

A tiny batch objective with a seeded item transform runs on the bundled real PTB-XL records: the test
checks that the data module hands every sample to the objective's transform with the seed of
``(seed, epoch, index)``, that ``forward_batch`` receives what the transform made, and that the
objective's after-step hook (how EMA teachers follow the encoder) runs once per optimiser step, and
that Lightning's per-epoch ``set_epoch`` reaches the grouped batch sampler (new plan, new seeds).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from monai.transforms import Randomizable
from torch import Tensor, nn

from medcl.data import PretrainDataModule, SplitConfig
from medcl.data.dataset import view_seed
from medcl.objectives import BatchObjective
from medcl.training import PretrainModule
from modalities.signals import SignalAdapter, TsaiEncoder

CROP = 64


class RandomCropPair(Randomizable):
    """Two random crops of length CROP of the sample's signal."""

    output_keys = ("crop_a", "crop_b", "offsets")

    def __init__(self, input_key: str) -> None:
        self.input_key = input_key

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        signal = np.asarray(sample[self.input_key])
        offsets = self.R.randint(0, signal.shape[-1] - CROP + 1, size=2)
        out = dict(sample)
        out["crop_a"] = signal[:, offsets[0] : offsets[0] + CROP].astype(np.float32)
        out["crop_b"] = signal[:, offsets[1] : offsets[1] + CROP].astype(np.float32)
        out["offsets"] = offsets.astype(np.int64)
        return out


class CropAgreement(BatchObjective):
    """Mean squared distance of the two crops' embeddings (a toy loss: the test is about plumbing)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, Any]] = []
        self.steps_seen = 0

    def item_transform(self, input_key: str) -> RandomCropPair:
        return RandomCropPair(input_key)

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        self.batches.append({k: v.clone() for k, v in batch.items() if isinstance(v, Tensor)})
        z = encoder(torch.cat([batch["crop_a"], batch["crop_b"]]))
        a, b = z.chunk(2)
        distance = (a - b).pow(2).sum(dim=1).mean()
        return {"crop_distance": distance.detach(), "loss": distance}

    def on_after_optimizer_step(self, encoder: nn.Module) -> None:
        self.steps_seen += 1


def _bundled_data(bundled_ptbxl, tmp_path) -> tuple[SignalAdapter, PretrainDataModule]:
    """Batches of 8 single 2 s windows of the bundled PTB-XL records, data seed 3."""
    adapter = SignalAdapter(root=str(bundled_ptbxl), window_s=2.0, stride_s=2.0)
    data = PretrainDataModule(
        adapter,
        batch_size=8,
        samples_per_trial=1,
        trials_per_patient=1,
        split=SplitConfig(method="fold"),
        seed=3,
        run_dir=str(tmp_path),
    )
    return adapter, data


def test_batch_objective_gets_seeded_items_and_step_hook(bundled_ptbxl, tmp_path) -> None:
    L.seed_everything(0)
    adapter, data = _bundled_data(bundled_ptbxl, tmp_path)
    objective = CropAgreement()
    encoder = TsaiEncoder(arch="FCN", in_channels=12)
    module = PretrainModule(encoder, objective, lr=1e-3, warmup_epochs=0)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)

    assert isinstance(data.item_transform, RandomCropPair)
    assert objective.steps_seen == trainer.global_step == 4
    # Every item was made by the transform seeded from (seed, epoch, index): redo it for each.
    train = data.dataset("train")
    for step, batch in enumerate(objective.batches):
        epoch = step // 2
        assert "views" not in batch
        for row, index in enumerate(batch["index"].tolist()):
            redo = RandomCropPair(adapter.input_key)
            redo.set_random_state(seed=view_seed(3, epoch, index, 0))
            expected = redo(adapter.load_sample(train.samples.iloc[index]))
            np.testing.assert_array_equal(batch["offsets"][row].numpy(), expected["offsets"])
            np.testing.assert_allclose(batch["crop_a"][row].numpy(), expected["crop_a"], rtol=0, atol=0)
    # The epoch reached the batch sampler (Lightning sets it through `batch_sampler.sampler`): the second
    # epoch is a different plan, so the check above used epoch 1's seeds for it.
    assert not torch.equal(objective.batches[0]["index"], objective.batches[2]["index"])


class FirstCropPair(RandomCropPair):
    """Both crops at offset 0: a transform without randomness (as an objective's evaluation inputs)."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        signal = np.asarray(sample[self.input_key])
        out = dict(sample)
        out["crop_a"] = out["crop_b"] = signal[:, :CROP].astype(np.float32)
        out["offsets"] = np.zeros(2, dtype=np.int64)
        return out


class CropAgreementFixedInEval(CropAgreement):
    """Random crops for training samples, the first crops for validation and test samples."""

    def __init__(self) -> None:
        super().__init__()
        self.training_flags: list[bool] = []

    def eval_item_transform(self, input_key: str) -> FirstCropPair:
        return FirstCropPair(input_key)

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        self.training_flags.append(self.training)
        return super().forward_batch(encoder, batch)


def test_validation_samples_get_the_objectives_eval_transform(bundled_ptbxl, tmp_path) -> None:
    """An objective's eval_item_transform (e.g. without augmentation) makes the validation and test
    items; training items keep item_transform; without one, every split gets item_transform."""
    L.seed_everything(0)
    _, data = _bundled_data(bundled_ptbxl, tmp_path)
    objective = CropAgreementFixedInEval()
    module = PretrainModule(TsaiEncoder(arch="FCN", in_channels=12), objective, lr=1e-3, warmup_epochs=0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)

    assert objective.training_flags == [True, True, False, False]
    train_offsets = torch.cat([b["offsets"] for b in objective.batches[:2]])
    val_offsets = torch.cat([b["offsets"] for b in objective.batches[2:]])
    assert bool((train_offsets > 0).any())  # random crops (64-sample crops of 200-sample windows)
    assert torch.equal(val_offsets, torch.zeros_like(val_offsets))
    assert type(data.dataset("train").item_transform) is RandomCropPair
    assert type(data.dataset("val").item_transform) is FirstCropPair
    assert type(data.dataset("test").item_transform) is FirstCropPair
    # the base class's default (None): validation samples get the training transform
    assert CropAgreement().eval_item_transform("signal") is None
