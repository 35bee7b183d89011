"""Fixtures for the X-ray tests: real covid_cxr radiographs, DICOM radiographs written from their real
pixels, and small dataset layouts (covid_cxr, MIMIC-CXR-JPG, CheXpert, NIH) written in tmp_path in those
datasets' exact table formats, with real JPEG/PNG radiographs as their image files."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

#: real covid_cxr radiographs used as image files (512 px copies; L-mode JPEG).
COVID_IMAGES = (
    "000001-17.jpg",
    "000001-19.jpg",
    "000001-2.jpg",
    "000001-24.jpg",
    "000001-27.jpg",
    "000001-3.jpg",
)


@pytest.fixture(scope="session")
def covid_root(shared_data: Path) -> Path:
    """The real ``covid_cxr`` folder (metadata.csv, images_512/, image_provenance.csv)."""
    root = shared_data / "covid_cxr"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"{root} has no metadata.csv")
    return root


@pytest.fixture(scope="session")
def covid_jpegs(covid_root: Path) -> list[Path]:
    """Six real covid_cxr radiographs (JPEG)."""
    return [covid_root / "images_512" / name for name in COVID_IMAGES]


@pytest.fixture(scope="session")
def real_grey(covid_jpegs: list[Path]) -> np.ndarray:
    """A real radiograph as uint8 ``(H, W)`` (Pillow's own decode of the first covid JPEG)."""
    return np.asarray(Image.open(covid_jpegs[0]).convert("L"))


def voi_lut_item(lut: np.ndarray, first: int = 0, bits: int = 12) -> Dataset:
    """A VOI LUT Sequence item (``LUTDescriptor`` [entries, first mapped, bits], US ``LUTData``)."""
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    item.LUTData = [int(v) for v in lut]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    return item


@pytest.fixture(scope="session")
def make_voi_lut() -> Callable[..., Dataset]:
    """:func:`voi_lut_item` wrapped in a one-item sequence factory."""

    def make(lut: np.ndarray, first: int = 0, bits: int = 12) -> DicomSequence:
        return DicomSequence([voi_lut_item(lut, first, bits)])

    return make


# --- dataset layouts in tmp_path ------------------------------------------------------------------

COVID_HEADER = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,"
    "other_notes,\n"
)


def covid_row(
    patient: str,
    offset: str,
    finding: str,
    view: str,
    modality: str,
    filename: str,
    notes: str = "",
    other: str = "",
    license_: str = "CC BY 4.0",
    spilled: str = "",
) -> str:
    """One metadata.csv line as the 2020-06 table writes it (28 fields and a trailing comma; ``spilled``
    fills the unnamed 29th field, as an unquoted comma in the notes does)."""
    quoted_notes = f'"{notes}"' if ("," in notes and not spilled) else notes
    folder = "volumes" if filename.endswith(".gz") else "images"
    finding = f'"{finding}"' if "," in finding else finding
    fields = [patient, offset, "M", "65", finding, *[""] * 12, view, modality, '"January 22, 2020"']
    fields += ['"Somewhere, Some City"', folder, filename, "10.1/x", "https://example.org", license_]
    fields += [quoted_notes, other, spilled]
    return ",".join(fields) + "\n"


def write_covid_layout(root: Path, images: list[Path]) -> Path:
    """A covid_cxr folder (metadata.csv in the real header format, images_512/ with real JPEGs).

    Rows (2 = first data row of the file): patient 7 offset 0: two images (PA ``a.jpg`` "COVID-19, ARDS",
    L ``b.png`` — an upstream PNG whose 512-px copy is ``b.jpg``); patient 7 offset 3: ``c.jpeg`` AP
    Supine "COVID-19" with a spilled note; patient 8 offset blank: ``d.jpg`` PA "todo"; patient 9 row
    listing ``a.jpg`` again; a CT row; a row whose file is missing (``gone.jpg``); patient 10: ``e.jpg``
    view "?", finding "Pneumonia/Viral/SARS".
    """
    (root / "images_512").mkdir(parents=True)
    for src, name in zip(images, ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"), strict=False):
        shutil.copyfile(src, root / "images_512" / name)
    lines = [
        COVID_HEADER,
        covid_row("7", "0", "COVID-19, ARDS", "PA", "X-ray", "a.jpg", notes="fever, cough", other="x"),
        covid_row("7", "0", "COVID-19, ARDS", "L", "X-ray", "b.png", notes="fever, cough"),
        covid_row(
            "7",
            "3",
            "COVID-19",
            "AP Supine",
            "X-ray",
            "c.jpeg",
            notes="worse",
            other="tail",
            spilled="credit",
        ),
        covid_row("8", "", "todo", "PA", "X-ray", "d.jpg"),
        covid_row("9", "2", "COVID-19, ARDS", "PA", "X-ray", "a.jpg"),
        covid_row("7", "0", "COVID-19", "Axial", "CT", "ct.jpg"),
        covid_row("11", "1", "SARS", "PA", "X-ray", "gone.jpg"),
        covid_row("10", "5", "Pneumonia/Viral/SARS", "?", "X-ray", "e.jpg"),
    ]
    (root / "metadata.csv").write_text("".join(lines))
    return root


@pytest.fixture(scope="session")
def covid_metadata_row() -> Callable[..., str]:
    """:func:`covid_row`, for tests that append rows to a layout's metadata.csv."""
    return covid_row


@pytest.fixture(scope="session")
def mimic_ids() -> dict[str, Any]:
    """The subject, study and dicom ids of :func:`write_mimic_layout`."""
    return {"subject": MIMIC_SUBJECT, "study": MIMIC_STUDY, "study2": MIMIC_STUDY2, "dicoms": MIMIC_DICOMS}


@pytest.fixture()
def covid_layout(tmp_path: Path, covid_jpegs: list[Path]) -> Path:
    """:func:`write_covid_layout` in ``tmp_path/covid``."""
    return write_covid_layout(tmp_path / "covid", covid_jpegs)


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices\n"
)


