"""Peak memory and throughput of medcl's data path as the dataset grows 10×, against a plain reading loop.

The data path streams from the manifest: the sample table holds paths and ids, and a sample's file is
read when the sample is drawn. This benchmark checks that peak memory stays flat while the dataset
grows, and what medcl's loader costs per item next to a loop that only reads the files.

* **signals**: the bundled PTB-XL WFDB records (300 ECGs of 12 × 1000 samples at 100 Hz). A dataset of
  ``N`` records is made without new data: copy ``k`` of the 300 records is a folder of symbolic links
  (``c003/00001_lr.hea`` → the real file), so every trial has its own path (the adapter's trial cache,
  keyed by path, sees ``N`` distinct recordings), listed in a ``folder``-layout manifest table under
  distinct patient and trial ids. medcl: ``SignalAdapter(dataset="folder", table=...)`` (window 10 s,
  one sample per recording; views: 2 random 2.5-s crops with the ECG augmentations) and one epoch of
  :class:`~medcl.data.PretrainDataModule`'s training loader (``num_workers=0``). Plain loop:
  ``wfdb.rdrecord`` of each record, nothing else.
* **volumes**: the bundled MSD hippocampus MRIs (40 image/mask pairs), repeated under distinct patient
  and study ids in a ``csv``-layout table. medcl: ``VolumeAdapter(dataset="csv")`` (RAS, 1 mm spacing,
  z-score, 32³ ROI; ``cache_dir`` left at None, so MONAI's on-disk ``PersistentDataset`` cache is not
  used and every study is preprocessed when drawn) and one epoch of the PretrainDataModule training
  loader (2 random views per study). Plain loop: ``nibabel.load(...).get_fdata()`` of image and mask.

Every (modality, size, loader) runs in a fresh process, so its peak resident memory is its own:
``peak_rss_mib`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` (the whole process: imports, indexing, epoch);
``epoch_peak_rss_mib`` is the peak during the epoch alone (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs`` when setup ends). Items per second count the epoch only (files are in the OS
page cache for both loaders: indexing, and earlier runs, read them); ``setup_s`` (manifest + indexing,
which reads every file once) is reported apart. Results go to ``--out`` as JSON and a markdown table is
printed.

    OMP_NUM_THREADS=1 python benchmarks/loader_memory.py --out runs/loader_memory.json
    python benchmarks/loader_memory.py --signal-sizes 300 3000 --volume-sizes 40 400 --cache-trials 512 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KINDS = ("signals", "volumes")
DEFAULT_SIZES = {"signals": (300, 900, 3000), "volumes": (40, 120, 400)}
BATCH = {"signals": 32, "volumes": 8}


# --------------------------------------------------------------------------------------------------
# memory probes (Linux /proc; ru_maxrss is in KiB on Linux)
# --------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Current resident memory of this process in MiB (None where /proc is absent)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (``VmHWM``); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_since_reset_mib() -> float | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def process_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------
# datasets grown from the bundled files
# --------------------------------------------------------------------------------------------------


def build_signal_dataset(workdir: Path, size: int) -> Path:
    """A folder with ``size`` PTB-XL records (copies of the 300 bundled ones as symbolic links, one folder
    per copy) and ``manifest.csv`` (``path``, ``patient_id``, ``trial_id``): distinct paths and ids."""
    import pandas as pd

    from modalities.signals.manifests import ptbxl_manifest

    folder = workdir / f"signals_{size}"
    table = folder / "manifest.csv"
    if table.is_file():
        return folder
    base = ptbxl_manifest("bundled:ptbxl").trials[["path", "patient_id", "trial_id"]]
    rows: list[dict[str, str]] = []
    for copy in range(math.ceil(size / len(base))):
        sub = folder / f"c{copy:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for record in base.itertuples(index=False):
            if len(rows) == size:
                break
            real = Path(record.path)
            for suffix in (".hea", ".dat"):
                link = sub / (real.name + suffix)
                if not link.exists():
                    link.symlink_to(real.with_name(real.name + suffix))
            rows.append(
                {
                    "path": f"{sub.name}/{real.name}",
                    "patient_id": f"{record.patient_id}_c{copy}",
                    "trial_id": f"{record.trial_id}_c{copy}",
                }
            )
    pd.DataFrame(rows).to_csv(table, index=False)
    return folder


def build_volume_dataset(workdir: Path, size: int) -> Path:
    """A folder holding ``manifest.csv`` (``patient_id``, ``study_id``, ``image``, ``mask``): the 40 bundled
    hippocampus image/mask pairs repeated under distinct ids until ``size`` rows."""
    import pandas as pd

    from modalities.bundled import resolve_root

    folder = workdir / f"volumes_{size}"
    table = folder / "manifest.csv"
    if table.is_file():
        return folder
    root = resolve_root("bundled:msd_hippocampus").resolve()
    images = sorted((root / "imagesTr").glob("*.nii.gz"))
    rows: list[dict[str, str]] = []
    for i in range(size):
        image = images[i % len(images)]
        case = image.name[: -len(".nii.gz")]
        copy = i // len(images)
        rows.append(
            {
                "patient_id": f"{case}_c{copy}",
                "study_id": f"{case}_c{copy}",
                "image": str(image),
                "mask": str(root / "labelsTr" / image.name),
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(table, index=False)
    return folder


# --------------------------------------------------------------------------------------------------
# one measurement (runs in the child process)
# --------------------------------------------------------------------------------------------------


def _medcl_epoch(kind: str, folder: Path, cache_trials: int) -> dict[str, Any]:
    """One epoch of PretrainDataModule's training loader over the dataset in ``folder``."""
    from medcl.data import PretrainDataModule, SplitConfig

    if kind == "signals":
        from modalities.signals import SignalAdapter
        from modalities.signals.adapter import DATASET_CHANNELS

        adapter: Any = SignalAdapter(
            dataset="folder",
            root=str(folder),
            channels=DATASET_CHANNELS["ptbxl"],
            window_s=10.0,
            view_crop_s=2.5,
            labels=None,
            cache_trials=cache_trials,
            dataset_kwargs={"table": "manifest.csv"},
        )
    else:
        from modalities.volumes import VolumeAdapter

        adapter = VolumeAdapter(root=str(folder), dataset="csv", image_modality="MR", roi=(32, 32, 32))
    data = PretrainDataModule(
        adapter,
        batch_size=BATCH[kind],
        samples_per_trial=1,
        trials_per_patient=1,
        n_views=2,
        split=SplitConfig(method="random", val_fraction=0.0, test_fraction=0.0),
        num_workers=0,
    )
    start = time.perf_counter()
    data.setup("fit")
    setup_s = time.perf_counter() - start
    rss_after_setup = rss_mib()
    loader = data.train_dataloader()
    reset = reset_peak_rss()
    items = 0
    batches = 0
    start = time.perf_counter()
    for batch in loader:
        items += int(batch["views"].shape[0])
        batches += 1
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "items": items,
        "batches": batches,
        "train_samples": len(data.samples["train"]),
        "setup_s": setup_s,
        "seconds": seconds,
        "rss_after_setup_mib": rss_after_setup,
        "epoch_peak_rss_mib": peak_rss_since_reset_mib() if reset else None,
        "view_shape": list(batch["views"].shape[1:]),
    }
    if kind == "signals":
        out["cache_trials"] = cache_trials
        out["cache_entries"] = len(adapter._cache)
        out["cache_mib"] = sum(a.nbytes for a in adapter._cache.values()) / 2**20
    else:
        out["cache_dir"] = adapter.cache_dir
    return out


