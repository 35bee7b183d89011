"""medcl's KoLeo against DINOv2's ``KoLeoLoss`` (facebookresearch/dinov2, ``dinov2/loss/koleo_loss.py``).

tests/losses/test_koleo.py checks the formula against a brute-force loop; this checks that the function
participant contrast uses behaves as the reference implementation the paper's regulariser comes from.
DINOv2's version, restated: L2-normalise (``F.normalize``, eps 1e-8), nearest neighbour = largest inner
product with the diagonal set to -1, distance = ``nn.PairwiseDistance(p=2, eps=1e-8)`` (which adds eps to
every coordinate of the difference), loss = ``-mean(log(distance + 1e-8))``. The one difference: medcl
does not add eps inside the norm, which moves the loss by at most ~1e-7 for well-separated rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.losses import koleo_loss


def dinov2_koleo(student_output: Tensor, eps: float = 1e-8) -> Tensor:
    x = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = x @ x.T
    dots.fill_diagonal_(-1)
    nearest = dots.argmax(dim=1)
    distances = nn.PairwiseDistance(2, eps=1e-8)(x, x[nearest])
    return -torch.log(distances + eps).mean()


@pytest.mark.parametrize("n, d", [(2, 3), (16, 8), (64, 256)])
def test_matches_dinov2(n: int, d: int) -> None:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    assert koleo_loss(z).item() == pytest.approx(dinov2_koleo(z).item(), abs=1e-6)
    z.requires_grad_(True)
    koleo_loss(z).backward()
    ours = z.grad.clone()
    z.grad = None
    dinov2_koleo(z).backward()
    torch.testing.assert_close(ours, z.grad, rtol=1e-4, atol=1e-6)
