"""Manifest builders for volume datasets: one row per study (image + optional mask), from file names only.

Every builder returns a :class:`VolumeManifest` whose ``trials`` table has these columns, in this order:

================  =================================================================================
``path``          absolute path of the image (a file, or a DICOM series folder)
``mask_path``     absolute path of its label mask, ``""`` when the study has none
``patient_id``    the person, a string
``trial_id``      the study, a string unique in the manifest
``modality``      ``"CT"``, ``"MR"`` or ``""`` (unknown) — from ``dataset.json``, the MSD task, the
                  CSV's ``modality`` column or the builder's ``modality`` argument
``split``         the split the dataset itself assigns (``"training"``/``"test"`` for MSD and BTCV),
                  else ``""``
================  =================================================================================

plus, for the CSV layout, the table's other columns. ``missing`` (columns ``path``, ``reason``, ``error``)
lists what the layout names but cannot be used: files not on disk (``"NotOnDisk"``), an MSD/BTCV
training image without its label or a label without its image (``"Unpaired"``). Builders do not read
any image; :mod:`modalities.volumes.indexing` reads and checks every file.

Layouts:

- **MSD** (Medical Segmentation Decathlon, :func:`msd_manifest`): ``dataset.json`` with ``"training":
  [{"image", "label"}]``, ``"test": [image, ...]``, ``"labels"``, ``"modality"``; without
  ``dataset.json``, ``imagesTr/*.nii.gz`` paired with ``labelsTr/`` by file name (and ``imagesTs/``
  unlabelled), the task recognised from the case names (``hippocampus_001`` → Task04).
- **BTCV** (:func:`btcv_manifest`): ``imagesTr/img0001.nii.gz`` ↔ ``labelsTr/label0001.nii.gz``
  (the MONAI/UNETR layout; also the original ``Training/img`` ↔ ``Training/label``).
- **CSV** (:func:`csv_manifest`): a table with ``patient_id``, ``study_id``, ``image`` and optionally
  ``mask`` and ``modality``; relative paths are resolved against the table's folder.
- **paired** files (:func:`paired_manifest`): ``<case>_image.<ext>`` with ``<case>_label.<ext>`` (or
  ``_mask``), as PyRadiomics' test data.

Patients: MSD and BTCV publish no patient identifiers and each case is a different person, so every case
is its own patient and its own study (``patient_id == trial_id ==`` the case name); the same holds for
the paired layout. Only the CSV layout can say that several studies belong to one patient.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.bundled import resolve_root
from modalities.volumes.readers import VOLUME_SUFFIXES

__all__ = [
    "BTCV_LABELS",
    "BUILDERS",
    "MISSING_COLUMNS",
    "MSD_TASKS",
    "TRIAL_COLUMNS",
    "MsdTask",
    "VolumeManifest",
    "btcv_manifest",
    "build_manifest",
    "csv_manifest",
    "detect_layout",
    "msd_manifest",
    "paired_manifest",
]

TRIAL_COLUMNS: tuple[str, ...] = ("path", "mask_path", "patient_id", "trial_id", "modality", "split")
MISSING_COLUMNS: tuple[str, ...] = ("path", "reason", "error")


@dataclass(frozen=True)
class MsdTask:
    """One Medical Segmentation Decathlon task, as its ``dataset.json`` describes it."""

    name: str
    modality: str
    labels: tuple[str, ...]


#: MSD tasks by the prefix of their case names (``hippocampus_001`` → ``"hippocampus"``); labels and
#: modality as in each task's ``dataset.json`` (used when a copy lacks it).
MSD_TASKS: dict[str, MsdTask] = {
    "BRATS": MsdTask(
        "Task01_BrainTumour", "MR", ("background", "edema", "non-enhancing tumor", "enhancing tumour")
    ),
    "la": MsdTask("Task02_Heart", "MR", ("background", "left atrium")),
    "liver": MsdTask("Task03_Liver", "CT", ("background", "liver", "cancer")),
    "hippocampus": MsdTask("Task04_Hippocampus", "MR", ("background", "Anterior", "Posterior")),
    "prostate": MsdTask("Task05_Prostate", "MR", ("background", "PZ", "TZ")),
    "lung": MsdTask("Task06_Lung", "CT", ("background", "cancer")),
    "pancreas": MsdTask("Task07_Pancreas", "CT", ("background", "pancreas", "cancer")),
    "hepaticvessel": MsdTask("Task08_HepaticVessel", "CT", ("background", "Vessel", "Tumour")),
    "spleen": MsdTask("Task09_Spleen", "CT", ("background", "spleen")),
    "colon": MsdTask("Task10_Colon", "CT", ("background", "colon cancer primaries")),
}

#: BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen) label values 0-13.
BTCV_LABELS: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal vein and splenic vein",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)

_CASE_PREFIX = re.compile(r"^(?P<prefix>[A-Za-z]+)_\d+$")
_BTCV_IMAGE = re.compile(r"^img(?P<case>\d+)\.nii(\.gz)?$")
_BTCV_LABEL = re.compile(r"^label(?P<case>\d+)\.nii(\.gz)?$")


@dataclass(frozen=True, eq=False)
class VolumeManifest:
    """A volume dataset's studies and the entries that could not be listed.

    Attributes:
        trials: one row per study, columns :data:`TRIAL_COLUMNS` first (see the module docstring).
        missing: ``path``, ``reason``, ``error`` of every entry named by the layout but not usable.
        label_names: the mask's label names by value (``label_names[k]`` is label ``k``), when the
            layout says them (MSD ``dataset.json`` or a known MSD task, BTCV), else None.
        layout: the builder that made it (``"msd"``, ``"btcv"``, ``"csv"``, ``"paired"``).

    Raises:
        ConfigError: a required column is absent or a ``trial_id`` repeats.
    """

    trials: pd.DataFrame
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(MISSING_COLUMNS)))
    label_names: tuple[str, ...] | None = None
    layout: str = ""

    def __post_init__(self) -> None:
        absent = [c for c in TRIAL_COLUMNS if c not in self.trials.columns]
        if absent:
            raise ConfigError(f"volume manifest lacks column(s) {', '.join(absent)}")
        repeated = self.trials["trial_id"][self.trials["trial_id"].duplicated()].unique()
        if len(repeated):
            raise ConfigError(f"study id(s) {', '.join(map(str, repeated[:5]))} appear more than once")
        absent = [c for c in MISSING_COLUMNS if c not in self.missing.columns]
        if absent:
            raise ConfigError(f"volume manifest's missing table lacks column(s) {', '.join(absent)}")

    @property
    def n_patients(self) -> int:
        return int(self.trials["patient_id"].nunique())


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _root(root: str | Path) -> Path:
    return resolve_root(root).resolve()


def _case_name(path: Path) -> str:
    """File name without the volume suffix (``hippocampus_001.nii.gz`` → ``hippocampus_001``)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_volume_file(path: Path) -> bool:
    # "._name" files are macOS resource forks: the MSD tarballs are full of them.
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(VOLUME_SUFFIXES)


