"""PretrainModule under real DDP: 2 CPU processes (gloo), launched by torchrun, Lightning strategy "ddp".

The test module is also the worker script: the fixture runs
``python -m torch.distributed.run --standalone --nproc_per_node 2 <this file> <folder>`` (the same launcher
as the multi-node recipe of docs/distributed.md), each rank fits a tiny TS2Vec encoder with the
hierarchical (COMET) objective on the bundled PTB-XL records for 2 epochs and writes what it saw to
``<folder>/rank<r>.pt``: the sample indices of every batch, the loss and gradients of the first step, the
batch of the first step, and the weights before and after training. The tests compare those with the
sampler's own plan and with one process computing the same step on the two ranks' batches together.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medcl.data import contract
from medcl.data.datamodule import PretrainDataModule
from medcl.data.sampler import GroupedBatchSampler
from medcl.data.splits import SplitConfig
from medcl.objectives import HierarchicalContrast
from medcl.training.pretrain import PretrainModule
from modalities.signals import SignalAdapter, TS2VecEncoder

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
EPOCHS = 2
BATCH_SIZE = 8  # per rank
SAMPLES_PER_TRIAL = 2
TRIALS_PER_PATIENT = 2
WINDOWS_PER_TRIAL = 4  # 10 s PTB-XL records cut into 2.5 s windows
LAUNCH_TIMEOUT_S = 240


def build() -> tuple[PretrainModule, PretrainDataModule]:
    """The model and data every rank trains, and the reference rebuilds.

    Training split = PTB-XL folds 9 and 10 of the bundled subset (84 patients, 100 records, 400 windows);
    the encoder has no randomness in training mode (no timestamp mask, no dropout) so one process can
    recompute a rank's step exactly.
    """
    adapter = SignalAdapter(window_s=2.5, labels=None, aligned_views=True)
    data = PretrainDataModule(
        adapter,
        batch_size=BATCH_SIZE,
        samples_per_trial=SAMPLES_PER_TRIAL,
        trials_per_patient=TRIALS_PER_PATIENT,
        split=SplitConfig(method="fold", val_folds=(1, 2, 3, 4, 5, 6), test_folds=(7, 8)),
        use_labels=False,
        seed=0,
    )
    torch.manual_seed(0)
    encoder = TS2VecEncoder(
        in_channels=12, hidden_dims=8, output_dims=16, depth=1, mask_mode="none", repr_dropout=0.0
    )
    model = PretrainModule(encoder, HierarchicalContrast(), lr=1e-2, warmup_epochs=0)
    return model, data


# --- the worker (one per rank, started by torchrun) --------------------------------------------------


class _Recorder(Callback):
    """Writes what this rank saw and computed to ``<folder>/rank<r>.pt`` at the end of training."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out: dict[str, Any] = {"batches": [], "losses": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out["rank"] = trainer.global_rank
        self.out["world_size"] = trainer.world_size
        self.out["initial"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any], batch_idx: int
    ) -> None:
        self.out["batches"].append(
            {
                "epoch": trainer.current_epoch,
                "index": batch[contract.INDEX].tolist(),
                "patient": batch[contract.PATIENT].tolist(),
                "trial": batch[contract.TRIAL].tolist(),
            }
        )
        if trainer.global_step == 0:
            keys = (contract.VIEWS, contract.PATIENT, contract.TRIAL, contract.INDEX, contract.N_SKIPPED)
            self.out["first_batch"] = {k: batch[k] for k in keys}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.global_step == 0:  # gradients after DDP's all-reduce, before the first update
            self.out["first_grads"] = {
                name: p.grad.detach().clone()
                for name, p in pl_module.named_parameters()
                if p.grad is not None
            }

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        self.out["losses"].append(outputs["loss"].detach().clone())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out["global_step"] = trainer.global_step
        self.out["final"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.out["strategy"] = type(trainer.strategy).__name__
        self.out["backend"] = str(torch.distributed.get_backend())
        torch.save(self.out, self.folder / f"rank{trainer.global_rank}.pt")


def worker(folder: Path) -> None:
    """One rank: fit :func:`build`'s model for :data:`EPOCHS` epochs with Lightning's DDP on CPU."""
    L.seed_everything(0)
    model, data = build()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        num_nodes=1,
        strategy="ddp",
        max_epochs=EPOCHS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the GroupedBatchSampler splits patients over ranks itself
        callbacks=[_Recorder(folder)],
    )
    trainer.fit(model, datamodule=data)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={WORLD_SIZE}",
        __file__,
        str(folder),
    ]
    start = time.monotonic()
    run = subprocess.run(
        command, env=env, cwd=folder, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, check=False
    )
    if run.returncode != 0:
        elapsed = time.monotonic() - start
        pytest.fail(f"torchrun failed ({run.returncode}) after {elapsed:.0f} s:\n{run.stderr[-6000:]}")
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def train_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient codes, trial codes and patient ids of the training samples, as every rank indexes them."""
    _, data = build()
    data.setup("fit")
    dataset = data.dataset("train")
    return dataset.patient_codes, dataset.trial_codes, data.samples["train"]["patient_id"].to_numpy()


def _sampler(patients: np.ndarray, trials: np.ndarray, rank: int) -> GroupedBatchSampler:
    return GroupedBatchSampler(
        patients,
        trials,
        batch_size=BATCH_SIZE,
        samples_per_trial=SAMPLES_PER_TRIAL,
        trials_per_patient=TRIALS_PER_PATIENT,
        seed=0,
        num_replicas=WORLD_SIZE,
        rank=rank,
    )


def test_lightning_ran_ddp_with_gloo(ranks: list[dict[str, Any]]) -> None:
    for r, out in enumerate(ranks):
        assert (out["rank"], out["world_size"]) == (r, WORLD_SIZE)
        assert out["strategy"] == "DDPStrategy" and out["backend"] == "gloo"


def test_each_epoch_deals_disjoint_patients_and_ranks_train_on_their_plan(
    ranks: list[dict[str, Any]], train_table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    patients, trials, patient_ids = train_table
    samplers = [_sampler(patients, trials, r) for r in range(WORLD_SIZE)]
    plans = []
    for epoch in range(EPOCHS):
        seen = []
        dealt = []
        for r, out in enumerate(ranks):
            got = [b["index"] for b in out["batches"] if b["epoch"] == epoch]
            # The batches the rank trained on are its sampler's plan for this epoch (so Lightning neither
            # replaced the batch sampler nor failed to pass it the epoch).
            samplers[r].set_epoch(epoch)
            expected = [[i for i, _ in batch] for batch in samplers[r]]
            assert got == expected
            seen.append({patient_ids[i] for batch in got for i in batch})
            dealt.append(set(patient_ids[samplers[r].epoch_order(epoch)]))
            # Patient codes in the batches are the dataset's codes of those rows.
            for b in out["batches"]:
                if b["epoch"] == epoch:
                    assert b["patient"] == patients[b["index"]].tolist()
                    assert b["trial"] == trials[b["index"]].tolist()
        assert not seen[0] & seen[1], f"epoch {epoch}: a patient on both ranks"
        assert not dealt[0] & dealt[1]
        # Every patient is dealt to exactly one rank; the ranks' equal step counts leave out at most
        # (2 x largest patient + one batch) samples of each rank's share at the end of its epoch.
        assert dealt[0] | dealt[1] == set(patient_ids)
        largest = int(np.bincount(patients).max())
        for r in range(WORLD_SIZE):
            n_dealt = len(samplers[r].epoch_order(epoch))
            n_seen = sum(len(b["index"]) for b in ranks[r]["batches"] if b["epoch"] == epoch)
            assert 0 <= n_dealt - n_seen < 2 * largest + BATCH_SIZE
        plans.append(seen)
    assert plans[0] != plans[1], "the deal of patients to ranks did not change between epochs"


def test_every_batch_on_every_rank_holds_its_positives(
    ranks: list[dict[str, Any]], train_table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    patients, trials, _ = train_table
    # Premise of the exact check: every trial has 4 windows, i.e. 2 chunks of 2, so groups never split.
    assert set(np.bincount(trials).tolist()) == {WINDOWS_PER_TRIAL}
    trials_of_patient = {p: set(trials[patients == p].tolist()) for p in np.unique(patients)}
    n_batches = 0
    for out in ranks:
        for b in out["batches"]:
            p, t = np.array(b["patient"]), np.array(b["trial"])
            assert len(p) == BATCH_SIZE
            for i in range(len(p)):
                others = np.arange(len(p)) != i
                assert (others & (t == t[i])).any(), "a sample without a same-trial positive"
                if len(trials_of_patient[p[i]]) > 1:
                    # A patient with several trials contributes two different trials to the batch.
                    assert (others & (p == p[i]) & (t != t[i])).any(), "no other trial of the patient"
            n_batches += 1
    assert n_batches == sum(len(out["batches"]) for out in ranks) > 0


def test_ranks_ran_the_same_number_of_steps(
    ranks: list[dict[str, Any]], train_table: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    patients, trials, _ = train_table
    per_epoch = len(_sampler(patients, trials, 0))
    assert per_epoch == len(_sampler(patients, trials, 1)) > 1
    for out in ranks:
        assert out["global_step"] == EPOCHS * per_epoch
        assert len(out["batches"]) == len(out["losses"]) == EPOCHS * per_epoch


def test_gathered_negatives_loss_and_gradients_equal_one_process(ranks: list[dict[str, Any]]) -> None:
    """Before the first update: the mean of the ranks' losses is the loss of one process on both ranks'
    batches together, and every rank's (all-reduced) gradients are that loss's gradients."""
    for name, value in ranks[0]["initial"].items():
        torch.testing.assert_close(ranks[1]["initial"][name], value, rtol=0, atol=0)
    model, _ = build()
    model.load_state_dict(ranks[0]["initial"])
    model.train()
    first = [out["first_batch"] for out in ranks]
    both = {k: torch.cat([b[k] for b in first]) for k in (contract.VIEWS, contract.PATIENT, contract.TRIAL)}
    loss = model._step(both, "train")
    loss.backward()

    rank_losses = torch.stack([out["losses"][0] for out in ranks])
    torch.testing.assert_close(rank_losses.mean(), loss.detach(), rtol=0, atol=1e-6)
    expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert expected
    for out in ranks:
        assert set(out["first_grads"]) == set(expected)
        for name, grad in expected.items():
            torch.testing.assert_close(out["first_grads"][name], grad, rtol=1e-4, atol=1e-6)

    # Control: without the other rank's negatives (one process on one rank's batch) the loss differs.
    model.zero_grad()
    with torch.no_grad():
        for r, batch in enumerate(first):
            local = model._step(dict(batch), "train")
            assert abs(local.item() - rank_losses[r].item()) > 1e-3


def test_weights_stay_identical_across_ranks(ranks: list[dict[str, Any]]) -> None:
    final = [out["final"] for out in ranks]
    assert set(final[0]) == set(final[1])
    for name, value in final[0].items():
        torch.testing.assert_close(final[1][name], value, rtol=0, atol=0)
    moved = max((final[0][k] - ranks[0]["initial"][k]).abs().max().item() for k in final[0])
    assert moved > 1e-3, "training did not change the weights"


# --- the documented launch commands (docs/distributed.md), through the real `medcl pretrain` CLI -------

#: A tiny COMET run on the bundled PTB-XL: the flags after the config shrink it, the rest is the recipe.
TINY_COMET = [
    "--config",
    str(REPO_ROOT / "configs" / "pretrain" / "comet_ecg.yaml"),
    "--trainer.accelerator",
    "cpu",
    "--trainer.strategy",
    "ddp",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--model.encoder.init_args.hidden_dims",
    "8",
    "--model.encoder.init_args.output_dims",
    "16",
    "--model.encoder.init_args.depth",
    "1",
    "--data.batch_size",
    "16",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(launch: list[str], args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "medcl", "pretrain", *args]
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen[str]) -> None:
    output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    assert process.returncode == 0, output[-6000:]


@pytest.mark.slow
def test_cli_launches_train_alike_on_one_node_two_nodes_and_without_torchrun(tmp_path: Path) -> None:
    """``medcl pretrain`` on 2 CPU ranks launched three ways: torchrun with 1 node x 2 devices, 2 "nodes"
    (two torchrun launches on this machine, ``--trainer.num_nodes 2``) x 1 device, and no launcher
    (Lightning starts the second rank itself by re-running the command line). Same losses, step for step."""
    one = tmp_path / "one_node"
    _finish(
        _torchrun(
            ["--standalone", "--nnodes", "1", "--nproc_per_node", "2"],
            [*TINY_COMET, "--trainer.devices", "2", "--trainer.logger.init_args.save_dir", str(one)],
            tmp_path,
        )
    )
    two = tmp_path / "two_nodes"
    rendezvous = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    logger = ["--trainer.logger.init_args.save_dir", str(two)]
    nodes = [
        _torchrun(
            ["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", *rendezvous],
            [*TINY_COMET, "--trainer.num_nodes", "2", "--trainer.devices", "1", *logger],
            tmp_path,
        )
        for node in range(2)
    ]
    for process in nodes:
        _finish(process)
    plain = tmp_path / "no_launcher"
    command = [sys.executable, "-m", "medcl", "pretrain", *TINY_COMET, "--trainer.devices", "2"]
    command += ["--trainer.logger.init_args.save_dir", str(plain)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _finish(
        subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    )
    metrics = [pd.read_csv(run / "comet_ecg" / "version_0" / "metrics.csv") for run in (one, two, plain)]
    assert "train/loss_epoch" in metrics[0] and metrics[0]["train/loss_epoch"].notna().any()
    pd.testing.assert_frame_equal(metrics[0], metrics[1], check_exact=True)
    pd.testing.assert_frame_equal(metrics[0], metrics[2], check_exact=True)
    config = (two / "comet_ecg" / "version_0" / "config.yaml").read_text()
    assert "num_nodes: 2" in config and "use_distributed_sampler: false" in config


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