def write_chexpert_layout(root: Path, images: list[Path]) -> Path:
    """``root/CheXpert-v1.0-small/{train.csv, train/patientNNNNN/studyN/viewN_*.jpg}`` with real JPEGs.

    patient00001/study1: view1_frontal (AP; Cardiomegaly 1, Edema -1, Pneumonia 0), view2_lateral
    (Lateral; same labels); patient00002/study1/view1_frontal (PA; No Finding 1); patient00002/study2/
    view1_frontal listed but not on disk.
    """
    base = root / "CheXpert-v1.0-small"
    files = {
        "train/patient00001/study1/view1_frontal.jpg": images[0],
        "train/patient00001/study1/view2_lateral.jpg": images[1],
        "train/patient00002/study1/view1_frontal.jpg": images[2],
    }
    for relative, src in files.items():
        (base / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, base / relative)
    labels_a = ",,1.0,,,-1.0,,0.0,,,,,,"  # Cardiomegaly 1, Edema -1, Pneumonia 0 (CheXpert's column order)
    labels_b = "1.0" + "," * 13  # No Finding
    stem = "CheXpert-v1.0-small/train"
    rows = [
        f"{stem}/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,{labels_a}",
        f"{stem}/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,{labels_a}",
        f"{stem}/patient00002/study1/view1_frontal.jpg,Male,87,Frontal,PA,{labels_b}",
        f"{stem}/patient00002/study2/view1_frontal.jpg,Male,87,Frontal,PA,{labels_b}",
    ]
    (base / "train.csv").write_text(CHEXPERT_HEADER + "".join(r + "\n" for r in rows))
    return root


@pytest.fixture()
def chexpert_layout(tmp_path: Path, covid_jpegs: list[Path]) -> Path:
    """:func:`write_chexpert_layout` in ``tmp_path/chexpert``."""
    return write_chexpert_layout(tmp_path / "chexpert", covid_jpegs)


MIMIC_SUBJECT, MIMIC_STUDY, MIMIC_STUDY2 = "10000032", "50414267", "53189527"
MIMIC_DICOMS = (
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
    "e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c",
)


def _gz_csv(path: Path, text: str) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write(text)


