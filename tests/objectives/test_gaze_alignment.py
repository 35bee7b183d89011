"""Gaze-guided image-report alignment (:mod:`medcl.objectives.gaze_alignment`).

Every loss is recomputed here from the pure functions (or a slow loop reference) on the objective's own
modules in eval mode; the shipped config trains for 2 batches on the real covid_cxr through
``PretrainCLI``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from monai.utils import MAX_SEED
from torch.utils.data import default_collate

from medcl.checkpoints import load_checkpoint
from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError
from medcl.losses.gaze import gaze_alignment_loss, pool_heatmaps_to_patches
from medcl.losses.infonce import info_nce_loss
from medcl.objectives import GazeAlignment
from medcl.objectives.gaze_alignment import cross_modal_multi_positive_info_nce
from medcl.training.cli import PretrainCLI
from modalities.xray.adapter import XrayViewd
from modalities.xray.encoders import XrayResNet
from modalities.xray.text import BPETokenizer, split_sentences

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
TRAIN_REPORTS = [
    "Bilateral patchy opacities in the lower lobes. No pleural effusion.",
    "The heart size is normal. Lungs are clear.",
    "Right lower lobe consolidation. Small left pleural effusion.",
    "Diffuse ground glass opacities. Patient intubated. Worsening since prior exam.",
    "Clear lungs. No pneumothorax.",
    "Left basal consolidation with air bronchograms.",
]
TEXT_ENCODER = {
    "class_path": "modalities.xray.text_encoder.TransformerTextEncoder",
    "init_args": {"vocab_size": 300, "embedding_dim": 16, "depth": 1, "num_heads": 2, "max_length": 16},
}
TOKENIZER = {"class_path": "modalities.xray.text.BPETokenizer", "init_args": {"lowercase": True}}
SPLITTER = "modalities.xray.text.split_sentences"


def make_objective(**overrides: Any) -> GazeAlignment:
    settings: dict[str, Any] = {
        "text_encoder": TEXT_ENCODER,
        "tokenizer": TOKENIZER,
        "sentence_splitter": SPLITTER,
        "projection_dim": 8,
        "max_sentences": 4,
        "max_length": 12,
        "tokenizer_min_frequency": 1,
        "gather_distributed": False,
    }
    settings.update(overrides)
    objective = GazeAlignment(**settings)
    objective.bind(16)
    return objective


def make_encoder() -> XrayResNet:
    torch.manual_seed(0)
    return XrayResNet(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 16)).eval()


def blob(center: tuple[int, int], sigma: float = 6.0) -> np.ndarray:
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    heat = np.exp(-((rows - center[0]) ** 2 + (cols - center[1]) ** 2) / (2 * sigma**2))
    return (heat / heat.sum()).astype(np.float32)


def make_batch(objective: GazeAlignment, patients: list[int], gaze: list[bool], reports: list[str | None]):
    """A collated batch made by the objective's item transform, plus the per-sample raw samples."""
    rng = np.random.default_rng(0)
    transform = objective.item_transform("image")
    items = []
    for k, (patient, has_gaze, report) in enumerate(zip(patients, gaze, reports, strict=True)):
        sample: dict[str, Any] = {"image": rng.random((1, SIZE, SIZE)).astype(np.float32)}
        if report is not None:
            sample["report"] = report
        if has_gaze:
            sample["gaze"] = blob((10 + 7 * k, 50 - 6 * k))
        made = transform(sample)
        item = {key: torch.as_tensor(made[key]) for key in transform.output_keys}
        item["patient"] = patient
        item["label"] = torch.as_tensor((rng.random(3) > 0.5).astype(np.float32))
        item["has_label"] = k != 1
        items.append(item)
    return default_collate(items), transform


def fitted(objective: GazeAlignment) -> GazeAlignment:
    objective.fit_tokenizer(TRAIN_REPORTS)
    return objective.eval()


