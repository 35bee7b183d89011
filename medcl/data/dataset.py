"""A map-style dataset over a sample table, with seeded views and the bad-sample policy.

:class:`ManifestDataset` turns one row of a sample table (made by an adapter from its manifest) into a
training item: the adapter loads and preprocesses the sample, then, for contrastive training, the
adapter's random view transform is applied ``n_views`` times. The randomness of view ``v`` of sample
``i`` in epoch ``e`` comes only from ``(seed, e, i, v)``, so it is the same with any number of workers
and after a resume.

Bad samples: ``on_error="raise"`` (default) re-raises the adapter's :class:`~medcl.errors.DataError`
(which names the file and the problem) with the sample's position; ``on_error="skip"`` returns a
:class:`SkippedSample` (row, file, reason) in place of the item. :func:`collate_skipping` drops those from
the batch, counts them (``n_skipped``) and passes their records on (``skipped``), so that the process
that trains — not a DataLoader worker — sees every file and reason. There a :class:`SkipTracker` logs each
bad sample once, counts skips per epoch and over the run, writes them to a CSV report and stops the run
with :class:`~medcl.errors.TooManyBadSamplesError` once more than ``max_skip_fraction`` of a split failed.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from medcl.data import contract
from medcl.errors import ConfigError, DataError, TooManyBadSamplesError

__all__ = [
    "SKIPPED",
    "ManifestDataset",
    "SampleLoader",
    "SkipTracker",
    "SkippedSample",
    "collate_skipping",
    "view_seed",
]

#: batch key of the :class:`SkippedSample` records of a batch (present when an item of it was skipped)
SKIPPED = "skipped"

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


class SkippedSample(NamedTuple):
    """What :class:`ManifestDataset` returns in ``on_error="skip"`` mode for a sample that failed to load.

    Attributes:
        index: the sample's row in the sample table.
        trial: the integer code of its trial (recording), as in the batch's ``trial``.
        path: the file (as the error named it; None if it named none).
        reason: what is wrong with it (and, in brackets, what to do), as the error said.
        error: the error's type name (``"CorruptFileError"``, ...).
        dataset_size: rows of the sample table (what the skipped fraction is relative to).
    """

    index: int
    trial: int
    path: str | None
    reason: str
    error: str
    dataset_size: int


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

    def __getitem__(self, key: ItemKey) -> dict[str, Any] | SkippedSample:
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
            # Logged (once per sample) by the SkipTracker of the training process, not here in a worker.
            log.debug("skipping sample %d: %s", index, error)
            reason = f"{error.reason} ({error.hint})" if error.hint else error.reason
            trial = int(self.trial_codes[index])
            return SkippedSample(
                int(index), trial, error.path, reason, type(error).__name__, len(self.samples)
            )
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


def collate_skipping(items: list[dict[str, Any] | SkippedSample | None]) -> dict[str, Any]:
    """``default_collate`` over the items that loaded; ``n_skipped`` counts those that did not (a
    :class:`SkippedSample` or ``None``), and ``skipped`` lists the :class:`SkippedSample` records when there
    are any.

    A batch in which every item failed has no tensors, only ``n_skipped`` (and ``skipped``).
    """
    kept = [item for item in items if isinstance(item, dict)]
    records = [item for item in items if isinstance(item, SkippedSample)]
    batch: dict[str, Any] = default_collate(kept) if kept else {}
    batch[contract.N_SKIPPED] = len(items) - len(kept)
    if records:
        batch[SKIPPED] = records
    return batch


class SkipTracker:
    """The bad-sample ledger of one training process (``on_error="skip"``).

    Fed every batch (:meth:`update`), it

    - logs each bad file once per split, with its reason (the file path is the only identifier it
      prints; its other samples and later failures are counted, not logged again);
    - counts skips per split, in the current epoch and over the run (every occurrence: a bad sample drawn
      in three epochs counts three times);
    - appends the first failure of each sample to a CSV report (``split, sample, path, error, reason,
      epoch, step``), flushed at once, so nothing is lost if the run dies;
    - raises :class:`~medcl.errors.TooManyBadSamplesError`, naming the first bad files, their reasons and
      the report, once more than ``max_fraction`` of a split is known to be bad: when its distinct failed
      samples are more than ``max_fraction`` of its samples (certain), or earlier, when the recordings
      (trials) drawn so far hold so many bad ones that a bad-recording rate of ``max_fraction`` would
      give that many with probability below 0.1 % (exact binomial test). The test counts recordings, not
      samples, because the samples of one recording fail together (and the grouped sampler draws them
      together); a run whose data went bad stops within a few batches, while one bad file early in a
      run does not stop it.

    Args:
        max_fraction: the fraction of a split allowed to fail, in ``[0, 1]``.
        report_path: the CSV report (created at the first skip); None keeps no report.
        alpha: the significance level of the early test.
    """

    REPORT_COLUMNS = ("split", "sample", "path", "error", "reason", "epoch", "step")
    SHOWN = 5

    def __init__(
        self, max_fraction: float = 0.05, report_path: str | Path | None = None, alpha: float = 1e-3
    ) -> None:
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ConfigError(f"max_skip_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction = float(max_fraction)
        self.report_path = None if report_path is None else Path(report_path)
        self.alpha = float(alpha)
        #: skips (occurrences) per split over the run, and in the current epoch of each split
        self.total: dict[str, int] = {}
        self.in_epoch: dict[str, int] = {}
        #: samples drawn (loaded or skipped) per split over the run
        self.seen: dict[str, int] = {}
        #: first failure of every bad sample, by (split, sample row), in the order they were seen
        self.first: dict[tuple[str, int], SkippedSample] = {}
        self._epoch: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._seen_trials: dict[str, set[int]] = {}
        self._bad_trials: dict[str, set[int]] = {}
        self._logged: set[tuple[str, str | None, str]] = set()

    def update(
        self, batch: dict[str, Any], split: str, epoch: int = 0, step: int = 0, count: bool = True
    ) -> int:
        """Account for one batch of ``split`` (made by :func:`collate_skipping`); returns its skips.

        Args:
            batch: the batch (``n_skipped``, ``trial`` codes of the loaded samples and, when any failed,
                ``skipped`` records).
            split: ``"train"``, ``"val"``, ...
            epoch, step: where the run is (for the report and the per-epoch count).
            count: False to log and record the skipped samples without counting them (e.g. Lightning's
                sanity-check pass over validation batches, which the first validation epoch repeats).

        Raises:
            TooManyBadSamplesError: more than ``max_fraction`` of the split is bad (see the class).
        """
        records: list[SkippedSample] = list(batch.get(SKIPPED, ()))
        n = int(batch.get(contract.N_SKIPPED, len(records)))
        trials = batch.get(contract.TRIAL)
        loaded = [] if trials is None else [int(t) for t in torch.as_tensor(trials).reshape(-1).tolist()]
        if self._epoch.get(split) != epoch:
            self._epoch[split] = epoch
            self.in_epoch[split] = 0
        if count:
            self.total[split] = self.total.get(split, 0) + n
            self.in_epoch[split] = self.in_epoch.get(split, 0) + n
            self.seen[split] = self.seen.get(split, 0) + n + len(loaded)
        seen_trials = self._seen_trials.setdefault(split, set())
        bad_trials = self._bad_trials.setdefault(split, set())
        seen_trials.update(loaded)
        new = []
        for record in records:
            seen_trials.add(int(record.trial))
            bad_trials.add(int(record.trial))
            self._sizes[split] = max(self._sizes.get(split, 0), int(record.dataset_size))
            key = (split, int(record.index))
            if key in self.first:
                continue
            self.first[key] = record
            new.append(record)
            if (split, record.path, record.reason) not in self._logged:
                self._logged.add((split, record.path, record.reason))
                log.warning(
                    "skipping %s: %s [%s sample %d, %s; this file's other samples and later failures are "
                    "counted, not logged again]",
                    record.path,
                    record.reason,
                    split,
                    record.index,
                    record.error,
                )
        if new and self.report_path is not None:
            self._append(split, new, epoch, step)
        if records:
            self._check(split)
        return n

    def distinct(self, split: str) -> int:
        """Distinct samples of ``split`` that failed so far."""
        return sum(1 for s, _ in self.first if s == split)

    def files(self, split: str | None = None) -> list[tuple[str | None, str]]:
        """``(path, reason)`` of every bad file (of ``split``, or all), once each, in order of discovery."""
        seen: dict[tuple[str | None, str], None] = {}
        for (s, _), record in self.first.items():
            if split is None or s == split:
                seen[(record.path, record.reason)] = None
        return list(seen)

    def _append(self, split: str, records: list[SkippedSample], epoch: int, step: int) -> None:
        assert self.report_path is not None
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.report_path.exists()
        with self.report_path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(self.REPORT_COLUMNS)
            for r in records:
                writer.writerow([split, r.index, r.path or "", r.error, r.reason, epoch, step])

    def _check(self, split: str) -> None:
        failed, size = self.distinct(split), self._sizes.get(split, 0)
        bad, drawn = len(self._bad_trials.get(split, ())), len(self._seen_trials.get(split, ()))
        if size and failed > self.max_fraction * size:
            verdict = f"{failed} of the {size} samples of the {split} split failed to load"
        elif drawn and _binomial_tail(bad, drawn, self.max_fraction) < self.alpha:
            verdict = (
                f"{bad} of the {drawn} recordings drawn so far from the {split} split failed to load "
                f"({100.0 * bad / drawn:.3g} %: so many would happen by chance with probability < "
                f"{self.alpha:g} if only max_skip_fraction of them were bad)"
            )
        else:
            return
        files = self.files(split)
        shown = [f"  {path}: {reason}" for path, reason in files[: self.SHOWN]]
        if len(files) > self.SHOWN:
            shown.append(f"  ... and {len(files) - self.SHOWN} more")
        where = (
            f"every skipped sample, its file and reason are in {self.report_path}"
            if self.report_path is not None
            else "no skip report is kept (give the data module a run_dir or the trainer a logger)"
        )
        raise TooManyBadSamplesError(
            f"{verdict}, more than max_skip_fraction={self.max_fraction:g} allows; the bad files:\n"
            + "\n".join(shown)
            + f"\n{where}; repair or remove those files (re-index the data to quarantine them) or raise "
            "max_skip_fraction"
        )

    def summary(self) -> str:
        """One line: skips per split over the run and distinct bad samples."""
        if not self.total and not self.first:
            return "no sample was skipped"
        parts = [
            f"{name} {n} skip(s) of {self.distinct(name)} sample(s)" for name, n in self.total.items() if n
        ]
        where = f" (see {self.report_path})" if self.report_path is not None else ""
        return "skipped samples: " + ", ".join(parts) + where

    def state_dict(self) -> dict[str, Any]:
        """Counts, recordings drawn and first failures, to carry the ledger across a resume."""
        return {
            "total": dict(self.total),
            "in_epoch": dict(self.in_epoch),
            "seen": dict(self.seen),
            "epoch": dict(self._epoch),
            "seen_trials": {k: sorted(v) for k, v in self._seen_trials.items()},
            "first": [[split, *record] for (split, _), record in self.first.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (bad files are not logged again)."""
        self.first, self._sizes, self._bad_trials, self._logged = {}, {}, {}, set()
        self.total = {str(k): int(v) for k, v in state.get("total", {}).items()}
        self.in_epoch = {str(k): int(v) for k, v in state.get("in_epoch", {}).items()}
        self.seen = {str(k): int(v) for k, v in state.get("seen", {}).items()}
        self._epoch = {str(k): int(v) for k, v in state.get("epoch", {}).items()}
        self._seen_trials = {str(k): {int(t) for t in v} for k, v in state.get("seen_trials", {}).items()}
        for split, *fields in state.get("first", []):
            record = SkippedSample(*fields)
            split = str(split)
            self.first[(split, int(record.index))] = record
            self._sizes[split] = max(self._sizes.get(split, 0), int(record.dataset_size))
            self._bad_trials.setdefault(split, set()).add(int(record.trial))
            self._seen_trials.setdefault(split, set()).add(int(record.trial))
            self._logged.add((split, record.path, record.reason))


def _binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``: how likely ``k`` or more of ``n`` are bad at a rate ``p``."""
    from scipy.stats import binom

    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n, p))
