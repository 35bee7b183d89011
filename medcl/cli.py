"""The ``medcl`` command line.

``medcl pretrain``  LightningCLI front end of :class:`~medcl.training.PretrainModule` and
                    :class:`~medcl.data.PretrainDataModule` (``fit`` by default; ``validate``/``test``).
``medcl finetune``  LightningCLI front end of ``tasks.ClassificationModule`` on
                    ``tasks.ClassificationDataModule``, or of ``tasks.segmentation.SegmentationModule``
                    on ``tasks.segmentation_data.SegmentationDataModule`` (``fit`` then ``test``).
``medcl index``     build, validate and save a manifest; bad files go to ``quarantine.csv``.
``medcl export``    ONNX export of a classification or segmentation checkpoint, with parity checks
                    (needs torch).
``medcl predict``   probabilities of raw files, or masks of volumes, from an exported model (imports no
                    torch).
``medcl demo``      pretraining, label-efficiency study, export and report on the bundled real ECG.

Errors that bad data or settings cause (:class:`~medcl.errors.MedclError`) are printed as one line
naming the file and the problem, with exit status 2 — never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from medcl.errors import MedclError

__all__ = ["main"]

USAGE = """usage: medcl <command> [options]

commands:
  pretrain   contrastive pretraining (LightningCLI)
             medcl pretrain --config configs/pretrain/simclr_ecg.yaml
  finetune   classification or segmentation heads on a pretrained encoder (LightningCLI; fit, then test)
             medcl finetune --config configs/finetune/ptbxl_norm_mi.yaml --model.encoder_ckpt RUN/last.ckpt
             medcl finetune --config configs/finetune/hippocampus_seg.yaml --model.encoder_ckpt RUN/last.ckpt
  index      index and validate a dataset
             medcl index ROOT --modality ecg --out DIR
  export     a fine-tuned classifier or segmentation model to ONNX (preprocessing + labels inside, parity
             checked)
             medcl export --ckpt RUN/checkpoints/last.ckpt --out model.onnx
  predict    class probabilities of raw files, or masks of volumes, with an exported model (no torch needed)
             medcl predict --model model.onnx RECORD.hea [...] [--out predictions.csv]
             medcl predict --model seg.onnx VOLUME.nii.gz [...] --out MASK_DIR
             medcl predict --model cxr.onnx XRAY.jpg XRAY.dcm [...]   (PNG/JPEG/DICOM radiographs)
  demo       the main job on the bundled real ECG: pretrain, label efficiency, export, report (~6 min)
             medcl demo --out demo

