"""What the core expects of a modality adapter (DESIGN.md §1.2).

The core never imports a concrete modality: data modules, objectives and tasks talk to an adapter
through :class:`Adapter`. An adapter bundles, for one modality, the readers, the manifest builder,
preprocessing, contrastive views and a default encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pandas as pd
from torch import nn

__all__ = ["Adapter", "IndexedData"]


@dataclass(frozen=True)
class IndexedData:
    """The result of indexing a dataset.

    Attributes:
        trials: the usable trials, one row per recording/study, with at least ``path``,
            ``patient_id`` and ``trial_id``.
        quarantine: files that cannot be used, columns ``path`` and ``reason``.
        events: optional per-trial events (e.g. annotated heart beats), with ``trial_id``.
        source: a short description of where the data came from (dataset name, root).
    """

    trials: pd.DataFrame
    quarantine: pd.DataFrame
    events: pd.DataFrame | None = None
    source: str = ""

    def summary(self) -> str:
        """One line: how many trials and patients are usable and how many files were quarantined."""
        n_trials = len(self.trials)
        n_patients = self.trials["patient_id"].nunique() if n_trials else 0
        text = f"{n_trials} recordings of {n_patients} patients usable"
        if len(self.quarantine):
            text += f"; {len(self.quarantine)} quarantined"
        return text


@runtime_checkable
class Adapter(Protocol):
    """A modality adapter.

    Attributes:
        input_key: the sample dict key of the main array (``"signal"``, ``"image"``).
        modality: a short name (``"ecg"``, ``"eeg"``, ``"volume"``, ...).
    """

    input_key: str
    modality: str

    @property
    def class_names(self) -> list[str] | None:
        """Names of the label classes, or None when the data has no labels."""
        ...

    @property
    def label_mode(self) -> str:
        """``"multilabel"`` or ``"multiclass"``."""
        ...

    def index(self) -> IndexedData:
        """Build the manifest and validate every file (bad ones are quarantined, never fatal)."""
        ...

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        """The sample table: one row per training sample, with ``patient_id``, ``trial_id``,
        ``sample_index`` and what :meth:`load_sample` needs."""
        ...

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        """Read and preprocess one sample (a dict following DESIGN.md §1.1)."""
        ...

    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fresh random transform (MONAI ``Randomizable``) making one contrastive view of a sample."""
        ...

    def default_encoder(self) -> nn.Module:
        """The modality's default encoder for this adapter's input shape."""
        ...

    def input_spec(self) -> dict[str, Any]:
        """JSON-able description of the model input and the complete preprocessing (for runs and export)."""
        ...
