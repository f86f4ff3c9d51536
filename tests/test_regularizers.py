"""DAM regularizers: values on hand-made tensors, gradient directions, masking, and the weighted sum."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert

from nas.adapters.cost import module_cost
from nas.errors import ConfigError
from nas.search.regularizers import (
    REGULARIZERS,
    RegularizerContext,
    build_regularizer_loss,
    cell_mask,
    cell_param_matrix,
)
from search_spaces import build_search_space
from search_spaces.candidate import Candidate
from search_spaces.space import SearchSpace

# 2 layers × 2 types; cell (1, 1) is empty.
MASK = torch.tensor([[True, True], [True, False]])
PARAMS = torch.tensor([[10.0, 20.0], [30.0, 0.0]])


def context(**kwargs: object) -> RegularizerContext:
    return RegularizerContext(mask=MASK, cell_params=PARAMS, **kwargs)


def grad_of(name: str, keep: torch.Tensor, ctx: RegularizerContext) -> torch.Tensor:
    keep = keep.clone().requires_grad_(True)
    REGULARIZERS.get(name)(keep, ctx).backward()
    return keep.grad


def test_the_four_regularizers_are_registered() -> None:
    assert {"expected_budget", "zero_one", "entropy", "beta_decay"} <= set(REGULARIZERS.names())


def test_cell_mask_and_param_matrix_follow_the_space() -> None:
    space = SearchSpace(
        candidates=(Candidate("a", 0, "q", 4, 8), Candidate("b", 0, "v", 4, 4), Candidate("c", 1, "v", 2, 6)),
        layers=(0, 1), module_types=("q", "v"),
    )
    assert cell_mask(space).tolist() == [[True, True], [False, True]]
    assert cell_param_matrix(space, rank=2).tolist() == [[24.0, 16.0], [0.0, 16.0]]
    bert = build_search_space(tiny_bert(), "bert")
    params = cell_param_matrix(bert, rank=4)
    assert cell_mask(bert).all() and params.shape == bert.shape
    assert float(params.sum()) == sum(4 * (c.in_features + c.out_features) for c in bert)


@pytest.mark.parametrize(("operator", "args"), [
    ("sora", None), ("prolora", {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1}), ("lora", {}),
])
def test_cell_costs_price_the_searched_operator(operator: str, args: dict | None) -> None:
    bert = build_search_space(tiny_bert(), "bert")
    params = cell_param_matrix(bert, 4, operator, args)
    for candidate in bert:
        assert params[bert.coordinate(candidate.name)] == module_cost(candidate, operator, 4, args)
    ctx = RegularizerContext.from_space(bert, rank=4, operator=operator, operator_args=args)
    assert torch.equal(ctx.cell_params, params)


def test_context_from_space_matches_the_helpers() -> None:
    space = build_search_space(tiny_bert(), "bert")
    logits = torch.zeros(space.shape)
    ctx = RegularizerContext.from_space(space, rank=8, logits=logits, target_fraction=0.25)
    assert torch.equal(ctx.mask, cell_mask(space)) and torch.equal(ctx.cell_params, cell_param_matrix(space, 8))
    assert ctx.target_fraction == 0.25 and ctx.logits is logits


# --- values -----------------------------------------------------------------------------------------------------
KEEP = torch.tensor([[0.9, 0.2], [0.5, 0.7]])  # 0.7 sits in the empty cell


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize(
    ("name", "ctx", "expected"),
    [
        # modules: Σp = 1.6, target ρ·N = 0.5·3 = 1.5
        ("expected_budget", context(target_fraction=0.5), ((1.6 - 1.5) / 1.5) ** 2),
        # params: Σp·c = 9 + 4 + 15 = 28, target 40
        ("expected_budget", context(target_params=40.0), ((28 - 40) / 40) ** 2),
        ("zero_one", context(), -(0.4**2 + 0.3**2 + 0.0**2) / 3),
        ("entropy", context(), (binary_entropy(0.9) + binary_entropy(0.2) + binary_entropy(0.5)) / 3),
    ],
)
def test_values_on_a_hand_made_dam(name: str, ctx: RegularizerContext, expected: float) -> None:
    assert float(REGULARIZERS.get(name)(KEEP, ctx)) == pytest.approx(expected, rel=1e-6)


def test_beta_decay_is_the_mean_logsumexp_of_real_cells() -> None:
    one = torch.tensor([[0.0, 2.0], [-1.0, 50.0]])
    expected = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert float(REGULARIZERS.get("beta_decay")(KEEP, context(logits=one))) == pytest.approx(expected, rel=1e-6)
    two = torch.tensor([[[0.0, 0.0], [1.0, 3.0]], [[2.0, -1.0], [9.0, 9.0]]])
    lse = [math.log(2), math.log(math.e + math.e**3), math.log(math.e**2 + math.e**-1)]
    assert float(REGULARIZERS.get("beta_decay")(KEEP, context(logits=two))) == pytest.approx(sum(lse) / 3, rel=1e-6)
    # a trailing dimension of 1 is the single-logit case
    assert float(REGULARIZERS.get("beta_decay")(KEEP, context(logits=one[..., None]))) == pytest.approx(expected)


def test_beta_decay_without_logits_says_so() -> None:
    with pytest.raises(ValueError, match="logits"):
        REGULARIZERS.get("beta_decay")(KEEP, context())


def test_entropy_is_finite_at_zero_and_one() -> None:
    value = REGULARIZERS.get("entropy")(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), context())
    assert math.isfinite(float(value)) and float(value) < 1e-4


# --- gradient directions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_params", [False, True])
def test_expected_budget_pulls_toward_the_target(with_params: bool) -> None:
    ctx = context(target_params=40.0) if with_params else context(target_fraction=0.5)
    over = grad_of("expected_budget", torch.tensor([[0.9, 0.9], [0.9, 0.5]]), ctx)  # above target
    under = grad_of("expected_budget", torch.tensor([[0.1, 0.1], [0.1, 0.5]]), ctx)  # below target
    assert (over[MASK] > 0).all() and (under[MASK] < 0).all()
    assert over[1, 1] == 0 and under[1, 1] == 0


def test_zero_one_pushes_away_from_one_half() -> None:
    grad = grad_of("zero_one", torch.tensor([[0.8, 0.3], [0.6, 0.5]]), context())
    assert grad[0, 0] < 0 and grad[1, 0] < 0  # p > 0.5: descent raises p
    assert grad[0, 1] > 0  # p < 0.5: descent lowers p
    assert grad[1, 1] == 0


def test_entropy_pushes_toward_the_nearer_end() -> None:
    grad = grad_of("entropy", torch.tensor([[0.8, 0.3], [0.1, 0.4]]), context())
    assert grad[0, 0] < 0  # nearer 1: descent raises p
    assert grad[0, 1] > 0 and grad[1, 0] > 0  # nearer 0: descent lowers p
    assert grad[1, 1] == 0


@pytest.mark.parametrize("shape", [(2, 2), (2, 2, 2)])
def test_beta_decay_gradient_is_positive_on_every_real_logit(shape: tuple[int, ...]) -> None:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    REGULARIZERS.get("beta_decay")(KEEP, context(logits=logits)).backward()
    assert (logits.grad[MASK] > 0).all() and (logits.grad[1, 1] == 0).all()


# --- masking ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["expected_budget", "zero_one", "entropy", "beta_decay"])
@pytest.mark.parametrize("filler", [0.0, 1.0, 0.5, math.nan])
def test_empty_cells_do_not_count(name: str, filler: float) -> None:
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.0]])
    changed_keep, changed_logits = KEEP.clone(), logits.clone()
    changed_keep[1, 1] = filler
    changed_logits[1, 1] = filler * 100
    for ctx in (context(logits=logits), context(logits=logits, target_params=40.0)):
        base = REGULARIZERS.get(name)(KEEP, ctx)
        moved = REGULARIZERS.get(name)(changed_keep, RegularizerContext(MASK, PARAMS, changed_logits,
                                                                         ctx.target_fraction, ctx.target_params))
        assert float(moved) == pytest.approx(float(base), rel=1e-7)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        REGULARIZERS.get("zero_one")(torch.rand(3, 2), context())


# --- the weighted sum -------------------------------------------------------------------------------------------
def test_weighted_sum_and_logged_terms() -> None:
    ctx = context(logits=torch.tensor([[0.3, -1.0], [2.0, 0.0]]), target_fraction=0.5)
    weights = {"expected_budget": 2.0, "zero_one": 0.5, "entropy": 0.0, "beta_decay": 0.1}
    total, terms = build_regularizer_loss(weights)(KEEP, ctx)
    assert set(terms) == {"expected_budget", "zero_one", "beta_decay"}  # zero weight skipped
    for name in terms:
        assert terms[name] == pytest.approx(float(REGULARIZERS.get(name)(KEEP, ctx)))
    assert float(total) == pytest.approx(sum(weights[n] * terms[n] for n in terms))


def test_weighted_sum_is_differentiable_and_zero_when_empty() -> None:
    keep = KEEP.clone().requires_grad_(True)
    total, _ = build_regularizer_loss({"zero_one": 1.0, "entropy": 1.0})(keep, context())
    total.backward()
    assert keep.grad is not None and keep.grad[MASK].abs().sum() > 0
    total, terms = build_regularizer_loss({})(KEEP, context())
    assert float(total) == 0.0 and terms == {}


def test_unknown_regularizer_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="expected_budget.*zero_one|beta_decay.*zero_one"):
        build_regularizer_loss({"l1": 1.0})


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_bad_weight_is_rejected(weight: float) -> None:
    with pytest.raises(ConfigError, match="weight"):
        build_regularizer_loss({"entropy": weight})
