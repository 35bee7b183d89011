"""Patient-disjoint data splits: made once, saved next to the run, verified every time they are used.

A split assigns every *patient* (never a recording or a sample) to ``train``, ``val`` or ``test``.
Three ways to make one (:class:`SplitConfig`):

- ``random``: shuffle the patients with a seed and cut by fraction (stratified by a per-patient
  label when one is given and every class has enough patients);
- ``fold``: use a fold column of the manifest (PTB-XL's ``strat_fold``: 1-8 train, 9 val, 10 test);
- ``file``: read an existing assignment (CSV ``patient_id,split`` or JSON ``{"train": [...], ...}``).

:func:`verify_disjoint` raises :class:`~medcl.errors.SplitLeakError` if a patient lands in two splits,
whichever way the split was made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medcl.errors import ConfigError, SplitLeakError, shown_ids

__all__ = [
    "SPLITS",
    "SplitConfig",
    "assign_splits",
    "load_splits",
    "save_splits",
    "split_rows",
    "verify_disjoint",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How to split patients.

    Args:
        method: ``"random"``, ``"fold"`` or ``"file"``.
        val_fraction: fraction of patients for validation (``random``).
        test_fraction: fraction of patients for test (``random``).
        seed: seed of the shuffle (``random``).
        stratify_column: a manifest column holding one class per trial; patients are stratified by
            their most frequent value (``random``; ignored when a class has fewer than 2 patients).
        fold_column: manifest column with integer folds (``fold``).
        val_folds: folds that go to validation (``fold``).
        test_folds: folds that go to test (``fold``); every other fold is train.
        file: path of a saved assignment (``file``).
        unassigned: what happens to patients the split file does not name (``file``): ``"drop"`` (left
            out) or ``"train"`` (added to training: e.g. to pretrain on the unlabelled patients that a
            labelled split leaves out, while validation and test stay exactly the file's).
    """

    method: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    stratify_column: str | None = None
    fold_column: str = "fold"
    val_folds: Sequence[int] = (9,)
    test_folds: Sequence[int] = (10,)
    file: str | None = None
    unassigned: str = "drop"

    def __post_init__(self) -> None:
        if self.method not in ("random", "fold", "file"):
            raise ConfigError(f"split method must be 'random', 'fold' or 'file', got {self.method!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"split {name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"split val_fraction + test_fraction must leave patients for training, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if self.method == "file" and not self.file:
            raise ConfigError("split method 'file' needs split.file (a CSV patient_id,split or a JSON)")
        if self.unassigned not in ("drop", "train"):
            raise ConfigError(f"split unassigned must be 'drop' or 'train', got {self.unassigned!r}")
        overlap = set(self.val_folds) & set(self.test_folds)
        if overlap:
            raise ConfigError(f"folds {sorted(overlap)} are both val_folds and test_folds")


def verify_disjoint(assignment: pd.DataFrame) -> None:
    """Raise if any patient has rows in more than one split.

    Args:
        assignment: a frame with columns ``patient_id`` and ``split`` (any number of rows per patient).

    Raises:
        SplitLeakError: saying how many patients leak (their ids in ``patient_ids``; named in the
            message only with ``MEDCL_LOG_IDS=1``).
    """
    missing = {"patient_id", "split"} - set(assignment.columns)
    if missing:
        raise ConfigError(f"a split assignment needs columns patient_id and split; missing {sorted(missing)}")
    unknown = set(assignment["split"].unique()) - set(SPLITS)
    if unknown:
        raise ConfigError(f"unknown split name(s) {sorted(unknown)}; expected {SPLITS}")
    per_patient = assignment.groupby("patient_id", sort=True)["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise SplitLeakError(
            f"{len(leaking)} patient(s) appear in more than one split{shown_ids(leaking.index)}; a "
            "patient's recordings must all be in one split. Split by patient "
            "(medcl.data.splits.assign_splits) or fix the split file.",
            patient_ids=leaking.index,
        )


def _random_assignment(patients: pd.Series, strata: pd.Series | None, config: SplitConfig) -> pd.Series:
    rng = np.random.default_rng(config.seed)
    ordered = np.array(sorted(patients.unique(), key=str), dtype=object)
    groups: list[np.ndarray]
    if strata is not None:
        per_class = strata.reindex(ordered)
        counts = per_class.value_counts()
        groups = (
            [ordered[(per_class == c).to_numpy()] for c in sorted(counts.index, key=str)]
            if (counts >= 2).all()
            else [ordered]
        )
    else:
        groups = [ordered]
    split = pd.Series("train", index=pd.Index(ordered, name="patient_id"), dtype=object)
    for group in groups:
        shuffled = group[rng.permutation(len(group))]
        n_test = round(config.test_fraction * len(shuffled))
        n_val = round(config.val_fraction * len(shuffled))
        split.loc[shuffled[:n_test]] = "test"
        split.loc[shuffled[n_test : n_test + n_val]] = "val"
    return split


def _fold_assignment(trials: pd.DataFrame, config: SplitConfig) -> pd.Series:
    if config.fold_column not in trials.columns:
        raise ConfigError(
            f"split method 'fold' needs a {config.fold_column!r} column in the manifest; it has "
            f"{list(trials.columns)}"
        )
    folds = trials[config.fold_column]
    if folds.isna().any():
        raise ConfigError(f"{int(folds.isna().sum())} manifest rows have no {config.fold_column!r} value")
    row_split = np.where(
        folds.isin(config.test_folds), "test", np.where(folds.isin(config.val_folds), "val", "train")
    )
    rows = pd.DataFrame({"patient_id": trials["patient_id"].to_numpy(), "split": row_split})
    verify_disjoint(rows)  # a patient whose recordings sit in different folds is a leak
    return rows.drop_duplicates("patient_id").set_index("patient_id")["split"]


def _normalized(assignment: pd.Series) -> pd.Series:
    """One canonical form: str index named ``patient_id``, str values named ``split``, sorted."""
    index = pd.Index(assignment.index.astype(str), name="patient_id")
    return pd.Series(assignment.astype(str).to_numpy(), index=index, name="split").sort_index()


def load_splits(path: str | Path) -> pd.Series:
    """Read a saved assignment: CSV ``patient_id,split`` or JSON ``{"train": [ids], "val": [...], ...}``.

    Returns:
        a Series indexed by ``patient_id`` (str) with the split name.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file {path} does not exist")
    if path.suffix.lower() == ".json":
        with path.open() as handle:
            content = json.load(handle)
        if not isinstance(content, dict) or not set(content) <= set(SPLITS):
            raise ConfigError(
                f"{path}: a JSON split file must map 'train'/'val'/'test' to lists of patient ids"
            )
        rows = [(str(p), name) for name, ids in content.items() for p in ids]
        frame = pd.DataFrame(rows, columns=["patient_id", "split"])
    else:
        frame = pd.read_csv(path, dtype={"patient_id": str})
    verify_disjoint(frame)
    return _normalized(frame.drop_duplicates("patient_id").set_index("patient_id")["split"])


def save_splits(assignment: pd.Series, path: str | Path) -> None:
    """Write an assignment (Series patient_id → split) as CSV ``patient_id,split``, sorted by patient."""
    frame = assignment.rename("split").rename_axis("patient_id").reset_index()
    frame.sort_values("patient_id", key=lambda s: s.astype(str)).to_csv(path, index=False)


def assign_splits(trials: pd.DataFrame, config: SplitConfig) -> pd.Series:
    """Assign every patient of a manifest to a split.

    Args:
        trials: the manifest, one row per trial, with at least ``patient_id``.
        config: how to split.

    Returns:
        a Series indexed by ``patient_id`` (str) with values in :data:`SPLITS`; patients absent from a
        split file are left out (their rows are not used), or put in training with
        ``unassigned="train"``.
    """
    patients = trials["patient_id"].astype(str)
    if config.method == "random":
        strata = None
        if config.stratify_column is not None:
            if config.stratify_column not in trials.columns:
                raise ConfigError(f"stratify_column {config.stratify_column!r} is not a manifest column")
            strata = (
                trials.assign(patient_id=patients)
                .groupby("patient_id")[config.stratify_column]
                .agg(lambda s: s.astype(str).value_counts().index[0])
            )
        assignment = _random_assignment(patients, strata, config)
    elif config.method == "fold":
        assignment = _fold_assignment(trials.assign(patient_id=patients), config)
    else:
        if config.file is None:  # also checked in SplitConfig.__post_init__
            raise ConfigError("split method 'file' needs split.file")
        assignment = load_splits(config.file)
        assignment = assignment[assignment.index.isin(set(patients))]
        if config.unassigned == "train":
            others = sorted(set(patients) - set(assignment.index))
            assignment = pd.concat(
                [assignment, pd.Series("train", index=pd.Index(others, name="patient_id"))]
            )
    assignment = _normalized(assignment)
    verify_disjoint(assignment.reset_index())
    return assignment


def split_rows(table: pd.DataFrame, assignment: pd.Series, split: str) -> pd.DataFrame:
    """The rows of ``table`` (trials or samples, with ``patient_id``) whose patient is in ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    mapped = table["patient_id"].astype(str).map(assignment)
    return table[(mapped == split).to_numpy()]
