"""``medcl demo --modality volume``: the volume track end to end on the real MRI that ships with medcl.

1. **Pretrain** a MONAI BasicUNet backbone with volume contrast (VoCo: base-crop grid, overlap
   prediction, EMA teacher) on the training patients of the bundled MSD hippocampus subset (40 MRI
   crops, 1 mm).
2. **Segmentation efficiency**: anterior/posterior hippocampus segmentation (Dice + CE, sliding-window
   inference) at two label fractions of the training patients (drawn by patient, several seeds), the
   pretrained backbone fine-tuned vs the same architecture from scratch, Dice on the test patients.
3. **Export**: the fine-tuned model (all labels, first seed) to ``model.onnx`` (fixed ROI, dynamic
   batch, preprocessing embedded, parity-checked); the torch-free predictor segments raw test volumes
   (numpy sliding window) into NIfTI masks with the inputs' affines, compared with the torch model.
4. **Report**: ``report.md``, ``report.json`` and PNG plots (Dice per fraction and arm, pretraining loss,
   a test slice with its reference and predicted masks).

Like :mod:`medcl.demo` (the ECG track), this is an application of the library and imports a concrete
modality.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import medcl
from medcl.demo import _cpu_count, _fmt, _json_default, _say, _torch_version, _write_file_list

__all__ = ["VolumeDemoSettings", "run_volume_demo"]

LABELS = ("background", "anterior", "posterior")
ARM_LABELS = {"finetune": "pretrained (VoCo), fine-tuned", "scratch": "from scratch"}


@dataclass
class VolumeDemoSettings:
    """What the volume demo runs (defaults: the full demo, a few minutes on 2 CPU cores)."""

    pretrain_epochs: int = 15
    fractions: Sequence[float] = (0.25, 1.0)
    seeds: Sequence[int] = (0, 1)
    # Epochs per run: more at the small fraction, whose epochs are short (6 volumes: 2 steps each).
    finetune_epochs_small: int = 80  # fractions <= 25 %
    finetune_epochs_large: int = 24
    features: Sequence[int] = (8, 8, 16, 32, 64, 8)
    roi: Sequence[int] = (32, 48, 32)
    voco: dict[str, Any] = field(
        default_factory=lambda: {"n_bases_per_side": 2, "crop_size": 32, "n_random_crops": 4}
    )
    batch_size: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> VolumeDemoSettings:
        """A smoke-test sized run: the same pipeline, far fewer epochs and one seed."""
        return cls(
            pretrain_epochs=1,
            seeds=(0,),
            finetune_epochs_small=1,
            finetune_epochs_large=1,
            features=(4, 4, 8, 8, 16, 4),
        )


def run_volume_demo(
    out: str | Path, settings: VolumeDemoSettings | None = None, progress: Callable[[str], None] = _say
) -> dict:
    """Run the volume demo into ``out`` (created); returns the content of ``report.json``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from medcl.data import PretrainDataModule, SplitConfig
    from medcl.objectives import VoCo
    from medcl.training import PretrainModule
    from modalities.volumes import UNetBackbone, VolumeAdapter
    from tasks.segmentation import run_segmentation_efficiency

    settings = settings or VolumeDemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    seconds: dict[str, float] = {}

    adapter = VolumeAdapter(
        root="bundled:msd_hippocampus",
        image_modality="MR",
        spacing=(1.0, 1.0, 1.0),
        roi=tuple(settings.roi),
        labelled_only=True,
    )
    split = SplitConfig(method="random", val_fraction=0.2, test_fraction=0.2, seed=settings.seed)

    # 1. pretraining ------------------------------------------------------------------------------
    progress(
        f"[1/4] pretraining: volume contrast (VoCo), {settings.pretrain_epochs} epoch(s) on the bundled MRI"
    )
    L.seed_everything(settings.seed, verbose=False)
    data = PretrainDataModule(
        adapter, batch_size=settings.batch_size, samples_per_trial=1, trials_per_patient=1, split=split
    )
    # The hippocampus crops (about 35 x 51 x 35) are resized to VoCo's (n·r, n·r, r) region.
    objective = VoCo(**settings.voco, volume_fit="resize")
    model = PretrainModule(
        UNetBackbone(features=tuple(settings.features)), objective, lr=1e-3, warmup_epochs=1
    )
    trainer = L.Trainer(
        max_epochs=settings.pretrain_epochs,
        accelerator="auto",
        devices=1,
        logger=CSVLogger(out, name="pretrain", version=""),
        callbacks=[ModelCheckpoint(dirpath=out / "pretrain" / "checkpoints", save_last=True, save_top_k=0)],
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    encoder_ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    seconds["pretraining"] = time.monotonic() - started
    pretraining = _pretraining_summary(out / "pretrain" / "metrics.csv")
    progress(f"      done in {seconds['pretraining']:.0f} s; checkpoint {encoder_ckpt}")

    # 2. segmentation efficiency ------------------------------------------------------------------
    progress(
        "[2/4] segmentation (anterior, posterior hippocampus): fractions "
        f"{', '.join(f'{f:.0%}' for f in settings.fractions)} x seeds {', '.join(map(str, settings.seeds))} "
        f"x arms {', '.join(ARM_LABELS)}"
    )
    step_started = time.monotonic()
    results = run_segmentation_efficiency(
        adapter,
        encoder_ckpt,
        split,
        label_names=LABELS,
        roi_size=settings.roi,
        fractions=settings.fractions,
        seeds=settings.seeds,
        arms=tuple(ARM_LABELS),
        epochs=lambda f: settings.finetune_epochs_small if f <= 0.25 else settings.finetune_epochs_large,
        batch_size=settings.batch_size,
        out_dir=out / "finetune",
        progress=lambda line: progress(f"      {line}"),
    )
    results.to_csv(out / "segmentation_efficiency.csv", index=False)
    seconds["segmentation"] = time.monotonic() - step_started

    # 3. export and torch-free prediction ---------------------------------------------------------
    progress("[3/4] export to ONNX and segmentation of raw test volumes without torch")
    step_started = time.monotonic()
    exported = _export_and_check(results, settings, out, adapter, split)
    seconds["export"] = time.monotonic() - step_started
    progress(
        f"      {exported['model']}: parity max abs error {exported['parity_max_abs_error']:.2g}; "
        f"predictor vs torch on {exported['volumes']} raw volumes: "
        f"{exported['voxel_agreement']:.4%} of voxels agree"
    )

    # 4. report -----------------------------------------------------------------------------------
    progress("[4/4] report")
    summary = _summarise(results)
    _plot_dice(summary, out / "segmentation_efficiency.png")
    _plot_pretraining(pretraining, out / "pretraining_loss.png")
    seconds["total"] = time.monotonic() - started
    report = {
        "medcl_version": medcl.__version__,
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, torch {_torch_version()}",
        "data": {
            "dataset": "MSD Task04 hippocampus, 40 MRI crops bundled with medcl (CC BY-SA 4.0)",
            "task": "segmentation: background, anterior, posterior hippocampus",
            "input": adapter.input_spec(),
            "split": "patients (one volume each) at random 60/20/20, seed 0",
            "pretraining_counts": data.counts(),
        },
        "pretraining": {
            "objective": "medcl.objectives.VoCo (base-crop overlap prediction + regulariser, EMA teacher)",
            "settings": {**settings.voco, "volume_fit": "resize"},
            "encoder": {"class": "modalities.volumes.UNetBackbone", "features": list(settings.features)},
            "epochs": settings.pretrain_epochs,
            **pretraining,
            "checkpoint": str(encoder_ckpt),
        },
        "segmentation": {
            "arms": ARM_LABELS,
            "fractions": list(settings.fractions),
            "seeds": list(settings.seeds),
            "epochs": {"<=25%": settings.finetune_epochs_small, ">25%": settings.finetune_epochs_large},
            "roi": list(settings.roi),
            "runs": results.drop(columns=["checkpoint"]).to_dict(orient="records"),
            "summary": summary.to_dict(orient="records"),
        },
        "export": exported,
        "wall_time_s": {k: round(v, 1) for k, v in seconds.items()},
        "plots": ["segmentation_efficiency.png", "pretraining_loss.png", "segmentation_example.png"],
        "model": "model.onnx",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(_markdown(report, summary))
    progress(f"done in {seconds['total']:.0f} s: {out / 'report.md'}")
    return report


# --------------------------------------------------------------------------------------------------
def _pretraining_summary(metrics_csv: Path) -> dict[str, Any]:
    """Per-epoch means of the VoCo terms from Lightning's ``metrics.csv``."""
    metrics = pd.read_csv(metrics_csv)
    columns = {
        "loss": "train/loss_epoch",
        "prediction": "train/voco_pred_epoch",
        "regulariser": "train/voco_reg_epoch",
    }
    per_epoch: dict[str, list[float]] = {}
    for name, column in columns.items():
        if column in metrics:
            per_epoch[name] = [float(v) for v in metrics.dropna(subset=[column])[column]]
    return {"loss_per_epoch": per_epoch}


def _summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std of Dice over seeds, per fraction and arm."""
    dice_columns = [c for c in results.columns if c.startswith("dice")]
    grouped = results.groupby(["fraction", "arm"], sort=True)
    summary = grouped[dice_columns].agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    counts = grouped[["train_patients", "test_patients"]].first()
    return summary.join(counts).reset_index()


def _export_and_check(
    results: pd.DataFrame, settings: VolumeDemoSettings, out: Path, adapter: Any, split: Any
) -> dict[str, Any]:
    """Export the fine-tuned model (largest fraction, first seed); segment raw test volumes with the
    torch-free predictor and compare with the torch model on the same preprocessed volumes."""
    import nibabel as nib
    import torch

    from export import export_segmentation
    from export.predictor import OnnxPredictor, predict_volumes
    from export.volume_preprocess import read_volume, to_input_grid
    from tasks.segmentation import load_segmentation_model
    from tasks.segmentation_data import SegmentationDataModule

    chosen = results[(results["arm"] == "finetune") & (results["seed"] == settings.seeds[0])]
    chosen = chosen.sort_values("fraction").iloc[-1]
    model_path = out / "model.onnx"
    metadata = export_segmentation(chosen["checkpoint"], model_path)
    data = SegmentationDataModule(adapter, label_names=list(LABELS), roi_size=list(settings.roi), split=split)
    data.setup("test")
    test = data.samples["test"]
    paths = list(dict.fromkeys(test["path"]))[:3]
    masks = predict_volumes(model_path, paths, out / "masks")

    # The torch model on the same raw volumes, through the same numpy preprocessing and inverse mapping.
    predictor = OnnxPredictor(model_path)
    model = load_segmentation_model(chosen["checkpoint"])
    agree = total = 0
    dice_vs_reference: list[float] = []
    for path, mask_path, (_, row) in zip(paths, masks, test.iloc[: len(paths)].iterrows(), strict=True):
        x, geometry = predictor.preprocess_volume(path)
        with torch.no_grad():
            logits = model.infer(torch.from_numpy(x[None]))[0].numpy()
        torch_labels = to_input_grid(np.argmax(logits, axis=0).astype(np.float32), geometry, mode="nearest")
        written = np.asarray(nib.load(mask_path).dataobj)
        agree += int((written == torch_labels).sum())
        total += written.size
        reference = np.asarray(read_volume(row["mask_path"]).array[0]) if row["mask_path"] else None
        if reference is not None:
            dice_vs_reference.append(_mean_dice(written, reference, len(LABELS)))
    _plot_example(paths[0], masks[0], test.iloc[0]["mask_path"], out / "segmentation_example.png")
    parity = metadata["parity"]
    return {
        "model": str(model_path),
        "from_checkpoint": str(chosen["checkpoint"]),
        "label_fraction": float(chosen["fraction"]),
        "parity_max_abs_error": max(
            float(block["max_abs_error"])
            for block in parity.values()
            if isinstance(block, dict) and "max_abs_error" in block
        ),
        "parity": parity,
        "volumes": len(paths),
        "volume_list": _write_file_list(
            out / "export_volumes.csv", {"path": paths, "mask": [str(m) for m in masks]}
        ),
        "voxel_agreement": agree / max(total, 1),
        "predictor_dice_vs_reference": dice_vs_reference,
        "predict_command": f"medcl predict --model {model_path} VOLUME.nii.gz [...] --out {out / 'masks'}",
    }


def _mean_dice(predicted: np.ndarray, reference: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the foreground classes present in ``reference``."""
    scores = []
    for label in range(1, n_classes):
        truth = reference == label
        if not truth.any():
            continue
        guess = predicted == label
        scores.append(2.0 * float((truth & guess).sum()) / float(truth.sum() + guess.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def _plot_dice(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, label in ARM_LABELS.items():
        rows = summary[summary["arm"] == arm].sort_values("fraction")
        ax.errorbar(
            rows["fraction"] * 100,
            rows["dice_mean"],
            yerr=rows["dice_std"].fillna(0),
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training patients with masks (%)")
    ax.set_ylabel("test Dice (mean of anterior, posterior)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_pretraining(pretraining: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in pretraining["loss_per_epoch"].items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("VoCo loss (train, epoch mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_example(image_path: str, mask_path: Path, reference_path: str, path: Path) -> None:
    """The middle axial slice of a test volume: image, reference mask, predicted mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
    predicted = np.asarray(nib.load(mask_path).dataobj)
    reference = np.asarray(nib.load(reference_path).dataobj) if reference_path else np.zeros_like(predicted)
    z = int(np.argmax((reference > 0).sum(axis=(0, 1)))) if reference.any() else image.shape[2] // 2
    fig, axes = plt.subplots(1, 3, figsize=(8, 3))
    for ax, (title, overlay) in zip(
        axes, [("MRI", None), ("reference", reference), ("medcl (ONNX)", predicted)], strict=True
    ):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
        if overlay is not None:
            ax.imshow(
                np.ma.masked_equal(overlay[:, :, z].T, 0),
                cmap="autumn",
                alpha=0.6,
                origin="lower",
                vmin=1,
                vmax=2,
            )
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(report: dict[str, Any], summary: pd.DataFrame) -> str:
    seg = report["segmentation"]
    lines = [
        "# medcl demo (volumes): VoCo pretraining, hippocampus segmentation, ONNX export",
        "",
        f"medcl {report['medcl_version']} on {report['machine']}; "
        f"wall time {report['wall_time_s']['total']:.0f} s.",
        "",
        "## Data",
        f"- {report['data']['dataset']}; {report['data']['task']}.",
        f"- Split: {report['data']['split']}.",
        "",
        "## Pretraining",
        f"- {report['pretraining']['objective']}, {report['pretraining']['epochs']} epoch(s), encoder "
        f"MONAI BasicUNet features {report['pretraining']['encoder']['features']}.",
        "- Loss per epoch: "
        + ", ".join(f"{v:.3f}" for v in report["pretraining"]["loss_per_epoch"].get("loss", [])),
        "",
        "## Segmentation: test Dice (mean over seeds ± sample std)",
        f"{seg['epochs']['<=25%']} epochs per run at 25 % of the labels, {seg['epochs']['>25%']} at 100 %; "
        f"ROI {seg['roi']}, "
        "sliding-window inference (overlap 0.25, Gaussian).",
        "",
        "| training patients | " + " | ".join(ARM_LABELS.values()) + " |",
        "|---|" + "---|" * len(ARM_LABELS),
    ]
    for fraction, rows in summary.groupby("fraction", sort=True):
        by_arm = {row["arm"]: row for _, row in rows.iterrows()}
        patients = int(rows["train_patients"].iloc[0])
        cells = [
            _fmt(by_arm[arm]["dice_mean"], by_arm[arm]["dice_std"]) if arm in by_arm else "-"
            for arm in ARM_LABELS
        ]
        lines.append(f"| {fraction:.0%} ({patients}) | " + " | ".join(cells) + " |")
    exported = report["export"]
    lines += [
        "",
        "![Dice](segmentation_efficiency.png) ![pretraining](pretraining_loss.png)",
        "",
        "## Export and torch-free prediction",
        f"- `{exported['model']}` (from {exported['from_checkpoint']}): parity max abs error "
        f"{exported['parity_max_abs_error']:.2g}.",
        f"- The ONNX predictor (numpy sliding window, no torch) on {exported['volumes']} raw test volumes: "
        f"{exported['voxel_agreement']:.4%} of voxels equal the torch model's labels; Dice against the "
        "reference masks " + ", ".join(f"{d:.3f}" for d in exported["predictor_dice_vs_reference"]) + ".",
        f"- Try it: `{exported['predict_command']}`",
        "",
        "![example](segmentation_example.png)",
        "",
    ]
    return "\n".join(lines)
