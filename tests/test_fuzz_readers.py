"""Fuzzing every file reader with mutated real files: a bad file is a medcl DataError naming the file,
never a hang, a crash or a raw exception from deep inside wfdb, pyedflib, nibabel, pynrrd or pydicom.

Each example takes a real, valid file (the bundled PTB-XL WFDB record, the eegmat EEG EDF and pyedflib's
multi-rate BDF, the bundled BIDMC CSV, the bundled MSD hippocampus NIfTI image and mask, an NRRD written by
pynrrd, a DICOM series made from pydicom's CT slice), applies mutations drawn by hypothesis (truncation,
flipped or overwritten bytes, a header field zeroed or set to an extreme value, inserted garbage, a text
header token replaced), writes the result to a scratch folder and calls every reader entry point on it
(``read_signal``, ``read_signal_header``, ``read_wearable``, ``read_wearable_header``, ``read_volume``,
``read_mask``) in a worker process, with a time limit and a memory limit. The WFDB record and the NIfTI
image also go through the training load path behind the readers (``SignalAdapter.preprocess_trial``,
``VolumeAdapter.load_sample``), which ``on_error="skip"`` relies on as much.

Accepted outcomes:
- a successful read whose arrays keep the reader's contract: signals ``(C, T)`` float32 with ``C`` names
  and units, ``T >= 1``, finite values or NaN (never inf), a finite rate > 0, and the same rate, length and
  channels as the header reader declares; volumes ``(C, H, W, D)`` float32, all finite, with the shape the
  file's header declares and an invertible finite affine; masks int64 ``(1, H, W, D)`` of whole labels >= 0;
- a :class:`~medcl.errors.DataError` (what ``on_error="skip"`` catches) whose message names the file.

A timeout (a hang), a dead worker (a crash), a ``MemoryError`` (a corrupted size field believed) or any
other exception fails the test, with the case and the traceback from the worker. The default run is
bounded (derandomized, a few dozen examples per file type, no shrinking); ``-m slow`` runs many more.

Every case the fuzzer found mishandled is rebuilt exactly in ``FOUND`` and replayed by
``test_cases_the_fuzzer_found_stay_fixed`` (each fails against the readers as they were before the fixes).
The volume preprocessing refuses a resampling whose output would not fit (30 mm voxels in a corrupted
header used to ask MONAI's Spacingd for 25 GB).

Exploratory runs: ``MEDCL_FUZZ_EXAMPLES=5000 MEDCL_FUZZ_RANDOM=1 pytest -m slow tests/test_fuzz_readers.py``
(``MEDCL_FUZZ_VERBOSE=1`` prints how each entry point answered, ``=2`` every case).

The worker is this file run as a script (``python test_fuzz_readers.py --worker``): a long-lived process
that reads pickled requests on stdin and answers on its own copy of stdout (the real stdout is sent to
stderr, so a library that prints cannot corrupt the protocol).
"""

from __future__ import annotations

import copy
import gzip
import io
import os
import pickle
import resource
import select
import shutil
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: seconds one reader call may take before it counts as a hang (the machine may be busy: generous)
CALL_TIMEOUT_S = 20.0
#: address space the worker may add to what it holds after its imports (a real read here needs < 100 MB)
WORKER_EXTRA_MEMORY = 2 << 30


# ==================================================================================================
# The worker: runs reader entry points and checks their contract
# ==================================================================================================


def _outcome_of_error(error: BaseException) -> dict[str, Any]:
    from medcl.errors import DataError, MedclError

    return {
        "status": "raised",
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "data_error": isinstance(error, DataError),
        "medcl": isinstance(error, MedclError),
        "message": str(error),
        "traceback": traceback.format_exc(),
    }


def _call(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    try:
        return fn(), {"status": "ok", "violations": []}
    except BaseException as error:  # everything is reported to the test, which decides
        if isinstance(error, KeyboardInterrupt):
            raise
        return None, _outcome_of_error(error)


def _signal_violations(record: Any) -> list[str]:
    data = record.data
    bad: list[str] = []
    if data.ndim != 2 or data.dtype != np.float32:
        return [f"data is {data.dtype} of shape {data.shape}, not float32 (C, T)"]
    if data.shape[0] < 1 or data.shape[1] < 1:
        bad.append(f"empty data of shape {data.shape}")
    if len(record.channel_names) != data.shape[0] or len(record.units) != data.shape[0]:
        bad.append(
            f"{data.shape[0]} channels but {len(record.channel_names)} names, {len(record.units)} units"
        )
    if np.isinf(data).any():
        bad.append(f"{int(np.isinf(data).sum())} infinite samples (the contract is finite values or NaN)")
    if not (np.isfinite(record.fs) and record.fs > 0):
        bad.append(f"sampling rate {record.fs}")
    return bad


def _header_violations(header: Any) -> list[str]:
    bad: list[str] = []
    if not (np.isfinite(header.fs) and header.fs > 0):
        bad.append(f"header sampling rate {header.fs}")
    if header.n_samples < 0 or not header.channel_names or len(header.units) != len(header.channel_names):
        bad.append(f"header length {header.n_samples}, channels {header.channel_names}, units {header.units}")
    return bad


def _agreement(header: Any, record: Any, all_channels: bool) -> list[str]:
    """What the header reader declared against what the full reader returned."""
    bad: list[str] = []
    if not np.isclose(header.fs, record.fs, rtol=1e-9):
        bad.append(f"header says {header.fs} Hz, the read returned {record.fs} Hz")
    if header.n_samples != record.n_samples:
        bad.append(f"header says {header.n_samples} samples, the read returned {record.n_samples}")
    if all_channels and tuple(header.channel_names) != tuple(record.channel_names):
        bad.append(f"header channels {header.channel_names} != read channels {record.channel_names}")
    return bad


def _run_signal_family(path: str, kwargs: dict[str, Any], wearable: bool) -> dict[str, dict[str, Any]]:
    from modalities.signals.readers import read_signal, read_signal_header
    from modalities.wearables.readers import read_wearable, read_wearable_header

    read, read_header = (
        (read_wearable, read_wearable_header) if wearable else (read_signal, read_signal_header)
    )
    prefix = "read_wearable" if wearable else "read_signal"
    header_kwargs = {k: v for k, v in kwargs.items() if k in ("fs", "time_column")}
    header, header_out = _call(lambda: read_header(path, **header_kwargs))
    if header is not None:
        header_out["violations"] = _header_violations(header)
    record, record_out = _call(lambda: read(path, **kwargs))
    if record is not None:
        record_out["violations"] = _signal_violations(record)
        if header is not None:
            record_out["violations"] += _agreement(header, record, kwargs.get("channels") is None)
    outcomes = {f"{prefix}_header": header_out, prefix: record_out}
    if not wearable and kwargs.get("channels") is None and record is not None:
        # A channel selection reads the same samples as the full read.
        first = record.channel_names[0]
        chosen, chosen_out = _call(lambda: read(path, channels=[first], **header_kwargs))
        if chosen is not None:
            chosen_out["violations"] = _signal_violations(chosen)
            if not np.array_equal(chosen.data[0], record.data[0], equal_nan=True):
                chosen_out["violations"].append(f"channel {first!r} read alone differs from the full read")
        outcomes[f"{prefix}(channels=[first])"] = chosen_out
    return outcomes


def _declared_volume_shape(path: Path) -> tuple[int, ...] | None:
    """(C, H, W, D) as the file's own header declares it, read with the format's library (None if that
    library cannot read the header either)."""
    try:
        if path.is_dir():
            import pydicom

            slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(path.glob("*.dcm"))]
            return (1, int(slices[0].Columns), int(slices[0].Rows), len(slices))
        if path.name.endswith(".nrrd"):
            import nrrd

            sizes = tuple(int(s) for s in nrrd.read_header(str(path))["sizes"])
            return sizes if len(sizes) == 4 else (1, *sizes)
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(path).shape)
        return (shape[3], *shape[:3]) if len(shape) == 4 else (1, *shape)
    except Exception:
        return None


