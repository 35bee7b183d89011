"""Label fractions are drawn by patient: whole patients, nested, stratified, seeded."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medcl.errors import ConfigError
from modalities.signals import SignalAdapter
from tasks.fractions import label_fraction_patients, patient_order, select_label_fraction


def table(n_patients: int = 200, minority_every: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "MI" if p % minority_every == 0 else "NORM"
        for t in range(int(rng.integers(1, 4))):
            rows += [{"patient_id": f"p{p}", "trial_id": f"p{p}t{t}", "labels": label}] * 9
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fraction_takes_whole_patients(fraction: float, seed: int) -> None:
    samples = table()
    chosen = select_label_fraction(samples, fraction, seed)
    patients = set(chosen["patient_id"])
    assert len(patients) == max(1, math.ceil(fraction * 200))
    # every sample of a chosen patient is kept; none of the others
    expected = samples[samples["patient_id"].isin(patients)]
    assert len(chosen) == len(expected)
    assert chosen.index.equals(expected.index)


def test_fractions_are_nested_and_seeded() -> None:
    samples = table()
    for seed in (0, 1):
        one, ten, hundred = (set(label_fraction_patients(samples, f, seed)) for f in (0.01, 0.1, 1.0))
        assert one <= ten <= hundred and len(hundred) == 200
    assert label_fraction_patients(samples, 0.1, 3) == label_fraction_patients(samples, 0.1, 3)
    assert label_fraction_patients(samples, 0.1, 3) != label_fraction_patients(samples, 0.1, 4)


def test_order_covers_every_class_first_then_keeps_proportions() -> None:
    samples = table(minority_every=5)  # 20 % MI patients
    label = samples.drop_duplicates("patient_id").set_index("patient_id")["labels"]
    for seed in range(5):
        order = patient_order(samples, seed)
        assert set(label[order[:2]]) == {"MI", "NORM"}
        assert (label[order[:50]] == "MI").sum() == pytest.approx(10, abs=1)


def test_real_norm_vs_mi_fractions(bundled_ptbxl: object) -> None:
    adapter = SignalAdapter(labels="norm_vs_mi", window_s=2.0, stride_s=1.0)
    indexed = adapter.index()
    samples = adapter.make_samples(indexed.trials)
    samples = samples[samples["labels"] != ""]
    n = samples["patient_id"].nunique()
    chosen = select_label_fraction(samples, 0.01, seed=0)
    assert chosen["patient_id"].nunique() == math.ceil(0.01 * n)
    assert set(chosen["labels"]) == {"NORM", "MI"}  # both classes, even at 1 %


def test_invalid_fraction() -> None:
    with pytest.raises(ConfigError):
        label_fraction_patients(table(), 0.0, 0)
    with pytest.raises(ConfigError):
        label_fraction_patients(table(), 1.5, 0)
