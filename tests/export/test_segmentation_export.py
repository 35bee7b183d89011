"""ONNX export of segmentation models: metadata, dynamic batch, parity on crops and whole volumes, failure
above tolerance, and ``medcl export`` → ``medcl predict`` on real bundled hippocampus volumes.

The checkpoint is a real (two training steps) ``SegmentationModule`` with a tiny ``UNetBackbone`` trained
on the bundled MSD hippocampus through ``modalities.volumes.VolumeAdapter``, so it records the adapter and
the training preprocessing spec exactly as ``medcl finetune`` does.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import ExportParityError
from export.segmentation import ExportableSegmenter, export_segmentation, roi_crops
from medcl.checkpoints import load_checkpoint
from medcl.cli import main
from medcl.errors import ConfigError
from modalities.bundled import resolve_root
from tasks.segmentation import load_segmentation_model

LABELS = ["background", "anterior", "posterior"]
ROI = [32, 32, 32]  # the shipped config trains on 32×48×32; cubes keep these tests fast
TINY = (4, 4, 8, 8, 16, 4)


def volume(name: str) -> Path:
    return resolve_root("bundled:msd_hippocampus") / "imagesTr" / f"{name}.nii.gz"


def stored_metadata(path: Path) -> dict[str, Any]:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["medcl"])


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """One torch thread in this module: torch's OpenMP workers spin-wait, and on a busy 2-core machine two
    of them made these tests 5-30× slower than one (measured: 50 s vs 9 s for this file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real segmentation checkpoint: 2 training steps on the bundled hippocampus volumes."""
    from medcl.data import SplitConfig
    from modalities.volumes import VolumeAdapter
    from modalities.volumes.encoders import UNetBackbone
    from tasks.segmentation import SegmentationModule
    from tasks.segmentation_data import SegmentationDataModule

    folder = tmp_path_factory.mktemp("segmentation_run")
    adapter = VolumeAdapter(root="bundled:msd_hippocampus", image_modality="MR", roi=ROI, labelled_only=True)
    data = SegmentationDataModule(
        adapter,
        label_names=LABELS,
        roi_size=ROI,
        split=SplitConfig(method="random", val_fraction=0.2, test_fraction=0.2, seed=0),
        batch_size=2,
        run_dir=str(folder),
    )
    L.seed_everything(0, verbose=False)
    model = SegmentationModule(
        encoder=UNetBackbone(features=TINY), mode="scratch", num_classes=3, label_names=LABELS, roi_size=ROI
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
        num_sanity_val_steps=0,
        default_root_dir=str(folder),
    )
    trainer.fit(model, datamodule=data)
    path = folder / "seg.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``medcl export --ckpt CKPT --out seg.onnx`` (default settings) and what it printed."""
    out = tmp_path_factory.mktemp("onnx") / "seg.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--ckpt", str(checkpoint), "--out", str(out)]) == 0
    return out, printed.getvalue()


# --------------------------------------------------------------------------------------------------
def test_metadata_describes_the_checkpoint(exported: tuple[Path, str], checkpoint: Path) -> None:
    path, printed = exported
    meta = load_checkpoint(checkpoint)["medcl"]
    stored = stored_metadata(path)
    assert stored["format"] == "medcl-onnx/1" and stored["task"] == "segmentation"
    assert stored["class_names"] == LABELS and stored["modality"] == "MR"
    assert stored["preprocessing"] == meta["input"]["preprocessing"]
    assert [s["op"] for s in stored["preprocessing"]] == ["load", "orientation", "spacing", "zscore", "pad"]
    assert stored["input"] == {
        "name": "input",
        "layout": "(B, C, H, W, D)",
        "dtype": "float32",
        "channels": ["image"],
        "orientation": "RAS",
        "spacing": [1.0, 1.0, 1.0],
    }
    assert stored["segmentation"] == {
        "roi_size": ROI,
        "overlap": meta["sliding_window"]["overlap"],
        "mode": meta["sliding_window"]["mode"],
        "sigma_scale": 0.125,
        "sw_batch_size": meta["sliding_window"]["sw_batch_size"],
        "padding_mode": "constant",
        "cval": 0.0,
        "output": "logits",
        "activation": "softmax",
        "inverse_interpolation": "nearest",
    }
    assert stored["source_checkpoint"]["file"] == "seg.ckpt"
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = graph.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and dims == ["batch", 1, *ROI]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert not list(path.parent.glob("*.data")), "one self-contained file"
    assert "segmentation over background, anterior, posterior (ROI 32×32×32)" in printed