def write_mimic_layout(root: Path, images: list[Path]) -> Path:
    """MIMIC-CXR-JPG 2.0.0 files: gzipped metadata/chexpert/split tables and ``files/p10/p10000032/
    s<study>/<dicom_id>.jpg`` (real JPEGs); a report ``s50414267.txt``. Study 50414267 has a PA and a
    lateral (``LATERAL``) image; study 53189527 an AP (``AP``) image and an ``LL`` image whose file is
    missing; the chexpert table labels only the first study (Cardiomegaly 1, Edema -1, Pneumonia 0)."""
    for dicom, study, src in (
        (MIMIC_DICOMS[0], MIMIC_STUDY, images[0]),
        (MIMIC_DICOMS[1], MIMIC_STUDY, images[1]),
        (MIMIC_DICOMS[2], MIMIC_STUDY2, images[2]),
    ):
        folder = root / "files" / "p10" / f"p{MIMIC_SUBJECT}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / f"{dicom}.jpg")
    (root / "files" / "p10" / f"p{MIMIC_SUBJECT}" / f"s{MIMIC_STUDY}.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " FINDINGS: \n There is no focal consolidation, pleural effusion or pneumothorax.\n"
    )
    header = (
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
        "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
        "PatientOrientationCodeSequence_CodeMeaning\n"
    )
    rows = [
        f"{MIMIC_DICOMS[0]},{MIMIC_SUBJECT},{MIMIC_STUDY},CHEST (PA AND LAT),PA,3056,2544,21800506,"
        "213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n",
        f"{MIMIC_DICOMS[1]},{MIMIC_SUBJECT},{MIMIC_STUDY},CHEST (PA AND LAT),LATERAL,3056,2544,21800506,"
        "213014.531,CHEST (PA AND LAT),lateral,Erect\n",
        f"{MIMIC_DICOMS[2]},{MIMIC_SUBJECT},{MIMIC_STUDY2},CHEST (PORTABLE AP),AP,2705,2539,21800626,"
        "165500.312,CHEST (PORTABLE AP),antero-posterior,\n",
        f"{MIMIC_DICOMS[3]},{MIMIC_SUBJECT},{MIMIC_STUDY2},CHEST (PORTABLE AP),LL,2705,2539,21800626,"
        "165500.312,CHEST (PORTABLE AP),left lateral,\n",
    ]
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", header + "".join(rows))
    labels = sorted(
        [
            "Atelectasis",
            "Cardiomegaly",
            "Consolidation",
            "Edema",
            "Enlarged Cardiomediastinum",
            "Fracture",
            "Lung Lesion",
            "Lung Opacity",
            "No Finding",
            "Pleural Effusion",
            "Pleural Other",
            "Pneumonia",
            "Pneumothorax",
            "Support Devices",
        ]
    )
    values = {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumonia": "0.0"}
    chexpert = "subject_id,study_id," + ",".join(labels) + "\n"
    chexpert += f"{MIMIC_SUBJECT},{MIMIC_STUDY}," + ",".join(values.get(n, "") for n in labels) + "\n"
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", chexpert)
    split = "dicom_id,study_id,subject_id,split\n" + "".join(
        f"{d},{s},{MIMIC_SUBJECT},{sp}\n"
        for d, s, sp in (
            (MIMIC_DICOMS[0], MIMIC_STUDY, "train"),
            (MIMIC_DICOMS[1], MIMIC_STUDY, "train"),
            (MIMIC_DICOMS[2], MIMIC_STUDY2, "test"),
        )
    )
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", split)
    return root


@pytest.fixture()
def mimic_layout(tmp_path: Path, covid_jpegs: list[Path]) -> Path:
    """:func:`write_mimic_layout` in ``tmp_path/mimic``."""
    return write_mimic_layout(tmp_path / "mimic", covid_jpegs)


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)


def write_nih_layout(root: Path, images: list[Path]) -> Path:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (its real header, 11 fields a row with the trailing
    comma), PNGs (real radiographs re-encoded as grey PNG) in ``images_001/images/`` and
    ``images_002/images/``, ``test_list.txt``. Patient 1 follow-ups 0 and 1 (Cardiomegaly|Effusion, No
    Finding), patient 2 follow-up 0 (AP, Hernia) and an image listed but not on disk."""
    names = ("00000001_000.png", "00000001_001.png", "00000002_000.png")
    for k, (name, src) in enumerate(zip(names, images, strict=False)):
        folder = root / f"images_00{1 + k // 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("L").save(folder / name)
    rows = [
        "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,\n",
        "00000001_001.png,No Finding,1,1,58,M,PA,2894,2729,0.143,0.143,\n",
        "00000002_000.png,Hernia,0,2,81,F,AP,2500,2048,0.168,0.168,\n",
        "00000003_000.png,Mass,0,3,74,F,PA,2500,2048,0.168,0.168,\n",
    ]
    (root / "Data_Entry_2017.csv").write_text(NIH_HEADER + "".join(rows))
    (root / "test_list.txt").write_text("00000002_000.png\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    return root


@pytest.fixture()
def nih_layout(tmp_path: Path, covid_jpegs: list[Path]) -> Path:
    """:func:`write_nih_layout` in ``tmp_path/nih``."""
    return write_nih_layout(tmp_path / "nih", covid_jpegs)


@pytest.fixture(scope="session")
def dicom_testfile() -> Callable[[str], Path]:
    """The path of one of pydicom's bundled real test files."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        path = get_testdata_file(name, download=False)  # never fetch pydicom's extra test data
        if path is None:
            pytest.skip(f"pydicom's test file {name} is not installed")
        return Path(str(path))

    return get


def read_dicom(path: Path) -> pydicom.Dataset:
    """The dataset of a DICOM file (for reference computations in tests)."""
    return pydicom.dcmread(path)
