"""Matched budgets: solve each method's size knob (rank, ratio) so its adapter parameters meet one target.

Costs count adapter parameters only (the task head is the same for every method) and come from the one price
list, :func:`nas.adapters.cost.module_cost`: LoRA r·(in + out), SoRA and AdaLoRA r·(in + out + 1), PRoLoRA
(r − u)(⌈in/m⌉ + ⌈out/n⌉) + u(in + out), per module, summed by :func:`nas.adapters.cost.space_cost`.

The default target is DiffoRA's: ρ · (``space.operator`` at ``space.rank`` on every candidate).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from nas.adapters.cost import space_cost
from nas.errors import ConfigError
from search_spaces.space import SearchSpace


def resolve_target(cfg: DictConfig, space: SearchSpace) -> int | None:
    """``budget.target_params`` if set; with ``budget.match`` and no target, ρ·(space.operator at space.rank on
    all candidates, priced with space.operator_args)."""
    if cfg.budget.target_params is not None:
        target = int(cfg.budget.target_params)
        if target <= 0:
            raise ConfigError(f"budget.target_params={target} must be a positive number of parameters")
        return target
    if not cfg.budget.match:
        return None
    full = space_cost(space, str(cfg.space.operator), int(cfg.space.rank), cfg.space.operator_args)
    return round(cfg.discretizer.rho * full)


def resolve_rank(explicit: int | None, target: int | None, cost: Callable[[int], int], method: str, default: int,
                 smallest: int = 1) -> int:
    """A baseline's rank: ``explicit`` (its ``method.rank``) when set; else, with a budget ``target``, the rank
    whose ``cost`` is closest to it (:func:`solve_rank`); else ``default`` (``space.rank``)."""
    if explicit is not None:
        return int(explicit)
    if target is not None:
        return solve_rank(target, cost, method, smallest=smallest)
    return int(default)


def solve_rank(target: int, cost: Callable[[int], int], method: str, smallest: int = 1,
               largest: int = 4096) -> int:
    """The rank r ≥ ``smallest`` whose ``cost(r)`` is closest to ``target`` (ties: the smaller r).

    ``cost`` must be increasing in r. Raises ConfigError when even the smallest rank exceeds the target by
    more than half a rank step, i.e. no setting meets the budget."""
    floor_cost = cost(smallest)
    step = cost(smallest + 1) - floor_cost
    if floor_cost - target > step / 2:
        raise ConfigError(
            f"budget: {method} cannot meet budget.target_params={target:,}: its smallest setting (rank {smallest}) "
            f"already has {floor_cost:,} adapter parameters; raise budget.target_params (or discretizer.rho) or "
            f"shrink the search space (space.module_types / space.layers)")
    best, best_gap = smallest, abs(floor_cost - target)
    for rank in range(smallest + 1, largest + 1):
        gap = abs(cost(rank) - target)
        if gap < best_gap:
            best, best_gap = rank, gap
        elif cost(rank) > target:
            break
    return best


def describe(target: int | None, achieved: int) -> dict[str, float | int | None]:
    """The budget line of metrics.json: target, achieved and their relative gap."""
    gap = None if not target else (achieved - target) / target
    return {"budget_target": target, "budget_gap": gap}
