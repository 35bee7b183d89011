"""index_xrays: every image decoded and checked, bad files quarantined with reasons, saved and loaded back,
and ``medcl index --modality xray``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcl.cli import main
from medcl.errors import ConfigError, DataError
from modalities.xray.indexing import INDEX_COLUMNS, index_xrays, load_index, save_index


@pytest.fixture()
def messy_covid(
    covid_layout: Path,
    real_grey: np.ndarray,
    make_cr_dicom: Callable[..., Path],
    covid_metadata_row: Callable[..., str],
) -> Path:
    """The covid layout with d.jpg truncated, e.jpg replaced by text, a 40x50 thumbnail t.png and a CR DICOM
    f.dcm (view blank in the table, PA in the file) added."""
    images = covid_layout / "images_512"
    data = (images / "d.jpg").read_bytes()
    (images / "d.jpg").write_bytes(data[: len(data) // 2])
    (images / "e.jpg").write_text("not an image\n")
    Image.fromarray(real_grey[:40, :50]).save(images / "t.png")
    make_cr_dicom(images / "f.dcm", (real_grey.astype(np.uint16) * 16), photometric="MONOCHROME1", view="PA")
    with (covid_layout / "metadata.csv").open("a") as handle:
        handle.write(covid_metadata_row("12", "0", "No Finding", "PA", "X-ray", "t.png"))
        handle.write(covid_metadata_row("13", "0", "No Finding", "", "X-ray", "f.dcm"))
    assert (covid_layout / "metadata.csv").read_text().startswith("patientid,offset,sex,age,finding")
    return covid_layout


def test_index_quarantines_bad_files_with_reasons(messy_covid: Path) -> None:
    result = index_xrays("auto", messy_covid)
    trials = result.manifest.trials
    assert list(trials.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert set(trials["image_id"]) == {"a.jpg", "b.png", "c.jpeg", "f.dcm"}
    quarantine = result.quarantine.assign(name=[Path(p).name for p in result.quarantine["path"]])
    by_name = quarantine.set_index("name")
    assert (
        by_name.loc["d.jpg", "error"] == "CorruptFileError" and "truncated" in by_name.loc["d.jpg", "reason"]
    )
    assert by_name.loc["e.jpg", "error"] == "UnsupportedFormatError"
    assert (
        by_name.loc["t.png", "error"] == "UnsupportedFormatError"
        and "40x50" in by_name.loc["t.png", "reason"]
    )
    assert by_name.loc["gone.jpg", "error"] == "NotOnDisk"
    assert (quarantine["error"] == "Duplicate").sum() == 1
    dicom = trials.set_index("image_id").loc["f.dcm"]
    assert (dicom["format"], dicom["photometric"], dicom["bits_stored"]) == ("dicom", "MONOCHROME1", "12")
    assert (dicom["view"], dicom["view_raw"], dicom["pixel_spacing"]) == ("PA", "PA", "0.139x0.143")
    a = trials.set_index("image_id").loc["a.jpg"]
    height, width = np.asarray(Image.open(messy_covid / "images_512" / "a.jpg")).shape
    assert (a["format"], a["height"], a["width"]) == ("jpeg", str(height), str(width))
    assert result.summary().startswith("indexed 4 of 9 images")
    assert "excluded on purpose: 1 modality CT" in result.summary()


def test_save_and_load_round_trip(messy_covid: Path, tmp_path: Path) -> None:
    result = index_xrays("covid_cxr", messy_covid, views=["PA", "AP"])
    out = save_index(result, tmp_path / "index")
    info = json.loads((out / "index.json").read_text())
    assert info["modality"] == "xray" and info["counts"]["indexed"] == len(result.manifest.trials)
    # e.jpg (view "?") is read (and quarantined: not an image); f.dcm (blank view) is kept: its file says PA
    assert info["excluded"] == {"modality CT": 1, "view LATERAL": 1}
    trials = result.manifest.trials
    assert set(trials["image_id"]) == {"a.jpg", "c.jpeg", "f.dcm"} and set(trials["sample_index"]) == {"0"}
    assert info["settings"]["builder_kwargs"] == {"views": ["PA", "AP"]}
    loaded = load_index(out)
    pd.testing.assert_frame_equal(loaded.trials, result.manifest.trials)
    pd.testing.assert_frame_equal(loaded.missing, result.quarantine)
    assert loaded.label_names == result.manifest.label_names and loaded.excluded == result.manifest.excluded
    with pytest.raises(DataError, match="no saved index"):
        load_index(tmp_path / "elsewhere")


def test_medcl_index_command(messy_covid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["index", str(messy_covid), "--modality", "xray", "--out", str(out)]) == 0
    assert "indexed 4 of 9 images" in capsys.readouterr().out
    assert len(pd.read_csv(out / "quarantine.csv")) == 5
    assert load_index(out).layout == "covid_cxr"


def test_index_settings_are_checked(covid_layout: Path) -> None:
    with pytest.raises(ConfigError):
        index_xrays("covid_cxr", covid_layout, min_size=0)
    with pytest.raises(ConfigError, match="takes no argument"):
        index_xrays("covid_cxr", covid_layout, table="x.csv")


def test_a_folder_of_only_bad_images_indexes_nothing_without_raising(covid_layout: Path) -> None:
    for path in (covid_layout / "images_512").iterdir():
        path.write_bytes(b"")
    result = index_xrays("covid_cxr", covid_layout)
    assert len(result.manifest.trials) == 0 and len(result.quarantine) == 7
    shutil.rmtree(covid_layout / "images_512")
    with pytest.raises(ConfigError, match="no images_512"):
        index_xrays("covid_cxr", covid_layout)
