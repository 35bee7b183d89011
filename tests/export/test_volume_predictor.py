"""The torch-free predictor on volume segmentation models: the same probabilities as MONAI + torch on
real volumes, masks written on the input's grid, clear errors, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import onnx
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Compose,
    Invertd,
    LoadImage,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from onnx import TensorProto, helper

from export.predictor import (
    ModelMetadataError,
    OnnxPredictor,
    VolumePrediction,
    mask_path_for,
    predict_volumes,
)
from export.volume_preprocess import read_volume, to_input_grid
from medcl.errors import ConfigError, InvalidVolumeError

CT_SERIES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "lightning", "pytorch_lightning", "monai", "torchmetrics"}:
            raise ImportError(f"{name} is blocked: the predictor must not need it")
sys.meta_path.insert(0, Block())
"""
CLASSES = ["background", "anterior", "posterior"]
MR_PIXDIM = (1.2, 1.2, 1.5)  # hippocampus crops are 1 mm: the model grid really differs from the input's
MR_ROI = (16, 16, 16)
CT_ROI = (8, 8, 4)


def _net(seed: int) -> torch.nn.Module:
    """A tiny 3-D conv net with 3 output classes (logits at the input's resolution)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv3d(4, 3, 3, padding=1),
    ).eval()


def segmentation_metadata(roi: tuple[int, ...], steps: list[dict[str, Any]], **block: Any) -> dict[str, Any]:
    """The ``medcl`` metadata of a segmentation model (format medcl-onnx/1, ``segmentation`` block)."""
    return {
        "format": "medcl-onnx/1",
        "medcl_version": "test",
        "modality": "MR",
        "task": "segmentation",
        "class_names": CLASSES,
        "input": {"name": "input", "layout": "(B, C, H, W, D)", "dtype": "float32", "channels": ["image"]},
        "outputs": {"logits": "(B, K, H, W, D) raw scores"},
        "preprocessing": steps,
        "segmentation": {"roi_size": list(roi), **block},
    }


def write_segmentation_model(path: Path, net: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Export ``net`` (``(B, 1, *roi) → (B, K, *roi)``) with a dynamic batch axis, opset 17, and
    ``metadata`` as the ``medcl`` metadata entry (as export/onnx.py writes it)."""
    roi = metadata["segmentation"]["roi_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 1, *roi),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    _set_metadata(path, metadata)
    return path


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "medcl", json.dumps(metadata)
    onnx.save(model, str(path))


def _spec(
    pixdim: tuple[float, ...], intensity: dict[str, Any], roi: tuple[int, ...], crop: bool = False
) -> list[dict[str, Any]]:
    """A preprocessing spec in the training format (what ``preprocessing_spec`` writes)."""
    cropping = [{"op": "crop_foreground", "background": 0.0, "margin": 1}] if crop else []
    return [
        {"op": "load", "channels": 1},
        {"op": "orientation", "axcodes": "RAS"},
        {
            "op": "spacing",
            "pixdim": list(pixdim),
            "image_mode": "bilinear",
            "mask_mode": "nearest",
            "padding_mode": "border",
            "align_corners": False,
        },
        intensity,
        *cropping,
        {"op": "pad", "min_size": list(roi), "method": "symmetric", "value": 0.0},
    ]


MR_STEPS = _spec(MR_PIXDIM, {"op": "zscore", "nonzero": True, "channel_wise": True}, MR_ROI)
CT_WINDOW = {"op": "window", "a_min": -175.0, "a_max": 250.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
CT_STEPS = _spec((1.0, 1.0, 2.0), CT_WINDOW, CT_ROI)
LUNG_ROI = (16, 16, 16)
LUNG_STEPS = _spec((4.0, 4.0, 6.0), CT_WINDOW, LUNG_ROI, crop=True)  # air (< −175 HU) is cropped away


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("segmentation_models")
    mr = segmentation_metadata(MR_ROI, MR_STEPS, overlap=0.25, mode="gaussian", sw_batch_size=3)
    ct = segmentation_metadata(CT_ROI, CT_STEPS, overlap=0.5, mode="constant")
    lung = segmentation_metadata(LUNG_ROI, LUNG_STEPS, overlap=0.25, mode="gaussian", sigma_scale=0.2)
    return {
        "mr": write_segmentation_model(out / "mr.onnx", _net(0), mr),
        "ct": write_segmentation_model(out / "ct.onnx", _net(1), ct),
        "lung": write_segmentation_model(out / "lung.onnx", _net(2), lung),
    }


def _monai_pipeline(pixdim: tuple[float, ...], intensity: Any) -> Compose:
    return Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            Orientationd("image", "RAS", labels=None),
            Spacingd("image", pixdim, mode="bilinear"),
            intensity,
        ]
    )


