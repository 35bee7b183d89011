"""Classification metrics: AUROC, AUPRC, macro-F1 and accuracy, for multi-class and multi-label targets.

Computed with scikit-learn on all predictions of an evaluation set at once (not averaged over batches).
Macro averages are taken over the classes that can be scored: a class without positives (or without
negatives) in the evaluation set has no AUROC/AUPRC and is left out, and the number of classes scored
is reported. Two-class problems report the AUROC/AUPRC of the second class (the "positive" one, e.g.
MI in NORM vs MI).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from medcl.errors import ConfigError

__all__ = ["classification_metrics", "per_class_auroc"]


def _one_hot(targets: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(targets), n_classes), dtype=np.int64)
    out[np.arange(len(targets)), targets] = 1
    return out


def per_class_auroc(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """AUROC of each column of ``scores`` ``(N, K)`` against multi-hot ``targets`` ``(N, K)``; NaN for a
    class without positives or without negatives."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ConfigError(f"scores and targets must both be (N, K), got {scores.shape} and {targets.shape}")
    out = []
    for k in range(scores.shape[1]):
        positives = int(targets[:, k].sum())
        defined = 0 < positives < len(targets)
        out.append(float(roc_auc_score(targets[:, k], scores[:, k])) if defined else float("nan"))
    return out


def classification_metrics(probabilities: np.ndarray, targets: np.ndarray, task: str) -> dict[str, Any]:
    """Scores of predictions against targets.

    Args:
        probabilities: ``(N, K)``: softmax probabilities (``multiclass``) or per-class sigmoid
            probabilities (``multilabel``).
        targets: ``(N,)`` class indices (``multiclass``) or ``(N, K)`` multi-hot (``multilabel``).
        task: ``"multiclass"`` or ``"multilabel"``.

    Returns:
        ``auroc``, ``auprc`` (macro over scorable classes; NaN when none), ``f1_macro`` (argmax for
        multi-class, threshold 0.5 for multi-label), ``accuracy`` (multi-class: fraction correct;
        multi-label: fraction of correct (sample, class) decisions), ``n`` and ``classes_scored``; for
        multi-label targets also ``auroc_per_class`` (a list of ``K``, NaN where a class cannot be scored).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.ndim != 2:
        raise ConfigError(f"probabilities must be (N, K), got shape {probabilities.shape}")
    n, k = probabilities.shape
    if task == "multiclass":
        if targets.shape != (n,):
            raise ConfigError(f"multiclass targets must be (N,) = ({n},), got {targets.shape}")
        truth = _one_hot(targets.astype(np.int64), k)
        predicted = probabilities.argmax(axis=1)
        f1 = f1_score(targets, predicted, average="macro", labels=np.arange(k), zero_division=0)
        accuracy = accuracy_score(targets, predicted)
        scored = [1] if k == 2 else list(range(k))
    elif task == "multilabel":
        if targets.shape != (n, k):
            raise ConfigError(f"multilabel targets must be (N, K) = ({n}, {k}), got {targets.shape}")
        truth = targets.astype(np.int64)
        decided = (probabilities >= 0.5).astype(np.int64)
        f1 = f1_score(truth, decided, average="macro", zero_division=0)
        accuracy = float((decided == truth).mean()) if n else float("nan")
        scored = list(range(k))
    else:
        raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    aurocs, auprcs = [], []
    for c in scored:
        positives = int(truth[:, c].sum())
        if 0 < positives < n:
            aurocs.append(roc_auc_score(truth[:, c], probabilities[:, c]))
            auprcs.append(average_precision_score(truth[:, c], probabilities[:, c]))
    out: dict[str, Any] = {
        "auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "auprc": float(np.mean(auprcs)) if auprcs else float("nan"),
        "f1_macro": float(f1),
        "accuracy": float(accuracy),
        "n": int(n),
        "classes_scored": len(aurocs),
    }
    if task == "multilabel":
        out["auroc_per_class"] = per_class_auroc(probabilities, truth)
    return out
