"""Discretizers keep exactly ⌈ρN⌉ modules, break ties by search-space order, and reject bad ρ."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_bert

from nas.adapters.cost import module_cost
from nas.errors import ConfigError
from nas.search.discretizer import DISCRETIZERS, DiscretizeInput, build_discretizer, keep_count, top_k
from search_spaces import build_search_space
from search_spaces.candidate import Candidate
from search_spaces.space import SearchSpace


@pytest.mark.parametrize(
    ("rho", "total", "expected"),
    [(0.5, 36, 18), (0.25, 36, 9), (0.7, 10, 7), (0.3, 10, 3), (1.0, 36, 36), (0.01, 36, 1), (0.51, 36, 19),
     (1 / 3, 12, 4), (0.001, 5, 1)],
)
def test_keep_count_is_ceil_rho_n(rho: float, total: int, expected: int) -> None:
    assert keep_count(rho, total) == expected


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.01, math.nan])
def test_rho_outside_unit_interval_is_rejected(rho: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        keep_count(rho, 10)


@pytest.mark.parametrize("rho", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_global_topk_keeps_the_largest_scores(rho: float) -> None:
    space = build_search_space(tiny_bert(), "bert")
    names = list(space.names)
    scores = {name: (7 * i % 12) / 12 for i, name in enumerate(names)}  # a permutation of 0..11/12
    kept = build_discretizer({"name": "global_topk", "rho": rho})(DiscretizeInput(scores, space))
    k = math.ceil(rho * len(names))
    assert len(kept) == k
    threshold = sorted(scores.values(), reverse=True)[k - 1]
    assert all(scores[n] >= threshold for n in kept)
    assert kept == [n for n in names if n in kept]  # search-space order


def test_ties_go_to_the_earlier_module() -> None:
    order = ["a", "b", "c", "d"]
    assert top_k({"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.5}, order, 2) == ["a", "b"]
    assert top_k({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}, order, 3) == ["a", "b", "c"]


def test_unknown_discretizer_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="global_topk"):
        build_discretizer({"name": "nope"})


# --- helpers for the registered discretizers ----------------------------------------------------------------------
def hand_space(widths: list[list[tuple[int, int] | None]]) -> SearchSpace:
    """A space laid out as ``widths[layer][type]`` = (in, out), or None for an empty cell."""
    types = [f"t{j}" for j in range(len(widths[0]))]
    candidates = [Candidate(f"l{i}.{types[j]}", i, types[j], *w)
                  for i, row in enumerate(widths) for j, w in enumerate(row) if w is not None]
    return SearchSpace(candidates=tuple(candidates), layers=tuple(range(len(widths))), module_types=tuple(types))


def run(config: dict[str, object], scores: dict[str, float], space: SearchSpace, **extra: object) -> list[str]:
    return build_discretizer(config)(DiscretizeInput(scores, space, **extra))


def tiny_space_and_scores() -> tuple[SearchSpace, dict[str, float]]:
    space = build_search_space(tiny_bert(), "bert")
    return space, {name: (7 * i % 12) / 12 for i, name in enumerate(space.names)}


def test_a_discretizer_takes_from_the_run_only_what_it_declares() -> None:
    """The run offers every discretizer the same context; each takes what its signature names (param_budget: the
    rank, operator and budget; the top-k ones: nothing), and an option its config should not hold is refused."""
    space, scores = tiny_space_and_scores()
    context = {"rank": 4, "operator": "lora", "operator_args": {}, "target_params": None}
    for name in ("global_topk", "per_layer_topk", "threshold", "param_budget"):
        kept = build_discretizer({"name": name, "rho": 0.5}, context)(DiscretizeInput(scores, space))
        assert kept and kept == [n for n in space.names if n in kept]
    per_rank = 4 * sum(c.in_features + c.out_features for c in space)
    budget = build_discretizer({"name": "param_budget", "rho": 0.5}, {**context, "target_params": per_rank // 4})
    chosen = budget(DiscretizeInput(scores, space))
    assert sum(4 * (c.in_features + c.out_features) for c in space if c.name in chosen) <= per_rank // 4
    with pytest.raises(ConfigError, match="discretizer=global_topk does not take rank; it takes rho"):
        build_discretizer({"name": "global_topk", "rho": 0.5, "rank": 4})
    with pytest.raises(ConfigError, match="param_budget needs the adapter rank"):
        build_discretizer({"name": "param_budget", "rho": 0.5})  # the run did not offer it


# --- exact budgets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rho", "expected"), [(0.5, 6), (0.25, 3), (0.1, 2), (1.0, 12)])
def test_global_topk_budget_is_exact(rho: float, expected: int) -> None:
    space, scores = tiny_space_and_scores()
    assert len(run({"name": "global_topk", "rho": rho}, scores, space)) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"target_params": 1536}, None),  # tiny BERT at rank 4: q/k/v/attn-out cost 4·64 = 256, ffn 4·96 = 384
        ({"target_params": 1000}, None),
        ({"target_params": 256}, 1),
        ({"rho": 0.5}, None),
        ({"rho": 0.3}, None),
        ({"rho": 1.0}, 12),
    ],
)
def test_param_budget_never_exceeds_the_target(config: dict[str, object], expected: int | None) -> None:
    space, scores = tiny_space_and_scores()
    costs = {c.name: 4 * (c.in_features + c.out_features) for c in space}
    target = config.get("target_params", math.floor(config.get("rho", 0) * sum(costs.values())))
    kept = run({"name": "param_budget", "rank": 4, **config}, scores, space)
    used = sum(costs[n] for n in kept)
    assert used <= target
    assert all(used + costs[n] > target for n in space.names if n not in kept)  # greedy: nothing else fits
    if expected is not None:
        assert len(kept) == expected


@pytest.mark.parametrize(("target", "expected"), [(100, 1), (199, 1), (200, 2), (450, 4), (10_000, 6)])
def test_param_budget_with_equal_costs_keeps_floor_target_over_cost(target: int, expected: int) -> None:
    space = hand_space([[(5, 5), (5, 5), (5, 5)], [(5, 5), (5, 5), (5, 5)]])  # cost 10·(5+5) = 100 each
    scores = dict(zip(space.names, [0.1, 0.9, 0.3, 0.8, 0.2, 0.7], strict=True))
    kept = run({"name": "param_budget", "rank": 10, "target_params": target}, scores, space)
    assert kept == top_k(scores, list(space.names), expected)


def test_param_budget_from_rho_with_equal_costs() -> None:
    space = hand_space([[(5, 5)] * 5, [(5, 5)] * 5])  # 10 modules of cost 100; 0.7 · 1000 = 700 exactly
    scores = {name: 0.5 for name in space.names}
    assert run({"name": "param_budget", "rank": 10, "rho": 0.7}, scores, space) == list(space.names)[:7]


def test_param_budget_skips_what_does_not_fit_and_continues() -> None:
    space = hand_space([[(1, 1), (10, 10), (1, 1)]])  # costs 2, 20, 2 at rank 1
    scores = {"l0.t0": 0.1, "l0.t1": 0.9, "l0.t2": 0.5}
    assert run({"name": "param_budget", "rank": 1, "target_params": 10}, scores, space) == ["l0.t0", "l0.t2"]


def test_param_budget_below_the_cheapest_module_names_its_cost() -> None:
    space = hand_space([[(1, 1), (10, 10)]])
    with pytest.raises(ConfigError, match=r"cheapest.*\(2 parameters.*at least 2"):
        run({"name": "param_budget", "rank": 1, "target_params": 1}, {"l0.t0": 0.1, "l0.t1": 0.9}, space)


@pytest.mark.parametrize(("operator", "args"), [
    ("lora", None), ("sora", {}), ("prolora", {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1}),
])
def test_param_budget_prices_the_searched_operator(operator: str, args: dict | None) -> None:
    """Costs are the operator's own branch sizes (nas.adapters.cost.module_cost), for the budget and its ρ default."""
    space, scores = tiny_space_and_scores()
    costs = {c.name: module_cost(c, operator, 4, args) for c in space}
    for config in ({"target_params": 1536}, {"rho": 0.5}):
        target = config.get("target_params", math.floor(0.5 * sum(costs.values())))
        kept = run({"name": "param_budget", "rank": 4, "operator": operator, "operator_args": args, **config},
                   scores, space)
        used = sum(costs[n] for n in kept)
        assert used <= target and all(used + costs[n] > target for n in space.names if n not in kept)
    with pytest.raises(ConfigError, match=f"cheapest module's {operator} branch"):
        run({"name": "param_budget", "rank": 4, "operator": operator, "operator_args": args,
             "target_params": min(costs.values()) - 1}, scores, space)


