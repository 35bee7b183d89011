"""Index a volume dataset once: read and check every image and mask, quarantine the bad ones, save it.

:func:`index_volumes` lists the studies with the layout's manifest builder
(:mod:`modalities.volumes.manifests`; no file is read), then reads every image in full with
:func:`~modalities.volumes.readers.read_volume` (header checks, then the voxels: truncation, NaN) and its
mask with :func:`~modalities.volumes.readers.read_mask` (whole non-negative labels, on the image's grid).
It never stops at the first bad file: each failure becomes one quarantine row naming the file at fault
and the reason in words, and only usable studies stay in the manifest, with the ``format``, ``shape``
(``"HxWxD"`` as stored), ``spacing`` (``"1x1x1"``, mm) and ``channels`` read from the image (and
``modality`` from the DICOM header where the layout did not say).

:func:`save_index` writes the result as the signal index does: ``trials.csv`` (usable studies),
``quarantine.csv`` (always; ``path``, ``reason``, ``error``) and ``index.json`` (layout, root, counts,
label names, settings, medcl version); :func:`load_index` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import medcl
from medcl.errors import DataError
from modalities.volumes.manifests import (
    MISSING_COLUMNS,
    TRIAL_COLUMNS,
    VolumeManifest,
    build_manifest,
    detect_layout,
)
from modalities.volumes.readers import GRID_ATOL, Volume, read_mask, read_volume

__all__ = [
    "INDEX_COLUMNS",
    "QUARANTINE_COLUMNS",
    "VolumeIndexResult",
    "check_study",
    "format_triple",
    "index_volumes",
    "load_index",
    "parse_triple",
    "save_index",
]

QUARANTINE_COLUMNS: tuple[str, ...] = MISSING_COLUMNS
"""``path`` of the file at fault (the image, or the mask for a mask problem), ``reason`` in words, ``error``:
the exception type (``CorruptFileError``, ``UnsupportedFormatError``, ``InvalidVolumeError``, ...),
``NotOnDisk``, ``Unpaired`` or ``Duplicate`` for what the layout names but cannot pair."""

INDEX_COLUMNS: tuple[str, ...] = (*TRIAL_COLUMNS, "format", "shape", "spacing", "channels")
"""Columns of an indexed trials table, in this order (then the layout's extra columns)."""


def format_triple(values: tuple[float, ...] | list[float], integer: bool = False) -> str:
    """``(35, 51, 35)`` → ``"35x51x35"``; ``(0.664062, 0.664062, 2.1)`` → ``"0.664062x0.664062x2.1"``."""
    return "x".join(str(int(v)) if integer else f"{float(v):.6g}" for v in values)


def parse_triple(text: str) -> tuple[float, float, float]:
    """Inverse of :func:`format_triple` (floats)."""
    parts = [float(p) for p in str(text).split("x")]
    if len(parts) != 3:
        raise ValueError(f"expected three 'x'-separated numbers, got {text!r}")
    return (parts[0], parts[1], parts[2])


@dataclass(frozen=True, eq=False)
class VolumeIndexResult:
    """The outcome of :func:`index_volumes`.

    Attributes:
        manifest: the usable studies (columns :data:`INDEX_COLUMNS`); its ``missing`` is the quarantine.
        quarantine: one row per unusable file, columns :data:`QUARANTINE_COLUMNS`.
        dataset: the layout used (after ``"auto"`` detection); root: what was indexed.
        settings: the checks applied and the builder's arguments.
    """

    manifest: VolumeManifest
    quarantine: pd.DataFrame
    dataset: str
    root: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_listed(self) -> int:
        return len(self.manifest.trials) + len(self.quarantine)

    def summary(self) -> str:
        """One line, e.g. ``"indexed 218 of 220 studies (218 patients); 2 quarantined → see
        quarantine.csv"``."""
        kept = len(self.manifest.trials)
        text = f"indexed {kept} of {self.n_listed} studies ({self.manifest.n_patients} patients)"
        n_bad = len(self.quarantine)
        return text + (f"; {n_bad} quarantined → see quarantine.csv" if n_bad else "; none quarantined")


def _reason(exc: Exception) -> tuple[str, str, str | None]:
    """(reason, error type, file at fault) of a failure; never a traceback."""
    if isinstance(exc, DataError):
        return exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__, exc.path
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error ({type(exc).__name__}): {message}", type(exc).__name__, None


def check_study(
    path: str | Path, mask_path: str | Path | None = None, grid_atol: float = GRID_ATOL
) -> Volume:
    """Read and check one study's image (and mask, against the image's grid); return the image.

    Raises:
        DataError: naming the file at fault (see :mod:`modalities.volumes.readers`).
    """
    image = read_volume(path)
    if mask_path is not None and str(mask_path):
        read_mask(mask_path, image=image, atol=grid_atol)
    return image


def index_volumes(
    dataset: str,
    root: str | Path,
    grid_atol: float = GRID_ATOL,
    progress: Callable[[int, int], None] | None = None,
    **builder_kwargs: Any,
) -> VolumeIndexResult:
    """Build ``dataset``'s manifest, read every image and mask in full, and quarantine the unusable ones.

    Args:
        dataset: ``"msd"``, ``"btcv"``, ``"csv"``, ``"paired"`` or ``"auto"``
            (:func:`~modalities.volumes.manifests.detect_layout`).
        root: the dataset folder (or ``"bundled:msd_hippocampus"``).
        grid_atol: tolerance (mm) of the mask-on-image-grid check.
        progress: called as ``progress(done, total)`` after each study.
        builder_kwargs: passed to the layout's builder (``table=`` for CSV, ``include_test=`` for
            MSD/BTCV, ``modality=`` for CSV/paired, ...).

    Raises:
        ConfigError / DataError: the builder cannot start (root missing, layout not recognised, a broken
            ``dataset.json`` or CSV). Bad image or mask files never raise.
    """
    if dataset == "auto":
        dataset = detect_layout(root)
    listed = build_manifest(dataset, root, **builder_kwargs)
    trials = listed.trials
    quarantine: list[tuple[str, str, str]] = [
        (str(p), str(r), str(e))
        for p, r, e in zip(
            listed.missing["path"], listed.missing["reason"], listed.missing["error"], strict=True
        )
    ]
    found: list[dict[str, Any]] = []
    keep: list[int] = []
    total = len(trials)
    for i, row in enumerate(trials.itertuples(index=False)):
        try:
            image = check_study(row.path, row.mask_path or None, grid_atol)
            found.append(
                {
                    "format": image.format,
                    "shape": format_triple(image.shape, integer=True),
                    "spacing": format_triple(image.spacing),
                    "channels": image.channels,
                    "modality": row.modality or (image.modality if image.modality in ("CT", "MR") else ""),
                }
            )
            keep.append(i)
        except Exception as exc:  # one bad file must never stop the index
            reason, error, at_fault = _reason(exc)
            quarantine.append((at_fault or str(row.path), reason, error))
        if progress is not None:
            progress(i + 1, total)
    good = trials.iloc[keep].reset_index(drop=True)
    if len(good):
        read = pd.DataFrame(found)
        good["modality"] = read["modality"].to_numpy()
        for column in ("format", "shape", "spacing", "channels"):
            good[column] = read[column].to_numpy()
    else:
        good = good.assign(format="", shape="", spacing="", channels=0)
    extras = [c for c in good.columns if c not in INDEX_COLUMNS]
    good = good[[*INDEX_COLUMNS, *extras]]
    good["channels"] = good["channels"].astype("int64")
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    manifest = VolumeManifest(good, quarantine_frame.copy(), listed.label_names, listed.layout)
    settings = {
        "grid_atol": float(grid_atol),
        "builder_kwargs": {k: str(v) for k, v in builder_kwargs.items()},
    }
    return VolumeIndexResult(manifest, quarantine_frame, dataset, str(root), settings)


def save_index(result: VolumeIndexResult, out_dir: str | Path) -> Path:
    """Write ``trials.csv``, ``quarantine.csv`` (always, with its header even when empty) and
    ``index.json`` into ``out_dir`` (created if needed). Returns ``out_dir`` as a Path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = result.manifest
    manifest.trials.to_csv(out / "trials.csv", index=False)
    result.quarantine.to_csv(out / "quarantine.csv", index=False)
    info = {
        "modality": "volume",
        "dataset": result.dataset,
        "root": result.root,
        "medcl_version": medcl.__version__,
        "label_names": None if manifest.label_names is None else list(manifest.label_names),
        "counts": {
            "listed": result.n_listed,
            "indexed": len(manifest.trials),
            "quarantined": len(result.quarantine),
            "patients": manifest.n_patients,
            "labelled": int((manifest.trials["mask_path"] != "").sum()),
        },
        "settings": result.settings,
        "summary": result.summary(),
    }
    (out / "index.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_index(out_dir: str | Path) -> VolumeManifest:
    """Read an index written by :func:`save_index` back (ids, paths and ``""`` masks kept as text).

    Raises:
        DataError: ``out_dir`` holds no volume index, or its trials lack a column.
    """
    out = Path(out_dir)
    for name in ("index.json", "trials.csv"):
        if not (out / name).is_file():
            raise DataError(
                out / name, "no saved index here", hint="run medcl index ... --modality volume first"
            )
    info = json.loads((out / "index.json").read_text(encoding="utf-8"))
    trials = pd.read_csv(out / "trials.csv", dtype=str, keep_default_na=False)
    absent = [c for c in INDEX_COLUMNS if c not in trials.columns]
    if absent:
        raise DataError(out / "trials.csv", f"saved trials lack column(s) {', '.join(absent)}")
    trials["channels"] = trials["channels"].astype("int64")
    quarantine_path = out / "quarantine.csv"
    if quarantine_path.is_file():
        missing = pd.read_csv(quarantine_path, dtype=str, keep_default_na=False)
    else:
        missing = pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    names = info.get("label_names")
    return VolumeManifest(trials, missing, tuple(names) if names else None, str(info.get("dataset", "")))
