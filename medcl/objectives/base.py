"""The objective interface: encoder outputs of several views → named loss terms."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["EncodedViews", "Objective"]


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
