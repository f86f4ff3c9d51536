"""Matched budgets: each method's size knob solved to a parameter target; impossible budgets are errors."""

from __future__ import annotations

import pytest
from conftest import compose_run, tiny_bert

from nas.adapters.cost import space_cost
from nas.engine.budget import resolve_rank, resolve_target, solve_rank
from nas.errors import ConfigError
from search_spaces import build_search_space

SPACE = build_search_space(tiny_bert(), "bert")  # 12 candidates, Σ(in + out) = 896
MINILM_PER_RANK = 6 * (4 * 768 + 2 * 1920)  # all-MiniLM-L6-v2: Σ(in + out) over its 36 candidates


def test_default_target_is_diffora_expected_size() -> None:
    cfg = compose_run(["budget=matched", "space.rank=8", "discretizer.rho=0.5"])
    assert resolve_target(cfg, SPACE) == round(0.5 * 8 * 896) == round(0.5 * space_cost(SPACE, "lora", 8))
    assert resolve_target(compose_run(["budget=matched", "budget.target_params=1000"]), SPACE) == 1000
    assert resolve_target(compose_run([]), SPACE) is None


@pytest.mark.parametrize(("target", "per_rank", "rank"), [
    (0.5 * 8 * MINILM_PER_RANK, MINILM_PER_RANK, 4),  # DiffoRA ρ=0.5 at r=8 ↔ LoRA r=4 on all 36
    (0.25 * 8 * MINILM_PER_RANK, MINILM_PER_RANK, 2),
    (3.4 * 896, 896, 3), (3.6 * 896, 896, 4),  # nearest rank
])
def test_lora_rank_is_the_closest_to_the_target(target: float, per_rank: int, rank: int) -> None:
    assert solve_rank(round(target), lambda r: r * per_rank, "lora") == rank


def prolora(rank: int) -> int:
    return space_cost(SPACE, "prolora", rank, {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1})


def test_prolora_rank_meets_the_budget_with_sharing() -> None:
    target = space_cost(SPACE, "lora", 4)
    rank = solve_rank(target, prolora, "prolora", smallest=2)
    assert rank == 7  # (7 − 1)/2 + 1 = 4 LoRA-equivalent ranks on even widths
    assert prolora(rank) == target


@pytest.mark.parametrize(("operator", "args"), [("prolora", {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1}),
                                                ("sora", {}), ("lora", {})])
def test_default_target_prices_the_search_operator(operator: str, args: dict) -> None:
    """ρ · (DiffoRA's own operator at space.rank on every candidate), not a LoRA price whatever the operator."""
    overrides = ["budget=matched", "space.rank=8", "discretizer.rho=0.5", f"space.operator={operator}"]
    overrides += [f"+space.operator_args.{k}={v}" for k, v in args.items()]
    cfg = compose_run(overrides)
    assert resolve_target(cfg, SPACE) == round(0.5 * space_cost(SPACE, operator, 8, args))


def test_resolve_rank_prefers_explicit_then_budget_then_default() -> None:
    def cost(r: int) -> int:
        return r * 896

    assert resolve_rank(5, 4 * 896, cost, "lora", default=8) == 5
    assert resolve_rank(None, 4 * 896, cost, "lora", default=8) == 4
    assert resolve_rank(None, None, cost, "lora", default=8) == 8
    assert resolve_rank(None, 896, cost, "prolora", default=8, smallest=1) == 1
    assert resolve_rank(None, 2 * 896, cost, "prolora", default=8, smallest=2) == 2
    with pytest.raises(ConfigError, match="smallest setting \\(rank 3\\)"):
        resolve_rank(None, 896, cost, "prolora", default=8, smallest=3)


def test_a_budget_no_setting_can_meet_is_an_error() -> None:
    with pytest.raises(ConfigError, match="lora cannot meet budget.target_params=100.*rank 1.*896"):
        solve_rank(100, lambda r: space_cost(SPACE, "lora", r), "lora")
    with pytest.raises(ConfigError, match="positive"):
        resolve_target(compose_run(["budget.target_params=0"]), SPACE)