def _monai_reference(
    path: str, pipeline: Compose, net: torch.nn.Module, roi: tuple[int, ...], **kwargs: Any
) -> tuple[dict[str, Any], np.ndarray]:
    """MONAI preprocessing → torch net over MONAI's sliding windows → softmax: ``(data, (K, H', W', D'))``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = pipeline({"image": path})
        with torch.no_grad():
            logits = sliding_window_inference(data["image"][None], roi, predictor=net, **kwargs)
    return data, torch.softmax(logits, dim=1)[0].numpy()


def _agree_where_decided(
    labels: np.ndarray, probabilities: np.ndarray, margin: float = 1e-4, least: float = 0.99
) -> None:
    """``labels`` is the argmax of ``probabilities`` wherever the top two classes differ by > margin (at
    least a fraction ``least`` of the voxels)."""
    top2 = np.sort(probabilities, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > margin
    assert decided.mean() > least
    np.testing.assert_array_equal(labels[decided], probabilities.argmax(axis=0)[decided])


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "relative", ["msd_hippocampus/imagesTr/hippocampus_001.nii.gz", "radiomics_ct_mri/breast1_image.nrrd"]
)
def test_predictions_equal_monai_and_torch_on_real_volumes(
    shared_data: Path, models: dict[str, Path], relative: str
) -> None:
    """numpy preprocessing + onnxruntime + numpy sliding window == MONAI pipeline + torch + MONAI's
    sliding_window_inference (gaussian blending, overlap 0.25), then softmax."""
    path = str(shared_data / relative)
    predictor = OnnxPredictor(models["mr"])
    prediction = predictor.predict_volume(path)
    pipeline = _monai_pipeline(MR_PIXDIM, NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    data, expected = _monai_reference(
        path, pipeline, _net(0), MR_ROI, sw_batch_size=2, overlap=0.25, mode="gaussian"
    )
    assert prediction.probabilities.shape == expected.shape == (3, *data["image"].shape[1:])
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)
    _agree_where_decided(prediction.model_labels, expected)
    np.testing.assert_allclose(prediction.model_affine, data["image"].affine.numpy(), atol=1e-9)
    # back on the input's grid: the input's shape and affine, the model-grid labels mapped by nearest voxel
    volume = read_volume(path)
    assert prediction.labels.shape == volume.array.shape[1:] and prediction.labels.dtype == np.uint8
    np.testing.assert_allclose(prediction.affine, volume.affine)
    np.testing.assert_array_equal(
        prediction.labels, to_input_grid(prediction.model_labels, prediction.geometry)
    )
    assert len(np.unique(prediction.labels)) == 3  # the random net does use all three classes


@pytest.mark.shared_data
def test_predictions_equal_the_training_pipeline_and_torch(
    shared_data: Path, models: dict[str, Path]
) -> None:
    """The model's spec run by the training pipeline (``modalities.volumes.transforms.preprocess``: MONAI,
    resampling in float32) + torch + MONAI's sliding window == the predictor, within 1e-4."""
    from modalities.volumes.transforms import check_spec, preprocess

    assert check_spec(MR_STEPS) == MR_STEPS  # the models carry a valid training spec
    path = shared_data / "radiomics_ct_mri" / "breast1_image.nrrd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = preprocess(MR_STEPS, path)
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(training["image"][None]), MR_ROI, 4, _net(0), overlap=0.25, mode="gaussian"
        )
    expected = torch.softmax(logits, dim=1)[0].numpy()
    prediction = OnnxPredictor(models["mr"]).predict_volume(path)
    np.testing.assert_allclose(prediction.model_affine, training["affine"], atol=1e-9)
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-4)
    _agree_where_decided(prediction.model_labels, expected, margin=1e-3, least=0.95)


