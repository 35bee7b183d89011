"""Participant-held-out linear probes on BIDMC PPG: participant-level vs segment-level positives vs random.

The paper's ablation (Abbaspourazad et al., ICLR 2024: participant-level positive pairs beat
segment-level ones for encoding participant health information), on the one real wearable set here:

- data: BIDMC PPG (``../shared/data/bidmc``), subjects 01-40 = 40 recordings of 33 participants (MIMIC-II
  subjects), 60 s segments checked for NaN/flat/clipping (306 of 320 kept), 64 Hz, 0.5-8 Hz, z-scored per
  recording: exactly the data of ``configs/pretrain/participant_ppg.yaml``;
- folds over participants (``--folds``, 5 by default): for each fold the encoder is pretrained **only on
  the other folds' participants** (``--pretrain-scope fold``; ``all`` pretrains once per seed on every
  participant, test participants' signals included but never their labels), then frozen;
- arms: ``participant`` (ParticipantContrast, positives = two segments of one participant), ``segment``
  (the same objective with positives = two augmentations of one segment), ``random`` (the same encoder
  architecture, randomly initialised, never trained); the same encoder seed for every arm;
- probe: standardised logistic regression on the frozen segment embeddings of the training participants
  (L2 strength chosen by participant-grouped 3-fold CV on them), applied to the held-out participants'
  segments; a participant's score is the mean over its segments. Labels (from ``_Fix.txt``): ``sex``
  (F/M), ``age_65`` (age >= 65), ``location`` (CCU vs MICU: only 2 CCU participants, so its AUROC is
  close to noise);
- metric: participant-level AUROC of the out-of-fold scores of all labelled participants (one number per
  seed), mean ± sample std over seeds; segment-level AUROC alongside;
- diagnostic: top-1 participant retrieval among the held-out participants' segments (is a segment's
  nearest neighbour, by cosine of the frozen embeddings, another segment of the same person?), against
  its chance rate; and the pretraining loss terms of the last epoch.

    python benchmarks/participant_probe.py --out runs/bench_participant
    python benchmarks/participant_probe.py --out /tmp/pp --seeds 0 --folds 3 --epochs 1   # smoke test

It prints a line per pretraining and per (seed, arm, label), then a markdown table, and writes
``results.csv`` (one row per seed × arm × label), ``predictions.csv`` (out-of-fold segment scores),
``folds.csv`` (retrieval and last-epoch pretraining terms per seed × arm × fold) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medcl.data import PretrainDataModule, SplitConfig
from medcl.objectives import ParticipantContrast
from medcl.training import PretrainModule
from modalities.signals import TsaiEncoder
from modalities.wearables import WearableAdapter, index_wearables, save_index

REPO = Path(__file__).resolve().parents[1]
ARMS = ("participant", "segment", "random")
LABELS = ("sex", "age_65", "location")
PROBE_C = (0.001, 0.01, 0.1, 1.0)


# --------------------------------------------------------------------------------------------------
def participant_labels(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per participant: ``sex`` (1 = M), ``age_65`` (1 = age >= 65), ``location`` (1 = CCU); NaN
    when unknown. Recordings of one participant agree (checked)."""
    rows = {}
    for participant, group in trials.groupby("patient_id"):
        first = group.iloc[0]
        for column in ("sex", "age", "location"):
            values = group[column].astype(str).unique()
            if len(values) != 1:
                raise ValueError(f"participant {participant} has several {column} values: {values}")
        sex = {"M": 1.0, "F": 0.0}.get(str(first["sex"]), np.nan)
        age = float(first["age"])
        rows[participant] = {
            "sex": sex,
            "age_65": np.nan if np.isnan(age) else float(age >= 65),
            "location": {"ccu": 1.0, "micu": 0.0}.get(str(first["location"]), np.nan),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def participant_folds(participants: list[str], n_folds: int, seed: int) -> list[list[str]]:
    """Participants shuffled with ``seed`` and dealt round-robin into ``n_folds`` folds."""
    order = np.random.default_rng(seed).permutation(sorted(participants))
    return [sorted(order[k::n_folds].tolist()) for k in range(n_folds)]


def make_encoder(seed: int, nf: int, depth: int) -> TsaiEncoder:
    torch.manual_seed(seed)
    return TsaiEncoder("InceptionTime", in_channels=1, arch_kwargs={"nf": nf, "depth": depth})


def pretrain(
    arm: str,
    train_participants: list[str],
    index_dir: Path,
    root: str,
    run_dir: Path,
    seed: int,
    args: argparse.Namespace,
) -> TsaiEncoder:
    """The encoder of ``arm`` pretrained on ``train_participants`` (ParticipantContrast as in the config)."""
    encoder = make_encoder(seed, args.nf, args.depth)
    if arm == "random":
        return encoder.eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    split_file = run_dir / "split.csv"
    pd.DataFrame({"patient_id": train_participants, "split": "train"}).to_csv(split_file, index=False)
    L.seed_everything(seed, verbose=False)
    adapter = WearableAdapter(root=root, index_dir=str(index_dir))
    data = PretrainDataModule(
        adapter,
        batch_size=args.batch_size,
        samples_per_trial=2,
        trials_per_patient=2,
        split=SplitConfig(method="file", file=str(split_file)),
        seed=seed,
        run_dir=str(run_dir),
    )
    objective = ParticipantContrast(positives=arm, hidden_dim=512, seed=seed)
    module = PretrainModule(encoder, objective, lr=args.lr, weight_decay=0.01, warmup_epochs=1)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    encoder.final_terms = {  # type: ignore[attr-defined]
        name.split("/")[1][: -len("_epoch")]: float(value)
        for name, value in trainer.callback_metrics.items()
        if name.startswith("train/") and name.endswith("_epoch")
    }
    return encoder.eval()


@torch.no_grad()
def embed(encoder: torch.nn.Module, adapter: WearableAdapter, samples: pd.DataFrame) -> np.ndarray:
    """Frozen embeddings ``(N, D)`` of every row of ``samples``."""
    encoder.eval()
    out = []
    for start in range(0, len(samples), 64):
        rows = samples.iloc[start : start + 64]
        x = np.stack([adapter.load_sample(row)["signal"] for _, row in rows.iterrows()])
        out.append(encoder(torch.as_tensor(x)).numpy())
    return np.concatenate(out)


def retrieval(z: np.ndarray, participants: np.ndarray, recordings: np.ndarray) -> dict[str, float]:
    """Top-1 participant retrieval among the segments ``z`` ``(N, D)`` (cosine of the embeddings).

    ``any``: is a segment's nearest other segment from the same participant (mostly: the same recording)?
    ``cross``: for participants with several recordings here, is the nearest segment *of another
    recording* from the same participant? Each with the count of queries, the hits and the hits a random
    neighbour would get on average.
    """
    unit = z / np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)
    similarity = unit @ unit.T
    same_person = participants[:, None] == participants[None, :]
    same_recording = recordings[:, None] == recordings[None, :]
    out: dict[str, float] = {}
    for name, allowed in (("any", ~np.eye(len(z), dtype=bool)), ("cross", ~same_recording)):
        candidates = np.where(allowed, similarity, -np.inf)
        queries = (allowed & same_person).any(axis=1)  # a same-person candidate exists
        nearest = candidates.argmax(axis=1)
        out[f"{name}_queries"] = int(queries.sum())
        out[f"{name}_hits"] = int((participants[nearest] == participants)[queries].sum())
        chance = (allowed & same_person).sum(axis=1) / allowed.sum(axis=1).clip(min=1)
        out[f"{name}_chance"] = float(chance[queries].sum())
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
    """Standardised logistic regression; C chosen by participant-grouped 3-fold CV (segment AUROC)."""
    best_c, best = PROBE_C[0], -np.inf
    n_groups = len(np.unique(groups))
    if len(np.unique(y)) == 2 and n_groups >= 3:
        for c in PROBE_C:
            scores = []
            for train, val in GroupKFold(n_splits=3).split(x, y, groups):
                if len(np.unique(y[train])) < 2 or len(np.unique(y[val])) < 2:
                    continue
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
                model.fit(x[train], y[train])
                scores.append(roc_auc_score(y[val], model.predict_proba(x[val])[:, 1]))
            if scores and np.mean(scores) > best:
                best_c, best = c, float(np.mean(scores))
    if len(np.unique(y)) < 2:  # a training fold with one class only: predict its rate
        return float(y.mean())
    return make_pipeline(StandardScaler(), LogisticRegression(C=best_c, max_iter=5000)).fit(x, y)