# --- non-finite scores --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", DISCRETIZERS.names())
def test_a_non_finite_score_says_the_search_diverged(name: str, bad: float) -> None:
    space, scores = tiny_space_and_scores()
    victim = space.names[5]
    scores[victim] = bad
    config = {"name": name, "rho": 0.5, **({"threshold": 0.5} if name == "threshold" else {})}
    match = rf"non-finite score for 1 of 12.*{victim}.*diverged.*alpha_optimizer"
    with pytest.raises(ValueError, match=match):
        build_discretizer(config, {"rank": 4})(DiscretizeInput(scores, space))


def test_missing_scores_are_named() -> None:
    space, scores = tiny_space_and_scores()
    del scores[space.names[0]]
    with pytest.raises(ValueError, match=f"no score for 1 module.*{space.names[0]}"):
        run({"name": "global_topk"}, scores, space)


# --- ties ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"name": "global_topk", "rho": 0.5}, ["l0.t0", "l0.t1"]),
        ({"name": "per_layer_topk", "rho": 0.5}, ["l0.t0", "l1.t0"]),
        ({"name": "threshold", "threshold": 0.9, "min_keep": 2}, ["l0.t0", "l0.t1"]),
        ({"name": "param_budget", "rank": 1, "target_params": 4}, ["l0.t0", "l0.t1"]),
    ],
)
def test_ties_go_to_the_earlier_module_everywhere(config: dict[str, object], expected: list[str]) -> None:
    space = hand_space([[(1, 1), (1, 1)], [(1, 1), (1, 1)]])
    assert run(config, {name: 0.5 for name in space.names}, space) == expected


