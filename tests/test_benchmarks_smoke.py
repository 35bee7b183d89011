"""Smoke test of benchmarks/loader_memory.py: its core function on tiny grown datasets, in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loader_memory_counts_and_cache_bound(tmp_path: Path) -> None:
    bench = _load("loader_memory")
    # 8 records: one full batch; cache_trials=3 must hold at most 3 of the 8 distinct (symlinked) paths
    report = bench.run_benchmark(
        {"signals": [8], "volumes": [4]}, tmp_path, cache_trials=(512, 3), subprocesses=False
    )
    rows = report["results"]
    assert [(r["kind"], r["loader"]) for r in rows] == [
        ("signals", "medcl"),
        ("signals", "medcl"),
        ("signals", "plain"),
        ("volumes", "medcl"),
        ("volumes", "plain"),
    ]
    for r in rows:
        assert r["items"] == r["size"]
        assert abs(r["items_per_s"] - r["items"] / r["seconds"]) < 1e-9 * r["items_per_s"]
        assert r["peak_rss_mib"] > 0 and r["epoch_peak_rss_mib"] > 0
    medcl_full, medcl_small = rows[0], rows[1]
    assert medcl_full["train_samples"] == 8 and medcl_full["view_shape"] == [2, 12, 250]
    # every grown record has its own path: 8 entries of (12 leads x 1000 samples) float32
    assert medcl_full["cache_entries"] == 8
    assert abs(medcl_full["cache_mib"] - 8 * 12 * 1000 * 4 / 2**20) < 1e-9
    assert medcl_small["cache_entries"] == 3
    assert rows[3]["cache_dir"] is None and rows[3]["view_shape"] == [2, 1, 32, 32, 32]
    # the grown manifests list the real files under distinct ids
    signals = pd.read_csv(tmp_path / "signals_8" / "manifest.csv", dtype=str)
    assert signals["trial_id"].is_unique and len(signals) == 8
    volumes = pd.read_csv(tmp_path / "volumes_4" / "manifest.csv", dtype=str)
    assert volumes["study_id"].is_unique and all(Path(p).is_file() for p in volumes["image"])
    table = bench.markdown_table(report)
    assert len(table.splitlines()) == 2 + 3  # header, rule, 2 signal settings + 1 volume row
