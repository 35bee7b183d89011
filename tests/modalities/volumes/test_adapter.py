"""VolumeAdapter on the bundled real hippocampus MRI: the Adapter protocol, the sample contract (checked
against an independent nibabel/numpy computation), views through ManifestDataset, bad files, the cache,
the default encoder and configuration errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medcl.data.adapter import Adapter
from medcl.data.dataset import ManifestDataset, collate_skipping
from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.volumes.adapter import VolumeAdapter
from modalities.volumes.indexing import index_volumes, save_index
from modalities.volumes.transforms import preprocessing_spec

TINY_UNET = {"features": [4, 4, 8, 8, 16, 4]}


@pytest.fixture(scope="module")
def adapter() -> VolumeAdapter:
    return VolumeAdapter(encoder_kwargs=TINY_UNET)


@pytest.fixture(scope="module")
def samples(adapter: VolumeAdapter) -> pd.DataFrame:
    return adapter.make_samples(adapter.index().trials)


def expected_sample(image_path: str, roi: int = 32) -> np.ndarray:
    """Independent preprocessing of a 1 mm RAS hippocampus crop: nibabel canonical orientation,
    z-score over non-zero voxels, symmetric zero padding to the ROI."""
    data = nib.as_closest_canonical(nib.load(image_path)).get_fdata().astype(np.float32)
    nonzero = data != 0
    data[nonzero] = (data[nonzero] - data[nonzero].mean()) / data[nonzero].std()
    pads = [((max(roi - n, 0)) // 2, max(roi - n, 0) - (max(roi - n, 0)) // 2) for n in data.shape]
    return np.pad(data, pads)[None]


def test_satisfies_the_adapter_protocol(adapter: VolumeAdapter) -> None:
    assert isinstance(adapter, Adapter)
    assert adapter.input_key == "image" and adapter.modality == "volume"
    assert adapter.label_mode == "segmentation"
    assert adapter.class_names == ["background", "Anterior", "Posterior"]
    spec = adapter.input_spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["preprocessing"] == preprocessing_spec(image_modality="MR", roi=(32, 32, 32))
    assert {
        k: spec[k] for k in ("modality", "image_modality", "channels", "roi", "spacing", "orientation")
    } == {
        "modality": "volume",
        "image_modality": "MR",
        "channels": 1,
        "roi": [32, 32, 32],
        "spacing": [1.0, 1.0, 1.0],
        "orientation": "RAS",
    }
    assert adapter._init_args is not None and adapter._init_args["roi"] == [32, 32, 32]


def test_one_sample_per_study(adapter: VolumeAdapter, samples: pd.DataFrame) -> None:
    assert len(samples) == 40 and (samples["sample_index"] == 0).all()
    assert (samples["patient_id"] == samples["trial_id"]).all()
    assert list(samples.columns) == [
        "patient_id",
        "trial_id",
        "sample_index",
        "path",
        "mask_path",
        "modality",
    ]


def test_load_sample_follows_the_contract_and_matches_an_independent_computation(
    adapter: VolumeAdapter, samples: pd.DataFrame
) -> None:
    for position in (0, 7):
        row = samples.iloc[position]
        sample = adapter.load_sample(row)
        assert set(sample) == {"image", "mask", "patient_id", "trial_id", "sample_index", "meta"}
        image, mask = sample["image"], sample["mask"]
        assert image.dtype == np.float32 and image.ndim == 4 and image.shape[0] == 1
        assert mask.dtype == np.int64 and mask.shape == (1, *image.shape[1:])
        assert min(image.shape[1:]) >= 32
        np.testing.assert_allclose(image, expected_sample(row["path"]), rtol=0, atol=1e-5)
        labels = nib.as_closest_canonical(nib.load(row["mask_path"])).get_fdata()
        assert mask.sum() == labels.sum() and set(np.unique(mask)) == {0, 1, 2}
        assert sample["patient_id"] == row["patient_id"] and sample["trial_id"] == row["trial_id"]
        assert sample["sample_index"] == 0
        meta = sample["meta"]
        assert meta["path"] == row["path"] and meta["mask_path"] == row["mask_path"]
        assert meta["spacing"] == [1.0, 1.0, 1.0] and meta["modality"] == "MR"
        assert isinstance(meta["affine"], list) and np.asarray(meta["affine"]).shape == (4, 4)
        json.dumps(meta)


def test_views_through_the_dataset_are_seeded_and_roi_sized(
    adapter: VolumeAdapter, samples: pd.DataFrame
) -> None:
    dataset = ManifestDataset(samples.iloc[:4], adapter, n_views=2, seed=3)
    item = dataset[(1, 0)]
    assert item["views"].shape == (2, 1, 32, 32, 32) and item["views"].dtype == torch.float32
    assert torch.equal(item["views"], dataset[(1, 0)]["views"])  # same (seed, epoch, index): same views
    assert not torch.equal(item["views"], dataset[(1, 1)]["views"])  # next epoch: new views
    assert not torch.equal(item["views"][0], item["views"][1])
    batch = collate_skipping([dataset[i] for i in range(4)])
    assert batch["views"].shape == (4, 2, 1, 32, 32, 32) and batch["n_skipped"] == 0


def test_bad_files_raise_data_errors_that_the_dataset_can_skip(
    tmp_path: Path, adapter: VolumeAdapter, samples: pd.DataFrame, broken_volumes: dict[str, Path]
) -> None:
    bad = samples.iloc[:3].copy()
    bad.loc[bad.index[1], "path"] = str(broken_volumes["truncated_gz"])
    bad.loc[bad.index[1], "mask_path"] = ""
    with pytest.raises(CorruptFileError) as raised:
        adapter.load_sample(bad.iloc[1])
    assert raised.value.path == str(broken_volumes["truncated_gz"])

    strict = ManifestDataset(bad, adapter, n_views=2, on_error="raise")
    with pytest.raises(CorruptFileError, match=r"truncated.*sample 1 of the sample table"):
        strict[1]
    lenient = ManifestDataset(bad, adapter, n_views=2, on_error="skip")
    batch = collate_skipping([lenient[i] for i in range(3)])
    assert batch["n_skipped"] == 1 and batch["views"].shape[0] == 2


def test_cache_dir_stores_each_study_once(tmp_path: Path, samples: pd.DataFrame) -> None:
    cached = VolumeAdapter(cache_dir=str(tmp_path / "cache"))
    plain = VolumeAdapter()
    rows = [samples.iloc[0], samples.iloc[1]]
    first = [cached.load_sample(r) for r in rows]
    again = [cached.load_sample(r) for r in rows]
    assert len(list((tmp_path / "cache").iterdir())) == 2
    for a, b, row in zip(first, again, rows, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["image"], plain.load_sample(row)["image"])
        assert a["meta"] == b["meta"]
    VolumeAdapter(cache_dir=str(tmp_path / "cache"), roi=(48, 48, 48)).load_sample(rows[0])
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_default_encoder_embeds_views(adapter: VolumeAdapter, samples: pd.DataFrame) -> None:
    from modalities.volumes.encoders import UNetBackbone

    encoder = adapter.default_encoder()
    assert isinstance(encoder, UNetBackbone) and encoder.in_channels == 1
    dataset = ManifestDataset(samples.iloc[:2], adapter, n_views=1)
    views = torch.stack([dataset[i]["views"][0] for i in range(2)])
    with torch.no_grad():
        assert encoder(views).shape == (2, encoder.embedding_dim)
        assert encoder.forward_dense(views).shape == (2, encoder.feature_channels, 32, 32, 32)


def test_index_dir_and_labelled_only(tmp_path: Path, hippo_root: Path, copy_cases) -> None:
    root = copy_cases(hippo_root, tmp_path / "data", cases=("hippocampus_001", "hippocampus_003"))
    (root / "imagesTs").mkdir()
    shutil.copyfile(
        hippo_root / "imagesTr" / "hippocampus_004.nii.gz", root / "imagesTs" / "hippocampus_004.nii.gz"
    )
    save_index(index_volumes("msd", root), tmp_path / "index")
    adapter = VolumeAdapter(root=str(root), index_dir=str(tmp_path / "index"))
    indexed = adapter.index()
    assert indexed.source == str(tmp_path / "index") and len(indexed.trials) == 3
    assert adapter.class_names == ["background", "Anterior", "Posterior"]
    unlabelled = adapter.load_sample(adapter.make_samples(indexed.trials).iloc[2])
    assert "mask" not in unlabelled and unlabelled["meta"]["mask_path"] == ""
    labelled = VolumeAdapter(root=str(root), labelled_only=True).make_samples(indexed.trials)
    assert list(labelled["trial_id"]) == ["hippocampus_001", "hippocampus_003"]


def test_configuration_errors(samples: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="multiple of 16 and at least 32"):
        VolumeAdapter(roi=(24, 32, 32))
    with pytest.raises(ConfigError, match="multiple of 32 and at least 64"):
        VolumeAdapter(roi=(32, 32, 32), encoder="swinunetr")
    with pytest.raises(ConfigError, match="axis 0 is left-right"):
        VolumeAdapter(view_flip_axes=(0,))
    with pytest.raises(ConfigError, match="image_modality"):
        VolumeAdapter(image_modality="PET")
    with pytest.raises(ConfigError, match="dataset must be"):
        VolumeAdapter(dataset="nifti")
    ct = VolumeAdapter(image_modality="CT")
    with pytest.raises(ConfigError, match="40 of 40 studies are MR but the adapter preprocesses CT"):
        ct.make_samples(samples)


def test_wrong_channel_count_is_a_data_error(samples: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="1 channel\\(s\\), the preprocessing expects 2"):
        VolumeAdapter(channels=2).load_sample(samples.iloc[0])
