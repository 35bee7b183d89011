"""Manifest builders for chest X-ray datasets: one row per image, from the layout's tables and file names.

Every builder returns an :class:`XrayManifest` whose ``trials`` table has one row per **image** (an X-ray
"trial" row is an image; ``trial_id`` is its study, so a study with a frontal and a lateral view has two
rows with the same ``trial_id``), with these columns first, in this order:

================  ===================================================================================
``path``          absolute path of the image file
``image_id``      the image, unique in the manifest (MIMIC ``dicom_id``, NIH ``Image Index``, the
                  CheXpert path, the ``covid_cxr`` file name)
``patient_id``    the person, a string
``trial_id``      the study (exam), unique across patients
``sample_index``  position of the image within its study (0, 1, ... in the table's order)
``view``          normalised view (:func:`normalize_view`): ``"PA"``, ``"AP"``, ``"LATERAL"``,
                  ``"OTHER"`` or ``""`` (unknown)
``view_raw``      the view as the dataset wrote it (``"AP Supine"``, ``"LL"``, ...)
``labels``        ``|``-joined positive findings, in :attr:`XrayManifest.label_names` order
``uncertain``     ``|``-joined uncertain findings (CheXpert labeller ``-1``), else ``""``
``labels_known``  ``"1"`` when the dataset labels the image (an empty ``labels`` then means "none of
                  the findings"), ``"0"`` when it does not (covid_cxr ``todo``/blank, a MIMIC study
                  missing from the labeller's table)
``report``        the report/notes text kept in the table (covid_cxr ``clinical_notes``), else ``""``
``report_path``   a report file (MIMIC ``files/pNN/pSUBJECT/sSTUDY.txt``) when on disk, else ``""``
``split``         the split the dataset assigns (CheXpert ``train``/``valid``, MIMIC ``train``/
                  ``validate``/``test``, NIH ``train``/``test``), else ``""``
================  ===================================================================================

plus each layout's own columns (e.g. ``offset``, ``finding``, ``license`` for covid_cxr). Every value is
a string. ``missing`` (``path``, ``reason``, ``error``) lists what the tables name but cannot be used:
files not on disk (``"NotOnDisk"``), an image listed twice (``"Duplicate"``), a row that does not parse
(``"BadRow"``). ``excluded`` counts what was left out on purpose (another modality, a view not asked
for). Builders read no image; :mod:`modalities.xray.indexing` reads and checks every one.

Layouts:

- **covid_cxr** (:func:`covid_cxr_manifest`; ieee8023 COVID-19 image data collection): ``metadata.csv``
  with ``patientid``, ``offset`` (days), ``finding``, ``view``, ``modality``, ``filename``,
  ``clinical_notes``, ``license``; images in ``images/`` (upstream) or ``images_512/`` (the downscaled
  copy; upstream file names mapped by ``image_provenance.csv`` or by file stem). Study = (patientid,
  offset); an image with an unknown offset is its own study. Only ``X-ray`` rows by default (CT
  excluded, counted). ``finding`` is multi-label: split at ``/`` and ``,`` (``"COVID-19, ARDS"``,
  ``"Pneumonia/Viral/COVID-19"``); ``todo`` or blank = unlabelled. Five rows of the 2020-06 table have
  an unquoted comma in ``clinical_notes`` that spills it into ``other_notes`` (and ``other_notes`` into
  an unnamed trailing column): such notes are joined back.
- **mimic_cxr** (:func:`mimic_cxr_manifest`; MIMIC-CXR-JPG 2.0.0): ``mimic-cxr-2.0.0-metadata.csv(.gz)``
  (``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition``), images
  ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`` (``NN`` = the subject id's first two digits); labels from
  ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (or ``-negbio``) by (subject, study): ``1`` positive, ``-1``
  uncertain, ``0``/blank negative; split from ``mimic-cxr-2.0.0-split.csv(.gz)``; reports
  ``files/pNN/pSUBJECT/sSTUDY.txt`` (from MIMIC-CXR) when present.
- **chexpert** (:func:`chexpert_manifest`): ``train.csv``/``valid.csv`` with ``Path``
  (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), ``Frontal/Lateral``, ``AP/PA``
  and the 14 labels (``1``, ``0``, ``-1`` uncertain, blank = not mentioned); ``root`` may be the folder
  holding ``CheXpert-v1.0-small/`` or that folder itself.
- **nih** (:func:`nih_manifest`; NIH ChestX-ray14): ``Data_Entry_2017.csv`` (``Image Index``, ``Finding
  Labels`` joined by ``|``, ``Follow-up #``, ``Patient ID``, ``View Position``); images anywhere under
  ``images*/`` folders; split from ``train_val_list.txt``/``test_list.txt`` when present. Study =
  (patient, follow-up number).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.bundled import resolve_root
from modalities.xray.readers import XRAY_SUFFIXES

__all__ = [
    "BUILDERS",
    "CHEXPERT_LABELS",
    "MISSING_COLUMNS",
    "NIH_LABELS",
    "TRIAL_COLUMNS",
    "VIEWS",
    "XrayManifest",
    "build_manifest",
    "chexpert_manifest",
    "covid_cxr_manifest",
    "detect_layout",
    "filter_views",
    "mimic_cxr_manifest",
    "nih_manifest",
    "normalize_view",
    "parse_covid_findings",
    "read_report",
    "view_set",
]

TRIAL_COLUMNS: tuple[str, ...] = (
    "path",
    "image_id",
    "patient_id",
    "trial_id",
    "sample_index",
    "view",
    "view_raw",
    "labels",
    "uncertain",
    "labels_known",
    "report",
    "report_path",
    "split",
)
MISSING_COLUMNS: tuple[str, ...] = ("path", "reason", "error")

VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL", "OTHER", "")
"""Normalised view names (``""``: the dataset does not say)."""

#: CheXpert's 14 observations in the order of its CSV (MIMIC-CXR's labeller tables use the same names).
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: NIH ChestX-ray14's 14 findings and ``No Finding``, as written in ``Finding Labels``.
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "No Finding",
)

_PA = {"PA", "POSTEROANTERIOR", "POSTERO-ANTERIOR", "POSTERIOR-ANTERIOR", "PA ERECT", "PA UPRIGHT"}
_AP = {
    "AP",
    "APS",
    "AP SUPINE",
    "SUPINE AP",
    "AP ERECT",
    "AP UPRIGHT",
    "AP PORTABLE",
    "PORTABLE AP",
    "AP SEMI-ERECT",
    "ANTEROPOSTERIOR",
    "ANTERO-POSTERIOR",
    "ANTERIOR-POSTERIOR",
}
_LATERAL = {
    "L",
    "LL",
    "RL",
    "LAT",
    "LATERAL",
    "LEFT LATERAL",
    "RIGHT LATERAL",
    "XTABLE LATERAL",
    "X-TABLE LATERAL",
    "CROSS-TABLE LATERAL",
}
_UNKNOWN = {"", "?", "NAN", "NONE", "UNKNOWN", "NULL"}
_CHEXPERT_PATH = re.compile(
    r"(?P<patient>patient\d+)/(?P<study>study\d+)/view(?P<view>\d+)_(?P<kind>[A-Za-z]+)\.(jpg|jpeg|png)$"
)


def normalize_view(text: Any) -> str:
    """A dataset's view name → ``"PA"``, ``"AP"`` (also supine/portable AP), ``"LATERAL"`` (``L``, ``LL``,
    ``RL``, ``LATERAL``, cross-table lateral), ``"OTHER"`` (decubitus, oblique, lordotic, CT planes, ...)
    or ``""`` (blank, ``?``, unknown)."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    value = re.sub(r"[\s_]+", " ", str(text).strip().upper())
    if value in _UNKNOWN:
        return ""
    if value in _PA:
        return "PA"
    if value in _AP:
        return "AP"
    if value in _LATERAL:
        return "LATERAL"
    return "OTHER"


