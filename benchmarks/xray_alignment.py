"""Image-report alignment on real chest X-rays (covid_cxr): zero-shot, retrieval and probes.

1. Pretrain with ``configs/pretrain/gaze_cxr.yaml`` (image-report InfoNCE with same-patient positives +
   the gaze term on ANNOTATION-DERIVED spatial priors: no real gaze exists here) for ``--epochs`` epochs,
   through the same command-line front end as ``medcl pretrain``, and keep the checkpoint with the
   lowest validation loss (``--select last``: the last one). Its patient split (random 70/15/15, seed 0)
   is saved in the run folder and reused below, so no test patient is ever trained on or chooses.
2. On the TEST patients' frontal images: zero-shot classification of the findings from text prompts
   (:data:`PROMPTS`, AUROC per finding) and patient-aware image↔report retrieval (P@1, R@5), for the
   pretrained towers, for the same architecture untrained (random weights, the same fitted tokenizer),
   and the closed-form value of a random ranking.
3. Linear probe of the findings on the frozen pretrained encoder vs the same encoder at random
   initialisation (scikit-learn, L2 strength chosen on the validation patients), and fine-tuning vs
   from-scratch training of the same architecture, at ``--fractions`` of the labelled training patients
   × ``--seeds`` (macro AUROC over the findings the test split can score).
4. Print markdown tables; write every number to ``--out/results.json``.

    python benchmarks/xray_alignment.py --out runs/bench_xray
    python benchmarks/xray_alignment.py --out /tmp/bx --epochs 1 --seeds 0 --fractions 1.0   # smoke run

Needs ``../shared/data/covid_cxr``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medcl.checkpoints import load_checkpoint
from medcl.configurable import instantiate_spec
from medcl.data import PretrainDataModule, SplitConfig
from medcl.training.cli import PretrainCLI
from tasks.image_text import ImageTextModel, evaluate_image_text
from tasks.label_efficiency import run_label_efficiency

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pretrain" / "gaze_cxr.yaml"
#: the findings of configs/finetune/covid_cxr_findings.yaml (>= 10 frontal images each)
FINDINGS = ("COVID-19", "No Finding", "ARDS", "SARS", "Pneumocystis", "Streptococcus", "Pneumonia")
#: zero-shot prompts, written before looking at any result (plain clinical phrases, no test-set tuning)
PROMPTS: dict[str, list[str]] = {
    "COVID-19": ["covid-19 pneumonia", "sars-cov-2 infection with bilateral ground glass opacities"],
    "No Finding": ["no acute cardiopulmonary abnormality", "normal chest radiograph"],
    "ARDS": ["acute respiratory distress syndrome", "intubated patient with diffuse bilateral opacities"],
    "SARS": ["severe acute respiratory syndrome"],
    "Pneumocystis": ["pneumocystis jirovecii pneumonia", "hiv positive patient with pneumocystis pneumonia"],
    "Streptococcus": ["streptococcus pneumoniae pneumonia", "lobar consolidation"],
    "Pneumonia": ["pneumonia"],
}


def pretrain(out: Path, epochs: int, select: str) -> Path:
    """Run the config (as ``medcl pretrain --config``) and return its ``last.ckpt`` or (``select="best"``)
    the checkpoint with the lowest validation loss (validation patients only; test never chooses)."""
    os.chdir(REPO)  # the config's data paths are relative to the repository root
    PretrainCLI(
        args=[
            "fit",
            "--config",
            str(CONFIG),
            f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    runs = sorted((out / "gaze_cxr").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    checkpoints = runs[-1] / "checkpoints"
    if select == "last":
        return checkpoints / "last.ckpt"
    (best,) = checkpoints.glob("best-*.ckpt")  # the config keeps the top 1 by val/loss
    return best


def adapter_from(checkpoint: dict[str, Any], **changes: Any) -> Any:
    """The pretraining run's adapter (same data, views, image size), with ``changes`` to its arguments."""
    spec = json.loads(json.dumps(checkpoint["medcl"]["adapter"]))
    spec["init_args"].update(changes)
    return instantiate_spec(spec)