@pytest.mark.shared_data
def test_ct_with_a_foreground_crop_matches_training_and_maps_back(
    shared_data: Path, models: dict[str, Path]
) -> None:
    """lung1 CT (512×512×48, LPS) with the training spec window → foreground crop → pad: the predictor's
    probabilities equal the training pipeline + torch within 1e-4, and on the input's grid everything
    outside the crop box (the air the model never saw) is background."""
    from modalities.volumes.transforms import check_spec, preprocess

    assert check_spec(LUNG_STEPS) == LUNG_STEPS
    path = shared_data / "radiomics_ct_mri" / "lung1_image.nrrd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = preprocess(LUNG_STEPS, path)
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(training["image"][None]),
            LUNG_ROI,
            4,
            _net(2),
            overlap=0.25,
            mode="gaussian",
            sigma_scale=0.2,
        )
    expected = torch.softmax(logits, dim=1)[0].numpy()
    predictor = OnnxPredictor(models["lung"])
    prediction = predictor.predict_volume(path)
    crop = prediction.geometry.operations[2]
    spaced = crop.shape
    assert np.prod(np.subtract(crop.end, crop.start)) < 0.9 * np.prod(spaced)  # the crop bites
    np.testing.assert_allclose(prediction.model_affine, training["affine"], atol=1e-9)
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-4)
    _agree_where_decided(prediction.model_labels, expected, margin=1e-3, least=0.95)
    volume = read_volume(path)
    assert prediction.labels.shape == volume.array.shape[1:]
    # input voxels whose nearest resampled voxel lies outside the crop box (air the model never saw) are
    # background; computed from world coordinates: spaced grid = model grid shifted back by pad and crop
    pad = prediction.geometry.operations[3]
    shift = np.eye(4)
    shift[:3, 3] = np.subtract(pad.before, crop.start)
    spaced_affine = prediction.model_affine @ shift
    index = np.indices(volume.array.shape[1:])[:, ::7, ::7, :].reshape(3, -1)
    world = volume.affine @ np.vstack([index, np.ones(index.shape[1])])
    coords = np.linalg.solve(spaced_affine, world)[:3]
    nearest = np.clip(np.rint(coords), 0, np.asarray(spaced)[:, None] - 1)
    clear = (np.abs(coords - np.floor(coords) - 0.5) > 1e-6).all(axis=0)
    outside = ((nearest < np.asarray(crop.start)[:, None]) | (nearest >= np.asarray(crop.end)[:, None])).any(
        axis=0
    )
    assert (outside & clear).sum() > 100
    np.testing.assert_array_equal(prediction.labels[tuple(index)][outside & clear], 0)
    assert len(np.unique(prediction.labels)) > 1