def view_set(views: Iterable[str] | str | None) -> frozenset[str] | None:
    """The normalised views a ``views`` setting asks for; ``"FRONTAL"`` means PA and AP; None = all.

    Raises:
        ConfigError: a name that is no view (``"OTHER"`` and ``"UNKNOWN"``/``""`` are allowed on purpose).
    """
    if views is None:
        return None
    if isinstance(views, str):
        views = [views]
    chosen: set[str] = set()
    for name in views:
        key = str(name).strip().upper()
        if key == "FRONTAL":
            chosen |= {"PA", "AP"}
        elif key in ("UNKNOWN", ""):
            chosen.add("")
        elif key == "OTHER":
            chosen.add("OTHER")
        else:
            view = normalize_view(key)
            if view in ("", "OTHER"):
                raise ConfigError(
                    f"unknown view {name!r}; use PA, AP, LATERAL, FRONTAL (PA and AP), OTHER or UNKNOWN"
                )
            chosen.add(view)
    if not chosen:
        raise ConfigError("views is empty: give at least one view, or null for all")
    return frozenset(chosen)


@dataclass(frozen=True, eq=False)
class XrayManifest:
    """An X-ray dataset's images and the entries that could not be listed.

    Attributes:
        trials: one row per image, columns :data:`TRIAL_COLUMNS` first (see the module docstring).
        missing: ``path``, ``reason``, ``error`` of every entry named by the layout but not usable.
        label_names: the findings of ``labels`` (in order), or None when the layout has no labels.
        layout: the builder that made it (``"covid_cxr"``, ``"mimic_cxr"``, ``"chexpert"``, ``"nih"``).
        excluded: what was left out on purpose, ``{reason: count}`` (``"modality CT"``, ``"view
            LATERAL"``, ...).

    Raises:
        ConfigError: a required column is absent or an ``image_id`` repeats.
    """

    trials: pd.DataFrame
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(MISSING_COLUMNS)))
    label_names: tuple[str, ...] | None = None
    layout: str = ""
    excluded: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        absent = [c for c in TRIAL_COLUMNS if c not in self.trials.columns]
        if absent:
            raise ConfigError(f"X-ray manifest lacks column(s) {', '.join(absent)}")
        repeated = self.trials["image_id"][self.trials["image_id"].duplicated()]
        if len(repeated):
            raise ConfigError(f"{len(repeated.unique())} image id(s) appear more than once in the manifest")
        absent = [c for c in MISSING_COLUMNS if c not in self.missing.columns]
        if absent:
            raise ConfigError(f"X-ray manifest's missing table lacks column(s) {', '.join(absent)}")

    @property
    def n_patients(self) -> int:
        return int(self.trials["patient_id"].nunique())

    @property
    def n_studies(self) -> int:
        return int(self.trials["trial_id"].nunique())


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _root(root: str | Path) -> Path:
    folder = resolve_root(root).resolve()
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (the dataset root)")
    return folder


