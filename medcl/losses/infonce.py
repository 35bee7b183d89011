"""InfoNCE-family contrastive losses: NT-Xent (SimCLR), InfoNCE (CLIP/MoCo), multi-positive InfoNCE, SupCon.

Conventions shared by every loss of :mod:`medcl.losses`:

* Similarities are one matrix product (never an ``(N, N, D)`` broadcast); every softmax over them is a
  ``cross_entropy`` / ``log_softmax`` / ``logsumexp``, never ``exp()`` divided by a sum, so a small
  temperature or large unnormalised embeddings cannot overflow.
* float16/bfloat16 inputs are upcast to float32 and autocast is switched off inside the loss: the
  similarities and the softmax run in float32 (a bf16 logit of magnitude 10 is only good to ±0.03).
  The result is float32 for half inputs, else the input dtype.
* Self-similarity is masked with ``-inf`` before the softmax.
* ``gather_distributed=True`` takes the candidates (negatives and positives) from every rank with the
  autograd-aware :func:`medcl.dist.gather`; the anchors stay local and the loss is the mean over local
  anchors, so DDP's gradient averaging reproduces one process on the whole batch (``tests/test_dist.py``).
  Outside ``torch.distributed`` it is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl import dist
from medcl.losses._common import (
    _check_matrix,
    _check_pair,
    _check_temperature,
    _full_precision,
    _mask_self,
    _prepare,
    _settings_repr,
)

__all__ = [
    "InfoNCELoss",
    "MultiPositiveInfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
    "info_nce_loss",
    "multi_positive_info_nce_loss",
    "nt_xent_loss",
    "supcon_loss",
]

# --- NT-Xent ---------------------------------------------------------------------------------------


def nt_xent_loss(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.5,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> Tensor:
    """SimCLR's NT-Xent loss (Chen et al., 2020).

    Each of the ``2B`` embeddings is an anchor; its positive is the other view of the same sample, its
    negatives are the other ``2B - 2`` embeddings (``2·B_total - 2`` with ``gather_distributed``: local
    anchors against the gathered candidates of all ranks, self excluded). The loss is the mean over the
    ``2B`` local anchors of ``-log softmax_{a ≠ i}(s_ia / τ)[pos(i)]`` with cosine similarity ``s``.
    When all embeddings are equal it is ``log(2B - 1)``.

    Args:
        z_a: ``(B, D)``, first view.
        z_b: ``(B, D)``, second view; row ``i`` is the same sample as ``z_a[i]``.
        temperature: softmax temperature τ > 0.
        normalize: L2-normalise the embeddings first (cosine similarity); ``False`` uses raw dot products.
        gather_distributed: take candidates from every rank (see :mod:`medcl.dist`).

    Returns:
        Scalar tensor.
    """
    _check_temperature(temperature)
    _check_pair(z_a, z_b, "z_a", "z_b")
    with _full_precision(z_a.device):
        z_a = _prepare(z_a, normalize, "z_a")
        z_b = _prepare(z_b, normalize, "z_b")
        n = z_a.shape[0]
        anchors = torch.cat([z_a, z_b])  # (2B, D)
        if gather_distributed and dist.is_distributed():
            sizes = dist.gather_sizes(n, z_a.device)
            both = dist.gather(torch.stack([z_a, z_b], dim=1), sizes)  # (B_total, 2, D), one collective
            m, offset = both.shape[0], dist.local_offset(n, sizes)
            candidates = torch.cat([both[:, 0], both[:, 1]])  # (2 B_total, D)
        else:
            m, offset = n, 0
            candidates = anchors
        logits = (anchors / temperature) @ candidates.T  # (2B, 2 B_total)
        local = torch.arange(n, device=logits.device) + offset
        self_cols = torch.cat([local, local + m])
        positive_cols = torch.cat([local + m, local])
        return F.cross_entropy(_mask_self(logits, self_cols), positive_cols)


# --- InfoNCE (query/key) ---------------------------------------------------------------------------


def info_nce_loss(
    query: Tensor,
    key: Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    symmetric: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """InfoNCE between paired queries and keys (CLIP / MoCo without a queue).

    Query ``i``'s positive is key ``i``; its negatives are all other keys (of every rank with
    ``gather_distributed``). ``symmetric=True`` averages the query→key and key→query directions (CLIP);
    used for momentum-encoder participant contrast and image-report alignment. The loss is
    ``mean_i -log softmax_j(s(q_i, k_j) / τ)[i]``.

    Args:
        query: ``(B, D)``.
        key: ``(B, D)``; row ``i`` is the positive of ``query[i]``. Detach it yourself for a momentum
            encoder.
        temperature: softmax temperature τ > 0.
        normalize: L2-normalise first (cosine similarity).
        symmetric: also contrast each key against all queries and average the two directions.
        gather_distributed: keys (and, if symmetric, queries) come from every rank.

    Returns:
        Scalar tensor.
    """
    _check_temperature(temperature)
    _check_pair(query, key, "query", "key")
    with _full_precision(query.device):
        query = _prepare(query, normalize, "query")
        key = _prepare(key, normalize, "key")
        n = query.shape[0]
        if gather_distributed and dist.is_distributed():
            sizes = dist.gather_sizes(n, query.device)
            offset = dist.local_offset(n, sizes)
            if symmetric:
                both = dist.gather(torch.stack([query, key], dim=1), sizes)  # (B_total, 2, D)
                all_query, all_key = both[:, 0], both[:, 1]
            else:
                all_query, all_key = query, dist.gather(key, sizes)
        else:
            offset, all_query, all_key = 0, query, key
        targets = torch.arange(n, device=query.device) + offset
        loss = F.cross_entropy((query / temperature) @ all_key.T, targets)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy((key / temperature) @ all_query.T, targets))
        return loss


# --- multi-positive InfoNCE (trial / patient / SupCon) ----------------------------------------------


def multi_positive_info_nce_loss(
    z: Tensor,
    ids: Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> Tensor:
    """InfoNCE with every other embedding of the same id as a positive (SupCon's ``L_out``).

    For anchor ``i`` the positives are ``P(i) = {j ≠ i : ids_j = ids_i}`` and

        ``loss_i = -1/|P(i)| Σ_{p ∈ P(i)} log softmax_{a ≠ i}(s_ia / τ)[p]``

    (Khosla et al., 2020, eq. 2). The loss is the mean over anchors that have at least one positive; if
    none has, it is a zero still connected to ``z`` (so backward and DDP work). With all embeddings
    equal it is ``log(N - 1)``. The one function serves trial-level and patient-level contrast (ids =
    trial or patient codes) and SupCon (ids = labels). Pass both views concatenated,
    ``z = cat(view_a, view_b)``, ``ids = cat(ids, ids)``, so each sample's other view is a positive.

    Relation to COMET (Wang et al., NeurIPS 2023, ``DL4mHealth/COMET`` ``models/losses.py``): COMET's
    trial/patient loss contrasts view 1 against view 2 only (``B`` candidates, not ``2B - 1``), takes
    positives only across views and leaves the same sample's other view out of the positives (it stays
    in the denominator), averages over positive *pairs* rather than per anchor, and computes
    ``log(exp(s)/Σ exp(s))`` directly on ``(T·C)``-flattened features normalised along time. Our formula
    is SupCon's: per-anchor averaging, both views as candidates, the other view a positive, cosine on
    the pooled embedding, log-sum-exp throughout. With one sample per id it reduces to NT-Xent.

    Args:
        z: ``(N, D)`` embeddings.
        ids: ``(N,)`` integer ids (trial, patient or class codes), on any device.
        temperature: softmax temperature τ > 0 (COMET: 0.1).
        normalize: L2-normalise first (cosine similarity).
        gather_distributed: local anchors against the embeddings and ids of every rank (self excluded).

    Returns:
        Scalar tensor.
    """
    _check_temperature(temperature)
    _check_matrix(z, "z")
    if ids.shape != (z.shape[0],):
        raise ValueError(
            f"ids must have shape ({z.shape[0]},) to match z {tuple(z.shape)}, got {tuple(ids.shape)}"
        )
    with _full_precision(z.device):
        z = _prepare(z, normalize, "z")
        ids = ids.to(z.device)
        n = z.shape[0]
        if gather_distributed and dist.is_distributed():
            sizes = dist.gather_sizes(n, z.device)
            candidates = dist.gather(z, sizes)  # (M, D)
            candidate_ids = dist.gather_no_grad(ids, sizes)  # (M,)
            offset = dist.local_offset(n, sizes)
        else:
            candidates, candidate_ids, offset = z, ids, 0
        rows = torch.arange(n, device=z.device)
        self_cols = rows + offset
        log_prob = F.log_softmax(_mask_self((z / temperature) @ candidates.T, self_cols), dim=1)  # (N, M)
        positives = ids[:, None] == candidate_ids[None, :]
        positives[rows, self_cols] = False
        n_positives = positives.sum(dim=1)
        # where(), not a product: the masked self entry is -inf and -inf * 0 would be NaN.
        per_anchor = -torch.where(positives, log_prob, 0.0).sum(dim=1) / n_positives.clamp(min=1)
        # Anchors without a positive contribute 0 to the sum and are left out of the count.
        return per_anchor.sum() / (n_positives > 0).sum().clamp(min=1)


def supcon_loss(
    features: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, ``L_out``): positives are the views of one label.

    The views are flattened and :func:`multi_positive_info_nce_loss` is applied with the labels as ids.
    SupCon's reference scales the loss by ``temperature / base_temperature`` (1 with its defaults); we
    leave that factor out.

    Args:
        features: ``(N, V, D)``, ``V`` views of each of ``N`` samples.
        labels: ``(N,)`` integer class labels.
        temperature: softmax temperature τ > 0.
        normalize: L2-normalise first.
        gather_distributed: candidates and labels from every rank.

    Returns:
        Scalar tensor.
    """
    if features.dim() != 3:
        raise ValueError(f"features must have shape (batch, views, dim), got {tuple(features.shape)}")
    n, n_views, dim = features.shape
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},) to match features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    return multi_positive_info_nce_loss(
        features.reshape(n * n_views, dim),
        labels.repeat_interleave(n_views),
        temperature=temperature,
        normalize=normalize,
        gather_distributed=gather_distributed,
    )


