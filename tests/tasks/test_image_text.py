"""Zero-shot and retrieval evaluation (tasks.image_text): metrics against slow references and exact
chance values, the towers rebuilt from a checkpoint, and the evaluation's plumbing on real X-rays."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medcl.configurable import module_spec
from medcl.errors import ConfigError
from medcl.objectives import GazeAlignment
from modalities.xray.encoders import XrayResNet
from modalities.xray.text import split_sentences
from tasks.image_text import (
    ImageTextModel,
    chance_retrieval,
    evaluate_image_text,
    per_class_auroc,
    retrieval_metrics,
    zero_shot_scores,
)

REPORTS = [
    "Bilateral patchy opacities in the lower lobes. No pleural effusion.",
    "The heart size is normal. Lungs are clear.",
    "Right lower lobe consolidation. Small left pleural effusion.",
    "Diffuse ground glass opacities. Patient intubated.",
]


def slow_retrieval(queries, gallery, q_groups, g_groups, k):
    """P@k and R@k by explicit loops over queries and sorted lists."""
    precision, recall = [], []
    for q, group in zip(queries, q_groups, strict=True):
        sims = [(float(np.dot(q, g)), j) for j, g in enumerate(gallery)]
        # descending similarity, ties by gallery position
        ranked = [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))][:k]
        hits = [g_groups[j] == group for j in ranked]
        precision.append(sum(hits) / k)
        recall.append(float(any(hits)))
    return float(np.mean(precision)), float(np.mean(recall))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_retrieval_matches_a_slow_loop(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    gallery_groups = list(rng.integers(0, 6, size=20))
    groups_present = sorted(set(gallery_groups))
    query_groups = [groups_present[i % len(groups_present)] for i in range(13)]
    queries = rng.standard_normal((13, 4))
    gallery = rng.standard_normal((20, 4))
    got = retrieval_metrics(queries, gallery, query_groups, gallery_groups, ks=(k,))
    p, r = slow_retrieval(queries, gallery, query_groups, gallery_groups, k)
    assert got[f"P@{k}"] == pytest.approx(p)
    assert got[f"R@{k}"] == pytest.approx(r)
    assert got["queries"] == 13


def test_retrieval_by_hand() -> None:
    # two queries, three gallery items of patients a, b, b
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    gallery = np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    # query 0 ranks items 2, 1, 0; query 1 ranks items 0, 1, 2
    got = retrieval_metrics(queries, gallery, ["a", "b"], ["a", "b", "b"], ks=(1, 2))
    # query 0 (a): top-1 is item 2 (b) -> miss; top-2 items 2, 1 (b, b) -> miss
    # query 1 (b): top-1 is item 0 (a) -> miss; top-2 items 0, 1 (a, b) -> one hit
    assert got["P@1"] == 0.0 and got["R@1"] == 0.0
    assert got["P@2"] == pytest.approx((0 + 0.5) / 2)
    assert got["R@2"] == pytest.approx(0.5)


def test_retrieval_refuses_a_query_without_a_correct_item() -> None:
    with pytest.raises(ConfigError, match="at least one item of its own group"):
        retrieval_metrics(np.eye(2), np.eye(2), ["a", "z"], ["a", "b"])
    with pytest.raises(ConfigError, match="N groups"):
        retrieval_metrics(np.eye(2), np.eye(2), ["a"], ["a", "b"])


def test_chance_is_the_average_over_every_ranking() -> None:
    """Exact: the mean of P@k / R@k over all 5! orderings of the gallery equals the closed form."""
    gallery_groups = ["a", "a", "b", "c", "c"]
    query_groups = ["a", "b", "c", "c"]
    query = np.array([[1.0, 0.0]])
    totals: dict[str, float] = {"P@1": 0.0, "R@1": 0.0, "P@3": 0.0, "R@3": 0.0}
    permutations = list(itertools.permutations(range(5)))
    for rank_of in permutations:
        # item j at angle 0.2 * rank_of[j]: a smaller angle is more similar to the query (1, 0)
        angles = 0.2 * np.asarray(rank_of)
        gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        got = retrieval_metrics(np.repeat(query, 4, axis=0), gallery, query_groups, gallery_groups, ks=(1, 3))
        for key in totals:
            totals[key] += got[key] / len(permutations)
    chance = chance_retrieval(query_groups, gallery_groups, ks=(1, 3))
    for key, value in totals.items():
        assert chance[key] == pytest.approx(value, abs=1e-12), key
    # and by hand for k = 1: m / G = (2 + 1 + 2 + 2) / 4 / 5
    assert chance["P@1"] == pytest.approx(7 / 20)
    assert chance["R@3"] == pytest.approx(
        np.mean([1 - math.comb(5 - m, 3) / math.comb(5, 3) for m in (2, 1, 2, 2)])
    )


def test_zero_shot_scores_and_per_class_auroc() -> None:
    rng = np.random.default_rng(0)
    images = F.normalize(torch.randn(30, 6), dim=-1).numpy()
    positive = F.normalize(torch.randn(3, 6), dim=-1).numpy()
    negative = F.normalize(torch.randn(3, 6), dim=-1).numpy()
    scores = zero_shot_scores(images, positive, negative)
    for i in range(30):
        for k in range(3):
            expected = float(images[i] @ positive[k]) - float(images[i] @ negative[k])
            assert scores[i, k] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(zero_shot_scores(images, positive), images @ positive.T, atol=1e-6)
    targets = (rng.random((30, 3)) > 0.5).astype(int)
    targets[:, 2] = 1  # no negatives: undefined
    aurocs = per_class_auroc(scores, targets)
    assert aurocs[0] == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))
    assert aurocs[1] == pytest.approx(roc_auc_score(targets[:, 1], scores[:, 1]))
    assert math.isnan(aurocs[2])
    with pytest.raises(ConfigError, match="both be"):
        per_class_auroc(scores, targets[:, :2])


# --------------------------------------------------------------------------------------------------
# the towers, rebuilt from a checkpoint
# --------------------------------------------------------------------------------------------------
def tiny_towers() -> tuple[XrayResNet, GazeAlignment]:
    torch.manual_seed(0)
    encoder = XrayResNet(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 16)).eval()
    objective = GazeAlignment(
        text_encoder={
            "class_path": "modalities.xray.text_encoder.TransformerTextEncoder",
            "init_args": {
                "vocab_size": 300,
                "embedding_dim": 16,
                "depth": 1,
                "num_heads": 2,
                "max_length": 16,
            },
        },
        tokenizer={"class_path": "modalities.xray.text.BPETokenizer", "init_args": {"lowercase": True}},
        sentence_splitter="modalities.xray.text.split_sentences",
        projection_dim=8,
        max_sentences=4,
        max_length=12,
        tokenizer_min_frequency=1,
        gather_distributed=False,
    )
    objective.bind(16)
    objective.fit_tokenizer(REPORTS)
    return encoder, objective.eval()


def save_pretrain_checkpoint(path: Path, encoder: XrayResNet, objective: GazeAlignment) -> Path:
    """What PretrainModule writes: encoder.* and objective.* weights, and the specs under "medcl"."""
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
    torch.save(
        {
            "state_dict": state,
            "medcl": {"encoder": module_spec(encoder), "objective": module_spec(objective)},
        },
        path,
    )
    return path


def test_towers_from_a_checkpoint_embed_as_the_trained_objective(tmp_path: Path) -> None:
    encoder, objective = tiny_towers()
    model = ImageTextModel.from_checkpoint(
        save_pretrain_checkpoint(tmp_path / "last.ckpt", encoder, objective)
    )
    images = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        expected_images = F.normalize(objective.image_head(encoder(images)), dim=-1).numpy()
    np.testing.assert_allclose(model.embed_images(images.numpy(), batch_size=2), expected_images, atol=1e-6)

    # a report is the mean of its projected sentences, each tokenised as the item transform does
    texts = [*REPORTS, None, "   "]
    got = model.embed_texts(texts, batch_size=3)
    transform = objective.item_transform("image")
    with torch.no_grad():
        for text, row in zip(texts, got, strict=True):
            sentences = [s for s in split_sentences(text or "") if s.strip()][:4]
            if not sentences:
                assert np.isnan(row).all()
                continue
            ids, mask = objective.tokenizer.encode_batch(sentences, 12)
            projected = objective.text_head(
                objective.text_encoder(torch.as_tensor(ids), torch.as_tensor(mask))
            )
            np.testing.assert_allclose(row, F.normalize(projected.mean(0), dim=0).numpy(), atol=1e-5)
            made = transform({"image": np.zeros((1, 32, 32), np.float32), "report": text})
            assert int(made["n_sentences"]) == len(sentences)


def test_prompt_embeddings_average_the_prompts(tmp_path: Path) -> None:
    encoder, objective = tiny_towers()
    model = ImageTextModel(encoder, objective)
    a, b = model.embed_texts(["bilateral opacities", "lungs are clear"])
    mean = model.prompt_embeddings(["bilateral opacities", "lungs are clear"])
    np.testing.assert_allclose(mean, (a + b) / np.linalg.norm(a + b), atol=1e-6)
    with pytest.raises(ConfigError, match="without any sentence"):
        model.prompt_embeddings(["clear lungs", ""])


def test_an_unfitted_objective_or_another_checkpoint_is_refused(tmp_path: Path) -> None:
    encoder, objective = tiny_towers()
    objective._fitted = False
    with pytest.raises(ConfigError, match="not fitted"):
        ImageTextModel(encoder, objective)
    path = tmp_path / "encoder_only.ckpt"
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            "medcl": {"encoder": module_spec(encoder)},
        },
        path,
    )
    with pytest.raises(ConfigError, match="does not record its objective"):
        ImageTextModel.from_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# the evaluation's plumbing, with towers whose answers are known
# --------------------------------------------------------------------------------------------------
class KeyedTowers:
    """Images carry their patient number in pixel (0, 0, 0), reports name it ("patient 3 ..."): both
    embed to the same one-hot vector, so retrieval is perfect; prompts embed to a finding's axis."""

    def __init__(self, n: int) -> None:
        self.n = n

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return np.eye(self.n)[images[:, 0, 0, 0].astype(int)]

    def embed_texts(self, texts: list[str | None]) -> np.ndarray:
        out = np.full((len(texts), self.n), np.nan)
        for i, text in enumerate(texts):
            if text:
                out[i] = np.eye(self.n)[int(text.split()[1])]
        return out

    def prompt_embeddings(self, prompts: list[str]) -> np.ndarray:
        # finding k's prompt points at patient k's axis: images of patient k score highest for finding k
        return np.eye(self.n)[int(prompts[0].split()[1])]


