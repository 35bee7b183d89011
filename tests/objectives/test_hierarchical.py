"""HierarchicalContrast (COMET's four levels from one pair of views) against slow references written here.

The references are plain Python loops over anchors and time steps on float64 numbers, following the
formulas of the class docstring (TS2Vec's temporal/instance losses over the max-pool-by-2 pyramid; SupCon's
multi-positive InfoNCE on cosine similarities); they never call :mod:`medcl.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

import medcl.losses.ts2vec as ts2vec_module
import medcl.objectives.hierarchical as hierarchical_module
from medcl.configurable import instantiate_spec, module_spec
from medcl.data import contract
from medcl.errors import ConfigError
from medcl.objectives import EncodedViews, HierarchicalContrast
from medcl.training.pretrain import PretrainModule
from modalities.signals import TS2VecEncoder

LEVELS = ("observation", "sample", "trial", "patient")
Vector = list[float]
Series = list[list[Vector]]  # [sample][time] -> vector

# --------------------------------------------------------------------------------------------------
# slow references
# --------------------------------------------------------------------------------------------------


def _dot(a: Vector, b: Vector) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _pool_by_two(z: Series) -> Series:
    """Max over pairs of time steps, an odd last step dropped."""
    return [
        [[max(a, b) for a, b in zip(x[2 * k], x[2 * k + 1], strict=True)] for k in range(len(x) // 2)]
        for x in z
    ]


def _instance_ref(z1: Series, z2: Series) -> float:
    """TS2Vec instance loss at one scale: mean over the 2B·T anchors."""
    n, steps = len(z1), len(z1[0])
    if n == 1:
        return 0.0
    total, count = 0.0, 0
    for t in range(steps):
        column = [z1[i][t] for i in range(n)] + [z2[i][t] for i in range(n)]
        for i in range(2 * n):
            positive = (i + n) % (2 * n)
            logits = [_dot(column[i], column[j]) for j in range(2 * n) if j != i]
            total += _log_sum_exp(logits) - _dot(column[i], column[positive])
            count += 1
    return total / count


def _temporal_ref(z1: Series, z2: Series) -> float:
    """TS2Vec temporal loss at one scale: mean over the 2B·T anchors."""
    n, steps = len(z1), len(z1[0])
    if steps == 1:
        return 0.0
    total, count = 0.0, 0
    for b in range(n):
        row = z1[b] + z2[b]  # 2T vectors
        for t in range(2 * steps):
            positive = (t + steps) % (2 * steps)
            logits = [_dot(row[t], row[s]) for s in range(2 * steps) if s != t]
            total += _log_sum_exp(logits) - _dot(row[t], row[positive])
            count += 1
    return total / count


def pyramid_ref(z1: Series, z2: Series, temporal_unit: int = 0) -> tuple[float, float]:
    """``(sample, observation)``: TS2Vec's pyramid, both sums divided by the number of scales."""
    instance = temporal = 0.0
    depth = 0
    while len(z1[0]) > 1:
        instance += _instance_ref(z1, z2)
        if depth >= temporal_unit:
            temporal += _temporal_ref(z1, z2)
        depth += 1
        z1, z2 = _pool_by_two(z1), _pool_by_two(z2)
    instance += _instance_ref(z1, z2)  # the final T == 1 scale
    depth += 1
    return instance / depth, temporal / depth


def multi_positive_ref(
    pooled_a: list[Vector], pooled_b: list[Vector], ids: Sequence[int], tau: float
) -> float:
    """SupCon L_out on cat(a, b) with ids cat(ids, ids), cosine similarity over tau."""
    z = [list(v) for v in pooled_a] + [list(v) for v in pooled_b]
    z = [[x / math.sqrt(_dot(v, v)) for x in v] for v in z]
    labels = list(ids) + list(ids)
    total, anchors = 0.0, 0
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        normaliser = _log_sum_exp([_dot(z[i], z[a]) / tau for a in others])
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        total += sum(normaliser - _dot(z[i], z[p]) / tau for p in positives) / len(positives)
        anchors += 1
    return total / max(anchors, 1)


