"""Tests of the gaze term (medcl.losses.gaze) against a slow loop reference, closed forms and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon as scipy_js

from medcl.errors import ConfigError
from medcl.losses import (
    GazeAlignmentLoss,
    gaze_alignment_loss,
    gaze_alignment_loss_terms,
    jensen_shannon,
    pool_heatmaps_to_patches,
)

LOG2 = math.log(2.0)

# --- slow reference: explicit loops over images, sentences and patches, in Python floats -------------


def _ref_topk(values: list[float], ratio: float) -> list[float] | None:
    """CoGaze's make_dynamic_mask + renormalisation, ties at the k-th value all kept."""
    gazed = [x for x in values if x > 1e-8]
    k = max(1, math.floor(len(gazed) * ratio))
    if not gazed:
        return None
    kth = sorted(gazed, reverse=True)[k - 1]
    kept = [x if (x > 1e-8 and x >= kth) else 0.0 for x in values]
    total = sum(kept)
    return [x / total for x in kept] if total > 0 else None


def _ref_softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    z = sum(e)
    return [x / z for x in e]


def _ref_js(p: list[float], q: list[float]) -> float:
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        m = 0.5 * (pi + qi)
        if pi > 0:
            total += 0.5 * pi * math.log(pi / m)
        if qi > 0:
            total += 0.5 * qi * math.log(qi / m)
    return total


def reference_terms(
    sent: torch.Tensor,
    index: torch.Tensor,
    patches: torch.Tensor,
    heat: torch.Tensor,
    has_gaze: torch.Tensor,
    level: str,
    tau: float,
    ratio: float,
    normalize: bool = True,
) -> tuple[float, float]:
    t = sent.detach().double().tolist()
    v = patches.detach().double().tolist()
    h = heat.detach().double().tolist()
    idx = index.tolist()

    def unit(x: list[float]) -> list[float]:
        n = math.sqrt(sum(a * a for a in x))
        return [a / n for a in x] if normalize else x

    t2i_images, i2t_images = [], []
    for b in range(len(v)):
        sentences = [s for s in range(len(t)) if idx[s] == b]
        if not bool(has_gaze[b]) or not sentences:
            continue
        vb = [unit(p) for p in v[b]]
        logits = [
            [sum(x * y for x, y in zip(unit(t[s]), vj, strict=True)) / tau for vj in vb] for s in sentences
        ]
        target = [h[b] if level == "image" else h[s] for s in sentences]
        rows = []
        for r in range(len(sentences)):
            p = _ref_topk(target[r], ratio)
            if p is not None:
                rows.append(_ref_js(p, _ref_softmax(logits[r])))
        t2i_images.append(sum(rows) / len(rows) if rows else 0.0)
        cols = []
        for j in range(len(vb)):
            p = _ref_topk([target[r][j] for r in range(len(sentences))], ratio)
            if p is not None:
                cols.append(_ref_js(p, _ref_softmax([logits[r][j] for r in range(len(sentences))])))
        i2t_images.append(sum(cols) / len(cols) if cols else 0.0)
    if not t2i_images:
        return 0.0, 0.0
    return sum(t2i_images) / len(t2i_images), sum(i2t_images) / len(i2t_images)