# --------------------------------------------------------------------------------------------------
# slow references
# --------------------------------------------------------------------------------------------------
def slow_cross_modal(image: torch.Tensor, text: torch.Tensor, ids: list[int], tau: float) -> float:
    a = F.normalize(image.double(), dim=-1)
    b = F.normalize(text.double(), dim=-1)
    n = len(ids)

    def one_way(q: torch.Tensor, k: torch.Tensor) -> float:
        total = 0.0
        for i in range(n):
            denominator = sum(math.exp(float(q[i] @ k[j]) / tau) for j in range(n))
            positives = [j for j in range(n) if ids[j] == ids[i]]
            total += -sum(
                math.log(math.exp(float(q[i] @ k[p]) / tau) / denominator) for p in positives
            ) / len(positives)
        return total / n

    return 0.5 * (one_way(a, b) + one_way(b, a))


def reference_terms(objective: GazeAlignment, encoder: XrayResNet, batch: dict, reports: list[str | None]):
    """Every term recomputed from the objective's modules and the pure loss functions."""
    with torch.no_grad():
        x = batch["image"]
        image_emb = objective.image_head(encoder(x))
        sentence_rows, owners = [], []
        for k, report in enumerate(reports):
            sentences = [s for s in split_sentences(report or "") if s.strip()][: objective.max_sentences]
            for sentence in sentences:
                ids, mask = objective.tokenizer.encode_batch([sentence], objective.max_length)
                feature = objective.text_encoder(torch.as_tensor(ids), torch.as_tensor(mask))
                sentence_rows.append(objective.text_head(feature)[0])
                owners.append(k)
        sentences_t = torch.stack(sentence_rows)
        owners_t = torch.tensor(owners)
        with_report = [k for k in range(len(reports)) if k in owners]
        report_emb = torch.stack([sentences_t[owners_t == k].mean(0) for k in with_report])
        patients = batch["patient"].tolist()
        image_report = slow_cross_modal(
            image_emb[with_report], report_emb, [patients[k] for k in with_report], objective.temperature
        )
        patches = objective.patch_head(encoder.forward_patches(x))
        heat = pool_heatmaps_to_patches(batch["heatmap"], encoder.patch_grid(SIZE))
        has_gaze = batch["has_gaze"].bool()
        gaze = float(
            gaze_alignment_loss(
                sentences_t,
                owners_t,
                patches,
                heat,
                has_gaze,
                temperature=objective.gaze_temperature,
                topk_ratio=objective.topk_ratio,
                weight_text_to_image=objective.weight_text_to_image,
                weight_image_to_text=objective.weight_image_to_text,
            )
        )
        labelled = batch["has_label"].bool()
        disease = float(
            F.binary_cross_entropy_with_logits(
                objective.classifier(image_emb)[labelled], batch["label"][labelled]
            )
        )
    return image_report, gaze, disease


REPORTS = [
    "Bilateral patchy opacities. No pleural effusion.",
    "Lungs are clear. The heart size is normal.",
    "Right lower lobe consolidation.",
    None,  # no report: out of the InfoNCE and of the gaze term
    "Diffuse ground glass opacities. Worsening since prior exam. Patient intubated.",
    "Left basal consolidation. Small left pleural effusion.",
]
PATIENTS = [0, 0, 1, 2, 2, 3]  # two images of patient 0 (both with reports): positives of each other


# --------------------------------------------------------------------------------------------------
def test_loss_is_the_weighted_sum_of_the_terms() -> None:
    objective = fitted(
        make_objective(
            image_report_weight=0.7,
            gaze_weight=1.3,
            weight_text_to_image=0.3,
            weight_image_to_text=0.6,
            disease_weight=0.4,
            num_labels=3,
            temperature=0.2,
            max_sentences=2,  # truncates sample 4's three sentences
        )
    )
    encoder = make_encoder()
    batch, _ = make_batch(objective, PATIENTS, [True, False, True, True, True, False], REPORTS)
    with torch.no_grad():
        terms = objective.forward_batch(encoder, batch)
    image_report, gaze, disease = reference_terms(objective, encoder, batch, REPORTS)
    assert float(terms["image_report"]) == pytest.approx(image_report, rel=1e-5)
    assert float(terms["gaze"]) == pytest.approx(gaze, rel=1e-5)
    assert float(terms["disease"]) == pytest.approx(disease, rel=1e-5)
    expected = 0.7 * image_report + 1.3 * gaze + 0.4 * disease
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["gaze"]) == pytest.approx(
        0.3 * float(terms["gaze_text_to_image"]) + 0.6 * float(terms["gaze_image_to_text"]), rel=1e-6
    )
    assert float(terms["with_report"]) == 5 and float(terms["with_gaze"]) == 3  # sample 3 has no report
    assert gaze > 0 and image_report > 0 and disease > 0