def test_parity_numbers_are_recorded_and_measured(exported: tuple[Path, str], checkpoint: Path) -> None:
    parity = stored_metadata(exported[0])["parity"]
    assert parity["rtol"] == 1e-4 and parity["atol"] == 1e-4 and parity["opset"] == 17
    assert parity["random"]["n_inputs"] == 2 and parity["real"]["n_inputs"] == 4  # 2 volumes × 2 crops
    for name in ("random", "real"):
        assert parity[name]["passed"] is True
        assert 0 < parity[name]["max_abs_error"] <= 1e-4, "float32 graphs never agree bit for bit"
    volume = parity["volume"]
    assert volume["source"] == "real" and volume["n_volumes"] == 2 and volume["passed"] is True
    assert 0 <= volume["max_abs_error"] <= 1e-4 and volume["atol"] == 1e-4
    assert all(s >= r for v in volume["volumes"] for s, r in zip(v["shape"], ROI, strict=True))
    assert volume["min_label_agreement"] > 0.999
    # The recorded random-input error is the one measured again here (same seed, same inputs).
    model = load_segmentation_model(checkpoint)
    x = np.random.default_rng(0).standard_normal((2, 1, *ROI)).astype(np.float32)
    got = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() == pytest.approx(parity["random"]["max_abs_error"], rel=0.2)


