"""Matched budgets: each method's size knob solved to a parameter target; impossible budgets are errors."""

from __future__ import annotations

import pytest
from conftest import compose_run, tiny_bert

from nas.budget import lora_params, prolora_params, resolve_target, solve_rank
from nas.errors import ConfigError
from search_spaces import build_search_space

SPACE = build_search_space(tiny_bert(), "bert")  # 12 candidates, Σ(in + out) = 896
MINILM_PER_RANK = 6 * (4 * 768 + 2 * 1920)  # all-MiniLM-L6-v2: Σ(in + out) over its 36 candidates


def test_default_target_is_diffora_expected_size() -> None:
    cfg = compose_run(["budget=matched", "space.rank=8", "discretizer.rho=0.5"])
    assert resolve_target(cfg, SPACE) == round(0.5 * 8 * 896)
    assert resolve_target(compose_run(["budget=matched", "budget.target_params=1000"]), SPACE) == 1000
    assert resolve_target(compose_run([]), SPACE) is None


@pytest.mark.parametrize(("target", "per_rank", "rank"), [
    (0.5 * 8 * MINILM_PER_RANK, MINILM_PER_RANK, 4),  # DiffoRA ρ=0.5 at r=8 ↔ LoRA r=4 on all 36
    (0.25 * 8 * MINILM_PER_RANK, MINILM_PER_RANK, 2),
    (3.4 * 896, 896, 3), (3.6 * 896, 896, 4),  # nearest rank
])
def test_lora_rank_is_the_closest_to_the_target(target: float, per_rank: int, rank: int) -> None:
    assert solve_rank(round(target), lambda r: r * per_rank, "lora") == rank


def test_prolora_rank_meets_the_budget_with_sharing() -> None:
    target = lora_params(SPACE, 4)
    rank = solve_rank(target, lambda r: prolora_params(SPACE, r, 2, 2, 1), "prolora", smallest=2)
    assert rank == 7  # (7 − 1)/2 + 1 = 4 LoRA-equivalent ranks on even widths
    assert prolora_params(SPACE, rank, 2, 2, 1) == target


def test_a_budget_no_setting_can_meet_is_an_error() -> None:
    with pytest.raises(ConfigError, match="lora cannot meet budget.target_params=100.*rank 1.*896"):
        solve_rank(100, lambda r: lora_params(SPACE, r), "lora")
    with pytest.raises(ConfigError, match="positive"):
        resolve_target(compose_run(["budget.target_params=0"]), SPACE)
