"""Gaze term of gaze-guided image-report alignment (CoGaze; DESIGN.md §1.3).

For each sentence ``s`` of the report of image ``b``, the model's attention over the image's ``P``
patches is ``q_s = softmax_j(⟨t_s, v_bj⟩ / τ)`` (cosine similarity of the sentence embedding and the
patch embeddings); the radiologist's gaze pooled to the same patches (:func:`pool_heatmaps_to_patches`)
gives the target. The term is a Jensen-Shannon divergence between the two, computed in both directions
CoGaze defines, on the top-25 % gazed entries of the target:

* **text→image** (CoGaze's ``loss_t2i``, weight 0.2): one row per *sentence*, a distribution over the
  image's *patches*. ``p_s`` = the sentence's heatmap over patches restricted to its top-``k`` entries
  and renormalised; ``q_s`` = the softmax over *all* patches of the similarities (the softmax is not
  restricted, only the target is). ``JS(p_s, q_s)``, averaged over the image's sentences.
* **image→text** (``loss_i2t``, weight 0.8): the same similarity and heatmap matrices *transposed*: one
  row per *patch*, a distribution over the *sentences* of the image's report. ``p_j`` = the patch's
  heatmap values across the sentences, top-``k`` of them, renormalised; ``q_j = softmax_s(⟨t_s, v_bj⟩/τ)``
  over the report's sentences. ``JS(p_j, q_j)``, averaged over the image's patches.

``k = max(1, floor(topk_ratio · n))`` with ``n`` the number of entries of the row with a heatmap value
above ``1e-8``; rows whose restricted target has no mass are left out of their average. Per image,
``L_b = w_t2i · mean_s JS + w_i2t · mean_j JS``; the term is the mean of ``L_b`` over images with gaze
(``has_gaze``) and at least one sentence. ``JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m)``, ``m = ½(p + q)``, in nats:
0 for identical distributions, ``log 2`` for disjoint supports.

What we took from CoGaze (``mk-runner/CoGaze``, read from its repository: ``models/utils.py``
``bidirectional_js_loss_dynamic``, ``compute_js_loss_dynamic``, ``make_dynamic_mask``,
``js_divergence_official``; ``models/align_v0702_v0826.py`` ``Pretrain.soft_gaze_guidance``):

* Features: patch tokens without the ``[CLS]`` token and the sentence ``[CLS]`` feature, both
  L2-normalised; logits scaled by a learnable ``logit_scale_gaze`` initialised to ``log(1/0.07)``, i.e.
  temperature 0.07 (:class:`GazeAlignmentLoss` ``learn_temperature=True``).
* Top-k: ``make_dynamic_mask`` keeps ``max(1, int(topk_ratio · #(row > 1e-8)))`` entries per row with
  ``torch.topk``; ``topk_ratio = 0.25`` by default. The target is masked and renormalised, the
  prediction is a full ``softmax`` of the logits.
* Directions and weights: ``bidirectional_js_loss_dynamic(t2i_logits, t2i_heatmap, topk_ratio,
  i2t_weight=0.2)`` returns ``i2t_weight · loss_t2i + (1 - i2t_weight) · loss_i2t``: despite the
  parameter's name, 0.2 multiplies the text→image term and 0.8 the image→text term; this is the
  "0.2 text→image, 0.8 image→text" of DESIGN.md. We name the weights by the direction they multiply.
* Averaging: per image over its sentences (``soft_gaze_guidance`` loops over the images and takes
  ``sum(per_image) / len(per_image)``); within a direction, the mean over valid rows
  (``js.mean()``), ``0`` when an image has none.
* CoGaze's heatmaps are *per sentence* (gaze recorded while the sentence was dictated, REFLACX's
  timestamped transcripts) plus one for the whole transcript; ``heatmap_level="sentence"`` takes such
  ``(S, P)`` heatmaps. With one heatmap per image (``"image"``, e.g. annotation priors), every sentence
  of an image shares its image's heatmap, so the image→text target of each patch is *uniform* over the
  report's sentences: that direction then only asks each gazed patch to be equally similar to all
  sentences of its report. Keep that in mind before using the 0.8 default with image-level heatmaps.

Where we differ (deliberately): ties at the ``k``-th largest value are all kept (CoGaze's ``topk``
breaks ties arbitrarily, which makes the image→text target of image-level heatmaps depend on the
kernel); JS is computed from log-probabilities (``log_softmax`` and ``logaddexp``) instead of
``log(p + 1e-8)``; samples without gaze contribute nothing and a batch without any returns a zero
connected to the inputs (CoGaze skips the term at the batch level).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.losses._common import _check_temperature, _full_precision, _prepare, _settings_repr

__all__ = [
    "GazeAlignmentLoss",
    "GazeTerms",
    "gaze_alignment_loss",
    "gaze_alignment_loss_terms",
    "jensen_shannon",
    "pool_heatmaps_to_patches",
]

NONZERO_EPS: float = 1e-8
"""A heatmap entry above this counts as gazed when sizing the top-``k`` (CoGaze's ``eps``)."""

_LOG2 = math.log(2.0)


class GazeTerms(NamedTuple):
    """The two directions of the gaze term (scalars, each averaged over images with gaze)."""

    text_to_image: Tensor
    image_to_text: Tensor


def _check_fraction(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (0 < value <= 1):
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}")


def _check_weights(weight_text_to_image: float, weight_image_to_text: float) -> None:
    for value, name in (
        (weight_text_to_image, "weight_text_to_image"),
        (weight_image_to_text, "weight_image_to_text"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    if weight_text_to_image == 0 and weight_image_to_text == 0:
        raise ConfigError("weight_text_to_image and weight_image_to_text are both 0: the term would be void")


def jensen_shannon(log_q: Tensor, p: Tensor, member: Tensor | None = None) -> Tensor:
    """Row-wise Jensen-Shannon divergence ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = ½(p + q)``, in nats.

    Args:
        log_q: ``(R, N)`` log-probabilities of ``q`` (e.g. a ``log_softmax``); ``-inf`` is a zero
            probability; entries outside ``member`` are ignored.
        p: ``(R, N)`` probabilities (rows summing to 1 over ``member``; zeros allowed), no gradient needed.
        member: ``(R, N)`` bool, the support of each row's distributions; ``None``: all.

    Returns:
        ``(R,)``; finite, with finite gradients, even where ``p`` or ``q`` is 0.
    """
    if member is None:
        member = torch.ones_like(p, dtype=torch.bool)
    # every branch of every where() below is finite, so no NaN reaches a gradient
    on_q = member & (log_q > float("-inf"))
    on_p = member & (p > 0)
    either = on_p | on_q
    log_q = torch.where(on_q, log_q, torch.zeros_like(log_q))
    q = torch.where(on_q, log_q.exp(), torch.zeros_like(log_q))
    log_p = torch.log(torch.where(on_p, p, torch.ones_like(p)))
    neg_inf = torch.where(either, float("-inf"), 0.0).to(log_q.dtype)  # -inf where the other side has mass
    log_m = torch.logaddexp(torch.where(on_p, log_p, neg_inf), torch.where(on_q, log_q, neg_inf)) - _LOG2
    kl_pm = torch.where(on_p, p * (log_p - log_m), torch.zeros_like(p))
    kl_qm = torch.where(on_q, q * (log_q - log_m), torch.zeros_like(q))
    return 0.5 * (kl_pm + kl_qm).sum(dim=-1)


def _topk_target(target: Tensor, member: Tensor, topk_ratio: float) -> tuple[Tensor, Tensor]:
    """The target of each row restricted to its top-``k`` gazed entries and renormalised.

    Returns:
        ``p`` ``(R, N)`` (rows sum to 1 where valid, 0 elsewhere) and ``valid`` ``(R,)``.
    """
    t = torch.where(member, target, torch.zeros_like(target))
    gazed = t > NONZERO_EPS
    n_gazed = gazed.sum(dim=-1)
    k = torch.clamp(torch.floor(n_gazed.to(torch.float64) * topk_ratio).long(), min=1)
    kth = torch.sort(t, dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))
    keep = gazed & (t >= kth)
    kept = torch.where(keep, t, torch.zeros_like(t))
    mass = kept.sum(dim=-1)
    valid = mass > 0
    p = kept / torch.where(valid, mass, torch.ones_like(mass)).unsqueeze(-1)
    return p, valid


def _rows_js(logits: Tensor, target: Tensor, member: Tensor, topk_ratio: float) -> tuple[Tensor, Tensor]:
    """JS between ``softmax`` over ``member`` of each row of ``logits`` and its top-``k`` target.

    Returns:
        ``js`` ``(R,)`` and ``valid`` ``(R,)`` (a member and target mass after the top-``k``).
    """
    has_member = member.any(dim=-1, keepdim=True)
    masked = torch.where(member, logits, torch.full_like(logits, float("-inf")))
    masked = torch.where(has_member, masked, torch.zeros_like(logits))  # empty rows: no -inf-only softmax
    log_q = F.log_softmax(masked, dim=-1)
    p, valid = _topk_target(target, member, topk_ratio)
    return jensen_shannon(log_q, p.detach(), member), valid & has_member.squeeze(-1)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean over the last dim of ``values`` where ``valid``; 0 for rows with no valid entry."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=-1)
    return total / valid.sum(dim=-1).clamp(min=1).to(values.dtype)


def _check_inputs(
    sentence_embeddings: Tensor,
    report_index: Tensor,
    patch_embeddings: Tensor,
    heatmaps: Tensor,
    has_gaze: Tensor | None,
    heatmap_level: str,
) -> None:
    if sentence_embeddings.dim() != 2:
        raise ValueError(f"sentence_embeddings must be (S, D), got {tuple(sentence_embeddings.shape)}")
    if patch_embeddings.dim() != 3:
        raise ValueError(f"patch_embeddings must be (B, P, D), got {tuple(patch_embeddings.shape)}")
    n_sent, dim = sentence_embeddings.shape
    batch, n_patch, patch_dim = patch_embeddings.shape
    if patch_dim != dim:
        raise ValueError(f"embedding dims differ: sentences {dim}, patches {patch_dim}")
    if batch == 0 or n_patch == 0:
        raise ValueError(f"patch_embeddings is empty (shape {tuple(patch_embeddings.shape)})")
    if (
        report_index.shape != (n_sent,)
        or report_index.dtype in (torch.bool,)
        or report_index.is_floating_point()
    ):
        raise ValueError(
            f"report_index must be an integer tensor of shape ({n_sent},), got {report_index.dtype} "
            f"{tuple(report_index.shape)}"
        )
    if heatmap_level not in ("image", "sentence"):
        raise ConfigError(f"heatmap_level must be 'image' or 'sentence', got {heatmap_level!r}")
    rows = batch if heatmap_level == "image" else n_sent
    if heatmaps.shape != (rows, n_patch):
        raise ValueError(
            f"heatmaps must have shape ({rows}, {n_patch}) for heatmap_level={heatmap_level!r}, got "
            f"{tuple(heatmaps.shape)}"
        )
    if has_gaze is not None and has_gaze.shape != (batch,):
        raise ValueError(f"has_gaze must have shape ({batch},), got {tuple(has_gaze.shape)}")


def gaze_alignment_loss_terms(
    sentence_embeddings: Tensor,
    report_index: Tensor,
    patch_embeddings: Tensor,
    heatmaps: Tensor,
    has_gaze: Tensor | None = None,
    *,
    heatmap_level: Literal["image", "sentence"] = "image",
    temperature: float | Tensor = 0.07,
    topk_ratio: float = 0.25,
    normalize: bool = True,
) -> GazeTerms:
    """The text→image and image→text JS terms (module docstring), each a mean over images with gaze.

    Args:
        sentence_embeddings: ``(S, D)``, one row per report sentence (all reports of the batch).
        report_index: ``(S,)`` integer, the image (row of ``patch_embeddings``) each sentence belongs to.
        patch_embeddings: ``(B, P, D)`` patch tokens (no ``[CLS]``), ``P`` = the patch grid flattened
            row-major.
        heatmaps: ``(B, P)`` for ``heatmap_level="image"``, ``(S, P)`` for ``"sentence"``: gaze mass per
            patch (non-negative; any scale, each row is renormalised after the top-``k``). Rows of images
            without gaze are ignored, whatever they hold.
        has_gaze: ``(B,)`` bool, which images have a heatmap; ``None``: all.
        heatmap_level: one heatmap per image or per sentence (CoGaze's).
        temperature: τ > 0, a float or a scalar tensor (a learnable one); CoGaze starts at 0.07.
        topk_ratio: fraction of the gazed entries of each row kept in the target (CoGaze: 0.25).
        normalize: cosine similarity (L2-normalise the embeddings first), as CoGaze.

    Returns:
        :class:`GazeTerms`; both are zeros connected to the inputs when no image with gaze has a
        sentence. float32 for half inputs, else the input dtype.
    """
    _check_fraction(topk_ratio, "topk_ratio")
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    else:
        _check_temperature(temperature)
    _check_inputs(sentence_embeddings, report_index, patch_embeddings, heatmaps, has_gaze, heatmap_level)
    device = patch_embeddings.device
    batch, n_patch, _ = patch_embeddings.shape
    with _full_precision(device):
        t = _prepare(sentence_embeddings, normalize, "sentence_embeddings")
        v = _prepare(patch_embeddings, normalize, "patch_embeddings")
        dtype = v.dtype
        zero = (t.sum() + v.sum()) * 0.0
        if isinstance(temperature, Tensor):
            zero = zero + temperature.to(zero.dtype).sum() * 0.0  # a learnt τ gets a (zero) gradient too
        index = report_index.to(device=device, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
            raise ValueError(
                f"report_index values must be in [0, {batch}), got [{int(index.min())}, {int(index.max())}]"
            )
        gaze = (
            torch.ones(batch, dtype=torch.bool, device=device)
            if has_gaze is None
            else has_gaze.to(device=device, dtype=torch.bool)
        )
        counts = torch.bincount(index, minlength=batch)  # (B,) sentences per image
        counted = gaze & (counts > 0)
        n_counted = int(counted.sum())
        if n_counted == 0:
            return GazeTerms(zero, zero)

        # sentences padded per image: (B, S_max, D); rank of each sentence within its image
        n_max = int(counts.max())
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(index)
        rank[order] = torch.arange(index.numel(), device=device) - starts[index[order]]
        padded = t.new_zeros(batch, n_max, t.shape[1]).index_put((index, rank), t)
        member = torch.zeros(batch, n_max, dtype=torch.bool, device=device)
        member[index, rank] = True
        member &= gaze[:, None]  # images without gaze: no rows, no columns

        logits = torch.bmm(padded, v.transpose(1, 2)) / temperature  # (B, S_max, P)
        heat = heatmaps.to(device=device, dtype=dtype)
        if heatmap_level == "image":
            target = heat[:, None, :].expand(batch, n_max, n_patch)
        else:
            target = heat.new_zeros(batch, n_max, n_patch).index_put((index, rank), heat)
        target = torch.where(member[:, :, None], target, torch.zeros_like(target))

        # text→image: a row per sentence, over the P patches
        row_member = member[:, :, None].expand(batch, n_max, n_patch)
        js_t2i, valid_t2i = _rows_js(
            logits.reshape(-1, n_patch),
            target.reshape(-1, n_patch),
            row_member.reshape(-1, n_patch),
            topk_ratio,
        )
        per_image_t2i = _masked_mean(js_t2i.view(batch, n_max), valid_t2i.view(batch, n_max))

        # image→text: a row per patch, over the image's sentences
        col_member = member[:, None, :].expand(batch, n_patch, n_max)
        js_i2t, valid_i2t = _rows_js(
            logits.transpose(1, 2).reshape(-1, n_max),
            target.transpose(1, 2).reshape(-1, n_max),
            col_member.reshape(-1, n_max),
            topk_ratio,
        )
        per_image_i2t = _masked_mean(js_i2t.view(batch, n_patch), valid_i2t.view(batch, n_patch))

        def image_mean(per_image: Tensor) -> Tensor:
            return torch.where(counted, per_image, torch.zeros_like(per_image)).sum() / n_counted + zero

        return GazeTerms(image_mean(per_image_t2i), image_mean(per_image_i2t))


def gaze_alignment_loss(
    sentence_embeddings: Tensor,
    report_index: Tensor,
    patch_embeddings: Tensor,
    heatmaps: Tensor,
    has_gaze: Tensor | None = None,
    *,
    heatmap_level: Literal["image", "sentence"] = "image",
    temperature: float | Tensor = 0.07,
    topk_ratio: float = 0.25,
    weight_text_to_image: float = 0.2,
    weight_image_to_text: float = 0.8,
    normalize: bool = True,
) -> Tensor:
    """CoGaze's gaze term: ``w_t2i · text→image + w_i2t · image→text`` (module docstring).

    Arguments as :func:`gaze_alignment_loss_terms`, plus the two weights (CoGaze: 0.2 and 0.8).

    Returns:
        Scalar tensor; a zero connected to the inputs when no image with gaze has a sentence.
    """
    _check_weights(weight_text_to_image, weight_image_to_text)
    terms = gaze_alignment_loss_terms(
        sentence_embeddings,
        report_index,
        patch_embeddings,
        heatmaps,
        has_gaze,
        heatmap_level=heatmap_level,
        temperature=temperature,
        topk_ratio=topk_ratio,
        normalize=normalize,
    )
    return weight_text_to_image * terms.text_to_image + weight_image_to_text * terms.image_to_text


def _area_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n_out, n_in)`` overlap lengths of output cells ``[i, i+1]·n_in/n_out`` with input pixels."""
    edges = torch.arange(n_out + 1, dtype=torch.float64, device=device) * (n_in / n_out)
    j = torch.arange(n_in, dtype=torch.float64, device=device)[None, :]
    lo = torch.maximum(edges[:-1, None], j)
    hi = torch.minimum(edges[1:, None], j + 1)
    return (hi - lo).clamp(min=0).to(dtype)


def pool_heatmaps_to_patches(heatmaps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Pool ``(B, H, W)`` heatmaps to a ``(gh, gw)`` patch grid: the mass in each patch, per row
    renormalised to sum 1 (rows without mass stay 0), flattened row-major to ``(B, gh·gw)``.

    A patch is the cell ``[i·H/gh, (i+1)·H/gh] × [j·W/gw, (j+1)·W/gw]`` (exact block sums when ``H`` and
    ``W`` are multiples of the grid, area-weighted sums otherwise), the order is that of a ViT's
    patch tokens (MONAI ``PatchEmbeddingBlock``: ``flatten(2)`` over ``(h, w)``).

    Returns:
        ``(B, gh·gw)`` in the input's floating dtype (float32 for integer inputs).
    """
    if heatmaps.dim() != 3:
        raise ValueError(f"heatmaps must be (B, H, W), got {tuple(heatmaps.shape)}")
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    x = heatmaps if heatmaps.is_floating_point() else heatmaps.float()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    rows = _area_matrix(x.shape[1], gh, dtype, x.device)  # (gh, H)
    cols = _area_matrix(x.shape[2], gw, dtype, x.device)  # (gw, W)
    pooled = torch.einsum("ih,bhw,jw->bij", rows, x, cols).reshape(x.shape[0], gh * gw)
    mass = pooled.sum(dim=1, keepdim=True)
    return pooled / torch.where(mass > 0, mass, torch.ones_like(mass))


class GazeAlignmentLoss(nn.Module):
    """:func:`gaze_alignment_loss` with its settings; ``forward(sentence_embeddings: (S, D),
    report_index: (S,), patch_embeddings: (B, P, D), heatmaps: (B, P) or (S, P), has_gaze: (B,) | None)
    -> scalar``.

    ``learn_temperature=True`` holds CoGaze's learnable ``logit_scale = log(1/τ)`` (initialised from
    ``temperature``) as a parameter; the temperature used is ``exp(-logit_scale)``.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        topk_ratio: float = 0.25,
        weight_text_to_image: float = 0.2,
        weight_image_to_text: float = 0.8,
        heatmap_level: Literal["image", "sentence"] = "image",
        normalize: bool = True,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        _check_fraction(topk_ratio, "topk_ratio")
        _check_weights(weight_text_to_image, weight_image_to_text)
        if heatmap_level not in ("image", "sentence"):
            raise ConfigError(f"heatmap_level must be 'image' or 'sentence', got {heatmap_level!r}")
        self.temperature = temperature
        self.topk_ratio = topk_ratio
        self.weight_text_to_image = weight_text_to_image
        self.weight_image_to_text = weight_image_to_text
        self.heatmap_level = heatmap_level
        self.normalize = normalize
        self.learn_temperature = learn_temperature
        self.logit_scale = (
            nn.Parameter(torch.tensor(math.log(1.0 / temperature))) if learn_temperature else None
        )

    def current_temperature(self) -> float | Tensor:
        """The temperature in use (a tensor with a gradient when learnt)."""
        if self.logit_scale is None:
            return self.temperature
        return torch.exp(-self.logit_scale)

    def forward(
        self,
        sentence_embeddings: Tensor,
        report_index: Tensor,
        patch_embeddings: Tensor,
        heatmaps: Tensor,
        has_gaze: Tensor | None = None,
    ) -> Tensor:
        return gaze_alignment_loss(
            sentence_embeddings,
            report_index,
            patch_embeddings,
            heatmaps,
            has_gaze,
            heatmap_level=self.heatmap_level,
            temperature=self.current_temperature(),
            topk_ratio=self.topk_ratio,
            weight_text_to_image=self.weight_text_to_image,
            weight_image_to_text=self.weight_image_to_text,
            normalize=self.normalize,
        )

    def extra_repr(self) -> str:
        return _settings_repr(
            self,
            "temperature",
            "topk_ratio",
            "weight_text_to_image",
            "weight_image_to_text",
            "heatmap_level",
            "normalize",
            "learn_temperature",
        )