def test_dynamic_batch_gives_the_same_per_item_output(exported: tuple[Path, str], checkpoint: Path) -> None:
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    model = load_segmentation_model(checkpoint)
    graph = ExportableSegmenter(model.encoder, model.head).eval()
    x = np.random.default_rng(3).standard_normal((3, 1, *ROI)).astype(np.float32)
    batched = session.run(["logits"], {"input": x})[0]
    assert batched.shape == (3, 3, *ROI)
    for i in range(3):
        single = session.run(["logits"], {"input": x[i : i + 1]})[0]
        np.testing.assert_allclose(single[0], batched[i], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = graph(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(expected, model(torch.from_numpy(x)).numpy())
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-5)


def test_api_with_another_roi_returns_what_it_stores(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "roi32.onnx"
    metadata = export_segmentation(
        checkpoint,
        out,
        roi_size=[32, 48, 32],
        real_volumes=[volume("hippocampus_015")],  # 42×51×28: padded to the window
        n_random=1,
        n_parity_volumes=1,
    )
    assert stored_metadata(out) == json.loads(json.dumps(metadata))
    assert metadata["segmentation"]["roi_size"] == [32, 48, 32]
    assert ort.InferenceSession(str(out)).get_inputs()[0].shape == ["batch", 1, 32, 48, 32]
    parity = metadata["parity"]
    assert parity["random"]["n_inputs"] == 1 and parity["real"]["n_inputs"] == 2
    # 42×51×28 → 42×51×32 by the training pipeline (pad to the checkpoint's ROI); the windows of 48 along
    # the second axis still fit, the predictor pads the rest as MONAI does
    assert parity["volume"]["passed"] is True and parity["volume"]["volumes"][0]["shape"] == [42, 51, 32]
    with pytest.raises(ConfigError, match=r"roi_size \[30, 32, 32\] does not suit UNetBackbone"):
        export_segmentation(checkpoint, tmp_path / "bad.onnx", roi_size=[30, 32, 32])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi32.onnx"]


def test_roi_crops_hold_the_foreground_and_the_centre() -> None:
    image = np.arange(40 * 50 * 30, dtype=np.float32).reshape(1, 40, 50, 30)
    mask = np.zeros((1, 40, 50, 30), dtype=np.int64)
    mask[0, 30:34, 40:44, 2:6] = 1  # centroid (31.5, 41.5, 3.5): the crop is clipped to the volume
    crops = roi_crops(image, [32, 48, 32], mask)
    assert crops.shape == (2, 1, 32, 48, 32)
    # padded to 40×50×32 (a slice before and after along D); the foreground crop starts at (8, 2, 0), the
    # central one at round((size − 1) / 2 − roi / 2) = round(3.5, 0.5, −0.5) = (4, 0, 0)
    padded = np.pad(image, [(0, 0), (0, 0), (0, 0), (1, 1)])
    np.testing.assert_array_equal(crops[0], padded[:, 8:40, 2:50, 0:32])
    np.testing.assert_array_equal(crops[1], padded[:, 4:36, 0:48, 0:32])


def test_export_fails_above_tolerance_and_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ExportParityError, match=r"disagree beyond rtol=0\.0, atol=0\.0 \(random: max abs error"
    ):
        export_segmentation(
            checkpoint,
            tmp_path / "seg.onnx",
            rtol=0.0,
            atol=0.0,
            n_random=1,
            real_volumes=[],
            n_parity_volumes=0,
        )
    assert list(tmp_path.iterdir()) == []


def test_whole_volume_check_catches_a_predictor_that_blends_otherwise(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.predictor as predictor

    original = predictor.sliding_window_inference

    def constant_blend(*args: Any, **kwargs: Any) -> np.ndarray:
        return original(*args, **{**kwargs, "mode": "constant"})  # the model says gaussian

    monkeypatch.setattr(predictor, "sliding_window_inference", constant_blend)
    with pytest.raises(
        ExportParityError, match=r"whole-volume probabilities differ from torch's .* no model"
    ):
        export_segmentation(
            checkpoint, tmp_path / "seg.onnx", n_random=1, real_volumes=[volume("hippocampus_001")]
        )
    assert list(tmp_path.iterdir()) == []


def test_only_exportable_segmentation_checkpoints(checkpoint: Path, tmp_path: Path) -> None:
    loaded = torch.load(checkpoint, weights_only=True)
    classification = {**loaded, "medcl": {**loaded["medcl"], "kind": "classification"}}
    torch.save(classification, tmp_path / "cls.ckpt")
    with pytest.raises(ConfigError, match=r"cls\.ckpt is not a segmentation checkpoint"):
        export_segmentation(tmp_path / "cls.ckpt", tmp_path / "m.onnx")
    steps = [*loaded["medcl"]["input"]["preprocessing"], {"op": "histogram_match"}]
    odd = {
        **loaded,
        "medcl": {**loaded["medcl"], "input": {**loaded["medcl"]["input"], "preprocessing": steps}},
    }
    torch.save(odd, tmp_path / "odd.ckpt")
    with pytest.raises(ConfigError, match=r"odd.ckpt: its preprocessing cannot be run.*histogram_match"):
        export_segmentation(tmp_path / "odd.ckpt", tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="opset must be >= 17"):
        export_segmentation(checkpoint, tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_predict_writes_masks_equal_to_the_torch_model_on_the_input_grid(
    exported: tuple[Path, str], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modalities.volumes.transforms import preprocess

    inputs = [volume("hippocampus_001"), volume("hippocampus_015")]  # as is; padded along D (28 → 32)
    out_dir = tmp_path / "masks"
    assert main(["predict", "--model", str(exported[0]), *map(str, inputs), "--out", str(out_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    model = load_segmentation_model(checkpoint)
    steps = load_checkpoint(checkpoint)["medcl"]["input"]["preprocessing"]
    for path, line in zip(inputs, lines, strict=True):
        source = nib.load(path)
        written_path = out_dir / path.name.replace(".nii.gz", "_mask.nii.gz")
        written = nib.load(written_path)
        labels = np.asarray(written.dataobj)
        assert labels.shape == source.shape and np.allclose(written.affine, source.affine)
        counts = np.bincount(labels.ravel(), minlength=3)
        assert line == (
            f"{path} -> {written_path} ({'×'.join(map(str, source.shape))} voxels: background {counts[0]}, "
            f"anterior {counts[1]}, posterior {counts[2]})"
        )
        # Reference: the torch model (MONAI sliding windows; segment = argmax of infer) on the training
        # pipeline's volume, each input voxel looked up at its own position on the model's grid.
        preprocessed = preprocess(steps, path)
        with torch.no_grad():
            logits = model.infer(torch.from_numpy(preprocessed["image"])[None])[0]
        probabilities = torch.softmax(logits, dim=0).numpy()
        model_labels = logits.argmax(dim=0).numpy()
        ijk = np.indices(source.shape).reshape(3, -1)
        where = (
            np.linalg.inv(preprocessed["affine"]) @ source.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
        )[:3]
        assert np.allclose(where, np.round(where), atol=1e-6), "1 mm RAS: the grids coincide up to padding"
        at = tuple(np.round(where).astype(int))
        expected = model_labels[at].reshape(source.shape)
        top2 = np.sort(probabilities, axis=0)[-2:]
        ambiguous = ((top2[1] - top2[0]) < 1e-4)[at].reshape(source.shape)
        differ = labels != expected
        assert not (differ & ~ambiguous).any() and differ.sum() <= 5
        assert len(np.unique(expected)) >= 2, "a constant map would not test the placement"
    assert preprocessed["image"].shape[1:] == (42, 51, 32)  # the second input really was padded


def test_predict_errors_on_a_segmentation_model(
    exported: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, image = str(exported[0]), str(volume("hippocampus_001"))
    cases = [
        ([image], "is a segmentation model: give --out DIR"),
        ([image, "--out", str(tmp_path / "masks.csv")], "must be a folder for the masks"),
        ([image, "--out", str(tmp_path / "m"), "--fs", "100"], "--per-window and --fs are options of signal"),
        ([image, image, "--out", str(tmp_path / "m")], "would both be written to"),
    ]
    for arguments, message in cases:
        assert main(["predict", "--model", model, *arguments]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medcl predict: error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "lightning", "pytorch_lightning", "monai", "torchmetrics"}:
            raise ImportError(f"{name} is blocked: medcl predict must not need it")
sys.meta_path.insert(0, Block())
from medcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_on_volumes_needs_no_torch_and_can_skip_bad_files(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    missing, image = tmp_path / "gone.nii.gz", volume("hippocampus_007")
    command = [sys.executable, "-c", BLOCK_TORCH, "predict", "--model", str(exported[0])]
    result = subprocess.run(
        [*command, str(missing), str(image), "--out", str(tmp_path / "masks"), "--on-error", "skip"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["hippocampus_007_mask.nii.gz"]
    assert (
        f"skipped {missing}: volume not found" in result.stderr
        and "1 of 2 volume(s) skipped" in result.stderr
    )
    assert result.stdout.startswith(
        f"{image} -> {tmp_path / 'masks' / 'hippocampus_007_mask.nii.gz'} (34×47×40"
    )