def _batch(
    seed: int, n_sent: int, batch: int, n_patch: int, dim: int, level: str
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sent = torch.randn(n_sent, dim, generator=g, dtype=torch.float64)
    patches = torch.randn(batch, n_patch, dim, generator=g, dtype=torch.float64)
    index = torch.randint(0, batch, (n_sent,), generator=g)
    rows = batch if level == "image" else n_sent
    heat = torch.rand(rows, n_patch, generator=g, dtype=torch.float64) ** 3
    heat[heat < 0.05] = 0.0  # some ungazed patches
    return sent, index, patches, heat


# --- against the reference -------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["image", "sentence"])
@pytest.mark.parametrize(
    ("seed", "n_sent", "batch", "n_patch", "dim", "tau", "ratio"),
    [
        (0, 9, 3, 8, 5, 0.07, 0.25),
        (1, 12, 4, 16, 6, 0.5, 0.25),
        (2, 5, 5, 9, 4, 0.1, 0.5),  # some images have no sentence
        (3, 10, 2, 12, 3, 1.0, 1.0),
    ],
)
def test_matches_loop_reference(
    level: str, seed: int, n_sent: int, batch: int, n_patch: int, dim: int, tau: float, ratio: float
) -> None:
    sent, index, patches, heat = _batch(seed, n_sent, batch, n_patch, dim, level)
    has_gaze = torch.ones(batch, dtype=torch.bool)
    has_gaze[seed % batch] = False
    terms = gaze_alignment_loss_terms(
        sent, index, patches, heat, has_gaze, heatmap_level=level, temperature=tau, topk_ratio=ratio
    )
    ref_t2i, ref_i2t = reference_terms(sent, index, patches, heat, has_gaze, level, tau, ratio)
    assert ref_t2i > 0 and ref_i2t > 0
    assert terms.text_to_image.item() == pytest.approx(ref_t2i, abs=1e-10, rel=0)
    assert terms.image_to_text.item() == pytest.approx(ref_i2t, abs=1e-10, rel=0)
    loss = gaze_alignment_loss(
        sent,
        index,
        patches,
        heat,
        has_gaze,
        heatmap_level=level,
        temperature=tau,
        topk_ratio=ratio,
        weight_text_to_image=0.3,
        weight_image_to_text=0.6,
    )
    assert loss.item() == pytest.approx(0.3 * ref_t2i + 0.6 * ref_i2t, abs=1e-10, rel=0)


def test_matches_reference_without_normalisation() -> None:
    sent, index, patches, heat = _batch(7, 8, 3, 10, 4, "sentence")
    has_gaze = torch.ones(3, dtype=torch.bool)
    terms = gaze_alignment_loss_terms(
        sent * 0.3, index, patches, heat, has_gaze, heatmap_level="sentence", temperature=0.2, normalize=False
    )
    ref = reference_terms(sent * 0.3, index, patches, heat, has_gaze, "sentence", 0.2, 0.25, normalize=False)
    assert terms.text_to_image.item() == pytest.approx(ref[0], abs=1e-10, rel=0)
    assert terms.image_to_text.item() == pytest.approx(ref[1], abs=1e-10, rel=0)


def test_default_weights_are_cogaze_0_2_text_to_image_0_8_image_to_text() -> None:
    sent, index, patches, heat = _batch(4, 9, 3, 8, 5, "sentence")
    terms = gaze_alignment_loss_terms(sent, index, patches, heat, heatmap_level="sentence")
    loss = gaze_alignment_loss(sent, index, patches, heat, heatmap_level="sentence")
    assert terms.text_to_image.item() != pytest.approx(terms.image_to_text.item(), abs=1e-3)
    expected = 0.2 * terms.text_to_image + 0.8 * terms.image_to_text
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


# --- closed forms ------------------------------------------------------------------------------------


def test_jensen_shannon_function_matches_scipy_and_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 7, generator=g, dtype=torch.float64)
    p[:, :2] = 0.0
    p /= p.sum(1, keepdim=True)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64)
    js = jensen_shannon(torch.log_softmax(logits, 1), p)
    q = torch.softmax(logits, 1)
    expected = [scipy_js(p[i].numpy(), q[i].numpy()) ** 2 for i in range(6)]  # scipy: sqrt(JS), nats
    np.testing.assert_allclose(js.numpy(), expected, atol=1e-12, rtol=0)
    same = jensen_shannon(torch.log(q), q)
    np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-15)
    one_hot_a = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    one_hot_b = torch.log(torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))  # log q = -inf off support
    assert jensen_shannon(one_hot_b, one_hot_a).item() == pytest.approx(LOG2, abs=1e-15)
    # zero probabilities (-inf log q, 0 p) and non-members keep the gradient finite
    log_q = torch.tensor([[0.0, float("-inf"), -50.0, 3.0]], dtype=torch.float64, requires_grad=True)
    member = torch.tensor([[True, True, True, False]])
    p2 = torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    value = jensen_shannon(log_q, p2, member)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(log_q.grad).all()
    assert log_q.grad[0, 1] == 0 and log_q.grad[0, 3] == 0


