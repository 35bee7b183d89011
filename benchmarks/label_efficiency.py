"""Label efficiency on PTB-XL NORM vs MI: medcl's hierarchical pretraining vs training from scratch.

The protocol of ``shared/ANCHORS.md`` (where COMET's reference code was scored), on the same data and the
same patient split:

- data: the 500-record PTB-XL set in ``../shared/data/ptbxl``; a record is NORM if its diagnostic
  superclasses are exactly {NORM}, MI if MI is among them and NORM is not; others are dropped (363
  records of 349 patients);
- split: ``norm_mi_patient_split.json`` (209 / 70 / 70 patients); trials = 10 s records at 100 Hz,
  samples = 2 s windows with 50 % overlap (9 per record), per-lead standardised over each record;
- pretraining: :class:`medcl.objectives.HierarchicalContrast` (COMET's four levels, weights 0.25, one pair
  of views per step) on the training patients' windows (``--pretrain-on all``: on every record of every
  patient who is not a validation or test patient, unlabelled records included), with TS2Vec's
  encoder at COMET's sizes;
- label fractions: 1 %, 10 %, 100 % of the training *patients* (seeds 0, 1, 2), scored on the test
  patients' windows; arms: logistic-regression probe on frozen embeddings, fine-tuning, and the same
  encoder from scratch (50 epochs at <= 10 %, 10 at 100 %, last epoch scored, as ANCHORS.md's scratch).

    python benchmarks/label_efficiency.py --out runs/bench_label_efficiency
    python benchmarks/label_efficiency.py --out /tmp/le --pretrain-epochs 1 --seeds 0 --quick   # smoke test

It prints the per-run lines, then a markdown table (mean ± sample std over seeds) and writes
``results.csv`` and ``summary.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medcl.data import PretrainDataModule, SplitConfig
from medcl.objectives import HierarchicalContrast
from medcl.training import PretrainModule
from modalities.signals import SignalAdapter, TS2VecEncoder
from tasks.label_efficiency import run_label_efficiency

REPO = Path(__file__).resolve().parents[1]
ARM_NAMES = {
    "linear_probe": "pretrained, linear probe",
    "finetune": "pretrained, fine-tuned",
    "scratch": "from scratch",
}


class LabelledPretrainData(PretrainDataModule):
    """Pretraining on exactly the windows of the NORM/MI records (what COMET was pretrained on)."""

    def select_samples(self, samples: pd.DataFrame) -> pd.DataFrame:
        return samples[samples["labels"].astype(str) != ""]


def anchors_split(ptbxl: Path, out: Path) -> Path:
    """ANCHORS.md's split as a medcl split file (JSON: split → PTB-XL patient ids)."""
    content = json.loads((ptbxl / "norm_mi_patient_split.json").read_text())
    by_comet_id = {p["comet_id"]: str(int(p["ptbxl_patient_id"])) for p in content["patients"]}
    split = {name: [by_comet_id[i] for i in ids] for name, ids in content["split"].items()}
    path = out / "anchors_split.json"
    path.write_text(json.dumps(split, indent=1))
    return path


