"""VoCo's prediction and regularisation losses against slow loops written here, closed forms, the
reference repository's formulas, and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medcl.errors import ConfigError
from medcl.losses import (
    VoCoPredictionLoss,
    VoCoRegularizationLoss,
    voco_logits,
    voco_prediction_loss,
    voco_prediction_loss_parts,
    voco_regularization_loss,
)

F64 = torch.float64

# --------------------------------------------------------------------------------------------------
# slow references (plain Python floats)
# --------------------------------------------------------------------------------------------------


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_logits(crops: Tensor, bases: Tensor) -> list[list[list[float]]]:
    """[volume][crop][base] = max(0, cos)."""
    return [
        [[max(0.0, _cos(c, b)) for b in bases_v] for c in crops_v]
        for crops_v, bases_v in zip(crops.tolist(), bases.tolist(), strict=True)
    ]


def reference_prediction(logits: Tensor, labels: Tensor, eps: float) -> tuple[float, float]:
    """Per volume: pos = -Σ y log(max(1 - |y - l|, eps)) / Σ y over y > 0; neg = mean l² over y = 0."""
    pos_total = neg_total = 0.0
    volumes = list(zip(logits.tolist(), labels.tolist(), strict=True))
    for logits_v, labels_v in volumes:
        pos_num = label_sum = neg_num = 0.0
        n_neg = 0
        for logit_row, label_row in zip(logits_v, labels_v, strict=True):
            for logit, y in zip(logit_row, label_row, strict=True):
                if y > 0:
                    pos_num -= y * math.log(max(1.0 - abs(y - logit), eps))
                    label_sum += y
                else:
                    neg_num += logit * logit
                    n_neg += 1
        pos_total += pos_num / label_sum if label_sum else 0.0
        neg_total += neg_num / n_neg if n_neg else 0.0
    return pos_total / len(volumes), neg_total / len(volumes)


def reference_regularization(bases: Tensor) -> float:
    """Mean over volumes of the mean over i ≠ j of max(0, cos(b_i, b_j))²."""
    total = 0.0
    for bases_v in bases.tolist():
        m = len(bases_v)
        pairs = [max(0.0, _cos(bases_v[i], bases_v[j])) ** 2 for i in range(m) for j in range(m) if i != j]
        total += sum(pairs) / len(pairs)
    return total / bases.shape[0]


def reference_repo_ce_loss(labels: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """The reference repository's ``ce_loss`` for one volume (models/voco_head.py), as written there."""
    pos_dis = torch.abs(labels - logits)
    pos_loss = -labels * torch.log(1 - pos_dis + 1e-6)
    pos_loss = pos_loss.sum() / (labels.sum() + 1e-6)
    neg_lab = (labels == 0).long()
    neg_loss = neg_lab * (logits**2)
    neg_loss = neg_loss.sum() / (neg_lab.sum() + 1e-6)
    return pos_loss, neg_loss


