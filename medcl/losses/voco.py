"""VoCo's losses (Wu et al., CVPR 2024; reference code ``Luffy03/VoCo``, ``models/voco_head.py``).

A random crop's embedding is compared with every base crop's embedding of the same volume,
``logit_qi = ReLU(cos(crop_q, base_i))`` (:func:`voco_logits`), and the logits are pulled towards the
crop's overlap labels ``y_qi`` (:func:`~medcl.objectives.voco_geometry.overlap_labels`, rows sum to 1):

* prediction (:func:`voco_prediction_loss`), per volume,
  ``pos = −Σ_{q,i} y_qi · log(1 − |y_qi − logit_qi|) / Σ_{q,i} y_qi`` (only bases with ``y > 0``
  contribute) and ``neg = mean_{(q,i): y_qi = 0} logit_qi²``; the loss is ``pos + neg`` averaged over
  the volumes of the batch;
* regularisation (:func:`voco_regularization_loss`), per volume, the mean over ordered pairs
  ``i ≠ j`` of base crops of ``ReLU(cos(b_i, stop_grad(b_j)))²``, averaged over the batch: it pushes the
  base crops of a volume apart.

Differences from the reference, all deliberate:

* the reference computes ``log(1 − |y − logit| + 1e-6)``; we compute ``log(max(1 − |y − logit|, eps))``
  (``eps = 1e-6``). Both keep the loss finite when ``y = 1`` and ``logit = 0`` (``1 − |y − logit| = 0``);
  the clamp never shifts a value that is not near 0 (the reference's ``+1e-6`` shifts every log by
  ``≈ 1e-6 / (1 − |y − logit|)``), and it bounds each term by ``−log(eps) ≈ 13.8`` with zero gradient
  there (a logit of 0 there is ``ReLU`` of a negative cosine, whose gradient is 0 anyway). The
  reference's denominators ``Σ y + 1e-6`` and ``#(y = 0) + 1e-6`` become exact counts, with 0 for a
  volume that has no ``y = 0`` entry;
* the reference regularises over unordered pairs ``i < j`` with ``b_j`` detached, so the gradient of a
  pair reaches only the earlier base and the last base never gets one. The *value* of our mean over
  ordered pairs ``i ≠ j`` is the same (the cosine is symmetric); its gradient reaches every base, and
  equals half the gradient of the undetached pairwise mean.

Conventions as in :mod:`medcl.losses`: half-precision inputs are upcast and autocast is off inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.losses._common import _float_input, _full_precision, _prepare

__all__ = [
    "VoCoPredictionLoss",
    "VoCoRegularizationLoss",
    "voco_logits",
    "voco_prediction_loss",
    "voco_prediction_loss_parts",
    "voco_regularization_loss",
]


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
        raise ConfigError(f"eps must be a number in (0, 1), got {eps!r}")


def _batched(x: Tensor, name: str, what: str) -> Tensor:
    """``x`` as ``(B, rows, cols)``: a 2-D input is one volume."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape ({what}) or (batch, {what}), got {tuple(x.shape)}")
    return x


def voco_logits(crops: Tensor, bases: Tensor) -> Tensor:
    """``ReLU`` of the cosine similarity of every random crop with every base crop of its volume.

    Args:
        crops: ``(k, D)`` or ``(B, k, D)`` embeddings of the random crops.
        bases: ``(m, D)`` or ``(B, m, D)`` embeddings of the base crops (same batch dims as ``crops``).

    Returns:
        ``(k, m)`` or ``(B, k, m)``, values in ``[0, 1]``: ``ReLU(cos(crops[..., q, :], bases[..., i, :]))``.
    """
    if crops.dim() not in (2, 3) or crops.dim() != bases.dim():
        raise ValueError(
            f"crops and bases must both be (rows, D) or (batch, rows, D), got {tuple(crops.shape)} and "
            f"{tuple(bases.shape)}"
        )
    if crops.shape[:-2] != bases.shape[:-2] or crops.shape[-1] != bases.shape[-1]:
        raise ValueError(
            f"crops {tuple(crops.shape)} and bases {tuple(bases.shape)} must share batch and embedding sizes"
        )
    with _full_precision(crops.device):
        crops = _prepare(crops, True, "crops")
        bases = _prepare(bases, True, "bases")
        return F.relu(crops @ bases.transpose(-1, -2))


