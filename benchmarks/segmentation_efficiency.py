"""Segmentation with few labels: VoCo-pretrained vs from-scratch on real labelled MRI (MSD hippocampus).

1. Split the patients (one volume each) at random 60/20/20 (seed 0).
2. Pretrain a MONAI BasicUNet with volume contrast (VoCo, EMA teacher) on the TRAINING patients' images
   (no masks used), ``--pretrain-epochs`` epochs.
3. For every label fraction and seed, draw that fraction of the training patients (by patient, nested
   across fractions) and train the segmentation head + backbone twice for the same epochs: from the
   pretrained weights (``finetune``) and from random weights (``scratch``); score the model after the
   last epoch on every test patient (Dice of anterior and posterior hippocampus, sliding window).
4. Print a markdown table (mean ± sample std over seeds, and the paired pretrained − scratch difference)
   and write every run to ``--out``.

    python benchmarks/segmentation_efficiency.py --out runs/bench_seg
    python benchmarks/segmentation_efficiency.py --fractions 0.05 0.25 1.0 --epochs 20 --epochs-small 60

The data defaults to ``../shared/data/msd_hippocampus`` (220 volumes); ``--root bundled:msd_hippocampus``
runs on the 40 that ship with medcl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medcl.data import PretrainDataModule, SplitConfig
from medcl.objectives import VoCo
from medcl.training import PretrainModule
from modalities.volumes import UNetBackbone, VolumeAdapter
from tasks.segmentation import run_segmentation_efficiency

LABELS = ("background", "anterior", "posterior")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    parser.add_argument("--out", default="runs/bench_segmentation")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=24, help="fine-tuning epochs at fractions above 10 %%")
    parser.add_argument("--epochs-small", type=int, default=80, help="epochs at fractions <= 10 %%")
    parser.add_argument("--features", type=int, nargs=6, default=[8, 8, 16, 32, 64, 8])
    parser.add_argument("--roi", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--encoder-lr-scale", type=float, default=0.1)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    adapter = VolumeAdapter(
        root=args.root, image_modality="MR", spacing=(1.0, 1.0, 1.0), roi=tuple(args.roi), labelled_only=True
    )
    split = SplitConfig(method="random", val_fraction=0.2, test_fraction=0.2, seed=0)

    L.seed_everything(0, verbose=False)
    data = PretrainDataModule(adapter, batch_size=4, samples_per_trial=1, trials_per_patient=1, split=split)
    model = PretrainModule(
        UNetBackbone(features=tuple(args.features)),
        VoCo(n_bases_per_side=2, crop_size=32, n_random_crops=4, volume_fit="resize"),
        lr=1e-3,
        warmup_epochs=1,
    )
    trainer = L.Trainer(
        max_epochs=args.pretrain_epochs,
        accelerator="auto",
        devices=1,
        logger=CSVLogger(out, name="pretrain", version=""),
        callbacks=[ModelCheckpoint(dirpath=out / "pretrain" / "checkpoints", save_last=True, save_top_k=0)],
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    encoder_ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    pretrain_seconds = time.monotonic() - started
    print(f"pretraining: {pretrain_seconds:.0f} s, {data.counts()}", flush=True)

    results = run_segmentation_efficiency(
        adapter,
        encoder_ckpt,
        split,
        label_names=LABELS,
        roi_size=args.roi,
        fractions=args.fractions,
        seeds=args.seeds,
        arms=("finetune", "scratch"),
        epochs=lambda f: args.epochs_small if f <= 0.1 else args.epochs,
        encoder_lr_scale=args.encoder_lr_scale,
        out_dir=out / "finetune",
        progress=lambda line: print(line, flush=True),
    )
    results.to_csv(out / "runs.csv", index=False)
    table = markdown_table(results)
    print(table)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "settings": vars(args),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                "pretrain_seconds": round(pretrain_seconds, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "table": table,
            },
            indent=2,
        )
        + "\n"
    )


def markdown_table(results: pd.DataFrame) -> str:
    """Mean ± sample std of test Dice per fraction and arm, and the paired pretrained − scratch difference."""
    lines = [
        "| training patients | pretrained (VoCo), fine-tuned | from scratch | paired difference |",
        "|---|---|---|---|",
    ]
    for fraction, rows in results.groupby("fraction", sort=True):
        pivot = rows.pivot(index="seed", columns="arm", values="dice")
        difference = pivot["finetune"] - pivot["scratch"]
        patients = int(rows["train_patients"].iloc[0])

        def cell(values: pd.Series) -> str:
            std = values.std() if len(values) > 1 else float("nan")
            return f"{values.mean():.3f} ± {std:.3f}" if np.isfinite(std) else f"{values.mean():.3f}"

        lines.append(
            f"| {fraction:.0%} ({patients}) | {cell(pivot['finetune'])} | {cell(pivot['scratch'])} | "
            f"{difference.mean():+.3f} ({(difference > 0).sum()} of {len(difference)} seeds better) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