@pytest.mark.shared_data
def test_labels_on_the_input_grid_equal_monai_invertd(shared_data: Path, models: dict[str, Path]) -> None:
    """breast1 (0.66×0.66×2.1 mm, resampled to 1.2×1.2×1.5 and back): our mask == MONAI's Invertd of its
    argmax (nearest) and, with ``interpolation="bilinear"``, == the argmax of MONAI's inverted
    probabilities, wherever the decision is not a near tie."""
    path = str(shared_data / "radiomics_ct_mri" / "breast1_image.nrrd")
    predictor = OnnxPredictor(models["mr"])
    pipeline = _monai_pipeline(MR_PIXDIM, NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    data, expected = _monai_reference(
        path, pipeline, _net(0), MR_ROI, sw_batch_size=4, overlap=0.25, mode="gaussian"
    )

    def invert(model_map: np.ndarray, nearest: bool) -> np.ndarray:
        image = data["image"]
        prediction = MetaTensor(
            torch.from_numpy(model_map.astype(np.float32)), affine=image.affine, meta=dict(image.meta)
        )
        prediction.applied_operations = image.applied_operations
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inverse = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=nearest)
            return inverse({"pred": prediction, "image": image})["pred"].numpy()

    ours = predictor.predict_volume(path)
    theirs = invert(expected.argmax(axis=0)[None], nearest=True)[0]
    decided_model = np.diff(np.sort(expected, axis=0)[-2:], axis=0)[0] > 1e-4
    decided = invert(decided_model[None].astype(np.float32), nearest=True)[0] > 0.5
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(ours.labels[decided], theirs[decided])

    smooth = predictor.predict_volume(path, interpolation="bilinear")
    probabilities = invert(expected, nearest=False)
    top2 = np.sort(probabilities, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(smooth.labels[decided], probabilities.argmax(axis=0)[decided])
    assert (smooth.labels != ours.labels).any()  # the two inverse interpolations are really different


def test_ct_dicom_series_mask_is_written_on_the_series_grid(models: dict[str, Path], tmp_path: Path) -> None:
    """A real CT series (HU, CT window, 16×16×5 at 0.49×0.49×2.5 mm → 1×1×2 mm): the probabilities equal
    MONAI + torch (overlap 0.5, constant blending); the NIfTI mask has the series' shape and RAS affine."""
    predictor = OnnxPredictor(models["ct"])
    out = predictor.write_mask(CT_SERIES, tmp_path / "ct_mask.nii.gz")
    prediction = predictor.predict_volume(CT_SERIES)
    pipeline = _monai_pipeline((1.0, 1.0, 2.0), ScaleIntensityRanged("image", -175, 250, 0, 1, clip=True))
    _, expected = _monai_reference(
        str(CT_SERIES), pipeline, _net(1), CT_ROI, sw_batch_size=4, overlap=0.5, mode="constant"
    )
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-5)
    written = nib.load(str(out))
    volume = read_volume(CT_SERIES)
    assert written.shape == volume.array.shape[1:] == (16, 16, 5)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), prediction.labels)
    # every input voxel carries the label of the model voxel nearest to the same world point
    index = np.indices(volume.array.shape[1:]).reshape(3, -1)
    world = volume.affine @ np.vstack([index, np.ones(index.shape[1])])
    model = np.linalg.solve(prediction.model_affine, world)[:3]
    clear = (np.abs(model - np.floor(model) - 0.5) > 1e-6).all(axis=0)  # not halfway between two voxels
    assert clear.mean() > 0.5
    nearest = [
        np.clip(np.rint(c), 0, n - 1).astype(int)
        for c, n in zip(model, prediction.model_labels.shape, strict=True)
    ]
    np.testing.assert_array_equal(
        prediction.labels.ravel()[clear], prediction.model_labels[tuple(nearest)][clear]
    )
    assert len(np.unique(prediction.labels)) > 1
    # the same physical places as MONAI's own reading of the series (which stacks the slices the other way)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_affine = LoadImage(image_only=True)(str(CT_SERIES)).affine.numpy()
    corner = np.array([0, 0, 4, 1.0])
    np.testing.assert_allclose(written.affine @ corner, monai_affine @ np.array([0, 0, 0, 1.0]), atol=1e-4)