def test_gradients_reach_every_trainable_module() -> None:
    objective = fitted(make_objective(disease_weight=0.5, num_labels=3)).train()
    encoder = make_encoder().train()
    batch, _ = make_batch(objective, PATIENTS, [True] * 6, REPORTS)
    objective.forward_batch(encoder, batch)["loss"].backward()
    for name, module in [
        ("image_head", objective.image_head),
        ("patch_head", objective.patch_head),
        ("text_head", objective.text_head),
        ("classifier", objective.classifier),
        ("text_encoder", objective.text_encoder),
        ("encoder", encoder),
    ]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), name


def test_same_patient_pairs_are_positives() -> None:
    torch.manual_seed(1)
    image, text = torch.randn(6, 5), torch.randn(6, 5)
    ids = [0, 0, 1, 2, 2, 2]
    got = float(cross_modal_multi_positive_info_nce(image, text, torch.tensor(ids), temperature=0.3))
    assert got == pytest.approx(slow_cross_modal(image, text, ids, 0.3), rel=1e-5)
    # one sample per patient: CLIP's symmetric InfoNCE
    distinct = float(cross_modal_multi_positive_info_nce(image, text, torch.arange(6), temperature=0.3))
    clip = float(info_nce_loss(image, text, temperature=0.3, symmetric=True))
    assert distinct == pytest.approx(clip, rel=1e-5)
    assert got != pytest.approx(distinct, rel=1e-3)


def test_two_images_of_one_patient_in_a_batch_are_positives() -> None:
    objective = fitted(make_objective(gaze_weight=0.0))
    encoder = make_encoder()
    same, _ = make_batch(objective, [0, 0, 1, 2], [False] * 4, REPORTS[:3] + REPORTS[4:5])
    apart = dict(same)
    apart["patient"] = torch.tensor([0, 5, 1, 2])
    with torch.no_grad():
        together = float(objective.forward_batch(encoder, same)["image_report"])
        separate = float(objective.forward_batch(encoder, apart)["image_report"])
        image_emb = objective.image_head(encoder(same["image"]))
        sentences, owners = objective.embed_sentences(
            same["text_ids"], same["text_mask"], same["n_sentences"]
        )
        reports = torch.stack([sentences[owners == k].mean(0) for k in range(4)])
    assert together == pytest.approx(slow_cross_modal(image_emb, reports, [0, 0, 1, 2], 0.07), rel=1e-5)
    assert separate == pytest.approx(slow_cross_modal(image_emb, reports, [0, 5, 1, 2], 0.07), rel=1e-5)
    assert together != pytest.approx(separate, rel=1e-4)