def _plain_epoch(kind: str, folder: Path) -> dict[str, Any]:
    """Read every file of the dataset once, in manifest order, and do nothing else."""
    import pandas as pd

    table = pd.read_csv(folder / "manifest.csv", dtype=str)
    if kind == "signals":
        import wfdb

        paths = [str(folder / p) for p in table["path"]]
        reset = reset_peak_rss()
        start = time.perf_counter()
        for path in paths:
            wfdb.rdrecord(path)
    else:
        import nibabel as nib

        pairs = list(zip(table["image"], table["mask"], strict=True))
        reset = reset_peak_rss()
        start = time.perf_counter()
        for image, mask in pairs:
            nib.load(image).get_fdata()
            nib.load(mask).get_fdata()
    seconds = time.perf_counter() - start
    return {
        "items": len(table),
        "seconds": seconds,
        "epoch_peak_rss_mib": peak_rss_since_reset_mib() if reset else None,
    }


def measure(kind: str, size: int, loader: str, workdir: Path, cache_trials: int = 512) -> dict[str, Any]:
    """One measurement in this process: ``loader`` ``"medcl"`` or ``"plain"`` over ``size`` items.

    Returns ``kind``, ``size``, ``loader``, ``items`` (items loaded in the epoch; medcl's training loader
    drops the last incomplete batch), ``seconds``, ``items_per_s``, ``peak_rss_mib`` (whole process),
    ``epoch_peak_rss_mib`` and the loader's own fields (see :func:`_medcl_epoch`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rss_start = rss_mib()
    build = build_signal_dataset if kind == "signals" else build_volume_dataset
    folder = build(workdir, size)
    if loader == "medcl":
        result = _medcl_epoch(kind, folder, cache_trials)
    elif loader == "plain":
        result = _plain_epoch(kind, folder)
    else:
        raise ValueError(f"loader must be 'medcl' or 'plain', got {loader!r}")
    return {
        "kind": kind,
        "size": size,
        "loader": loader,
        **result,
        "items_per_s": result["items"] / result["seconds"],
        "rss_start_mib": rss_start,
        "peak_rss_mib": process_peak_rss_mib(),
    }


def measure_in_subprocess(
    kind: str, size: int, loader: str, workdir: Path, cache_trials: int = 512
) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (its peak memory is its own)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        str(size),
        loader,
        "--workdir",
        str(workdir),
        "--cache-trials-child",
        str(cache_trials),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------------


def run_benchmark(
    sizes: dict[str, Sequence[int]],
    workdir: Path,
    cache_trials: Sequence[int] = (512,),
    subprocesses: bool = True,
) -> dict[str, Any]:
    """Measure every (kind, size): medcl's loader (for signals once per ``cache_trials`` value) and the
    plain loop; each in a fresh process unless ``subprocesses`` is False (for tests)."""
    run = measure_in_subprocess if subprocesses else measure
    results: list[dict[str, Any]] = []
    for kind, kind_sizes in sizes.items():
        for size in kind_sizes:
            for cache in cache_trials if kind == "signals" else (512,):
                results.append(run(kind, size, "medcl", workdir, cache))
                print(_progress(results[-1]), file=sys.stderr, flush=True)
            results.append(run(kind, size, "plain", workdir))
            print(_progress(results[-1]), file=sys.stderr, flush=True)
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "results": results,
    }


def _progress(r: dict[str, Any]) -> str:
    return (
        f"{r['kind']} n={r['size']} {r['loader']}: {r['items']} items in {r['seconds']:.1f} s, "
        f"peak {r['peak_rss_mib']:.0f} MiB"
    )


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(report: dict[str, Any]) -> str:
    """One row per (kind, size, medcl setting): peak memory of both loaders, items/s and their ratio."""
    results = report["results"]
    plain = {(r["kind"], r["size"]): r for r in results if r["loader"] == "plain"}
    lines = [
        "| data | size | medcl peak RSS MiB (epoch peak) | medcl items/s | plain loop peak RSS MiB "
        "(epoch peak) | plain items/s | medcl / plain | medcl setup s | trial cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r["loader"] != "medcl":
            continue
        p = plain[(r["kind"], r["size"])]
        unit = "records" if r["kind"] == "signals" else "volumes"
        if r["kind"] == "signals":
            held = f"{r['cache_entries']} trials, {r['cache_mib']:.1f} MiB"
            cache = f"{held} (cache_trials={r['cache_trials']})"
        else:
            cache = f"none in memory; cache_dir={r['cache_dir']}"
        lines.append(
            f"| {r['kind']} ({unit}) | {r['size']} "
            f"| {r['peak_rss_mib']:.0f} ({_fmt(r['epoch_peak_rss_mib'])}) "
            f"| {r['items_per_s']:.1f} | {p['peak_rss_mib']:.0f} ({_fmt(p['epoch_peak_rss_mib'])}) "
            f"| {p['items_per_s']:.1f} | {r['items_per_s'] / p['items_per_s']:.2f} | {r['setup_s']:.1f} "
            f"| {cache} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signal-sizes", type=int, nargs="*", default=list(DEFAULT_SIZES["signals"]))
    parser.add_argument("--volume-sizes", type=int, nargs="*", default=list(DEFAULT_SIZES["volumes"]))
    parser.add_argument(
        "--cache-trials",
        type=int,
        nargs="+",
        default=[512],
        help="SignalAdapter cache_trials values to measure (512 is the default; 0 turns the cache off)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the grown datasets go (temp)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SIZE", "LOADER"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-trials-child", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, size, loader = args.child
        result = measure(kind, int(size), loader, args.workdir, args.cache_trials_child)
        print(json.dumps(result))
        return
    sizes = {"signals": args.signal_sizes, "volumes": args.volume_sizes}
    sizes = {kind: s for kind, s in sizes.items() if s}
    with tempfile.TemporaryDirectory(prefix="medcl_loader_memory_") as tmp:
        workdir = args.workdir if args.workdir is not None else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_benchmark(sizes, workdir, cache_trials=args.cache_trials)
    report["command"] = " ".join(["python", "benchmarks/loader_memory.py", *sys.argv[1:]])
    print(markdown_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
