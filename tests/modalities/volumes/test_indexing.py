"""Indexing volumes: every file read and checked, each bad file quarantined with its reason, the saved
index read back, and ``medcl index --modality volume`` on real hippocampus cases and a broken layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from modalities.volumes.indexing import (
    INDEX_COLUMNS,
    check_study,
    index_volumes,
    load_index,
    parse_triple,
    save_index,
)


def medcl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medcl", *args], capture_output=True, text=True, timeout=300)


def broken_msd_layout(root: Path, hippo_root: Path, broken: dict[str, Path], copy_cases) -> Path:
    """Five real cases plus broken ones, MSD-style (image and label share a name)."""
    copy_cases(hippo_root, root)
    label_001 = hippo_root / "labelsTr" / "hippocampus_001.nii.gz"
    cases = {
        "case_truncated": ("truncated_gz", label_001),
        "case_text": ("text_gz", label_001),
        "case_plain": ("plain_named_gz", label_001),
        "case_zero_pixdim": ("zero_pixdim", label_001),
        "case_nan": ("nan_voxels", label_001),
        "case_offgrid": ("image", broken["mask_shifted"]),
        "case_fractional": ("image", broken["mask_fractional"]),
    }
    for case, (image_key, label) in cases.items():
        shutil.copyfile(broken[image_key], root / "imagesTr" / f"{case}.nii.gz")
        shutil.copyfile(label, root / "labelsTr" / f"{case}.nii.gz")
    return root


EXPECTED_REASONS = {
    # file name → (folder of the file at fault, error type, words in the reason)
    "case_truncated.nii.gz": ("imagesTr", "CorruptFileError", "truncated"),
    "case_text.nii.gz": ("imagesTr", "UnsupportedFormatError", "not gzip-compressed: it is text"),
    "case_plain.nii.gz": ("imagesTr", "UnsupportedFormatError", "uncompressed NIfTI-1"),
    "case_zero_pixdim.nii.gz": ("imagesTr", "InvalidVolumeError", "pixdim"),
    "case_nan.nii.gz": ("imagesTr", "InvalidVolumeError", "2 of 62475 voxels"),
    "case_offgrid.nii.gz": ("labelsTr", "InvalidVolumeError", "does not match its image"),
    "case_fractional.nii.gz": ("labelsTr", "InvalidVolumeError", "whole label numbers"),
}


def test_index_keeps_good_studies_and_quarantines_each_bad_file(
    tmp_path: Path, hippo_root: Path, broken_volumes: dict[str, Path], copy_cases
) -> None:
    root = broken_msd_layout(tmp_path / "Task04", hippo_root, broken_volumes, copy_cases)
    calls: list[tuple[int, int]] = []
    result = index_volumes("auto", root, progress=lambda done, total: calls.append((done, total)))
    assert result.dataset == "msd" and calls[-1] == (12, 12) and len(calls) == 12
    trials = result.manifest.trials
    assert list(trials.columns) == list(INDEX_COLUMNS)
    assert sorted(trials["trial_id"]) == [
        "hippocampus_001",
        "hippocampus_003",
        "hippocampus_004",
        "hippocampus_006",
        "hippocampus_007",
    ]
    row = trials.set_index("trial_id").loc["hippocampus_001"]
    image = nib.load(row["path"])
    assert row["shape"] == "x".join(map(str, image.shape)) == "35x51x35"
    assert (
        parse_triple(row["spacing"]) == (1.0, 1.0, 1.0) and row["channels"] == 1 and row["format"] == "nifti"
    )
    quarantine = result.quarantine
    assert list(quarantine.columns) == ["path", "reason", "error"]
    found = {Path(p).name: (Path(p).parent.name, e, r) for p, r, e in quarantine.itertuples(index=False)}
    assert set(found) == set(EXPECTED_REASONS)
    for name, (folder, error, words) in EXPECTED_REASONS.items():
        assert found[name][0] == folder and found[name][1] == error and words in found[name][2], name
    assert result.summary() == "indexed 5 of 12 studies (5 patients); 7 quarantined → see quarantine.csv"


def test_saved_index_reads_back_with_text_ids(tmp_path: Path, hippo_root: Path, copy_cases) -> None:
    root = copy_cases(hippo_root, tmp_path / "data", cases=("hippocampus_001", "hippocampus_003"))
    (root / "imagesTs").mkdir()
    shutil.copyfile(
        hippo_root / "imagesTr" / "hippocampus_004.nii.gz", root / "imagesTs" / "hippocampus_004.nii.gz"
    )
    result = index_volumes("msd", root)
    out = save_index(result, tmp_path / "index")
    info = json.loads((out / "index.json").read_text())
    assert info["counts"] == {"listed": 3, "indexed": 3, "quarantined": 0, "patients": 3, "labelled": 2}
    assert info["label_names"] == ["background", "Anterior", "Posterior"] and info["modality"] == "volume"
    assert pd.read_csv(out / "quarantine.csv").empty
    manifest = load_index(out)
    pd.testing.assert_frame_equal(manifest.trials, result.manifest.trials)
    assert manifest.trials["mask_path"].iloc[2] == ""  # no mask stays "", not NaN
    assert manifest.label_names == ("background", "Anterior", "Posterior")


def test_check_study_returns_the_image_or_raises_for_the_mask(
    hippo_case: tuple[Path, Path], broken_volumes: dict[str, Path]
) -> None:
    assert check_study(*hippo_case).shape == (35, 51, 35)
    with pytest.raises(Exception, match="does not match its image") as raised:
        check_study(broken_volumes["image"], broken_volumes["mask_cropped"])
    assert raised.value.path == str(broken_volumes["mask_cropped"])  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_index_on_real_hippocampus_cases(tmp_path: Path, shared_data: Path, copy_cases) -> None:
    root = copy_cases(shared_data / "msd_hippocampus", tmp_path / "hippocampus")
    result = medcl("index", str(root), "--modality", "volume", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("indexed 5 of 5 studies (5 patients); none quarantined")
    trials = pd.read_csv(tmp_path / "out" / "trials.csv", dtype=str, keep_default_na=False)
    assert list(trials["trial_id"]) == sorted(trials["trial_id"]) and len(trials) == 5
    assert set(trials["modality"]) == {"MR"}
    shapes = {
        t: "x".join(map(str, nib.load(p).shape))
        for t, p in zip(trials["trial_id"], trials["path"], strict=True)
    }
    assert dict(zip(trials["trial_id"], trials["shape"], strict=True)) == shapes
    assert pd.read_csv(tmp_path / "out" / "quarantine.csv").empty
    assert json.loads((tmp_path / "out" / "index.json").read_text())["dataset"] == "msd"


def test_cli_index_names_the_broken_file_in_quarantine_csv(
    tmp_path: Path, hippo_root: Path, broken_volumes: dict[str, Path]
) -> None:
    root = tmp_path / "radiomics_style"
    root.mkdir()
    shutil.copyfile(hippo_root / "imagesTr" / "hippocampus_001.nii.gz", root / "good_image.nii.gz")
    shutil.copyfile(hippo_root / "labelsTr" / "hippocampus_001.nii.gz", root / "good_label.nii.gz")
    shutil.copyfile(broken_volumes["truncated_gz"], root / "bad_image.nii.gz")
    result = medcl(
        "index", str(root), "--modality", "volume", "--dataset", "paired", "--out", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.startswith("indexed 1 of 2 studies (1 patients); 1 quarantined")
    quarantine = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert list(quarantine["path"]) == [str((root / "bad_image.nii.gz").resolve())]
    assert quarantine["error"].iloc[0] == "CorruptFileError" and "truncated" in quarantine["reason"].iloc[0]


def test_cli_index_volume_errors_are_one_line(tmp_path: Path, hippo_root: Path) -> None:
    result = medcl("index", str(tmp_path), "--modality", "volume", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot tell the layout" in result.stderr
    result = medcl(
        "index", str(hippo_root), "--modality", "volume", "--out", str(tmp_path / "o"), "--allow-flat"
    )
    assert result.returncode == 2 and "signal options" in result.stderr
