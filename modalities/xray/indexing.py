"""Index an X-ray dataset once: read and check every image, quarantine the bad ones, save it.

:func:`index_xrays` lists the images with the layout's manifest builder (:mod:`modalities.xray.manifests`;
no image is read), then decodes every image in full with :func:`~modalities.xray.readers.read_xray`
(format from the content, truncation, decodability, constant images) and checks its size (every side at
least ``min_size`` pixels). It never stops at the first bad file: each failure becomes one quarantine row
naming the file and the reason in words, and only usable images stay in the manifest, with what was read:
``format`` (``png``/``jpeg``/``dicom``), ``height``, ``width``, ``bits_stored``, ``photometric``, and
``pixel_spacing`` (``"0.139x0.139"`` mm, or ``""``). Where the layout gives no view, a DICOM's
``ViewPosition`` fills ``view``/``view_raw``. With ``views``, images of another known view are left out
unread (counted in ``excluded``); images of unknown view are read, and kept when the file itself names a
wanted view.

:func:`save_index` writes ``trials.csv`` (usable images), ``quarantine.csv`` (always; ``path``, ``reason``,
``error``) and ``index.json`` (layout, root, counts, label names, what was excluded on purpose, settings,
medcl version); :func:`load_index` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import medcl
from medcl.errors import ConfigError, DataError, UnsupportedFormatError
from modalities.xray.manifests import (
    MISSING_COLUMNS,
    TRIAL_COLUMNS,
    XrayManifest,
    build_manifest,
    detect_layout,
    filter_views,
    normalize_view,
    view_set,
)
from modalities.xray.readers import XrayImage, read_xray

__all__ = [
    "INDEX_COLUMNS",
    "MIN_SIZE",
    "QUARANTINE_COLUMNS",
    "XrayIndexResult",
    "check_image",
    "index_xrays",
    "load_index",
    "save_index",
]

QUARANTINE_COLUMNS: tuple[str, ...] = MISSING_COLUMNS
"""``path`` of the file at fault, ``reason`` in words, ``error``: the exception type
(``CorruptFileError``, ``UnsupportedFormatError``, ``InvalidVolumeError``, ...) or ``NotOnDisk``,
``Duplicate``, ``BadRow`` for what the layout names but cannot use."""

INDEX_COLUMNS: tuple[str, ...] = (
    *TRIAL_COLUMNS,
    "format",
    "height",
    "width",
    "bits_stored",
    "photometric",
    "pixel_spacing",
)
"""Columns of an indexed trials table, in this order (then the layout's extra columns)."""

MIN_SIZE: int = 64
"""Default smallest side (pixels) of a usable radiograph."""


@dataclass(frozen=True, eq=False)
class XrayIndexResult:
    """The outcome of :func:`index_xrays`.

    Attributes:
        manifest: the usable images (columns :data:`INDEX_COLUMNS`); its ``missing`` is the quarantine.
        quarantine: one row per unusable file, columns :data:`QUARANTINE_COLUMNS`.
        dataset: the layout used (after ``"auto"`` detection); root: what was indexed.
        settings: the checks applied and the builder's arguments.
    """

    manifest: XrayManifest
    quarantine: pd.DataFrame
    dataset: str
    root: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_listed(self) -> int:
        return len(self.manifest.trials) + len(self.quarantine)

    def summary(self) -> str:
        """One line, e.g. ``"indexed 648 of 667 images (597 studies, 349 patients); 19 quarantined → see
        quarantine.csv; excluded on purpose: 84 modality CT"``."""
        m = self.manifest
        text = (
            f"indexed {len(m.trials)} of {self.n_listed} images ({m.n_studies} studies, "
            f"{m.n_patients} patients)"
        )
        n_bad = len(self.quarantine)
        text += f"; {n_bad} quarantined → see quarantine.csv" if n_bad else "; none quarantined"
        if m.excluded:
            text += "; excluded on purpose: " + ", ".join(f"{n} {why}" for why, n in m.excluded.items())
        return text


def _reason(exc: Exception) -> tuple[str, str, str | None]:
    """(reason, error type, file at fault) of a failure; never a traceback."""
    if isinstance(exc, DataError):
        return exc.reason + (f" ({exc.hint})" if exc.hint else ""), type(exc).__name__, exc.path
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error ({type(exc).__name__}): {message}", type(exc).__name__, None


def check_image(path: str | Path, min_size: int = MIN_SIZE, voi: str = "auto") -> XrayImage:
    """Read one image in full and check its size; return it.

    Raises:
        DataError: naming the file (see :mod:`modalities.xray.readers`); ``UnsupportedFormatError`` for an
            image with a side under ``min_size`` pixels.
    """
    image = read_xray(path, voi=voi)
    if min(image.shape) < min_size:
        raise UnsupportedFormatError(
            path,
            f"the image is {image.shape[0]}x{image.shape[1]} pixels, smaller than {min_size} on a side",
            "a thumbnail is no radiograph to learn from; lower min_size if it is wanted",
        )
    return image


def index_xrays(
    dataset: str,
    root: str | Path,
    min_size: int = MIN_SIZE,
    voi: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    **builder_kwargs: Any,
) -> XrayIndexResult:
    """Build ``dataset``'s manifest, read every image in full, and quarantine the unusable ones.

    Args:
        dataset: ``"covid_cxr"``, ``"mimic_cxr"``, ``"chexpert"``, ``"nih"`` or ``"auto"``
            (:func:`~modalities.xray.manifests.detect_layout`).
        root: the dataset folder.
        min_size: smallest usable side in pixels.
        voi: DICOM VOI handling of the check read (``"auto"`` or ``"minmax"``).
        progress: called as ``progress(done, total)`` after each image.
        builder_kwargs: passed to the layout's builder (``views=``, ``csv=`` for CheXpert/NIH,
            ``modalities=``/``image_dir=`` for covid_cxr, ``labeler=`` for MIMIC, ...).

    Raises:
        ConfigError / DataError: the builder cannot start (root missing, layout not recognised, a broken
            table). Bad image files never raise.
    """
    if int(min_size) < 2:
        raise ConfigError(f"min_size must be >= 2 pixels, got {min_size}")
    if dataset == "auto":
        dataset = detect_layout(root)
    views = builder_kwargs.pop("views", None)
    wanted = view_set(views)
    listed = build_manifest(dataset, root, **builder_kwargs)
    excluded = dict(listed.excluded)
    trials = listed.trials
    if wanted is not None and "" not in wanted:
        # Images of a known, unwanted view are not read; those of unknown view are (a DICOM may say).
        trials = filter_views(trials, sorted(wanted | {""}), excluded)
    quarantine: list[tuple[str, str, str]] = [
        (str(p), str(r), str(e))
        for p, r, e in zip(
            listed.missing["path"], listed.missing["reason"], listed.missing["error"], strict=True
        )
    ]
    found: list[dict[str, Any]] = []
    keep: list[int] = []
    total = len(trials)
    for i, path in enumerate(trials["path"]):
        try:
            image = check_image(path, int(min_size), voi)
            spacing = image.pixel_spacing
            found.append(
                {
                    "format": image.source_format,
                    "height": str(image.shape[0]),
                    "width": str(image.shape[1]),
                    "bits_stored": str(image.bits_stored),
                    "photometric": image.photometric,
                    "pixel_spacing": "" if spacing is None else f"{spacing[0]:.6g}x{spacing[1]:.6g}",
                    "file_view": image.view or "",
                }
            )
            keep.append(i)
        except Exception as exc:  # one bad file must never stop the index
            reason, error, at_fault = _reason(exc)
            quarantine.append((at_fault or str(path), reason, error))
        if progress is not None:
            progress(i + 1, total)
    good = trials.iloc[keep].reset_index(drop=True)
    read = pd.DataFrame(found, columns=[*INDEX_COLUMNS[len(TRIAL_COLUMNS) :], "file_view"])
    for column in INDEX_COLUMNS[len(TRIAL_COLUMNS) :]:
        good[column] = read[column].to_numpy() if len(good) else []
    if len(good):
        fill = (good["view"] == "") & (read["file_view"].to_numpy() != "")
        good.loc[fill, "view_raw"] = read["file_view"].to_numpy()[fill.to_numpy()]
        good.loc[fill, "view"] = [normalize_view(v) for v in good.loc[fill, "view_raw"]]
    extras = [c for c in good.columns if c not in INDEX_COLUMNS]
    good = good[[*INDEX_COLUMNS, *extras]].astype(str)
    if wanted is not None:
        good = filter_views(good, views, excluded).reset_index(drop=True)
        good["sample_index"] = good.groupby("trial_id", sort=False).cumcount().astype(str)
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS))
    manifest = XrayManifest(good, quarantine_frame.copy(), listed.label_names, listed.layout, excluded)
    if views is not None:
        builder_kwargs["views"] = views
    settings = {
        "min_size": int(min_size),
        "voi": voi,
        "builder_kwargs": {k: _plain(v) for k, v in builder_kwargs.items()},
    }
    return XrayIndexResult(manifest, quarantine_frame, dataset, str(root), settings)


