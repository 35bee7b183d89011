"""A batch sampler that puts same-trial and same-patient samples together, reshuffled every epoch.

Hierarchical objectives need positives *inside* each batch: several samples of one trial (trial-level
positives) and several trials of one patient (patient-level positives). :class:`GroupedBatchSampler`
builds every epoch from scratch, from ``(seed, epoch)`` alone:

1. the samples of each trial are shuffled and cut into *chunks* of ``samples_per_trial``;
2. each patient's chunks are interleaved round-robin over its trials (in a random trial order) and cut
   into *groups* of ``trials_per_patient`` chunks, so a group holds up to ``trials_per_patient``
   different trials of one patient;
3. groups are shuffled and concatenated, and the sequence is cut into batches of ``batch_size``.

Under distributed training every rank computes the same plan, patients are dealt to ranks (shuffled,
each to the least-loaded rank, so a patient is never on two ranks in one epoch) and every rank yields
the same number of batches (required: the loss gathers across ranks at every step).

It yields lists of ``(index, epoch)`` keys; :class:`medcl.data.ManifestDataset` uses the epoch to seed
the sample's random views, so augmentations depend only on (seed, epoch, index): the same on any
number of workers, and after a resume.

Resuming in the middle of an epoch: Lightning restores the loops' counters from a checkpoint but, for a
plain ``DataLoader``, starts the epoch's batches again from the first one (so a run resumed after
batch ``k`` trains on batches ``0, 1, ...`` of that epoch under the batch indices ``k, k+1, ...``).
It saves and restores the position of a loader that has ``state_dict``/``load_state_dict``:
:class:`ResumableDataLoader` is that loader. It counts the batches it has handed to the training loop
(not those its workers have prefetched) and, on resume, makes the sampler start the saved epoch at the
next batch, so the sequence of ``(epoch, batch, keys)`` continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from medcl import dist
from medcl.errors import ConfigError

__all__ = ["GroupedBatchSampler", "ResumableDataLoader"]


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense integer codes 0..K-1 for an array of ids."""
    _, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64)


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of grouped samples, reshuffled every epoch.

    Args:
        patients: patient code of every sample, shape ``(N,)`` (any hashable ints).
        trials: trial code of every sample, shape ``(N,)``; a trial belongs to one patient.
        batch_size: samples per batch (per rank).
        samples_per_trial: samples of one trial that are kept together (``m``); 1 disables trial
            grouping.
        trials_per_patient: chunks of one patient kept together (``k``); 1 disables patient grouping.
        seed: seed of every shuffle; the plan of epoch ``e`` depends only on ``(seed, e)``.
        shuffle: if False, the plan of epoch 0 is used at every epoch (for validation).
        drop_last: drop the last, incomplete batch (single process). With several ranks every rank
            always yields the same number of full batches.
        num_replicas: number of ranks (default: the distributed world size).
        rank: this rank (default: the distributed rank).
    """

    def __init__(
        self,
        patients: np.ndarray,
        trials: np.ndarray,
        batch_size: int,
        samples_per_trial: int = 2,
        trials_per_patient: int = 2,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        patients = np.asarray(patients)
        trials = np.asarray(trials)
        if patients.shape != trials.shape or patients.ndim != 1:
            raise ConfigError(
                f"patients and trials must be 1-D and equally long, got {patients.shape} and {trials.shape}"
            )
        for name, value in (
            ("batch_size", batch_size),
            ("samples_per_trial", samples_per_trial),
            ("trials_per_patient", trials_per_patient),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.num_replicas = dist.world_size() if num_replicas is None else int(num_replicas)
        self.rank = dist.rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ConfigError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.patients = _codes(patients)
        self.trials = _codes(trials)
        trial_patients = np.unique(np.stack([self.trials, self.patients]), axis=1)
        if len(np.unique(trial_patients[0])) != trial_patients.shape[1]:
            raise ConfigError(
                "a trial id belongs to more than one patient; trial ids must be unique per patient"
            )
        self.batch_size = int(batch_size)
        self.samples_per_trial = int(samples_per_trial)
        self.trials_per_patient = int(trials_per_patient)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        #: ``(epoch, first batch)`` of the pass in progress (or last made); set when a pass starts.
        self.current_pass: tuple[int, int] = (0, 0)
        self._resume: tuple[int, int] | None = None
        # Lightning sets the epoch of `dataloader.sampler` and `dataloader.batch_sampler.sampler` only,
        # never of a batch sampler itself: this relay is how the epoch reaches us.
        self.sampler = _EpochRelay(self)
        n = len(self.patients)
        if self.num_replicas == 1:
            self._num_batches = n // self.batch_size if drop_last else -(-n // self.batch_size)
        else:
            # Dealing patients to the least-loaded rank leaves every rank at least n/W - (largest patient).
            largest = int(np.bincount(self.patients).max()) if n else 0
            guaranteed = n // self.num_replicas - largest
            self._num_batches = max(guaranteed, 0) // self.batch_size
        if self._num_batches == 0:
            raise ConfigError(
                f"{n} samples give no full batch of {self.batch_size} per rank on {self.num_replicas} "
                "rank(s); lower batch_size or add data"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan :meth:`__iter__` yields (Lightning calls this every epoch, through
        :attr:`sampler`)."""
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batch: int) -> None:
        """Make the next pass, if it is over ``epoch``, start at batch ``batch`` (0-based) instead of 0.

        Applies once: the pass after that starts at 0 again. A pass over another epoch (e.g. when the
        trainer moved on to the next epoch) ignores it.
        """
        if batch < 0:
            raise ConfigError(f"the batch to resume at must be >= 0, got {batch}")
        self._resume = (int(epoch), int(batch))

    def __len__(self) -> int:
        return self._num_batches

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's sample order for ``epoch`` (before cutting into batches), shape ``(L,)``."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.patients)
        m, k = self.samples_per_trial, self.trials_per_patient
        # 1. shuffle samples within trials; position of each sample inside its trial.
        order = np.lexsort((rng.random(n), self.trials))
        trial_sorted = self.trials[order]
        first = np.r_[0, np.flatnonzero(np.diff(trial_sorted)) + 1]
        sizes = np.diff(np.r_[first, n])
        position = np.arange(n) - np.repeat(first, sizes)
        chunk = position // m
        # 2. interleave each patient's chunks over its trials in a random trial order, then group k chunks.
        trial_rank = rng.permutation(int(self.trials.max()) + 1)[trial_sorted]
        patient_sorted = self.patients[order]
        order2 = np.lexsort((position, trial_rank, chunk, patient_sorted))
        order = order[order2]
        patient_sorted, chunk, trial_rank = patient_sorted[order2], chunk[order2], trial_rank[order2]
        new_chunk = np.r_[
            True, (np.diff(patient_sorted) != 0) | (np.diff(chunk) != 0) | (np.diff(trial_rank) != 0)
        ]
        chunk_id = np.cumsum(new_chunk) - 1
        patient_first_chunk = np.maximum.accumulate(
            np.where(np.r_[True, np.diff(patient_sorted) != 0], chunk_id, 0)
        )
        group_in_patient = (chunk_id - patient_first_chunk) // k
        new_group = np.r_[True, (np.diff(patient_sorted) != 0) | (np.diff(group_in_patient) != 0)]
        group_id = np.cumsum(new_group) - 1
        # 3. deal patients to ranks (single rank: everyone), shuffle groups, concatenate.
        if self.num_replicas > 1:
            counts = np.bincount(self.patients, minlength=int(self.patients.max()) + 1)
            load = np.zeros(self.num_replicas, dtype=np.int64)
            owner = np.empty(len(counts), dtype=np.int64)
            for patient in rng.permutation(len(counts)):
                target = int(np.argmin(load))
                owner[patient] = target
                load[target] += counts[patient]
            mine = owner[patient_sorted] == self.rank
        else:
            mine = np.ones(n, dtype=bool)
        group_rank = rng.permutation(int(group_id.max()) + 1 if n else 0)[group_id]
        within = np.arange(n)
        final = np.lexsort((within, group_rank))
        final = final[mine[final]]
        return order[final]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = 0
        if self._resume is not None:
            if self._resume[0] == self.epoch:
                start = min(self._resume[1], self._num_batches)
            self._resume = None
        self.current_pass = (self.epoch, start)
        epoch = self.epoch if self.shuffle else 0
        order = self.epoch_order(epoch)
        for b in range(start, self._num_batches):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(int(i), epoch) for i in batch]