def _row(path: Path, mask: Path | None, case: str, modality: str, split: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": str(path),
        "mask_path": "" if mask is None else str(mask),
        "patient_id": case,
        "trial_id": case,
        "modality": modality,
        "split": split,
        **extra,
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = list(TRIAL_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    frame = pd.DataFrame(rows, columns=columns)
    for column in TRIAL_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    return frame.reset_index(drop=True)


@dataclass
class _Missing:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, path: str | Path, reason: str, error: str = "NotOnDisk") -> None:
        self.rows.append((str(path), reason, error))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(MISSING_COLUMNS))


def _modality_name(value: Any) -> str:
    """``"CT"``, ``"MR"`` or ``""`` from a modality text (``"MRI"``, ``"T2"``, ``"FLAIR"``, ``"CT"``, ...)."""
    text = str(value).strip().upper()
    if text in ("CT", "CTA", "PET-CT"):
        return "CT"
    if text in ("MR", "MRI") or text.startswith(("T1", "T2", "FLAIR", "ADC", "DWI", "PD", "MR")):
        return "MR"
    return ""


def _msd_task(cases: list[str]) -> MsdTask | None:
    """The MSD task whose case-name prefix every case has, if any."""
    prefixes = {m.group("prefix") for c in cases if (m := _CASE_PREFIX.match(c))}
    if len(prefixes) == 1 and len(cases) and all(_CASE_PREFIX.match(c) for c in cases):
        return MSD_TASKS.get(prefixes.pop())
    return None


