"""Classification metrics against closed forms and scikit-learn computed directly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medcl.errors import ConfigError
from tasks.metrics import classification_metrics


def test_perfect_and_reversed_binary() -> None:
    targets = np.array([0, 0, 1, 1, 1])
    perfect = np.stack([1 - targets, targets], axis=1).astype(float)
    scores = classification_metrics(perfect, targets, "multiclass")
    assert scores == {
        "auroc": 1.0,
        "auprc": 1.0,
        "f1_macro": 1.0,
        "accuracy": 1.0,
        "n": 5,
        "classes_scored": 1,
    }
    reversed_ = classification_metrics(perfect[:, ::-1], targets, "multiclass")
    assert reversed_["auroc"] == 0.0 and reversed_["accuracy"] == 0.0


def test_multiclass_macro_is_mean_of_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, 3, size=60)
    scores = classification_metrics(probabilities, targets, "multiclass")
    expected = np.mean([roc_auc_score(targets == k, probabilities[:, k]) for k in range(3)])
    assert scores["auroc"] == pytest.approx(expected)
    assert scores["accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == targets))


def test_multilabel_skips_classes_without_positives() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=(40, 3))
    targets = (rng.uniform(size=(40, 3)) > 0.5).astype(int)
    targets[:, 2] = 0  # class 2 never present: no AUROC for it
    scores = classification_metrics(probabilities, targets, "multilabel")
    assert scores["classes_scored"] == 2
    assert scores["auroc"] == pytest.approx(
        np.mean([roc_auc_score(targets[:, k], probabilities[:, k]) for k in (0, 1)])
    )
    assert scores["auprc"] == pytest.approx(
        np.mean([average_precision_score(targets[:, k], probabilities[:, k]) for k in (0, 1)])
    )
    assert scores["accuracy"] == pytest.approx(np.mean((probabilities >= 0.5) == targets))
    per_class = scores["auroc_per_class"]
    assert len(per_class) == 3 and np.isnan(per_class[2])
    for k in (0, 1):
        assert per_class[k] == pytest.approx(roc_auc_score(targets[:, k], probabilities[:, k]))
    assert "auroc_per_class" not in classification_metrics(probabilities[:, :2], targets[:, 0], "multiclass")


def test_shape_errors() -> None:
    with pytest.raises(ConfigError):
        classification_metrics(np.zeros((4, 2)), np.zeros((4, 2)), "multiclass")
    with pytest.raises(ConfigError):
        classification_metrics(np.zeros((4, 2)), np.zeros(4), "multilabel")
    with pytest.raises(ConfigError):
        classification_metrics(np.zeros((4, 2)), np.zeros(4), "regression")