def test_samples_without_gaze_skip_the_gaze_term() -> None:
    objective = fitted(make_objective(disease_weight=0.5, num_labels=3))
    no_gaze_objective = make_objective(gaze_weight=0.0, disease_weight=0.5, num_labels=3)
    no_gaze_objective.load_state_dict(objective.state_dict())
    no_gaze_objective.eval()
    encoder = make_encoder()
    batch, _ = make_batch(objective, PATIENTS, [False] * 6, REPORTS)
    with torch.no_grad():
        terms = objective.forward_batch(encoder, batch)
        reference = no_gaze_objective.forward_batch(encoder, batch)
    assert float(terms["gaze"]) == 0.0 and float(terms["with_gaze"]) == 0
    assert float(terms["loss"]) == pytest.approx(float(reference["loss"]), rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(
        float(terms["image_report"]) + 0.5 * float(terms["disease"]), rel=1e-6
    )
    # partly gazed: the term is that of the gazed samples alone
    partly, _ = make_batch(objective, PATIENTS, [False, True, False, False, True, False], REPORTS)
    with torch.no_grad():
        gaze = float(objective.forward_batch(encoder, partly)["gaze"])
        keep = [1, 4]
        sentences, owners = objective.embed_sentences(
            partly["text_ids"][keep], partly["text_mask"][keep], partly["n_sentences"][keep]
        )
        patches = objective.patch_head(encoder.forward_patches(partly["image"][keep]))
        heat = pool_heatmaps_to_patches(partly["heatmap"][keep], encoder.patch_grid(SIZE))
        alone = float(gaze_alignment_loss(sentences, owners, patches, heat, temperature=0.07))
    assert gaze == pytest.approx(alone, rel=1e-5) and gaze > 0


class RecordingAdapter:
    """Gives each row's report and remembers which rows were loaded."""

    input_key = "image"

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        self.loaded.append(str(row["split"]))
        return {"image": np.zeros((1, 4, 4), np.float32), "report": row["report"]}


class FakeDataModule:
    def __init__(self) -> None:
        self.adapter = RecordingAdapter()
        val_reports = ["Zebrafish quokka axolotl. Zebrafish quokka axolotl."] * 20
        self.samples = {
            "train": pd.DataFrame({"report": TRAIN_REPORTS, "split": "train"}),
            "val": pd.DataFrame({"report": val_reports, "split": "val"}),
            "test": pd.DataFrame({"report": val_reports, "split": "test"}),
        }


def test_tokenizer_is_fitted_on_training_reports_only() -> None:
    objective = make_objective()
    data = FakeDataModule()
    objective.setup_data(data)
    assert set(data.adapter.loaded) == {"train"} and len(data.adapter.loaded) == len(TRAIN_REPORTS)
    expected = BPETokenizer().fit(
        [s for r in TRAIN_REPORTS for s in split_sentences(r)], vocab_size=300, min_frequency=1
    )
    assert objective.tokenizer == expected
    assert "zebrafish" not in objective.tokenizer.vocab and "z" not in objective.tokenizer.vocab
    # a fitted (e.g. loaded) tokenizer is kept
    data.samples["train"] = data.samples["val"]
    objective.setup_data(data)
    assert objective.tokenizer == expected
    # the item transform refuses to run before fitting
    with pytest.raises(Exception, match="not fitted"):
        make_objective().item_transform("image")


def test_augmented_images_are_the_adapters_views_seeded_per_sample() -> None:
    """augment_images: the item transform applies the adapter's view (image and heatmap together),
    drawn from its own seeded generator."""
    objective = fitted(make_objective(augment_images=True))
    with pytest.raises(ConfigError, match="views are not known yet"):
        objective.item_transform("image")
    data = SimpleNamespace(adapter=SimpleNamespace(view_transform=XrayViewd))
    objective.setup_data(data)  # tokenizer already fitted: only the views are taken
    transform = objective.item_transform("image")
    rng = np.random.default_rng(0)
    sample = {
        "image": rng.random((1, SIZE, SIZE)).astype(np.float32),
        "report": REPORTS[0],
        "gaze": blob((20, 40)),
    }

    def made(seed: int) -> dict[str, Any]:
        transform.set_random_state(seed=seed)
        return transform(dict(sample))

    first, again, other = made(7), made(7), made(8)
    view = XrayViewd()
    view.set_random_state(seed=int(np.random.RandomState(7).randint(MAX_SEED)))
    expected = view(dict(sample))
    np.testing.assert_array_equal(first["image"], expected["image"])
    np.testing.assert_array_equal(first["heatmap"], expected["gaze"])  # the heatmap moved with the image
    assert not np.array_equal(first["image"], sample["image"])
    np.testing.assert_array_equal(first["image"], again["image"])
    assert not np.array_equal(first["image"], other["image"])
    assert float(first["heatmap"].sum()) == pytest.approx(1.0, abs=1e-5) and bool(first["has_gaze"])
    # the text side is not augmented
    np.testing.assert_array_equal(first["text_ids"], other["text_ids"])
    # validation and test samples: the same inputs without the view
    evaluation = objective.eval_item_transform("image")
    evaluation.set_random_state(seed=7)
    unaugmented = evaluation(dict(sample))
    np.testing.assert_array_equal(unaugmented["image"], sample["image"])
    np.testing.assert_allclose(unaugmented["heatmap"], sample["gaze"] / sample["gaze"].sum(), atol=1e-7)
    np.testing.assert_array_equal(unaugmented["text_ids"], first["text_ids"])
    # without augment_images the image passes through unchanged, in every split
    plain_objective = fitted(make_objective())
    assert plain_objective.eval_item_transform("image") is None
    plain = plain_objective.item_transform("image")
    plain.set_random_state(seed=7)
    np.testing.assert_array_equal(plain(dict(sample))["image"], sample["image"])


def test_checkpoint_round_trip_rebuilds_tokenizer_and_text_encoder() -> None:
    objective = fitted(make_objective(disease_weight=0.5, num_labels=3))
    encoder = make_encoder()
    buffer = io.BytesIO()
    torch.save(objective.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain data only
    rebuilt = instantiate_spec(module_spec(objective))
    rebuilt.bind(16)
    assert not rebuilt.tokenizer_fitted
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    assert rebuilt.tokenizer_fitted and rebuilt.tokenizer == objective.tokenizer
    for (name, a), (_, b) in zip(
        objective.text_encoder.state_dict().items(), rebuilt.text_encoder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    batch, _ = make_batch(objective, PATIENTS, [True] * 6, REPORTS)
    rebuilt_batch, _ = make_batch(rebuilt, PATIENTS, [True] * 6, REPORTS)
    for key in ("text_ids", "text_mask", "n_sentences"):
        assert torch.equal(batch[key], rebuilt_batch[key])
    with torch.no_grad():
        assert float(rebuilt.forward_batch(encoder, batch)["loss"]) == pytest.approx(
            float(objective.forward_batch(encoder, batch)["loss"]), rel=1e-6
        )


# --------------------------------------------------------------------------------------------------
# the shipped config on the real covid_cxr
# --------------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_config_trains_two_batches_on_covid_cxr(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the config reads ../shared/data relative to the repository")
    monkeypatch.chdir(REPO)
    PretrainCLI(
        args=[
            "fit",
            "--config",
            str(REPO / "configs" / "pretrain" / "gaze_cxr.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--data.batch_size=8",
            "--model.objective.init_args.text_encoder.init_args.embedding_dim=32",
            "--model.objective.init_args.text_encoder.init_args.depth=1",
            "--model.objective.init_args.projection_dim=32",
        ]
    )
    run = tmp_path / "gaze_cxr" / "version_0"
    metrics = pd.read_csv(run / "metrics.csv")
    for stage, suffix in (("train", "_epoch"), ("val", "")):
        row = metrics.dropna(subset=[f"{stage}/loss{suffix}"]).iloc[-1]

        def value(name: str, row: pd.Series = row, stage: str = stage, suffix: str = suffix) -> float:
            return float(row[f"{stage}/{name}{suffix}"])

        # the config: image_report 1.0, gaze 1.0 x (1.0 text->image + 0.0 image->text), disease 0.0
        assert value("loss") == pytest.approx(value("image_report") + value("gaze_text_to_image"), rel=1e-5)
        assert value("gaze") == pytest.approx(value("gaze_text_to_image"), rel=1e-5)
        assert value("image_report") > 0 and value("with_report") > 0
    assert float(metrics["train/with_gaze_epoch"].dropna().iloc[-1]) > 0  # annotation priors arrived
    assert float(metrics["train/gaze_text_to_image_epoch"].dropna().iloc[-1]) > 0
    # the checkpoint's tokenizer is the one fitted on the training split's reports (samples_train.csv)
    checkpoint = load_checkpoint(next((run / "checkpoints").glob("last*.ckpt")))
    saved = BPETokenizer.from_dict(checkpoint["state_dict"]["objective._extra_state"]["tokenizer"])
    train = pd.read_csv(run / "samples_train.csv")["report"].dropna().astype(str)
    expected = BPETokenizer().fit(
        [s for r in train for s in split_sentences(r)], vocab_size=2000, min_frequency=2
    )
    assert saved == expected
    everything = pd.concat(
        [pd.read_csv(run / f"samples_{s}.csv")["report"] for s in ("train", "val", "test")]
    )
    all_splits = [s for r in everything.dropna().astype(str) for s in split_sentences(r)]
    assert saved != BPETokenizer().fit(all_splits, vocab_size=2000, min_frequency=2)