# --------------------------------------------------------------------------------------------------
# MSD
# --------------------------------------------------------------------------------------------------


def msd_manifest(root: str | Path, include_test: bool = True) -> VolumeManifest:
    """Medical Segmentation Decathlon layout; every case is its own patient and study.

    With ``dataset.json``: its ``"training"`` pairs (paths relative to ``root``, ``"./imagesTr/..."``),
    its ``"test"`` images (unlabelled, ``split="test"``, when ``include_test``), its ``"labels"``
    (``{"0": "background", ...}``) and ``"modality"`` (``{"0": "MRI"}`` → ``"MR"``; all channels CT →
    ``"CT"``). Without it: every ``imagesTr/<case>.nii[.gz]`` with ``labelsTr/<case>.nii[.gz]`` (an image
    without its label, or a label without its image, goes to ``missing`` as ``"Unpaired"``), plus
    ``imagesTs/`` unlabelled; labels and modality from :data:`MSD_TASKS` when the case names show the
    task (``hippocampus_001`` → Task04: MR, background/Anterior/Posterior).

    Raises:
        ConfigError: ``root`` is not a folder, or it has neither ``dataset.json`` nor ``imagesTr/``.
        CorruptFileError: ``dataset.json`` is not valid JSON or lacks ``"training"``.
    """
    folder = _root(root)
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        return _msd_from_json(folder, meta_path, include_test)
    images_dir = folder / "imagesTr"
    if not images_dir.is_dir():
        raise ConfigError(
            f"{folder} is not an MSD folder: it has neither dataset.json nor imagesTr/ "
            "(choose another layout: btcv, csv or paired)"
        )
    missing = _Missing()
    images = {_case_name(p): p for p in sorted(images_dir.iterdir()) if _is_volume_file(p)}
    labels_dir = folder / "labelsTr"
    labels = (
        {_case_name(p): p for p in sorted(labels_dir.iterdir()) if _is_volume_file(p)}
        if labels_dir.is_dir()
        else {}
    )
    tests = {}
    if include_test and (folder / "imagesTs").is_dir():
        tests = {_case_name(p): p for p in sorted((folder / "imagesTs").iterdir()) if _is_volume_file(p)}
    task = _msd_task(sorted(set(images) | set(tests)))
    modality = task.modality if task else ""
    rows: list[dict[str, Any]] = []
    for case, image in images.items():
        label = labels.get(case)
        if label is None:
            missing.add(
                image,
                f"training image without a label: labelsTr/{image.name} is not there",
                "Unpaired",
            )
            continue
        rows.append(_row(image, label, case, modality, "training"))
    for case, label in labels.items():
        if case not in images:
            missing.add(label, f"label without an image: imagesTr/{label.name} is not there", "Unpaired")
    for case, image in tests.items():
        if case in images:
            missing.add(image, f"case {case} is in both imagesTr/ and imagesTs/", "Duplicate")
            continue
        rows.append(_row(image, None, case, modality, "test"))
    return VolumeManifest(_frame(rows), missing.frame(), task.labels if task else None, "msd")


def _msd_from_json(folder: Path, meta_path: Path, include_test: bool) -> VolumeManifest:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise CorruptFileError(meta_path, 'lacks the "training" list of {"image", "label"} pairs')
    label_names = _msd_labels(meta_path, meta.get("labels"))
    modalities = meta.get("modality")
    modality = ""
    if isinstance(modalities, dict) and modalities:
        kinds = {_modality_name(v) for v in modalities.values()}
        modality = kinds.pop() if len(kinds) == 1 else ""
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    for position, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            missing.add(
                meta_path, f"training entry {position} has no image path: {entry!r}", "CorruptFileError"
            )
            continue
        image = (folder / entry["image"]).resolve()
        label_text = entry.get("label")
        label = (folder / label_text).resolve() if isinstance(label_text, str) and label_text else None
        if not image.exists():
            missing.add(image, f"listed in dataset.json (training {position}) but not on disk")
            continue
        if label is not None and not label.exists():
            missing.add(label, f"label of {image.name} listed in dataset.json but not on disk")
            continue
        rows.append(_row(image, label, _case_name(image), modality, "training"))
    if include_test:
        for position, entry in enumerate(meta.get("test") or []):
            text = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(text, str):
                continue
            image = (folder / text).resolve()
            if not image.exists():
                missing.add(image, f"listed in dataset.json (test {position}) but not on disk")
                continue
            rows.append(_row(image, None, _case_name(image), modality, "test"))
    return VolumeManifest(_frame(rows), missing.frame(), label_names, "msd")