class _EpochRelay:
    """Stands as ``batch_sampler.sampler`` so that Lightning's per-epoch ``set_epoch`` reaches the
    batch sampler (``lightning.pytorch.loops.utilities._set_sampler_epoch`` looks only there)."""

    def __init__(self, owner: GroupedBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.owner.patients)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`GroupedBatchSampler` that Lightning can checkpoint and resume.

    Lightning calls :meth:`state_dict` when it writes a checkpoint and :meth:`load_state_dict` before
    it iterates again on resume (``FitLoop.setup_data``). The state is ``(epoch, batches_done)``: the
    batches of ``epoch`` already handed to the caller, counted as they leave the loader, so batches
    that worker processes prefetched but nobody consumed are not counted. On resume the sampler starts
    that epoch at batch ``batches_done``; when the trainer goes on to the next epoch instead (the saved
    epoch was complete, or ``limit_train_batches`` ended it early) the next epoch starts at batch 0.

    The underlying iterator is made at the first ``next()``, not at ``iter()``: Lightning calls
    ``iter()`` on resume *before* it sets the sampler's epoch, and worker processes draw their batch
    plan as soon as their iterator exists.

    :attr:`epoch_source`, when set, gives the epoch of every pass when the pass starts, overriding the
    last ``set_epoch``. :class:`~medcl.training.checkpointing.ExactResume` sets it to the trainer's
    ``current_epoch``: Lightning 2.6 calls ``set_epoch(epoch_progress.current.processed)``, which in a
    ``max_steps`` run resumed from an end-of-epoch checkpoint is one ahead of ``current_epoch`` (the run
    would skip one epoch's batch plan and views, and stay one epoch ahead of an uninterrupted run).

    Args:
        dataset: the map-style dataset (keys from the sampler).
        batch_sampler: the grouped batch sampler.
        **kwargs: other ``DataLoader`` arguments (``collate_fn``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, batch_sampler: GroupedBatchSampler, **kwargs: Any) -> None:
        if not isinstance(batch_sampler, GroupedBatchSampler):
            raise ConfigError(
                f"ResumableDataLoader needs a GroupedBatchSampler, got {type(batch_sampler).__name__}"
            )
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._grouped = batch_sampler
        self._epoch = batch_sampler.epoch
        self._batches_done = 0
        #: where each pass gets its epoch from (None: the sampler's last ``set_epoch``)
        self.epoch_source: Callable[[], int] | None = None

    def __iter__(self) -> Iterator[Any]:
        return _CountingIterator(self)

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from, and what the batch plan was made from (plain ints, so the
        checkpoint loads with ``weights_only=True``)."""
        sampler = self._grouped
        return {
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "seed": sampler.seed,
            "num_batches": len(sampler),
            "batch_size": sampler.batch_size,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after the saved position: the next pass over ``epoch`` starts at ``batches_done``.

        If the batch plan cannot be the same (other seed, batch size, number of batches or ranks), a
        warning says so and the epoch starts over from its first batch.
        """
        sampler = self._grouped
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        ours = self.state_dict()
        changed = [
            f"{key} {state_dict[key]} -> {ours[key]}"
            for key in ("seed", "num_batches", "batch_size", "num_replicas")
            if key in state_dict and int(state_dict[key]) != ours[key]
        ]
        if changed:
            rank_zero_warn(
                "the checkpoint's batch plan was made with other data settings ("
                + ", ".join(changed)
                + f"); epoch {epoch} starts over from its first batch instead of batch {done}"
            )
            done = 0
        self._epoch, self._batches_done = epoch, done
        sampler.set_epoch(epoch)
        sampler.resume_at(epoch, done)


class _CountingIterator(Iterator[Any]):
    """Iterates a :class:`ResumableDataLoader` and records its position after every batch."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.inner: Iterator[Any] | None = None
        self.first = True

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        loader = self.loader
        if self.inner is None:
            if loader.epoch_source is not None:
                loader._grouped.set_epoch(loader.epoch_source())
            self.inner = DataLoader.__iter__(loader)
        batch = next(self.inner)
        if self.first:  # the sampler's pass has started by now (indices are drawn before loading)
            self.first = False
            loader._epoch, loader._batches_done = loader._grouped.current_pass
        loader._batches_done += 1
        return batch