# --- nn.Module wrappers ----------------------------------------------------------------------------


class NTXentLoss(nn.Module):
    """:func:`nt_xent_loss` with its settings; ``forward(z_a: (B, D), z_b: (B, D)) -> scalar``."""

    def __init__(
        self, temperature: float = 0.5, normalize: bool = True, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.normalize = normalize
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return nt_xent_loss(z_a, z_b, self.temperature, self.normalize, self.gather_distributed)

    def extra_repr(self) -> str:
        return _settings_repr(self, "temperature", "normalize", "gather_distributed")


class InfoNCELoss(nn.Module):
    """:func:`info_nce_loss` with its settings; ``forward(query: (B, D), key: (B, D)) -> scalar``."""

    def __init__(
        self,
        temperature: float = 0.1,
        normalize: bool = True,
        symmetric: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.normalize = normalize
        self.symmetric = symmetric
        self.gather_distributed = gather_distributed

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return info_nce_loss(
            query, key, self.temperature, self.normalize, self.symmetric, self.gather_distributed
        )

    def extra_repr(self) -> str:
        return _settings_repr(self, "temperature", "normalize", "symmetric", "gather_distributed")


class MultiPositiveInfoNCELoss(nn.Module):
    """:func:`multi_positive_info_nce_loss` with its settings; ``forward(z: (N, D), ids: (N,)) -> scalar``."""

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.normalize = normalize
        self.gather_distributed = gather_distributed

    def forward(self, z: Tensor, ids: Tensor) -> Tensor:
        return multi_positive_info_nce_loss(z, ids, self.temperature, self.normalize, self.gather_distributed)

    def extra_repr(self) -> str:
        return _settings_repr(self, "temperature", "normalize", "gather_distributed")


class SupConLoss(nn.Module):
    """:func:`supcon_loss` with its settings; ``forward(features: (N, V, D), labels: (N,)) -> scalar``."""

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.normalize = normalize
        self.gather_distributed = gather_distributed

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(features, labels, self.temperature, self.normalize, self.gather_distributed)

    def extra_repr(self) -> str:
        return _settings_repr(self, "temperature", "normalize", "gather_distributed")
