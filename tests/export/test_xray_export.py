"""X-ray classifiers: ONNX export (metadata, parity on random and real radiographs) and the torch-free
predictor on real covid_cxr JPEGs and on a DICOM radiograph written from real covid_cxr pixels.

The model is a tiny MONAI ResNet trained for two batches on a small covid_cxr subset (real metadata rows,
real images, copied to tmp_path so that indexing stays fast)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from export.onnx import export_classifier, load_classifier
from export.predictor import ImagePrediction, ModelMetadataError, OnnxPredictor
from medcl.cli import main as medcl_main
from medcl.errors import ConfigError, DataError
from modalities.xray.adapter import XrayAdapter
from modalities.xray.manifests import covid_cxr_manifest
from modalities.xray.readers import read_xray
from modalities.xray.transforms import preprocess_pixels

CLASSES = ["COVID-19", "SARS", "No Finding", "Pneumocystis"]
#: patients per finding in the subset (only patients whose frontal images carry exactly that finding)
PATIENTS = {"COVID-19": 8, "SARS": 4, "No Finding": 5, "Pneumocystis": 4}
IMAGE_SIZE = 64
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "lightning", "pytorch_lightning", "monai", "torchmetrics"}:
            raise ImportError(f"{name} is blocked: the predictor must not need it")
sys.meta_path.insert(0, Block())
"""


@pytest.fixture(scope="module")
def covid_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A covid_cxr folder with the real metadata rows and real images of a few patients per finding."""
    root = shared_data / "covid_cxr"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"{root} has no metadata.csv")
    trials = covid_cxr_manifest(root, views=["PA", "AP"]).trials
    chosen: list[pd.DataFrame] = []
    for finding, n_patients in PATIENTS.items():
        rows = trials[trials["labels"] == finding]
        patients = sorted(rows["patient_id"].unique())[:n_patients]
        chosen.append(rows[rows["patient_id"].isin(patients)].groupby("patient_id").head(2))
    picked = pd.concat(chosen)
    out = tmp_path_factory.mktemp("covid_subset")
    (out / "images_512").mkdir()
    table = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    on_disk = dict(zip(picked["image_id"], picked["path"], strict=True))
    table = table[table["filename"].isin(on_disk) & table["view"].isin(["PA", "AP", "AP Supine"])]
    table = table.drop_duplicates("filename")
    for name in table["filename"]:
        shutil.copyfile(on_disk[name], out / "images_512" / Path(on_disk[name]).name)
    table["filename"] = [Path(on_disk[name]).name for name in table["filename"]]
    table.to_csv(out / "metadata.csv", index=False)
    return out


def _adapter(root: Path) -> XrayAdapter:
    return XrayAdapter(
        root=str(root),
        dataset="covid_cxr",
        image_size=IMAGE_SIZE,
        class_names=CLASSES,
        labelled_only=True,
        report=False,
    )


@pytest.fixture(scope="module")
def xray_checkpoint(covid_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XrayResNet + MLP head trained for two batches (scratch, multi-label) on the subset."""
    import lightning as L

    from medcl.data import SplitConfig
    from modalities.xray.encoders import XrayResNet
    from tasks import ClassificationDataModule, ClassificationModule

    out = tmp_path_factory.mktemp("xray_classifier")
    L.seed_everything(0)
    data = ClassificationDataModule(
        _adapter(covid_subset),
        split=SplitConfig(method="random", val_fraction=0.2, test_fraction=0.2),
        batch_size=8,
        run_dir=str(out / "data"),
    )
    encoder = XrayResNet(in_channels=1, layers=(1, 1, 1, 1), block_inplanes=(8, 16, 32, 64))
    model = ClassificationModule(
        encoder=encoder,
        mode="scratch",
        num_classes=len(CLASSES),
        task="multilabel",
        class_names=CLASSES,
        input_key="image",
        hidden_dim=32,
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=data)
    path = out / "classifier.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


