"""Hierarchical contrast of observations, samples, trials and patients (COMET, Wang et al., NeurIPS 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medcl.configurable import Configurable
from medcl.errors import ConfigError
from medcl.losses._common import _check_temperature
from medcl.losses.infonce import multi_positive_info_nce_loss
from medcl.losses.ts2vec import ts2vec_pyramid_losses
from medcl.objectives.base import EncodedViews, Objective

__all__ = ["HierarchicalContrast"]

#: The four levels, in the order their terms are returned.
LEVELS: tuple[str, ...] = ("observation", "sample", "trial", "patient")


def _check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


class HierarchicalContrast(Configurable, Objective):
    """COMET's four-level contrast, all four levels computed from ONE pair of views.

    With ``features = views.features`` ``(2, B, T, D)`` (the encoder's time-resolved output of the two
    views), ``pooled = views.pooled`` ``(2, B, D)`` (the encoder's pooled embedding, the max over time for
    :class:`~modalities.signals.TS2VecEncoder`) and the ids ``(B,)``:

    * ``observation`` = TS2Vec's temporal loss over the max-pool-by-2 pyramid of ``features[0]``,
      ``features[1]`` (:func:`~medcl.losses.ts2vec_pyramid_losses`): within a sample, the same time step
      of the other view is the positive, the other ``2T - 2`` time steps of both views are negatives;
      raw dot products, no temperature (as TS2Vec and COMET);
    * ``sample`` = TS2Vec's instance loss over the same pyramid: at each time step, the same sample's
      other view is the positive, the other ``2B - 2`` representations are negatives;
    * ``trial`` = :func:`~medcl.losses.multi_positive_info_nce_loss` of ``cat(pooled[0], pooled[1])``
      ``(2B, D)`` with ids ``cat(trial, trial)``, cosine similarity over ``temperature``: for anchor
      ``i``, ``P(i) = {j ≠ i : trial_j = trial_i}`` (the other view of the same sample and both views of
      every other sample of the same trial) and
      ``L_i = -1/|P(i)| Σ_{p ∈ P(i)} log softmax_{a ≠ i}(cos(z_i, z_a) / τ)[p]``, averaged over the
      ``2B`` anchors;
    * ``patient`` = the same with patient ids.

    The result is ``{"loss": Σ_level w_level · L_level, <level>: L_level, ...}``. A level whose weight is
    0 is not computed at all (for the two TS2Vec levels, :func:`~medcl.losses.ts2vec_pyramid_losses`
    skips the disabled term), contributes nothing to the total nor to its gradient, and has no key.
    ``temporal_unit`` is TS2Vec's: the temporal (observation) term starts at that pyramid depth.

    How this differs from COMET's reference code (``DL4mHealth/COMET``: ``comet.py``, ``models/losses.py``,
    ``utils.py``, ``tasks/fine_tuning.py``):

    1. **Encoder passes.** COMET runs the encoder 8 times per step: for each level with a non-zero factor,
       two passes over the *same* input batch that differ only by the encoder's random timestamp mask and
       dropout (mask ``'all_true'``, i.e. dropout only, for the patient and trial levels; ``'continuous'``,
       5 runs of 10 % of the time steps zeroed per sample, for the sample and observation levels). Here
       the adapter makes two augmented views of each sample, the encoder runs ONCE on the concatenated
       ``2B`` batch (with its own training mask, binomial p = 0.5 for ``TS2VecEncoder``), and all four
       levels share that pair: 2 passes' worth of forward and backward instead of 8.
    2. **Batches.** COMET orders the data once, before training, with a fixed seed (the samples of each
       trial shuffled, then the order of the trials; ``random_state=42``), and its ``MyBatchSampler``
       cuts that order into consecutive batches, shuffling only the order *within* each batch every
       epoch: every epoch sees the same sets of trials together, and a patient's trials share a batch
       only when they happen to be adjacent. medcl's :class:`~medcl.data.GroupedBatchSampler` puts
       ``trials_per_patient`` trials × ``samples_per_trial`` samples of a patient together and regroups
       every epoch from ``(seed, epoch)``, so trial and patient positives exist by construction.
    3. **Observation and sample pyramids.** COMET's ``observation_contrastive_loss`` and
       ``sample_contrastive_loss`` equal TS2Vec's temporal and instance losses at one scale, but its
       pyramid loops only while ``T > 1`` and divides by the number of those scales. We use TS2Vec's
       pyramid, which also adds the instance term at the final ``T == 1`` scale and counts that scale in
       the divisor of both terms. For ``T = 200`` (scales 200, 100, 50, 25, 12, 6, 3, then 1):
       ``observation = 7/8 · COMET's``; ``sample = (7 · COMET's + instance at T = 1) / 8``. COMET has no
       ``temporal_unit`` (it is 0 there, our default).
    4. **Trial and patient positives.** COMET's ``id_contrastive_loss`` takes the *time-resolved* outputs
       ``(B, T, C)``, L2-normalises them along the time axis, flattens them to ``(B, C·T)`` and compares
       view 1 with view 2 only (a ``B × B`` cosine matrix over τ = 0.1, computed as
       ``log(exp(s) / Σ exp(s))``, no log-sum-exp). Its positives are the cross-view pairs ``(i, j)``,
       ``i ≠ j``, with the same id: for ``i < j`` the anchor is view-1 sample ``i`` against all of view 2,
       for ``i > j`` the anchor is view-2 sample ``j`` against all of view 1; each triangle is averaged
       over its *pairs* and the two averages are averaged. The same sample's other view is not a positive
       (it stays in the denominator), and a batch with no same-id pair divides by zero. Ours is SupCon's
       ``L_out`` (the formula above) on the pooled embeddings: ``2B - 1`` candidates from both views, the
       other view of the same sample is a positive, averaging per anchor, symmetric in the two views,
       log-sum-exp throughout, never undefined (every anchor has its other view as a positive). With all
       ids distinct it is exactly NT-Xent at the same temperature.
    5. **Weights.** COMET's ``factors`` are ordered ``[patient, trial, sample, observation]``; its default
       is 0.25 each (ours too) and its PTB-XL config is ``[0.1, 0.7, 0.1, 0.1]``, i.e. here
       ``patient_weight=0.1, trial_weight=0.7, sample_weight=0.1, observation_weight=0.1``. A zero
       factor skips that level's two passes in COMET; here it skips the level's loss (the shared pass
       remains).
    6. **Evaluation (outside this class).** COMET evaluates a stochastic-weight-averaged copy of the
       encoder (``AveragedModel``) and draws its label fractions *by sample*: fine-tuning takes the first
       ``fraction`` of the (sample-shuffled) training windows, so "1 % of labels" is 1 % of windows,
       scattered over most training patients and trials. medcl draws label fractions *by patient*: a
       fraction is a subset of training patients with all their windows, so 1 % means 1 % of the
       patients (stricter: fewer independent sources of labelled data; the numbers are not comparable
       with COMET's by-sample fractions).

    Args:
        observation_weight: weight of the observation level (TS2Vec temporal loss).
        sample_weight: weight of the sample level (TS2Vec instance loss).
        trial_weight: weight of the trial level.
        patient_weight: weight of the patient level.
        temperature: softmax temperature τ of the trial and patient levels (COMET: 0.1).
        temporal_unit: the first pyramid depth at which the observation term is computed (TS2Vec's).
        gather_distributed: take negatives (and, for trial/patient, positives) from every rank.

    Raises:
        ConfigError: a weight that is not a finite number >= 0, all weights 0, a temperature that is not
            finite and > 0, or a ``temporal_unit`` that is not an integer >= 0.
    """

    needs_features = True

    def __init__(
        self,
        observation_weight: float = 0.25,
        sample_weight: float = 0.25,
        trial_weight: float = 0.25,
        patient_weight: float = 0.25,
        temperature: float = 0.1,
        temporal_unit: int = 0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        weights = {
            "observation": _check_weight(observation_weight, "observation_weight"),
            "sample": _check_weight(sample_weight, "sample_weight"),
            "trial": _check_weight(trial_weight, "trial_weight"),
            "patient": _check_weight(patient_weight, "patient_weight"),
        }
        if not any(weights.values()):
            raise ConfigError("HierarchicalContrast: at least one level weight must be > 0, all are 0")
        _check_temperature(temperature)
        if isinstance(temporal_unit, bool) or not isinstance(temporal_unit, int) or temporal_unit < 0:
            raise ConfigError(f"temporal_unit must be an integer >= 0, got {temporal_unit!r}")
        self.weights = weights
        self.temperature = float(temperature)
        self.temporal_unit = temporal_unit
        self.gather_distributed = bool(gather_distributed)

    @property
    def enabled_levels(self) -> tuple[str, ...]:
        """The levels with a non-zero weight, in :data:`LEVELS` order."""
        return tuple(level for level in LEVELS if self.weights[level] > 0)

    def _check_views(self, views: EncodedViews) -> Tensor:
        pooled, features = views.pooled, views.features
        if pooled.dim() != 3 or pooled.shape[0] != 2:
            raise ConfigError(
                "HierarchicalContrast needs exactly 2 views: pooled of shape (2, B, D), "
                f"got {tuple(pooled.shape)}"
            )
        if features is None:
            raise ConfigError(
                "HierarchicalContrast needs time-resolved features (V, B, T, D); the caller passed none "
                "(needs_features is True: use an encoder with forward_features)"
            )
        if features.dim() != 4 or features.shape[:2] != pooled.shape[:2]:
            raise ConfigError(
                f"features must have shape (2, B, T, D) matching pooled {tuple(pooled.shape)}, "
                f"got {tuple(features.shape)}"
            )
        batch = pooled.shape[1]
        for name, ids in (("patient", views.patient), ("trial", views.trial)):
            if ids.shape != (batch,):
                raise ValueError(f"{name} ids must have shape ({batch},), got {tuple(ids.shape)}")
        return features

    def forward(self, views: EncodedViews) -> dict[str, Tensor]:
        """Named terms of one batch.

        Args:
            views: ``pooled`` ``(2, B, D)``, ``features`` ``(2, B, T, D)``, ``patient`` and ``trial``
                ``(B,)`` integer codes.

        Returns:
            ``{"loss": scalar, <enabled level>: scalar, ...}``; levels with weight 0 are absent.
        """
        features = self._check_views(views)
        w = self.weights
        terms: dict[str, Tensor] = {}
        if w["observation"] > 0 or w["sample"] > 0:
            instance, temporal = ts2vec_pyramid_losses(
                features[0],
                features[1],
                temporal_unit=self.temporal_unit,
                gather_distributed=self.gather_distributed,
                instance=w["sample"] > 0,
                temporal=w["observation"] > 0,
            )
            if w["observation"] > 0:
                terms["observation"] = temporal
            if w["sample"] > 0:
                terms["sample"] = instance
        if w["trial"] > 0 or w["patient"] > 0:
            z = torch.cat([views.pooled[0], views.pooled[1]])  # (2B, D)
            for level, ids in (("trial", views.trial), ("patient", views.patient)):
                if w[level] > 0:
                    terms[level] = multi_positive_info_nce_loss(
                        z,
                        torch.cat([ids, ids]),
                        temperature=self.temperature,
                        normalize=True,
                        gather_distributed=self.gather_distributed,
                    )
        ordered = {level: terms[level] for level in LEVELS if level in terms}
        total: Tensor | None = None
        for level, value in ordered.items():
            weighted = w[level] * value
            total = weighted if total is None else total + weighted
        assert total is not None  # at least one weight is > 0 (checked in __init__)
        return {"loss": total, **ordered}

    def extra_repr(self) -> str:
        weights = ", ".join(f"{level}_weight={self.weights[level]}" for level in LEVELS)
        return (
            f"{weights}, temperature={self.temperature}, temporal_unit={self.temporal_unit}, "
            f"gather_distributed={self.gather_distributed}"
        )