def test_identical_distributions_give_zero_both_directions() -> None:
    # logits l[s, j] = a_s + b_j (sentence [a_s, 1], patch [1, b_j], dot product, τ = 1): the per-sentence
    # heatmap h[s, j] ∝ exp(a_s + b_j) is then, row-wise, softmax_j(l) and, column-wise, softmax_s(l).
    a = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=torch.float64)
    b = torch.tensor([[0.5, -0.4, 1.5, 0.0, -2.0], [1.0, 0.2, -0.3, 0.7, 0.1]], dtype=torch.float64)
    index = torch.tensor([0, 1, 0, 1])
    sent = torch.stack([a, torch.ones_like(a)], dim=1)
    patches = torch.stack([torch.ones_like(b), b], dim=2)  # (2, 5, 2)
    heat = torch.exp(a[:, None] + b[index])  # (S, P)
    terms = gaze_alignment_loss_terms(
        sent, index, patches, heat, heatmap_level="sentence", temperature=1.0, topk_ratio=1.0, normalize=False
    )
    assert abs(terms.text_to_image.item()) < 1e-14
    assert abs(terms.image_to_text.item()) < 1e-14
    # and not by accident: a heatmap that does not factorise gives a positive value in both directions
    other = gaze_alignment_loss_terms(
        sent,
        index,
        patches,
        heat * torch.rand(heat.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        heatmap_level="sentence",
        temperature=1.0,
        topk_ratio=1.0,
        normalize=False,
    )
    assert other.text_to_image.item() > 1e-3 and other.image_to_text.item() > 1e-3


def test_disjoint_support_gives_log2() -> None:
    # one image, two sentences; sentence 0 looked at patch 0 only, sentence 1 at nothing.
    # sentence 0 attends to patch 1 (q one-hot off its gaze): text→image JS = log 2.
    # patch 0 is attended by sentence 1 only, gazed by sentence 0 only: image→text JS = log 2.
    sent = torch.tensor([[0.0, 2000.0], [1000.0, 0.0]], dtype=torch.float64)
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    heat = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    index = torch.tensor([0, 0])
    terms = gaze_alignment_loss_terms(
        sent, index, patches, heat, heatmap_level="sentence", temperature=1.0, normalize=False
    )
    assert terms.text_to_image.item() == pytest.approx(LOG2, abs=1e-12)
    assert terms.image_to_text.item() == pytest.approx(LOG2, abs=1e-12)
    loss = gaze_alignment_loss(
        sent, index, patches, heat, heatmap_level="sentence", temperature=1.0, normalize=False
    )
    assert loss.item() == pytest.approx(LOG2, abs=1e-12)


def test_single_sentence_image_level_only_text_to_image_counts() -> None:
    sent = torch.tensor([[1000.0, 0.0]], dtype=torch.float64)
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    heat = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)  # gaze on patch 1, attention on 0
    index = torch.tensor([0])
    terms = gaze_alignment_loss_terms(sent, index, patches, heat, temperature=1.0, normalize=False)
    assert terms.text_to_image.item() == pytest.approx(LOG2, abs=1e-12)
    assert terms.image_to_text.item() == pytest.approx(0.0, abs=1e-15)  # one sentence: both sides are 1
    loss = gaze_alignment_loss(sent, index, patches, heat, temperature=1.0, normalize=False)
    assert loss.item() == pytest.approx(0.2 * LOG2, abs=1e-12)


