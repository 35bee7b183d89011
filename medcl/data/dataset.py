"""A map-style dataset over a sample table, with seeded views and the bad-sample policy.

:class:`ManifestDataset` turns one row of a sample table (made by an adapter from its manifest) into a
training item: the adapter loads and preprocesses the sample, then, for contrastive training, the
adapter's random view transform is applied ``n_views`` times. The randomness of view ``v`` of sample
``i`` in epoch ``e`` comes only from ``(seed, e, i, v)``, so it is the same with any number of workers
and after a resume.

Bad samples: ``on_error="raise"`` (default) re-raises the adapter's :class:`~medcl.errors.DataError`
(which names the file and the problem) with the sample's position; ``on_error="skip"`` logs the file
and reason of every failing sample, and the item is dropped by :func:`collate_skipping`, which counts
the drops per batch so the training module can report them and stop past a configured fraction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from medcl.data import contract
from medcl.errors import ConfigError, DataError

__all__ = ["ManifestDataset", "SampleLoader", "collate_skipping", "view_seed"]

log = logging.getLogger(__name__)

ItemKey = int | tuple[int, int]


class SampleLoader(Protocol):
    """What a dataset needs from an adapter."""

    input_key: str

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        """The preprocessed sample dict for one row of the sample table (DESIGN.md §1.1)."""
        ...

    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A random transform (MONAI ``Randomizable``) that makes one contrastive view of a sample."""
        ...


def view_seed(seed: int, epoch: int, index: int, view: int) -> int:
    """The seed of view ``view`` of sample ``index`` in ``epoch``: a 32-bit hash of the four numbers."""
    return int(np.random.SeedSequence([seed, epoch, index, view]).generate_state(1)[0])


