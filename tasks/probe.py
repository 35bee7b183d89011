"""The scikit-learn linear probe: logistic regression on frozen, standardised embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medcl.data import contract
from medcl.data.dataset import collate_skipping
from medcl.errors import ConfigError
from tasks.metrics import classification_metrics

__all__ = ["LogisticProbe", "extract_embeddings"]


@torch.no_grad()
def extract_embeddings(
    encoder: nn.Module, dataset: Dataset, input_key: str, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` of every sample of ``dataset`` (in eval mode) and their labels.

    Returns:
        ``(embeddings, labels)``; labels are ``(N,)`` class indices or ``(N, K)`` multi-hot.
    """
    encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skipping)
    embeddings, labels = [], []
    for batch in loader:
        if input_key not in batch:
            continue
        embeddings.append(encoder(batch[input_key]).float().numpy())
        labels.append(batch[contract.LABEL].numpy())
    if not embeddings:
        raise ConfigError("no sample could be embedded")
    return np.concatenate(embeddings), np.concatenate(labels)


class LogisticProbe:
    """Logistic regression on standardised embeddings.

    Multi-class: one multinomial model. Multi-label: one binary model per class (a class that is always
    or never present in the training set gets that constant probability).

    Args:
        task: ``"multiclass"`` or ``"multilabel"``.
        num_classes: ``K``.
        C: inverse L2 regularisation strength.
        max_iter: solver iterations.
    """

    def __init__(self, task: str, num_classes: int, C: float = 1.0, max_iter: int = 2000) -> None:
        if task not in ("multiclass", "multilabel"):
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.task = task
        self.num_classes = num_classes
        self.C = C
        self.max_iter = max_iter
        self.scaler = StandardScaler()
        self.models: list[Any] = []

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> LogisticProbe:
        """Fit on ``embeddings`` ``(N, D)`` and ``labels`` ``(N,)`` or ``(N, K)``."""
        x = self.scaler.fit_transform(embeddings)
        if self.task == "multiclass":
            present = np.unique(labels)
            if len(present) < 2:
                self.models = [("constant", int(present[0]))]
            else:
                self.models = [LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, labels)]
        else:
            self.models = []
            for k in range(self.num_classes):
                column = labels[:, k]
                if column.min() == column.max():
                    self.models.append(("constant", float(column[0])))
                else:
                    self.models.append(LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, column))
        return self

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)``."""
        if not self.models:
            raise ConfigError("fit the probe first")
        x = self.scaler.transform(embeddings)
        n = len(x)
        if self.task == "multiclass":
            model = self.models[0]
            out = np.zeros((n, self.num_classes))
            if isinstance(model, tuple):
                out[:, model[1]] = 1.0
            else:
                out[:, model.classes_] = model.predict_proba(x)
            return out
        columns = []
        for model in self.models:
            columns.append(np.full(n, model[1]) if isinstance(model, tuple) else model.predict_proba(x)[:, 1])
        return np.stack(columns, axis=1)

    def score(self, embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """:func:`~tasks.metrics.classification_metrics` of the probe's predictions."""
        return classification_metrics(self.predict_proba(embeddings), labels, self.task)
