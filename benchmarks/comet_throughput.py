"""Step time of medcl's hierarchical objective vs an 8-pass COMET-style schedule, same encoder and data.

Both schedules train the same TS2Vec encoder (COMET's sizes by default: Linear C→64, 10 + 1 dilated
residual blocks, 320-d output) with AdamW on the same batch of ``B`` samples of ``C × T``, with the same
per-level loss functions (:mod:`medcl.losses`) and the same cheap tensor augmentation (per-channel
amplitude scaling and Gaussian noise, plus the encoder's own random timestamp mask in training mode):

* **medcl** (:class:`medcl.objectives.HierarchicalContrast`): augment two views, ONE encoder call on the
  concatenated ``2B`` views, all four levels from that pair, backward, optimizer step;
* **COMET-style** (the schedule of ``DL4mHealth/COMET``'s ``comet.py``): for each of the four levels,
  augment two views separately and encode each (2 encoder calls per level, 8 in all, ``B`` samples
  each), compute that level's loss on its own pair, sum with the weights, backward, optimizer step.

Each step is split into encoder forward, loss forward, loss backward (to the features), encoder backward
and optimizer time, by running the backward in two stages (``autograd.grad`` to the features, then
``backward`` from them): the same work as one ``loss.backward()``. Steps of the two schedules are
interleaved (alternating which goes first), so a load change on a shared machine hits both alike; the
medians over ``--steps`` steps after ``--warmup`` steps and their ratio are printed as a markdown table.

    python benchmarks/comet_throughput.py --batch 128 --steps 10
    python benchmarks/comet_throughput.py --data random --hidden-dims 32 --output-dims 128 --depth 6
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from medcl.losses import multi_positive_info_nce_loss, ts2vec_pyramid_losses
from medcl.objectives import EncodedViews, HierarchicalContrast
from modalities.signals import TS2VecEncoder

LEVELS = ("observation", "sample", "trial", "patient")
PARTS = ("encoder_forward", "loss_forward", "loss_backward", "encoder_backward", "optimizer")


@dataclass
class Batch:
    """``x`` ``(B, C, T)`` and the ids ``(B,)`` of one batch."""

    x: Tensor
    patient: Tensor
    trial: Tensor
    source: str


@dataclass
class Timings:
    """Seconds per part of every measured step."""

    parts: dict[str, list[float]] = field(default_factory=lambda: {part: [] for part in PARTS})
    losses: list[float] = field(default_factory=list)

    def add(self, marks: list[float], loss: float) -> None:
        for part, start, stop in zip(PARTS, marks[:-1], marks[1:], strict=True):
            self.parts[part].append(stop - start)
        self.losses.append(loss)

    def totals(self) -> list[float]:
        return [sum(values) for values in zip(*self.parts.values(), strict=True)]

    def median(self, part: str) -> float:
        return statistics.median(self.parts[part])


def random_batch(batch: int, channels: int, length: int, seed: int) -> Batch:
    """Gaussian inputs; ids laid out as the grouped sampler does (2 trials × 3 samples per patient)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(batch)
    return Batch(torch.randn(batch, channels, length, generator=generator), index // 6, index // 3, "random")


def ptbxl_batch(batch: int, seed: int) -> Batch:
    """The first grouped batch of real 2 s windows (12 × 200 at 100 Hz) of the bundled PTB-XL subset,
    preprocessed as ``configs/pretrain/comet_ecg.yaml`` does (3 windows × 2 records per patient)."""
    from medcl.data import contract
    from medcl.data.datamodule import PretrainDataModule
    from medcl.data.sampler import GroupedBatchSampler
    from medcl.data.splits import SplitConfig
    from modalities.signals import SignalAdapter

    adapter = SignalAdapter(
        dataset="ptbxl", root="bundled:ptbxl", window_s=2.0, stride_s=1.0, normalize="trial"
    )
    data = PretrainDataModule(adapter, batch_size=batch, split=SplitConfig(method="fold"), use_labels=False)
    data.setup("fit")
    dataset = data.dataset("train", n_views=0)
    sampler = GroupedBatchSampler(
        dataset.patient_codes,
        dataset.trial_codes,
        batch_size=min(batch, len(dataset)),
        samples_per_trial=3,
        trials_per_patient=2,
        seed=seed,
        num_replicas=1,
        rank=0,
    )
    items = [dataset[key] for key in next(iter(sampler))]
    x = torch.stack([torch.as_tensor(item[adapter.input_key], dtype=torch.float32) for item in items])
    patient = torch.tensor([item[contract.PATIENT] for item in items])
    trial = torch.tensor([item[contract.TRIAL] for item in items])
    return Batch(x, patient, trial, f"bundled PTB-XL, {len(items)} train windows of 12 x 200")


def augment(x: Tensor) -> Tensor:
    """One random view: per-sample, per-channel gain U(0.8, 1.2) and Gaussian noise (std 0.05)."""
    gain = torch.empty(x.shape[0], x.shape[1], 1).uniform_(0.8, 1.2)
    return x * gain + 0.05 * torch.randn_like(x)


def _finish(
    loss: Tensor, features: list[Tensor], optimizer: torch.optim.Optimizer, marks: list[float]
) -> None:
    """Loss backward to the features, encoder backward from them, optimizer step; appends 3 marks."""
    grads = torch.autograd.grad(loss, features)
    marks.append(time.perf_counter())
    torch.autograd.backward(features, grads)
    marks.append(time.perf_counter())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())


