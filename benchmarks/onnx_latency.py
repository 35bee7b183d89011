"""Inference latency: onnxruntime (the exported graph) vs torch eager, at batch 1 and 32, on CPU.

The same classifier (encoder + MLP head, 2 classes, probabilities out) runs in torch eager mode
(``eval()``, ``no_grad``) and in onnxruntime (CPU execution provider) on the graph ``medcl export``
writes (:func:`export.onnx.export_graph`: opset 17, dynamic batch). Weights are random: latency does not
depend on them. Both runtimes use the machine's cores with their default thread settings. Each cell is
the median of ``--repeats`` calls after ``--warmup`` calls; calls of the two runtimes alternate.

    python benchmarks/onnx_latency.py --repeats 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx import ExportableClassifier, export_graph
from modalities.signals import TS2VecEncoder, TsaiEncoder
from tasks.classification import build_head

ENCODERS = {
    "TS2Vec 64/320/10 (COMET's sizes)": lambda: TS2VecEncoder(12, hidden_dims=64, output_dims=320, depth=10),
    "TS2Vec 32/128/6 (the demo's)": lambda: TS2VecEncoder(12, hidden_dims=32, output_dims=128, depth=6),
    "tsai InceptionTime nf 32": lambda: TsaiEncoder("InceptionTime", in_channels=12),
}


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def torch_call(model: torch.nn.Module, x: np.ndarray) -> Callable[[], object]:
    tensor = torch.from_numpy(x)

    def run() -> object:
        with torch.no_grad():
            return model(tensor)

    return run


def ort_call(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    return lambda: session.run(["probabilities"], {"input": x})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--length", type=int, default=200, help="window length (samples)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"{platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{ort.__version__}; window 12 x {args.length}; median of {args.repeats} calls\n"
    )
    print("| encoder | batch | torch eager (ms) | onnxruntime (ms) | torch / onnxruntime |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, build in ENCODERS.items():
            encoder = build()
            model = ExportableClassifier(
                encoder, build_head("mlp", encoder.embedding_dim, 2), "multiclass"
            ).eval()
            path = Path(folder) / "model.onnx"
            export_graph(model, np.zeros((2, 12, args.length), np.float32), path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for batch in (1, 32):
                x = np.random.default_rng(batch).standard_normal((batch, 12, args.length)).astype(np.float32)
                run_torch, run_ort = torch_call(model, x), ort_call(session, x)
                for _ in range(args.warmup):
                    run_torch()
                    run_ort()
                torch_times, ort_times = [], []
                for _ in range(args.repeats):  # alternate, so load changes hit both
                    torch_times.append(seconds(run_torch))
                    ort_times.append(seconds(run_ort))
                t, o = statistics.median(torch_times) * 1e3, statistics.median(ort_times) * 1e3
                print(f"| {name} | {batch} | {t:.2f} | {o:.2f} | {t / o:.2f}x |")


if __name__ == "__main__":
    main()
