"""Exact resume and atomic checkpoints, tested the way Lightning tests its loops: record every training
step, stop, resume from the checkpoint in a fresh Trainer, compare with a run that never stopped.

The runs are real: the bundled PTB-XL records, a small TS2Vec encoder (whose timestamp masks and
dropout draw from torch's global generator) under hierarchical contrast with two random views, and a
small InceptionTime under participant contrast (a momentum teacher). A step's record is its epoch,
global step, batch index, the batch's sample indices and its loss; losses must be equal bit for bit.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Dataset

from medcl.checkpoints import load_checkpoint
from medcl.data import PretrainDataModule, SplitConfig
from medcl.data.sampler import GroupedBatchSampler, ResumableDataLoader
from medcl.errors import CorruptFileError
from medcl.objectives import HierarchicalContrast, ParticipantContrast
from medcl.training import PretrainModule
from medcl.training.checkpointing import AtomicCheckpointIO, ExactResume, ResumableCheckpoint, batch_seed
from modalities.signals import SignalAdapter, TS2VecEncoder, TsaiEncoder
from modalities.signals.indexing import index_signals, save_index

REPO = Path(__file__).resolve().parents[2]

Step = tuple[int, int, int, tuple[int, ...], float]  # epoch, global step, batch index, sample indices, loss


class Recorder(Callback):
    """Records every training step and every validation loss."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = float(outputs["loss"])
        keys = tuple(int(i) for i in batch["index"])
        self.steps.append((trainer.current_epoch, trainer.global_step, batch_idx, keys, loss))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val.append((trainer.current_epoch, float(trainer.callback_metrics["val/loss"])))


class CrashError(RuntimeError):
    """What a killed process would not even get to raise."""