def _volume_violations(volume: Any, declared: tuple[int, ...] | None, mask: bool) -> list[str]:
    array, affine = volume.array, np.asarray(volume.affine)
    bad: list[str] = []
    dtype = np.int64 if mask else np.float32
    if array.ndim != 4 or array.dtype != dtype or min(array.shape) < 1:
        return [f"array is {array.dtype} of shape {array.shape}, not {np.dtype(dtype)} (C, H, W, D)"]
    if declared is not None and tuple(array.shape) != declared:
        bad.append(f"array shape {array.shape} but the header declares {declared}")
    if mask:
        if array.shape[0] != 1 or (array < 0).any():
            bad.append(f"mask of shape {array.shape} with minimum {array.min()}")
    elif not np.isfinite(array).all():
        bad.append(f"{int((~np.isfinite(array)).sum())} non-finite voxels")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        bad.append(f"affine {affine.tolist()}")
    elif abs(np.linalg.det(affine[:3, :3])) <= 0:
        bad.append(f"singular affine {affine.tolist()}")
    elif min(volume.spacing) <= 0:
        bad.append(f"voxel size {volume.spacing}")
    return bad


def _run_volume_family(path: str, kwargs: dict[str, Any], mask: bool) -> dict[str, dict[str, Any]]:
    from modalities.volumes.readers import read_mask, read_volume

    declared = _declared_volume_shape(Path(path))
    if mask:
        image = read_volume(kwargs["image"]) if "image" in kwargs else None
        volume, out = _call(lambda: read_mask(path, image=image))
        name = "read_mask" if image is None else "read_mask(image=...)"
    else:
        volume, out = _call(lambda: read_volume(path))
        name = "read_volume"
    if volume is not None:
        out["violations"] = _volume_violations(volume, declared, mask)
    return {name: out}


_ADAPTERS: dict[str, Any] = {}


def _run_signal_adapter(path: str) -> dict[str, dict[str, Any]]:
    """The training load path of an ECG: read the 12 PTB-XL leads, fill gaps, resample, filter, normalise."""
    from modalities.signals import SignalAdapter

    adapter = _ADAPTERS.setdefault("signal", SignalAdapter())
    x, out = _call(lambda: adapter.preprocess_trial(path))
    if x is not None:
        if x.ndim != 2 or x.dtype != np.float32 or x.shape[0] != len(adapter.channels) or x.shape[1] < 1:
            out["violations"].append(f"preprocessed recording is {x.dtype} of shape {x.shape}")
        elif not np.isfinite(x).all():
            out["violations"].append(f"{int((~np.isfinite(x)).sum())} non-finite values after preprocessing")
    return {"SignalAdapter.preprocess_trial": out}


def _run_volume_adapter(path: str, mask: str | None) -> dict[str, dict[str, Any]]:
    """The training load path of an MRI: read, orient to RAS, resample to 1 mm, scale intensities."""
    import pandas as pd

    from modalities.volumes import VolumeAdapter

    adapter = _ADAPTERS.setdefault("volume", VolumeAdapter())
    row = pd.Series({"path": path, "mask_path": mask or "", "patient_id": "p", "trial_id": "t"})
    sample, out = _call(lambda: adapter.load_sample(row))
    if sample is not None:
        image = sample[adapter.input_key]
        image = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
        if image.ndim != 4 or image.dtype != np.float32 or min(image.shape) < 1:
            out["violations"].append(f"preprocessed image is {image.dtype} of shape {image.shape}")
        elif not np.isfinite(image).all():
            out["violations"].append(
                f"{int((~np.isfinite(image)).sum())} non-finite voxels after preprocessing"
            )
    return {"VolumeAdapter.load_sample": out}


def _sleep(seconds: float) -> dict[str, dict[str, Any]]:
    """For the harness's self-test: a call that hangs."""
    time.sleep(seconds)
    return {"sleep": {"status": "ok", "violations": []}}


FAMILIES: dict[str, Callable[[str, dict[str, Any]], dict[str, dict[str, Any]]]] = {
    "sleep": lambda path, kw: _sleep(kw["seconds"]),
    "signal_adapter": lambda path, kw: _run_signal_adapter(path),
    "volume_adapter": lambda path, kw: _run_volume_adapter(path, kw.get("mask")),
    "signal": lambda path, kw: _run_signal_family(path, kw, wearable=False),
    "wearable": lambda path, kw: _run_signal_family(path, kw, wearable=True),
    "volume": lambda path, kw: _run_volume_family(path, kw, mask=False),
    "mask": lambda path, kw: _run_volume_family(path, kw, mask=True),
}


def _send(stream: Any, message: Any) -> None:
    payload = pickle.dumps(message)
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _receive(stream: Any) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other side closed the pipe")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _worker_main() -> None:
    """Serve requests ``(family, path, kwargs)`` until stdin closes."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol
    import warnings

    warnings.simplefilter("ignore")
    from monai.data import NibabelReader, NrrdReader, PydicomReader  # noqa: F401 - import before the limit

    import modalities.signals.readers
    import modalities.volumes.readers
    import modalities.wearables.readers  # noqa: F401

    with open("/proc/self/status") as status:
        vm_kb = int(next(line for line in status if line.startswith("VmSize:")).split()[1])
    limit = vm_kb * 1024 + WORKER_EXTRA_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    _send(answers, "ready")
    requests = sys.stdin.buffer
    while True:
        try:
            family, path, kwargs = _receive(requests)
        except EOFError:
            return
        _send(answers, FAMILIES[family](path, kwargs))


# ==================================================================================================
# The test side: the worker handle, the mutations, the judge
# ==================================================================================================


class ReaderWorker:
    """A long-lived worker process; :meth:`run` answers one request or reports a hang or a crash."""

    def __init__(self, log_dir: Path, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.log_path = log_dir / "worker_stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.calls = 0
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(REPO_ROOT),
            env=env,
        )
        ready = self._answer(timeout=180.0)
        if ready != "ready":
            raise RuntimeError(f"the fuzz worker did not start: {ready!r}; see {self.log_path}")

    def _answer(self, timeout: float) -> Any:
        assert self.process is not None and self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not readable:
            return {"status": "timeout"}
        try:
            return _receive(self.process.stdout)
        except EOFError:
            code = self.process.wait(timeout=10)
            return {"status": "crashed", "returncode": code, "stderr": self._stderr_tail()}

    def _stderr_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-3000:].decode("utf-8", "replace")

    def run(self, family: str, path: Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Outcome per entry point, or ``{"worker": {"status": "timeout" | "crashed", ...}}``."""
        assert self.process is not None and self.process.stdin is not None
        self.calls += 1
        try:
            _send(self.process.stdin, (family, str(path), kwargs))
        except BrokenPipeError:
            self.restart()
            return {"worker": {"status": "crashed", "returncode": None, "stderr": self._stderr_tail()}}
        answer = self._answer(timeout=self.timeout_s)
        if isinstance(answer, dict) and answer.get("status") in ("timeout", "crashed"):
            self.restart()
            return {"worker": answer}
        return answer

    def restart(self) -> None:
        """Kill the worker (hung or dead) and start a new one."""
        self.close(kill=True)
        self._start()

    def close(self, kill: bool = False) -> None:
        if self.process is not None:
            if kill:
                self.process.kill()
            elif self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stdin is not None and not self.process.stdin.closed:
                self.process.stdin.close()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        self._log.close()