def medcl_step(
    encoder: TS2VecEncoder, objective: HierarchicalContrast, optimizer: torch.optim.Optimizer, batch: Batch
) -> tuple[list[float], float]:
    """One encoder call on the 2B views, all four levels from it."""
    n = batch.x.shape[0]
    marks = [time.perf_counter()]
    x = torch.cat([augment(batch.x), augment(batch.x)])  # (2B, C, T): view a, then view b
    features = encoder.forward_features(x)  # (2B, T, D)
    marks.append(time.perf_counter())
    pooled = encoder.pool(features)
    terms = objective(
        EncodedViews(
            pooled.reshape(2, n, -1), features.reshape(2, n, *features.shape[1:]), batch.patient, batch.trial
        )
    )
    marks.append(time.perf_counter())
    _finish(terms["loss"], [features], optimizer, marks)
    return marks, float(terms["loss"].detach())


def comet_style_step(
    encoder: TS2VecEncoder,
    level_weights: dict[str, float],
    temperature: float,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
) -> tuple[list[float], float]:
    """COMET's schedule: per level, two separately augmented views, two encoder calls, that level's loss.

    Encoder and loss time are accumulated over the levels (the loss of a level is computed right after
    its two passes, in COMET's order patient, trial, sample, observation).
    """
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "patient": lambda a, b: _id_loss(encoder, a, b, batch.patient, temperature),
        "trial": lambda a, b: _id_loss(encoder, a, b, batch.trial, temperature),
        "sample": lambda a, b: ts2vec_pyramid_losses(a, b, temporal=False)[0],
        "observation": lambda a, b: ts2vec_pyramid_losses(a, b, instance=False)[1],
    }
    start = time.perf_counter()
    encoder_time = 0.0
    features: list[Tensor] = []
    total: Tensor | None = None
    for level in ("patient", "trial", "sample", "observation"):
        if level_weights[level] == 0:
            continue
        t0 = time.perf_counter()
        a = encoder.forward_features(augment(batch.x))
        b = encoder.forward_features(augment(batch.x))
        t1 = time.perf_counter()
        term = level_weights[level] * losses[level](a, b)
        total = term if total is None else total + term
        encoder_time += t1 - t0
        features += [a, b]
    assert total is not None
    # Parts add up to the wall time: loss forward is the loop's time minus its encoder time.
    marks = [start, start + encoder_time, time.perf_counter()]
    _finish(total, features, optimizer, marks)
    return marks, float(total.detach())