# --- per layer ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.1, 0.34, 0.5, 0.75, 1.0])
def test_per_layer_topk_keeps_ceil_rho_n_in_every_layer(rho: float) -> None:
    space = hand_space([[(2, 2)] * 4, [(2, 2), None, (2, 2), (2, 2)], [(2, 2), None, None, None]])
    scores = dict(zip(space.names, [0.1, 0.9, 0.4, 0.3, 0.2, 0.8, 0.6, 0.05], strict=True))
    kept = run({"name": "per_layer_topk", "rho": rho}, scores, space)
    assert kept == [n for n in space.names if n in kept]
    for layer in space.layers:
        names = [c.name for c in space if c.layer == layer]
        mine = [n for n in kept if n in names]
        assert len(mine) == keep_count(rho, len(names)) >= 1
        assert mine == top_k(scores, names, len(mine))  # chosen by score within the layer


def test_per_layer_topk_with_k_caps_at_the_layer_size() -> None:
    space = hand_space([[(2, 2)] * 3, [(2, 2), None, None]])
    scores = dict(zip(space.names, [0.1, 0.9, 0.4, 0.01], strict=True))
    assert run({"name": "per_layer_topk", "k": 2}, scores, space) == ["l0.t1", "l0.t2", "l1.t0"]
    assert run({"name": "per_layer_topk", "k": 2, "rho": 0.25}, scores, space) == ["l0.t1", "l0.t2", "l1.t0"]


# --- threshold ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("threshold", "min_keep", "expected"),
    [
        (0.5, 1, ["a1", "b0"]),  # strictly above 0.5: 0.5 itself is out
        (0.0, 1, ["a0", "a1", "b0", "b1"]),
        (0.95, 1, ["b0"]),  # nothing passes: the single best
        (0.95, 3, ["a0", "a1", "b0"]),  # nothing passes: the top-3 (tie a0 vs b1 → a0)
        (0.5, 3, ["a0", "a1", "b0"]),  # two pass, three wanted; tie 0.5 vs 0.5 → earlier
        (0.5, 9, ["a0", "a1", "b0", "b1"]),  # min_keep capped at N
    ],
)
def test_threshold_with_min_keep(threshold: float, min_keep: int, expected: list[str]) -> None:
    space = SearchSpace(
        candidates=(Candidate("a0", 0, "q", 2, 2), Candidate("a1", 0, "v", 2, 2),
                    Candidate("b0", 1, "q", 2, 2), Candidate("b1", 1, "v", 2, 2)),
        layers=(0, 1), module_types=("q", "v"),
    )
    scores = {"a0": 0.5, "a1": 0.7, "b0": 0.9, "b1": 0.5}
    assert run({"name": "threshold", "threshold": threshold, "min_keep": min_keep}, scores, space) == expected


# --- bad parameters -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"name": "global_topk", "rho": 0.0}, "rho=0.0 is outside"),
        ({"name": "global_topk", "rho": math.nan}, "rho"),
        ({"name": "per_layer_topk", "rho": 1.5}, "rho=1.5 is outside"),
        ({"name": "per_layer_topk", "k": 0}, "k=0 must be a positive integer"),
        ({"name": "threshold", "threshold": 1.2}, r"threshold=1.2 is outside \[0, 1\]"),
        ({"name": "threshold", "threshold": -0.1}, "outside"),
        ({"name": "threshold", "min_keep": 0}, "min_keep=0 must be a positive integer"),
        ({"name": "param_budget", "rho": 0.5}, "needs the adapter rank"),
        ({"name": "param_budget", "rank": 0}, "rank=0 must be a positive integer"),
        ({"name": "param_budget", "rank": 8, "target_params": 0}, "target_params=0 must be > 0"),
        ({"name": "param_budget", "rank": 8, "target_params": -5}, "must be > 0"),
        ({"name": "param_budget", "rank": 8, "rho": 2.0}, "rho=2.0 is outside"),
        ({"name": "param_budget", "rank": 8, "operator": "nope"}, "unknown operator 'nope'"),
        ({"name": "param_budget", "rank": 8, "operator": "prolora", "operator_args": {"bad": 1}}, "bad.*accepts"),
    ],
)
def test_bad_parameters_are_config_errors(config: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_discretizer(config)
