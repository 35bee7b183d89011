"""SimCLR: NT-Xent between two augmented views of each sample (Chen et al., ICML 2020)."""

from __future__ import annotations

from torch import Tensor

from medcl.configurable import Configurable
from medcl.errors import ConfigError
from medcl.heads import ProjectionHead
from medcl.losses.infonce import nt_xent_loss
from medcl.objectives.base import EncodedViews, Objective

__all__ = ["SimCLR"]


class SimCLR(Configurable, Objective):
    """NT-Xent on projected embeddings of two views.

    Args:
        temperature: softmax temperature (SimCLR: 0.1-0.5).
        projection_dim: output size ``P`` of the projection head.
        hidden_dim: hidden width of the projection head.
        gather_distributed: take negatives from every rank (see :mod:`medcl.dist`).

    Terms: ``nt_xent`` and ``loss`` (equal).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.gather_distributed = gather_distributed
        self.head: ProjectionHead | None = None

    def bind(self, embedding_dim: int) -> None:
        self.head = ProjectionHead(embedding_dim, self.hidden_dim, self.projection_dim)

    def project(self, pooled: Tensor) -> Tensor:
        if self.head is None:
            raise ConfigError("SimCLR.bind(embedding_dim) must be called before use")
        return self.head(pooled)

    def forward(self, views: EncodedViews) -> dict[str, Tensor]:
        if views.pooled.shape[0] != 2:
            raise ConfigError(f"SimCLR needs exactly 2 views, got {views.pooled.shape[0]}")
        n_views, batch, dim = views.pooled.shape
        projected = self.project(views.pooled.reshape(n_views * batch, dim)).reshape(n_views, batch, -1)
        loss = nt_xent_loss(
            projected[0],
            projected[1],
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )
        return {"loss": loss, "nt_xent": loss}
