"""Small heads put on top of encoders."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP: ``Linear → BatchNorm → ReLU → Linear``.

    Args:
        in_dim: encoder embedding size ``D``.
        hidden_dim: hidden width.
        out_dim: projection size ``P``.

    Shape: ``(B, D) → (B, P)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