@pytest.mark.shared_data
def test_written_masks_keep_the_input_affine_and_header(
    shared_data: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    nifti = shared_data / "msd_hippocampus" / "imagesTr" / "hippocampus_003.nii.gz"
    nrrd = shared_data / "radiomics_ct_mri" / "breast1_image.nrrd"
    predictor = OnnxPredictor(models["mr"])
    out = predictor.write_mask(nifti, tmp_path / "hippo.nii.gz")
    source, written = nib.load(str(nifti)), nib.load(str(out))
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert int(written.header["sform_code"]) == (int(source.header["sform_code"]) or 1)
    assert written.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asarray(written.dataobj), predictor.predict_volume(nifti).labels)

    out = predictor.write_mask(nrrd, tmp_path / "breast1.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LoadImage(image_only=True)(str(nrrd))  # MONAI's NrrdReader: LPS file → RAS affine
    written = nib.load(str(out))
    assert written.shape == tuple(reference.shape) == (45, 120, 21)
    np.testing.assert_allclose(written.affine, reference.affine.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match=r"must end with \.nii or \.nii\.gz"):
        predictor.write_mask(nrrd, tmp_path / "breast1.nrrd")


@pytest.mark.shared_data
def test_predict_volumes_writes_one_mask_per_input(
    shared_data: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    inputs = [
        shared_data / "msd_hippocampus" / "imagesTr" / "hippocampus_004.nii.gz",
        shared_data / "radiomics_ct_mri" / "breast1_image.nrrd",
    ]
    written = predict_volumes(models["mr"], inputs, tmp_path / "masks")
    assert written == [
        tmp_path / "masks" / "hippocampus_004_mask.nii.gz",
        tmp_path / "masks" / "breast1_image_mask.nii.gz",
    ]
    predictor = OnnxPredictor(models["mr"])
    for path, out in zip(inputs, written, strict=True):
        np.testing.assert_array_equal(
            np.asarray(nib.load(str(out)).dataobj), predictor.predict_volume(path).labels
        )
    assert mask_path_for(CT_SERIES, tmp_path) == tmp_path / "CT5N_mask.nii.gz"
    # two inputs with the same name would overwrite each other: refused before anything is written
    clash = tmp_path / "other" / "hippocampus_004.nii.gz"
    clash.parent.mkdir()
    clash.write_bytes(inputs[0].read_bytes())
    with pytest.raises(ConfigError, match="would both be written to"):
        predict_volumes(models["mr"], [inputs[0], clash], tmp_path / "clash")
    assert not (tmp_path / "clash").exists()


def test_array_inputs_need_their_affine_and_match_the_file(models: dict[str, Path]) -> None:
    predictor = OnnxPredictor(models["ct"])
    volume = read_volume(CT_SERIES)
    from_file = predictor.predict_volume(CT_SERIES)
    from_array = predictor.predict_volume(volume.array[0], affine=volume.affine)
    assert isinstance(from_array, VolumePrediction)
    np.testing.assert_array_equal(from_array.labels, from_file.labels)
    np.testing.assert_array_equal(from_array.probabilities, from_file.probabilities)
    with pytest.raises(ConfigError, match="needs its voxel → RAS affine"):
        predictor.predict_volume(volume.array)


def test_wrong_rank_channels_and_values_are_clear_errors(models: dict[str, Path]) -> None:
    predictor = OnnxPredictor(models["ct"])
    volume = read_volume(CT_SERIES)
    with pytest.raises(InvalidVolumeError, match=r"2 channel\(s\), but the model takes 1 \(image\)"):
        predictor.predict_volume(np.concatenate([volume.array, volume.array]), affine=volume.affine)
    with pytest.raises(InvalidVolumeError, match=r"shape \(16, 16\) is not a volume"):
        predictor.predict_volume(volume.array[0, :, :, 0], affine=volume.affine)
    with pytest.raises(InvalidVolumeError, match=r"shape \(2, 1, 16, 16, 5\) is not a volume"):
        predictor.predict_volume(volume.array[None].repeat(2, 0), affine=volume.affine)
    broken = volume.array.copy()
    broken[0, 3, 3, 3] = np.nan
    with pytest.raises(InvalidVolumeError, match="NaN or infinite voxels"):
        predictor.predict_volume(broken, affine=volume.affine)
    with pytest.raises(InvalidVolumeError, match="unusable affine"):
        predictor.predict_volume(volume.array, affine=np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(
        InvalidVolumeError, match=r"does not fit the model, which takes \(C, H, W, D\) with C = 1"
    ):
        predictor.predict_preprocessed(np.zeros((3, 8, 8, 8), np.float32))


def _edit_metadata(source: Path, target: Path, change: Any) -> Path:
    model = onnx.load(str(source))
    metadata = json.loads(model.metadata_props[0].value)
    change(metadata)
    model.metadata_props[0].value = json.dumps(metadata)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("segmentation"), "needs a 'segmentation' metadata block with at least 'roi_size'"),
        (lambda m: m["segmentation"].update(roi_size=[8, 8, 8]), r"the graph takes \['batch', 1, 8, 8, 4\]"),
        (lambda m: m["segmentation"].update(roi_size=[8, 8]), "roi_size must be 3 positive integers"),
        (lambda m: m["segmentation"].update(overlap=1.0), r"overlap must be in \[0, 1\)"),
        (lambda m: m["segmentation"].update(mode="mean"), "mode 'mean' is not one of constant, gaussian"),
        (
            lambda m: m["segmentation"].update(activation="sigmoid"),
            "activation 'sigmoid' is not one of softmax",
        ),
        (
            lambda m: m["segmentation"].update(stride=4),
            r"unknown 'segmentation' metadata entries \['stride'\]",
        ),
        (
            lambda m: m["segmentation"].update(output="probabilities"),
            "the graph has no output 'probabilities'",
        ),
        (lambda m: m.update(class_names=["a", "b"]), "the graph returns 3 classes but the metadata names 2"),
        (
            lambda m: m["input"].update(layout="(B, C, T)"),
            "input layout '\\(B, C, T\\)' is not a volume model's",
        ),
        (
            lambda m: m["preprocessing"].append({"op": "resize"}),
            r"unknown volume preprocessing step\(s\) \['resize'\]",
        ),
        (lambda m: m["input"].update(channels=["t1", "t2"]), r"loads 1 channel\(s\) but the input names 2"),
        (
            lambda m: (
                m.update(preprocessing=m["preprocessing"][1:]) or m["input"].update(channels=["t1", "t2"])
            ),
            r"the metadata describes \(B, 2, 8, 8, 4\)",
        ),
    ],
)
def test_bad_segmentation_metadata_is_refused(
    models: dict[str, Path], tmp_path: Path, change: Any, message: str
) -> None:
    with pytest.raises(ModelMetadataError, match=message):
        OnnxPredictor(_edit_metadata(models["ct"], tmp_path / "bad.onnx", change))


