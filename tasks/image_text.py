"""Evaluating an image-report model: zero-shot classification from text prompts and image↔report retrieval.

A model pretrained with :class:`medcl.objectives.GazeAlignment` embeds images (``image_head(encoder(x))``)
and reports (the mean of the report's projected sentence embeddings, exactly as in training) into one
space. :class:`ImageTextModel` rebuilds both towers from a pretraining checkpoint (``weights_only=True``;
the encoder and objective specs that the checkpoint records; the fitted tokenizer is in the objective's
state) and returns L2-normalised embeddings.

- **Zero-shot classification** (:func:`zero_shot_scores`): a finding's score for an image is the cosine
  similarity between the image and the mean embedding of the finding's prompts, minus the same for its
  negative prompts when given (CheXzero's positive-vs-negative prompt contrast); scored by AUROC per
  finding (:func:`per_class_auroc`). No label is used to fit anything.
- **Retrieval** (:func:`retrieval_metrics`), *patient-aware*: a retrieved item is correct when it belongs
  to the query's patient (a patient's other images and reports describe the same case). ``P@k`` is the
  mean fraction of the top ``k`` that is correct; ``R@k`` is the fraction of queries with at least one
  correct item in the top ``k``. Both directions (image → report, report → image) are reported with the
  closed-form values of a random ranking (:func:`chance_retrieval`), so a number can be read against
  chance on the same gallery.

:func:`evaluate_image_text` runs both on the samples of one split (the test patients of the pretraining
run's saved split, for an honest number).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medcl.checkpoints import encoder_from_checkpoint, load_checkpoint
from medcl.configurable import instantiate_spec
from medcl.errors import ConfigError
from tasks.metrics import per_class_auroc

__all__ = [
    "ImageTextModel",
    "ImageTextResults",
    "chance_retrieval",
    "evaluate_image_text",
    "per_class_auroc",
    "retrieval_metrics",
    "zero_shot_scores",
]

OBJECTIVE_PREFIX = "objective."


class ImageTextModel:
    """The image and text towers of an image-report model.

    Args:
        encoder: the image encoder (``forward(x) → (B, D)``).
        objective: a bound :class:`~medcl.objectives.GazeAlignment` with a fitted tokenizer (its
            ``image_head`` projects images, its text encoder and ``text_head`` embed sentences).
    """

    def __init__(self, encoder: nn.Module, objective: Any) -> None:
        for name in ("project", "tokenize_reports", "report_embeddings"):
            if not callable(getattr(objective, name, None)):
                raise ConfigError(f"{type(objective).__name__} is not an image-report objective (no {name})")
        if not getattr(objective, "tokenizer_fitted", False):
            raise ConfigError("the objective's tokenizer is not fitted: evaluate a trained checkpoint")
        self.encoder = encoder.eval()
        self.objective = objective.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ImageTextModel:
        """Rebuild encoder and objective from a :class:`~medcl.training.PretrainModule` checkpoint of an
        image-report objective (e.g. ``configs/pretrain/gaze_cxr.yaml``'s ``last.ckpt``)."""
        checkpoint = load_checkpoint(path)
        record = checkpoint.get("medcl") or {}
        spec = record.get("objective")
        if spec is None:
            raise ConfigError(
                f"{path} does not record its objective; it is not an image-report pretraining run"
            )
        encoder = encoder_from_checkpoint(checkpoint, source=str(path))
        objective = instantiate_spec(spec)
        if not callable(getattr(objective, "bind", None)):
            raise ConfigError(
                f"{path}: its objective {spec.get('class_path')} is not an image-report objective"
            )
        objective.bind(int(encoder.embedding_dim))
        state = {
            k[len(OBJECTIVE_PREFIX) :]: v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith(OBJECTIVE_PREFIX)
        }
        missing, unexpected = objective.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{path}: the objective's weights do not fit {type(objective).__name__} "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
            )
        return cls(encoder, objective)

    @torch.no_grad()
    def embed_images(self, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """L2-normalised image embeddings ``(N, P)`` of preprocessed images ``(N, C, H, W)``."""
        images = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if images.dim() != 4:
            raise ConfigError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        out = [
            F.normalize(self.objective.project(self.encoder(images[i : i + batch_size])).float(), dim=-1)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.objective.projection_dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str | None], batch_size: int = 64) -> np.ndarray:
        """L2-normalised report embeddings ``(N, P)`` (split into sentences, tokenised, embedded and
        averaged as in training); a text without any sentence gives a row of NaN."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask, n_sentences = self.objective.tokenize_reports(list(texts[i : i + batch_size]))
            reports, _, _ = self.objective.report_embeddings(ids, mask, n_sentences)
            reports = F.normalize(reports.float(), dim=-1)
            reports[n_sentences == 0] = float("nan")
            out.append(reports)
        return torch.cat(out).numpy() if out else np.zeros((0, self.objective.projection_dim), np.float32)

    def prompt_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """The L2-normalised mean embedding ``(P,)`` of a set of prompts."""
        if not prompts:
            raise ConfigError("a prompt set needs at least one prompt")
        embedded = self.embed_texts(prompts)
        if np.isnan(embedded).any():
            empty = [p for p, row in zip(prompts, embedded, strict=True) if np.isnan(row).any()]
            raise ConfigError(f"prompt(s) without any sentence: {empty}")
        mean = embedded.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


# ----------------------------------------------------------------------------------------------------
# pure metrics
# ----------------------------------------------------------------------------------------------------
def zero_shot_scores(
    image_embeddings: np.ndarray, positive: np.ndarray, negative: np.ndarray | None = None
) -> np.ndarray:
    """Zero-shot scores ``(N, K)``: ``cos(image, positive_k)`` − ``cos(image, negative_k)`` (when negative
    prompt embeddings are given).

    Args:
        image_embeddings: ``(N, P)``, L2-normalised.
        positive: ``(K, P)``, one L2-normalised prompt embedding per finding.
        negative: ``(K, P)`` or None.
    """
    image_embeddings = np.asarray(image_embeddings, dtype=np.float64)
    scores = image_embeddings @ np.asarray(positive, dtype=np.float64).T
    if negative is not None:
        scores = scores - image_embeddings @ np.asarray(negative, dtype=np.float64).T
    return scores


def _check_groups(embeddings: np.ndarray, groups: Sequence[Any], what: str) -> np.ndarray:
    groups = np.asarray([str(g) for g in groups])
    if embeddings.ndim != 2 or len(groups) != len(embeddings):
        raise ConfigError(
            f"{what}: need embeddings (N, P) and N groups, got {embeddings.shape} and {len(groups)}"
        )
    return groups


def retrieval_metrics(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_groups: Sequence[Any],
    gallery_groups: Sequence[Any],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Patient-aware retrieval of the gallery by cosine similarity (embeddings L2-normalised).

    A gallery item is correct for a query when their groups (patient ids) are equal. Ranking is by
    descending similarity, ties broken by gallery order (stable).

    Returns:
        ``P@k`` (mean over queries of the correct fraction of the top ``k``) and ``R@k`` (fraction of
        queries with a correct item in the top ``k``) for every ``k``, and ``queries`` (their number).

    Raises:
        ConfigError: shapes disagree, or a query has no correct item in the gallery.
    """
    queries, gallery = np.asarray(queries, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    q_groups = _check_groups(queries, query_groups, "queries")
    g_groups = _check_groups(gallery, gallery_groups, "gallery")
    correct = q_groups[:, None] == g_groups[None, :]  # (Q, G)
    if not correct.any(axis=1).all():
        raise ConfigError("every query needs at least one item of its own group in the gallery")
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    ranked = np.take_along_axis(correct, order, axis=1)
    out: dict[str, float] = {}
    for k in ks:
        k = int(k)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        top = ranked[:, :k]
        out[f"P@{k}"] = float(top.sum(axis=1).mean() / k)
        out[f"R@{k}"] = float(top.any(axis=1).mean())
    out["queries"] = float(len(queries))
    return out


def chance_retrieval(
    query_groups: Sequence[Any], gallery_groups: Sequence[Any], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """What :func:`retrieval_metrics` gives on average for a uniformly random ranking: with ``G`` gallery
    items of which ``m`` are correct for a query, ``E[P@k] = m / G`` and ``E[R@k] = 1 − C(G − m, k) /
    C(G, k)``, averaged over the queries."""
    g_groups = np.asarray([str(g) for g in gallery_groups])
    size = len(g_groups)
    counts = pd.Series(g_groups).value_counts()
    m = np.asarray([int(counts.get(str(g), 0)) for g in query_groups])
    if (m == 0).any():
        raise ConfigError("every query needs at least one item of its own group in the gallery")
    out: dict[str, float] = {}
    for k in ks:
        k = min(int(k), size)
        out[f"P@{k}"] = float(np.mean(m / size))
        out[f"R@{k}"] = float(np.mean([1.0 - math.comb(size - mi, k) / math.comb(size, k) for mi in m]))
    return out


# ----------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------
@dataclass
class ImageTextResults:
    """Zero-shot and retrieval results on one split.

    Attributes:
        class_names: the findings.
        zero_shot_auroc: AUROC per finding (NaN where the split lacks positives or negatives).
        positives: test images with each finding.
        image_to_report, report_to_image: :func:`retrieval_metrics`.
        chance_image_to_report, chance_report_to_image: :func:`chance_retrieval` on the same galleries.
        images, images_with_report, patients: counts.
    """

    class_names: list[str]
    zero_shot_auroc: list[float]
    positives: list[int]
    image_to_report: dict[str, float]
    report_to_image: dict[str, float]
    chance_image_to_report: dict[str, float]
    chance_report_to_image: dict[str, float]
    images: int
    images_with_report: int
    patients: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_zero_shot_auroc(self) -> float:
        """Mean AUROC over the findings that could be scored (NaN if none)."""
        defined = [a for a in self.zero_shot_auroc if not math.isnan(a)]
        return float(np.mean(defined)) if defined else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "zero_shot_auroc": dict(zip(self.class_names, self.zero_shot_auroc, strict=True)),
            "mean_zero_shot_auroc": self.mean_zero_shot_auroc,
            "positives": dict(zip(self.class_names, self.positives, strict=True)),
            "image_to_report": self.image_to_report,
            "report_to_image": self.report_to_image,
            "chance_image_to_report": self.chance_image_to_report,
            "chance_report_to_image": self.chance_report_to_image,
            "images": self.images,
            "images_with_report": self.images_with_report,
            "patients": self.patients,
            **self.extra,
        }


def evaluate_image_text(
    model: ImageTextModel,
    adapter: Any,
    samples: pd.DataFrame,
    prompts: Mapping[str, Sequence[str]],
    negative_prompts: Mapping[str, Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5),
) -> ImageTextResults:
    """Zero-shot classification and retrieval on ``samples`` (rows of an adapter's sample table, e.g. the
    test split's ``datamodule.samples["test"]``).

    Args:
        model: the image and text towers.
        adapter: gives each row's ``image``, ``label`` (multi-hot over ``adapter.class_names``) and
            ``report`` (``adapter.load_sample``); its class names must be the keys of ``prompts``.
        samples: the rows to evaluate.
        prompts: finding → positive prompts (e.g. ``{"COVID-19": ["covid-19 pneumonia"]}``).
        negative_prompts: finding → negative prompts (optional, per finding).
        ks: the ``k`` of ``P@k`` / ``R@k``.

    Images without a label take part in retrieval only; images without a report are queries of
    image → report but not gallery items (and vice versa they cannot be queries of report → image); a
    query whose patient has no item in the gallery is left out of that direction.
    """
    class_names = list(adapter.class_names or [])
    if sorted(class_names) != sorted(prompts):
        raise ConfigError(
            f"prompts must name exactly the adapter's findings {class_names}, got {sorted(prompts)}"
        )
    if not len(samples):
        raise ConfigError("no samples to evaluate")
    images, labels, reports, patients = [], [], [], []
    for _, row in samples.iterrows():
        sample = adapter.load_sample(row)
        images.append(sample[adapter.input_key])
        labels.append(sample.get("label"))
        reports.append(sample.get("report"))
        patients.append(str(sample["patient_id"]))
    image_emb = model.embed_images(np.stack(images))
    report_emb = model.embed_texts(reports)
    has_report = ~np.isnan(report_emb).any(axis=1)

    positive = np.stack([model.prompt_embeddings(prompts[name]) for name in class_names])
    negative = None
    if negative_prompts:
        unknown = set(negative_prompts) - set(class_names)
        if unknown:
            raise ConfigError(f"negative prompts for unknown findings {sorted(unknown)}")
        negative = np.stack(
            [
                model.prompt_embeddings(negative_prompts[name])
                if name in negative_prompts
                else np.zeros(positive.shape[1])
                for name in class_names
            ]
        )
    labelled = np.asarray([label is not None for label in labels])
    if labelled.any():
        targets = np.stack([label for label in labels if label is not None])
        scores = zero_shot_scores(image_emb[labelled], positive, negative)
        aurocs = per_class_auroc(scores, targets)
        positives = [int(v) for v in targets.sum(axis=0)]
    else:
        aurocs, positives = [float("nan")] * len(class_names), [0] * len(class_names)

    patients_arr = np.asarray(patients)
    gallery_patients = set(patients_arr[has_report])
    i2t_queries = np.asarray([p in gallery_patients for p in patients_arr])
    if not has_report.any():
        raise ConfigError("no sample has a report: retrieval needs reports")
    i2t = retrieval_metrics(
        image_emb[i2t_queries],
        report_emb[has_report],
        patients_arr[i2t_queries],
        patients_arr[has_report],
        ks,
    )
    t2i = retrieval_metrics(report_emb[has_report], image_emb, patients_arr[has_report], patients_arr, ks)
    return ImageTextResults(
        class_names=class_names,
        zero_shot_auroc=aurocs,
        positives=positives,
        image_to_report=i2t,
        report_to_image=t2i,
        chance_image_to_report=chance_retrieval(patients_arr[i2t_queries], patients_arr[has_report], ks),
        chance_report_to_image=chance_retrieval(patients_arr[has_report], patients_arr, ks),
        images=len(images),
        images_with_report=int(has_report.sum()),
        patients=len(set(patients)),
    )