def untrained_like(model: ImageTextModel, checkpoint: dict[str, Any], seed: int) -> ImageTextModel:
    """The same towers with fresh random weights (seeded) and the trained model's fitted tokenizer."""
    torch.manual_seed(seed)
    encoder = instantiate_spec(checkpoint["medcl"]["encoder"])
    objective = instantiate_spec(checkpoint["medcl"]["objective"])
    objective.bind(int(encoder.embedding_dim))
    objective.set_extra_state(model.objective.get_extra_state())
    return ImageTextModel(encoder, objective)


def save_random_encoder(checkpoint: dict[str, Any], path: Path, seed: int) -> Path:
    """A checkpoint of the pretraining encoder's architecture with random weights (for the probe)."""
    torch.manual_seed(seed)
    encoder = instantiate_spec(checkpoint["medcl"]["encoder"])
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            "medcl": {"encoder": checkpoint["medcl"]["encoder"]},
        },
        path,
    )
    return path


def fmt(values: list[float]) -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_xray")
    parser.add_argument("--epochs", type=int, default=12, help="pretraining epochs")
    parser.add_argument(
        "--select",
        choices=("best", "last"),
        default="best",
        help="evaluate the pretraining checkpoint with the lowest validation loss, or the last one",
    )
    parser.add_argument("--ckpt", default=None, help="reuse this gaze_cxr pretraining checkpoint")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs-small", type=int, default=40, help="classifier epochs at fractions <= 25 %%"
    )
    parser.add_argument("--epochs-large", type=int, default=20, help="classifier epochs above 25 %%")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    ckpt_path = Path(args.ckpt).resolve() if args.ckpt else pretrain(out, args.epochs, args.select)
    pretrain_seconds = time.monotonic() - started
    checkpoint = load_checkpoint(ckpt_path)
    split = SplitConfig(method="file", file=str(ckpt_path.parents[1] / "splits.csv"), unassigned="drop")

    # -- zero-shot and retrieval on the test patients ------------------------------------------------
    adapter = adapter_from(checkpoint, labels=True, class_names=list(FINDINGS), report=True, gaze=None)
    data = PretrainDataModule(adapter, split=split)
    data.setup("fit")
    test = data.samples["test"]
    model = ImageTextModel.from_checkpoint(ckpt_path)
    towers = {
        "pretrained": model,
        **{f"untrained_seed{s}": untrained_like(model, checkpoint, s) for s in args.seeds},
    }
    alignment = {name: evaluate_image_text(m, adapter, test, PROMPTS).to_dict() for name, m in towers.items()}
    # diagnostic: does the objective align the pairs it was trained on? (the run's last checkpoint, on
    # the training patients and on the test patients)
    last = ImageTextModel.from_checkpoint(ckpt_path.parent / "last.ckpt")
    last_epoch = int(load_checkpoint(ckpt_path.parent / "last.ckpt").get("epoch", -1))
    diagnostic = {
        split_name: {
            "epoch": last_epoch,
            **evaluate_image_text(last, adapter, data.samples[split_name], PROMPTS).to_dict(),
        }
        for split_name in ("train", "test")
    }

    # -- probes and fine-tuning on the labelled images -------------------------------------------------
    labelled = adapter_from(
        checkpoint, labels=True, class_names=list(FINDINGS), labelled_only=True, report=False, gaze=None
    )

    def epochs(fraction: float) -> int:
        return args.epochs_small if fraction <= 0.25 else args.epochs_large

    common = {
        "split": split,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "epochs": epochs,
        "batch_size": 32,
    }
    pretrained_runs = run_label_efficiency(labelled, ckpt_path, progress=print, **common)
    random_ckpt = save_random_encoder(checkpoint, out / "random_encoder.ckpt", seed=0)
    random_runs = run_label_efficiency(
        labelled, random_ckpt, arms=("linear_probe",), progress=print, **common
    )
    random_runs["arm"] = "linear_probe_random_init"
    runs = pd.concat([pretrained_runs, random_runs], ignore_index=True)
    runs.to_csv(out / "label_efficiency.csv", index=False)

    results = {
        "checkpoint": str(ckpt_path),
        "pretrain_epochs": None if args.ckpt else args.epochs,
        "selected": None if args.ckpt else args.select,
        "checkpoint_epoch": int(checkpoint.get("epoch", -1)),
        "pretrain_seconds": None if args.ckpt else pretrain_seconds,
        "total_seconds": time.monotonic() - started,
        "prompts": PROMPTS,
        "alignment": alignment,
        "last_checkpoint_diagnostic": diagnostic,
        "label_efficiency": runs.to_dict(orient="records"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))

    # -- tables --------------------------------------------------------------------------------------
    pre = alignment["pretrained"]
    untrained = [alignment[f"untrained_seed{s}"] for s in args.seeds]
    print(
        f"\nTest split: {pre['images']} images ({pre['images_with_report']} with a report) of "
        f"{pre['patients']} patients"
    )
    print("\n| finding (test positives) | zero-shot AUROC, pretrained | untrained |\n|---|---|---|")
    for name in FINDINGS:
        row = [u["zero_shot_auroc"][name] for u in untrained]
        print(f"| {name} ({pre['positives'][name]}) | {pre['zero_shot_auroc'][name]:.3f} | {fmt(row)} |")
    print(
        f"| mean over scorable findings | {pre['mean_zero_shot_auroc']:.3f} | "
        f"{fmt([u['mean_zero_shot_auroc'] for u in untrained])} |"
    )
    print("\n| retrieval | pretrained | untrained | random ranking |\n|---|---|---|---|")
    for direction, label in (("image_to_report", "image → report"), ("report_to_image", "report → image")):
        for metric in ("P@1", "R@5"):
            row = [u[direction][metric] for u in untrained]
            print(
                f"| {label} {metric} | {pre[direction][metric]:.3f} | {fmt(row)} | "
                f"{pre['chance_' + direction][metric]:.3f} |"
            )
    print(f"\nlast checkpoint (epoch {last_epoch}), retrieval on the training vs the test patients:")
    print("| split | image → report P@1 | R@5 | random P@1 | report → image P@1 | R@5 | random P@1 |")
    print("|---|---|---|---|---|---|---|")
    for split_name, found in diagnostic.items():
        i2t, t2i = found["image_to_report"], found["report_to_image"]
        c_i2t, c_t2i = found["chance_image_to_report"], found["chance_report_to_image"]
        print(
            f"| {split_name} ({found['images']} images) | {i2t['P@1']:.3f} | {i2t['R@5']:.3f} | "
            f"{c_i2t['P@1']:.3f} | {t2i['P@1']:.3f} | {t2i['R@5']:.3f} | {c_t2i['P@1']:.3f} |"
        )
    print(
        "\n| training patients | linear probe, pretrained | linear probe, random init | fine-tuned "
        "| from scratch |"
    )
    print("|---|---|---|---|---|")
    arms = ("linear_probe", "linear_probe_random_init", "finetune", "scratch")
    for fraction in args.fractions:
        at = runs[runs["fraction"] == fraction]
        patients = int(at["train_patients"].iloc[0])
        cells = [fmt(list(at[at["arm"] == arm]["auroc"])) for arm in arms]
        print(f"| {fraction:.0%} ({patients}) | " + " | ".join(cells) + " |")
    # the one finding with enough test images on both sides to be read on its own
    print(f"\n{FINDINGS[0]} alone (test AUROC):\n| training patients | " + " | ".join(arms) + " |")
    print("|---" * (len(arms) + 1) + "|")
    for fraction in args.fractions:
        at = runs[runs["fraction"] == fraction]
        cells = [fmt([r[0] for r in at[at["arm"] == arm]["auroc_per_class"]]) for arm in arms]
        print(f"| {fraction:.0%} | " + " | ".join(cells) + " |")
    print(f"\ntotal {time.monotonic() - started:.0f} s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