@pytest.fixture(scope="module")
def exported(xray_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("xray_onnx") / "cxr.onnx"
    return out, export_classifier(xray_checkpoint, out)


@pytest.fixture(scope="module")
def jpegs(covid_subset: Path) -> list[Path]:
    return sorted((covid_subset / "images_512").iterdir())[:3]


@pytest.fixture(scope="module")
def dicom_from_real_pixels(
    jpegs: list[Path], tmp_path_factory: pytest.TempPathFactory, make_cr_dicom: Callable[..., Path]
) -> tuple[Path, Path]:
    """``(jpeg, dicom)``: a MONOCHROME1 12-bit CR DICOM without a file suffix whose stored values are the
    real JPEG's grey levels, inverted and scaled by 16."""
    jpeg = jpegs[0]
    grey = np.round(read_xray(jpeg).pixels * 255).astype(np.uint16)
    path = tmp_path_factory.mktemp("dicom") / "radiograph"  # no suffix: found from the content
    return jpeg, make_cr_dicom(path, (255 - grey) * 16, "MONOCHROME1", view="PA", spacing=None)


def test_metadata_holds_modality_labels_and_the_preprocessing_spec(
    exported: tuple[Path, dict], covid_subset: Path
) -> None:
    import onnx

    path, metadata = exported
    stored = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["medcl"])
    assert stored == json.loads(json.dumps(metadata))
    assert stored["modality"] == "xray" and stored["task"] == "multilabel"
    assert stored["class_names"] == CLASSES
    assert stored["input"]["layout"] == "(B, C, H, W)"
    assert stored["input"]["channels"] == 1 and stored["input"]["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    assert stored["preprocessing"] == _adapter(covid_subset).input_spec()["preprocessing"]
    assert [step["op"] for step in stored["preprocessing"]] == ["read", "letterbox"]


def test_parity_on_random_and_real_radiographs(exported: tuple[Path, dict]) -> None:
    parity = exported[1]["parity"]
    assert parity["rtol"] == 1e-4 and parity["atol"] == 1e-5
    for name in ("random", "real"):
        assert parity[name]["passed"] is True
        assert parity[name]["n_inputs"] >= 8
        assert parity[name]["max_abs_error"] <= 1e-5


def test_predictor_equals_torch_on_the_adapters_preprocessing(
    exported: tuple[Path, dict],
    xray_checkpoint: Path,
    covid_subset: Path,
    jpegs: list[Path],
    dicom_from_real_pixels: tuple[Path, Path],
) -> None:
    """Predictor (numpy preprocessing + onnxruntime) on files vs the torch model on the adapter's own
    samples of the same files (``load_sample``, the training path)."""
    predictor = OnnxPredictor(exported[0])
    model, _ = load_classifier(xray_checkpoint)
    adapter = _adapter(covid_subset)
    files = [*jpegs, dicom_from_real_pixels[1]]
    for path in files:
        sample = adapter.load_sample(pd.Series({"path": str(path), "patient_id": "p", "trial_id": "t"}))
        with torch.no_grad():
            expected = model(torch.from_numpy(sample["image"][None]))[1].numpy()[0]
        prediction = predictor.predict_file(path)
        assert isinstance(prediction, ImagePrediction)
        np.testing.assert_array_equal(prediction.image, sample["image"])
        np.testing.assert_allclose(prediction.probabilities, expected, rtol=0, atol=1e-5)
    # the DICOM holds the JPEG's grey levels (inverted, MONOCHROME1; no window → min-max): its input is
    # the JPEG's pixels stretched to [0, 1], letterboxed by the spec
    jpeg, dicom = dicom_from_real_pixels
    grey = np.round(read_xray(jpeg).pixels * 255)
    reference, _ = preprocess_pixels((grey - grey.min()) / (grey.max() - grey.min()), predictor.steps)
    np.testing.assert_allclose(predictor.preprocess_image(dicom)[0], reference, atol=1e-6)


def test_predictor_and_cli_run_with_torch_lightning_and_monai_blocked(
    exported: tuple[Path, dict], jpegs: list[Path], dicom_from_real_pixels: tuple[Path, Path]
) -> None:
    model_path = str(exported[0])
    files = [str(jpegs[1]), str(dicom_from_real_pixels[1])]
    script = (
        BLOCK_TORCH
        + f"""
import json
from collections.abc import Callable
from export import OnnxPredictor
predictor = OnnxPredictor({model_path!r})
out = [predictor.predict_file(p).probabilities.tolist() for p in {files!r}]
from medcl.cli import main
main(["predict", "--model", {model_path!r}, *{files!r}])
blocked = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "lightning", "monai"}})
print("RESULT", json.dumps({{"probabilities": out, "imported": blocked}}))
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table, payload = result.stdout.split("RESULT ", 1)
    payload = json.loads(payload)
    assert payload["imported"] == []
    lines = table.strip().splitlines()
    assert lines[0] == "file," + ",".join(f"p_{name}" for name in CLASSES) + ",predicted"
    expected = OnnxPredictor(exported[0]).predict_images(
        np.stack([OnnxPredictor(exported[0]).preprocess_image(p)[0] for p in files])
    )
    np.testing.assert_allclose(np.array(payload["probabilities"]), expected, atol=1e-6)
    for line, probabilities in zip(lines[1:], expected, strict=True):
        cells = line.split(",")
        np.testing.assert_allclose([float(c) for c in cells[1:-1]], probabilities, atol=1e-6)
        assert cells[-1] == "|".join(n for n, p in zip(CLASSES, probabilities, strict=True) if p >= 0.5)


def test_cli_export_reports_parity(
    xray_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cxr.onnx"
    assert medcl_main(["export", "--ckpt", str(xray_checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"multilabel over {', '.join(CLASSES)}" in printed and "real images (" in printed
    assert OnnxPredictor(out).metadata["modality"] == "xray"


def test_image_models_refuse_signal_options_and_methods(
    exported: tuple[Path, dict], jpegs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    predictor = OnnxPredictor(exported[0])
    with pytest.raises(ModelMetadataError, match="image model"):
        predictor.predict_windows(np.zeros((1, 1, 64), np.float32))
    with pytest.raises(ConfigError, match="fs is an option of signal models"):
        predictor.predict_file(jpegs[0], fs=100.0)
    assert medcl_main(["predict", "--model", str(exported[0]), str(jpegs[0]), "--per-window"]) == 2
    assert "--per-window and --fs are options of signal models" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"do not fit the model.*\(N, 1, 64, 64\)"):
        predictor.predict_images(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"cxr\.onnx"):
        predictor.predict_file(exported[0])  # an ONNX file is no radiograph: the error names it
