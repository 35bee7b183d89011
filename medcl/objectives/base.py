"""The objective interface: encoder outputs of several views → named loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["BatchObjective", "EncodedViews", "Objective"]


@dataclass
class EncodedViews:
    """What an objective receives for one batch.

    Attributes:
        pooled: pooled encoder embeddings of every view, shape ``(V, B, D)``.
        features: time-resolved (or spatial) features, shape ``(V, B, T, D)``, when the objective
            asked for them (``needs_features``), else None.
        patient: patient code of every sample, ``(B,)`` long.
        trial: trial code of every sample, ``(B,)`` long.
    """

    pooled: Tensor
    features: Tensor | None
    patient: Tensor
    trial: Tensor


class Objective(nn.Module):
    """Base class of pretraining objectives.

    Subclasses set ``needs_features`` when they use time-resolved features, build their heads in
    :meth:`bind` (called once with the encoder's embedding size, before training) and return from
    :meth:`forward` a dict of named scalar terms including the total under ``"loss"``.
    Objectives never look at the modality: only at embeddings, features and ids.
    """

    needs_features: bool = False

    def bind(self, embedding_dim: int) -> None:
        """Create the parameters that depend on the encoder's embedding size (default: none)."""

    def project(self, pooled: Tensor) -> Tensor:
        """The representation that is contrasted, ``(B, D) → (B, P)``; identity by default.

        Used for the alignment/uniformity diagnostics.
        """
        return pooled

    def forward(self, views: EncodedViews) -> dict[str, Tensor]:
        raise NotImplementedError


class BatchObjective(Objective):
    """Objectives that make their own inputs from each sample and call the encoder themselves.

    Some objectives do not contrast augmented views: volume contrast (VoCo) encodes base crops and
    random crops of one volume and predicts their overlap; asymmetry contrast encodes a volume and its
    left-right mirror image. Such an objective provides

    * :meth:`item_transform`: a MONAI ``Randomizable`` dictionary transform that the dataset applies
      to every preprocessed sample dict (seeded from ``(seed, epoch, sample index)``, so reproducible
      with any number of workers). It returns the sample dict with the objective's inputs added under
      the keys listed in its ``output_keys`` attribute (arrays of a fixed shape, so batches collate);
    * :meth:`forward_batch`: the loss terms of a collated batch, given the encoder.

    The pretraining module hands a :class:`BatchObjective` the whole batch instead of
    :class:`EncodedViews`; the data module then makes no views (``n_views`` is ignored).
    Like every objective, a batch objective never looks at the modality, only at arrays and ids.
    """

    def item_transform(self, input_key: str) -> Any:
        """The per-sample transform; ``input_key`` names the sample's main array (e.g. ``"image"``)."""
        raise NotImplementedError

    def eval_item_transform(self, input_key: str) -> Any:
        """The per-sample transform of validation and test samples when it must differ from
        :meth:`item_transform` (e.g. without image augmentation, so that the validation loss that selects
        checkpoints measures the data, not the augmentation); None (the default): the same transform."""
        return None

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Named scalar loss terms (the total under ``"loss"``) of one collated batch."""
        raise NotImplementedError

    def forward(self, views: EncodedViews) -> dict[str, Tensor]:
        raise TypeError(f"{type(self).__name__} works on whole batches: call forward_batch(encoder, batch)")
