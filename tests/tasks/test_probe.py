"""The scikit-learn linear probe on embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.checkpoints import load_encoder
from medcl.data import SplitConfig
from medcl.errors import ConfigError
from modalities.signals import SignalAdapter
from tasks import ClassificationDataModule, LogisticProbe, extract_embeddings


def test_separable_classes_score_perfectly() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=120)
    embeddings = rng.normal(size=(120, 8)) + 6.0 * np.eye(3, 8)[labels]
    probe = LogisticProbe("multiclass", 3).fit(embeddings[:80], labels[:80])
    scores = probe.score(embeddings[80:], labels[80:])
    assert scores["auroc"] == 1.0 and scores["accuracy"] == 1.0


def test_multilabel_constant_class_gets_its_constant() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    labels = np.stack([(x[:, 0] > 0).astype(int), np.zeros(50, dtype=int)], axis=1)
    probe = LogisticProbe("multilabel", 2).fit(x, labels)
    probabilities = probe.predict_proba(x)
    assert probabilities.shape == (50, 2) and (probabilities[:, 1] == 0).all()
    assert probe.score(x, labels)["auroc"] > 0.95


def test_probe_on_real_embeddings(pretrained_checkpoint: Path) -> None:
    data = ClassificationDataModule(
        SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0), split=SplitConfig(method="fold")
    )
    data.setup("fit")
    encoder = load_encoder(pretrained_checkpoint)
    train_x, train_y = extract_embeddings(encoder, data.dataset("train"), input_key="signal")
    test_x, test_y = extract_embeddings(encoder, data.dataset("test"), input_key="signal")
    assert train_x.shape == (len(data.samples["train"]), encoder.embedding_dim)
    assert set(np.unique(train_y)) == {0, 1}
    scores = LogisticProbe("multiclass", 2, C=0.1).fit(train_x, train_y).score(test_x, test_y)
    assert scores["n"] == len(data.samples["test"]) and 0.0 <= scores["auroc"] <= 1.0


def test_unfitted_and_bad_task() -> None:
    with pytest.raises(ConfigError):
        LogisticProbe("regression", 2)
    with pytest.raises(ConfigError, match="fit the probe first"):
        LogisticProbe("multiclass", 2).predict_proba(np.zeros((2, 3)))