def reference_terms(
    features: Tensor, pooled: Tensor, trial: Sequence[int], patient: Sequence[int], tau: float, unit: int = 0
) -> dict[str, float]:
    f = features.tolist()
    sample, observation = pyramid_ref(f[0], f[1], unit)
    p = pooled.tolist()
    return {
        "observation": observation,
        "sample": sample,
        "trial": multi_positive_ref(p[0], p[1], trial, tau),
        "patient": multi_positive_ref(p[0], p[1], patient, tau),
    }


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------

#: (trial ids, patient ids): several samples per trial, several trials per patient, singletons, unsorted.
ID_LAYOUTS = {
    "2-trials-1-patient": ([0, 0, 1, 1], [0, 0, 0, 0]),
    "3-per-trial-mixed": ([3, 3, 3, 7, 9], [1, 1, 1, 1, 2]),
    "distinct-trials": ([0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2]),
    "shuffled": ([2, 0, 1, 3, 0, 2, 1, 3], [1, 0, 0, 1, 0, 1, 0, 1]),
}
SHAPES = [(1, 3), (2, 2), (7, 4), (16, 2), (9, 1)]  # (T, D)


def make_views(
    trial: Sequence[int], patient: Sequence[int], steps: int, dim: int, seed: int = 0, grad: bool = False
) -> EncodedViews:
    generator = torch.Generator().manual_seed(seed)
    n = len(trial)
    features = torch.randn(2, n, steps, dim, generator=generator, dtype=torch.float64)
    pooled = torch.randn(2, n, dim, generator=generator, dtype=torch.float64)
    return EncodedViews(
        pooled.requires_grad_(grad),
        features.requires_grad_(grad),
        torch.tensor(patient, dtype=torch.long),
        torch.tensor(trial, dtype=torch.long),
    )


def weights(**kwargs: float) -> dict[str, float]:
    return {f"{level}_weight": kwargs.get(level, 0.0) for level in LEVELS}


# --------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(ID_LAYOUTS))
@pytest.mark.parametrize(("steps", "dim"), SHAPES)
def test_each_level_equals_the_slow_reference(layout: str, steps: int, dim: int) -> None:
    trial, patient = ID_LAYOUTS[layout]
    views = make_views(trial, patient, steps, dim, seed=steps * 10 + dim)
    objective = HierarchicalContrast(temperature=0.2, gather_distributed=False)
    terms = objective(views)
    expected = reference_terms(views.features, views.pooled, trial, patient, tau=0.2)
    assert list(terms) == ["loss", *LEVELS]
    for level in LEVELS:
        assert terms[level].dtype == torch.float64
        torch.testing.assert_close(terms[level].item(), expected[level], rtol=0, atol=1e-10, msg=level)
    torch.testing.assert_close(terms["loss"].item(), 0.25 * sum(expected.values()), rtol=0, atol=1e-10)


@pytest.mark.parametrize("temporal_unit", [1, 2, 5])
def test_temporal_unit_starts_the_observation_level_deeper_in_the_pyramid(temporal_unit: int) -> None:
    trial, patient = ID_LAYOUTS["shuffled"]
    views = make_views(trial, patient, steps=16, dim=3, seed=temporal_unit)
    terms = HierarchicalContrast(temporal_unit=temporal_unit)(views)
    expected = reference_terms(views.features, views.pooled, trial, patient, tau=0.1, unit=temporal_unit)
    for level in LEVELS:
        torch.testing.assert_close(terms[level].item(), expected[level], rtol=0, atol=1e-10, msg=level)
    assert terms["observation"].item() != pytest.approx(
        reference_terms(views.features, views.pooled, trial, patient, tau=0.1)["observation"]
    )