def test_topk_keeps_the_top_quarter_of_gazed_patches() -> None:
    # 8 gazed patches of 10: k = floor(8 / 4) = 2; the target is uniform on the two largest, and the loss
    # equals the JS against exactly that distribution.
    heat = torch.tensor([[0.0, 0.05, 0.1, 0.3, 0.02, 0.2, 0.0, 0.15, 0.08, 0.1]], dtype=torch.float64)
    sent = torch.tensor([[0.4, -0.2, 0.9]], dtype=torch.float64)
    patches = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    terms = gaze_alignment_loss_terms(sent, torch.tensor([0]), patches, heat, temperature=0.5)
    logits = (
        torch.nn.functional.normalize(patches[0], dim=1) @ torch.nn.functional.normalize(sent[0], dim=0)
    ) / 0.5
    p = torch.zeros(1, 10, dtype=torch.float64)
    p[0, 3], p[0, 5] = 0.3 / 0.5, 0.2 / 0.5
    expected = jensen_shannon(torch.log_softmax(logits, 0)[None], p)
    assert terms.text_to_image.item() == pytest.approx(expected.item(), abs=1e-14)


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["image", "sentence"])
def test_gradcheck(level: str) -> None:
    sent, index, patches, heat = _batch(11, 5, 2, 6, 3, level)
    index = torch.tensor([0, 1, 0, 0, 1])
    sent.requires_grad_(True)
    patches.requires_grad_(True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def f(s: torch.Tensor, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaze_alignment_loss(s, index, p, heat, heatmap_level=level, temperature=t, topk_ratio=0.5)

    assert torch.autograd.gradcheck(f, (sent, patches, tau), eps=1e-6, atol=1e-8)


# --- has_gaze masking --------------------------------------------------------------------------------


def test_images_without_gaze_contribute_nothing() -> None:
    sent, index, patches, heat = _batch(5, 10, 3, 8, 4, "image")
    index = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 2, 1])
    has_gaze = torch.tensor([True, False, True])
    heat_garbage = heat.clone()
    heat_garbage[1] = float("nan")  # whatever a sample without gaze holds is ignored
    sent.requires_grad_(True)
    patches.requires_grad_(True)
    loss = gaze_alignment_loss(sent, index, patches, heat_garbage, has_gaze)
    loss.backward()
    assert torch.isfinite(loss)
    # the same as the batch without image 1 and its sentences
    keep = index != 1
    sub_index = torch.where(index[keep] == 2, 1, 0)
    sub = gaze_alignment_loss(sent[keep].detach(), sub_index, patches[[0, 2]].detach(), heat[[0, 2]])
    assert loss.item() == pytest.approx(sub.item(), abs=1e-12)
    assert torch.all(patches.grad[1] == 0)
    assert torch.all(sent.grad[index == 1] == 0)
    assert patches.grad[0].abs().sum() > 0 and sent.grad[index == 0].abs().sum() > 0