def _msd_labels(meta_path: Path, labels: Any) -> tuple[str, ...] | None:
    """``{"0": "background", "1": "Anterior"}`` → ``("background", "Anterior")``; values must be 0..K-1."""
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        by_value = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise CorruptFileError(
            meta_path, f'"labels" keys must be label values 0, 1, ..., got {list(labels)}'
        ) from None
    if sorted(by_value) != list(range(len(by_value))):
        raise CorruptFileError(meta_path, f'"labels" must number the labels 0..K-1, got {sorted(by_value)}')
    return tuple(by_value[k] for k in range(len(by_value)))


# --------------------------------------------------------------------------------------------------
# BTCV
# --------------------------------------------------------------------------------------------------

_BTCV_FOLDERS = (
    ("imagesTr", "labelsTr", "imagesTs"),
    ("Training/img", "Training/label", "Testing/img"),
    ("img", "label", None),
)


def btcv_manifest(root: str | Path, include_test: bool = True) -> VolumeManifest:
    """BTCV abdomen CT (13 organs): ``imagesTr/imgNNNN.nii.gz`` ↔ ``labelsTr/labelNNNN.nii.gz`` (the
    MONAI/UNETR copy), or the original ``Training/img`` ↔ ``Training/label`` (``Testing/img``
    unlabelled). Every case (``NNNN``, e.g. ``"0001"``) is its own patient and study; modality CT;
    label names :data:`BTCV_LABELS`.

    Raises:
        ConfigError: none of the folder pairs is there.
    """
    folder = _root(root)
    found = [f for f in _BTCV_FOLDERS if (folder / f[0]).is_dir() and (folder / f[1]).is_dir()]
    if not found:
        raise ConfigError(
            f"{folder} is not a BTCV folder: expected imagesTr/ + labelsTr/ (imgNNNN / labelNNNN) or "
            "Training/img + Training/label"
        )
    images_name, labels_name, tests_name = found[0]
    missing = _Missing()

    def cases(sub: str, pattern: re.Pattern[str]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in sorted((folder / sub).iterdir()):
            match = pattern.match(p.name)
            if match and p.is_file():
                found[match.group("case")] = p
        return found

    images = cases(images_name, _BTCV_IMAGE)
    labels = cases(labels_name, _BTCV_LABEL)
    rows: list[dict[str, Any]] = []
    for case, image in images.items():
        label = labels.get(case)
        if label is None:
            missing.add(
                image,
                f"training image without a label: {labels_name}/label{case}... is not there",
                "Unpaired",
            )
            continue
        rows.append(_row(image, label, case, "CT", "training"))
    for case, label in labels.items():
        if case not in images:
            missing.add(label, f"label without an image: {images_name}/img{case}... is not there", "Unpaired")
    if include_test and tests_name is not None and (folder / tests_name).is_dir():
        for case, image in cases(tests_name, _BTCV_IMAGE).items():
            if case in images:
                missing.add(image, f"case {case} is both a training and a test image", "Duplicate")
                continue
            rows.append(_row(image, None, case, "CT", "test"))
    return VolumeManifest(_frame(rows), missing.frame(), BTCV_LABELS, "btcv")


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------

_CSV_REQUIRED = ("patient_id", "study_id", "image")


def _find_table(folder: Path, table: str | None) -> Path:
    if table is not None:
        path = Path(table)
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise DataError(path, "manifest table not found")
        return path
    tables = sorted(p for p in folder.glob("*.csv") if _has_image_column(p))
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise ConfigError(
            f"{folder}: expected one CSV table with columns {', '.join(_CSV_REQUIRED)} (found: {found}); "
            "name it with table=..."
        )
    return tables[0]


def _has_image_column(path: Path) -> bool:
    try:
        header = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    return set(_CSV_REQUIRED) <= {str(c).strip() for c in header.columns}


def csv_manifest(root: str | Path, table: str | None = None, modality: str | None = None) -> VolumeManifest:
    """A generic table: one row per study with ``patient_id``, ``study_id`` (→ ``trial_id``), ``image``
    (a file or DICOM folder) and optionally ``mask`` and ``modality``; relative paths are resolved
    against the table's folder; an empty ``mask`` means no mask. Other columns are kept.

    Args:
        root: the folder holding the table.
        table: the table's file name (relative to ``root``) or path; default: the one CSV in ``root`` with
            the required columns.
        modality: ``"CT"``/``"MR"`` for rows without a ``modality`` value.

    Raises:
        ConfigError: no (or several) candidate tables, a required column absent, a ``study_id`` that
            repeats or an empty id.
        CorruptFileError: the table cannot be parsed.
    """
    folder = _root(root)
    path = _find_table(folder, table)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFileError(path, f"not a readable CSV table ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    absent = [c for c in _CSV_REQUIRED if c not in frame.columns]
    if absent:
        raise ConfigError(
            f"{path} lacks column(s) {', '.join(absent)} (needs {', '.join(_CSV_REQUIRED)}[, mask])"
        )
    for column in ("patient_id", "study_id", "image"):
        empty = frame.index[frame[column].str.strip() == ""].tolist()
        if empty:
            raise ConfigError(f"{path}: rows {[i + 2 for i in empty[:5]]} have no {column} (line numbers)")
    repeated = frame["study_id"][frame["study_id"].duplicated()].unique().tolist()
    if repeated:
        raise ConfigError(f"{path}: study_id {repeated[:5]} repeat; the table has one row per study")
    default = _modality_name(modality) if modality else ""
    base = path.parent
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    extras = [c for c in frame.columns if c not in (*_CSV_REQUIRED, "mask", "modality")]
    for record in frame.to_dict("records"):
        image = (base / record["image"].strip()).resolve()
        mask_text = record.get("mask", "").strip()
        mask = (base / mask_text).resolve() if mask_text else None
        if not image.exists():
            missing.add(image, f"listed in {path.name} (study {record['study_id']}) but not on disk")
            continue
        if mask is not None and not mask.exists():
            missing.add(mask, f"mask of study {record['study_id']} listed in {path.name} but not on disk")
            continue
        modality_text = record.get("modality", "").strip()
        row = _row(image, mask, "", _modality_name(modality_text) if modality_text else default, "")
        row["patient_id"] = record["patient_id"].strip()
        row["trial_id"] = record["study_id"].strip()
        row.update({c: record[c] for c in extras})
        rows.append(row)
    return VolumeManifest(_frame(rows), missing.frame(), None, "csv")


# --------------------------------------------------------------------------------------------------
# paired files
# --------------------------------------------------------------------------------------------------


def paired_manifest(
    root: str | Path,
    image_suffix: str = "_image",
    mask_suffixes: tuple[str, ...] = ("_label", "_mask"),
    modality: str | None = None,
    cases: Sequence[str] | None = None,
) -> VolumeManifest:
    """Files (or DICOM folders) named ``<case><image_suffix>.<ext>`` with masks ``<case><mask
    suffix>.<ext>`` in one folder (PyRadiomics' ``brain1_image.nrrd`` + ``brain1_label.nrrd``). Each case
    is its own patient and study; an image without a mask is kept unlabelled; a mask without an image
    goes to ``missing``. ``cases`` keeps only the named cases (e.g. the CT ones of a mixed folder).

    Raises:
        ConfigError: no ``*<image_suffix>.*`` file in ``root``, or a name in ``cases`` has no image.
    """
    folder = _root(root)
    default = _modality_name(modality) if modality else ""

    def split_name(p: Path) -> tuple[str, str] | None:
        stem = p.name if p.is_dir() else _case_name(p)
        if not (p.is_dir() or _is_volume_file(p)):
            return None
        for suffix in (image_suffix, *mask_suffixes):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                return stem[: -len(suffix)], suffix
        return None

    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    missing = _Missing()
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        parts = split_name(p)
        if parts is None:
            continue
        case, suffix = parts
        target = images if suffix == image_suffix else masks
        if case in target:
            missing.add(
                p, f"a second {suffix} file for case {case} (first: {target[case].name})", "Duplicate"
            )
            continue
        target[case] = p
    if not images:
        raise ConfigError(f"{folder} has no <case>{image_suffix}.<nii.gz|nii|nrrd> files (paired layout)")
    if cases is not None:
        unknown = sorted(set(cases) - set(images))
        if unknown:
            raise ConfigError(f"{folder} has no image for case(s) {unknown}; cases there: {sorted(images)}")
        images = {case: image for case, image in images.items() if case in set(cases)}
        masks = {case: mask for case, mask in masks.items() if case in set(cases)}
    rows = [_row(image, masks.get(case), case, default, "") for case, image in images.items()]
    for case, mask in masks.items():
        if case not in images:
            missing.add(mask, f"mask without an image: no {case}{image_suffix}.* next to it", "Unpaired")
    return VolumeManifest(_frame(rows), missing.frame(), None, "paired")


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., VolumeManifest]] = {
    "msd": msd_manifest,
    "btcv": btcv_manifest,
    "csv": csv_manifest,
    "paired": paired_manifest,
}