@pytest.mark.parametrize(
    "level_weights",
    [
        {"observation": 0.1, "sample": 0.1, "trial": 0.7, "patient": 0.1},  # COMET's PTB-XL factors
        {"observation": 1.5, "sample": 0.0, "trial": 0.3, "patient": 2.0},
        {"observation": 0.0, "sample": 0.0, "trial": 1.0, "patient": 0.0},
        {"observation": 0.0, "sample": 0.4, "trial": 0.0, "patient": 0.0},
        {"observation": 0.2, "sample": 0.0, "trial": 0.0, "patient": 0.0},
    ],
)
def test_total_is_the_weighted_sum_and_disabled_levels_have_no_key(level_weights: dict[str, float]) -> None:
    trial, patient = ID_LAYOUTS["3-per-trial-mixed"]
    views = make_views(trial, patient, steps=7, dim=3, seed=1)
    terms = HierarchicalContrast(**weights(**level_weights))(views)
    expected = reference_terms(views.features, views.pooled, trial, patient, tau=0.1)
    enabled = [level for level in LEVELS if level_weights[level] > 0]
    assert list(terms) == ["loss", *enabled]
    total = sum(level_weights[level] * expected[level] for level in LEVELS if level_weights[level] > 0)
    torch.testing.assert_close(terms["loss"].item(), total, rtol=0, atol=1e-10)


def test_comet_defaults() -> None:
    objective = HierarchicalContrast()
    assert objective.weights == {level: 0.25 for level in LEVELS}
    assert objective.temperature == 0.1 and objective.temporal_unit == 0
    assert objective.needs_features is True
    assert objective.enabled_levels == LEVELS


# --------------------------------------------------------------------------------------------------
# disabled levels contribute nothing
# --------------------------------------------------------------------------------------------------


def loss_and_grads(objective: HierarchicalContrast, views: EncodedViews) -> tuple[Tensor, Tensor, Tensor]:
    features = views.features.detach().clone().requires_grad_(True)
    pooled = views.pooled.detach().clone().requires_grad_(True)
    loss = objective(EncodedViews(pooled, features, views.patient, views.trial))["loss"]
    loss.backward()
    zero_f = torch.zeros_like(features) if features.grad is None else features.grad
    zero_p = torch.zeros_like(pooled) if pooled.grad is None else pooled.grad
    return loss.detach(), zero_f, zero_p