`medcl <command> --help` shows a command's options. pretrain/finetune configs may name only medcl's
classes and a short allow-list (Lightning callbacks, strategies, CSV/TensorBoard loggers); trust more
code explicitly with --allow_class_path PREFIX.
"""

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")

#: modality name → (module, indexing function); the module also has ``save_index(result, out_dir)``.
INDEXERS: dict[str, tuple[str, str]] = {
    "ecg": ("modalities.signals.indexing", "index_signals"),
    "eeg": ("modalities.signals.indexing", "index_signals"),
    "signal": ("modalities.signals.indexing", "index_signals"),
    "volume": ("modalities.volumes.indexing", "index_volumes"),
    "ppg": ("modalities.wearables.indexing", "index_wearables"),
    "wearable": ("modalities.wearables.indexing", "index_wearables"),
    "xray": ("modalities.xray.indexing", "index_xrays"),
}


# --------------------------------------------------------------------------------------------------
def _run_lightning_cli(command: str, cli_class: type, argv: Sequence[str]) -> Any:
    """Run a LightningCLI subclass as ``medcl <command> [fit|validate|test] ...`` (``fit`` by default)."""
    args = list(argv)
    if not args or args[0] not in (*LIGHTNING_SUBCOMMANDS, "-h", "--help"):
        args = ["fit", *args]
    # Lightning's DDP launcher starts the other local ranks by re-running `sys.executable sys.argv`
    # (or `-m <__main__ module> sys.argv[1:]`): sys.argv must be the command line that got here.
    saved = sys.argv
    sys.argv = [saved[0] if saved else "medcl", command, *args]
    try:
        return cli_class(args=args, parser_kwargs={"prog": f"medcl {command}"})
    finally:
        sys.argv = saved


def run_pretrain(argv: Sequence[str]) -> int:
    """``medcl pretrain [fit|validate|test] --config FILE [--section.key value ...]``."""
    from medcl.training.cli import PretrainCLI

    _run_lightning_cli("pretrain", PretrainCLI, argv)
    return 0


def run_finetune(argv: Sequence[str]) -> int:
    """``medcl finetune [fit|validate|test] --config FILE --model.encoder_ckpt PATH``.

    Classification configs (a plain ``model:`` section) run ``tasks.ClassificationModule``; segmentation
    configs (``model: {class_path: tasks.segmentation.SegmentationModule, ...}``) run the segmentation
    module on volumes (``tasks.cli.finetune_cli_class`` decides). After ``fit`` (the default), the model
    is also tested on the test split; the scores go to ``<run>/test_metrics.json``.
    """
    from tasks.cli import finetune_cli_class

    cli = _run_lightning_cli("finetune", finetune_cli_class(argv), argv)
    if cli is not None and cli.subcommand == "fit" and cli.datamodule.test_dataloader():
        cli.trainer.test(
            cli.model,
            datamodule=cli.datamodule,
            ckpt_path="best" if _has_best(cli) else None,
            weights_only=True,
        )
    return 0


def _has_best(cli: Any) -> bool:
    callback = getattr(cli.trainer, "checkpoint_callback", None)
    return bool(callback is not None and getattr(callback, "best_model_path", ""))


# --------------------------------------------------------------------------------------------------
def _index_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medcl index",
        description="Build and validate a manifest. Every file is read and checked; files that cannot be "
        "used are listed with the reason in OUT/quarantine.csv. Never stops at the first bad file.",
    )
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--modality", required=True, choices=sorted(INDEXERS), help="what the files hold")
    parser.add_argument("--out", required=True, help="folder for trials.csv, quarantine.csv and index.json")
    parser.add_argument(
        "--dataset",
        default="auto",
        help="layout: ptbxl, mitdb, eegmat, folder (signals); msd, btcv, csv, paired (volumes); bidmc, "
        "participants (ppg/wearable: 60 s segments checked for NaN, flat, clipping, motion); covid_cxr, "
        "mimic_cxr, chexpert, nih (xray: every image decoded and checked); or auto "
        "(detected from the files; default)",
    )
    parser.add_argument("--channels", nargs="+", default=None, help="channels every recording must have")
    parser.add_argument(
        "--max-nan-fraction", type=float, default=0.0, help="tolerated NaN fraction per channel"
    )
    parser.add_argument("--allow-flat", action="store_true", help="keep recordings with flat channels")
    parser.add_argument(
        "--table",
        default=None,
        help="folder layout: CSV with path, patient_id[, label]; volume csv layout: CSV with patient_id, "
        "study_id, image[, mask]; xray chexpert/nih: the label table (train.csv, valid.csv, "
        "Data_Entry_2017.csv)",
    )
    return parser


def run_index(argv: Sequence[str]) -> int:
    """``medcl index ROOT --modality ecg --out DIR``: writes the manifest and quarantine.csv."""
    args = _index_parser().parse_args(list(argv))
    module_name, function_name = INDEXERS[args.modality]
    module = importlib.import_module(module_name)
    index, save = getattr(module, function_name), module.save_index
    builder_kwargs: dict[str, Any] = {}
    if args.table is not None:
        builder_kwargs["csv" if args.modality == "xray" else "table"] = args.table
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() or done == total:
            print(
                f"\rchecked {done}/{total} files",
                end="\n" if done == total else "",
                file=sys.stderr,
                flush=True,
            )

    if args.modality in ("volume", "xray"):
        if args.channels is not None or args.max_nan_fraction or args.allow_flat:
            _index_parser().error("--channels, --max-nan-fraction and --allow-flat are signal options")
        result = index(args.dataset, args.root, progress=progress, **builder_kwargs)
    else:
        result = index(
            args.dataset,
            args.root,
            channels=args.channels,
            max_nan_fraction=args.max_nan_fraction,
            allow_flat=args.allow_flat,
            progress=progress,
            **builder_kwargs,
        )
    save(result, args.out)
    print(f"{result.summary()} [{time.monotonic() - started:.1f} s; written to {args.out}]")
    return 0


# --------------------------------------------------------------------------------------------------
def run_export(argv: Sequence[str]) -> int:
    """``medcl export --ckpt CKPT --out model.onnx [--opset 17] [--rtol 1e-4] [--atol 1e-5]
    [--volume-atol 1e-4] [--roi H W D]``: a classifier, or a segmentation model when the checkpoint's
    ``medcl.task`` is ``"segmentation"`` (:func:`export.segmentation.export_segmentation`)."""
    parser = argparse.ArgumentParser(
        prog="medcl export",
        description="Export a classification or segmentation checkpoint to ONNX with the preprocessing spec, "
        "label names and a torch-vs-onnxruntime parity report in its metadata. Fails (and writes nothing) "
        "above tolerance. Segmentation models are also checked on whole volumes: the torch-free "
        "predictor's sliding windows vs the torch model's.",
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint of medcl finetune (tasks.ClassificationModule or tasks.segmentation."
        "SegmentationModule)",
    )
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument(
        "--atol",
        type=float,
        default=None,
        help="absolute parity tolerance (default 1e-5 for classifiers, 1e-4 for segmentation models)",
    )
    parser.add_argument(
        "--volume-atol",
        type=float,
        default=1e-4,
        help="segmentation: largest tolerated whole-volume probability difference (predictor vs torch)",
    )
    parser.add_argument(
        "--roi",
        type=int,
        nargs=3,
        default=None,
        metavar=("H", "W", "D"),
        help="segmentation: the model's window (default: the checkpoint's ROI)",
    )
    args = parser.parse_args(list(argv))
    from medcl.checkpoints import load_checkpoint

    if (load_checkpoint(args.ckpt).get("medcl") or {}).get("task") == "segmentation":
        args.atol = 1e-4 if args.atol is None else args.atol
        return _export_segmentation(args)
    args.atol = 1e-5 if args.atol is None else args.atol
    if args.roi is not None:
        parser.error("--roi is a segmentation option")
    from export.onnx import export_classifier

    metadata = export_classifier(args.ckpt, args.out, opset=args.opset, rtol=args.rtol, atol=args.atol)
    parity = metadata["parity"]
    real = parity["real"]
    kind = "images" if metadata["input"].get("layout") == "(B, C, H, W)" else "windows"
    real_text = (
        f"real {kind} ({real['n_inputs']}): max abs error {real['max_abs_error']:.2g}"
        if real.get("passed") is not None
        else f"real {kind}: skipped ({real['skipped']})"
    )
    print(
        f"wrote {args.out}: {metadata['task']} over {', '.join(metadata['class_names'])}; parity vs torch: "
        f"random ({parity['random']['n_inputs']}): max abs error {parity['random']['max_abs_error']:.2g}, "
        f"{real_text} (rtol {args.rtol:g}, atol {args.atol:g})"
    )
    return 0


def _export_segmentation(args: argparse.Namespace) -> int:
    from export.segmentation import export_segmentation

    metadata = export_segmentation(
        args.ckpt,
        args.out,
        roi_size=args.roi,
        opset=args.opset,
        rtol=args.rtol,
        atol=args.atol,
        volume_atol=args.volume_atol,
    )
    parity = metadata["parity"]
    real, volume = parity["real"], parity["volume"]
    real_text = (
        f"real crops ({real['n_inputs']}): max abs error {real['max_abs_error']:.2g}"
        if real.get("passed") is not None
        else f"real crops: skipped ({real['skipped']})"
    )
    volume_text = (
        f"whole {volume['source']} volumes ({volume['n_volumes']}): max probability difference "
        f"{volume['max_abs_error']:.2g}"
        if volume.get("passed") is not None
        else f"whole volumes: skipped ({volume['skipped']})"
    )
    roi = "×".join(map(str, metadata["segmentation"]["roi_size"]))
    print(
        f"wrote {args.out}: segmentation over {', '.join(metadata['class_names'])} (ROI {roi}); parity vs "
        f"torch: random ({parity['random']['n_inputs']}): max abs error "
        f"{parity['random']['max_abs_error']:.2g}, {real_text} (rtol {args.rtol:g}, atol {args.atol:g}), "
        f"{volume_text} (atol {args.volume_atol:g})"
    )
    return 0


def run_predict(argv: Sequence[str]) -> int:
    """``medcl predict --model model.onnx INPUT... [--out FILE.csv|FILE.json] [--per-window] [--fs HZ]``;
    for an X-ray classifier the inputs are PNG/JPEG/DICOM radiographs (``.png``, ``.jpg``, ``.jpeg``,
    ``.dcm`` or DICOM files without a suffix: the format is found from the content), one row each;
    for a segmentation model ``medcl predict --model seg.onnx VOLUME... --out DIR`` (one
    ``DIR/<name>_mask.nii.gz`` per volume, on the volume's grid)."""
    parser = argparse.ArgumentParser(
        prog="medcl predict",
        description="Class probabilities of raw recordings (WFDB, EDF/BDF, CSV) or of radiographs (PNG, "
        "JPEG, DICOM with or without .dcm), or label masks of volumes "
        "(NIfTI, NRRD, DICOM series folders), from a model written by medcl export, with the model's own "
        "preprocessing. Runs on onnxruntime + numpy; no torch needed.",
    )
    parser.add_argument("--model", required=True, help="the .onnx model")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="recordings (e.g. 00001_lr.hea, rec.edf, rec.csv), radiographs for an X-ray model (img.png, "
        "img.jpg, img.dcm, a DICOM file without suffix), or volumes for a segmentation model",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="write CSV or JSON (by suffix) instead of printing CSV; segmentation models: the folder for "
        "the masks (required)",
    )
    parser.add_argument("--per-window", action="store_true", help="one row per window instead of per file")
    parser.add_argument(
        "--fs", type=float, default=None, help="sampling rate of CSV files without a time column"
    )
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="a bad file stops (default) or is reported",
    )
    args = parser.parse_args(list(argv))
    from export.predictor import OnnxPredictor

    predictor = OnnxPredictor(args.model)
    if predictor.task == "segmentation":
        return _predict_masks(predictor, args)
    if predictor.kind == "image" and (args.per_window or args.fs is not None):
        from medcl.errors import ConfigError

        raise ConfigError("--per-window and --fs are options of signal models; this model classifies images")
    rows: list[dict[str, Any]] = []
    failed = 0
    for path in args.inputs:
        try:
            rows.extend(predictor.rows(predictor.predict_file(path, fs=args.fs), per_window=args.per_window))
        except MedclError as error:
            if args.on_error == "raise":
                raise
            failed += 1
            print(f"medcl predict: skipped {error}", file=sys.stderr)
    _write_rows(rows, args.out)
    if failed:
        print(f"medcl predict: {failed} of {len(args.inputs)} file(s) skipped", file=sys.stderr)
    return 0


