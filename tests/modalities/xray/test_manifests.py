"""Manifest builders on small layouts written in each dataset's exact table format (real radiographs as the
image files) and on the real covid_cxr folder; view normalisation and filtering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medcl.errors import ConfigError, DataError
from modalities.xray.manifests import (
    CHEXPERT_LABELS,
    NIH_LABELS,
    TRIAL_COLUMNS,
    build_manifest,
    chexpert_manifest,
    covid_cxr_manifest,
    detect_layout,
    mimic_cxr_manifest,
    nih_manifest,
    normalize_view,
    parse_covid_findings,
    read_report,
    view_set,
)


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("PA", "PA"),
        (" pa ", "PA"),
        ("AP", "AP"),
        ("AP Supine", "AP"),
        ("APS", "AP"),
        ("L", "LATERAL"),
        ("LL", "LATERAL"),
        ("RL", "LATERAL"),
        ("LATERAL", "LATERAL"),
        ("XTABLE LATERAL", "LATERAL"),
        ("AP LLD", "OTHER"),
        ("Axial", "OTHER"),
        ("SWIMMERS", "OTHER"),
        ("?", ""),
        ("", ""),
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_normalize_view(text: object, view: str) -> None:
    assert normalize_view(text) == view


def test_view_set() -> None:
    assert view_set(None) is None
    assert view_set(["frontal"]) == {"PA", "AP"}
    assert view_set(("PA", "lateral", "unknown")) == {"PA", "LATERAL", ""}
    with pytest.raises(ConfigError, match="unknown view"):
        view_set(["sideways"])
    with pytest.raises(ConfigError):
        view_set([])


@pytest.mark.parametrize(
    ("text", "findings"),
    [
        ("COVID-19", ["COVID-19"]),
        ("COVID-19, ARDS", ["COVID-19", "ARDS"]),
        ("Pneumonia/Viral/COVID-19", ["Pneumonia", "Viral", "COVID-19"]),
        ("Mycoplasma Bacterial Pneumonia", ["Mycoplasma Bacterial Pneumonia"]),
        ("todo", None),
        ("", None),
        (" No Finding ", ["No Finding"]),
    ],
)
def test_parse_covid_findings(text: str, findings: list[str] | None) -> None:
    assert parse_covid_findings(text) == findings


def _row(trials: pd.DataFrame, image_id: str) -> pd.Series:
    rows = trials[trials["image_id"] == image_id]
    assert len(rows) == 1, image_id
    return rows.iloc[0]


def test_covid_layout(covid_layout: Path) -> None:
    manifest = covid_cxr_manifest(covid_layout)
    trials = manifest.trials
    assert list(trials.columns[: len(TRIAL_COLUMNS)]) == list(TRIAL_COLUMNS)
    assert set(trials["image_id"]) == {"a.jpg", "b.png", "c.jpeg", "d.jpg", "e.jpg"}
    assert manifest.excluded == {"modality CT": 1}
    missing = manifest.missing.set_index("error")
    assert sorted(manifest.missing["error"]) == ["Duplicate", "NotOnDisk"]
    assert "another patient id" in missing.loc["Duplicate", "reason"]
    assert missing.loc["NotOnDisk", "path"].endswith("gone.jpg")
    a, b, c = _row(trials, "a.jpg"), _row(trials, "b.png"), _row(trials, "c.jpeg")
    assert (a["trial_id"], b["trial_id"], c["trial_id"]) == ("7/0", "7/0", "7/3")
    assert (a["sample_index"], b["sample_index"], c["sample_index"]) == ("0", "1", "0")
    assert b["path"].endswith("images_512/b.jpg") and c["path"].endswith("images_512/c.jpg")
    assert (a["view"], b["view"], c["view"], c["view_raw"]) == ("PA", "LATERAL", "AP", "AP Supine")
    assert a["labels"] == "ARDS|COVID-19" and a["labels_known"] == "1"  # label_names order
    assert a["report"] == "fever, cough" and a["license"] == "CC BY 4.0"
    assert c["report"] == "worse,tail" and c["other_notes"] == "credit"  # the spilled note joined back
    d = _row(trials, "d.jpg")
    assert d["labels"] == "" and d["labels_known"] == "0" and d["trial_id"] == "8/offset?/d"
    e = _row(trials, "e.jpg")
    assert e["view"] == "" and e["labels"] == "Pneumonia|SARS|Viral"
    assert manifest.label_names == ("ARDS", "COVID-19", "Pneumonia", "SARS", "Viral")
    assert manifest.n_patients == 3 and manifest.n_studies == 4
    assert all(Path(p).is_file() for p in trials["path"])


def test_covid_layout_view_filter_counts_what_it_drops(covid_layout: Path) -> None:
    manifest = covid_cxr_manifest(covid_layout, views=("PA", "AP"))
    assert set(manifest.trials["image_id"]) == {"a.jpg", "c.jpeg", "d.jpg"}
    assert manifest.excluded == {"modality CT": 1, "view LATERAL": 1, "view unknown": 1}
    assert list(manifest.trials["sample_index"]) == ["0", "0", "0"]  # renumbered within each study
    everything = covid_cxr_manifest(covid_layout, modalities=("X-ray", "CT"))
    assert "modality CT" not in everything.excluded
    assert len(everything.missing) == 3  # the CT row's file is not on disk either


def test_real_covid_cxr(covid_root: Path) -> None:
    manifest = covid_cxr_manifest(covid_root)
    trials = manifest.trials
    # 667 X-ray rows in metadata.csv: 14 files absent from the snapshot, 5 images listed twice
    assert len(trials) == 648 and manifest.excluded == {"modality CT": 84}
    assert manifest.missing["error"].value_counts().to_dict() == {"NotOnDisk": 14, "Duplicate": 5}
    assert manifest.n_patients == 349 and manifest.n_studies == 597
    assert trials["view"].value_counts().to_dict() == {"PA": 305, "AP": 250, "LATERAL": 54, "": 39}
    assert (trials["labels_known"] == "1").sum() == 570 and (trials["report"] != "").sum() == 537
    assert "COVID-19" in manifest.label_names and "No Finding" in manifest.label_names
    assert (trials["labels"] == "ARDS|COVID-19").sum() == 12
    assert all(Path(p).is_file() for p in trials["path"])
    assert trials["orig_width"].ne("").all()  # from image_provenance.csv
    assert not trials["report"].str.startswith("Since January 2020 Elsevier").any()
    frontal = covid_cxr_manifest(covid_root, views=["frontal"])
    assert len(frontal.trials) == 555 and frontal.n_patients == 327


def test_mimic_layout(mimic_layout: Path, mimic_ids: dict[str, Any]) -> None:
    MIMIC_SUBJECT, MIMIC_STUDY, MIMIC_STUDY2 = mimic_ids["subject"], mimic_ids["study"], mimic_ids["study2"]
    MIMIC_DICOMS = mimic_ids["dicoms"]
    manifest = mimic_cxr_manifest(mimic_layout)
    trials = manifest.trials
    assert list(trials["image_id"]) == list(MIMIC_DICOMS[:3])
    assert manifest.label_names == CHEXPERT_LABELS
    first, lateral, portable = (trials.iloc[k] for k in range(3))
    assert first["path"] == str(
        mimic_layout / "files" / "p10" / f"p{MIMIC_SUBJECT}" / f"s{MIMIC_STUDY}" / f"{MIMIC_DICOMS[0]}.jpg"
    )
    assert (first["patient_id"], first["trial_id"], first["sample_index"]) == (
        MIMIC_SUBJECT,
        MIMIC_STUDY,
        "0",
    )
    assert (lateral["trial_id"], lateral["sample_index"], lateral["view"]) == (MIMIC_STUDY, "1", "LATERAL")
    assert (
        first["labels"] == "Cardiomegaly" and first["uncertain"] == "Edema" and first["labels_known"] == "1"
    )
    assert portable["labels_known"] == "0" and portable["trial_id"] == MIMIC_STUDY2
    assert (first["split"], portable["split"], portable["view"]) == ("train", "test", "AP")
    assert "pleural effusion" in read_report(first) and portable["report_path"] == ""
    assert manifest.missing["path"].iloc[0].endswith(f"{MIMIC_DICOMS[3]}.jpg")
    assert list(manifest.missing["error"]) == ["NotOnDisk"]
    assert len(mimic_cxr_manifest(mimic_layout, views=["LATERAL"]).trials) == 1
    (mimic_layout / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    unlabelled = mimic_cxr_manifest(mimic_layout)
    assert unlabelled.label_names is None and set(unlabelled.trials["labels_known"]) == {"0"}


@pytest.mark.parametrize("inside", [False, True])
def test_chexpert_layout(chexpert_layout: Path, inside: bool) -> None:
    root = chexpert_layout / "CheXpert-v1.0-small" if inside else chexpert_layout
    manifest = chexpert_manifest(root, "train.csv")
    trials = manifest.trials
    assert manifest.label_names == CHEXPERT_LABELS
    assert list(trials["trial_id"]) == ["patient00001/study1", "patient00001/study1", "patient00002/study1"]
    assert list(trials["sample_index"]) == ["0", "1", "0"]
    assert list(trials["view"]) == ["AP", "LATERAL", "PA"]
    assert list(trials["view_raw"]) == ["Frontal/AP", "Lateral", "Frontal/PA"]
    assert trials["labels"].iloc[0] == "Cardiomegaly" and trials["uncertain"].iloc[0] == "Edema"
    assert trials["labels"].iloc[2] == "No Finding" and set(trials["split"]) == {"train"}
    assert all(Path(p).is_file() for p in trials["path"])
    assert len(manifest.missing) == 1 and manifest.missing["path"].iloc[0].endswith(
        "study2/view1_frontal.jpg"
    )
    assert len(chexpert_manifest(root, "train.csv", views=["PA"]).trials) == 1


def test_nih_layout(nih_layout: Path) -> None:
    manifest = nih_manifest(nih_layout)
    trials = manifest.trials
    assert manifest.label_names == NIH_LABELS
    assert list(trials["image_id"]) == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert list(trials["patient_id"]) == ["1", "1", "2"]
    assert list(trials["trial_id"]) == ["1/0", "1/1", "2/0"]
    assert list(trials["labels"]) == ["Cardiomegaly|Effusion", "No Finding", "Hernia"]
    assert list(trials["view"]) == ["PA", "PA", "AP"] and list(trials["split"]) == ["train", "train", "test"]
    assert trials["path"].iloc[2].endswith("images_002/images/00000002_000.png")
    assert list(manifest.missing["error"]) == ["NotOnDisk"]


def test_detect_and_build(
    covid_layout: Path, mimic_layout: Path, chexpert_layout: Path, nih_layout: Path
) -> None:
    assert detect_layout(covid_layout) == "covid_cxr"
    assert detect_layout(mimic_layout) == "mimic_cxr"
    assert detect_layout(chexpert_layout) == "chexpert"
    assert detect_layout(nih_layout) == "nih"
    assert len(build_manifest("auto", nih_layout, views=["AP"]).trials) == 1
    with pytest.raises(ConfigError, match="takes no argument"):
        build_manifest("covid_cxr", covid_layout, table="x.csv")
    with pytest.raises(ConfigError, match="unknown X-ray layout"):
        build_manifest("padchest", covid_layout)
    with pytest.raises(ConfigError, match="cannot tell"):
        detect_layout(covid_layout / "images_512")


def test_broken_tables(tmp_path: Path, covid_layout: Path) -> None:
    (covid_layout / "metadata.csv").write_text("patientid,offset\n1,2\n")
    with pytest.raises(DataError, match="lacks column"):
        covid_cxr_manifest(covid_layout)
    with pytest.raises(DataError, match="not there"):
        nih_manifest(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        covid_cxr_manifest(tmp_path / "nowhere")