@pytest.mark.parametrize("level", ["trial", "patient"])
def test_an_id_level_with_weight_zero_ignores_its_ids(level: str) -> None:
    trial, patient = ID_LAYOUTS["shuffled"]
    views = make_views(trial, patient, steps=6, dim=3, seed=3)
    scrambled_ids = torch.tensor([5, 5, 5, 5, 6, 6, 7, 7])
    changed = EncodedViews(
        views.pooled,
        views.features,
        scrambled_ids if level == "patient" else views.patient,
        scrambled_ids if level == "trial" else views.trial,
    )
    on = HierarchicalContrast()
    off = HierarchicalContrast(**{f"{level}_weight": 0.0})
    assert level not in off(views)

    # With the level on, the change of ids does change the loss (so the check below can fail) ...
    assert not torch.equal(loss_and_grads(on, views)[0], loss_and_grads(on, changed)[0])
    # ... with it off, neither the loss nor any gradient moves.
    for before, after in zip(loss_and_grads(off, views), loss_and_grads(off, changed), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_without_the_ts2vec_levels_the_features_get_no_gradient_and_vice_versa() -> None:
    trial, patient = ID_LAYOUTS["distinct-trials"]
    views = make_views(trial, patient, steps=5, dim=2, seed=4, grad=True)
    HierarchicalContrast(observation_weight=0.0, sample_weight=0.0)(views)["loss"].backward()
    assert views.features.grad is None and views.pooled.grad.abs().sum() > 0

    views = make_views(trial, patient, steps=5, dim=2, seed=4, grad=True)
    HierarchicalContrast(trial_weight=0.0, patient_weight=0.0)(views)["loss"].backward()
    assert views.pooled.grad is None and views.features.grad.abs().sum() > 0


@pytest.mark.parametrize("level", LEVELS)
def test_a_zero_weight_removes_exactly_its_weighted_term_and_gradient(level: str) -> None:
    trial, patient = ID_LAYOUTS["3-per-trial-mixed"]
    views = make_views(trial, patient, steps=9, dim=3, seed=5)
    full = {"observation": 0.3, "sample": 0.6, "trial": 0.2, "patient": 0.4}
    without = {**full, level: 0.0}
    only = {name: (1.0 if name == level else 0.0) for name in LEVELS}
    loss_full, *grads_full = loss_and_grads(HierarchicalContrast(**weights(**full)), views)
    loss_without, *grads_without = loss_and_grads(HierarchicalContrast(**weights(**without)), views)
    loss_only, *grads_only = loss_and_grads(HierarchicalContrast(**weights(**only)), views)
    torch.testing.assert_close(loss_without, loss_full - full[level] * loss_only, rtol=0, atol=1e-12)
    used = grads_only[0] if level in ("observation", "sample") else grads_only[1]  # features / pooled
    assert used.abs().sum() > 0
    for g_without, g_full, g_only in zip(grads_without, grads_full, grads_only, strict=True):
        torch.testing.assert_close(g_without, g_full - full[level] * g_only, rtol=0, atol=1e-12)


def test_disabled_ts2vec_terms_are_not_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    trial, patient = ID_LAYOUTS["shuffled"]
    views = make_views(trial, patient, steps=8, dim=3, seed=6)

    def forbidden(*args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("a disabled level was computed")

    with monkeypatch.context() as patch:
        patch.setattr(ts2vec_module, "_temporal_term", forbidden)
        terms = HierarchicalContrast(observation_weight=0.0)(views)
        expected = reference_terms(views.features, views.pooled, trial, patient, tau=0.1)
        torch.testing.assert_close(terms["sample"].item(), expected["sample"], rtol=0, atol=1e-10)
    with monkeypatch.context() as patch:
        patch.setattr(ts2vec_module, "_instance_term", forbidden)
        terms = HierarchicalContrast(sample_weight=0.0)(views)
        torch.testing.assert_close(terms["observation"].item(), expected["observation"], rtol=0, atol=1e-10)
    with monkeypatch.context() as patch:
        patch.setattr(hierarchical_module, "ts2vec_pyramid_losses", forbidden)
        HierarchicalContrast(observation_weight=0.0, sample_weight=0.0)(views)

    calls: list[Tensor] = []
    original = hierarchical_module.multi_positive_info_nce_loss

    def counting(z: Tensor, ids: Tensor, **kwargs: Any) -> Tensor:
        calls.append(ids)
        return original(z, ids, **kwargs)

    monkeypatch.setattr(hierarchical_module, "multi_positive_info_nce_loss", counting)
    HierarchicalContrast(patient_weight=0.0)(views)
    assert len(calls) == 1 and torch.equal(calls[0], torch.cat([views.trial, views.trial]))


# --------------------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------------------


def nt_xent_closed_form(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent written out: -log softmax over the 2B - 1 others at the other view."""
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    logits = z @ z.T / tau
    logits.fill_diagonal_(float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(2 * n), positive]).mean()


@pytest.mark.parametrize(("n", "tau"), [(2, 0.1), (5, 0.5), (9, 0.07)])
def test_with_distinct_ids_the_trial_level_is_nt_xent(n: int, tau: float) -> None:
    ids = list(range(n))
    views = make_views(ids, ids, steps=3, dim=4, seed=n)
    terms = HierarchicalContrast(temperature=tau)(views)
    expected = nt_xent_closed_form(views.pooled[0], views.pooled[1], tau)
    torch.testing.assert_close(terms["trial"], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["patient"], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_equal_embeddings_give_log_2b_minus_1_for_distinct_ids(n: int) -> None:
    ids = list(range(n))
    views = make_views(ids, ids, steps=4, dim=3)
    views.pooled = torch.ones(2, n, 3, dtype=torch.float64) * 0.7
    terms = HierarchicalContrast(temperature=0.1)(views)
    expected = math.log(2 * n - 1) if n > 1 else 0.0
    torch.testing.assert_close(terms["trial"].item(), expected, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# gradients, settings, shapes
# --------------------------------------------------------------------------------------------------


def test_gradcheck() -> None:
    trial, patient = [0, 0, 1], [0, 0, 0]
    views = make_views(trial, patient, steps=5, dim=2, seed=7, grad=True)
    objective = HierarchicalContrast(
        observation_weight=0.3, sample_weight=0.5, trial_weight=0.7, patient_weight=0.2, temperature=0.5
    )

    def total(pooled: Tensor, features: Tensor) -> Tensor:
        return objective(EncodedViews(pooled, features, views.patient, views.trial))["loss"]

    assert torch.autograd.gradcheck(total, (views.pooled, views.features), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"observation_weight": -0.1}, "observation_weight"),
        ({"sample_weight": float("nan")}, "sample_weight"),
        ({"trial_weight": float("inf")}, "trial_weight"),
        ({"patient_weight": "0.5"}, "patient_weight"),
        ({"patient_weight": True}, "patient_weight"),
        (weights(), "at least one level"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temporal_unit": -1}, "temporal_unit"),
        ({"temporal_unit": 1.5}, "temporal_unit"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HierarchicalContrast(**kwargs)


@pytest.mark.parametrize("n_views", [1, 3])
def test_exactly_two_views(n_views: int) -> None:
    pooled = torch.randn(n_views, 4, 3)
    features = torch.randn(n_views, 4, 5, 3)
    ids = torch.arange(4)
    with pytest.raises(ConfigError, match="exactly 2 views"):
        HierarchicalContrast()(EncodedViews(pooled, features, ids, ids))


def test_features_are_required() -> None:
    ids = torch.arange(4)
    with pytest.raises(ConfigError, match="time-resolved features"):
        HierarchicalContrast()(EncodedViews(torch.randn(2, 4, 3), None, ids, ids))


def test_checkpoint_spec_rebuilds_the_objective() -> None:
    objective = HierarchicalContrast(observation_weight=0.1, trial_weight=0.7, temporal_unit=1)
    spec = module_spec(objective)
    assert spec is not None and spec["class_path"] == "medcl.objectives.hierarchical.HierarchicalContrast"
    rebuilt = instantiate_spec(spec)
    assert isinstance(rebuilt, HierarchicalContrast) and isinstance(rebuilt, torch.nn.Module)
    assert rebuilt.weights == objective.weights and rebuilt.temporal_unit == 1


# --------------------------------------------------------------------------------------------------
# integration: one encoder call per step
# --------------------------------------------------------------------------------------------------


def counted(encoder: TS2VecEncoder) -> list[tuple[int, ...]]:
    """Wrap ``encoder.forward_features`` to record the shape of every input it is called with."""
    shapes: list[tuple[int, ...]] = []
    original: Callable[..., Tensor] = encoder.forward_features

    def wrapper(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        shapes.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    encoder.forward_features = wrapper  # type: ignore[method-assign]
    return shapes


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_pretrain_step_encodes_both_views_in_one_call_and_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    n, channels, steps = 6, 3, 40
    encoder = TS2VecEncoder(channels, hidden_dims=8, output_dims=16, depth=2)
    model = PretrainModule(encoder, HierarchicalContrast())
    shapes = counted(encoder)
    batch = {
        contract.VIEWS: torch.randn(n, 2, channels, steps),
        contract.PATIENT: torch.tensor([0, 0, 0, 0, 1, 1]),
        contract.TRIAL: torch.tensor([0, 0, 1, 1, 2, 2]),
        contract.N_SKIPPED: 0,
    }
    loss = model.training_step(batch, 0)
    assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)
    assert shapes == [(2 * n, channels, steps)]  # one call on the 2B views: 2 passes' worth, not 8
    loss.backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert encoder.input_fc.weight.grad.abs().sum() > 0

    # The single call sees view 0 of every sample, then view 1, and the step's loss is the objective's.
    model.eval()
    with torch.no_grad():
        features = encoder.forward_features(
            batch[contract.VIEWS].transpose(0, 1).reshape(2 * n, channels, steps)
        )
        features = features.reshape(2, n, steps, -1)
        expected = model.objective(
            EncodedViews(features.amax(dim=2), features, batch[contract.PATIENT], batch[contract.TRIAL])
        )["loss"]
        actual = model._step(batch, "val")
    torch.testing.assert_close(actual, expected)