#: outcome counts (entry point, "ok" or the error type) over the session, printed with MEDCL_FUZZ_VERBOSE
OUTCOMES: Counter[tuple[str, str]] = Counter()


def judge(outcomes: dict[str, dict[str, Any]], name: str, case: str) -> None:
    """Fail with the case unless every entry point read the file within its contract or raised a
    DataError naming ``name``."""
    problems: list[str] = []
    for entry, out in outcomes.items():
        status = out["status"]
        OUTCOMES[entry, out.get("type", status).rsplit(".", 1)[-1]] += 1
        if os.environ.get("MEDCL_FUZZ_VERBOSE") == "2":
            print(f"{case} | {entry}: {out.get('message', status)[-160:]}", file=sys.stderr)
        if status == "ok":
            problems += [f"{entry} returned data that breaks its contract: {v}" for v in out["violations"]]
        elif status == "raised":
            if not out["data_error"]:
                problems.append(f"{entry} raised {out['type']}: {out['message']}\n{out['traceback']}")
            elif "MemoryError" in out["message"]:
                problems.append(
                    f"{entry} tried a huge allocation (a corrupted size believed): {out['message']}"
                )
            elif name not in out["message"]:
                problems.append(f"{entry} raised {out['type']} without naming {name!r}: {out['message']}")
        elif status == "timeout":
            problems.append(f"{entry}: no answer within {CALL_TIMEOUT_S} s (a hang)")
        else:
            problems.append(
                f"{entry}: the worker died (exit code {out.get('returncode')}): {out.get('stderr')}"
            )
    if problems:
        pytest.fail(f"{case}\n" + "\n".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------- mutations

#: ASCII values written into text fields (EDF header fields, WFDB/NRRD header tokens, CSV cells)
TEXT_VALUES = (
    "0", "-1", "", "99999999", "999999999999999999999", "nan", "inf", "-inf", "1e308", "0.0", "-0",
    "1e-320", "x", "1/0", "\x00\x00", "1.5", "2147483648", "-2147483649", "65536", "#", "  ",
)  # fmt: skip
#: raw values written into binary header fields, by struct code
BINARY_VALUES: dict[str, tuple[float | int, ...]] = {
    "h": (0, -1, 1, 2, 3, 4, 5, 7, 8, 32767, -32768),
    "i": (0, -1, 348, 540, 2**31 - 1, -(2**31)),
    "f": (0.0, -0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf"), 3.4e38),
}


@dataclass(frozen=True)
class Field:
    """A binary header field: byte offset, struct code, count (little-endian)."""

    name: str
    offset: int
    code: str
    count: int = 1

    @property
    def width(self) -> int:
        return struct.calcsize("<" + self.code) * self.count


# NIfTI-1 header fields (nifti1.h); the bundled files are little-endian
NIFTI1_FIELDS = (
    Field("sizeof_hdr", 0, "i"),
    Field("dim", 40, "h", 8),
    Field("intent_code", 68, "h"),
    Field("datatype", 70, "h"),
    Field("bitpix", 72, "h"),
    Field("pixdim", 76, "f", 8),
    Field("vox_offset", 108, "f"),
    Field("scl_slope", 112, "f"),
    Field("scl_inter", 116, "f"),
    Field("qform_code", 252, "h"),
    Field("sform_code", 254, "h"),
    Field("quatern", 256, "f", 6),
    Field("srow", 280, "f", 12),
)

EDF_FIXED = (("version", 0, 8), ("header bytes", 184, 8), ("records", 236, 8), ("duration", 244, 8))
EDF_FIXED += (("signals", 252, 4), ("start date", 168, 8), ("start time", 176, 8))
# per-signal fields: (name, offset of the block in units of ns, width)
EDF_SIGNAL = (
    ("label", 0, 16),
    ("physical dimension", 96, 8),
    ("physical minimum", 104, 8),
    ("physical maximum", 112, 8),
    ("digital minimum", 120, 8),
    ("digital maximum", 128, 8),
    ("samples per record", 216, 8),
)


def draw_position(data: Any, size: int, hot: int) -> int:
    """A byte position, half the time inside the first ``hot`` bytes (where the headers are); half the
    time drawn by hypothesis (which favours the edges: 0, the ends), half the time uniformly."""
    if size <= 1:
        return 0
    import hypothesis.strategies as st

    limit = min(hot, size) if data.draw(st.booleans(), label="in header") else size
    if data.draw(st.booleans(), label="uniform"):
        fraction = data.draw(st.floats(0, 1, exclude_max=True), label="fraction")
        return min(int(fraction * limit), limit - 1)
    return data.draw(st.integers(0, limit - 1), label="position")


def byte_mutation(data: Any, buf: bytes, hot: int) -> tuple[bytes, str]:
    """One byte-level mutation of ``buf``: truncate, flip bits, overwrite or insert garbage."""
    import hypothesis.strategies as st

    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "insert"]), label="byte op")
    if kind == "truncate":
        at = draw_position(data, len(buf), hot)
        return buf[:at], f"truncate at {at} of {len(buf)}"
    at = draw_position(data, len(buf), hot)
    if kind == "flip":
        mask = data.draw(st.integers(1, 255), label="xor")
        out = bytearray(buf)
        if out:
            out[at] ^= mask
        return bytes(out), f"xor byte {at} with {mask:#04x}"
    garbage = data.draw(st.binary(min_size=1, max_size=24), label="bytes")
    if kind == "overwrite":
        return buf[:at] + garbage + buf[at + len(garbage) :], f"overwrite at {at} with {garbage!r}"
    return buf[:at] + garbage + buf[at:], f"insert {garbage!r} at {at}"


