"""Participant contrast with a momentum encoder and KoLeo (Abbaspourazad et al., ICLR 2024).

Positives are two *different segments of the same participant* (recorded at different times), not two
augmentations of one segment: the representation is pushed to keep what is stable about a person (their
physiology, demographics, health) and to drop what changes from minute to minute. Per step:

1. every sample of the batch is augmented once by the stochastic augmentation module
   (:class:`~medcl.data.augment.StochasticAugment`, applied per sample by the data set as this
   objective's :meth:`~ParticipantContrast.item_transform`);
2. samples are paired within participants (:func:`participant_pairs`: never a segment with itself, never
   two participants); samples left without a partner are not anchors and are counted (``unpaired``);
3. queries come from the online encoder + projection head, keys from a momentum copy of both
   (``θ_m ← m θ_m + (1 − m) θ`` after every optimiser step, ``m = 0.99``; no gradient);
4. loss = ``infonce_weight`` × bidirectional InfoNCE (each member of a pair is the anchor once; the keys of
   other participants are the negatives, τ = 0.04) + ``koleo_weight`` × KoLeo (0.1) on the projections,
   computed separately on the first and on the second members of the pairs (each set holds one segment
   per pair, like the paper's two batches of segments, and DINOv2 applies KoLeo per view).

``positives="segment"`` is the paper's ablation: two augmentations of the same segment are the positive
pair and every other segment, the participant's own included, is a negative.

The momentum encoder is a copy of the encoder it is first given (:meth:`ParticipantContrast.attach_encoder`,
called by the first :meth:`~ParticipantContrast.forward_batch`); it is a registered submodule, so
checkpoints hold it. A checkpoint loaded before the copy exists keeps the momentum weights aside and
puts them into the copy when it is made, so resuming restores the teacher exactly.
"""

from __future__ import annotations

import copy
import heapq
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from monai.utils import MAX_SEED
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.data import contract
from medcl.data.augment import StochasticAugment
from medcl.errors import ConfigError
from medcl.heads import ProjectionHead
from medcl.losses.koleo import koleo_loss
from medcl.losses.paired import paired_info_nce_loss
from medcl.objectives.base import BatchObjective

__all__ = ["POSITIVES", "ParticipantContrast", "ParticipantViews", "momentum_update", "participant_pairs"]

POSITIVES = ("participant", "segment")
VIEW_KEYS: dict[str, tuple[str, ...]] = {
    "participant": ("participant_view",),
    "segment": ("participant_view_a", "participant_view_b"),
}


