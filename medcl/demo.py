"""``medcl demo``: the main job, end to end on the real ECG that ships with medcl.

1. **Pretrain** a TS2Vec dilated-conv encoder with hierarchical contrast (observation, sample, trial and
   patient levels from one pair of views per step) on the training patients of the bundled PTB-XL
   subset (100 Hz, 12 leads, 2 s windows with 50 % overlap).
2. **Label efficiency** on NORM vs MI: at 1 %, 10 % and 100 % of the labelled training patients (drawn
   by patient, several seeds), a logistic-regression probe on the frozen encoder, the fine-tuned
   encoder, and the same architecture trained from scratch, all scored on the test patients.
3. **Embedding map**: t-SNE of the pretrained embeddings of the test patients' windows, coloured by
   class and by patient.
4. **Export**: the fine-tuned classifier (100 % of the labels, first seed) to ``model.onnx`` with its
   preprocessing and label names, parity-checked against torch; then the torch-free predictor runs on
   raw test records and its probabilities are compared with the torch model's.
5. **Report**: ``report.md``, ``report.json`` and PNG plots in the output folder.

The demo is an application of the library: unlike medcl's core it imports a concrete modality.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import medcl

__all__ = ["DemoSettings", "run_demo"]

LEVELS = ("observation", "sample", "trial", "patient")
ARM_LABELS = {
    "linear_probe": "pretrained, linear probe",
    "finetune": "pretrained, fine-tuned",
    "scratch": "from scratch",
}


@dataclass
class DemoSettings:
    """What the demo runs (defaults: the full demo, about 5 minutes on 2 CPU cores)."""

    pretrain_epochs: int = 10
    fractions: Sequence[float] = (0.01, 0.1, 1.0)
    seeds: Sequence[int] = (0, 1, 2)
    finetune_epochs_small: int = 50  # at label fractions <= 10 %
    finetune_epochs_large: int = 10
    encoder: dict[str, Any] = field(
        default_factory=lambda: {"hidden_dims": 32, "output_dims": 128, "depth": 6}
    )
    batch_size: int = 96
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smoke-test sized run (about a minute): the same pipeline, far fewer epochs and one seed."""
        return cls(
            pretrain_epochs=1,
            seeds=(0,),
            finetune_epochs_small=3,
            finetune_epochs_large=1,
            encoder={"hidden_dims": 16, "output_dims": 32, "depth": 2},
        )


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(
    out: str | Path, settings: DemoSettings | None = None, progress: Callable[[str], None] = _say
) -> dict:
    """Run the demo into ``out`` (created); returns the content of ``report.json``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from medcl.data import PretrainDataModule, SplitConfig
    from medcl.objectives import HierarchicalContrast
    from medcl.training import PretrainModule
    from modalities.signals import SignalAdapter, TS2VecEncoder
    from tasks.label_efficiency import run_label_efficiency

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    seconds: dict[str, float] = {}

    adapter = SignalAdapter(
        dataset="ptbxl",
        root="bundled:ptbxl",
        labels="norm_vs_mi",
        window_s=2.0,
        stride_s=1.0,
        aligned_views=True,
    )
    split = SplitConfig(method="fold", val_folds=(9,), test_folds=(10,))

    # 1. pretraining ------------------------------------------------------------------------------
    progress(
        f"[1/5] pretraining: hierarchical contrast, {settings.pretrain_epochs} epoch(s) on the bundled PTB-XL"
    )
    L.seed_everything(settings.seed, verbose=False)
    data = PretrainDataModule(
        adapter,
        batch_size=settings.batch_size,
        samples_per_trial=3,
        trials_per_patient=2,
        split=split,
        seed=settings.seed,
    )
    objective = HierarchicalContrast()
    model = PretrainModule(
        TS2VecEncoder(adapter.num_channels, **settings.encoder),
        objective,
        lr=1e-3,
        weight_decay=0.01,
        probe_num_classes=data.probe_num_classes,
        probe_task=data.probe_task,
    )
    checkpoints = ModelCheckpoint(dirpath=out / "pretrain" / "checkpoints", save_last=True, save_top_k=0)
    trainer = L.Trainer(
        max_epochs=settings.pretrain_epochs,
        accelerator="auto",
        devices=1,
        logger=CSVLogger(out, name="pretrain", version=""),
        callbacks=[checkpoints],
        enable_model_summary=False,
        log_every_n_steps=5,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    encoder_ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    seconds["pretraining"] = time.monotonic() - started
    pretraining = _pretraining_summary(out / "pretrain" / "metrics.csv")
    progress(f"      done in {seconds['pretraining']:.0f} s; checkpoint {encoder_ckpt}")

    # 2. label efficiency -------------------------------------------------------------------------
    progress(
        "[2/5] label efficiency, NORM vs MI: fractions "
        f"{', '.join(f'{f:.0%}' for f in settings.fractions)} x seeds {', '.join(map(str, settings.seeds))} "
        f"x arms {', '.join(ARM_LABELS)}"
    )
    step_started = time.monotonic()
    results = run_label_efficiency(
        adapter,
        encoder_ckpt,
        split,
        fractions=settings.fractions,
        seeds=settings.seeds,
        epochs=lambda f: settings.finetune_epochs_small if f <= 0.1 else settings.finetune_epochs_large,
        out_dir=out / "finetune",
        progress=lambda line: progress(f"      {line}"),
    )
    results.to_csv(out / "label_efficiency.csv", index=False)
    seconds["label_efficiency"] = time.monotonic() - step_started

    # 3. embedding map ----------------------------------------------------------------------------
    progress("[3/5] embedding map of the test patients (t-SNE)")
    step_started = time.monotonic()
    embedding_map = _embedding_map(adapter, split, encoder_ckpt, out)
    seconds["embedding_map"] = time.monotonic() - step_started

    # 4. export and torch-free prediction ---------------------------------------------------------
    progress("[4/5] export to ONNX and prediction on raw test records without torch")
    step_started = time.monotonic()
    exported = _export_and_check(results, settings, out, adapter, split)
    seconds["export"] = time.monotonic() - step_started
    progress(
        f"      {exported['model']}: parity max abs error {exported['parity_max_abs_error']:.2g}; "
        f"predictor vs torch on {exported['records']} raw records: max abs difference "
        f"{exported['max_abs_difference']:.2g}"
    )

    # 5. report -----------------------------------------------------------------------------------
    progress("[5/5] report")
    summary = _summarise(results)
    _plot_label_efficiency(summary, out / "label_efficiency.png")
    _plot_pretraining(pretraining, out / "pretraining_loss.png")
    seconds["total"] = time.monotonic() - started
    report = {
        "medcl_version": medcl.__version__,
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, torch {_torch_version()}",
        "data": {
            "dataset": "PTB-XL, records 1-300 bundled with medcl (CC BY 4.0)",
            "task": "NORM vs MI (NORM: superclasses exactly {NORM}; MI: MI and not NORM; others left out)",
            "input": adapter.input_spec(),
            "split": "patients by PTB-XL strat_fold: 1-8 train, 9 validation, 10 test",
            "pretraining_counts": data.counts(),
        },
        "pretraining": {
            "objective": "medcl.objectives.HierarchicalContrast (COMET levels, one pair of views per step)",
            "weights": dict(objective.weights),
            "encoder": {"class": "modalities.signals.TS2VecEncoder", **settings.encoder},
            "epochs": settings.pretrain_epochs,
            **pretraining,
            "checkpoint": str(encoder_ckpt),
        },
        "label_efficiency": {
            "arms": ARM_LABELS,
            "fractions": list(settings.fractions),
            "seeds": list(settings.seeds),
            "finetune_epochs": {
                "<=10%": settings.finetune_epochs_small,
                ">10%": settings.finetune_epochs_large,
            },
            "runs": results.drop(columns=["checkpoint"]).to_dict(orient="records"),
            "summary": summary.to_dict(orient="records"),
        },
        "embedding_map": embedding_map,
        "export": exported,
        "wall_time_s": {k: round(v, 1) for k, v in seconds.items()},
        "plots": ["label_efficiency.png", "pretraining_loss.png", "embeddings.png"],
        "model": "model.onnx",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(_markdown(report, summary))
    progress(f"done in {seconds['total']:.0f} s: {out / 'report.md'}")
    return report


# --------------------------------------------------------------------------------------------------
def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _torch_version() -> str:
    import torch

    return torch.__version__


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _pretraining_summary(metrics_csv: Path) -> dict[str, Any]:
    """Per-epoch training loss of every level (and the total), and the online probe's val AUROC."""
    metrics = pd.read_csv(metrics_csv)
    per_epoch: dict[str, list[float]] = {}
    for name in ("loss", *LEVELS):
        column = f"train/{name}_epoch"
        if column in metrics:
            per_epoch[name] = [float(v) for v in metrics.dropna(subset=[column]).sort_values("epoch")[column]]
    probe = [float(v) for v in metrics["val/probe_auroc"].dropna()] if "val/probe_auroc" in metrics else []
    return {
        "train_loss_per_epoch": per_epoch,
        "final_train_loss": {name: values[-1] for name, values in per_epoch.items() if values},
        "val_online_probe_auroc_per_epoch": probe,
    }