def test_signal_and_volume_methods_refuse_the_other_kind_of_model(
    models: dict[str, Path], tmp_path: Path
) -> None:
    predictor = OnnxPredictor(models["ct"])
    with pytest.raises(ModelMetadataError, match="a volume segmentation model; use predict_volume"):
        predictor.predict_windows(np.zeros((1, 1, 200), np.float32))
    with pytest.raises(ModelMetadataError, match="a volume segmentation model"):
        predictor.predict_array(np.zeros((1, 400), np.float32), 100.0, ["image"])
    # a (tiny) signal classifier
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 200])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["probabilities"], axes=[2], keepdims=0)], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "signal.onnx"))
    _set_metadata(
        tmp_path / "signal.onnx",
        {
            "format": "medcl-onnx/1",
            "task": "multilabel",
            "class_names": ["c0"],
            "input": {
                "name": "input",
                "layout": "(B, C, T)",
                "channels": ["II"],
                "fs": 100.0,
                "window_samples": 200,
            },
            "preprocessing": [{"op": "read"}, {"op": "window", "length": 200, "stride": 200}],
        },
    )
    with pytest.raises(ModelMetadataError, match="not a volume segmentation model; use predict_file"):
        OnnxPredictor(tmp_path / "signal.onnx").predict_volume(CT_SERIES)
    with pytest.raises(ModelMetadataError, match="not a volume segmentation model"):
        predict_volumes(tmp_path / "signal.onnx", [CT_SERIES], tmp_path / "out")


def test_volume_prediction_runs_with_torch_and_monai_blocked(models: dict[str, Path], tmp_path: Path) -> None:
    expected = OnnxPredictor(models["ct"]).predict_volume(CT_SERIES).labels
    script = (
        BLOCK_TORCH
        + f"""
import json
import nibabel as nib
import numpy as np
from export.predictor import predict_volumes
written = predict_volumes({str(models["ct"])!r}, [{str(CT_SERIES)!r}], {str(tmp_path)!r})
labels = np.asarray(nib.load(str(written[0])).dataobj)
blocked = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "lightning", "monai"}})
print("RESULT", json.dumps({{"labels": labels.tolist(), "imported": blocked}}))
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert payload["imported"] == []
    np.testing.assert_array_equal(np.asarray(payload["labels"]), expected)
