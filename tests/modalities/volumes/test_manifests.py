"""Volume manifest builders: MSD (with and without dataset.json), BTCV, CSV and paired-file layouts, built on
copies of real files in tmp_path (and on the real folders where they exist)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medcl.errors import ConfigError, CorruptFileError
from modalities.volumes.manifests import (
    BTCV_LABELS,
    TRIAL_COLUMNS,
    btcv_manifest,
    build_manifest,
    csv_manifest,
    detect_layout,
    msd_manifest,
    paired_manifest,
)


def test_msd_without_dataset_json_pairs_by_name_one_patient_per_case(hippo_root: Path) -> None:
    manifest = msd_manifest(hippo_root)
    trials = manifest.trials
    assert list(trials.columns) == list(TRIAL_COLUMNS)
    assert len(trials) == 40 and manifest.missing.empty and manifest.layout == "msd"
    names = sorted(p.name for p in (hippo_root / "imagesTr").iterdir())
    assert [Path(p).name for p in trials["path"]] == names
    assert [Path(p).name for p in trials["mask_path"]] == names
    assert all(Path(p).parent.name == "labelsTr" for p in trials["mask_path"])
    assert (trials["patient_id"] == trials["trial_id"]).all()
    assert trials["trial_id"].iloc[0] == "hippocampus_001" and trials["patient_id"].nunique() == 40
    assert set(trials["modality"]) == {"MR"} and set(trials["split"]) == {"training"}
    assert manifest.label_names == ("background", "Anterior", "Posterior")


def test_msd_real_shared_copy(shared_data: Path) -> None:
    manifest = build_manifest("auto", shared_data / "msd_hippocampus")
    assert len(manifest.trials) == 220 and manifest.missing.empty
    assert manifest.trials["patient_id"].nunique() == 220


def test_msd_fallback_reports_unpaired_files_and_ignores_macos_forks(
    tmp_path: Path, hippo_root: Path, copy_cases
) -> None:
    root = copy_cases(hippo_root, tmp_path / "Task04_Hippocampus")
    (root / "labelsTr" / "hippocampus_003.nii.gz").unlink()
    (root / "imagesTr" / "hippocampus_004.nii.gz").unlink()
    (root / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "imagesTs").mkdir()
    shutil.copyfile(
        hippo_root / "imagesTr" / "hippocampus_008.nii.gz", root / "imagesTs" / "hippocampus_008.nii.gz"
    )
    manifest = msd_manifest(root)
    trials = manifest.trials.set_index("trial_id")
    assert sorted(trials.index) == [
        "hippocampus_001",
        "hippocampus_006",
        "hippocampus_007",
        "hippocampus_008",
    ]
    assert (
        trials.loc["hippocampus_008", "split"] == "test" and trials.loc["hippocampus_008", "mask_path"] == ""
    )
    missing = {Path(p).name: (r, e) for p, r, e in manifest.missing.itertuples(index=False)}
    assert missing["hippocampus_003.nii.gz"][1] == "Unpaired"
    assert "labelsTr/hippocampus_003.nii.gz is not there" in missing["hippocampus_003.nii.gz"][0]
    assert "label without an image" in missing["hippocampus_004.nii.gz"][0]
    assert len(msd_manifest(root, include_test=False).trials) == 3


def write_dataset_json(root: Path, training: list[dict], test: list[str], modality: dict) -> None:
    meta = {
        "name": "Hippocampus",
        "tensorImageSize": "3D",
        "modality": modality,
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))


def test_msd_dataset_json(tmp_path: Path, hippo_root: Path, copy_cases) -> None:
    root = copy_cases(hippo_root, tmp_path / "Task04")
    (root / "imagesTs").mkdir()
    shutil.copyfile(
        hippo_root / "imagesTr" / "hippocampus_008.nii.gz", root / "imagesTs" / "hippocampus_008.nii.gz"
    )
    training = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
        for c in ("hippocampus_001", "hippocampus_003", "hippocampus_999")
    ]
    write_dataset_json(root, training, ["./imagesTs/hippocampus_008.nii.gz"], {"0": "MRI"})
    assert detect_layout(root) == "msd"
    manifest = build_manifest("auto", root)
    trials = manifest.trials
    # only what dataset.json lists: 004, 006, 007 are on disk but not listed
    assert list(trials["trial_id"]) == ["hippocampus_001", "hippocampus_003", "hippocampus_008"]
    assert list(trials["split"]) == ["training", "training", "test"]
    assert trials["path"].iloc[0] == str((root / "imagesTr" / "hippocampus_001.nii.gz").resolve())
    assert set(trials["modality"]) == {"MR"}
    assert manifest.label_names == ("background", "Anterior", "Posterior")
    assert list(manifest.missing["error"]) == ["NotOnDisk"]
    assert "hippocampus_999" in manifest.missing["path"].iloc[0]

    write_dataset_json(root, training[:1], [], {"0": "CT"})
    assert set(msd_manifest(root).trials["modality"]) == {"CT"}
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        msd_manifest(root)


def btcv_layout(root: Path, hippo_root: Path, images: str, labels: str, tests: str | None) -> Path:
    """A faithful BTCV folder (imgNNNN / labelNNNN names), its volumes real MSD crops."""
    (root / images).mkdir(parents=True)
    (root / labels).mkdir(parents=True)
    for number, case in ((1, "hippocampus_001"), (2, "hippocampus_003"), (3, "hippocampus_004")):
        shutil.copyfile(hippo_root / "imagesTr" / f"{case}.nii.gz", root / images / f"img{number:04d}.nii.gz")
        shutil.copyfile(
            hippo_root / "labelsTr" / f"{case}.nii.gz", root / labels / f"label{number:04d}.nii.gz"
        )
    if tests is not None:
        (root / tests).mkdir(parents=True)
        shutil.copyfile(hippo_root / "imagesTr" / "hippocampus_006.nii.gz", root / tests / "img0061.nii.gz")
    return root


@pytest.mark.parametrize(
    ("images", "labels", "tests"),
    [("imagesTr", "labelsTr", "imagesTs"), ("Training/img", "Training/label", "Testing/img")],
)
def test_btcv_layouts(tmp_path: Path, hippo_root: Path, images: str, labels: str, tests: str) -> None:
    root = btcv_layout(tmp_path / "BTCV", hippo_root, images, labels, tests)
    (root / labels / "label0003.nii.gz").unlink()
    assert detect_layout(root) == "btcv"
    manifest = btcv_manifest(root)
    trials = manifest.trials
    assert list(trials["trial_id"]) == ["0001", "0002", "0061"]
    assert (trials["patient_id"] == trials["trial_id"]).all()
    assert Path(trials["mask_path"].iloc[1]).name == "label0002.nii.gz"
    assert trials["mask_path"].iloc[2] == "" and trials["split"].iloc[2] == "test"
    assert set(trials["modality"]) == {"CT"}
    assert manifest.label_names == BTCV_LABELS and len(BTCV_LABELS) == 14
    assert list(manifest.missing["error"]) == ["Unpaired"]
    assert Path(manifest.missing["path"].iloc[0]).name == "img0003.nii.gz"


def test_csv_layout(tmp_path: Path, hippo_root: Path) -> None:
    data = tmp_path / "study" / "files"
    data.mkdir(parents=True)
    for case in ("hippocampus_001", "hippocampus_003"):
        shutil.copyfile(hippo_root / "imagesTr" / f"{case}.nii.gz", data / f"{case}.nii.gz")
        shutil.copyfile(hippo_root / "labelsTr" / f"{case}.nii.gz", data / f"{case}_seg.nii.gz")
    elsewhere = hippo_root / "imagesTr" / "hippocampus_004.nii.gz"
    table = pd.DataFrame(
        {
            "patient_id": ["007", "007", "012", "013"],
            "study_id": ["s1", "s2", "s3", "s4"],
            "image": [
                "files/hippocampus_001.nii.gz",
                "files/hippocampus_003.nii.gz",
                str(elsewhere),
                "files/x.nii.gz",
            ],
            "mask": ["files/hippocampus_001_seg.nii.gz", "", "", ""],
            "modality": ["MR", "MRI", "", "MR"],
            "site": ["A", "A", "B", "B"],
        }
    )
    table.to_csv(tmp_path / "study" / "studies.csv", index=False)
    assert detect_layout(tmp_path / "study") == "csv"
    manifest = csv_manifest(tmp_path / "study", modality="MR")
    trials = manifest.trials
    assert list(trials.columns) == [*TRIAL_COLUMNS, "site"]
    assert list(trials["patient_id"]) == ["007", "007", "012"]  # kept as text: "007", not 7
    assert list(trials["trial_id"]) == ["s1", "s2", "s3"]
    assert trials["path"].iloc[0] == str((data / "hippocampus_001.nii.gz").resolve())
    assert trials["mask_path"].iloc[0] == str((data / "hippocampus_001_seg.nii.gz").resolve())
    assert list(trials["mask_path"].iloc[1:]) == ["", ""]
    assert list(trials["modality"]) == ["MR", "MR", "MR"] and list(trials["site"]) == ["A", "A", "B"]
    assert "x.nii.gz" in manifest.missing["path"].iloc[0] and manifest.missing["error"].iloc[0] == "NotOnDisk"

    table.assign(study_id=["s1", "s1", "s3", "s4"]).to_csv(tmp_path / "study" / "studies.csv", index=False)
    with pytest.raises(ConfigError, match="study_id \\['s1'\\] repeat"):
        csv_manifest(tmp_path / "study")
    table.drop(columns=["study_id"]).to_csv(tmp_path / "study" / "other.csv", index=False)
    with pytest.raises(ConfigError, match="lacks column"):
        csv_manifest(tmp_path / "study", table="other.csv")


def test_paired_layout_on_the_radiomics_folder(shared_data: Path) -> None:
    root = shared_data / "radiomics_ct_mri"
    assert detect_layout(root) == "paired"
    manifest = build_manifest("auto", root)
    trials = manifest.trials
    assert list(trials["trial_id"]) == ["brain1", "brain2", "breast1", "lung1", "lung2"]
    assert all(
        Path(m).name == f"{c}_label.nrrd"
        for c, m in zip(trials["trial_id"], trials["mask_path"], strict=True)
    )
    assert manifest.missing.empty


def test_paired_layout_with_unpaired_files(tmp_path: Path, hippo_root: Path) -> None:
    shutil.copyfile(hippo_root / "imagesTr" / "hippocampus_001.nii.gz", tmp_path / "a_image.nii.gz")
    shutil.copyfile(hippo_root / "labelsTr" / "hippocampus_001.nii.gz", tmp_path / "a_mask.nii.gz")
    shutil.copyfile(hippo_root / "imagesTr" / "hippocampus_003.nii.gz", tmp_path / "b_image.nii.gz")
    shutil.copyfile(hippo_root / "labelsTr" / "hippocampus_004.nii.gz", tmp_path / "c_label.nii.gz")
    (tmp_path / "notes_image.txt").write_text("not a volume")
    manifest = paired_manifest(tmp_path, modality="MRI")
    assert list(manifest.trials["trial_id"]) == ["a", "b"]
    assert Path(manifest.trials["mask_path"].iloc[0]).name == "a_mask.nii.gz"
    assert manifest.trials["mask_path"].iloc[1] == "" and set(manifest.trials["modality"]) == {"MR"}
    assert Path(manifest.missing["path"].iloc[0]).name == "c_label.nii.gz"


def test_unknown_layouts_and_arguments_are_refused(tmp_path: Path, hippo_root: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ConfigError, match="cannot tell the layout"):
        detect_layout(tmp_path)
    with pytest.raises(ConfigError, match="unknown volume layout 'nifti'"):
        build_manifest("nifti", hippo_root)
    with pytest.raises(ConfigError, match="takes no argument"):
        build_manifest("msd", hippo_root, table="x.csv")
    with pytest.raises(ConfigError, match="not an MSD folder"):
        msd_manifest(tmp_path)


def test_paired_manifest_keeps_only_the_named_cases(shared_data) -> None:
    from modalities.volumes.manifests import paired_manifest

    manifest = paired_manifest(shared_data / "radiomics_ct_mri", cases=["lung1", "lung2"])
    assert sorted(manifest.trials["trial_id"]) == ["lung1", "lung2"]
    assert all(manifest.trials["mask_path"].str.endswith("_label.nrrd"))
    with pytest.raises(ConfigError, match="no image for case"):
        paired_manifest(shared_data / "radiomics_ct_mri", cases=["lung3"])
