"""Matched budgets: solve each method's size knob (rank, ratio) so its adapter parameters meet one target.

Costs count adapter parameters only (the task head is the same for every method):

* LoRA at rank r on modules M:      r · Σ_{m∈M} (in_m + out_m)
* AdaLoRA (P Λ Q) at final rank r:  r · Σ (in_m + out_m + 1)
* SoRA at r_max (before pruning):   r · Σ (in_m + out_m + 1)
* PRoLoRA (rank r, m, n, u):        Σ (r − u)(⌈in_m/m⌉ + ⌈out_m/n⌉) + u (in_m + out_m)

The default target is DiffoRA's: ρ · (LoRA at ``space.rank`` on every candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from omegaconf import DictConfig

from nas.errors import ConfigError
from nas.prolora import prolora_param_count
from search_spaces.candidate import Candidate
from search_spaces.space import SearchSpace


def lora_params(candidates: Iterable[Candidate], rank: int, per_rank_extra: int = 0) -> int:
    """r · Σ (in + out + extra) over ``candidates``."""
    return sum(rank * (c.in_features + c.out_features + per_rank_extra) for c in candidates)


def prolora_params(candidates: Iterable[Candidate], rank: int, sharing_in: int, sharing_out: int,
                   unshared_rank: int) -> int:
    return sum(prolora_param_count(c.in_features, c.out_features, rank, sharing_in, sharing_out, unshared_rank)
               for c in candidates)


def resolve_target(cfg: DictConfig, space: SearchSpace) -> int | None:
    """``budget.target_params`` if set; with ``budget.match`` and no target, ρ·(LoRA at space.rank on all)."""
    if cfg.budget.target_params is not None:
        target = int(cfg.budget.target_params)
        if target <= 0:
            raise ConfigError(f"budget.target_params={target} must be a positive number of parameters")
        return target
    if not cfg.budget.match:
        return None
    return round(cfg.discretizer.rho * lora_params(space, int(cfg.space.rank)))


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
