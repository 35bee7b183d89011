"""The ``medcl`` command line.

``medcl pretrain``  LightningCLI front end of :class:`~medcl.training.PretrainModule` and
                    :class:`~medcl.data.PretrainDataModule` (``fit`` by default; ``validate``/``test``).
``medcl finetune``  LightningCLI front end of ``tasks.ClassificationModule`` on
                    ``tasks.ClassificationDataModule``, or of ``tasks.segmentation.SegmentationModule``
                    on ``tasks.segmentation_data.SegmentationDataModule`` (``fit`` then ``test``).
``medcl index``     build, validate and save a manifest; bad files go to ``quarantine.csv``.
``medcl export``    ONNX export of a classification checkpoint, with parity check (needs torch).
``medcl predict``   probabilities of raw files from an exported model (imports no torch).
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
  export     a fine-tuned classifier to ONNX (preprocessing + labels inside, parity checked)
             medcl export --ckpt RUN/checkpoints/last.ckpt --out model.onnx
  predict    class probabilities of raw files with an exported model (no torch needed)
             medcl predict --model model.onnx RECORD.hea [...] [--out predictions.csv]
  demo       the main job on the bundled real ECG: pretrain, label efficiency, export, report (~6 min)
             medcl demo --out demo

`medcl <command> --help` shows a command's options.
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
}


# --------------------------------------------------------------------------------------------------
def _run_lightning_cli(command: str, cli_class: type, argv: Sequence[str]) -> Any:
    """Run a LightningCLI subclass as ``medcl <command> [fit|validate|test] ...`` (``fit`` by default)."""
    args = list(argv)
    if not args or args[0] not in (*LIGHTNING_SUBCOMMANDS, "-h", "--help"):
        args = ["fit", *args]
    # LightningCLI reads sys.argv (and names itself after argv[0] in its usage lines).
    saved = sys.argv
    sys.argv = [f"medcl {command}", *args]
    try:
        return cli_class()
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
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best" if _has_best(cli) else None)
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
        "participants (ppg/wearable: 60 s segments checked for NaN, flat, clipping, motion); or auto "
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
        "study_id, image[, mask]",
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
        builder_kwargs["table"] = args.table
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() or done == total:
            print(
                f"\rchecked {done}/{total} files",
                end="\n" if done == total else "",
                file=sys.stderr,
                flush=True,
            )

    if args.modality == "volume":
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
    """``medcl export --ckpt CKPT --out model.onnx [--opset 17] [--rtol 1e-4] [--atol 1e-5]``."""
    parser = argparse.ArgumentParser(
        prog="medcl export",
        description="Export a classification checkpoint to ONNX with the preprocessing spec, label names and "
        "a torch-vs-onnxruntime parity report in its metadata. Fails (and writes nothing) above tolerance.",
    )
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint of medcl finetune / tasks.ClassificationModule"
    )
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args(list(argv))
    from export.onnx import export_classifier

    metadata = export_classifier(args.ckpt, args.out, opset=args.opset, rtol=args.rtol, atol=args.atol)
    parity = metadata["parity"]
    real = parity["real"]
    real_text = (
        f"real windows ({real['n_inputs']}): max abs error {real['max_abs_error']:.2g}"
        if real.get("passed") is not None
        else f"real windows: skipped ({real['skipped']})"
    )
    print(
        f"wrote {args.out}: {metadata['task']} over {', '.join(metadata['class_names'])}; parity vs torch: "
        f"random ({parity['random']['n_inputs']}): max abs error {parity['random']['max_abs_error']:.2g}, "
        f"{real_text} (rtol {args.rtol:g}, atol {args.atol:g})"
    )
    return 0


def run_predict(argv: Sequence[str]) -> int:
    """``medcl predict --model model.onnx INPUT... [--out FILE.csv|FILE.json] [--per-window] [--fs HZ]``."""
    parser = argparse.ArgumentParser(
        prog="medcl predict",
        description="Class probabilities of raw recordings (WFDB, EDF/BDF, CSV) from a model written by "
        "medcl export, with the model's own preprocessing. Runs on onnxruntime + numpy; no torch needed.",
    )
    parser.add_argument("--model", required=True, help="the .onnx model")
    parser.add_argument("inputs", nargs="+", help="recordings (e.g. 00001_lr.hea, rec.edf, rec.csv)")
    parser.add_argument("--out", default=None, help="write CSV or JSON (by suffix) instead of printing CSV")
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
    """``medcl demo --out DIR [--quick] [--seeds 0 1 2] [--pretrain-epochs 10]``."""
    from medcl.demo import DemoSettings
    from medcl.demo import run_demo as demo

    parser = argparse.ArgumentParser(
        prog="medcl demo",
        description="Pretrain on the bundled real ECG (PTB-XL subset) with hierarchical contrast, compare "
        "pretrained and from-scratch NORM vs MI classifiers at 1/10/100 %% of the labels, and write "
        "report.md, report.json and plots to OUT.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke-test sized run (about a minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the label fractions")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs (default 10)")
    args = parser.parse_args(list(argv))
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