def binary_field_mutation(data: Any, buf: bytes, fields: tuple[Field, ...]) -> tuple[bytes, str]:
    """Zero a binary header field, or set one of its elements to an extreme value."""
    import hypothesis.strategies as st

    field = data.draw(st.sampled_from(fields), label="field")
    out = bytearray(buf)
    if data.draw(st.booleans(), label="zero whole field"):
        out[field.offset : field.offset + field.width] = bytes(field.width)
        return bytes(out[: len(buf)]), f"zero field {field.name}"
    k = data.draw(st.integers(0, field.count - 1), label="element")
    value = data.draw(st.sampled_from(BINARY_VALUES[field.code]), label="value")
    size = struct.calcsize("<" + field.code)
    start = field.offset + k * size
    out[start : start + size] = struct.pack("<" + field.code, value)
    return bytes(out[: len(buf)]), f"set {field.name}[{k}] = {value}"


def edf_field_mutation(data: Any, buf: bytes, ns: int) -> tuple[bytes, str]:
    """Set an EDF header field (fixed or of one signal, ``ns`` signals in the source) to an extreme
    ASCII value."""
    import hypothesis.strategies as st

    value = data.draw(st.sampled_from(TEXT_VALUES), label="value")
    if data.draw(st.booleans(), label="fixed field"):
        name, offset, width = data.draw(st.sampled_from(EDF_FIXED), label="field")
    else:
        name, block, width = data.draw(st.sampled_from(EDF_SIGNAL), label="signal field")
        i = data.draw(st.integers(0, ns - 1), label="signal")
        offset = 256 + block * ns + width * i
        name = f"{name} of signal {i}"
    text = value.encode("latin-1")[:width].ljust(width)
    return buf[:offset] + text + buf[offset + width :], f"set EDF {name} to {value!r}"


def text_mutation(data: Any, text: str, header_lines: int) -> tuple[str, str]:
    """Mutate a text header: replace a token, or delete, duplicate or garble one of the first lines."""
    import hypothesis.strategies as st

    lines = text.split("\n")
    n = max(1, min(header_lines, len(lines)))
    i = data.draw(st.integers(0, n - 1), label="line")
    kind = data.draw(st.sampled_from(["token", "token", "delete", "duplicate", "garble"]), label="text op")
    if kind == "delete":
        return "\n".join(lines[:i] + lines[i + 1 :]), f"delete line {i}"
    if kind == "duplicate":
        return "\n".join(lines[: i + 1] + lines[i:]), f"duplicate line {i}"
    if kind == "garble":
        junk = data.draw(st.text(max_size=40), label="junk line")
        return "\n".join([*lines[:i], junk, *lines[i + 1 :]]), f"replace line {i} with {junk!r}"
    line = lines[i]
    cuts = [k for k, c in enumerate(line) if c in " \t,:/()"]
    spans = list(zip([-1, *cuts], [*cuts, len(line)], strict=True))
    start, stop = data.draw(st.sampled_from(spans), label="token")
    value = data.draw(st.sampled_from(TEXT_VALUES), label="value")
    lines[i] = line[: start + 1] + value + line[stop:]
    return "\n".join(lines), f"line {i}: token {line[start + 1 : stop]!r} -> {value!r}"


def mutate(
    data: Any, buf: bytes, field_op: Callable[[Any, bytes], tuple[bytes, str]] | None, hot: int
) -> tuple[bytes, list[str]]:
    """1 to 3 mutations, each a byte mutation or (when given) a header-field mutation."""
    import hypothesis.strategies as st

    steps: list[str] = []
    for _ in range(data.draw(st.integers(1, 3), label="number of mutations")):
        if field_op is not None and data.draw(st.booleans(), label="header field"):
            buf, step = field_op(data, buf)
        else:
            buf, step = byte_mutation(data, buf, hot)
        steps.append(step)
    return buf, steps


def text_field_op(header_lines: int, encoding: str = "latin-1") -> Callable[[Any, bytes], tuple[bytes, str]]:
    """A field op for files that start with a text header (WFDB ``.hea``, NRRD, CSV)."""

    def op(data: Any, buf: bytes) -> tuple[bytes, str]:
        head, sep, rest = buf.partition(b"\n\n")  # NRRD: header, blank line, data
        text = head.decode(encoding)
        text, step = text_mutation(data, text, header_lines)
        return text.encode(encoding, "replace") + sep + rest, step

    return op


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class Sources:
    """Real, valid files to mutate (made once per session in a scratch folder)."""

    wfdb: Path  # record path without extension
    edf: Path | None
    bdf: Path
    csv: Path
    nifti: Path  # uncompressed .nii of the hippocampus image
    nifti_gz: Path
    mask_gz: Path
    nrrd_raw: Path
    nrrd_gz: Path
    dicom: Path  # a folder


def _write_nrrd(path: Path, image: Path, encoding: str) -> Path:
    import nibabel as nib
    import nrrd

    img = nib.load(image)
    data = np.asarray(img.dataobj).astype(np.int16)
    affine = img.affine
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]  # RAS → LPS
    header = {
        "space": "left-posterior-superior",
        "space directions": lps.T,
        "space origin": np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": encoding,
    }
    nrrd.write(str(path), data, header)
    return path


def _write_dicom_series(folder: Path, n_slices: int = 3) -> Path:
    """A series from pydicom's real ``CT_small.dcm``: slice k holds its pixels + 100 k, 2.5 k mm along z.
    Its UIDs are fixed (derived from names), so the files, and every mutation of them, are the same in
    every run."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = src.pixel_array.astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid(entropy_srcs=["medcl fuzz series"])
    for k in range(n_slices):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["medcl fuzz slice", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        position = [float(v) for v in src.ImagePositionPatient]
        position[2] += 2.5 * k
        ds.ImagePositionPatient = position
        ds.PixelData = (base + 100 * k).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice_{k}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    import pyedflib

    from modalities.bundled import bundled_hippocampus_root, resolve_root

    out = tmp_path_factory.mktemp("fuzz_sources")
    record = resolve_root("bundled:ptbxl") / "records100" / "00000" / "00001_lr"
    hippo = bundled_hippocampus_root()
    image_gz = hippo / "imagesTr" / "hippocampus_001.nii.gz"
    nifti = out / "hippocampus_001.nii"
    nifti.write_bytes(gzip.decompress(image_gz.read_bytes()))
    # The first 1500 rows of a real BIDMC recording (12 s at 125 Hz), as the file stores them.
    bidmc = REPO_ROOT / "modalities" / "bundled" / "bidmc" / "bidmc_csv" / "bidmc_01_Signals.csv.gz"
    csv = out / "bidmc_01_Signals.csv"
    csv.write_text("\n".join(gzip.decompress(bidmc.read_bytes()).decode().splitlines()[:1501]) + "\n")
    shared = Path(os.environ.get("MEDCL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    eegmat = shared / "eeg_mental_arithmetic" / "Subject00_2.edf"
    return Sources(
        wfdb=record,
        edf=eegmat if eegmat.is_file() else None,
        bdf=Path(pyedflib.__file__).parent / "tests" / "data" / "test_generator.bdf",
        csv=csv,
        nifti=nifti,
        nifti_gz=image_gz,
        mask_gz=hippo / "labelsTr" / "hippocampus_001.nii.gz",
        nrrd_raw=_write_nrrd(out / "hippocampus_raw.nrrd", image_gz, "raw"),
        nrrd_gz=_write_nrrd(out / "hippocampus_gzip.nrrd", image_gz, "gzip"),
        dicom=_write_dicom_series(out / "ct_series"),
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReaderWorker]:
    handle = ReaderWorker(tmp_path_factory.mktemp("fuzz_worker"))
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_cases")


def fresh(folder: Path) -> Path:
    """An empty folder (emptied when it exists)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# ---------------------------------------------------------------------------------------------- the cases
