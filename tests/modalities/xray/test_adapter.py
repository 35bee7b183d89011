"""XrayAdapter: the adapter protocol on real radiographs (small layouts and the real covid_cxr), sample dicts,
labels, reports, gaze heatmaps on the image grid, seeded anatomy-preserving views, and rebuilding from its
spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medcl.configurable import instantiate_spec, module_spec
from medcl.data import ManifestDataset, PretrainDataModule, SplitConfig
from medcl.data.adapter import Adapter
from medcl.errors import ConfigError
from modalities.xray.adapter import XrayAdapter, XrayViewd
from modalities.xray.indexing import index_xrays, save_index
from modalities.xray.transforms import preprocess_file

TINY = {"layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 16]}


def adapter(root: Path, **kwargs: Any) -> XrayAdapter:
    settings: dict[str, Any] = {"image_size": 64, "encoder_kwargs": TINY}
    settings.update(kwargs)
    return XrayAdapter(str(root), **settings)


class PointGaze:
    """A heatmap provider putting all its mass on one original pixel."""

    source = "annotation:boxes"

    def __init__(self, row: int, col: int) -> None:
        self.row, self.col = row, col

    def heatmap(self, row: pd.Series, image_shape: tuple[int, int]) -> np.ndarray | None:
        if str(row["image_id"]) == "c.jpeg":
            return None
        heatmap = np.zeros(image_shape)
        heatmap[self.row, self.col] = 1.0
        return heatmap


def test_protocol_index_and_samples(covid_layout: Path) -> None:
    xray = adapter(covid_layout)
    assert isinstance(xray, Adapter) and xray.input_key == "image" and xray.modality == "xray"
    assert xray.label_mode == "multilabel"
    assert xray.class_names == ["ARDS", "COVID-19", "Pneumonia", "SARS", "Viral"]
    indexed = xray.index()
    assert set(indexed.trials["image_id"]) == {"a.jpg", "c.jpeg", "d.jpg"}  # PA/AP only
    samples = xray.make_samples(indexed.trials)
    assert list(samples.columns[:7]) == [
        "patient_id",
        "trial_id",
        "sample_index",
        "path",
        "image_id",
        "view",
        "labels",
    ]
    labels = dict(zip(samples["image_id"], samples["labels"], strict=True))
    assert labels["a.jpg"] == "ARDS|COVID-19" and labels["c.jpeg"] == "COVID-19" and labels["d.jpg"] is None
    assert samples["sample_index"].dtype == np.int64
    assert len(adapter(covid_layout, labelled_only=True).make_samples(indexed.trials)) == 2
    assert len(adapter(covid_layout, views=None).index().trials) == 5
    assert adapter(covid_layout, labels=False).class_names is None


def test_load_sample(covid_layout: Path) -> None:
    xray = adapter(covid_layout, report_cleaner=str.upper, gaze=PointGaze(30, 200))
    samples = xray.make_samples(xray.index().trials).set_index("image_id", drop=False)
    a = xray.load_sample(samples.loc["a.jpg"])
    image, geometry, raw = preprocess_file(samples.loc["a.jpg", "path"], xray.input_spec()["preprocessing"])
    np.testing.assert_array_equal(a["image"], image)
    assert a["image"].shape == (1, 64, 64) and a["image"].dtype == np.float32
    assert (a["patient_id"], a["trial_id"], a["sample_index"]) == ("7", "7/0", 0)
    np.testing.assert_array_equal(a["label"], np.array([1, 1, 0, 0, 0], dtype=np.float32))
    assert a["report"] == "FEVER, COUGH"
    meta = a["meta"]
    assert meta["original_size"] == list(raw.shape) and meta["geometry"] == geometry.to_dict()
    assert (meta["view"], meta["source_format"], meta["photometric"]) == ("PA", "jpeg", "MONOCHROME2")
    gaze = a["gaze"]
    assert gaze.shape == (64, 64) and gaze.dtype == np.float32 and abs(float(gaze.sum()) - 1) < 1e-5
    assert a["gaze_source"] == "annotation:boxes"
    rows, cols = np.indices(gaze.shape)
    centroid = [(cols * gaze).sum() + 0.5, (rows * gaze).sum() + 0.5]
    np.testing.assert_allclose(centroid, geometry.map_points(np.array([200.5, 30.5])), atol=0.05)
    c = xray.load_sample(samples.loc["c.jpeg"])
    assert "gaze" not in c and "gaze_source" not in c and c["report"] == "WORSE,TAIL"
    d = xray.load_sample(samples.loc["d.jpg"])
    assert "label" not in d and "report" not in d  # "todo", no notes
    assert "report" not in adapter(covid_layout, report=False).load_sample(samples.loc["a.jpg"])


def test_gaze_provider_errors(covid_layout: Path) -> None:
    class WrongShape:
        def heatmap(self, row: pd.Series, image_shape: tuple[int, int]) -> np.ndarray:
            return np.ones((3, 3))

    xray = adapter(covid_layout, gaze=WrongShape())
    row = xray.make_samples(xray.index().trials).iloc[0]
    with pytest.raises(ConfigError, match="original image's pixels"):
        xray.load_sample(row)
    with pytest.raises(ConfigError, match="heatmap"):
        adapter(covid_layout, gaze=object())


def test_views_are_seeded_and_anatomy_preserving() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 48, 40)).astype(np.float32)
    view = XrayViewd()
    view.set_random_state(seed=5)
    first = view({"image": image})["image"]
    view.set_random_state(seed=5)
    np.testing.assert_array_equal(view({"image": image})["image"], first)
    view.set_random_state(seed=6)
    assert not np.allclose(view({"image": image})["image"], first)
    assert first.shape == image.shape and first.dtype == np.float32 and first.min() >= 0 and first.max() <= 1
    identity = XrayViewd(affine_prob=0, intensity_prob=0, noise_prob=0)
    np.testing.assert_array_equal(identity({"image": image})["image"], image)  # no flip by default
    flipped = XrayViewd(affine_prob=0, intensity_prob=0, noise_prob=0, flip_prob=1)
    np.testing.assert_array_equal(flipped({"image": image})["image"], image[:, :, ::-1])
    standardised = (image - 0.5) / 0.25
    same = XrayViewd(affine_prob=0, intensity_prob=0, noise_prob=0, normalization=(0.5, 0.25))
    np.testing.assert_allclose(same({"image": standardised})["image"], standardised, atol=1e-6)
    with pytest.raises(ConfigError):
        XrayViewd(max_rotation=90)
    with pytest.raises(ConfigError):
        XrayViewd(flip_prob=1.5)


def test_heatmap_follows_the_image_geometry() -> None:
    image = np.zeros((1, 64, 64), dtype=np.float32)
    image[0, 20:24, 40:44] = 1.0  # a bright square
    heatmap = np.zeros((64, 64), dtype=np.float32)
    heatmap[20:24, 40:44] = 1 / 16  # the gaze on it
    view = XrayViewd(affine_prob=1, intensity_prob=0, noise_prob=0, max_rotation=10, max_translation=0.1)
    for seed in range(5):
        view.set_random_state(seed=seed)
        out = view({"image": image, "gaze": heatmap})
        assert abs(float(out["gaze"].sum()) - 1) < 1e-5
        bright = out["image"][0] / out["image"][0].sum()
        np.testing.assert_allclose(out["gaze"], bright, atol=1e-6)  # same warp, same renormalisation


def test_two_views_through_the_dataset(covid_layout: Path) -> None:
    xray = adapter(covid_layout)
    samples = xray.make_samples(xray.index().trials)
    dataset = ManifestDataset(samples, xray, n_views=2, seed=3, label_names=xray.class_names)
    item = dataset[0]
    assert item["views"].shape == (2, 1, 64, 64) and not torch.equal(item["views"][0], item["views"][1])
    torch.testing.assert_close(dataset[0]["views"], item["views"])  # (seed, epoch, index, view) decide
    assert not torch.equal(dataset[(0, 1)]["views"], item["views"])
    assert item["label"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and item["has_label"]
    unlabelled = list(samples["image_id"]).index("d.jpg")
    assert not dataset[unlabelled]["has_label"]


def test_spec_rebuild_encoder_and_examples(covid_layout: Path, tmp_path: Path) -> None:
    xray = adapter(covid_layout, normalize=[0.5, 0.25], views=["frontal"])
    spec = module_spec(xray)
    assert spec is not None and json.loads(json.dumps(spec)) == spec
    rebuilt = instantiate_spec(spec)
    assert rebuilt.input_spec() == xray.input_spec()
    json.dumps(xray.input_spec())
    row = xray.make_samples(xray.index().trials).iloc[0]
    np.testing.assert_array_equal(rebuilt.load_sample(row)["image"], xray.load_sample(row)["image"])
    assert module_spec(adapter(covid_layout, report_cleaner=str.strip)) is None  # objects are not JSON
    examples = xray.example_windows(2)
    assert examples.shape == (2, 1, 64, 64) and examples.dtype == np.float32
    encoder = xray.default_encoder()
    assert encoder(torch.from_numpy(examples)).shape == (2, encoder.embedding_dim)
    save_index(index_xrays("covid_cxr", covid_layout), tmp_path / "index")
    from_index = adapter(covid_layout, index_dir=str(tmp_path / "index"))
    assert set(from_index.index().trials["image_id"]) == {"a.jpg", "c.jpeg", "d.jpg"}
    assert from_index.class_names == xray.class_names


def test_chexpert_uncertain_policy(chexpert_layout: Path) -> None:
    kwargs = {"dataset": "chexpert", "dataset_kwargs": {"csv": "train.csv"}, "views": None}
    zeros = adapter(chexpert_layout, **kwargs)
    ones = adapter(chexpert_layout, uncertain="positive", **kwargs)
    trials = zeros.index().trials
    assert list(zeros.make_samples(trials)["labels"])[:2] == ["Cardiomegaly", "Cardiomegaly"]
    assert list(ones.make_samples(trials)["labels"])[:2] == ["Cardiomegaly|Edema", "Cardiomegaly|Edema"]
    subset = adapter(chexpert_layout, class_names=["Edema", "No Finding"], uncertain="positive", **kwargs)
    assert list(subset.make_samples(trials)["labels"]) == ["Edema", "Edema", "No Finding"]


@pytest.mark.parametrize(
    "bad",
    [
        {"dataset": "padchest"},
        {"encoder": "densenet"},
        {"uncertain": "ignore"},
        {"views": ["sideways"]},
        {"flip_prob": 2.0},
        {"image_size": 4},
        {"dataset_kwargs": {"views": ["PA"]}},
    ],
)
def test_bad_settings(covid_layout: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        adapter(covid_layout, **bad)


def test_real_covid_cxr_pretraining_batch(covid_root: Path, tmp_path: Path) -> None:
    xray = adapter(covid_root)
    data = PretrainDataModule(
        xray,
        batch_size=8,
        samples_per_trial=1,
        trials_per_patient=2,
        split=SplitConfig(method="random"),
        run_dir=str(tmp_path / "run"),
    )
    data.setup()
    counts = data.counts()
    assert sum(c["samples"] for c in counts.values()) == 555  # PA/AP images of the snapshot
    assert sum(c["patients"] for c in counts.values()) == 327
    batch = next(iter(data.train_dataloader()))
    assert batch["views"].shape == (8, 2, 1, 64, 64) and batch["label"].shape == (8, len(xray.class_names))
    assert json.loads((tmp_path / "run" / "data.json").read_text())["modality"] == "xray"
