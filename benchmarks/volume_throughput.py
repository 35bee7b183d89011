"""Pretraining throughput and peak memory of the volume objectives (VoCo, asymmetry contrast) on CPU/GPU.

Every configuration runs in its own fresh process (so its peak memory is its own): real volumes are read
and preprocessed once (the bundled MSD hippocampus MRI, or the lung CTs of ../shared/data for the CT
configurations), the objective's per-volume transform makes its inputs, and ``--steps`` full training
steps (objective forward, backward, AdamW, EMA update) run at batch ``--batch``. Printed: median step
time, volumes per second, peak resident memory of the process (CPU) or peak allocated memory (CUDA), and
parameter counts, as a markdown table.

    python benchmarks/volume_throughput.py
    python benchmarks/volume_throughput.py --configs voco_unet asym_unet --steps 10 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
UNET = {"class": "UNetBackbone", "kwargs": {"features": (16, 16, 32, 64, 128, 16)}}
SWIN = {"class": "SwinUNETRBackbone", "kwargs": {"feature_size": 24}}
CONFIGS: dict[str, dict[str, Any]] = {
    # VoCo: 2 x 2 bases of 32^3 (UNet) / 64^3 (SwinUNETR) and 4 random crops per volume
    "voco_unet": {"objective": "voco", "backbone": UNET, "crop": 32, "data": "mri"},
    "voco_swin": {"objective": "voco", "backbone": SWIN, "crop": 64, "data": "mri"},
    # asymmetry contrast: one ROI and its mirror image per volume
    "asym_unet": {"objective": "asym", "backbone": UNET, "roi": (32, 48, 32), "data": "mri"},
    "asym_unet_ct": {"objective": "asym", "backbone": UNET, "roi": (144, 96, 32), "data": "ct"},
}


def measure(name: str, steps: int, batch: int, warmup: int) -> dict[str, Any]:
    """Run one configuration in this process; return its numbers."""
    from medcl.objectives import AsymmetryContrast, VoCo
    from modalities import volumes

    config = CONFIGS[name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config["data"] == "mri":
        adapter = volumes.VolumeAdapter(root="bundled:msd_hippocampus", image_modality="MR", roi=(32, 48, 32))
    else:
        adapter = volumes.VolumeAdapter(
            root=str(REPO.parent / "shared" / "data" / "radiomics_ct_mri"),
            dataset="paired",
            dataset_kwargs={"cases": ["lung1", "lung2"], "modality": "CT"},
            image_modality="CT",
            intensity="window",
            spacing=(2.0, 2.0, 5.0),
            roi=config["roi"],
        )
    samples = adapter.make_samples(adapter.index().trials)
    volumes_in_memory = [adapter.load_sample(row) for _, row in samples.head(max(batch, 4)).iterrows()]
    if config["objective"] == "voco":
        objective = VoCo(n_bases_per_side=2, crop_size=config["crop"], n_random_crops=4, volume_fit="resize")
    else:
        objective = AsymmetryContrast(roi_size=config["roi"])
    backbone_cls = getattr(volumes, config["backbone"]["class"])
    encoder = backbone_cls(**config["backbone"]["kwargs"]).to(device)
    objective.bind(encoder.embedding_dim)
    objective.to(device)
    transform = objective.item_transform("image")
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(objective.parameters()), lr=1e-4)

    def make_batch(step: int) -> dict[str, Any]:
        items = []
        for i in range(batch):
            transform.set_random_state(seed=step * batch + i)
            items.append(transform(dict(volumes_in_memory[(step * batch + i) % len(volumes_in_memory)])))
        return {
            key: torch.as_tensor(np.stack([np.asarray(item[key]) for item in items])).to(device)
            for key in transform.output_keys
        }

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        batch_tensors = make_batch(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        terms = objective.forward_batch(encoder, batch_tensors)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        hook = getattr(objective, "on_after_optimizer_step", None)
        if hook is not None:
            hook(encoder)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    peak_mib = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "config": name,
        "device": str(device),
        "backbone": f"{config['backbone']['class']}({config['backbone']['kwargs']})",
        "encoder_params_m": sum(p.numel() for p in encoder.parameters()) / 1e6,
        "input": "crops " + "x".join([str(config["crop"])] * 3)
        if "crop" in config
        else "roi " + "x".join(map(str, config["roi"])),
        "batch": batch,
        "median_step_s": median,
        "volumes_per_s": batch / median,
        "peak_memory_mib": peak_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps, args.batch, args.warmup)))
        return
    rows = []
    for name in args.configs:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
        ]
        command += ["--warmup", str(args.warmup)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            print(f"{name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; "
        f"{args.steps} steps after {args.warmup} warm-up, batch {args.batch}\n"
    )
    print("| config | device | backbone (params) | input | step (s) | volumes/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['device']} | {row['backbone']} ({row['encoder_params_m']:.1f} M) | "
            f"{row['input']} | {row['median_step_s']:.2f} | {row['volumes_per_s']:.2f} | "
            f"{row['peak_memory_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