def voco_prediction_loss_parts(logits: Tensor, labels: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """The two parts of VoCo's prediction loss, each averaged over the volumes of the batch.

    Per volume ``v``:
    ``pos_v = −Σ_{q,i} y_qi · log(max(1 − |y_qi − logit_qi|, eps)) / Σ_{q,i} y_qi`` (0 if ``Σ y = 0``) and
    ``neg_v = Σ_{y_qi = 0} logit_qi² / #{y_qi = 0}`` (0 if no label is 0).

    Args:
        logits: ``(k, m)`` or ``(B, k, m)``, e.g. from :func:`voco_logits`.
        labels: same shape, the overlap labels (non-negative; rows sum to 1).
        eps: lower clamp of ``1 − |y − logit|`` inside the log, in ``(0, 1)``.

    Returns:
        ``(pos, neg)``, two scalars.
    """
    _check_eps(eps)
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have one shape")
    with _full_precision(logits.device):
        logits = _batched(_float_input(logits, "logits"), "logits", "k, m")
        labels = _batched(labels, "labels", "k, m").to(device=logits.device, dtype=logits.dtype)
        closeness = torch.clamp(1.0 - (labels - logits).abs(), min=eps)
        pos_sum = -(labels * torch.log(closeness)).sum(dim=(1, 2))  # (B,)
        label_sum = labels.sum(dim=(1, 2))
        pos = pos_sum / label_sum.clamp(min=torch.finfo(labels.dtype).tiny)  # 0 / tiny = 0 when Σy = 0
        negative = labels == 0
        neg_sum = torch.where(negative, logits.square(), 0.0).sum(dim=(1, 2))
        neg = neg_sum / negative.sum(dim=(1, 2)).clamp(min=1)
        return pos.mean(), neg.mean()


def voco_prediction_loss(logits: Tensor, labels: Tensor, eps: float = 1e-6) -> Tensor:
    """VoCo's prediction loss ``mean_v (pos_v + neg_v)`` (see :func:`voco_prediction_loss_parts`).

    Args:
        logits: ``(k, m)`` or ``(B, k, m)``.
        labels: same shape.
        eps: lower clamp inside the log.

    Returns:
        Scalar tensor; 0 when ``logits == labels`` wherever ``labels > 0`` and ``logits == 0`` elsewhere.
    """
    pos, neg = voco_prediction_loss_parts(logits, labels, eps)
    return pos + neg


def voco_regularization_loss(bases: Tensor) -> Tensor:
    """Mean over ordered pairs ``i ≠ j`` of ``ReLU(cos(b_i, stop_grad(b_j)))²``, averaged over volumes.

    Args:
        bases: ``(m, D)`` or ``(B, m, D)`` base-crop embeddings, ``m >= 2``.

    Returns:
        Scalar tensor; 0 when the bases of each volume are pairwise orthogonal (or opposed).
    """
    bases = _batched(bases, "bases", "m, D")
    m = bases.shape[1]
    if m < 2:
        raise ValueError(
            f"the regulariser needs at least 2 base crops per volume, got shape {tuple(bases.shape)}"
        )
    with _full_precision(bases.device):
        online = _prepare(bases, True, "bases")
        fixed = online.detach()
        similarity = F.relu(online @ fixed.transpose(1, 2)).square()  # (B, m, m)
        off_diagonal = ~torch.eye(m, dtype=torch.bool, device=bases.device)
        per_volume = torch.where(off_diagonal, similarity, 0.0).sum(dim=(1, 2)) / (m * (m - 1))
        return per_volume.mean()


class VoCoPredictionLoss(nn.Module):
    """:func:`voco_prediction_loss` with its setting; ``forward(logits, labels) -> scalar``.

    Shapes: ``logits`` and ``labels`` ``(B, k, m)`` (or ``(k, m)``).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        _check_eps(eps)
        self.eps = eps

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return voco_prediction_loss(logits, labels, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps!r}"


class VoCoRegularizationLoss(nn.Module):
    """:func:`voco_regularization_loss`; ``forward(bases: (B, m, D) or (m, D)) -> scalar``."""

    def forward(self, bases: Tensor) -> Tensor:
        return voco_regularization_loss(bases)