class TableAdapter:
    input_key = "image"
    class_names = ("A", "B")

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        image = np.zeros((1, 4, 4), np.float32)
        image[0, 0, 0] = int(row["patient_id"])
        sample: dict[str, Any] = {"image": image, "patient_id": row["patient_id"]}
        if isinstance(row["labels"], str):
            sample["label"] = np.asarray(
                [n in row["labels"].split("|") for n in self.class_names], np.float32
            )
        if isinstance(row["report"], str):
            sample["report"] = row["report"]
        return sample


def test_evaluation_counts_and_scores_on_known_towers() -> None:
    samples = pd.DataFrame(
        {
            "patient_id": ["0", "0", "1", "2", "3"],
            "labels": ["A", "A", "B", None, "A|B"],
            "report": ["patient 0 x", "patient 0 y", "patient 1", None, "patient 3"],
        }
    )
    results = evaluate_image_text(
        KeyedTowers(4), TableAdapter(), samples, prompts={"A": ["patient 0"], "B": ["patient 1"]}
    )
    # retrieval: identical one-hot codes per patient; image of patient 2 has no report in the gallery
    assert results.image_to_report["P@1"] == 1.0 and results.image_to_report["queries"] == 4
    assert results.report_to_image["P@1"] == 1.0 and results.report_to_image["queries"] == 4
    assert results.images == 5 and results.images_with_report == 4 and results.patients == 4
    # zero-shot on the 4 labelled images: A's score is 1 for patient 0's images, 0 for 1 and 3
    assert results.positives == [3, 2]
    assert results.zero_shot_auroc[0] == pytest.approx(roc_auc_score([1, 1, 0, 1], [1, 1, 0, 0]))
    assert results.zero_shot_auroc[1] == pytest.approx(roc_auc_score([0, 0, 1, 1], [0, 0, 1, 0]))
    # chance: report->image gallery of 5 images, patient 0 owns 2 of them
    assert results.chance_report_to_image["P@1"] == pytest.approx(np.mean([2 / 5, 2 / 5, 1 / 5, 1 / 5]))
    with pytest.raises(ConfigError, match="exactly the adapter's findings"):
        evaluate_image_text(KeyedTowers(4), TableAdapter(), samples, prompts={"A": ["patient 0"]})