# ----------------------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------------------
def participant_pairs(
    groups: np.ndarray, segments: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint pairs of batch positions with the same group (participant) and different segments.

    Within each group the pairing is a maximum matching under the rule "never two copies of one segment":
    positions are shuffled, bucketed by segment, and one position of each of the two largest buckets is
    paired until fewer than two buckets remain. A group of ``n`` positions whose most repeated segment
    appears ``r`` times gets ``min(n // 2, n − r)`` pairs; the rest stay unpaired. Which member comes
    first is random.

    Args:
        groups: ``(B,)`` participant code of every position.
        segments: ``(B,)`` segment id of every position (a row of the sample table).
        rng: the generator of every random choice.

    Returns:
        ``(first, second)``: ``(P,)`` int64 positions each; ``groups[first] == groups[second]`` and
        ``segments[first] != segments[second]``; no position appears twice.
    """
    groups = np.asarray(groups)
    segments = np.asarray(segments)
    if groups.shape != segments.shape or groups.ndim != 1:
        raise ValueError(
            f"groups and segments must be 1-D and equally long, got {groups.shape}, {segments.shape}"
        )
    first: list[int] = []
    second: list[int] = []
    order = rng.permutation(len(groups))
    members: dict[Any, list[int]] = {}
    for position in order:
        members.setdefault(groups[position].item(), []).append(int(position))
    for group in sorted(members):
        buckets: dict[Any, list[int]] = {}
        for position in members[group]:
            buckets.setdefault(segments[position].item(), []).append(position)
        # max-heap of (−size, tie-break, segment); the tie-break is random so equal buckets vary
        heap = [(-len(b), float(rng.random()), seg) for seg, b in buckets.items()]
        heapq.heapify(heap)
        while len(heap) >= 2:
            size_a, _, seg_a = heapq.heappop(heap)
            size_b, _, seg_b = heapq.heappop(heap)
            a, b = buckets[seg_a].pop(), buckets[seg_b].pop()
            if rng.random() < 0.5:
                a, b = b, a
            first.append(a)
            second.append(b)
            for size, seg in ((size_a + 1, seg_a), (size_b + 1, seg_b)):
                if size < 0:
                    heapq.heappush(heap, (size, float(rng.random()), seg))
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


@torch.no_grad()
def momentum_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """EMA of parameters: ``θ_target ← m · θ_target + (1 − m) · θ_source``, in place, for every parameter
    (in ``parameters()`` order; the two modules must have the same architecture). Buffers (BatchNorm
    running statistics) are left to the target's own forward passes, as in MoCo."""
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"momentum must be in [0, 1], got {momentum}")
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if len(target_params) != len(source_params) or any(
        t.shape != s.shape for t, s in zip(target_params, source_params, strict=False)
    ):
        raise ConfigError(
            f"momentum_update: {type(target).__name__} and {type(source).__name__} have different parameters"
        )
    for t, s in zip(target_params, source_params, strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


# ----------------------------------------------------------------------------------------------------
# the item transform
# ----------------------------------------------------------------------------------------------------
class ParticipantViews(Randomizable):
    """Per-sample inputs of :class:`ParticipantContrast`: ``n_views`` augmentations of the sample's
    signal, under :attr:`output_keys` (one view for participant positives, two for segment positives).

    Args:
        input_key: the sample's main array, ``(C, T)``.
        positives: ``"participant"`` or ``"segment"``.
        augmentation: keyword arguments of :class:`~medcl.data.augment.StochasticAugment`.

    Shapes:
        ``sample[input_key]`` ``(C, T)`` → each output ``(C, T)`` float32.
    """

    def __init__(
        self, input_key: str, positives: str = "participant", augmentation: dict | None = None
    ) -> None:
        if positives not in POSITIVES:
            raise ConfigError(f"positives must be one of {POSITIVES}, got {positives!r}")
        self.input_key = input_key
        self.output_keys = VIEW_KEYS[positives]
        try:
            self.augment = StochasticAugment(**dict(augmentation or {}))
        except TypeError as error:
            raise ConfigError(f"augmentation: {error} (see medcl.data.augment.StochasticAugment)") from error

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> ParticipantViews:
        """Seed this transform and, from it, the augmentation module."""
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        """The augmentation module draws for every view."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.input_key not in sample:
            raise ConfigError(f"ParticipantViews: the sample has no {self.input_key!r} array")
        out = dict(sample)
        signal = np.asarray(sample[self.input_key])
        for key in self.output_keys:
            out[key] = self.augment(signal)
        return out


# ----------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------
class ParticipantContrast(Configurable, BatchObjective):
    """Participant-level momentum contrast with KoLeo (see the module docstring).

    Args:
        positives: ``"participant"`` (two segments of one participant; the method) or ``"segment"`` (two
            augmentations of one segment; the ablation).
        temperature: InfoNCE temperature τ (the paper: 0.04).
        infonce_weight: weight of the InfoNCE term.
        koleo_weight: weight of the KoLeo term (the paper: 0.1; 0 disables it).
        momentum: EMA momentum of the key encoder and head (the paper: 0.99).
        projection_dim: size of the contrasted embedding (the paper: 256).
        hidden_dim: hidden width of the projection head.
        augmentation: keyword arguments of :class:`~medcl.data.augment.StochasticAugment` (its defaults
            when None).
        gather_distributed: keys of every rank are negatives (see :mod:`medcl.dist`).
        seed: seed of the pairing (combined with the batch's sample indices, so a batch always gets the
            same pairs, also after a resume).

    Terms: ``loss``, ``info_nce``, ``koleo``, ``pairs`` (pairs in the batch) and ``unpaired`` (samples
    without a partner: not anchors, but their keys remain negatives for other participants).
    """

    def __init__(
        self,
        positives: str = "participant",
        temperature: float = 0.04,
        infonce_weight: float = 1.0,
        koleo_weight: float = 0.1,
        momentum: float = 0.99,
        projection_dim: int = 256,
        hidden_dim: int = 1024,
        augmentation: dict[str, Any] | None = None,
        gather_distributed: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise ConfigError(f"positives must be one of {POSITIVES}, got {positives!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if infonce_weight < 0 or koleo_weight < 0 or infonce_weight + koleo_weight == 0:
            raise ConfigError(
                f"infonce_weight and koleo_weight must be >= 0 and not both 0, got {infonce_weight}, "
                f"{koleo_weight}"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum}")
        if projection_dim < 1 or hidden_dim < 1:
            raise ConfigError(
                f"projection_dim and hidden_dim must be >= 1, got {projection_dim}, {hidden_dim}"
            )
        ParticipantViews("x", positives, augmentation)  # check the augmentation settings now
        self.positives = positives
        self.temperature = float(temperature)
        self.infonce_weight = float(infonce_weight)
        self.koleo_weight = float(koleo_weight)
        self.momentum = float(momentum)
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim)
        self.augmentation = dict(augmentation or {})
        self.gather_distributed = gather_distributed
        self.seed = int(seed)
        self.head: ProjectionHead | None = None
        self.momentum_head: ProjectionHead | None = None
        # Registered (as None) so that strict loading accepts a checkpoint's momentum weights before the
        # copy exists; they wait in _pending_momentum (see _load_from_state_dict).
        self.register_module("momentum_encoder", None)
        self._pending_momentum: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------------------------------------
    def bind(self, embedding_dim: int) -> None:
        """Build the projection head and its momentum copy for an encoder of ``embedding_dim``."""
        self.head = ProjectionHead(embedding_dim, self.hidden_dim, self.projection_dim)
        self.momentum_head = copy.deepcopy(self.head).requires_grad_(False)

    def attach_encoder(self, encoder: nn.Module) -> None:
        """Make the momentum encoder: a frozen copy of ``encoder`` (or, after a checkpoint was loaded, of
        its architecture with the checkpoint's momentum weights). Idempotent."""
        if self.momentum_encoder is not None:
            return
        teacher = copy.deepcopy(encoder).requires_grad_(False)
        if self._pending_momentum is not None:
            teacher.load_state_dict(self._pending_momentum)
            self._pending_momentum = None
        self.momentum_encoder = teacher

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        own = f"{prefix}momentum_encoder."
        if self.momentum_encoder is None:
            pending = {k[len(own) :]: v for k, v in state_dict.items() if k.startswith(own)}
            self._pending_momentum = pending or None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def project(self, pooled: Tensor) -> Tensor:
        """Online projection ``(B, D) → (B, projection_dim)``."""
        if self.head is None:
            raise ConfigError("ParticipantContrast.bind(embedding_dim) must be called before use")
        return self.head(pooled)

    def item_transform(self, input_key: str) -> ParticipantViews:
        return ParticipantViews(input_key, self.positives, self.augmentation)

    # ----------------------------------------------------------------------------------------------
    def _keys(self, x: Tensor) -> Tensor:
        """Momentum projections of ``x`` ``(N, C, T)`` → ``(N, projection_dim)``, without gradient."""
        if self.momentum_encoder is None or self.momentum_head is None:
            raise ConfigError("ParticipantContrast: bind() and attach_encoder() must run before the keys")
        # The teacher runs in the objective's mode (batch statistics while training, as MoCo's key
        # encoder) and is left in train mode between calls: a copy made during a validation pass would
        # otherwise stay in eval mode, since Lightning restores the modes only of the modules it saw.
        modules = (self.momentum_encoder, self.momentum_head)
        for module in modules:
            module.train(self.training)
        try:
            with torch.no_grad():
                return self.momentum_head(self.momentum_encoder(x))
        finally:
            for module in modules:
                module.train(True)

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch: the views made by :meth:`item_transform` ``(B, C, T)``, ``patient``
        codes ``(B,)`` and ``index`` (the sample's row, i.e. its segment) ``(B,)``."""
        if self.head is None or self.momentum_head is None:
            raise ConfigError("ParticipantContrast.bind(embedding_dim) must be called before use")
        self.attach_encoder(encoder)
        keys = VIEW_KEYS[self.positives]
        missing = [k for k in (*keys, contract.PATIENT, contract.INDEX) if k not in batch]
        if missing:
            raise ConfigError(
                f"ParticipantContrast: the batch lacks {missing}; its data module must apply this "
                "objective's item_transform"
            )
        patient = batch[contract.PATIENT].long()
        index = batch[contract.INDEX].long()
        batch_size = int(patient.shape[0])
        if self.positives == "participant":
            x = batch[keys[0]]
            rng = np.random.default_rng([self.seed, *index.tolist()])
            first_np, second_np = participant_pairs(patient.cpu().numpy(), index.cpu().numpy(), rng)
            first = torch.as_tensor(first_np, device=x.device)
            second = torch.as_tensor(second_np, device=x.device)
            groups = patient
            n_unpaired = batch_size - 2 * len(first)
        else:
            x = torch.cat([batch[keys[0]], batch[keys[1]]])
            first = torch.arange(batch_size, device=x.device)
            second = first + batch_size
            groups = torch.cat([index, index])
            n_unpaired = 0
        query = self.head(encoder(x))  # (N, P)
        key = self._keys(x)  # (N, P), no grad
        anchors = torch.cat([first, second])
        positives = torch.cat([second, first])
        info_nce = paired_info_nce_loss(
            query,
            key,
            anchors,
            positives,
            groups.to(query.device),
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )
        if len(first) >= 2:
            koleo = 0.5 * (koleo_loss(query[first]) + koleo_loss(query[second]))
        else:
            koleo = query.sum() * 0.0
        loss = self.infonce_weight * info_nce + self.koleo_weight * koleo
        return {
            "loss": loss,
            "info_nce": info_nce.detach(),
            "koleo": koleo.detach(),
            "pairs": torch.tensor(float(len(first))),
            "unpaired": torch.tensor(float(n_unpaired)),
        }

    def on_after_optimizer_step(self, encoder: nn.Module) -> None:
        """Move the momentum encoder and head towards the online ones (after every optimiser step)."""
        if self.head is None or self.momentum_head is None:
            return
        self.attach_encoder(encoder)
        if self.momentum_encoder is not None:
            momentum_update(self.momentum_encoder, encoder, self.momentum)
        momentum_update(self.momentum_head, self.head, self.momentum)