def detect_layout(root: str | Path) -> str:
    """Which builder fits the folder: ``"msd"`` (``dataset.json``, or ``imagesTr/`` with MSD-style names),
    ``"btcv"`` (``imagesTr/imgNNNN`` + ``labelsTr/labelNNNN``, or ``Training/img``), ``"csv"`` (one CSV
    with ``patient_id``, ``study_id``, ``image`` columns), ``"paired"`` (``*_image.*`` files).

    Raises:
        ConfigError: none fits (the message lists what was looked for).
    """
    folder = _root(root)
    if (folder / "dataset.json").is_file():
        return "msd"
    images_dir = folder / "imagesTr"
    labels_dir = folder / "labelsTr"
    if images_dir.is_dir():
        btcv_images = any(_BTCV_IMAGE.match(p.name) for p in images_dir.iterdir())
        if (
            btcv_images
            and labels_dir.is_dir()
            and any(_BTCV_LABEL.match(p.name) for p in labels_dir.iterdir())
        ):
            return "btcv"
        return "msd"
    if (folder / "Training" / "img").is_dir():
        return "btcv"
    if any(_has_image_column(p) for p in folder.glob("*.csv")):
        return "csv"
    if any(not p.name.startswith(".") and p.name.split(".")[0].endswith("_image") for p in folder.iterdir()):
        return "paired"
    raise ConfigError(
        f"cannot tell the layout of {folder}: expected dataset.json or imagesTr/ (msd), imagesTr/imgNNNN "
        "with labelsTr/labelNNNN (btcv), a CSV with patient_id, study_id, image columns (csv), or "
        "<case>_image.<ext> files (paired); choose one with dataset=..."
    )


def build_manifest(dataset: str, root: str | Path, **kwargs: Any) -> VolumeManifest:
    """Build the manifest of ``dataset`` (``"msd"``, ``"btcv"``, ``"csv"``, ``"paired"`` or ``"auto"``:
    :func:`detect_layout`) at ``root``; ``kwargs`` go to that builder.

    Raises:
        ConfigError: an unknown layout or an argument its builder does not take; and whatever the builder
            raises.
    """
    if dataset == "auto":
        dataset = detect_layout(root)
    builder = BUILDERS.get(dataset)
    if builder is None:
        raise ConfigError(f"unknown volume layout {dataset!r}; choose one of auto, {', '.join(BUILDERS)}")
    accepted = [name for name in inspect.signature(builder).parameters if name != "root"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"the {dataset} layout takes no argument(s) {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    return builder(root, **kwargs)