# Each case function draws mutations, writes the mutated copy, runs the entry points and judges them.
# File names carry a token ("fz...") that appears nowhere in the scratch path, so the judge can tell that
# an error message names the file.


def case_wfdb(data: Any, src: Sources, worker: ReaderWorker, scratch: Path) -> None:
    import hypothesis.strategies as st
    from hypothesis import note

    folder = fresh(scratch / "wfdb")
    name = "fzrec"
    hea = (src.wfdb.parent / f"{src.wfdb.name}.hea").read_text().replace(src.wfdb.name, name)
    dat = (src.wfdb.parent / f"{src.wfdb.name}.dat").read_bytes()
    steps: list[str] = []
    which = data.draw(st.sampled_from(["hea", "dat", "both"]), label="file")
    if which in ("hea", "both"):
        raw, hea_steps = mutate(data, hea.encode("latin-1"), text_field_op(header_lines=13), hot=len(hea))
        steps += [f".hea: {s}" for s in hea_steps]
        (folder / f"{name}.hea").write_bytes(raw)
    else:
        (folder / f"{name}.hea").write_text(hea)
    if which in ("dat", "both"):
        dat, dat_steps = mutate(data, dat, None, hot=len(dat))
        steps += [f".dat: {s}" for s in dat_steps]
    (folder / f"{name}.dat").write_bytes(dat)
    case = f"WFDB record {src.wfdb.name} mutated: {'; '.join(steps)}"
    note(case)
    record = folder / name
    judge(worker.run("signal", record), name, case)
    judge(worker.run("wearable", folder / f"{name}.hea"), name, case)
    judge(worker.run("signal_adapter", record), name, case)


def case_edf(data: Any, source: Path, suffix: str, worker: ReaderWorker, scratch: Path) -> None:
    from hypothesis import note

    buf = source.read_bytes()
    ns = int(buf[252:256].decode("ascii").strip())
    field_op = lambda d, b: edf_field_mutation(d, b, ns)  # noqa: E731
    mutated, steps = mutate(data, buf, field_op, hot=256 * (ns + 1))
    path = fresh(scratch / "edf") / f"fzrec{suffix}"
    path.write_bytes(mutated)
    case = f"{source.name} mutated: {'; '.join(steps)}"
    note(case)
    judge(worker.run("signal", path), path.name, case)
    judge(worker.run("wearable", path), path.name, case)


def case_csv(data: Any, src: Sources, worker: ReaderWorker, scratch: Path) -> None:
    import hypothesis.strategies as st
    from hypothesis import note

    buf = src.csv.read_bytes()
    compressed = data.draw(st.sampled_from(["plain", "gzip inner", "gzip outer"]), label="compression")
    mutated, steps = mutate(data, buf, text_field_op(header_lines=6), hot=400)
    name = "fzrec.csv"
    if compressed == "gzip inner":
        mutated, name = gzip.compress(mutated, mtime=0), "fzrec.csv.gz"
    elif compressed == "gzip outer":
        mutated, steps = mutate(data, gzip.compress(buf, mtime=0), None, hot=64)
        name = "fzrec.csv.gz"
    path = fresh(scratch / "csv") / name
    path.write_bytes(mutated)
    case = f"{src.csv.name} ({compressed}) mutated: {'; '.join(steps)}"
    note(case)
    judge(worker.run("signal", path), path.name, case)
    judge(worker.run("wearable", path, channels=["PLETH", "II"]), path.name, case)
    judge(worker.run("wearable", path, fs=125.0), path.name, case)


def case_nifti(data: Any, src: Sources, worker: ReaderWorker, scratch: Path) -> None:
    import hypothesis.strategies as st
    from hypothesis import note

    which = data.draw(st.sampled_from(["image .nii", "image .nii.gz", "image .nii.gz inner", "mask"]))
    folder = fresh(scratch / "nifti")
    if which == "image .nii":
        buf = src.nifti.read_bytes()
        mutated, steps = mutate(data, buf, lambda d, b: binary_field_mutation(d, b, NIFTI1_FIELDS), hot=352)
        path = folder / "fzvol.nii"
    elif which == "image .nii.gz":
        mutated, steps = mutate(data, src.nifti_gz.read_bytes(), None, hot=64)
        path = folder / "fzvol.nii.gz"
    else:
        plain = gzip.decompress((src.mask_gz if which == "mask" else src.nifti_gz).read_bytes())
        mutated, steps = mutate(data, plain, lambda d, b: binary_field_mutation(d, b, NIFTI1_FIELDS), hot=352)
        mutated = gzip.compress(mutated, mtime=0)
        path = folder / "fzvol.nii.gz"
    path.write_bytes(mutated)
    case = f"hippocampus_001 {which} mutated: {'; '.join(steps)}"
    note(case)
    if which == "mask":
        judge(worker.run("mask", path), path.name, case)
        judge(worker.run("mask", path, image=str(src.nifti)), path.name, case)
        judge(worker.run("volume_adapter", src.nifti, mask=str(path)), path.name, case)
    else:
        judge(worker.run("volume", path), path.name, case)
        judge(worker.run("volume_adapter", path), path.name, case)


def case_nrrd(data: Any, src: Sources, worker: ReaderWorker, scratch: Path) -> None:
    import hypothesis.strategies as st
    from hypothesis import note

    source = data.draw(st.sampled_from([src.nrrd_raw, src.nrrd_gz]), label="encoding")
    buf = source.read_bytes()
    header_size = buf.index(b"\n\n") + 2
    mutated, steps = mutate(data, buf, text_field_op(header_lines=12), hot=header_size + 32)
    path = fresh(scratch / "nrrd") / "fzvol.nrrd"
    path.write_bytes(mutated)
    case = f"{source.name} mutated: {'; '.join(steps)}"
    note(case)
    judge(worker.run("volume", path), path.name, case)