class CrashAt(Callback):
    """Raises :class:`CrashError` before the training step that follows ``global_step == at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.at:
            raise CrashError(f"stopped at step {self.at}")


@dataclass
class Run:
    recorder: Recorder
    trainer: L.Trainer
    module: PretrainModule
    crashed: bool = False
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@pytest.fixture(scope="module")
def ptbxl_index(tmp_path_factory: pytest.TempPathFactory, bundled_ptbxl: Path) -> Path:
    """The bundled PTB-XL indexed once (``medcl index``), so every run below skips indexing."""
    return save_index(index_signals("ptbxl", bundled_ptbxl), tmp_path_factory.mktemp("ptbxl_index"))


def hierarchical_module() -> PretrainModule:
    encoder = TS2VecEncoder(12, hidden_dims=8, output_dims=16, depth=1)
    return PretrainModule(encoder, HierarchicalContrast(gather_distributed=False), lr=3e-3, warmup_epochs=1)


def participant_module() -> PretrainModule:
    encoder = TsaiEncoder("InceptionTime", in_channels=12, arch_kwargs={"nf": 4, "depth": 1})
    objective = ParticipantContrast(projection_dim=16, hidden_dim=16, momentum=0.9, gather_distributed=False)
    return PretrainModule(encoder, objective, lr=3e-3, warmup_epochs=1)


def fit(
    index: Path,
    make_module: Callable[[], PretrainModule],
    callbacks: list[Callback],
    *,
    seed: int = 0,
    ckpt_path: str | None = None,
    logger: CSVLogger | bool = False,
    max_steps: int = 10,
    max_epochs: int | None = None,
    limit_val_batches: int = 1,
    num_workers: int = 0,
) -> Run:
    """Fit ``max_steps`` steps (or ``max_epochs`` epochs) in epochs of 4 batches of 8 windows (2 windows
    x 2 recordings per patient), validating 1 batch per epoch; a :class:`CrashError` from a callback
    ends the fit early."""
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
    module = make_module()
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=limit_val_batches,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[recorder, *callbacks],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    run = Run(recorder, trainer, module)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(callbacks used to create the checkpoint|not empty).*")
        try:
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        except CrashError:
            run.crashed = True
    run.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return run


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters/buffers differ after resuming: {different[:5]}"


# --------------------------------------------------------------------------------------------------
# hierarchical contrast: stop mid-epoch, resume mid-epoch and from an end-of-epoch checkpoint
# --------------------------------------------------------------------------------------------------
#: how long a run is: by steps (10; epochs 0 and 1 full, 2 steps of epoch 2) or by epochs (3, 12 steps).
#: The two take different paths through Lightning's restore (see medcl.training.checkpointing).
BUDGETS = {"max_steps": {"max_steps": 10}, "max_epochs": {"max_steps": -1, "max_epochs": 3}}


@dataclass
class HierarchicalRuns:
    budget: dict[str, int]
    full: Run
    stopped: Run
    steps_dir: Path
    epochs_dir: Path


def hierarchical_runs(index: Path, out: Path, budget: dict[str, int]) -> HierarchicalRuns:
    """An uninterrupted run, and the same run stopped before step 8 having written checkpoints every 3
    steps (mid-epoch: steps 3 and 6) and at the end of every epoch (after validation: step 4)."""
    full = fit(index, hierarchical_module, [], **budget)
    steps_dir, epochs_dir = out / "steps", out / "epochs"
    stopped = fit(
        index,
        hierarchical_module,
        [
            CrashAt(7),
            ResumableCheckpoint(dirpath=steps_dir, filename="{step}", every_n_train_steps=3, save_top_k=-1),
            ResumableCheckpoint(dirpath=epochs_dir, filename="{epoch}", every_n_epochs=1, save_top_k=-1),
        ],
        **budget,
    )
    return HierarchicalRuns(budget, full, stopped, steps_dir, epochs_dir)


@pytest.fixture(scope="module")
def by_steps(ptbxl_index: Path, tmp_path_factory: pytest.TempPathFactory) -> HierarchicalRuns:
    return hierarchical_runs(ptbxl_index, tmp_path_factory.mktemp("by_steps"), BUDGETS["max_steps"])


@pytest.fixture(scope="module")
def by_epochs(ptbxl_index: Path, tmp_path_factory: pytest.TempPathFactory) -> HierarchicalRuns:
    return hierarchical_runs(ptbxl_index, tmp_path_factory.mktemp("by_epochs"), BUDGETS["max_epochs"])


RUNS = ["by_steps", "by_epochs"]


@pytest.mark.parametrize("runs_name", RUNS)
def test_the_stopped_run_followed_the_uninterrupted_one(
    runs_name: str, request: pytest.FixtureRequest
) -> None:
    runs: HierarchicalRuns = request.getfixturevalue(runs_name)
    n_steps = 10 if runs_name == "by_steps" else 12
    assert runs.stopped.crashed
    assert [s[1] for s in runs.full.recorder.steps] == list(range(1, n_steps + 1))
    assert [(s[0], s[2]) for s in runs.full.recorder.steps[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert runs.stopped.recorder.steps == runs.full.recorder.steps[:7]
    assert sorted(p.name for p in runs.steps_dir.glob("*.ckpt")) == ["step=3.ckpt", "step=6.ckpt"]
    assert sorted(p.name for p in runs.epochs_dir.glob("*.ckpt")) == ["epoch=0.ckpt"]
    # the trainer wrote through the atomic writer, which ExactResume installed
    assert type(runs.stopped.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert not list(runs.steps_dir.glob(".*.partial"))


def resume(runs: HierarchicalRuns, index: Path, checkpoint: str) -> tuple[Run, list[Step]]:
    """Resume ``runs``' stopped run from ``checkpoint`` (relative to its folder) in a fresh Trainer;
    return the resumed run and what the uninterrupted run recorded for the same steps."""
    path = runs.steps_dir.parent / checkpoint
    saved = load_checkpoint(path)  # weights_only=True: the loader and seed state are plain data
    resumed = fit(index, hierarchical_module, [], ckpt_path=str(path), **runs.budget)
    return resumed, runs.full.recorder.steps[saved["global_step"] :]


@pytest.mark.parametrize("runs_name", RUNS)
@pytest.mark.parametrize(
    "checkpoint,first_step",
    [("steps/step=6.ckpt", 7), ("steps/step=3.ckpt", 4), ("epochs/epoch=0.ckpt", 5)],
    ids=["mid-epoch-1", "mid-epoch-0", "end-of-epoch-0"],
)
def test_resume_continues_exactly(
    runs_name: str, checkpoint: str, first_step: int, ptbxl_index: Path, request: pytest.FixtureRequest
) -> None:
    runs: HierarchicalRuns = request.getfixturevalue(runs_name)
    resumed, expected = resume(runs, ptbxl_index, checkpoint)
    assert resumed.recorder.steps[0][1] == first_step
    assert [s[:4] for s in resumed.recorder.steps] == [s[:4] for s in expected]  # epochs, steps, batches
    assert [s[4] for s in resumed.recorder.steps] == [s[4] for s in expected]  # losses, bit for bit
    assert resumed.recorder.val == [v for v in runs.full.recorder.val if v[0] >= expected[0][0]]
    assert_same_state(resumed.state, runs.full.state)


@pytest.mark.parametrize("checkpoint", ["steps/step=6.ckpt", "epochs/epoch=0.ckpt"])
def test_resume_with_worker_processes_continues_exactly(
    by_epochs: HierarchicalRuns, ptbxl_index: Path, checkpoint: str
) -> None:
    """Worker processes draw their batch plan when their iterator starts, and Lightning makes the
    iterator on resume before it sets the epoch: the resumed run must still continue exactly."""
    path = by_epochs.steps_dir.parent / checkpoint
    saved = load_checkpoint(path)
    resumed = fit(
        ptbxl_index, hierarchical_module, [], ckpt_path=str(path), num_workers=2, **by_epochs.budget
    )
    assert resumed.recorder.steps == by_epochs.full.recorder.steps[saved["global_step"] :]
    assert_same_state(resumed.state, by_epochs.full.state)


def no_op(*args: Any) -> None:
    """Stands in for a hook or helper a control test disables."""


@pytest.mark.parametrize(
    "runs_name,checkpoint,disabled,what_differs",
    [
        ("by_steps", "steps/step=6.ckpt", "batch seeds", "losses"),
        ("by_epochs", "steps/step=6.ckpt", "loader restore", "batches"),
        ("by_steps", "epochs/epoch=0.ckpt", "epoch source", "batches"),
    ],
)
def test_controls_each_piece_of_exact_resume_is_needed(
    runs_name: str,
    checkpoint: str,
    disabled: str,
    what_differs: str,
    ptbxl_index: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Controls, i.e. what Lightning 2.6 does without each piece: without the per-batch seeds the TS2Vec
    encoder's masks and dropout depend on what ran before the step in this process (same batches,
    other losses); with ``max_epochs`` the loader's saved position is never loaded (the epoch starts
    over from its first batch); with ``max_steps`` and an end-of-epoch checkpoint Lightning sets the
    sampler's epoch one ahead (another epoch's batches)."""
    from medcl.training import checkpointing

    runs: HierarchicalRuns = request.getfixturevalue(runs_name)
    if disabled == "batch seeds":
        monkeypatch.setattr(ExactResume, "on_train_batch_start", no_op)
    elif disabled == "loader restore":
        monkeypatch.setattr(ExactResume, "on_train_start", no_op)
    else:
        monkeypatch.setattr(checkpointing, "_follow_current_epoch", no_op)
    resumed, expected = resume(runs, ptbxl_index, checkpoint)
    same_batches = [s[:4] for s in resumed.recorder.steps] == [s[:4] for s in expected]
    same_losses = [s[4] for s in resumed.recorder.steps] == [s[4] for s in expected]
    assert [s[1] for s in resumed.recorder.steps] == [s[1] for s in expected]
    assert not same_losses
    assert same_batches == (what_differs == "losses")