def _predict_masks(predictor: Any, args: argparse.Namespace) -> int:
    """Write one ``<name>_mask.nii.gz`` per input volume into ``--out`` and print, per input, where its
    mask went and the voxels of each label (what :func:`export.predictor.predict_volumes` writes)."""
    from pathlib import Path

    import numpy as np

    from export.predictor import mask_path_for, save_mask
    from medcl.errors import ConfigError

    if args.per_window or args.fs is not None:
        raise ConfigError("--per-window and --fs are options of signal models; this is a segmentation model")
    if args.out is None:
        raise ConfigError(
            f"{args.model} is a segmentation model: give --out DIR, the folder for one mask per volume"
        )
    out_dir = Path(args.out)
    if out_dir.suffix.lower() in (".csv", ".json") or out_dir.is_file():
        raise ConfigError(
            f"--out {out_dir} must be a folder for the masks (a segmentation model writes one "
            "<name>_mask.nii.gz per volume), not a table"
        )
    targets = [mask_path_for(path, out_dir) for path in args.inputs]
    seen: dict[Path, str] = {}
    for path, target in zip(args.inputs, targets, strict=True):
        if target in seen:
            raise ConfigError(
                f"{seen[target]} and {path} would both be written to {target}; rename one or run them "
                "separately"
            )
        seen[target] = path
    failed = 0
    for path, target in zip(args.inputs, targets, strict=True):
        try:
            prediction = predictor.predict_volume(path)
            save_mask(prediction.labels, prediction.affine, target, reference=path)
        except MedclError as error:
            if args.on_error == "raise":
                raise
            failed += 1
            print(f"medcl predict: skipped {error}", file=sys.stderr)
            continue
        counts = np.bincount(prediction.labels.ravel(), minlength=len(predictor.class_names))
        shape = "×".join(map(str, prediction.labels.shape))
        voxels = ", ".join(f"{name} {int(n)}" for name, n in zip(predictor.class_names, counts, strict=False))
        print(f"{path} -> {target} ({shape} voxels: {voxels})")
    if failed:
        print(f"medcl predict: {failed} of {len(args.inputs)} volume(s) skipped", file=sys.stderr)
    return 0