def _summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds of every metric, per fraction and arm."""
    metrics = ["auroc", "auprc", "f1_macro", "accuracy"]
    grouped = results.groupby(["fraction", "arm"], sort=False)
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    sizes = grouped[["train_patients", "train_samples", "test_patients", "test_samples"]].first()
    seeds = grouped["seed"].nunique().rename("seeds")
    return pd.concat([summary, sizes, seeds], axis=1).reset_index()


def _embedding_map(adapter: Any, split: Any, encoder_ckpt: Path, out: Path) -> dict[str, Any]:
    """t-SNE of the test patients' window embeddings, coloured by class and by patient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from medcl.checkpoints import load_encoder
    from tasks.data import ClassificationDataModule
    from tasks.probe import extract_embeddings

    data = ClassificationDataModule(adapter, split=split)
    data.setup("test")
    dataset = data.dataset("test", n_views=0)
    embeddings, labels = extract_embeddings(load_encoder(encoder_ckpt), dataset, data.input_key)
    points = TSNE(
        n_components=2, perplexity=min(30.0, (len(embeddings) - 1) / 3), random_state=0, init="pca"
    ).fit_transform(embeddings)
    patients = dataset.patient_codes
    names = data.class_names or []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for k, name in enumerate(names):
        chosen = labels == k
        axes[0].scatter(
            points[chosen, 0], points[chosen, 1], s=10, alpha=0.8, label=f"{name} ({int(chosen.sum())})"
        )
    axes[0].legend(title="class")
    axes[0].set_title("pretrained embeddings of test windows, by class")
    axes[1].scatter(points[:, 0], points[:, 1], c=patients % 20, cmap="tab20", s=10, alpha=0.8)
    axes[1].set_title(f"the same, by patient ({len(np.unique(patients))} patients; colours repeat)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "embeddings.png", dpi=110)
    plt.close(fig)
    return {
        "method": "t-SNE (scikit-learn, perplexity 30, PCA init)",
        "windows": len(points),
        "patients": len(np.unique(patients)),
    }


def _export_and_check(
    results: pd.DataFrame, settings: DemoSettings, out: Path, adapter: Any, split: Any
) -> dict[str, Any]:
    """Export the fine-tuned model (largest fraction, first seed); run the predictor on raw test records."""
    import torch

    from export.onnx import export_classifier, load_classifier
    from export.predictor import OnnxPredictor
    from tasks.data import ClassificationDataModule

    chosen = results[(results["arm"] == "finetune") & (results["seed"] == settings.seeds[0])]
    chosen = chosen.sort_values("fraction").iloc[-1]
    model_path = out / "model.onnx"
    metadata = export_classifier(chosen["checkpoint"], model_path)
    predictor = OnnxPredictor(model_path)
    model, _ = load_classifier(chosen["checkpoint"])
    data = ClassificationDataModule(adapter, split=split)
    data.setup("test")
    test = data.samples["test"]
    paths = list(dict.fromkeys(test["path"]))[:5]
    worst = 0.0
    for path in paths:
        prediction = predictor.predict_file(path)
        rows = test[test["path"] == path]
        windows = np.stack([adapter.load_sample(row)["signal"] for _, row in rows.iterrows()])
        with torch.no_grad():
            expected = model(torch.from_numpy(windows))[1].numpy()
        worst = max(worst, float(np.abs(prediction.window_probabilities - expected).max()))
    return {
        "model": str(model_path),
        "from_checkpoint": str(chosen["checkpoint"]),
        "label_fraction": float(chosen["fraction"]),
        "parity_max_abs_error": max(
            metadata["parity"]["random"]["max_abs_error"],
            metadata["parity"]["real"].get("max_abs_error", 0.0),
        ),
        "parity": metadata["parity"],
        "records": len(paths),
        "record_list": _write_file_list(out / "export_records.csv", {"path": paths}),
        "max_abs_difference": worst,
        "predict_command": f"medcl predict --model {model_path} RECORD.hea [RECORD.hea ...]",
    }


def _write_file_list(path: Path, columns: dict[str, list[str]]) -> str:
    """Write the files a report step used as a CSV next to the report; return its name. Reports give
    counts only: record and volume names can identify patients (``medcl.errors.LOG_IDS_ENV``)."""
    pd.DataFrame(columns).to_csv(path, index=False)
    return path.name


def _plot_label_efficiency(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arm, label in ARM_LABELS.items():
        rows = summary[summary["arm"] == arm].sort_values("fraction")
        if len(rows):
            std = rows["auroc_std"].fillna(0.0)
            ax.errorbar(
                rows["fraction"] * 100, rows["auroc_mean"], yerr=std, marker="o", capsize=4, label=label
            )
    ax.set_xscale("log")
    fractions = sorted(summary["fraction"].unique())
    ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training patients")
    ax.set_ylabel("test AUROC (NORM vs MI)")
    ax.set_title("Label efficiency on the bundled PTB-XL (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pretraining(pretraining: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_epoch = pretraining["train_loss_per_epoch"]
    fig, axes = plt.subplots(1, len(LEVELS), figsize=(13, 3.2))
    for ax, level in zip(axes, LEVELS, strict=True):
        values = per_epoch.get(level, [])
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set_title(f"{level} level")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (epoch mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _markdown(report: dict[str, Any], summary: pd.DataFrame) -> str:
    pre = report["pretraining"]
    le = report["label_efficiency"]
    counts = report["data"]["pretraining_counts"]
    lines = [
        "# medcl demo report",
        "",
        f"medcl {report['medcl_version']} on {report['machine']}; wall time "
        f"{report['wall_time_s']['total']:.0f} s (pretraining {report['wall_time_s']['pretraining']:.0f} s, "
        f"label efficiency {report['wall_time_s']['label_efficiency']:.0f} s).",
        "",
        "## Data",
        f"- {report['data']['dataset']}; task: {report['data']['task']}.",
        f"- {report['data']['split']}. Pretraining windows: "
        + ", ".join(f"{name} {c['patients']} patients / {c['samples']} windows" for name, c in counts.items())
        + ".",
        "- 12 leads at 100 Hz, 0.5-40 Hz band-pass, per-lead z-score over each record, 2 s windows every "
        "1 s.",
        "",
        "## Pretraining",
        f"- {pre['objective']}, level weights {pre['weights']}; encoder {pre['encoder']}; "
        f"{pre['epochs']} epoch(s).",
        "- Final training loss per level: "
        + ", ".join(f"{k} {v:.3f}" for k, v in pre["final_train_loss"].items())
        + ".",
    ]
    if pre["val_online_probe_auroc_per_epoch"]:
        lines.append(
            f"- Online linear probe (NORM vs MI, validation patients) after the last epoch: AUROC "
            f"{pre['val_online_probe_auroc_per_epoch'][-1]:.3f}."
        )
    lines += [
        "",
        "![pretraining loss per level](pretraining_loss.png)",
        "",
        "## Label efficiency (test patients)",
        "",
        f"Seeds {le['seeds']} (training patients drawn by patient, stratified, nested across fractions); "
        "mean ± sample std over seeds. Epochs of the neural arms: "
        f"{le['finetune_epochs']['<=10%']} at ≤ 10 % of the labels, {le['finetune_epochs']['>10%']} above; "
        "the model after the last epoch is scored.",
        "",
        "| labels | arm | train patients / windows | test AUROC | AUPRC | macro-F1 | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        lines.append(
            f"| {row['fraction']:.0%} | {ARM_LABELS[row['arm']]} | "
            f"{row['train_patients']} / {row['train_samples']} | "
            f"{_fmt(row['auroc_mean'], row['auroc_std'])} | {_fmt(row['auprc_mean'], row['auprc_std'])} | "
            f"{_fmt(row['f1_macro_mean'], row['f1_macro_std'])} | "
            f"{_fmt(row['accuracy_mean'], row['accuracy_std'])} |"
        )
    test = summary.iloc[0]
    lines += [
        "",
        f"Test split: {test['test_patients']} patients, {test['test_samples']} windows. With so few test "
        "patients (and a handful of training patients at 1-10 %), differences of a few AUROC points are "
        "within the noise; the larger benchmark is in docs/benchmarks.md.",
        "",
        "![label efficiency](label_efficiency.png)",
        "",
        "## Export and torch-free prediction",
        f"The fine-tuned classifier ({report['export']['label_fraction']:.0%} of the labels) was exported to "
        f"`{Path(report['export']['model']).name}` (ONNX, opset {report['export']['parity']['opset']}, "
        "preprocessing and label names in its metadata). Parity with torch: max abs error "
        f"{report['export']['parity_max_abs_error']:.2g} (tolerance rtol "
        f"{report['export']['parity']['rtol']:g}, atol {report['export']['parity']['atol']:g}). The "
        f"torch-free predictor on {report['export']['records']} raw test records (read and preprocessed in "
        "numpy) gave "
        f"window probabilities within {report['export']['max_abs_difference']:.2g} of the torch model's on "
        "the training pipeline's windows. Try it:",
        "",
        f"    {report['export']['predict_command']}",
        "",
        "## Embeddings",
        f"{report['embedding_map']['method']} of {report['embedding_map']['windows']} test windows "
        f"({report['embedding_map']['patients']} patients), coloured by class (left) and by patient (right).",
        "",
        "![embeddings](embeddings.png)",
        "",
    ]
    return "\n".join(lines)