def pretrain(
    args: argparse.Namespace, adapter: SignalAdapter, split: SplitConfig, out: Path
) -> tuple[Path, dict]:
    """Hierarchical pretraining on the training patients; the checkpoint and what was trained on."""
    started = time.monotonic()
    L.seed_everything(0, verbose=False)
    if args.pretrain_on == "labelled":
        data: PretrainDataModule = LabelledPretrainData(
            adapter, batch_size=args.batch_size, samples_per_trial=3, trials_per_patient=2, split=split
        )
    else:
        everyone_else = SplitConfig(method="file", file=split.file, unassigned="train")
        data = PretrainDataModule(
            adapter,
            batch_size=args.batch_size,
            samples_per_trial=3,
            trials_per_patient=2,
            split=everyone_else,
        )
    encoder = TS2VecEncoder(12, hidden_dims=args.hidden_dims, output_dims=args.output_dims, depth=args.depth)
    model = PretrainModule(
        encoder,
        HierarchicalContrast(*args.weights),
        lr=1e-3,
        weight_decay=0.01,
        probe_num_classes=data.probe_num_classes,
        probe_task=data.probe_task,
    )
    trainer = L.Trainer(
        max_epochs=args.pretrain_epochs,
        accelerator="auto",
        devices=1,
        logger=CSVLogger(out, name="pretrain", version=""),
        callbacks=[ModelCheckpoint(dirpath=out / "pretrain" / "checkpoints", save_last=True, save_top_k=0)],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    summary = {
        "counts": data.counts(),
        "epochs": args.pretrain_epochs,
        "seconds": round(time.monotonic() - started),
    }
    return out / "pretrain" / "checkpoints" / "last.ckpt", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data" / "ptbxl"), help="PTB-XL folder"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--hidden-dims", type=int, default=64)
    parser.add_argument("--output-dims", type=int, default=320)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument(
        "--weights",
        type=float,
        nargs=4,
        default=[0.25, 0.25, 0.25, 0.25],
        metavar=("OBSERVATION", "SAMPLE", "TRIAL", "PATIENT"),
        help="level weights (COMET's default 0.25 each)",
    )
    parser.add_argument(
        "--pretrain-on",
        choices=("labelled", "all"),
        default="labelled",
        help="labelled: the training patients' NORM/MI windows (what COMET was pretrained on); all: every "
        "record of every patient outside the validation and test patients (unlabelled records too)",
    )
    parser.add_argument(
        "--encoder-ckpt", default=None, help="reuse this pretraining checkpoint instead of pretraining again"
    )
    parser.add_argument("--quick", action="store_true", help="2 epochs per fine-tuning run (smoke test)")
    args = parser.parse_args(argv)

    ptbxl = Path(args.data)
    if not (ptbxl / "norm_mi_patient_split.json").is_file():
        print(f"no PTB-XL with norm_mi_patient_split.json at {ptbxl}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    adapter = SignalAdapter(
        dataset="ptbxl", root=str(ptbxl), labels="norm_vs_mi", window_s=2.0, stride_s=1.0, aligned_views=True
    )
    split = SplitConfig(method="file", file=str(anchors_split(ptbxl, out)))

    if args.encoder_ckpt is None:
        encoder_ckpt, pretraining = pretrain(args, adapter, split, out)
    else:
        encoder_ckpt, pretraining = Path(args.encoder_ckpt), {"reused_checkpoint": args.encoder_ckpt}
    print(f"pretraining: {pretraining}", flush=True)

    def epochs(fraction: float) -> int:
        if args.quick:
            return 2
        return 50 if fraction <= 0.1 else 10

    results = run_label_efficiency(
        adapter,
        encoder_ckpt,
        split,
        fractions=args.fractions,
        seeds=args.seeds,
        epochs=epochs,
        progress=lambda line: print(line, flush=True),
    )
    results.to_csv(out / "results.csv", index=False)
    grouped = results.groupby(["fraction", "arm"], sort=False)
    summary = grouped["auroc"].agg(["mean", "std", "count"]).reset_index()
    summary = summary.merge(grouped["train_patients"].first().reset_index(), on=["fraction", "arm"])
    total = time.monotonic() - started
    (out / "summary.json").write_text(
        json.dumps(
            {
                "pretraining": pretraining,
                "total_seconds": round(total),
                "summary": summary.to_dict(orient="records"),
                "args": vars(args),
            },
            indent=2,
        )
    )
    print(f"\n| labels (train patients) | {' | '.join(ARM_NAMES.values())} |")
    print("|---|---|---|---|")
    for fraction in args.fractions:
        rows = summary[summary["fraction"] == fraction].set_index("arm")
        cells = [
            f"{rows.loc[a, 'mean']:.3f} ± {rows.loc[a, 'std']:.3f}" if a in rows.index else "-"
            for a in ARM_NAMES
        ]
        print(f"| {fraction:.0%} ({rows['train_patients'].iloc[0]}) | {' | '.join(cells)} |")
    print(f"\ntotal {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