def _id_loss(encoder: TS2VecEncoder, a: Tensor, b: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """Trial/patient level on one pair: multi-positive InfoNCE on the pooled embeddings."""
    z = torch.cat([encoder.pool(a), encoder.pool(b)])
    return multi_positive_info_nce_loss(z, torch.cat([ids, ids]), temperature=temperature, normalize=True)


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="samples per batch B (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per schedule (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured steps per schedule first (default 2)"
    )
    parser.add_argument("--data", choices=("ptbxl", "random"), default="ptbxl", help="input windows")
    parser.add_argument("--channels", type=int, default=12, help="C for --data random (default 12)")
    parser.add_argument("--length", type=int, default=200, help="T for --data random (default 200)")
    parser.add_argument("--hidden-dims", type=int, default=64, help="encoder hidden channels (COMET: 64)")
    parser.add_argument("--output-dims", type=int, default=320, help="encoder output channels D (COMET: 320)")
    parser.add_argument("--depth", type=int, default=10, help="encoder hidden blocks (COMET: 10)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("need --batch >= 2, --steps >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    batch = (
        ptbxl_batch(args.batch, args.seed)
        if args.data == "ptbxl"
        else random_batch(args.batch, args.channels, args.length, args.seed)
    )
    n, channels, length = batch.x.shape
    ours = TS2VecEncoder(
        channels, hidden_dims=args.hidden_dims, output_dims=args.output_dims, depth=args.depth
    )
    theirs = copy.deepcopy(ours)
    ours.train()
    theirs.train()
    objective = HierarchicalContrast(gather_distributed=False)
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=args.lr)
    theirs_optimizer = torch.optim.AdamW(theirs.parameters(), lr=args.lr)

    def run_ours() -> tuple[list[float], float]:
        return medcl_step(ours, objective, ours_optimizer, batch)

    def run_theirs() -> tuple[list[float], float]:
        return comet_style_step(theirs, objective.weights, objective.temperature, theirs_optimizer, batch)

    load_before = load_average()
    results = {"medcl": Timings(), "comet": Timings()}
    wall = time.perf_counter()
    for step in range(args.warmup + args.steps):
        order = [("medcl", run_ours), ("comet", run_theirs)]
        if step % 2:
            order.reverse()
        for name, run in order:
            marks, loss = run()
            if step >= args.warmup:
                results[name].add(marks, loss)
    wall = time.perf_counter() - wall

    medcl_totals, comet_totals = results["medcl"].totals(), results["comet"].totals()
    ratio_of_medians = statistics.median(comet_totals) / statistics.median(medcl_totals)
    paired = statistics.median(c / m for c, m in zip(comet_totals, medcl_totals, strict=True))

    def row(name: str, label: str, calls: str, encoded: int) -> str:
        timings = results[name]
        total = statistics.median(timings.totals())
        encoder = timings.median("encoder_forward") + timings.median("encoder_backward")
        loss = timings.median("loss_forward") + timings.median("loss_backward")
        return (
            f"| {label} | {calls} | {encoded} | {total:.2f} | {encoder:.2f} | {loss:.2f} | "
            f"{timings.median('optimizer'):.3f} | {n / total:.1f} |"
        )

    command = "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    print(f"`{command}`\n")
    print(
        f"- input: {batch.source if args.data == 'ptbxl' else f'random {channels} x {length}'}, B = {n}; "
        f"ids: {len(batch.trial.unique())} trials, {len(batch.patient.unique())} patients in the batch"
    )
    print(
        f"- encoder: TS2VecEncoder(in_channels={channels}, hidden_dims={args.hidden_dims}, "
        f"output_dims={args.output_dims}, depth={args.depth}), training mode; AdamW lr {args.lr}; "
        "level weights 0.25 each"
    )
    print(
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads; load average (1/5/15 min) "
        f"{load_before} before, {load_average()} after"
    )
    print(
        f"- {args.steps} measured steps per schedule after {args.warmup} warm-up steps, interleaved; "
        f"medians; {wall:.0f} s in all\n"
    )
    print(
        "| schedule | encoder calls per step | samples encoded per step | step (s) | encoder fwd+bwd (s) "
        "| loss fwd+bwd (s) | optimizer (s) | samples/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(row("medcl", "medcl: one pass on the 2B views, 4 levels", f"1 (on {2 * n})", 2 * n))
    print(row("comet", "COMET-style: 2 passes per level", f"8 (on {n} each)", 8 * n))
    print(
        f"\nCOMET-style / medcl step time: **{ratio_of_medians:.2f}x** (ratio of medians); "
        f"median of the per-step ratios {paired:.2f}x."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