def score(model: Any, x: np.ndarray) -> np.ndarray:
    return np.full(len(x), model) if isinstance(model, float) else model.predict_proba(x)[:, 1]


# --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    index_dir = out / "index"
    indexed = index_wearables("bidmc", args.root)
    save_index(indexed, index_dir)
    print(indexed.summary(), flush=True)
    adapter = WearableAdapter(root=args.root, index_dir=str(index_dir))
    data = adapter.index()
    samples = adapter.make_samples(data.trials, data.events)
    labels = participant_labels(data.trials)
    participants = sorted(samples["patient_id"].unique())
    segment_participant = samples["patient_id"].to_numpy()
    segment_recording = samples["trial_id"].to_numpy()
    predictions = []
    retrieved: list[dict[str, Any]] = []
    for seed in args.seeds:
        folds = participant_folds(participants, args.folds, seed)
        shared: dict[str, TsaiEncoder] = {}
        for arm in args.arms:
            for k, held_out in enumerate(folds):
                train_participants = sorted(set(participants) - set(held_out))
                if args.pretrain_scope == "all":
                    if arm not in shared:
                        shared[arm] = pretrain(
                            arm, participants, index_dir, args.root, out / f"s{seed}_{arm}", seed, args
                        )
                    encoder = shared[arm]
                else:
                    tic = time.monotonic()
                    encoder = pretrain(
                        arm, train_participants, index_dir, args.root, out / f"s{seed}_{arm}_f{k}", seed, args
                    )
                    print(
                        f"seed {seed} {arm:<11} fold {k}: pretrained in {time.monotonic() - tic:.0f} s",
                        flush=True,
                    )
                z = embed(encoder, adapter, samples)
                test_rows = np.isin(segment_participant, held_out)
                retrieved.append(
                    {
                        "seed": seed,
                        "arm": arm,
                        "fold": k,
                        **retrieval(
                            z[test_rows], segment_participant[test_rows], segment_recording[test_rows]
                        ),
                        **getattr(encoder, "final_terms", {}),
                    }
                )
                for label in args.labels:
                    y_all = labels.loc[segment_participant, label].to_numpy()
                    train = ~test_rows & ~np.isnan(y_all)
                    model = fit_probe(z[train], y_all[train].astype(int), segment_participant[train])
                    test = test_rows & ~np.isnan(y_all)
                    probabilities = score(model, z[test])
                    predictions.append(
                        pd.DataFrame(
                            {
                                "seed": seed,
                                "arm": arm,
                                "label": label,
                                "fold": k,
                                "participant": segment_participant[test],
                                "y": y_all[test].astype(int),
                                "p": probabilities,
                            }
                        )
                    )
    segment_predictions = pd.concat(predictions, ignore_index=True)
    rows = []
    for (seed, arm, label), group in segment_predictions.groupby(["seed", "arm", "label"]):
        per_participant = group.groupby("participant").agg(y=("y", "first"), p=("p", "mean"))
        rows.append(
            {
                "seed": seed,
                "arm": arm,
                "label": label,
                "participant_auroc": roc_auc_score(per_participant["y"], per_participant["p"]),
                "segment_auroc": roc_auc_score(group["y"], group["p"]),
                "participants": len(per_participant),
                "positives": int(per_participant["y"].sum()),
                "segments": len(group),
            }
        )
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    segment_predictions.to_csv(out / "predictions.csv", index=False)
    folds_table = pd.DataFrame(retrieved)
    folds_table.to_csv(out / "folds.csv", index=False)
    per_seed = folds_table.groupby(["arm", "seed"]).sum(numeric_only=True)
    rates = pd.DataFrame(index=per_seed.index)
    for kind in ("any", "cross"):
        rates[f"{kind}_top1"] = per_seed[f"{kind}_hits"] / per_seed[f"{kind}_queries"]
        rates[f"{kind}_chance"] = per_seed[f"{kind}_chance"] / per_seed[f"{kind}_queries"]
    retrieval_summary = rates.groupby("arm").agg(["mean", "std"])
    retrieval_summary.columns = [f"{a}_{b}" for a, b in retrieval_summary.columns]
    summary = (
        results.groupby(["label", "arm"])
        .agg(
            participant_mean=("participant_auroc", "mean"),
            participant_std=("participant_auroc", "std"),
            segment_mean=("segment_auroc", "mean"),
            segment_std=("segment_auroc", "std"),
            participants=("participants", "first"),
            positives=("positives", "first"),
        )
        .reset_index()
    )
    info = {
        "settings": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items()},
        "index": indexed.counts(),
        "minutes": (time.monotonic() - started) / 60,
        "summary": summary.to_dict(orient="records"),
        "retrieval": retrieval_summary.reset_index().to_dict(orient="records"),
    }
    (out / "summary.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    print(markdown(summary, args))
    print("\nTop-1 participant retrieval among held-out participants' segments (mean ± std over seeds):")
    for arm, r in retrieval_summary.iterrows():
        print(
            f"  {arm:<11} any segment {r.any_top1_mean:.3f} ± {r.any_top1_std:.3f} "
            f"(chance {r.any_chance_mean:.3f}); another recording {r.cross_top1_mean:.3f} ± "
            f"{r.cross_top1_std:.3f} (chance {r.cross_chance_mean:.3f})"
        )
    print(f"[{info['minutes']:.1f} min; written to {out}]")
    return results


def markdown(summary: pd.DataFrame, args: argparse.Namespace) -> str:
    names = {"participant": "participant positives", "segment": "segment positives", "random": "random init"}
    label_names = {"sex": "sex (M vs F)", "age_65": "age >= 65", "location": "CCU vs MICU"}
    lines = [
        "| label (participants, positives) | " + " | ".join(names[a] for a in args.arms) + " |",
        "|---|" + "---|" * len(args.arms),
    ]
    for label in args.labels:
        part = summary[summary["label"] == label].set_index("arm")
        head = f"{label_names[label]} ({int(part['participants'].iloc[0])}, {int(part['positives'].iloc[0])})"
        cells = []
        for arm in args.arms:
            r = part.loc[arm]
            participant = f"{r.participant_mean:.3f} ± {r.participant_std:.3f}"
            cells.append(f"{participant} (segments {r.segment_mean:.3f} ± {r.segment_std:.3f})")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "bidmc"), help="BIDMC folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5, help="participant folds")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--labels", nargs="+", default=list(LABELS), choices=LABELS)
    parser.add_argument("--pretrain-scope", choices=("fold", "all"), default="fold")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--nf", type=int, default=16, help="InceptionTime filters (the config: 16)")
    parser.add_argument("--depth", type=int, default=3, help="InceptionTime modules (the config: 3)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy shared machine)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