@dataclass
class _Missing:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, path: str | Path, reason: str, error: str = "NotOnDisk") -> None:
        self.rows.append((str(path), reason, error))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(MISSING_COLUMNS))


def _read_table(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """A CSV (``.csv`` or ``.csv.gz``) as strings (blank = ``""``), with its required columns checked.

    Raises:
        DataError: not there; CorruptFileError: unreadable or lacking a required column.
    """
    if not path.is_file():
        raise DataError(path, f"the {what} table is not there")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(path, f"the {what} table cannot be read ({first})") from None
    table.columns = [str(c).strip() for c in table.columns]
    absent = [c for c in required if c not in table.columns]
    if absent:
        raise CorruptFileError(
            path,
            f"the {what} table lacks column(s) {', '.join(absent)} (it has {', '.join(table.columns[:12])})",
        )
    return table


def _first_file(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _labels_text(names: Iterable[str], order: Sequence[str]) -> str:
    position = {name: i for i, name in enumerate(order)}
    return "|".join(sorted(set(names), key=lambda n: (position.get(n, len(position)), n)))


def _sample_indices(trial_ids: pd.Series) -> pd.Series:
    return trial_ids.groupby(trial_ids, sort=False).cumcount().astype(str)


def _finish(
    rows: list[dict[str, Any]],
    missing: _Missing,
    label_names: tuple[str, ...] | None,
    layout: str,
    excluded: dict[str, int],
    views: Iterable[str] | str | None,
) -> XrayManifest:
    """Rows → manifest: view filter (counted in ``excluded``), sample indices, column order, strings."""
    columns = [c for c in TRIAL_COLUMNS if c != "sample_index"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    frame = pd.DataFrame(rows, columns=columns)
    for column in frame.columns:
        frame[column] = frame[column].fillna("").astype(str)
    frame = filter_views(frame, views, excluded)
    frame.insert(4, "sample_index", _sample_indices(frame["trial_id"]) if len(frame) else [])
    frame["sample_index"] = frame["sample_index"].astype(str)
    return XrayManifest(frame.reset_index(drop=True), missing.frame(), label_names, layout, dict(excluded))


def filter_views(
    trials: pd.DataFrame, views: Iterable[str] | str | None, excluded: dict[str, int] | None = None
) -> pd.DataFrame:
    """The rows whose ``view`` is among ``views`` (:func:`view_set`; None keeps all); the others are
    counted in ``excluded`` as ``"view <VIEW>"`` (``"view unknown"`` for ``""``)."""
    wanted = view_set(views)
    if wanted is None or not len(trials):
        return trials
    keep = trials["view"].isin(wanted)
    if excluded is not None:
        for view, count in trials.loc[~keep, "view"].value_counts().items():
            key = f"view {view or 'unknown'}"
            excluded[key] = excluded.get(key, 0) + int(count)
    return trials[keep]


def read_report(row: Any) -> str:
    """The report of a manifest row: its ``report`` text, else the contents of ``report_path``, else ``""``.

    Raises:
        DataError: ``report_path`` names a file that cannot be read as text.
    """
    text = str(row.get("report", "") or "")
    if text:
        return text
    path = str(row.get("report_path", "") or "")
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(path, f"the report cannot be read ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------------
# covid_cxr
# --------------------------------------------------------------------------------------------------

_COVID_UNLABELLED = {"", "todo", "unknown", "?"}


def parse_covid_findings(text: Any) -> list[str] | None:
    """``covid_cxr`` ``finding`` → findings: split at ``/`` and ``,`` (``"COVID-19, ARDS"`` → ``["COVID-19",
    "ARDS"]``, ``"Pneumonia/Viral/COVID-19"`` → three); None for ``todo``/blank (unlabelled)."""
    value = "" if text is None else str(text).strip()
    if value.lower() in _COVID_UNLABELLED:
        return None
    parts = [p.strip() for p in re.split(r"[/,]", value)]
    parts = [p for p in parts if p and p.lower() not in _COVID_UNLABELLED]
    return list(dict.fromkeys(parts)) or None


def _covid_image_index(root: Path, image_dir: str | None) -> tuple[Path, dict[str, Path]]:
    """(image folder, {upstream file name (or its stem) → file})."""
    if image_dir is None:
        image_dir = "images" if (root / "images").is_dir() else "images_512"
    folder = root / image_dir
    if not folder.is_dir():
        raise ConfigError(f"{root} has no {image_dir}/ folder of images (covid_cxr layout)")
    files = {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    provenance = root / "image_provenance.csv"
    if image_dir != "images" and provenance.is_file():
        table = _read_table(provenance, ("filename", "filename_512"), "image provenance")
        mapped = {
            str(a): files[str(b)]
            for a, b in zip(table["filename"], table["filename_512"], strict=True)
            if str(b) in files
        }
        return folder, mapped
    by_stem: dict[str, Path] = {}
    for name, path in files.items():
        by_stem.setdefault(Path(name).stem, path)
    return folder, {**by_stem, **files}


def covid_cxr_manifest(
    root: str | Path,
    views: Sequence[str] | str | None = None,
    modalities: Sequence[str] = ("X-ray",),
    image_dir: str | None = None,
) -> XrayManifest:
    """The ``covid_cxr`` layout (see the module docstring).

    Args:
        root: the folder with ``metadata.csv``.
        views: keep only these views (:func:`view_set`; None keeps all).
        modalities: values of the ``modality`` column to keep (``("X-ray",)``; others counted in
            ``excluded`` as ``"modality <value>"``).
        image_dir: ``"images"`` or ``"images_512"``; default: ``images/`` when present, else
            ``images_512/``.

    Extra columns: ``offset``, ``finding``, ``license``, ``modality``, ``sex``, ``age``, ``doi``, ``url``,
    and ``orig_width``/``orig_height`` (the upstream image's size, from ``image_provenance.csv``) when
    known.

    Raises:
        ConfigError: no ``images*/`` folder; DataError/CorruptFileError: ``metadata.csv`` missing or
        unreadable.
    """
    folder = _root(root)
    table = _read_table(
        folder / "metadata.csv",
        ("patientid", "offset", "finding", "view", "modality", "filename"),
        "covid_cxr metadata",
    )
    image_folder, images = _covid_image_index(folder, image_dir)
    sizes: dict[str, tuple[str, str]] = {}
    provenance = folder / "image_provenance.csv"
    if provenance.is_file():
        prov = pd.read_csv(provenance, dtype=str, keep_default_na=False)
        if {"filename", "orig_width", "orig_height"} <= set(prov.columns):
            sizes = {
                str(n): (str(w), str(h))
                for n, w, h in zip(prov["filename"], prov["orig_width"], prov["orig_height"], strict=True)
            }
    spill = [c for c in table.columns if c.startswith("Unnamed:") or c == ""]
    notes = table["clinical_notes"] if "clinical_notes" in table.columns else pd.Series("", index=table.index)
    other = table["other_notes"] if "other_notes" in table.columns else pd.Series("", index=table.index)
    missing = _Missing()
    excluded: dict[str, int] = {}
    keep_modalities = {str(m).strip().lower() for m in modalities}
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    first_patient: dict[str, str] = {}

    def patient_of(rec: dict[str, Any]) -> str:
        return str(rec["patientid"]).strip()

    found_labels: set[str] = set()
    metadata = folder / "metadata.csv"
    for i, rec in enumerate(table.to_dict("records")):
        modality = str(rec["modality"]).strip()
        if modality.lower() not in keep_modalities:
            key = f"modality {modality or 'unknown'}"
            excluded[key] = excluded.get(key, 0) + 1
            continue
        name = str(rec["filename"]).strip()
        if not name:
            missing.add(metadata, f"row {i + 2} has no filename", "BadRow")
            continue
        if name in seen:
            missing.add(
                image_folder / name,
                f"row {i + 2} of metadata.csv lists the image of row {seen[name] + 2} again"
                + (
                    " under another patient id"
                    if str(rec["patientid"]).strip() != first_patient[name]
                    else ""
                )
                + "; the first listing is kept",
                "Duplicate",
            )
            continue
        path = images.get(name) or images.get(Path(name).stem)
        if path is None:
            missing.add(image_folder / name, f"listed in metadata.csv (row {i + 2}) but not on disk")
            continue
        seen[name] = i
        patient = patient_of(rec)
        first_patient[name] = patient
        offset = str(rec["offset"]).strip()
        known_offset = re.fullmatch(r"-?\d+(\.0+)?", offset) is not None
        trial = f"{patient}/{int(float(offset))}" if known_offset else f"{patient}/offset?/{Path(name).stem}"
        note = str(notes.iloc[i]).strip()
        extra_note = str(other.iloc[i])
        spilled = [str(rec[c]) for c in spill if str(rec[c]).strip()]
        if spilled:  # an unquoted comma in clinical_notes shifted the later fields right by one
            note = f"{note},{extra_note}".strip()
            extra_note = ",".join(spilled)
        findings = parse_covid_findings(rec["finding"])
        if findings:
            found_labels.update(findings)
        width, height = sizes.get(name, ("", ""))
        rows.append(
            {
                "path": str(path),
                "image_id": name,
                "patient_id": patient,
                "trial_id": trial,
                "view": normalize_view(rec["view"]),
                "view_raw": str(rec["view"]).strip(),
                "labels": "|".join(findings or []),
                "uncertain": "",
                "labels_known": "1" if findings else "0",
                "report": note,
                "report_path": "",
                "split": "",
                "offset": offset if known_offset else "",
                "finding": str(rec["finding"]).strip(),
                "license": str(rec.get("license", "")).strip(),
                "modality": modality,
                "sex": str(rec.get("sex", "")).strip(),
                "age": str(rec.get("age", "")).strip(),
                "doi": str(rec.get("doi", "")).strip(),
                "url": str(rec.get("url", "")).strip(),
                "other_notes": extra_note.strip(),
                "orig_width": width,
                "orig_height": height,
            }
        )
    label_names = tuple(sorted(found_labels, key=str.lower)) or None
    for row in rows:
        row["labels"] = _labels_text(row["labels"].split("|"), label_names or ()) if row["labels"] else ""
    return _finish(rows, missing, label_names, "covid_cxr", excluded, views)


# --------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
# --------------------------------------------------------------------------------------------------


def _labeller_columns(table: pd.DataFrame) -> list[str]:
    return [name for name in CHEXPERT_LABELS if name in table.columns]


def _labeller_values(rec: dict[str, Any], columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(positives, uncertain) of a CheXpert-style row: ``1`` positive, ``-1`` uncertain, else negative."""
    positive, uncertain = [], []
    for name in columns:
        value = str(rec.get(name, "")).strip()
        if not value:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if number == 1:
            positive.append(name)
        elif number == -1:
            uncertain.append(name)
    return positive, uncertain


def mimic_cxr_manifest(
    root: str | Path,
    views: Sequence[str] | str | None = None,
    labeler: str = "chexpert",
    check_files: bool = True,
) -> XrayManifest:
    """The MIMIC-CXR-JPG layout (see the module docstring).

    Args:
        root: the folder with ``mimic-cxr-2.0.0-metadata.csv(.gz)`` and ``files/``.
        views: keep only these views (:func:`view_set`; None keeps all).
        labeler: ``"chexpert"`` or ``"negbio"``: which ``mimic-cxr-2.0.0-<labeler>.csv(.gz)`` gives the
            labels (none when it is absent: every image unlabelled).
        check_files: list images not on disk in ``missing`` (one ``stat`` per image); False trusts the
            table.

    Extra columns: ``subject_id``, ``study_id``, ``dicom_id``.

    Raises:
        ConfigError: an unknown ``labeler``; DataError/CorruptFileError: the metadata table is missing or
        unreadable.
    """
    if labeler not in ("chexpert", "negbio"):
        raise ConfigError(f"labeler must be 'chexpert' or 'negbio', got {labeler!r}")
    folder = _root(root)
    base = "mimic-cxr-2.0.0-"
    meta_path = _first_file(folder, (f"{base}metadata.csv.gz", f"{base}metadata.csv"))
    if meta_path is None:
        raise DataError(folder / f"{base}metadata.csv.gz", "the MIMIC-CXR-JPG metadata table is not there")
    table = _read_table(
        meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), "MIMIC-CXR metadata"
    )
    labels: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    label_path = _first_file(folder, (f"{base}{labeler}.csv.gz", f"{base}{labeler}.csv"))
    label_names: tuple[str, ...] | None = None
    if label_path is not None:
        label_table = _read_table(label_path, ("subject_id", "study_id"), f"MIMIC-CXR {labeler}")
        columns = _labeller_columns(label_table)
        label_names = tuple(columns) or None
        for rec in label_table.to_dict("records"):
            key = (str(rec["subject_id"]).strip(), str(rec["study_id"]).strip())
            labels[key] = _labeller_values(rec, columns)
    splits: dict[str, str] = {}
    split_path = _first_file(folder, (f"{base}split.csv.gz", f"{base}split.csv"))
    if split_path is not None:
        split_table = _read_table(split_path, ("dicom_id", "split"), "MIMIC-CXR split")
        splits = dict(zip(split_table["dicom_id"].astype(str), split_table["split"].astype(str), strict=True))
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, rec in enumerate(table.to_dict("records")):
        dicom, subject, study = (str(rec[k]).strip() for k in ("dicom_id", "subject_id", "study_id"))
        if not (dicom and subject.isdigit() and study.isdigit() and len(subject) >= 2):
            missing.add(meta_path, f"row {i + 2} has no usable dicom_id/subject_id/study_id", "BadRow")
            continue
        study_dir = folder / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        path = study_dir / f"{dicom}.jpg"
        if dicom in seen:
            missing.add(path, f"dicom_id listed again in row {i + 2}; the first listing is kept", "Duplicate")
            continue
        seen.add(dicom)
        if check_files and not path.is_file():
            missing.add(path, f"listed in {meta_path.name} (row {i + 2}) but not on disk")
            continue
        report = study_dir.with_name(f"s{study}.txt")
        found = labels.get((subject, study))
        rows.append(
            {
                "path": str(path),
                "image_id": dicom,
                "patient_id": subject,
                "trial_id": study,
                "view": normalize_view(rec["ViewPosition"]),
                "view_raw": str(rec["ViewPosition"]).strip(),
                "labels": "|".join(found[0]) if found else "",
                "uncertain": "|".join(found[1]) if found else "",
                "labels_known": "1" if found else "0",
                "report": "",
                "report_path": str(report) if report.is_file() else "",
                "split": splits.get(dicom, ""),
                "subject_id": subject,
                "study_id": study,
                "dicom_id": dicom,
            }
        )
    return _finish(rows, missing, label_names, "mimic_cxr", {}, views)


# --------------------------------------------------------------------------------------------------
# CheXpert
# --------------------------------------------------------------------------------------------------


def _chexpert_csv(folder: Path, csv: str | Path) -> Path:
    path = Path(csv)
    if path.is_absolute():
        return path
    candidates = [folder / path]
    candidates += [sub / path for sub in sorted(folder.glob("CheXpert-v1.0*")) if sub.is_dir()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(folder / path, "the CheXpert table is not there", "give csv='train.csv' or 'valid.csv'")


def _chexpert_base(folder: Path, csv_path: Path, first: str) -> Path:
    """The folder that ``Path`` values are relative to: where ``first`` (a ``Path`` value) exists (the
    parent of ``root`` when ``root`` is the ``CheXpert-v1.0-small`` folder itself)."""
    relative = Path(first)
    for base in (folder, folder.parent, csv_path.parent.parent, csv_path.parent):
        if (base / relative).is_file():
            return base
    return folder


def chexpert_manifest(
    root: str | Path, csv: str | Path = "train.csv", views: Sequence[str] | str | None = None
) -> XrayManifest:
    """The CheXpert layout (see the module docstring).

    Args:
        root: the folder holding ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``), or that folder.
        csv: ``"train.csv"`` or ``"valid.csv"`` (relative to ``root`` or to the CheXpert folder), or a path.
        views: keep only these views (:func:`view_set`; None keeps all).

    Extra columns: ``sex``, ``age``.

    Raises:
        DataError/CorruptFileError: the table is missing, unreadable, or lacks ``Path``/``Frontal/Lateral``.
    """
    folder = _root(root)
    csv_path = _chexpert_csv(folder, csv)
    table = _read_table(csv_path, ("Path", "Frontal/Lateral"), "CheXpert")
    columns = _labeller_columns(table)
    base = _chexpert_base(folder, csv_path, str(table["Path"].iloc[0])) if len(table) else folder
    split = csv_path.stem.lower()
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, rec in enumerate(table.to_dict("records")):
        relative = str(rec["Path"]).strip()
        match = _CHEXPERT_PATH.search(relative)
        path = (base / relative).resolve()
        if match is None:
            missing.add(path, f"row {i + 2}: Path does not look like patientN/studyN/viewN_*.jpg", "BadRow")
            continue
        if relative in seen:
            missing.add(path, f"row {i + 2} lists the image again; the first listing is kept", "Duplicate")
            continue
        seen.add(relative)
        if not path.is_file():
            missing.add(path, f"listed in {csv_path.name} (row {i + 2}) but not on disk")
            continue
        patient, study = match.group("patient"), match.group("study")
        orientation = str(rec["Frontal/Lateral"]).strip()
        projection = str(rec.get("AP/PA", "")).strip()
        if orientation.lower() == "lateral":
            view = "LATERAL"
        elif orientation.lower() == "frontal":
            view = normalize_view(projection)
            view = "OTHER" if view == "LATERAL" else view
        else:
            view = normalize_view(orientation)
        positive, uncertain = _labeller_values(rec, columns)
        rows.append(
            {
                "path": str(path),
                "image_id": relative,
                "patient_id": patient,
                "trial_id": f"{patient}/{study}",
                "view": view,
                "view_raw": "/".join(v for v in (orientation, projection) if v),
                "labels": "|".join(positive),
                "uncertain": "|".join(uncertain),
                "labels_known": "1" if columns else "0",
                "report": "",
                "report_path": "",
                "split": split,
                "sex": str(rec.get("Sex", "")).strip(),
                "age": str(rec.get("Age", "")).strip(),
            }
        )
    return _finish(rows, missing, tuple(columns) or None, "chexpert", {}, views)


# --------------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# --------------------------------------------------------------------------------------------------


def nih_manifest(
    root: str | Path, csv: str | Path | None = None, views: Sequence[str] | str | None = None
) -> XrayManifest:
    """The NIH ChestX-ray14 layout (see the module docstring).

    Args:
        root: the folder with ``Data_Entry_2017.csv`` and the ``images*/`` folders.
        csv: the table (default: ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``).
        views: keep only these views (:func:`view_set`; None keeps all).

    Labels: :data:`NIH_LABELS` (and any other name the table uses, after them). Extra columns: ``age``,
    ``sex``, ``follow_up``.

    Raises:
        DataError/CorruptFileError: the table is missing, unreadable or lacks a required column.
    """
    folder = _root(root)
    if csv is None:
        table_path = _first_file(folder, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"))
        if table_path is None:
            raise DataError(folder / "Data_Entry_2017.csv", "the NIH ChestX-ray14 table is not there")
    else:
        table_path = Path(csv) if Path(csv).is_absolute() else folder / csv
    required = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")
    table = _read_table(table_path, required, "NIH ChestX-ray14")
    images: dict[str, Path] = {}
    for sub in sorted(folder.glob("images*")):
        if sub.is_dir():
            for path in sub.rglob("*"):
                if path.suffix.lower() in XRAY_SUFFIXES and not path.name.startswith("."):
                    images.setdefault(path.name, path)
    splits: dict[str, str] = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (folder / name).is_file():
            for line in (folder / name).read_text().split():
                splits[line.strip()] = split
    missing = _Missing()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    found: set[str] = set()
    for i, rec in enumerate(table.to_dict("records")):
        name = str(rec["Image Index"]).strip()
        patient = str(rec["Patient ID"]).strip().lstrip("0") or "0"
        follow_up = str(rec["Follow-up #"]).strip()
        if not name or not patient.isdigit():
            missing.add(table_path, f"row {i + 2} has no usable Image Index/Patient ID", "BadRow")
            continue
        if name in seen:
            missing.add(folder / name, f"row {i + 2} lists the image again; the first is kept", "Duplicate")
            continue
        seen.add(name)
        path = images.get(name)
        if path is None:
            missing.add(
                folder / "images" / name, f"listed in {table_path.name} (row {i + 2}) but not on disk"
            )
            continue
        findings = [f.strip() for f in str(rec["Finding Labels"]).split("|") if f.strip()]
        found.update(findings)
        rows.append(
            {
                "path": str(path),
                "image_id": name,
                "patient_id": patient,
                "trial_id": f"{patient}/{follow_up}",
                "view": normalize_view(rec["View Position"]),
                "view_raw": str(rec["View Position"]).strip(),
                "labels": _labels_text(findings, NIH_LABELS),
                "uncertain": "",
                "labels_known": "1" if findings else "0",
                "report": "",
                "report_path": "",
                "split": splits.get(name, ""),
                "age": str(rec.get("Patient Age", "")).strip(),
                "sex": str(rec.get("Patient Gender", "")).strip(),
                "follow_up": follow_up,
            }
        )
    extra = tuple(sorted(found - set(NIH_LABELS)))
    return _finish(rows, missing, (*NIH_LABELS, *extra), "nih", {}, views)


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., XrayManifest]] = {
    "covid_cxr": covid_cxr_manifest,
    "mimic_cxr": mimic_cxr_manifest,
    "chexpert": chexpert_manifest,
    "nih": nih_manifest,
}


def detect_layout(root: str | Path) -> str:
    """Which builder fits the folder: ``"covid_cxr"`` (``metadata.csv`` with ``patientid`` and
    ``offset``), ``"mimic_cxr"`` (``mimic-cxr-2.0.0-metadata.csv[.gz]``), ``"nih"``
    (``Data_Entry_2017*.csv``), ``"chexpert"`` (``train.csv``/``valid.csv`` with a ``Path`` column, here
    or in ``CheXpert-v1.0*/``).

    Raises:
        ConfigError: none fits (the message lists what was looked for).
    """
    folder = _root(root)
    meta = folder / "metadata.csv"
    if meta.is_file():
        header = meta.open(encoding="utf-8", errors="replace").readline()
        if "patientid" in header and "offset" in header:
            return "covid_cxr"
    if any(folder.glob("mimic-cxr-2.0.0-metadata.csv*")):
        return "mimic_cxr"
    if any(folder.glob("Data_Entry_2017*.csv")):
        return "nih"
    for sub in [folder, *sorted(folder.glob("CheXpert-v1.0*"))]:
        for name in ("train.csv", "valid.csv"):
            table = sub / name
            if table.is_file() and "Path" in table.open(encoding="utf-8", errors="replace").readline():
                return "chexpert"
    raise ConfigError(
        f"cannot tell the X-ray layout of {folder}: expected metadata.csv with patientid and offset "
        "(covid_cxr), mimic-cxr-2.0.0-metadata.csv[.gz] (mimic_cxr), Data_Entry_2017.csv (nih) or "
        "train.csv/valid.csv with a Path column (chexpert); choose one with dataset=..."
    )


def build_manifest(dataset: str, root: str | Path, **kwargs: Any) -> XrayManifest:
    """Build the manifest of ``dataset`` (a name of :data:`BUILDERS` or ``"auto"``:
    :func:`detect_layout`) at ``root``; ``kwargs`` go to that builder.

    Raises:
        ConfigError: an unknown layout or an argument its builder does not take; and whatever the builder
            raises.
    """
    if dataset == "auto":
        dataset = detect_layout(root)
    builder = BUILDERS.get(dataset)
    if builder is None:
        raise ConfigError(f"unknown X-ray layout {dataset!r}; choose one of auto, {', '.join(BUILDERS)}")
    accepted = [name for name in inspect.signature(builder).parameters if name != "root"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"the {dataset} layout takes no argument(s) {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    return builder(root, **kwargs)
