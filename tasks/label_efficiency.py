"""Label-efficiency experiments: pretrained vs from-scratch at several label fractions.

For every (label fraction, seed) the training patients are drawn once (:mod:`tasks.fractions`) and
every arm trains on exactly those patients and is scored on the whole test split:

- ``linear_probe``: scikit-learn logistic regression on the frozen pretrained embeddings, its L2
  strength chosen on the validation patients from ``probe_c`` (the test patients never choose anything);
- ``finetune``: the pretrained encoder + MLP head, fine-tuned (encoder at a lower learning rate);
- ``scratch``: the same encoder architecture with random weights + MLP head, trained end to end.

The neural arms train for a number of epochs that depends on the fraction (small fractions get more
epochs: there is less data per epoch), and the model after the last epoch is scored (no selection on
test data; the validation split is not used to pick epochs either).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from medcl.checkpoints import load_encoder
from medcl.data.adapter import Adapter
from medcl.data.splits import SplitConfig
from medcl.errors import ConfigError
from tasks.classification import ClassificationModule
from tasks.data import ClassificationDataModule
from tasks.probe import LogisticProbe, extract_embeddings

__all__ = ["ARMS", "ArmResult", "default_epochs", "run_label_efficiency"]

ARMS = ("linear_probe", "finetune", "scratch")


@dataclass
class ArmResult:
    """Test scores of one arm at one label fraction and seed."""

    fraction: float
    seed: int
    arm: str
    auroc: float
    auprc: float
    f1_macro: float
    accuracy: float
    train_patients: int
    train_samples: int
    test_patients: int
    test_samples: int
    seconds: float
    checkpoint: str = ""
    probe_c: float | None = None
    #: multi-label tasks: AUROC of each class (NaN where the test split cannot score it)
    auroc_per_class: list[float] | None = None


def default_epochs(fraction: float) -> int:
    """Training epochs of the neural arms: 50 up to 10 % of the labels, 10 above (as ANCHORS.md's scratch)."""
    return 50 if fraction <= 0.1 else 10


def run_label_efficiency(
    adapter: Adapter,
    encoder_ckpt: str | Path,
    split: SplitConfig,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0,),
    arms: Sequence[str] = ARMS,
    epochs: Callable[[float], int] = default_epochs,
    batch_size: int = 64,
    lr: float = 1e-3,
    encoder_lr_scale: float = 0.1,
    probe_c: Sequence[float] = (0.001, 0.01, 0.1, 1.0),
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run every arm at every fraction and seed; one row per run (columns of :class:`ArmResult`).

    Args:
        adapter: the data (its label task gives the classes).
        encoder_ckpt: the pretraining checkpoint (weights for the pretrained arms, architecture for
            ``scratch``).
        split: the patient split (the same for every run).
        fractions: label fractions of the training patients.
        seeds: seeds of the patient draws (and of the training runs).
        arms: a subset of :data:`ARMS`.
        epochs: epochs of the neural arms as a function of the fraction.
        batch_size, lr, encoder_lr_scale: training settings of the neural arms.
        probe_c: inverse L2 strengths tried for the logistic-regression probe; the one with the best
            validation AUROC is scored on the test split (ties: the smaller, i.e. more regularised).
        out_dir: where each run writes its data record and, for the neural arms, its trained model
            (``<out_dir>/f<fraction>_s<seed>/{data record, <arm>.ckpt}``); None: nowhere.
        progress: called with one line per finished run.
    """
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ConfigError(f"unknown arm(s) {sorted(unknown)}; arms are {ARMS}")
    rows: list[ArmResult] = []
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # val/test embeddings of the frozen encoder
    for fraction in fractions:
        for seed in seeds:
            run_dir = None if out_dir is None else str(Path(out_dir) / f"f{fraction:g}_s{seed}")
            data = ClassificationDataModule(
                adapter,
                label_fraction=fraction,
                fraction_seed=seed,
                batch_size=batch_size,
                split=split,
                seed=seed,
                run_dir=run_dir,
            )
            data.setup("fit")
            counts = data.counts()
            sizes = {
                "train_patients": counts["train"]["patients"],
                "train_samples": counts["train"]["samples"],
                "test_patients": counts["test"]["patients"],
                "test_samples": counts["test"]["samples"],
            }
            for arm in arms:
                started = time.monotonic()
                saved = "" if run_dir is None or arm == "linear_probe" else str(Path(run_dir) / f"{arm}.ckpt")
                if arm == "linear_probe":
                    scores = _probe(data, encoder_ckpt, probe_c, embeddings)
                else:
                    scores = _train(
                        data, arm, encoder_ckpt, epochs(fraction), lr, encoder_lr_scale, seed, saved
                    )
                result = ArmResult(
                    fraction,
                    seed,
                    arm,
                    scores["auroc"],
                    scores["auprc"],
                    scores["f1_macro"],
                    scores["accuracy"],
                    **sizes,
                    seconds=time.monotonic() - started,
                    checkpoint=saved,
                    probe_c=scores.get("C"),
                    auroc_per_class=scores.get("auroc_per_class"),
                )
                rows.append(result)
                if progress is not None:
                    progress(
                        f"{fraction:>6.0%} labels, seed {seed}, {arm:<12} AUROC {result.auroc:.3f} "
                        f"({result.train_patients} patients, {result.seconds:.0f} s)"
                    )
    return pd.DataFrame([asdict(r) for r in rows])


def _probe(
    data: ClassificationDataModule,
    encoder_ckpt: str | Path,
    candidates: Sequence[float],
    cache: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """The probe with the best validation AUROC among ``candidates``, scored on the test split.

    ``cache`` keeps the validation and test embeddings (the same for every fraction and seed).
    """
    if not candidates:
        raise ConfigError("probe_c needs at least one value")
    encoder = load_encoder(encoder_ckpt)
    for split in ("val", "test"):
        if split not in cache:
            cache[split] = extract_embeddings(encoder, data.dataset(split, n_views=0), data.input_key)
    train_x, train_y = extract_embeddings(encoder, data.dataset("train", n_views=0), data.input_key)
    best: tuple[float, float, LogisticProbe] | None = None
    for c in sorted(candidates):
        probe = LogisticProbe(data.task, data.num_classes, C=c).fit(train_x, train_y)
        score = probe.score(*cache["val"])["auroc"] if len(cache["val"][0]) else float("nan")
        score = -1.0 if np.isnan(score) else score
        if best is None or score > best[0]:
            best = (score, c, probe)
    _, c, probe = best
    return {**probe.score(*cache["test"]), "C": c}


def _train(
    data: ClassificationDataModule,
    arm: str,
    encoder_ckpt: str | Path,
    epochs: int,
    lr: float,
    encoder_lr_scale: float,
    seed: int,
    checkpoint: str,
) -> dict[str, float]:
    L.seed_everything(seed, verbose=False)
    model = ClassificationModule(
        encoder_ckpt=str(encoder_ckpt),
        mode=arm,
        num_classes=data.num_classes,
        task=data.task,
        class_names=data.class_names,
        input_key=data.input_key,
        lr=lr,
        encoder_lr_scale=encoder_lr_scale,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    if checkpoint:
        trainer.save_checkpoint(checkpoint, weights_only=True)  # model weights, no optimizer state
    trainer.test(model, datamodule=data, verbose=False)
    scores = model.results.get("test")
    if scores is None:
        raise ConfigError("the test split produced no predictions")
    return scores
