"""Participant contrast: pair sampling (property-tested), the momentum update, the loss it assembles,
checkpoints holding the momentum encoder, and a real run on BIDMC PPG."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from medcl.checkpoints import load_checkpoint
from medcl.configurable import instantiate_spec, module_spec
from medcl.data import PretrainDataModule, SplitConfig
from medcl.errors import ConfigError
from medcl.losses import koleo_loss
from medcl.losses.paired import paired_info_nce_loss
from medcl.objectives import ParticipantContrast, ParticipantViews
from medcl.objectives.participant import momentum_update, participant_pairs
from medcl.training import PretrainModule

F64 = torch.float64


# --- pair sampling -------------------------------------------------------------------------------------
layouts = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(layout=layouts, seed=st.integers(0, 2**32 - 1))
def test_pairs_never_self_never_across_participants_and_maximal(
    layout: list[tuple[int, int]], seed: int
) -> None:
    groups = np.array([g for g, _ in layout], dtype=np.int64)
    # segment ids may repeat inside a participant (the same row drawn twice) and across participants
    segments = np.array([g * 100 + s for g, s in layout], dtype=np.int64)
    first, second = participant_pairs(groups, segments, np.random.default_rng(seed))
    assert first.shape == second.shape
    assert np.all(groups[first] == groups[second])  # never two participants
    assert np.all(segments[first] != segments[second])  # never a segment with itself
    used = np.concatenate([first, second])
    assert len(set(used.tolist())) == len(used)  # disjoint pairs
    # as many pairs as the segments allow: min(n // 2, n - largest multiplicity) per participant
    expected = 0
    for group in set(groups.tolist()):
        counts = Counter(segments[groups == group].tolist())
        n = sum(counts.values())
        expected += min(n // 2, n - max(counts.values()))
    assert len(first) == expected
    again = participant_pairs(groups, segments, np.random.default_rng(seed))
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)


def test_pairs_are_random_within_a_participant() -> None:
    groups = np.zeros(6, dtype=np.int64)
    segments = np.arange(6)
    seen = {
        frozenset(
            frozenset(p)
            for p in zip(*participant_pairs(groups, segments, np.random.default_rng(s)), strict=True)
        )
        for s in range(50)
    }
    assert len(seen) > 5  # 15 perfect matchings of 6 segments; many are drawn


# --- momentum update -----------------------------------------------------------------------------------
def _twins() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    return source, target


def test_momentum_update_formula() -> None:
    source, target = _twins()
    t0 = [p.detach().clone() for p in target.parameters()]
    s0 = [p.detach().clone() for p in source.parameters()]
    buffers = [b.clone() for b in target.buffers()]
    momentum_update(target, source, 0.9)
    for t, before, s in zip(target.parameters(), t0, s0, strict=True):
        torch.testing.assert_close(t.detach(), 0.9 * before + 0.1 * s, rtol=0, atol=1e-15)
    for _ in range(9):  # 10 updates towards a fixed source: m^10 t0 + (1 - m^10) s
        momentum_update(target, source, 0.9)
    for t, before, s in zip(target.parameters(), t0, s0, strict=True):
        torch.testing.assert_close(t.detach(), 0.9**10 * before + (1 - 0.9**10) * s, rtol=0, atol=1e-14)
    for b, before in zip(target.buffers(), buffers, strict=True):
        assert torch.equal(b, before)  # BatchNorm statistics are the target's own
    momentum_update(target, source, 0.0)
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        assert torch.equal(t, s)
    with pytest.raises(ConfigError, match="momentum"):
        momentum_update(target, source, 1.5)
    with pytest.raises(ConfigError, match="different parameters"):
        momentum_update(target, nn.Linear(3, 4), 0.5)


# --- the objective on hand-made batches ----------------------------------------------------------------
class TinyEncoder(nn.Module):
    embedding_dim = 6
    in_channels = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=-1)


def _objective(**kwargs: Any) -> tuple[ParticipantContrast, TinyEncoder]:
    torch.manual_seed(1)
    objective = ParticipantContrast(projection_dim=5, hidden_dim=7, gather_distributed=False, **kwargs)
    objective.bind(TinyEncoder.embedding_dim)
    return objective, TinyEncoder()


def _batch(patients: list[int], positives: str = "participant") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    n = len(patients)
    batch = {"patient": torch.tensor(patients), "index": torch.arange(10, 10 + n)}
    for key in ParticipantViews("signal", positives).output_keys:
        batch[key] = torch.randn(n, 2, 32, generator=g)
    return batch


def test_forward_batch_assembles_the_documented_loss() -> None:
    objective, encoder = _objective(koleo_weight=0.3, infonce_weight=0.7, temperature=0.1)
    batch = _batch([4, 4, 4, 4, 7, 7, 9, 2, 2])
    terms = objective.forward_batch(encoder, batch)
    rng = np.random.default_rng([0, *batch["index"].tolist()])
    first, second = participant_pairs(batch["patient"].numpy(), batch["index"].numpy(), rng)
    assert len(first) == 4 and terms["pairs"].item() == 4 and terms["unpaired"].item() == 1  # patient 9
    x = batch["participant_view"]
    query = objective.head(encoder(x))
    with torch.no_grad():
        key = objective.momentum_head(objective.momentum_encoder(x))
    anchors = torch.as_tensor(np.concatenate([first, second]))
    positives = torch.as_tensor(np.concatenate([second, first]))
    nce = paired_info_nce_loss(query, key, anchors, positives, batch["patient"], temperature=0.1)
    kl = 0.5 * (koleo_loss(query[first]) + koleo_loss(query[second]))
    torch.testing.assert_close(terms["info_nce"], nce.detach())
    torch.testing.assert_close(terms["koleo"], kl.detach())
    torch.testing.assert_close(terms["loss"], 0.7 * nce + 0.3 * kl)
    terms["loss"].backward()
    assert all(p.grad is None for p in objective.momentum_encoder.parameters())
    assert all(p.grad is None for p in objective.momentum_head.parameters())
    assert encoder.conv.weight.grad is not None and objective.head.net[0].weight.grad is not None


def test_segment_positives_pair_the_two_views_of_each_sample() -> None:
    objective, encoder = _objective(positives="segment", koleo_weight=0.0)
    batch = _batch([0, 0, 1, 1], positives="segment")
    terms = objective.forward_batch(encoder, batch)
    x = torch.cat([batch["participant_view_a"], batch["participant_view_b"]])
    query = objective.head(encoder(x))
    key = objective._keys(x)
    rows = torch.arange(4)
    expected = paired_info_nce_loss(
        query,
        key,
        torch.cat([rows, rows + 4]),
        torch.cat([rows + 4, rows]),
        torch.cat([batch["index"]] * 2),
        0.04,
    )
    torch.testing.assert_close(terms["info_nce"], expected.detach())
    assert terms["pairs"].item() == 4 and terms["unpaired"].item() == 0


def test_a_batch_without_pairs_is_a_connected_zero() -> None:
    objective, encoder = _objective()
    terms = objective.forward_batch(encoder, _batch([1, 2, 3]))
    assert terms["loss"].item() == 0.0 and terms["unpaired"].item() == 3
    terms["loss"].backward()  # still connected (DDP needs every rank to back-propagate)


def test_after_step_moves_the_teacher_by_the_formula() -> None:
    objective, encoder = _objective(momentum=0.9)
    optimizer = torch.optim.SGD([*encoder.parameters(), *objective.head.parameters()], lr=0.5)
    terms = objective.forward_batch(encoder, _batch([0, 0, 1, 1, 2, 2]))
    teacher_before = [p.detach().clone() for p in objective.momentum_encoder.parameters()]
    head_before = [p.detach().clone() for p in objective.momentum_head.parameters()]
    terms["loss"].backward()
    optimizer.step()
    objective.on_after_optimizer_step(encoder)
    for t, before, s in zip(
        objective.momentum_encoder.parameters(), teacher_before, encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t.detach(), 0.9 * before + 0.1 * s.detach(), rtol=1e-6, atol=1e-7)
    for t, before, s in zip(
        objective.momentum_head.parameters(), head_before, objective.head.parameters(), strict=True
    ):
        torch.testing.assert_close(t.detach(), 0.9 * before + 0.1 * s.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(objective.momentum_encoder.conv.weight, encoder.conv.weight)


def test_state_dict_holds_the_teacher_and_restores_it_before_the_copy_exists() -> None:
    objective, encoder = _objective()
    objective.forward_batch(encoder, _batch([0, 0, 1, 1]))
    with torch.no_grad():
        for p in objective.momentum_encoder.parameters():
            p.add_(1.0)  # a teacher that differs from any fresh copy
    state = objective.state_dict()
    assert any(k.startswith("momentum_encoder.") for k in state) and "momentum_head.net.0.weight" in state
    fresh, fresh_encoder = _objective()
    fresh.load_state_dict(state, strict=True)
    fresh.forward_batch(fresh_encoder, _batch([0, 0, 1, 1]))  # makes the copy, with the saved weights
    for a, b in zip(
        fresh.momentum_encoder.parameters(), objective.momentum_encoder.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert not torch.equal(fresh.momentum_encoder.conv.weight, fresh_encoder.conv.weight)


def test_item_transform_views_are_seeded_and_shaped() -> None:
    sample = {"signal": np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32), "patient_id": "p"}
    views = ParticipantViews("signal", "segment", {"cutout_prob": 1.0, "noise_prob": 1.0})
    views.set_random_state(seed=5)
    a = views(sample)
    views.set_random_state(seed=5)
    b = views(sample)
    assert views.output_keys == ("participant_view_a", "participant_view_b")
    for key in views.output_keys:
        assert a[key].shape == (2, 64) and a[key].dtype == np.float32
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["participant_view_a"], a["participant_view_b"])
    assert ParticipantViews("signal").output_keys == ("participant_view",)


def test_settings_are_checked_and_recorded() -> None:
    for bad in (
        {"positives": "trial"},
        {"temperature": 0.0},
        {"momentum": 1.5},
        {"infonce_weight": 0.0, "koleo_weight": 0.0},
        {"augmentation": {"cutout_probability": 0.5}},
    ):
        with pytest.raises(ConfigError):
            ParticipantContrast(**bad)
    objective = ParticipantContrast(positives="segment", augmentation={"noise_std": 0.1})
    rebuilt = instantiate_spec(module_spec(objective))
    assert isinstance(rebuilt, ParticipantContrast)
    assert rebuilt.positives == "segment" and rebuilt.augmentation == {"noise_std": 0.1}


# --- real data ---------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_trains_on_bidmc_and_a_checkpoint_restores_the_teacher(shared_data: Path, tmp_path: Path) -> None:
    from modalities.signals import TsaiEncoder
    from modalities.wearables import WearableAdapter

    if not (shared_data / "bidmc").is_dir():
        pytest.skip(f"{shared_data / 'bidmc'} not found")
    L.seed_everything(0)
    adapter = WearableAdapter(
        root=str(shared_data / "bidmc"), segment_s=20.0, target_fs=32.0, bandpass_hz=(0.5, 8.0)
    )
    data = PretrainDataModule(
        adapter,
        batch_size=12,
        samples_per_trial=2,
        trials_per_patient=2,
        split=SplitConfig(method="random", val_fraction=0.1, test_fraction=0.1),
        run_dir=str(tmp_path / "data"),
    )
    encoder = TsaiEncoder("InceptionTime", in_channels=1, arch_kwargs={"nf": 4, "depth": 1})
    objective = ParticipantContrast(projection_dim=16, hidden_dim=16)
    module = PretrainModule(encoder, objective, lr=1e-2, warmup_epochs=0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/info_nce"].item()) and metrics["train/pairs"].item() >= 4
    # batches pair segments of one participant: every batch holds 2 recordings x 2 segments per group
    assert metrics["train/unpaired"].item() < 12
    teacher = dict(objective.momentum_encoder.named_parameters())
    online = dict(encoder.named_parameters())
    assert any(not torch.equal(teacher[name], online[name]) for name in online)

    checkpoint = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert any(k.startswith("objective.momentum_encoder.") for k in checkpoint["state_dict"])
    assert (
        checkpoint["medcl"]["objective"]["class_path"] == "medcl.objectives.participant.ParticipantContrast"
    )
    restored = PretrainModule(
        TsaiEncoder("InceptionTime", in_channels=1, arch_kwargs={"nf": 4, "depth": 1}),
        ParticipantContrast(projection_dim=16, hidden_dim=16),
    )
    restored.load_state_dict(checkpoint["state_dict"], strict=True)
    restored.objective.attach_encoder(restored.encoder)
    for name, value in restored.objective.momentum_encoder.named_parameters():
        assert torch.equal(value, teacher[name])