def reference_repo_regularization(bases: Tensor) -> Tensor:
    """The reference repository's ``regularization_loss`` for one volume: pairs i < j, b_j detached."""
    total, num = bases.new_zeros(()), 0
    for i in range(bases.shape[0] - 1):
        for j in range(i + 1, bases.shape[0]):
            num += 1
            simi = F.cosine_similarity(bases[i][None], bases[j][None].detach(), dim=1)
            total = total + F.relu(simi).square().sum()
    return total / num


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _labels(batch: int, k: int, m: int, seed: int) -> Tensor:
    """Random label rows that sum to 1 with about half the entries exactly 0."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, k, m, generator=g, dtype=F64) * (torch.rand(batch, k, m, generator=g) < 0.5)
    raw[..., 0] += 0.1  # no empty row
    return raw / raw.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# logits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "k", "m", "dim"), [(1, 1, 4, 3), (2, 3, 4, 8), (3, 5, 9, 2)])
def test_logits_match_reference(batch: int, k: int, m: int, dim: int) -> None:
    crops, bases = _randn(batch, k, dim, seed=1), _randn(batch, m, dim, seed=2) * 5.0
    got = voco_logits(crops, bases)
    assert got.shape == (batch, k, m)
    torch.testing.assert_close(
        got, torch.tensor(reference_logits(crops, bases), dtype=F64), rtol=0, atol=1e-12
    )
    assert (got >= 0).all() and (got <= 1 + 1e-12).all()
    # unbatched = one volume
    torch.testing.assert_close(voco_logits(crops[0], bases[0]), got[0])


def test_logits_closed_forms() -> None:
    bases = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=F64)
    crops = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    expected = torch.tensor([[1.0, 0.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5), 0.0]], dtype=F64)
    torch.testing.assert_close(voco_logits(crops, bases), expected, rtol=0, atol=1e-15)


def test_logits_shape_errors() -> None:
    with pytest.raises(ValueError, match="share"):
        voco_logits(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match="share"):
        voco_logits(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="rows"):
        voco_logits(torch.zeros(3, 4), torch.zeros(1, 3, 4))


# --------------------------------------------------------------------------------------------------
# prediction loss
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "k", "m"), [(1, 1, 4), (2, 3, 4), (4, 2, 9), (2, 6, 16)])
@pytest.mark.parametrize("eps", [1e-6, 0.05])
def test_prediction_matches_reference(batch: int, k: int, m: int, eps: float) -> None:
    logits = torch.rand(batch, k, m, generator=torch.Generator().manual_seed(k + m), dtype=F64)
    labels = _labels(batch, k, m, seed=batch)
    pos, neg = voco_prediction_loss_parts(logits, labels, eps)
    ref_pos, ref_neg = reference_prediction(logits, labels, eps)
    assert pos.item() == pytest.approx(ref_pos, abs=1e-12, rel=1e-12)
    assert neg.item() == pytest.approx(ref_neg, abs=1e-12, rel=1e-12)
    assert voco_prediction_loss(logits, labels, eps).item() == pytest.approx(ref_pos + ref_neg, rel=1e-12)
    assert VoCoPredictionLoss(eps)(logits, labels).item() == pytest.approx(ref_pos + ref_neg, rel=1e-12)


def test_prediction_matches_the_reference_repository_away_from_the_clamp() -> None:
    # 1 - |y - l| >= 0.2 everywhere: our clamp is inactive and the reference's +1e-6 shifts by < 1e-5
    batch, k, m = 3, 4, 9
    labels = _labels(batch, k, m, seed=3)
    logits = (
        labels + 0.3 * (torch.rand(batch, k, m, generator=torch.Generator().manual_seed(0)) - 0.5)
    ).clamp(0, 1)
    pos, neg = voco_prediction_loss_parts(logits, labels)
    parts = [reference_repo_ce_loss(labels[v], logits[v]) for v in range(batch)]
    ref_pos = sum(p for p, _ in parts) / batch
    ref_neg = sum(n for _, n in parts) / batch
    assert pos.item() == pytest.approx(ref_pos.item(), abs=1e-5)
    assert neg.item() == pytest.approx(ref_neg.item(), abs=1e-5)


def test_perfect_logits_give_zero() -> None:
    labels = _labels(2, 3, 4, seed=0)
    logits = labels.clone()  # equal on y > 0, and 0 where y = 0
    pos, neg = voco_prediction_loss_parts(logits, labels)
    assert pos.item() == 0.0 and neg.item() == 0.0
    # the positive part alone: logits right on the overlapping bases, wrong on the others
    logits = torch.where(labels > 0, labels, torch.full_like(labels, 0.5))
    pos, neg = voco_prediction_loss_parts(logits, labels)
    assert pos.item() == 0.0
    assert neg.item() == pytest.approx(0.25, abs=1e-15)


def test_hand_computed_volume() -> None:
    # one volume, one crop at the centre of a 2 × 2 grid (y = 1/4 each) and one on base 0 (y = [1, 0, 0, 0])
    labels = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]], dtype=F64)
    logits = torch.tensor([[[0.25, 0.5, 0.0, 0.25], [0.5, 0.2, 0.0, 0.4]]], dtype=F64)
    pos = -(0.25 * math.log(0.75) + 0.25 * math.log(0.75) + 1.0 * math.log(0.5)) / 2.0
    neg = (0.2**2 + 0.0 + 0.4**2) / 3
    got_pos, got_neg = voco_prediction_loss_parts(logits, labels)
    assert got_pos.item() == pytest.approx(pos, abs=1e-15)
    assert got_neg.item() == pytest.approx(neg, abs=1e-15)


def test_volumes_are_averaged_not_pooled() -> None:
    # volume 0 has 3 zero labels, volume 1 has none: the negative part is the mean over volumes of
    # per-volume means
    labels = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[0.25, 0.25, 0.25, 0.25]]], dtype=F64)
    logits = torch.tensor([[[1.0, 0.3, 0.3, 0.3]], [[0.25, 0.25, 0.25, 0.25]]], dtype=F64)
    pos, neg = voco_prediction_loss_parts(logits, labels)
    assert pos.item() == 0.0
    assert neg.item() == pytest.approx(0.09 / 2, abs=1e-15)  # (0.09 + 0) / 2, not 0.27 / 3


def test_clamp_keeps_the_loss_finite() -> None:
    labels = torch.tensor([[1.0, 0.0]], dtype=F64)
    logits = torch.tensor([[0.0, 0.0]], dtype=F64, requires_grad=True)
    loss = voco_prediction_loss(logits, labels, eps=1e-6)
    assert loss.item() == pytest.approx(-math.log(1e-6), rel=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_prediction_gradient_matches_the_formula() -> None:
    # d/dl [-y log(1 - |y - l|)] / Σy = -sign(y - l) · y / (1 - |y - l|) (Σy = 1); d/dl [l² / #(y = 0)] = 2l
    labels = torch.tensor([[0.5, 0.5, 0.0]], dtype=F64)
    logits = torch.tensor([[0.25, 0.75, 0.5]], dtype=F64, requires_grad=True)
    voco_prediction_loss(logits, labels).backward()
    expected = torch.tensor([[-0.5 / 0.75, 0.5 / 0.75, 2 * 0.5]], dtype=F64)
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=1e-12)


def test_half_precision_is_computed_in_float32() -> None:
    logits = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0))
    labels = _labels(2, 3, 4, seed=1).float()
    got = voco_prediction_loss(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    expected = voco_prediction_loss(logits.bfloat16().float(), labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_prediction_errors() -> None:
    with pytest.raises(ValueError, match="one shape"):
        voco_prediction_loss(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch"):
        voco_prediction_loss(torch.zeros(2), torch.zeros(2))
    for eps in (0.0, 1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="eps"):
            VoCoPredictionLoss(eps)
    with pytest.raises(TypeError, match="floating"):
        voco_prediction_loss(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4))


# --------------------------------------------------------------------------------------------------
# regularisation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "m", "dim"), [(1, 2, 3), (2, 4, 5), (3, 9, 4), (2, 16, 8)])
def test_regularization_matches_reference(batch: int, m: int, dim: int) -> None:
    bases = _randn(batch, m, dim, seed=m)
    expected = reference_regularization(bases)
    assert voco_regularization_loss(bases).item() == pytest.approx(expected, abs=1e-12)
    assert VoCoRegularizationLoss()(bases).item() == pytest.approx(expected, abs=1e-12)
    # the same value as the reference repository's unordered pairs (the cosine is symmetric)
    repo = sum(reference_repo_regularization(bases[v]) for v in range(batch)) / batch
    assert voco_regularization_loss(bases).item() == pytest.approx(repo.item(), abs=1e-12)
    assert voco_regularization_loss(bases[0]).item() == pytest.approx(
        reference_regularization(bases[:1]), abs=1e-12
    )


def test_regularization_closed_forms() -> None:
    orthogonal = torch.eye(4, dtype=F64)[None] * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)[None, :, None]
    assert voco_regularization_loss(orthogonal).item() == 0.0
    identical = torch.ones(1, 3, 5, dtype=F64)
    assert voco_regularization_loss(identical).item() == pytest.approx(1.0, abs=1e-15)
    opposed = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=F64)
    assert voco_regularization_loss(opposed).item() == 0.0  # ReLU: anti-correlated bases are fine
    # 60°: cos = 1/2 → 1/4
    sixty = torch.tensor([[[1.0, 0.0], [0.5, math.sqrt(3) / 2]]], dtype=F64)
    assert voco_regularization_loss(sixty).item() == pytest.approx(0.25, abs=1e-15)


def test_regularization_gradient_is_the_stop_gradient_loop() -> None:
    bases = _randn(2, 4, 3, seed=9).requires_grad_(True)
    voco_regularization_loss(bases).backward()
    got = bases.grad.clone()

    # slow: every ordered pair, the second element detached
    leaf = bases.detach().clone().requires_grad_(True)
    total = leaf.new_zeros(())
    for v in range(2):
        for i in range(4):
            for j in range(4):
                if i != j:
                    cos = F.cosine_similarity(leaf[v, i][None], leaf[v, j][None].detach(), dim=1)
                    total = total + F.relu(cos).square().sum() / 12
    (total / 2).backward()
    torch.testing.assert_close(got, leaf.grad, rtol=0, atol=1e-12)

    # and it is half the gradient of the undetached pairwise mean
    undetached = bases.detach().clone().requires_grad_(True)
    z = F.normalize(undetached, dim=-1)
    sim = F.relu(z @ z.transpose(1, 2)).square()
    ((sim.sum(dim=(1, 2)) - torch.diagonal(sim, dim1=1, dim2=2).sum(dim=1)) / 12).mean().backward()
    torch.testing.assert_close(got, 0.5 * undetached.grad, rtol=0, atol=1e-12)


def test_regularization_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        voco_regularization_loss(torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="batch"):
        voco_regularization_loss(torch.zeros(2, 3, 4, 5))
