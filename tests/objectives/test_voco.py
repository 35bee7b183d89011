"""The VoCo objective against a slow reference written here (loops over volumes, crops and bases with
``F.cosine_similarity``), the EMA teacher's update formula, checkpoints of the lazily made teacher, and a
short Lightning run that checks the teacher after every optimiser step."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.configurable import instantiate_spec, module_spec
from medcl.data import contract
from medcl.errors import ConfigError
from medcl.objectives import VoCo
from medcl.objectives.voco_geometry import BASES_KEY, CROPS_KEY, OVERLAP_KEY, VoCoCropsd
from medcl.training.pretrain import PretrainModule

F64 = torch.float64
REPO_ROOT = Path(__file__).resolve().parents[2]


class TinyEncoder(nn.Module):
    """``Conv3d(C → dim, 3) → ReLU → global average``: ``(N, C, r, r, r) → (N, dim)``."""

    def __init__(self, in_channels: int = 1, dim: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, dim, 3, padding=1)
        self.in_channels = in_channels
        self.embedding_dim = dim
        self.rows_seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows_seen.append(int(x.shape[0]))
        return F.relu(self.conv(x)).mean(dim=(2, 3, 4))


def make_batch(batch: int, n: int, r: int, k: int, channels: int = 1, seed: int = 0) -> dict[str, Tensor]:
    """A collated batch of VoCoCropsd outputs for random volumes a little larger than the region."""
    transform = VoCoCropsd(keys="image", n_bases_per_side=n, crop_size=r, n_random_crops=k)
    rng = np.random.RandomState(seed)
    items = []
    for index in range(batch):
        transform.set_random_state(seed=seed * 100 + index)
        volume = rng.rand(channels, n * r + 1, n * r + 2, r + 1).astype(np.float32)
        items.append(transform({"image": volume}))
    return {
        key: torch.stack([torch.from_numpy(item[key]) for item in items]) for key in transform.output_keys
    }


def make_objective(encoder: nn.Module, **kwargs: Any) -> VoCo:
    settings: dict[str, Any] = {"n_bases_per_side": 2, "crop_size": 4, "n_random_crops": 3}
    settings.update({"projection_dim": 5, "hidden_dim": 7})
    settings.update(kwargs)
    objective = VoCo(**settings)
    objective.bind(encoder.embedding_dim)
    return objective


def perturb(module: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every parameter, as an optimiser step would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def teacher_that_differs(objective: VoCo, encoder: nn.Module, batch: dict[str, Tensor]) -> None:
    """Make the teacher, then move the student and take one EMA step: teacher ≠ student."""
    objective.forward_batch(encoder, batch)
    perturb(encoder, 1)
    assert objective.head is not None
    perturb(objective.head, 2)
    objective.update_teacher(encoder)


# --------------------------------------------------------------------------------------------------
# slow reference
# --------------------------------------------------------------------------------------------------


def reference_terms(
    objective: VoCo, encoder: nn.Module, batch: dict[str, Tensor], per_crop: bool = False
) -> tuple[Tensor, Tensor]:
    """(voco_pred, voco_reg) by loops over volumes, crops and bases, following the class docstring.

    ``per_crop=False`` embeds all crops in one call in the documented order (bases then crops, so that
    BatchNorm in training mode sees the same batch); ``per_crop=True`` embeds every crop alone (valid in
    eval mode, where each row's embedding does not depend on the others).
    """
    bases, crops, labels = batch[BASES_KEY], batch[CROPS_KEY], batch[OVERLAP_KEY]
    n_volumes, m, k = bases.shape[0], bases.shape[1], crops.shape[1]
    head = objective.head
    assert head is not None
    teacher = objective.uses_teacher
    eps = objective.log_eps

    def embed_all(enc: nn.Module, hd: nn.Module, with_crops: bool) -> tuple[Tensor, Tensor | None]:
        if per_crop:
            b = torch.stack(
                [torch.stack([hd(enc(bases[v, i][None]))[0] for i in range(m)]) for v in range(n_volumes)]
            )
            c = torch.stack(
                [torch.stack([hd(enc(crops[v, q][None]))[0] for q in range(k)]) for v in range(n_volumes)]
            )
            return b, (c if with_crops else None)
        x = [bases.reshape(n_volumes * m, *bases.shape[2:])]
        if with_crops:
            x.append(crops.reshape(n_volumes * k, *crops.shape[2:]))
        z = hd(enc(torch.cat(x)))
        b = z[: n_volumes * m].reshape(n_volumes, m, -1)
        c = z[n_volumes * m :].reshape(n_volumes, k, -1) if with_crops else None
        return b, c

    s_bases, s_crops = embed_all(encoder, head, with_crops=True)
    assert s_crops is not None
    if teacher:
        assert objective.teacher_encoder is not None and objective.teacher_head is not None
        with torch.no_grad():
            t_bases, t_crops = embed_all(
                objective.teacher_encoder, objective.teacher_head, with_crops=objective.symmetric_assignment
            )

    def relu_cos(a: Tensor, b: Tensor) -> Tensor:
        return F.relu(F.cosine_similarity(a[None], b[None], dim=1, eps=1e-30))[0]

    pred = s_bases.new_zeros(())
    reg = s_bases.new_zeros(())
    for v in range(n_volumes):
        pos_num, label_sum, neg_num, n_neg = s_bases.new_zeros(()), 0.0, s_bases.new_zeros(()), 0
        for q in range(k):
            for i in range(m):
                if not teacher:
                    logit = relu_cos(s_crops[v, q], s_bases[v, i])
                elif objective.symmetric_assignment:
                    assert t_crops is not None
                    logit = 0.5 * (
                        relu_cos(s_crops[v, q], t_bases[v, i]) + relu_cos(t_crops[v, q], s_bases[v, i])
                    )
                else:
                    logit = relu_cos(s_crops[v, q], t_bases[v, i])
                y = float(labels[v, q, i])
                if y > 0:
                    pos_num = pos_num - y * torch.log(torch.clamp(1 - (y - logit).abs(), min=eps))
                    label_sum += y
                else:
                    neg_num = neg_num + logit**2
                    n_neg += 1
        pred = pred + pos_num / label_sum + (neg_num / n_neg if n_neg else 0.0)
        pairs = s_bases.new_zeros(())
        for i in range(m):
            for j in range(m):
                if i != j:
                    pairs = pairs + relu_cos(s_bases[v, i], s_bases[v, j].detach()) ** 2
        reg = reg + pairs / (m * (m - 1))
    return pred / n_volumes, reg / n_volumes


def _grads(module: nn.Module) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _zero_grads(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None


# --------------------------------------------------------------------------------------------------
# values and gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ema_teacher", "symmetric"),
    [(False, True), (True, True), (True, False)],
    ids=["no_teacher", "sym", "asym"],
)
def test_terms_and_gradients_match_the_slow_reference(ema_teacher: bool, symmetric: bool) -> None:
    torch.manual_seed(0)
    encoder = TinyEncoder().double()
    objective = make_objective(
        encoder, ema_teacher=ema_teacher, symmetric_assignment=symmetric, regularization_weight=0.5
    ).double()
    batch = {key: value.double() for key, value in make_batch(2, 2, 4, 3).items()}
    if ema_teacher:
        teacher_that_differs(objective, encoder, batch)
    # BatchNorm running statistics move at every call: run the reference on copies in the same state
    ref_objective, ref_encoder = copy.deepcopy(objective), copy.deepcopy(encoder)

    _zero_grads(encoder, objective)
    terms = objective.forward_batch(encoder, batch)
    expected = {"loss", "voco_pred", "voco_pred_pos", "voco_pred_neg", "voco_reg"}
    assert set(terms) == expected
    terms["loss"].backward()

    pred, reg = reference_terms(ref_objective, ref_encoder, batch)
    (pred + 0.5 * reg).backward()
    assert terms["voco_pred"].item() == pytest.approx(pred.item(), rel=1e-10, abs=1e-12)
    assert terms["voco_reg"].item() == pytest.approx(reg.item(), rel=1e-10, abs=1e-12)
    assert terms["loss"].item() == pytest.approx(pred.item() + 0.5 * reg.item(), rel=1e-10)
    assert (terms["voco_pred_pos"] + terms["voco_pred_neg"]).item() == pytest.approx(pred.item(), rel=1e-10)
    assert not terms["voco_pred_pos"].requires_grad and not terms["voco_pred_neg"].requires_grad
    for got, want in zip(_grads(encoder), _grads(ref_encoder), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    for got, want in zip(_grads(objective.head), _grads(ref_objective.head), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    # the gradient reaches every parameter of the student encoder
    assert all(g.abs().sum() > 0 for g in _grads(encoder))
    # one student call over all crops; with the symmetric teacher one more over all crops, else over bases
    if ema_teacher:
        assert objective.teacher_encoder.rows_seen[-1] == (2 * (4 + 3) if symmetric else 2 * 4)
    assert encoder.rows_seen[-1] == 2 * (4 + 3)


def test_eval_mode_matches_a_crop_by_crop_reference() -> None:
    # In eval mode every crop's embedding is independent of the others: embedding each crop alone checks
    # which rows of the batched call belong to which volume, base and crop.
    torch.manual_seed(1)
    encoder = TinyEncoder(in_channels=2).double()
    objective = make_objective(encoder, n_bases_per_side=3, crop_size=2, n_random_crops=4).double()
    batch = {key: value.double() for key, value in make_batch(3, 3, 2, 4, channels=2, seed=4).items()}
    teacher_that_differs(objective, encoder, batch)
    objective.eval()
    encoder.eval()
    terms = objective.forward_batch(encoder, batch)
    pred, reg = reference_terms(objective, encoder, batch, per_crop=True)
    assert terms["voco_pred"].item() == pytest.approx(pred.item(), rel=1e-10)
    assert terms["voco_reg"].item() == pytest.approx(reg.item(), rel=1e-10)
    assert objective.teacher_encoder is not None and not objective.teacher_encoder.training


def test_a_zero_weight_contributes_nothing() -> None:
    torch.manual_seed(2)
    encoder = TinyEncoder()
    batch = make_batch(2, 2, 4, 3)
    full = make_objective(encoder)
    no_reg = copy.deepcopy(full)
    no_reg.regularization_weight = 0.0
    enc_full, enc_no_reg = copy.deepcopy(encoder), copy.deepcopy(encoder)

    terms = full.forward_batch(enc_full, batch)
    terms["voco_pred"].backward()  # the prediction term alone
    terms_no_reg = no_reg.forward_batch(enc_no_reg, batch)
    assert set(terms_no_reg) == {"loss", "voco_pred", "voco_pred_pos", "voco_pred_neg"}
    assert terms_no_reg["loss"].item() == terms_no_reg["voco_pred"].item() == terms["voco_pred"].item()
    terms_no_reg["loss"].backward()
    for got, want in zip(_grads(enc_no_reg), _grads(enc_full), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # prediction weight 0: only the bases are encoded, no teacher is made, loss = weight · reg
    only_reg = make_objective(encoder, prediction_weight=0.0, regularization_weight=2.0)
    terms = only_reg.forward_batch(encoder, batch)
    assert set(terms) == {"loss", "voco_reg"}
    assert terms["loss"].item() == 2.0 * terms["voco_reg"].item()
    assert encoder.rows_seen[-1] == 2 * 4
    assert only_reg.teacher_encoder is None and not only_reg.uses_teacher
    only_reg.update_teacher(encoder)  # a no-op without a teacher
    assert only_reg.teacher_encoder is None


# --------------------------------------------------------------------------------------------------
# the EMA teacher
# --------------------------------------------------------------------------------------------------


def test_teacher_is_a_lazy_frozen_copy_without_gradients() -> None:
    torch.manual_seed(3)
    encoder = TinyEncoder()
    objective = make_objective(encoder)
    assert objective.teacher_encoder is None and objective.teacher_head is None
    assert not any(key.startswith("teacher") for key in objective.state_dict())
    batch = make_batch(2, 2, 4, 3)
    objective.forward_batch(encoder, batch)["loss"].backward()
    teacher_encoder, teacher_head = objective.teacher_encoder, objective.teacher_head
    assert teacher_encoder is not None and teacher_head is not None
    for teacher, student in ((teacher_encoder, encoder), (teacher_head, objective.head)):
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()
            assert not t.requires_grad and t.grad is None
            assert s.grad is not None
    trainable = {id(p) for p in objective.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in teacher_encoder.parameters()}
    assert {key.split(".")[0] for key in objective.state_dict()} == {
        "head",
        "teacher_encoder",
        "teacher_head",
    }
    # made once
    objective.forward_batch(encoder, batch)
    assert objective.teacher_encoder is teacher_encoder


def test_ema_update_formula() -> None:
    torch.manual_seed(4)
    encoder = TinyEncoder()
    objective = make_objective(encoder)  # momentum 0.9, the reference's
    objective.forward_batch(encoder, make_batch(2, 2, 4, 3))
    teacher = objective.teacher_encoder
    assert teacher is not None and objective.head is not None and objective.teacher_head is not None
    with torch.no_grad():
        teacher.conv.weight.fill_(1.0)
        encoder.conv.weight.fill_(0.0)
        teacher.conv.bias.fill_(2.0)
        encoder.conv.bias.fill_(6.0)
    head_before = [p.detach().double().clone() for p in objective.teacher_head.parameters()]
    perturb(objective.head, 5)
    head_student = [p.detach().double().clone() for p in objective.head.parameters()]
    with torch.no_grad():
        for buffer in objective.head.buffers():
            buffer.add_(3)  # BatchNorm statistics that the teacher does not have
    objective.on_after_optimizer_step(encoder)  # the hook PretrainModule calls
    assert torch.equal(teacher.conv.weight, torch.full_like(teacher.conv.weight, 0.9))  # 0.9·1 + 0.1·0
    torch.testing.assert_close(teacher.conv.bias, torch.full_like(teacher.conv.bias, 2.4), rtol=0, atol=1e-6)
    for t, before, s in zip(objective.teacher_head.parameters(), head_before, head_student, strict=True):
        torch.testing.assert_close(t.double(), 0.9 * before + 0.1 * s, rtol=0, atol=1e-7)
    # buffers (BatchNorm statistics) are copied from the student
    for t, s in zip(objective.teacher_head.buffers(), objective.head.buffers(), strict=True):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()

    # exactly representable: m = 0.75, two steps
    objective.teacher_momentum = 0.75
    with torch.no_grad():
        teacher.conv.weight.fill_(2.0)
        encoder.conv.weight.fill_(6.0)
    objective.update_teacher(encoder)
    assert torch.equal(teacher.conv.weight, torch.full_like(teacher.conv.weight, 3.0))  # 1.5 + 1.5
    with torch.no_grad():
        encoder.conv.weight.fill_(-1.0)
    objective.update_teacher(encoder)
    assert torch.equal(teacher.conv.weight, torch.full_like(teacher.conv.weight, 2.0))  # 2.25 - 0.25


def test_teacher_made_under_inference_mode_can_still_be_updated() -> None:
    # Lightning's validation loop (e.g. the sanity check) may be the first caller.
    torch.manual_seed(5)
    encoder = TinyEncoder()
    objective = make_objective(encoder)
    batch = make_batch(2, 2, 4, 3)
    with torch.inference_mode():
        objective.forward_batch(encoder, batch)
    assert objective.teacher_encoder is not None
    assert not any(p.is_inference() for p in objective.teacher_encoder.parameters())
    perturb(encoder, 6)
    objective.update_teacher(encoder)
    objective.forward_batch(encoder, batch)["loss"].backward()
    assert encoder.conv.weight.grad is not None


def test_teacher_that_does_not_fit_the_encoder_is_an_error() -> None:
    encoder = TinyEncoder()
    objective = make_objective(encoder)
    objective.forward_batch(encoder, make_batch(1, 2, 4, 3))
    other = TinyEncoder(in_channels=2)  # same embedding size, other first-layer shape
    with pytest.raises(ConfigError, match="replaced"):
        objective.update_teacher(other)
    fresh = make_objective(other)
    fresh.load_state_dict(objective.state_dict())
    with pytest.raises(ConfigError, match="does not fit"):
        fresh.forward_batch(other, make_batch(1, 2, 4, 3, channels=2))


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_restores_the_teacher() -> None:
    torch.manual_seed(6)
    encoder = TinyEncoder()
    batch = make_batch(2, 2, 4, 3)
    trained = make_objective(encoder)
    teacher_that_differs(trained, encoder, batch)
    state = trained.state_dict()
    assert any(key.startswith("teacher_encoder.") for key in state)

    restored = make_objective(encoder)
    restored.load_state_dict(state, strict=True)
    assert restored.teacher_encoder is None  # made on the first forward_batch ...
    resaved = restored.state_dict()  # ... but saved meanwhile
    assert resaved.keys() == state.keys()
    assert all(torch.equal(resaved[key], state[key]) for key in state)

    trained.eval()
    restored.eval()
    want = trained.forward_batch(encoder, batch)
    got = restored.forward_batch(encoder, batch)
    for key in want:
        assert got[key].item() == want[key].item()
    assert restored.teacher_encoder is not None
    assert torch.equal(restored.teacher_encoder.conv.weight, trained.teacher_encoder.conv.weight)
    assert not torch.equal(restored.teacher_encoder.conv.weight, encoder.conv.weight)  # restored, not copied


def test_pretrain_module_checkpoint_with_teacher_loads_strictly() -> None:
    torch.manual_seed(7)
    module = PretrainModule(TinyEncoder(), make_objective(TinyEncoder()))
    objective = module.objective
    assert isinstance(objective, VoCo)
    objective.forward_batch(module.encoder, make_batch(2, 2, 4, 3))
    state = module.state_dict()
    assert any(key.startswith("objective.teacher_encoder.") for key in state)
    again = PretrainModule(TinyEncoder(), make_objective(TinyEncoder()))
    again.load_state_dict(state, strict=True)
    assert again.objective._pending_teacher is not None
    assert again.state_dict().keys() == state.keys()
    # the spec rebuilds the objective with the same settings
    spec = module_spec(objective)
    assert spec is not None
    rebuilt = instantiate_spec(spec)
    assert isinstance(rebuilt, VoCo) and module_spec(rebuilt) == spec


# --------------------------------------------------------------------------------------------------
# settings and inputs
# --------------------------------------------------------------------------------------------------


def test_item_transform_has_the_settings() -> None:
    objective = VoCo(n_bases_per_side=3, crop_size=16, n_random_crops=2, volume_fit="resize", pad_value=-1.0)
    transform = objective.item_transform("image")
    assert isinstance(transform, VoCoCropsd)
    assert (transform.n, transform.r, transform.k, transform.fit, transform.pad_value) == (
        3,
        16,
        2,
        "resize",
        -1.0,
    )
    assert transform.keys == ("image",)
    assert transform.output_keys == (BASES_KEY, CROPS_KEY, OVERLAP_KEY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bases_per_side": 1}, "n_bases_per_side"),
        ({"crop_size": 1}, "crop_size"),
        ({"n_random_crops": 0}, "n_random_crops"),
        ({"prediction_weight": -1.0}, "prediction_weight"),
        ({"regularization_weight": float("nan")}, "regularization_weight"),
        ({"prediction_weight": 0.0, "regularization_weight": 0.0}, "both 0"),
        ({"teacher_momentum": 1.0}, "teacher_momentum"),
        ({"volume_fit": "stretch"}, "volume_fit"),
        ({"log_eps": 0.0}, "log_eps"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        VoCo(**kwargs)


def test_bad_batches_are_config_errors() -> None:
    encoder = TinyEncoder()
    objective = make_objective(encoder)
    batch = make_batch(2, 2, 4, 3)
    with pytest.raises(ConfigError, match="item_transform"):
        objective.forward_batch(encoder, {BASES_KEY: batch[BASES_KEY]})
    with pytest.raises(ConfigError, match=CROPS_KEY):
        objective.forward_batch(encoder, {**batch, CROPS_KEY: batch[CROPS_KEY][:, :2]})
    with pytest.raises(ConfigError, match=OVERLAP_KEY):
        objective.forward_batch(encoder, {**batch, OVERLAP_KEY: batch[OVERLAP_KEY][..., :3]})
    with pytest.raises(ConfigError, match="bind"):
        VoCo(crop_size=4).forward_batch(encoder, batch)
    with pytest.raises(TypeError, match="forward_batch"):
        objective(None)


# --------------------------------------------------------------------------------------------------
# a real MONAI backbone, and a real (short) Lightning run
# --------------------------------------------------------------------------------------------------


def test_with_the_unet_backbone() -> None:
    if not (REPO_ROOT / "modalities" / "volumes" / "encoders.py").is_file():
        pytest.skip("modalities/volumes/encoders.py (UNetBackbone) is not in this checkout yet")
    from modalities.volumes.encoders import UNetBackbone

    torch.manual_seed(8)
    encoder = UNetBackbone(features=(4, 4, 8, 8, 16, 4)).double()
    objective = make_objective(encoder, n_bases_per_side=2, crop_size=32, n_random_crops=2).double()
    batch = {key: value.double() for key, value in make_batch(1, 2, 32, 2).items()}
    teacher_that_differs(objective, encoder, batch)
    reference_objective, reference_encoder = copy.deepcopy(objective), copy.deepcopy(encoder)
    terms = objective.forward_batch(encoder, batch)
    terms["loss"].backward()
    pred, reg = reference_terms(reference_objective, reference_encoder, batch)
    (pred + reg).backward()
    assert terms["voco_pred"].item() == pytest.approx(pred.item(), rel=1e-10)
    assert terms["voco_reg"].item() == pytest.approx(reg.item(), rel=1e-10)
    got = torch.cat([g.flatten() for g in _grads(encoder)])
    want = torch.cat([g.flatten() for g in _grads(reference_encoder)])
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


class _VoCoItems(torch.utils.data.Dataset):
    def __init__(self, n_items: int) -> None:
        self.batch = make_batch(n_items, 2, 4, 3, seed=9)

    def __len__(self) -> int:
        return self.batch[BASES_KEY].shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {key: value[index] for key, value in self.batch.items()}
        item.update({contract.INDEX: index, contract.PATIENT: index, contract.TRIAL: index})
        return item


def test_lightning_updates_the_teacher_after_every_optimizer_step() -> None:
    import lightning as L

    L.seed_everything(0)
    encoder = TinyEncoder()
    objective = make_objective(encoder, teacher_momentum=0.5)
    module = PretrainModule(encoder, objective, lr=0.05, warmup_epochs=0)
    start: list[Tensor] = []
    after_steps: list[list[Tensor]] = []

    def student() -> Iterator[Tensor]:
        assert objective.head is not None
        yield from encoder.parameters()
        yield from objective.head.parameters()

    class Record(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            start.extend(p.detach().clone() for p in student())

        def on_train_batch_end(self, *args: Any) -> None:
            after_steps.append([p.detach().clone() for p in student()])

    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    loader = torch.utils.data.DataLoader(_VoCoItems(6), batch_size=2)
    trainer.fit(module, train_dataloaders=loader)
    assert len(after_steps) == 3
    assert not torch.equal(after_steps[-1][0], start[0])  # the student moved
    expected = start
    for step in after_steps:
        expected = [0.5 * t + 0.5 * s for t, s in zip(expected, step, strict=True)]
    assert objective.teacher_encoder is not None and objective.teacher_head is not None
    teacher = [*objective.teacher_encoder.parameters(), *objective.teacher_head.parameters()]
    for got, want in zip(teacher, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