def test_no_gaze_in_batch_gives_a_connected_zero() -> None:
    sent, index, patches, heat = _batch(6, 6, 3, 5, 4, "image")
    sent.requires_grad_(True)
    patches.requires_grad_(True)
    loss = gaze_alignment_loss(sent, index, patches, heat, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert sent.grad is not None and torch.all(sent.grad == 0)
    assert patches.grad is not None and torch.all(patches.grad == 0)
    # no sentence at all: also a connected zero
    empty = gaze_alignment_loss(sent[:0], index[:0], patches, heat)
    assert empty.item() == 0.0 and empty.requires_grad


def test_gaze_images_without_sentences_are_not_counted() -> None:
    sent, _, patches, heat = _batch(8, 4, 3, 6, 4, "image")
    index = torch.tensor([0, 0, 2, 2])  # image 1 has gaze but no sentence
    loss = gaze_alignment_loss(sent, index, patches, heat)
    ref = reference_terms(sent, index, patches, heat, torch.ones(3, dtype=torch.bool), "image", 0.07, 0.25)
    assert loss.item() == pytest.approx(0.2 * ref[0] + 0.8 * ref[1], abs=1e-10)


# --- wrapper, precision, validation ------------------------------------------------------------------


def test_module_wrapper_and_learnt_temperature() -> None:
    sent, index, patches, heat = _batch(9, 7, 3, 6, 4, "image")
    fixed = GazeAlignmentLoss(temperature=0.1)
    learnt = GazeAlignmentLoss(temperature=0.1, learn_temperature=True).double()
    expected = gaze_alignment_loss(sent, index, patches, heat, temperature=0.1)
    assert fixed(sent, index, patches, heat).item() == pytest.approx(expected.item(), abs=1e-12)
    value = learnt(sent, index, patches, heat)
    assert learnt.logit_scale is not None
    tau = float(torch.exp(-learnt.logit_scale.detach()))
    assert tau == pytest.approx(0.1, rel=1e-6)
    same_tau = gaze_alignment_loss(sent, index, patches, heat, temperature=tau)
    assert value.item() == pytest.approx(same_tau.item(), abs=1e-12)
    value.backward()
    assert learnt.logit_scale.grad is not None
    assert learnt.logit_scale.grad.abs().item() > 0
    assert "topk_ratio=0.25" in repr(fixed)


def test_half_inputs_run_in_float32() -> None:
    sent, index, patches, heat = _batch(10, 8, 3, 6, 8, "image")
    full = gaze_alignment_loss(sent.float(), index, patches.float(), heat.float(), temperature=0.2)
    half = gaze_alignment_loss(sent.bfloat16(), index, patches.bfloat16(), heat.float(), temperature=0.2)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), abs=0.02)


def test_invalid_inputs_raise() -> None:
    sent, index, patches, heat = _batch(12, 4, 2, 5, 3, "image")
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        gaze_alignment_loss(sent, index, patches, heat, heatmap_level="sentence")
    with pytest.raises(ValueError, match="report_index values"):
        gaze_alignment_loss(sent, torch.tensor([0, 1, 2, 0]), patches, heat)
    with pytest.raises(ValueError, match="report_index must be an integer"):
        gaze_alignment_loss(sent, index.float(), patches, heat)
    with pytest.raises(ValueError, match="has_gaze"):
        gaze_alignment_loss(sent, index, patches, heat, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="topk_ratio"):
        gaze_alignment_loss(sent, index, patches, heat, topk_ratio=0.0)
    with pytest.raises(ConfigError, match="both 0"):
        gaze_alignment_loss(sent, index, patches, heat, weight_text_to_image=0, weight_image_to_text=0)
    with pytest.raises(ConfigError, match="temperature"):
        GazeAlignmentLoss(temperature=0.0)
    with pytest.raises(ConfigError, match="heatmap_level"):
        GazeAlignmentLoss(heatmap_level="patch")  # type: ignore[arg-type]


# --- pooling to the patch grid -----------------------------------------------------------------------


def test_pool_heatmaps_to_patches_block_sums_and_area_weights() -> None:
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 8, 12, generator=g, dtype=torch.float64)
    pooled = pool_heatmaps_to_patches(heat, (2, 3))
    blocks = heat.reshape(2, 2, 4, 3, 4).sum(dim=(2, 4)).reshape(2, 6)
    torch.testing.assert_close(pooled, blocks / blocks.sum(1, keepdim=True), atol=1e-14, rtol=0)
    # a 3-row image on a 2-row grid: the middle row is split half-half
    three = torch.tensor([[[1.0], [2.0], [4.0]]], dtype=torch.float64)
    torch.testing.assert_close(
        pool_heatmaps_to_patches(three, (2, 1)),
        torch.tensor([[2.0, 5.0]], dtype=torch.float64) / 7,
        atol=1e-14,
        rtol=0,
    )
    zero = pool_heatmaps_to_patches(torch.zeros(1, 4, 4), (2, 2))
    assert torch.all(zero == 0)