#: DICOM data elements and values a corrupted or odd export may hold (None deletes the element)
DICOM_VALUES: dict[str, tuple[Any, ...]] = {
    "Rows": (0, 1, 65535, None),
    "Columns": (0, 1, 65535, None),
    "BitsAllocated": (0, 1, 7, 12, 64, None),
    "BitsStored": (0, 17, 64),
    "HighBit": (0, 31),
    "PixelRepresentation": (1, 2, None),
    "SamplesPerPixel": (0, 3, None),
    "PhotometricInterpretation": ("RGB", "PALETTE COLOR", "YBR_FULL", None),
    "NumberOfFrames": (0, 5, 1000000),
    "PixelSpacing": (["0", "0"], ["-1", "1"], ["nan", "1"], ["1"], ["x", "y"], None),
    "ImagePositionPatient": (["nan", "0", "0"], ["1e308", "0", "0"], ["1"], None),
    "ImageOrientationPatient": (["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6, None),
    "InstanceNumber": (None, 1, -5, "x"),
    "RescaleSlope": ("0", "nan", "1e308", "inf", "x"),
    "RescaleIntercept": ("nan", "-1e308", "x"),
    "SeriesInstanceUID": ("1.2.3.4",),
    "PixelData": (b"", b"\x00" * 100),
}
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.3.4.5",  # unknown
)


def dicom_element_mutation(data: Any, raw: bytes) -> tuple[bytes, str]:
    """Set one data element of a DICOM file (or its transfer syntax) to an odd value, written by pydicom."""
    import hypothesis.strategies as st
    import pydicom
    from pydicom import config

    keyword = data.draw(st.sampled_from([*DICOM_VALUES, "TransferSyntaxUID"]), label="element")
    choices = TRANSFER_SYNTAXES if keyword == "TransferSyntaxUID" else DICOM_VALUES[keyword]
    value: Any = data.draw(st.sampled_from(choices), label="value")
    modes = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        elif value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    except Exception:  # pydicom cannot parse the (already mutated) file or write this value: unchanged
        return raw, f"{keyword} = {value!r} (not writable; unchanged)"
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
    return out.getvalue(), f"{keyword} = {value!r}"


def case_dicom(data: Any, src: Sources, worker: ReaderWorker, scratch: Path) -> None:
    import hypothesis.strategies as st
    from hypothesis import note

    folder = fresh(scratch / "fzseries")
    for slice_file in sorted(src.dicom.glob("*.dcm")):
        shutil.copyfile(slice_file, folder / slice_file.name)
    victim = folder / f"slice_{data.draw(st.integers(0, 2), label='slice')}.dcm"
    buf = victim.read_bytes()
    pixel_offset = buf.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData
    mutated, steps = mutate(data, buf, dicom_element_mutation, hot=max(pixel_offset, 132))
    victim.write_bytes(mutated)
    case = f"DICOM series, {victim.name} mutated: {'; '.join(steps)}"
    note(case)
    judge(worker.run("volume", folder), folder.name, case)


# ---------------------------------------------------------------------------------------------- the tests

FAST = {"max_examples": 60}
#: the slow variant's examples per file type; exploratory runs: MEDCL_FUZZ_EXAMPLES=5000 MEDCL_FUZZ_RANDOM=1
SLOW = {"max_examples": int(os.environ.get("MEDCL_FUZZ_EXAMPLES", "1000"))}


def fuzz(case: Callable[..., None], examples: int, **bound: Any) -> None:
    """A hypothesis test running ``case`` ``examples`` times (derandomized, no example database)."""
    from datetime import timedelta

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    phases = (Phase.explicit, Phase.generate) if examples <= FAST["max_examples"] else tuple(Phase)
    ran: list[int] = []

    @settings(
        max_examples=examples,
        derandomize=not os.environ.get("MEDCL_FUZZ_RANDOM"),
        database=None,
        deadline=timedelta(seconds=2 * CALL_TIMEOUT_S),
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )
    @given(data=st.data())
    def run(data: Any) -> None:
        ran.append(1)
        case(data, **bound)

    run()  # hypothesis raises with the failing case
    # The harness must have exercised the readers (not, e.g., rejected every draw).
    assert len(ran) >= examples // 2, f"only {len(ran)} of {examples} examples ran"
    if os.environ.get("MEDCL_FUZZ_VERBOSE"):
        print(f"{case.__name__}: {len(ran)} examples", file=sys.stderr)
        for (entry, outcome), n in sorted(OUTCOMES.items()):
            print(f"  {entry:40s} {outcome:28s} {n}", file=sys.stderr)
        OUTCOMES.clear()


TARGETS = ("wfdb", "edf", "bdf", "csv", "nifti", "nrrd", "dicom")


def _run_target(target: str, examples: int, sources: Sources, worker: ReaderWorker, scratch: Path) -> None:
    common = {"worker": worker, "scratch": scratch}
    if target == "wfdb":
        fuzz(case_wfdb, examples, src=sources, **common)
    elif target == "edf":
        if sources.edf is None:
            pytest.skip("../shared/data/eeg_mental_arithmetic not found: the real EDF is fuzzed only with it")
        fuzz(case_edf, examples, source=sources.edf, suffix=".edf", **common)
    elif target == "bdf":
        fuzz(case_edf, examples, source=sources.bdf, suffix=".bdf", **common)
    elif target == "csv":
        fuzz(case_csv, examples, src=sources, **common)
    elif target == "nifti":
        fuzz(case_nifti, examples, src=sources, **common)
    elif target == "nrrd":
        fuzz(case_nrrd, examples, src=sources, **common)
    else:
        fuzz(case_dicom, examples, src=sources, **common)


@pytest.mark.parametrize("target", TARGETS)
def test_mutated_files_raise_medcl_errors_naming_them(
    target: str, sources: Sources, worker: ReaderWorker, scratch: Path
) -> None:
    _run_target(target, FAST["max_examples"], sources, worker, scratch)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_mutated_files_raise_medcl_errors_naming_them_long(
    target: str, sources: Sources, worker: ReaderWorker, scratch: Path
) -> None:
    _run_target(target, SLOW["max_examples"], sources, worker, scratch)


def test_the_judge_and_the_worker_can_fail(sources: Sources, worker: ReaderWorker, scratch: Path) -> None:
    """The harness itself: a clean file reads within the contract; a raw library exception, an error that
    does not name the file, a broken contract and a hang each fail the judge."""
    outcomes = worker.run("signal", sources.wfdb)
    assert {out["status"] for out in outcomes.values()} == {"ok"}
    judge(outcomes, sources.wfdb.name, "clean record")
    judge(worker.run("volume", sources.nifti), sources.nifti.name, "clean volume")
    judge(worker.run("volume", sources.dicom), sources.dicom.name, "clean series")
    judge(worker.run("volume", sources.nrrd_gz), sources.nrrd_gz.name, "clean NRRD")

    raw = {"x": {"status": "raised", "type": "struct.error", "data_error": False, "medcl": False,
                 "message": "unpack requires a buffer", "traceback": ""}}  # fmt: skip
    nameless = {"x": {**raw["x"], "type": "medcl.errors.CorruptFileError", "data_error": True}}
    broken = {"x": {"status": "ok", "violations": ["3 infinite samples"]}}
    for outcome in (raw, nameless, broken, {"worker": {"status": "timeout"}}):
        with pytest.raises(pytest.fail.Exception):
            judge(outcome, "fzrec", "self-test")

    # A hang in the worker is cut off and reported, and the worker comes back for the next case.
    saved, worker.timeout_s = worker.timeout_s, 1.0
    try:
        started = time.monotonic()
        hung = worker.run("sleep", scratch, seconds=3600)  # includes starting a new worker
        assert hung["worker"]["status"] == "timeout" and time.monotonic() - started < 120.0
    finally:
        worker.timeout_s = saved
    assert worker.run("signal", sources.wfdb)["read_signal"]["status"] == "ok"


# ---------------------------------------------------------------------------------------- found cases
# Every bad file the fuzzer found a reader (or the load path behind it) mishandling, rebuilt exactly, with
# what happened before the fix and the error it gives now. They run in the worker like fuzz cases.


def _edit(data: bytes, *ops: tuple[Any, ...]) -> bytes:
    """Apply ``("xor", at, mask)``, ``("insert", at, bytes)``, ``("put", at, bytes)``, ``("cut", at)``,
    ``("replace", old, new)`` and ``("pack", at, struct code, value)`` edits in order."""
    out = bytearray(data)
    for op in ops:
        if op[0] == "xor":
            out[op[1]] ^= op[2]
        elif op[0] == "insert":
            out[op[1] : op[1]] = op[2]
        elif op[0] == "put":
            out[op[1] : op[1] + len(op[2])] = op[2]
        elif op[0] == "cut":
            del out[op[1] :]
        elif op[0] == "replace":
            assert bytes(op[1]) in out, op
            out = bytearray(bytes(out).replace(op[1], op[2], 1))
        else:
            out[op[1] : op[1] + struct.calcsize("<" + op[2])] = struct.pack("<" + op[2], op[3])
    return bytes(out)


def _series(src: Sources, folder: Path, victim: int, edit: Callable[[bytes], bytes]) -> Path:
    series = fresh(folder / "fzseries")
    for slice_file in sorted(src.dicom.glob("*.dcm")):
        shutil.copyfile(slice_file, series / slice_file.name)
    target = series / f"slice_{victim}.dcm"
    target.write_bytes(edit(target.read_bytes()))
    return series


def _series_element(src: Sources, folder: Path, victim: int, keyword: str, value: Any) -> Path:
    import pydicom
    from pydicom import config

    def edit(raw: bytes) -> bytes:
        modes = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
        config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
        try:
            ds = pydicom.dcmread(io.BytesIO(raw))
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
        finally:
            config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
        return out.getvalue()

    return _series(src, folder, victim, edit)


def _pixel_data_offset(raw: bytes) -> int:
    """Where the (7FE0,0010) element starts (explicit VR little endian: tag, 'OW', 2 reserved, length)."""
    return raw.rindex(b"\xe0\x7f\x10\x00OW")


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = fresh(folder) / name
    path.write_bytes(data)
    return path


def _wfdb(src: Sources, folder: Path, hea: Callable[[str], str], dat: Callable[[bytes], bytes]) -> Path:
    folder = fresh(folder)
    text = (src.wfdb.parent / f"{src.wfdb.name}.hea").read_text().replace(src.wfdb.name, "fzrec")
    (folder / "fzrec.hea").write_text(hea(text))
    (folder / "fzrec.dat").write_bytes(dat((src.wfdb.parent / f"{src.wfdb.name}.dat").read_bytes()))
    return folder / "fzrec"


def _ns(path: Path) -> int:
    """Signals in an EDF/BDF header (annotation signals included)."""
    return int(path.read_bytes()[252:256].decode("ascii"))


def _after(path: Path, text: bytes) -> int:
    """The position just after ``text`` in the file."""
    return path.read_bytes().index(text) + len(text)


def _edf_field(buf: bytes, offset: int, value: str) -> bytes:
    return buf[:offset] + value.encode().ljust(8) + buf[offset + 8 :]


def _nifti(src: Sources, *ops: tuple[Any, ...]) -> bytes:
    return _edit(src.nifti.read_bytes(), *ops)


@dataclass(frozen=True)
class Found:
    """A case the fuzzer found: how to rebuild the file, which entry point failed, how, and what it raises
    now."""

    name: str
    family: str
    build: Callable[[Sources, Path], Path]
    entry: str
    before: str
    now: str
    kwargs: tuple[tuple[str, Any], ...] = ()


FOUND = (
    Found(
        "dicom slice whose header ends before Rows (truncated at an element boundary)",
        "volume",
        lambda s, d: _series(s, d, 2, lambda r: r[: r.index(b"\x28\x00\x10\x00")]),
        "read_volume",
        "the slice was taken for a non-image file and left out: a 2-slice volume came back",
        "CorruptFileError",
    ),
    Found(
        "dicom slice truncated inside its file meta (SOP class UID cut to '1')",
        "volume",
        lambda s, d: _series(s, d, 1, lambda r: r[:167]),
        "read_volume",
        "the slice was left out silently",
        "CorruptFileError",
    ),
    Found(
        "dicom slice without Columns",
        "volume",
        lambda s, d: _series_element(s, d, 0, "Columns", None),
        "read_volume",
        "AttributeError: 'FileDataset' object has no attribute 'Columns'",
        "InvalidVolumeError",
    ),
    Found(
        "dicom slice whose InstanceNumber is text",
        "volume",
        lambda s, d: _series(
            s,
            d,
            1,
            lambda r: _edit(r, ("replace", b"\x20\x00\x13\x00IS\x02\x002 ", b"\x20\x00\x13\x00IS\x02\x00x ")),
        ),
        "read_volume",
        "ValueError: invalid literal for int() with base 10: 'x'",
        "InvalidVolumeError",
    ),
    Found(
        "dicom slice with an element after the pixel data declaring 4 GiB",
        "volume",
        lambda s, d: _series(
            s, d, 0, lambda r: r + b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", 0xFFFFFFF0)
        ),
        "read_volume",
        "pydicom read(4 GiB): MemoryError (wrapped as 'pixel data cannot be read (MemoryError)')",
        "CorruptFileError",
    ),
    Found(
        "dicom slice whose pixel data length runs past the end of the file",
        "volume",
        lambda s, d: _series(
            s, d, 0, lambda r: _edit(r, ("pack", _pixel_data_offset(r) + 8, "I", 0x7FFFFFF0))
        ),
        "read_volume",
        "pydicom read(2 GiB) of the pixel data: MemoryError",
        "CorruptFileError",
    ),
    Found(
        "dicom slice with an unknown VR ('TI') in its file meta",
        "volume",
        lambda s, d: _series(s, d, 0, lambda r: _edit(r, ("xor", 162, 0x01), ("cut", 166))),
        "read_volume",
        "the slice was left out silently (NotImplementedError once its SOP class was looked at)",
        "CorruptFileError",
    ),
    Found(
        "BDF record duration 'nan'",
        "signal",
        lambda s, d: _file(d, "fzrec.bdf", _edf_field(s.bdf.read_bytes(), 244, "nan")),
        "read_signal_header",
        "a NaN sampling rate in the header; read_signal: ValueError from SignalRecord",
        "CorruptFileError",
    ),
    Found(
        "BDF physical minimum 1e308",
        "signal",
        lambda s, d: _file(d, "fzrec.bdf", _edf_field(s.bdf.read_bytes(), 256 + 104 * _ns(s.bdf), "1e308")),
        "read_signal",
        "30000 infinite samples returned",
        "CorruptFileError",
    ),
    Found(
        "CSV whose header line is blank",
        "wearable",
        lambda s, d: _file(
            d, "fzrec.csv", _edit(s.csv.read_bytes(), ("replace", b"Time [s], RESP, PLETH, V, AVR, II", b""))
        ),
        "read_wearable",
        "the first data row became the column names; header and read disagreed on the length",
        "CorruptFileError",
        (("fs", 125.0),),
    ),
    Found(
        "CSV with a lone carriage return in a row",
        "wearable",
        lambda s, d: _file(d, "fzrec.csv", _edit(s.csv.read_bytes(), ("xor", 54, 0x38))),
        "read_wearable",
        "header said 1500 samples, the read returned 1501",
        "ok",
        (("fs", 125.0),),
    ),
    Found(
        "CSV cut after its first byte",
        "signal",
        lambda s, d: _file(d, "fzrec.csv", b"T"),
        "read_signal_header",
        "IndexError: single positional indexer is out-of-bounds",
        "CorruptFileError",
    ),
    Found(
        "CSV with an infinite time stamp",
        "signal",
        lambda s, d: _file(d, "fzrec.csv", _edit(s.csv.read_bytes(), ("replace", b"\n0.016,", b"\ninf,"))),
        "read_signal",
        "ValueError: sampling frequency must be > 0, got nan",
        "CorruptFileError",
    ),
    Found(
        "CSV that trips pandas' column selection (xor byte 75)",
        "wearable",
        lambda s, d: _file(d, "fzrec.csv", _edit(s.csv.read_bytes(), ("xor", 75, 0x01))),
        "read_wearable_header",
        "ValueError: zip() argument 2 is shorter than argument 1 (from pandas)",
        "CorruptFileError",
        (("fs", 125.0),),
    ),
    Found(
        "NIfTI datatype code -1",
        "volume",
        lambda s, d: _file(d, "fzvol.nii", _nifti(s, ("pack", 70, "h", -1))),
        "read_volume",
        "KeyError: -1 (nibabel)",
        "CorruptFileError",
    ),
    Found(
        "NIfTI mask with scl_slope 1e30",
        "mask",
        lambda s, d: _file(
            d,
            "fzvol.nii.gz",
            gzip.compress(_edit(gzip.decompress(s.mask_gz.read_bytes()), ("pack", 112, "f", 1e30))),
        ),
        "read_mask",
        "labels overflowed int64 to -9223372036854775808",
        "InvalidVolumeError",
    ),
    Found(
        "NIfTI qform with qfac 0 (pixdim[0] = 0, no sform)",
        "volume",
        lambda s, d: _file(d, "fzvol.nii", _nifti(s, ("pack", 254, "h", 0), ("pack", 76, "f", 0.0))),
        "read_volume",
        "nibabel HeaderDataError: qfac (pixdim[0]) should be 1 or -1",
        "InvalidVolumeError",
    ),
    Found(
        "NIfTI scl_inter 3.4e38",
        "volume_adapter",
        lambda s, d: _file(d, "fzvol.nii", _nifti(s, ("pack", 116, "f", 3.4e38))),
        "VolumeAdapter.load_sample",
        "62475 NaN voxels after the z-score",
        "InvalidVolumeError",
    ),
    Found(
        "NIfTI voxel size 1024 mm (one corrupted byte of pixdim[1])",
        "volume_adapter",
        lambda s, d: _file(d, "fzvol.nii", _nifti(s, ("put", 83, b"D"))),
        "VolumeAdapter.load_sample",
        "RuntimeError from MONAI (out of memory resampling a 35 m long image to 1 mm)",
        "InvalidVolumeError",
    ),
    Found(
        "NIfTI .gz whose dim asks for 62 GB",
        "volume",
        lambda s, d: _file(
            d, "fzvol.nii.gz", gzip.compress(_nifti(s, ("pack", 42, "h", 32767), ("pack", 44, "h", 32767)))
        ),
        "read_volume",
        "nibabel allocated the declared size up front (MemoryError under a memory limit)",
        "CorruptFileError",
    ),
    Found(
        "NRRD with four kinds for three axes",
        "volume",
        lambda s, d: _file(
            d,
            "fzvol.nrrd",
            _edit(s.nrrd_raw.read_bytes(), ("replace", b"kinds: domain", b"kinds: domain domain")),
        ),
        "read_volume",
        "IndexError: index 3 is out of bounds for axis 0 with size 3",
        "CorruptFileError",
    ),
    Found(
        "NRRD cut inside its header",
        "volume",
        lambda s, d: _file(
            d, "fzvol.nrrd", _edit(s.nrrd_raw.read_bytes(), ("cut", _after(s.nrrd_raw, b"space origin: ")))
        ),
        "read_volume",
        "IndexError: string index out of range (pynrrd)",
        "CorruptFileError",
    ),
    Found(
        "NRRD dimension 999999999999999999999",
        "volume",
        lambda s, d: _file(
            d,
            "fzvol.nrrd",
            _edit(s.nrrd_raw.read_bytes(), ("replace", b"dimension: 3", b"dimension: 999999999999999999999")),
        ),
        "read_volume",
        "OverflowError: cannot fit 'int' into an index-sized integer",
        "UnsupportedFormatError",
    ),
    Found(
        "WFDB record without a length whose .dat is empty",
        "signal",
        lambda s, d: _wfdb(s, d, lambda h: h.replace("fzrec 12 100 1000", "fzrec 12 1000"), lambda b: b""),
        "read_signal",
        "ConfigError: sample range [0, None) is outside the record's 0",
        "CorruptFileError",
    ),
    Found(
        "WFDB sampling rate 2147483648 Hz",
        "signal_adapter",
        lambda s, d: _wfdb(s, d, lambda h: h.replace("fzrec 12 100 ", "fzrec 12 2147483648 "), lambda b: b),
        "SignalAdapter.preprocess_trial",
        "ConfigError from the resampler (a config error, so on_error='skip' did not skip it)",
        "CorruptFileError",
    ),
)


@pytest.mark.parametrize("found", FOUND, ids=[f.name for f in FOUND])
def test_cases_the_fuzzer_found_stay_fixed(
    found: Found, sources: Sources, worker: ReaderWorker, scratch: Path
) -> None:
    path = found.build(sources, scratch / "found")
    name = "fzseries" if path.is_dir() else path.name.split(".")[0]
    outcomes = worker.run(found.family, path, **dict(found.kwargs))
    judge(outcomes, name, f"{found.name} (before the fix: {found.before})")
    outcome = outcomes[found.entry]
    assert outcome.get("type", outcome["status"]).rsplit(".", 1)[-1] == found.now, outcome


def test_volume_preprocessing_refuses_a_resampling_that_would_not_fit(
    sources: Sources, worker: ReaderWorker, scratch: Path
) -> None:
    raw = bytearray(sources.nifti.read_bytes())
    for k in (1, 2, 3):  # pixdim[1:4] = 30 mm: the qform scales each axis 30x
        raw[76 + 4 * k : 80 + 4 * k] = struct.pack("<f", 30.0)
    path = fresh(scratch / "spacing") / "fzvol.nii"
    path.write_bytes(bytes(raw))
    judge(worker.run("volume_adapter", path), path.name, "hippocampus_001 with 30 mm voxels")


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, str(REPO_ROOT))
    _worker_main()