def _write_rows(rows: list[dict[str, Any]], out: str | None) -> None:
    import csv
    import json

    if out is not None and out.endswith(".json"):
        with open(out, "w") as handle:
            json.dump(rows, handle, indent=2)
        return
    columns = list(rows[0]) if rows else ["file"]
    if out is None:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
def run_demo(argv: Sequence[str]) -> int:
    """``medcl demo --out DIR [--modality ecg|volume] [--quick] [--seeds 0 1 2] [--pretrain-epochs N]``."""
    parser = argparse.ArgumentParser(
        prog="medcl demo",
        description="The main job on bundled real data. ecg (default): pretrain on the PTB-XL subset with "
        "hierarchical contrast, compare pretrained and from-scratch NORM vs MI classifiers at 1/10/100 %% of "
        "the labels. volume: pretrain on the MSD hippocampus MRI subset with volume contrast (VoCo), compare "
        "pretrained and from-scratch segmentation at 25/100 %% of the labelled patients. Both export the "
        "fine-tuned model to ONNX, check the torch-free predictor, and write report.md, report.json and "
        "plots to OUT.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--modality", choices=("ecg", "volume"), default="ecg", help="which track (default ecg)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke-test sized run (about a minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the label fractions")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs")
    args = parser.parse_args(list(argv))
    if args.modality == "volume":
        from medcl.demo_volume import VolumeDemoSettings, run_volume_demo

        volume_settings = VolumeDemoSettings.quick() if args.quick else VolumeDemoSettings()
        if args.seeds is not None:
            volume_settings.seeds = tuple(args.seeds)
        if args.pretrain_epochs is not None:
            volume_settings.pretrain_epochs = args.pretrain_epochs
        run_volume_demo(args.out, volume_settings)
        return 0
    from medcl.demo import DemoSettings
    from medcl.demo import run_demo as demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.seeds is not None:
        settings.seeds = tuple(args.seeds)
    if args.pretrain_epochs is not None:
        settings.pretrain_epochs = args.pretrain_epochs
    demo(args.out, settings)
    return 0


# --------------------------------------------------------------------------------------------------
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "pretrain": run_pretrain,
    "finetune": run_finetune,
    "index": run_index,
    "export": run_export,
    "predict": run_predict,
    "demo": run_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medcl`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args[0] == "--version":
        from medcl import __version__

        print(f"medcl {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"medcl: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return command(args[1:])
    except MedclError as error:
        print(f"medcl {args[0]}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