def _plain(value: Any) -> Any:
    """A builder argument as JSON data (tuples → lists, anything else → its text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def save_index(result: XrayIndexResult, out_dir: str | Path) -> Path:
    """Write ``trials.csv``, ``quarantine.csv`` (always, with its header even when empty) and
    ``index.json`` into ``out_dir`` (created if needed). Returns ``out_dir`` as a Path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = result.manifest
    manifest.trials.to_csv(out / "trials.csv", index=False)
    result.quarantine.to_csv(out / "quarantine.csv", index=False)
    trials = manifest.trials
    info = {
        "modality": "xray",
        "dataset": result.dataset,
        "root": result.root,
        "medcl_version": medcl.__version__,
        "label_names": None if manifest.label_names is None else list(manifest.label_names),
        "excluded": dict(manifest.excluded),
        "counts": {
            "listed": result.n_listed,
            "indexed": len(trials),
            "quarantined": len(result.quarantine),
            "patients": manifest.n_patients,
            "studies": manifest.n_studies,
            "labelled": int((trials["labels_known"] == "1").sum()),
            "with_report": int(((trials["report"] != "") | (trials["report_path"] != "")).sum()),
            "views": {str(k or "unknown"): int(v) for k, v in trials["view"].value_counts().items()},
        },
        "settings": result.settings,
        "summary": result.summary(),
    }
    (out / "index.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_index(out_dir: str | Path) -> XrayManifest:
    """Read an index written by :func:`save_index` back (every value as text, blanks as ``""``).

    Raises:
        DataError: ``out_dir`` holds no X-ray index, or its trials lack a column.
    """
    out = Path(out_dir)
    for name in ("index.json", "trials.csv"):
        if not (out / name).is_file():
            raise DataError(
                out / name, "no saved index here", hint="run medcl index ... --modality xray first"
            )
    info = json.loads((out / "index.json").read_text(encoding="utf-8"))
    if info.get("modality") != "xray":
        raise DataError(out / "index.json", f"an index of modality {info.get('modality')!r}, not xray")
    trials = pd.read_csv(out / "trials.csv", dtype=str, keep_default_na=False)
    absent = [c for c in INDEX_COLUMNS if c not in trials.columns]
    if absent:
        raise DataError(out / "trials.csv", f"saved trials lack column(s) {', '.join(absent)}")
    quarantine_path = out / "quarantine.csv"
    if quarantine_path.is_file():
        missing = pd.read_csv(quarantine_path, dtype=str, keep_default_na=False)
    else:
        missing = pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    names = info.get("label_names")
    return XrayManifest(
        trials,
        missing,
        tuple(names) if names else None,
        str(info.get("dataset", "")),
        {str(k): int(v) for k, v in (info.get("excluded") or {}).items()},
    )