# --------------------------------------------------------------------------------------------------
# participant contrast (EMA teacher); --ckpt_path last across logger versions
# --------------------------------------------------------------------------------------------------
def test_momentum_teacher_resumes_exactly_from_last_of_an_earlier_version(
    ptbxl_index: Path, tmp_path: Path
) -> None:
    full = fit(ptbxl_index, participant_module, [], max_steps=6, limit_val_batches=0)

    def checkpoint() -> ResumableCheckpoint:
        return ResumableCheckpoint(save_last=True, every_n_train_steps=1, save_top_k=0)

    stopped = fit(
        ptbxl_index,
        participant_module,
        [CrashAt(3), checkpoint()],
        logger=CSVLogger(tmp_path, name="run"),
        max_steps=6,
        limit_val_batches=0,
    )
    assert stopped.crashed and (tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert stopped.recorder.steps == full.recorder.steps[:3]

    # A relaunch logs to version_1: Lightning's ModelCheckpoint looks for last.ckpt only there.
    relaunch = L.Trainer(logger=CSVLogger(tmp_path, name="run"), callbacks=[ModelCheckpoint(save_last=True)])
    assert relaunch.checkpoint_callback is not None
    assert relaunch.checkpoint_callback._find_last_checkpoints(relaunch) == set()
    assert ResumableCheckpoint(save_last=True)._find_last_checkpoints(relaunch) == {
        os.path.normpath(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt")
    }

    resumed = fit(
        ptbxl_index,
        participant_module,
        [checkpoint()],
        ckpt_path="last",
        logger=CSVLogger(tmp_path, name="run"),
        max_steps=6,
        limit_val_batches=0,
    )
    assert resumed.recorder.steps == full.recorder.steps[3:]
    teacher = [k for k in full.state if "momentum_encoder" in k]
    assert teacher, "the participant objective has no momentum teacher in its state"
    assert_same_state(resumed.state, full.state)
    metrics = pd.read_csv(tmp_path / "run" / "version_1" / "metrics.csv")
    losses = metrics.dropna(subset=["train/loss_step"])
    assert losses["step"].tolist() == [3, 4, 5]


# --------------------------------------------------------------------------------------------------
# the loader on its own: position counted as consumed, not as prefetched
# --------------------------------------------------------------------------------------------------
class Keys(Dataset):
    """Items are the sampler's ``(index, epoch)`` keys themselves."""

    def __len__(self) -> int:
        return 72

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def grouped_loader(num_workers: int = 0, seed: int = 0) -> ResumableDataLoader:
    """18 batches of 4 per epoch: 12 patients x 2 trials x 3 samples."""
    patients = np.repeat(np.arange(12), 6)
    trials = np.repeat(np.arange(24), 3)
    sampler = GroupedBatchSampler(patients, trials, batch_size=4, seed=seed)
    return ResumableDataLoader(Keys(), batch_sampler=sampler, num_workers=num_workers, collate_fn=list)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_after_the_batches_consumed(num_workers: int) -> None:
    reference = grouped_loader()
    reference.batch_sampler.set_epoch(3)
    expected = list(reference)
    assert len(expected) == len(reference) == 18

    loader = grouped_loader(num_workers)
    loader.batch_sampler.set_epoch(3)
    iterator = iter(loader)
    consumed = [next(iterator) for _ in range(5)]  # workers have prefetched more by now
    state = loader.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 5
    del iterator

    resumed = grouped_loader(num_workers)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert consumed + rest == expected
    assert resumed.state_dict()["batches_done"] == 18
    resumed.batch_sampler.set_epoch(4)  # the next epoch starts at its first batch
    assert len(list(resumed)) == 18


def test_loader_skip_is_dropped_when_the_trainer_moves_to_the_next_epoch() -> None:
    """With ``limit_train_batches`` an epoch ends before the sampler's end: the saved position belongs
    to the finished epoch and the next one starts from its first batch."""
    loader = grouped_loader()
    loader.load_state_dict({**loader.state_dict(), "epoch": 2, "batches_done": 3})
    loader.batch_sampler.set_epoch(3)
    reference = grouped_loader()
    reference.batch_sampler.set_epoch(3)
    assert list(loader) == list(reference)


def test_loader_with_other_data_settings_warns_and_starts_the_epoch_over() -> None:
    state = {**grouped_loader(seed=0).state_dict(), "epoch": 1, "batches_done": 5}
    loader = grouped_loader(seed=1)
    with pytest.warns(UserWarning, match="seed 0 -> 1"):
        loader.load_state_dict(state)
    reference = grouped_loader(seed=1)
    reference.batch_sampler.set_epoch(1)
    assert list(loader) == list(reference)


def test_batch_seeds_depend_on_every_coordinate() -> None:
    base = batch_seed(0, 0, 1, 2)
    assert base == batch_seed(0, 0, 1, 2) and 0 <= base < 2**63
    others = {batch_seed(1, 0, 1, 2), batch_seed(0, 1, 1, 2), batch_seed(0, 0, 2, 2), batch_seed(0, 0, 1, 3)}
    assert base not in others and len(others) == 4


# --------------------------------------------------------------------------------------------------
# atomic checkpoints: a process killed in the middle of writing last.ckpt
# --------------------------------------------------------------------------------------------------
def killed_while_writing(write: Callable[[], None], max_file_bytes: int) -> int:
    """Run ``write`` in a forked child that the kernel kills (``SIGXFSZ``) as soon as a write would make
    any file larger than ``max_file_bytes``: a kill in the middle of a save, at a known byte. Returns the
    child's wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel default kills
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
            write()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def naive_write(checkpoint: dict[str, Any], path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(checkpoint, handle)


@pytest.mark.parametrize("writer", ["atomic", "naive"])
def test_a_kill_during_a_save_leaves_the_previous_last_ckpt(
    by_steps: HierarchicalRuns, tmp_path: Path, writer: str
) -> None:
    """Real checkpoints of the stopped run: step 3 is ``last.ckpt``, then the process dies half-way
    through writing step 6 over it. The atomic writer leaves step 3, loadable; a plain in-place write
    (the control, showing the kill lands mid-file) leaves a truncated file."""
    previous = load_checkpoint(by_steps.steps_dir / "step=3.ckpt")
    new = load_checkpoint(by_steps.steps_dir / "step=6.ckpt")
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(previous, last)
    size = last.stat().st_size

    def save() -> None:
        if writer == "atomic":
            AtomicCheckpointIO().save_checkpoint(new, last)
        else:
            naive_write(new, last)

    status = killed_while_writing(save, max_file_bytes=size // 2)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ, status
    if writer == "naive":
        assert last.stat().st_size == size // 2
        with pytest.raises(CorruptFileError, match="not a readable checkpoint"):
            load_checkpoint(last)
        return
    survived = load_checkpoint(last)
    assert survived["global_step"] == 3
    assert_same_state(survived["state_dict"], previous["state_dict"])
    assert (tmp_path / ".last.ckpt.partial").stat().st_size == size // 2  # the torn write, aside
    AtomicCheckpointIO().save_checkpoint(new, last)  # the next save replaces both
    assert load_checkpoint(last)["global_step"] == 6 and not (tmp_path / ".last.ckpt.partial").exists()


def test_an_error_during_a_save_leaves_the_previous_file_and_no_partial(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, last)

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "bad": Unpicklable()}, last)
    assert load_checkpoint(last)["global_step"] == 1
    assert list(tmp_path.iterdir()) == [last]


def test_save_last_link_is_replaced_by_a_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``save_last="link"``: last.ckpt becomes a relative link to the newest checkpoint by renaming a new
    link over it. Lightning's own version removes last.ckpt first (a kill right then leaves none)."""
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    last = tmp_path / "last.ckpt"
    for step in (1, 2):
        (tmp_path / f"step={step}.ckpt").write_bytes(b"x" * step)
    ResumableCheckpoint._link_checkpoint(trainer, str(tmp_path / "step=1.ckpt"), str(last))
    assert os.readlink(last) == "step=1.ckpt"

    def no_removing(path: Any) -> None:
        raise AssertionError(f"{path} removed")

    monkeypatch.setattr(os, "remove", no_removing)
    with pytest.raises(AssertionError, match="removed"):
        ModelCheckpoint._link_checkpoint(trainer, str(tmp_path / "step=2.ckpt"), str(last))
    ResumableCheckpoint._link_checkpoint(trainer, str(tmp_path / "step=2.ckpt"), str(last))
    assert os.readlink(last) == "step=2.ckpt" and last.read_bytes() == b"xx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]


def test_exact_resume_keeps_a_checkpoint_writer_the_user_chose() -> None:
    class OwnWriter(TorchCheckpointIO):
        pass

    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, plugins=[OwnWriter()])
    module = PretrainModule(TS2VecEncoder(12, 4, 4, 0), HierarchicalContrast())
    ExactResume(seed=0).setup(trainer, module, "fit")
    assert type(trainer.strategy.checkpoint_io) is OwnWriter
    default = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    ExactResume(seed=0).setup(default, module, "fit")
    assert type(default.strategy.checkpoint_io) is AtomicCheckpointIO


# --------------------------------------------------------------------------------------------------
# the real command line: SIGKILL, then --ckpt_path last
# --------------------------------------------------------------------------------------------------
CLI_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 3
  limit_train_batches: 4
  limit_val_batches: 1
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {save_dir}
      name: tiny
  callbacks:
    - class_path: medcl.training.checkpointing.ResumableCheckpoint
      init_args:
        save_last: true
        save_top_k: 0
        every_n_train_steps: 1
model:
  encoder:
    class_path: modalities.signals.TS2VecEncoder
    init_args: {{in_channels: 12, hidden_dims: 8, output_dims: 16, depth: 1}}
  objective:
    class_path: medcl.objectives.HierarchicalContrast
    init_args: {{gather_distributed: false}}
  lr: 0.003
data:
  adapter:
    class_path: modalities.signals.SignalAdapter
    init_args: {{window_s: 2.0, stride_s: 1.0, aligned_views: true, index_dir: {index}}}
  batch_size: 8
  samples_per_trial: 2
  trials_per_patient: 2
  use_labels: false
  split: {{method: fold}}
"""


def step_losses(run_dir: Path) -> dict[int, float]:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    rows = metrics.dropna(subset=["train/loss_step"])
    return dict(zip(rows["step"].astype(int), rows["train/loss_step"].astype(float), strict=True))


@pytest.mark.slow
def test_cli_sigkill_then_ckpt_path_last_continues_the_losses(ptbxl_index: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "medcl", "pretrain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def config(name: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(CLI_CONFIG.format(save_dir=tmp_path / name, index=ptbxl_index))
        return str(path)

    reference = subprocess.run(
        [*command, "--config", config("full")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = step_losses(tmp_path / "full" / "tiny" / "version_0")
    assert sorted(expected) == list(range(12))

    # Kill the run as soon as its third checkpoint exists (steps 1 and 2 are done; step 3 may be half).
    killed_config = config("killed")
    checkpoints = tmp_path / "killed" / "tiny" / "version_0" / "checkpoints"
    process = subprocess.Popen(
        [*command, "--config", killed_config],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (checkpoints / "last.ckpt").is_file() and load_checkpoint_or_none(checkpoints / "last.ckpt"):
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved_step = load_checkpoint(checkpoints / "last.ckpt")["global_step"]
    assert 1 <= saved_step < 12

    resumed = subprocess.run(
        [*command, "--config", killed_config, "--ckpt_path", "last"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = step_losses(tmp_path / "killed" / "tiny" / "version_1")
    assert sorted(after) == list(range(saved_step, 12))
    assert after == {step: expected[step] for step in after}


def load_checkpoint_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(path)
    except (CorruptFileError, OSError):
        return None


class _WorseningModel(L.LightningModule):
    """A validation metric that gets worse every epoch: only epoch 0 is ever a top-1 checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_metric", float(self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("save_last", [True, "link"])
def test_last_ckpt_is_the_last_epoch_even_when_the_monitor_stops_improving(
    tmp_path: Path, save_last: bool | str
) -> None:
    """Lightning 2.6 refreshes last.ckpt only with a new top-k file: it would stay at epoch 0 here."""
    loader = torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=4)
    callback = ResumableCheckpoint(
        dirpath=tmp_path, monitor="val_metric", mode="min", save_top_k=1, save_last=save_last, filename="best"
    )
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = _WorseningModel()
    trainer.fit(model, loader, loader)
    last, best = load_checkpoint(tmp_path / "last.ckpt"), load_checkpoint(tmp_path / "best.ckpt")
    assert (best["epoch"], best["global_step"]) == (0, 2)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    torch.testing.assert_close(last["state_dict"]["layer.weight"], model.layer.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
