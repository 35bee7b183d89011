"""Label fractions drawn by patient.

Label-efficiency experiments train on a fraction of the *labelled patients* (never a fraction of samples,
which would put one patient's recordings on both sides of "labelled"/"unlabelled" and inflate results;
COMET's reference code subsamples samples, we subsample patients and say so).

:func:`patient_order` ranks the training patients for one seed; a fraction ``f`` keeps the first
``ceil(f · n)`` of them, so for one seed the 1 % patients are among the 10 % patients, which are among the
100 %. The order is stratified by each patient's label: the first patients cover every class once (in
random class order), later ones keep the class proportions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medcl.errors import ConfigError

__all__ = ["label_fraction_patients", "patient_order", "select_label_fraction"]


def _patient_strata(samples: pd.DataFrame, label_column: str) -> pd.Series:
    """Each patient's most frequent label string (ties: alphabetical), indexed by patient id."""
    frame = samples.assign(
        patient_id=samples["patient_id"].astype(str), _label=samples[label_column].astype(str)
    )
    counts = frame.groupby(["patient_id", "_label"]).size().reset_index(name="n")
    counts = counts.sort_values(["patient_id", "n", "_label"], ascending=[True, False, True])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["_label"]


def patient_order(samples: pd.DataFrame, seed: int, label_column: str = "labels") -> list[str]:
    """All patients of ``samples`` in the order in which label fractions take them (see module doc).

    Args:
        samples: the training sample table (``patient_id`` and ``label_column``).
        seed: seed of this draw.
        label_column: the label of each sample (its most frequent value stratifies the patient).
    """
    rng = np.random.default_rng(seed)
    strata = _patient_strata(samples, label_column)
    classes = sorted(strata.unique())
    pools = {
        c: list(rng.permutation(np.array(sorted(strata.index[strata == c]), dtype=object))) for c in classes
    }
    share = {c: len(pools[c]) / len(strata) for c in classes}
    order: list[str] = []
    taken = dict.fromkeys(classes, 0)
    for c in rng.permutation(np.array(classes, dtype=object)):  # every class once first
        order.append(pools[c].pop(0))
        taken[c] += 1
    while len(order) < len(strata):
        position = len(order) + 1
        candidates = [c for c in classes if pools[c]]
        c = max(candidates, key=lambda k: (share[k] * position - taken[k], -classes.index(k)))
        order.append(pools[c].pop(0))
        taken[c] += 1
    return [str(p) for p in order]


def label_fraction_patients(
    samples: pd.DataFrame, fraction: float, seed: int, label_column: str = "labels"
) -> list[str]:
    """The ``ceil(fraction · n_patients)`` patients that a label fraction keeps (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label_fraction must be in (0, 1], got {fraction}")
    order = patient_order(samples, seed, label_column)
    return order[: max(1, math.ceil(fraction * len(order) - 1e-9))]


def select_label_fraction(
    samples: pd.DataFrame, fraction: float, seed: int, label_column: str = "labels"
) -> pd.DataFrame:
    """The rows of ``samples`` whose patient is in the label fraction: whole patients only."""
    if fraction == 1.0:
        return samples
    keep = set(label_fraction_patients(samples, fraction, seed, label_column))
    return samples[samples["patient_id"].astype(str).isin(keep).to_numpy()]
