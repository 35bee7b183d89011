"""SegmentationModule / SegmentationDataModule on real MSD hippocampus volumes (the bundled subset).

The volumes are read by a small adapter written here (nibabel, z-score, zero-padded to a multiple of 16
on each side), so these tests do not depend on the volume adapter. Dice is checked against hand
computations with numpy, never against MONAI's own numbers only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from monai.losses import DiceCELoss
from monai.transforms import RandSpatialCropd
from torch.utils.data import DataLoader

from medcl.checkpoints import encoder_state_dict, load_checkpoint
from medcl.configurable import Configurable
from medcl.data import SplitConfig
from medcl.data.adapter import IndexedData
from medcl.data.dataset import collate_skipping
from medcl.errors import ConfigError, CorruptFileError, DataError
from modalities.bundled import resolve_root
from modalities.volumes.encoders import UNetBackbone
from tasks.segmentation import (
    SegmentationModule,
    load_segmentation_model,
    run_segmentation_efficiency,
)
from tasks.segmentation_data import SegmentationDataModule

REPO = Path(__file__).resolve().parents[2]
TINY = (4, 4, 8, 8, 16, 4)
ROI = [32, 48, 32]
LABELS = ["background", "anterior", "posterior"]
FOLD_SPLIT = SplitConfig(method="fold", val_folds=(9,), test_folds=(10,))


def _cases(n: int) -> list[str]:
    images = sorted((resolve_root("bundled:msd_hippocampus") / "imagesTr").glob("hippocampus_*.nii.gz"))
    return [p.name.removesuffix(".nii.gz") for p in images[:n]]


def _pad16(array: np.ndarray) -> np.ndarray:
    """Zero-pad the spatial axes of ``(C, *spatial)`` to multiples of 16, split evenly over both ends."""
    widths = [(0, 0)]
    for side in array.shape[1:]:
        extra = -side % 16
        widths.append((extra // 2, extra - extra // 2))
    return np.pad(array, widths)


class HippocampusAdapter(Configurable):
    """MSD hippocampus cases → ``image`` ``(1, H, W, D)`` float32 (z-scored) and ``mask`` ``(1, H, W, D)``
    int64, both zero-padded to multiples of 16. Case ``i`` belongs to patient ``p{i // cases_per_patient}``
    and fold ``folds[i]``; cases in ``broken`` fail to load (``"corrupt"``), lose their mask
    (``"no_mask"``) or get a label outside the classes (``"bad_label"``)."""

    input_key = "image"
    modality = "volume"

    def __init__(
        self,
        cases: list[str],
        folds: list[int],
        cases_per_patient: int = 1,
        broken: dict[str, str] | None = None,
    ) -> None:
        self.root = resolve_root("bundled:msd_hippocampus")
        self.cases = list(cases)
        self.folds = list(folds)
        self.cases_per_patient = cases_per_patient
        self.broken = dict(broken or {})

    @property
    def class_names(self) -> list[str] | None:
        return None

    @property
    def label_mode(self) -> str:
        return "multiclass"  # no per-volume classes (class_names is None): masks only

    def index(self) -> IndexedData:
        trials = pd.DataFrame(
            {
                "path": [str(self.root / "imagesTr" / f"{c}.nii.gz") for c in self.cases],
                "mask_path": [str(self.root / "labelsTr" / f"{c}.nii.gz") for c in self.cases],
                "patient_id": [f"p{i // self.cases_per_patient}" for i in range(len(self.cases))],
                "trial_id": self.cases,
                "fold": self.folds,
            }
        )
        return IndexedData(trials, pd.DataFrame(columns=["path", "reason"]), source="bundled hippocampus")

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        return trials.assign(sample_index=0).reset_index(drop=True)

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        kind = self.broken.get(str(row["trial_id"]))
        if kind == "corrupt":
            raise CorruptFileError(row["path"], "simulated truncated gzip stream")
        image = np.asarray(nib.load(row["path"]).dataobj, dtype=np.float32)[None]
        image = (image - image.mean()) / image.std()
        sample: dict[str, Any] = {
            "image": _pad16(image).astype(np.float32),
            "patient_id": row["patient_id"],
            "trial_id": row["trial_id"],
            "sample_index": 0,
            "meta": {"path": row["path"], "mask_path": row["mask_path"], "spacing": [1.0, 1.0, 1.0]},
        }
        if kind != "no_mask":
            mask = _pad16(np.asarray(nib.load(row["mask_path"]).dataobj, dtype=np.int64)[None])
            sample["mask"] = np.where(mask == 2, 7, mask) if kind == "bad_label" else mask
        return sample

    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return RandSpatialCropd([self.input_key], roi_size=(32, 32, 32), random_size=False)

    def default_encoder(self) -> torch.nn.Module:
        return UNetBackbone(features=TINY)

    def input_spec(self) -> dict[str, Any]:
        return {
            "modality": "volume",
            "image_modality": "MR",
            "input_key": self.input_key,
            "layout": "(C, H, W, D)",
            "orientation": "RAS",
            "channels": 1,
            "spacing": [1.0, 1.0, 1.0],
            "preprocessing": [{"op": "zscore", "scope": "volume"}, {"op": "pad", "multiple": 16}],
        }


def hand_dice(prediction: np.ndarray, truth: np.ndarray, k: int) -> float:
    """``2|P ∩ T| / (|P| + |T|)`` of class ``k``; NaN when ``T`` is empty."""
    p, t = prediction == k, truth == k
    return float("nan") if not t.any() else 2.0 * float((p & t).sum()) / float(p.sum() + t.sum())


def mean_dice(per_case: list[list[float]]) -> dict[str, float]:
    """Per-class means over the cases that have the class, and the mean of those."""
    table = np.array(per_case, dtype=np.float64)
    scores = {f"dice_{name}": float(np.nanmean(table[:, k])) for k, name in enumerate(LABELS[1:])}
    return {"dice": float(np.mean(list(scores.values()))), **scores}


def trainer(tmp_path: Path | None = None, **kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return L.Trainer(**settings)


def data(adapter: HippocampusAdapter, **kwargs: Any) -> SegmentationDataModule:
    settings = {"label_names": LABELS, "roi_size": ROI, "split": FOLD_SPLIT, "batch_size": 2, **kwargs}
    return SegmentationDataModule(adapter, **settings)


# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def four() -> HippocampusAdapter:
    """4 real volumes: 2 train, 1 validation, 1 test patient."""
    return HippocampusAdapter(_cases(4), folds=[1, 1, 9, 10])


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers without a logger fall back to the working directory for data records: not the repo's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def pretrained(four: HippocampusAdapter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (1 step) asymmetry-contrast pretraining checkpoint of the tiny UNetBackbone.

    Pretrained on this module's adapter, whose input spec (1-channel MR, 1 mm, RAS) matches the volume
    adapter's for the bundled hippocampus, so the checkpoint also fine-tunes on the shipped config."""
    from medcl.data import PretrainDataModule
    from medcl.objectives import AsymmetryContrast
    from medcl.training import PretrainModule

    out = tmp_path_factory.mktemp("seg_pretrained")
    L.seed_everything(0)
    datamodule = PretrainDataModule(
        four, batch_size=2, samples_per_trial=1, trials_per_patient=1, split=FOLD_SPLIT, use_labels=False,
        run_dir=str(out / "data"),
    )  # fmt: skip
    model = PretrainModule(UNetBackbone(features=TINY), AsymmetryContrast(roi_size=(32, 32, 32)))
    fit = trainer(
        limit_train_batches=1, limit_val_batches=0, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=out, save_last=True)],
    )  # fmt: skip
    fit.fit(model, datamodule=datamodule)
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def fitted(four: HippocampusAdapter, pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """1 epoch of fine-tuning on the 2 training volumes, validated and tested (CSV logs, checkpoints)."""
    out = tmp_path_factory.mktemp("seg_fit")
    L.seed_everything(0)
    datamodule = data(four)
    model = SegmentationModule(
        encoder_ckpt=str(pretrained), mode="finetune", num_classes=3, label_names=LABELS, roi_size=ROI
    )
    checkpoint = ModelCheckpoint(save_last=True, monitor="val/dice", mode="max")
    fit = trainer(logger=CSVLogger(out, name="seg"), enable_checkpointing=True, callbacks=[checkpoint])
    fit.fit(model, datamodule=datamodule)
    fit.test(model, datamodule=datamodule, verbose=False)
    return {"trainer": fit, "model": model, "data": datamodule, "checkpoint": checkpoint}


# --------------------------------------------------------------------------------------------------
def test_parameter_groups_follow_the_mode(pretrained: Path) -> None:
    lr = 2e-3
    kwargs = {"num_classes": 3, "roi_size": ROI, "lr": lr, "encoder_lr_scale": 0.1}
    for mode, encoder_lr in (("finetune", 2e-4), ("scratch", 2e-3), ("frozen_encoder", None)):
        model = SegmentationModule(encoder_ckpt=str(pretrained), mode=mode, **kwargs)
        encoder_ids = {id(p) for p in model.encoder.encoder_parameters()}
        decoder_ids = {id(p) for p in model.encoder.decoder_parameters()}
        head_ids = {id(p) for p in model.head.parameters()}
        groups = {g["name"]: g for g in model.parameter_groups()}
        assert {id(p) for p in groups["decoder_head"]["params"]} == decoder_ids | head_ids
        assert groups["decoder_head"]["lr"] == pytest.approx(lr)
        if encoder_lr is None:
            assert set(groups) == {"decoder_head"}
            assert not any(p.requires_grad for p in model.encoder.encoder_parameters())
        else:
            assert {id(p) for p in groups["encoder"]["params"]} == encoder_ids
            assert groups["encoder"]["lr"] == pytest.approx(encoder_lr)
        covered = sum(len(g["params"]) for g in groups.values())
        trainable = sum(1 for p in model.parameters() if p.requires_grad)
        assert covered == trainable  # nothing trainable is left out, nothing is counted twice


def test_finetune_starts_from_the_pretrained_backbone_and_scratch_does_not(pretrained: Path) -> None:
    weights = encoder_state_dict(load_checkpoint(pretrained))
    tuned = SegmentationModule(encoder_ckpt=str(pretrained), mode="finetune", roi_size=ROI).encoder
    for key, value in tuned.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    L.seed_everything(1)
    scratch = SegmentationModule(encoder_ckpt=str(pretrained), mode="scratch", roi_size=ROI).encoder
    assert set(scratch.state_dict()) == set(weights)
    assert any(not torch.equal(v, weights[k]) for k, v in scratch.state_dict().items() if "conv" in k)


def test_frozen_encoder_is_not_updated(four: HippocampusAdapter, pretrained: Path) -> None:
    L.seed_everything(0)
    model = SegmentationModule(
        encoder_ckpt=str(pretrained), mode="frozen_encoder", num_classes=3, roi_size=ROI
    )
    encoder_before = [p.detach().clone() for p in model.encoder.encoder_parameters()]
    decoder_before = [p.detach().clone() for p in model.encoder.decoder_parameters()]
    head_before = model.head.weight.detach().clone()
    modes: list[tuple[bool, bool]] = []  # (any encoder module training, decoder training) at each step

    class Modes(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            encoder = model.encoder.encoder_modules()
            modes.append(
                (any(m.training for e in encoder for m in e.modules()), model.encoder.net.upcat_1.training)
            )

    trainer(limit_train_batches=1, limit_val_batches=0, callbacks=[Modes()]).fit(model, datamodule=data(four))
    for parameter, before in zip(model.encoder.encoder_parameters(), encoder_before, strict=True):
        torch.testing.assert_close(parameter.detach(), before, rtol=0, atol=0)
    assert modes == [(False, True)]  # the encoder's normalisation and dropout layers in eval mode
    assert any(
        not torch.equal(p, q) for p, q in zip(model.encoder.decoder_parameters(), decoder_before, strict=True)
    )
    assert not torch.equal(model.head.weight, head_before)


def test_label_fractions_keep_whole_patients() -> None:
    # 8 patients with 2 volumes each: 6 train, 1 validation, 1 test patient.
    adapter = HippocampusAdapter(_cases(16), folds=[1] * 12 + [9, 9, 10, 10], cases_per_patient=2)
    kept: dict[float, set[str]] = {}
    for fraction in (0.2, 0.5, 1.0):
        dm = data(adapter, label_fraction=fraction, fraction_seed=3)
        dm.setup("fit")
        train = dm.samples["train"]
        per_patient = train.groupby("patient_id").size()
        assert (per_patient == 2).all()  # both volumes of every kept patient, never one of them
        assert len(per_patient) == math.ceil(fraction * 6)
        assert list(dm.samples["val"]["trial_id"]) == adapter.cases[12:14]  # never subsampled
        assert list(dm.samples["test"]["trial_id"]) == adapter.cases[14:16]
        kept[fraction] = set(per_patient.index)
    assert kept[0.2] < kept[0.5] < kept[1.0]  # nested for one seed
    other = data(adapter, label_fraction=0.5, fraction_seed=4)
    other.setup("fit")
    assert set(other.samples["train"]["patient_id"]) != kept[0.5]  # the seed draws the patients


def test_training_crops_are_seeded_windows_of_the_volume(four: HippocampusAdapter) -> None:
    dm = data(four, crop="symmetric", seed=5)
    dm.setup("fit")
    dataset = dm.segmentation_dataset("train")
    volume = four.load_sample(dm.samples["train"].iloc[1])
    first, again, later = dataset[(1, 0)], dataset[(1, 0)], [dataset[(1, e)] for e in (1, 2, 3)]
    assert first["image"].shape == (1, *ROI) and first["mask"].shape == (1, *ROI)
    assert first["image"].dtype == torch.float32 and first["mask"].dtype == torch.int64
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert any(not torch.equal(first["image"], item["image"]) for item in later)
    # symmetric crops: centred on the left-right axis, somewhere on the others; image and mask together
    sides = volume["image"].shape[1:]
    start = (sides[0] - ROI[0]) // 2
    for item in [first, *later]:
        found = [
            (a, b)
            for a in range(sides[1] - ROI[1] + 1)
            for b in range(sides[2] - ROI[2] + 1)
            if np.array_equal(
                volume["image"][:, start : start + ROI[0], a : a + ROI[1], b : b + ROI[2]],
                item["image"].numpy(),
            )
        ]
        assert len(found) == 1
        a, b = found[0]
        np.testing.assert_array_equal(
            volume["mask"][:, start : start + ROI[0], a : a + ROI[1], b : b + ROI[2]], item["mask"].numpy()
        )


def test_bad_samples_raise_or_are_skipped() -> None:
    cases = _cases(5)
    broken = {cases[0]: "corrupt", cases[1]: "no_mask", cases[2]: "bad_label"}
    adapter = HippocampusAdapter(cases, folds=[1, 1, 1, 1, 1], broken=broken)
    dm = data(adapter, split=SplitConfig(method="random", val_fraction=0.0, test_fraction=0.0))
    dm.setup("fit")
    dataset = dm.segmentation_dataset("train")
    position = {t: i for i, t in enumerate(dm.samples["train"]["trial_id"])}
    expected = {
        cases[0]: (CorruptFileError, "simulated truncated gzip"),
        cases[1]: (DataError, "has no segmentation mask"),
        cases[2]: (DataError, r"mask values \[0, 1, 7\] outside 0\.\.2"),
    }
    for case, (error, message) in expected.items():
        with pytest.raises(error, match=message) as raised:
            dataset[(position[case], 0)]
        assert case in str(raised.value)  # the message names the file
    skipping = SegmentationDataModule(
        adapter, label_names=LABELS, roi_size=ROI, on_error="skip", batch_size=5,
        split=SplitConfig(method="random", val_fraction=0.0, test_fraction=0.0),
    )  # fmt: skip
    skipping.setup("fit")
    batch = next(iter(skipping.train_dataloader()))
    assert batch["n_skipped"] == 3 and batch["mask"].shape == (2, 1, *ROI)


def test_sliding_window_dice_equals_a_hand_computation() -> None:
    """The network's output is forced to the one-hot of its input; the input is a (shifted) real mask."""
    adapter = HippocampusAdapter(_cases(3), folds=[1, 1, 1])
    masks = [
        np.asarray(nib.load(adapter.root / "labelsTr" / f"{c}.nii.gz").dataobj, dtype=np.int64)[None]
        for c in adapter.cases
    ]
    shifted = np.zeros_like(masks[1])
    shifted[:, 3:] = masks[1][:, :-3]  # 3 voxels along the left-right axis
    without_posterior = np.where(masks[2] == 2, 0, masks[2])  # a case whose mask lacks a class
    cases = [(masks[0], masks[0]), (shifted, masks[1]), (without_posterior, without_posterior)]
    items = [
        {"image": torch.from_numpy(predicted).float(), "mask": torch.from_numpy(truth)}
        for predicted, truth in cases
    ]
    model = SegmentationModule(
        encoder=UNetBackbone(features=TINY),
        mode="scratch",
        num_classes=3,
        label_names=LABELS,
        roi_size=[32, 32, 32],
    )
    model.forward = lambda x: (
        10.0 * torch.nn.functional.one_hot(x[:, 0].round().long(), 3).movedim(-1, 1).float()
    )
    loader = DataLoader(items, batch_size=1, collate_fn=collate_skipping)
    logged = trainer().validate(model, dataloaders=loader, verbose=False)[0]
    expected = mean_dice([[hand_dice(p, t, k) for k in (1, 2)] for p, t in cases])
    assert 0.3 < expected["dice_anterior"] < 0.95  # the shift really costs overlap
    assert math.isnan(hand_dice(*cases[2], 2))  # and the third case has no posterior class
    for name, value in expected.items():
        assert logged[f"val/{name}"] == pytest.approx(value, abs=1e-6)
    assert model.results["val"]["n"] == 3


def test_fit_logs_the_dice_that_the_saved_model_gives(fitted: dict) -> None:
    fit, datamodule = fitted["trainer"], fitted["data"]
    model = load_segmentation_model(fitted["checkpoint"].last_model_path)
    scores = {}
    for split in ("val", "test"):
        per_case = []
        for item in datamodule.segmentation_dataset(split):
            with torch.no_grad():
                predicted = model.segment(item["image"][None])[0].numpy()
            per_case.append([hand_dice(predicted, item["mask"].numpy(), k) for k in (1, 2)])
        scores[split] = mean_dice(per_case)
    metrics = pd.read_csv(Path(fit.log_dir) / "metrics.csv")
    logged_val = metrics["val/dice"].dropna()
    assert len(logged_val) == 1 and logged_val.iloc[0] == pytest.approx(scores["val"]["dice"], abs=1e-6)
    assert float(fitted["checkpoint"].best_model_score) == pytest.approx(scores["val"]["dice"], abs=1e-6)
    saved = json.loads((Path(fit.log_dir) / "test_metrics.json").read_text())
    for name, value in scores["test"].items():
        assert saved[name] == pytest.approx(value, abs=1e-6)
    assert saved["n"] == 1 and saved["n_skipped"] == 0
    groups = {g["name"]: g["initial_lr"] for g in fit.optimizers[0].param_groups}
    assert groups == {"decoder_head": pytest.approx(1e-3), "encoder": pytest.approx(1e-4)}


def test_checkpoint_rebuilds_the_model_without_unpickling(fitted: dict, four: HippocampusAdapter) -> None:
    path = fitted["checkpoint"].last_model_path
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    meta = raw["medcl"]
    assert meta["kind"] == "segmentation" and meta["task"] == "segmentation"
    assert meta["label_names"] == LABELS and meta["num_classes"] == 3
    assert meta["roi_size"] == ROI and meta["input_key"] == "image" and meta["spatial_dims"] == 3
    assert meta["sliding_window"] == {"overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4}
    assert meta["encoder"] == {
        "class_path": "modalities.volumes.encoders.UNetBackbone",
        "init_args": {
            "in_channels": 1,
            "features": list(TINY),
            "spatial_dims": 3,
            "norm": "instance",
            "dropout": 0.0,
        },
    }
    assert meta["input"] == four.input_spec() and meta["modality"] == "volume"
    assert meta["head"] == {"in_channels": 4, "num_classes": 3}
    rebuilt = load_segmentation_model(path)
    trained = fitted["model"].eval()
    x = torch.randn(2, 1, *ROI, generator=torch.Generator().manual_seed(0))
    volume = fitted["data"].segmentation_dataset("val")[0]["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=0, atol=0)
        torch.testing.assert_close(rebuilt.infer(volume), trained.infer(volume), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="not a segmentation checkpoint"):
        load_segmentation_model({"state_dict": {}, "medcl": {"kind": "classification"}})


def test_auxiliary_asymmetry_loss_is_added_with_its_weight(four: HippocampusAdapter) -> None:
    from medcl.objectives import AsymmetryContrast

    dm = data(four, crop="symmetric")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = SegmentationModule(
        encoder=UNetBackbone(features=TINY), mode="scratch", num_classes=3, roi_size=ROI, asymmetry_weight=0.5
    )
    x, mask = batch["image"], batch["mask"]
    terms = model.losses(x, mask)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)(model(x), mask)
    asymmetry = AsymmetryContrast(roi_size=ROI, margin=1.0).auxiliary_loss(model.encoder, x, mask)["loss"]
    torch.testing.assert_close(terms["dice_ce"], dice_ce)
    torch.testing.assert_close(terms["asymmetry"], asymmetry)
    torch.testing.assert_close(terms["loss"], dice_ce + 0.5 * asymmetry)
    assert float(asymmetry) > 0
    plain = SegmentationModule(encoder=model.encoder, mode="scratch", num_classes=3, roi_size=ROI)
    assert set(plain.losses(x, mask)) == {"loss", "dice_ce"}


def test_segmentation_efficiency_table(
    pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = HippocampusAdapter(_cases(6), folds=[1, 1, 1, 1, 9, 10])
    table = run_segmentation_efficiency(
        adapter, pretrained, FOLD_SPLIT, LABELS, ROI, fractions=(0.5, 1.0), seeds=(0,),
        arms=("finetune", "scratch"), epochs=1, limit_train_batches=1, out_dir=tmp_path,
    )  # fmt: skip
    assert list(table["arm"]) == ["finetune", "scratch", "finetune", "scratch"]
    assert list(table["train_patients"]) == [2, 2, 4, 4] and set(table["test_patients"]) == {1}
    assert {"dice", "dice_anterior", "dice_posterior", "seconds", "checkpoint"} <= set(table.columns)
    row = table.iloc[1]  # scratch at 50 %: recompute its test Dice from the saved model
    model = load_segmentation_model(row["checkpoint"])
    dm = data(adapter)
    dm.setup("test")
    test = dm.segmentation_dataset("test")[0]
    with torch.no_grad():
        predicted = model.segment(test["image"][None])[0].numpy()
    expected = mean_dice([[hand_dice(predicted, test["mask"].numpy(), k) for k in (1, 2)]])
    assert row["dice"] == pytest.approx(expected["dice"], abs=1e-6)
    assert row["dice_posterior"] == pytest.approx(expected["dice_posterior"], abs=1e-6)
    assert not (tmp_path / "test_metrics.json").exists()  # no run folder: nothing written to the cwd


def test_settings_errors(pretrained: Path, four: HippocampusAdapter) -> None:
    with pytest.raises(ConfigError, match="use mode='frozen_encoder'"):
        SegmentationModule(encoder_ckpt=str(pretrained), mode="linear", roi_size=ROI)
    with pytest.raises(ConfigError, match="needs a pretrained backbone"):
        SegmentationModule(encoder=UNetBackbone(features=TINY), mode="finetune", roi_size=ROI)
    with pytest.raises(ConfigError, match="multiple of 16 and at least 32"):
        SegmentationModule(encoder=UNetBackbone(features=TINY), mode="scratch", roi_size=[32, 40, 32])
    with pytest.raises(ConfigError, match="not a dense backbone"):
        SegmentationModule(encoder=torch.nn.Conv3d(1, 4, 1), mode="scratch", roi_size=ROI)
    with pytest.raises(ConfigError, match="names of the mask classes"):
        SegmentationDataModule(four, roi_size=ROI)
    with pytest.raises(ConfigError, match="crop must be one of"):
        data(four, crop="centre")


def test_finetune_command_runs_the_shipped_segmentation_config(pretrained: Path, tmp_path: Path) -> None:
    """``medcl finetune --config configs/finetune/hippocampus_seg.yaml`` on the bundled volumes (a tiny
    encoder and one short epoch); the test Dice it writes is recomputed from its checkpoint."""
    from medcl.cli import main
    from modalities.volumes import VolumeAdapter
    from tasks.cli import FinetuneCLI, SegmentationCLI, finetune_cli_class

    shipped = REPO / "configs" / "finetune" / "hippocampus_seg.yaml"
    args = [
        "--config", str(shipped), f"--model.encoder_ckpt={pretrained}",
        "--model.init_args.encoder.init_args.features=[4, 4, 8, 8, 16, 4]",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]  # fmt: skip
    assert finetune_cli_class(args) is SegmentationCLI
    assert finetune_cli_class(["--config", str(REPO / "configs/finetune/ptbxl_norm_mi.yaml")]) is FinetuneCLI
    assert main(["finetune", *args]) == 0
    run = tmp_path / "finetune_hippocampus_seg" / "version_0"
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["mode"] == "finetune"
    meta = checkpoint["medcl"]
    assert meta["label_names"] == LABELS and meta["roi_size"] == ROI  # linked from the data module
    assert meta["input"]["image_modality"] == "MR" and meta["input"]["roi"] == ROI
    # The same data settings give the same test patients; score them with the saved model by hand.
    config = yaml.safe_load(shipped.read_text())["data"]
    dm = SegmentationDataModule(
        VolumeAdapter(**config["adapter"]["init_args"]), label_names=config["label_names"],
        roi_size=config["roi_size"], split=SplitConfig(**config["split"]),
    )  # fmt: skip
    dm.setup("test")
    test = pd.read_csv(run / "samples_test.csv", dtype=str)
    assert list(test["trial_id"]) == list(dm.samples["test"]["trial_id"]) and len(test) == 8
    model = load_segmentation_model(run / "checkpoints" / "last.ckpt")
    per_case = []
    for item in dm.segmentation_dataset("test"):
        with torch.no_grad():
            predicted = model.segment(item["image"][None])[0].numpy()
        per_case.append([hand_dice(predicted, item["mask"].numpy(), k) for k in (1, 2)])
    saved = json.loads((run / "test_metrics.json").read_text())  # tested with the best (= only) epoch
    assert saved["n"] == 8 and saved["dice"] == pytest.approx(mean_dice(per_case)["dice"], abs=1e-6)


def test_data_unlike_the_pretraining_data_is_refused(
    four: HippocampusAdapter, pretrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        four, "input_spec", lambda: {**HippocampusAdapter.input_spec(four), "spacing": [2.0] * 3}
    )
    model = SegmentationModule(encoder_ckpt=str(pretrained), mode="finetune", num_classes=3, roi_size=ROI)
    with pytest.raises(ConfigError, match=r"pretrained on spacing=\[1\.0, 1\.0, 1\.0\] but the data gives"):
        trainer(limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=data(four))