class ManifestDataset(Dataset):
    """Items for pretraining or embedding extraction, one per row of ``samples``.

    Args:
        samples: the sample table; needs ``patient_id``, ``trial_id``, ``sample_index`` and whatever the
            adapter's ``load_sample`` reads. Integer codes for patients and trials are made here.
        adapter: loads and preprocesses one row; makes views.
        n_views: 0 returns the preprocessed input under ``adapter.input_key``; ``V >= 1`` returns
            ``views`` of shape ``(V, C, ...)`` made by the adapter's view transform.
        seed: base seed of the views.
        on_error: ``"raise"`` or ``"skip"``.
        label_names: class names; when given, ``label`` (a ``|``-joined string of class names or a
            single name in the row, see ``label_mode``) becomes a tensor.
        label_mode: ``"multilabel"`` (multi-hot float vector ``(K,)``) or ``"multiclass"`` (long index).
        label_column: the sample table's column holding the labels.
        item_transform: instead of views, a MONAI ``Randomizable`` dictionary transform (from a
            :class:`~medcl.objectives.base.BatchObjective`) applied to the preprocessed sample, seeded
            from ``(seed, epoch, index)``; the arrays it adds under its ``output_keys`` join the item.

    Items are dicts: ``patient``, ``trial`` (long codes), ``index`` (row position), ``sample_index``,
    ``views`` or the input (or the item transform's arrays), and ``label``/``has_label`` when labels
    are configured.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        adapter: SampleLoader,
        n_views: int = 2,
        seed: int = 0,
        on_error: str = "raise",
        label_names: Sequence[str] | None = None,
        label_mode: str = "multilabel",
        label_column: str = "labels",
        item_transform: Any = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if label_names is not None and label_mode not in ("multilabel", "multiclass"):
            raise ConfigError(f"label_mode must be 'multilabel' or 'multiclass', got {label_mode!r}")
        missing = {"patient_id", "trial_id", "sample_index"} - set(samples.columns)
        if missing:
            raise ConfigError(f"the sample table lacks columns {sorted(missing)}")
        self.samples = samples.reset_index(drop=True)
        self.adapter = adapter
        self.n_views = int(n_views)
        self.seed = int(seed)
        self.on_error = on_error
        self.label_names = list(label_names) if label_names is not None else None
        self.label_mode = label_mode
        self.label_column = label_column
        self.patient_codes = pd.factorize(self.samples["patient_id"].astype(str), sort=True)[0].astype(
            np.int64
        )
        self.trial_codes = pd.factorize(self.samples["trial_id"].astype(str), sort=True)[0].astype(np.int64)
        if item_transform is not None and not hasattr(item_transform, "output_keys"):
            name = type(item_transform).__name__
            raise ConfigError(f"{name} has no output_keys: which arrays does it add to the item?")
        self.item_transform = item_transform
        self._views = adapter.view_transform() if self.n_views > 0 and item_transform is None else None
        self._labels = self._encode_labels(self.label_names) if self.label_names is not None else None

    def _encode_labels(self, label_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Label tensors of every row: ``(N, K)`` float or ``(N,)`` long, and ``(N,)`` has-label flags."""
        position = {name: i for i, name in enumerate(label_names)}
        column = self.samples.get(self.label_column, None)
        n, k = len(self.samples), len(label_names)
        if self.label_mode == "multilabel":
            values = np.zeros((n, k), dtype=np.float32)
        else:
            values = np.full(n, -1, dtype=np.int64)
        has_label = np.zeros(n, dtype=bool)
        if column is None:
            return values, has_label
        for row, text in enumerate(column.to_numpy()):
            if not isinstance(text, str) or text in ("", "nan"):
                if self.label_mode == "multilabel" and isinstance(text, str):
                    has_label[row] = True  # an empty label set is a valid multi-label target (no class)
                continue
            names = text.split("|")
            unknown = [name for name in names if name not in position]
            if unknown:
                raise ConfigError(
                    f"label(s) {unknown} are not among the configured classes {self.label_names}"
                )
            if self.label_mode == "multilabel":
                values[row, [position[name] for name in names]] = 1.0
            else:
                if len(names) != 1:
                    raise ConfigError(f"multiclass labels need one class per sample, got {text!r}")
                values[row] = position[names[0]]
            has_label[row] = True
        return values, has_label

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: ItemKey) -> dict[str, Any] | None:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        row = self.samples.iloc[index]
        try:
            sample = self.adapter.load_sample(row)
            item: dict[str, Any] = {
                contract.PATIENT: int(self.patient_codes[index]),
                contract.TRIAL: int(self.trial_codes[index]),
                contract.INDEX: int(index),
                contract.SAMPLE_INDEX: int(row["sample_index"]),
            }
            if self.item_transform is not None:
                self.item_transform.set_random_state(seed=view_seed(self.seed, epoch, index, 0))
                made = self.item_transform(dict(sample))
                for key in self.item_transform.output_keys:
                    value = made[key]
                    item[key] = (
                        torch.as_tensor(np.ascontiguousarray(value))
                        if isinstance(value, np.ndarray)
                        else torch.as_tensor(value)
                    )
            elif self._views is not None:
                views = []
                for v in range(self.n_views):
                    self._views.set_random_state(seed=view_seed(self.seed, epoch, index, v))
                    view = self._views(dict(sample))[self.adapter.input_key]
                    views.append(torch.as_tensor(np.ascontiguousarray(view), dtype=torch.float32))
                item[contract.VIEWS] = torch.stack(views)
            else:
                item[self.adapter.input_key] = torch.as_tensor(
                    np.ascontiguousarray(sample[self.adapter.input_key]), dtype=torch.float32
                )
        except (DataError, RuntimeError) as raised:
            # MONAI's Compose wraps errors of its transforms in RuntimeError: find the DataError inside.
            error = _data_error_in(raised)
            if error is None:
                raise
            if self.on_error == "raise":
                raise type(error)(
                    error.path, f"{error.reason} [sample {index} of the sample table]", error.hint
                ) from error
            log.warning("skipping sample %d: %s", index, error)
            return None
        if self._labels is not None:
            values, has_label = self._labels
            item[contract.LABEL] = torch.as_tensor(values[index])
            item[contract.HAS_LABEL] = bool(has_label[index])
        return item


def _data_error_in(error: BaseException) -> DataError | None:
    """``error`` itself or the first :class:`DataError` among its causes, else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DataError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def collate_skipping(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """``default_collate`` over the items that loaded; ``n_skipped`` counts those that did not.

    A batch in which every item failed has no tensors, only ``n_skipped``.
    """
    kept = [item for item in items if item is not None]
    batch: dict[str, Any] = default_collate(kept) if kept else {}
    batch[contract.N_SKIPPED] = len(items) - len(kept)
    return batch
