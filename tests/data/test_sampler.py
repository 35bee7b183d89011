"""GroupedBatchSampler: positives in every batch, coverage, reshuffling, determinism, rank split."""

from __future__ import annotations

import numpy as np
import pytest

from medcl.data.sampler import GroupedBatchSampler
from medcl.errors import ConfigError


def hierarchical_ids(
    n_patients: int = 12,
    trials_per_patient: tuple[int, int] = (1, 4),
    samples: tuple[int, int] = (3, 12),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Patient and trial ids of a dataset shaped like MIT-BIH/EEG: patients with several trials."""
    rng = np.random.default_rng(seed)
    patients, trials = [], []
    trial_id = 0
    for patient in range(n_patients):
        for _ in range(rng.integers(*trials_per_patient, endpoint=True)):
            n = int(rng.integers(*samples, endpoint=True))
            patients += [patient] * n
            trials += [trial_id] * n
            trial_id += 1
    return np.array(patients), np.array(trials)


def batches_of(sampler: GroupedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    out = []
    for batch in sampler:
        assert all(key_epoch == epoch for _, key_epoch in batch)
        out.append([index for index, _ in batch])
    return out


def test_every_sample_once_per_epoch_without_drop_last() -> None:
    patients, trials = hierarchical_ids()
    sampler = GroupedBatchSampler(patients, trials, batch_size=16, drop_last=False)
    for epoch in range(3):
        flat = [i for batch in batches_of(sampler, epoch) for i in batch]
        assert sorted(flat) == list(range(len(patients)))
    assert len(sampler) == len(batches_of(sampler, 0))


def test_drop_last_yields_only_full_batches_and_no_repeats() -> None:
    patients, trials = hierarchical_ids()
    sampler = GroupedBatchSampler(patients, trials, batch_size=16, drop_last=True)
    batches = batches_of(sampler, 5)
    assert len(batches) == len(patients) // 16 == len(sampler)
    assert all(len(b) == 16 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("m,k", [(2, 2), (4, 2), (3, 1)])
def test_batches_hold_same_trial_and_same_patient_positives(m: int, k: int) -> None:
    patients, trials = hierarchical_ids(n_patients=20, seed=1)
    sampler = GroupedBatchSampler(patients, trials, batch_size=24, samples_per_trial=m, trials_per_patient=k)
    with_trial_positive = with_patient_positive = total = 0
    for epoch in range(4):
        for batch in batches_of(sampler, epoch):
            b = np.array(batch)
            same_trial = trials[b][:, None] == trials[b][None, :]
            same_patient = patients[b][:, None] == patients[b][None, :]
            np.fill_diagonal(same_trial, False)
            np.fill_diagonal(same_patient, False)
            assert same_trial.any() and same_patient.any(), "a batch without positives"
            with_trial_positive += int(same_trial.any(axis=1).sum())
            with_patient_positive += int(same_patient.any(axis=1).sum())
            total += len(b)
    # Only chunk remainders and cuts at batch borders lack a partner.
    assert with_trial_positive / total > 0.8
    assert with_patient_positive / total > 0.9


def test_patient_groups_mix_trials_of_one_patient() -> None:
    # Every patient has 3 trials of 4 samples: with m=2, k=3 a group holds 3 chunks from 3 different trials.
    patients = np.repeat(np.arange(8), 12)
    trials = np.repeat(np.arange(24), 4)
    sampler = GroupedBatchSampler(patients, trials, batch_size=6, samples_per_trial=2, trials_per_patient=3)
    for batch in batches_of(sampler, 0):
        b = np.array(batch)
        assert len(set(patients[b])) == 1  # groups of 6 = exactly one batch
        assert len(set(trials[b])) == 3
        assert all(np.sum(trials[b] == t) == 2 for t in set(trials[b]))


def test_reshuffled_every_epoch_and_deterministic() -> None:
    patients, trials = hierarchical_ids()
    a = GroupedBatchSampler(patients, trials, batch_size=8, seed=3)
    b = GroupedBatchSampler(patients, trials, batch_size=8, seed=3)
    c = GroupedBatchSampler(patients, trials, batch_size=8, seed=4)
    assert batches_of(a, 0) == batches_of(b, 0)
    assert batches_of(a, 0) != batches_of(a, 1)
    assert batches_of(a, 1) != batches_of(c, 1)


def test_no_shuffle_repeats_epoch_zero() -> None:
    patients, trials = hierarchical_ids()
    sampler = GroupedBatchSampler(patients, trials, batch_size=8, shuffle=False, drop_last=False)
    first = [[i for i, _ in batch] for batch in sampler]
    sampler.set_epoch(7)
    assert [[i for i, _ in batch] for batch in sampler] == first


def test_ranks_get_disjoint_patients_and_equal_lengths() -> None:
    patients, trials = hierarchical_ids(n_patients=30, seed=2)
    samplers = [
        GroupedBatchSampler(patients, trials, batch_size=8, num_replicas=2, rank=r, seed=5) for r in range(2)
    ]
    assert len(samplers[0]) == len(samplers[1]) > 0
    for epoch in range(3):
        per_rank = [batches_of(s, epoch) for s in samplers]
        assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0])
        seen = [set(patients[[i for b in batches for i in b]]) for batches in per_rank]
        assert not seen[0] & seen[1]
    # The deal changes between epochs.
    assert batches_of(samplers[0], 0) != batches_of(samplers[0], 1)


def test_rejects_inconsistent_ids_and_tiny_data() -> None:
    with pytest.raises(ConfigError, match="more than one patient"):
        GroupedBatchSampler(np.array([0, 1]), np.array([5, 5]), batch_size=1)
    with pytest.raises(ConfigError, match="no full batch"):
        GroupedBatchSampler(np.array([0, 0, 1]), np.array([0, 0, 1]), batch_size=4)
    with pytest.raises(ConfigError, match="batch_size"):
        GroupedBatchSampler(np.array([0]), np.array([0]), batch_size=0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_epoch_deals_each_sample_to_exactly_one_rank(world_size: int) -> None:
    patients, trials = hierarchical_ids(n_patients=40, seed=7)
    samplers = [
        GroupedBatchSampler(patients, trials, batch_size=8, num_replicas=world_size, rank=r, seed=1)
        for r in range(world_size)
    ]
    largest = int(np.bincount(patients).max())
    for epoch in range(3):
        dealt = [s.epoch_order(epoch) for s in samplers]
        # A partition of the samples: nothing lost, nothing on two ranks.
        assert sorted(np.concatenate(dealt).tolist()) == list(range(len(patients)))
        owners = [set(patients[d]) for d in dealt]
        assert sum(len(o) for o in owners) == len(set(patients))
        for r, sampler in enumerate(samplers):
            batches = batches_of(sampler, epoch)
            assert len(batches) == len(samplers[0])
            used = [i for b in batches for i in b]
            # A rank trains on the head of its share. Equal step counts assume a share of n/W - largest,
            # and the least-loaded deal can give a rank up to one patient more than n/W: at most
            # 2 * largest + one batch of the share is left out at the end of the epoch.
            assert used == dealt[r][: len(used)].tolist()
            assert len(dealt[r]) - len(used) < 2 * largest + 8


def test_rank_split_keeps_the_positives_of_one_rank() -> None:
    # 4 samples per trial, 2 per chunk, 2 chunks per group: groups of 4 that a batch of 8 never cuts.
    patients = np.repeat(np.arange(30), 8)
    trials = np.repeat(np.arange(60), 4)
    for rank in range(2):
        sampler = GroupedBatchSampler(
            patients,
            trials,
            batch_size=8,
            samples_per_trial=2,
            trials_per_patient=2,
            num_replicas=2,
            rank=rank,
        )
        for epoch in range(3):
            for batch in batches_of(sampler, epoch):
                b = np.array(batch)
                for i in range(len(b)):
                    others = np.arange(len(b)) != i
                    assert (others & (trials[b] == trials[b[i]])).any()
                    assert (others & (patients[b] == patients[b[i]]) & (trials[b] != trials[b[i]])).any()


def test_a_patient_larger_than_a_rank_share_leaves_no_full_batch() -> None:
    patients = np.r_[np.zeros(90, dtype=int), np.arange(1, 11)]
    trials = np.arange(100)
    GroupedBatchSampler(patients, trials, batch_size=4)  # one rank: fine
    with pytest.raises(ConfigError, match="no full batch of 4 per rank on 2"):
        GroupedBatchSampler(patients, trials, batch_size=4, num_replicas=2, rank=0)


def test_lightning_reaches_the_epoch_through_the_relay() -> None:
    # Lightning calls set_epoch on `dataloader.sampler` and `dataloader.batch_sampler.sampler` only.
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    patients, trials = hierarchical_ids()
    sampler = GroupedBatchSampler(patients, trials, batch_size=8, num_replicas=2, rank=1)
    loader = DataLoader(list(range(len(patients))), batch_sampler=sampler, collate_fn=lambda items: items)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3
    assert {epoch for batch in sampler for _, epoch in batch} == {3}
