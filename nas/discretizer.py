"""Discretizers: relaxed DAM weights → the set of modules that keep a LoRA.

A discretizer is built from its config and called with a :class:`DiscretizeInput`; it returns the
selected candidate names in search-space order. Register new ones with ``@DISCRETIZERS.register``.

Factories take their own parameters as keyword arguments and end in ``**_: object`` so that the pipeline
can pass one common set (``rho``, ``rank``, ``target_params``, ...) to whichever discretizer is chosen; each
factory validates the parameters it uses and raises :class:`~nas.errors.ConfigError` naming the fix.
Ties in any ranking go to the module that comes earlier in search-space order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nas.errors import ConfigError
from nas.registry import Registry
from search_spaces.candidate import Candidate
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class DiscretizeInput:
    """What a discretizer sees.

    Attributes:
        scores: relaxed weight γ per candidate name.
        space: the search space (candidate order, layers, feature widths).
        removal_score: score of the supernet on the α-split with the named module's branch removed (γ = 0),
            higher is better (e.g. negative loss or accuracy); only the search pipeline can provide it.
        base_score: the same score with every branch in place.
    """

    scores: Mapping[str, float]
    space: SearchSpace
    removal_score: Callable[[str], float] | None = None
    base_score: float | None = None


Discretizer = Callable[[DiscretizeInput], list[str]]
DISCRETIZERS: Registry[Callable[..., Discretizer]] = Registry("discretizer")


def keep_count(rho: float, total: int) -> int:
    """k = ⌈ρ·N⌉, computed without float noise (ρ=0.7, N=10 gives 7, not 8)."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho={rho} is outside (0, 1]")
    return min(total, max(1, math.ceil(round(rho * total, 9))))


def top_k(scores: Mapping[str, float], order: list[str], k: int) -> list[str]:
    """The k names with the largest score; ties go to the earlier name in ``order``; output in ``order``."""
    rank = {name: i for i, name in enumerate(order)}
    best = sorted(order, key=lambda name: (-scores[name], rank[name]))[:k]
    return sorted(best, key=rank.__getitem__)


def lora_params(candidate: Candidate, rank: int) -> int:
    """Trainable parameters of a rank-r LoRA on a linear map in → out: r·(in + out)."""
    return rank * (candidate.in_features + candidate.out_features)


# --- parameter checks -------------------------------------------------------------------------------------------
def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"discretizer.{key}={value!r} must be a finite number")
    return float(value)


def _check_rho(rho: object) -> float:
    value = _number(rho, "rho")
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"discretizer.rho={rho} is outside (0, 1]; pass e.g. discretizer.rho=0.5")
    return value


def _positive_int(value: object, key: str, example: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"discretizer.{key}={value!r} must be a positive integer, e.g. discretizer.{key}={example}")
    return value


# --- discretizers ----------------------------------------------------------------------------------------------
@DISCRETIZERS.register("global_topk")
def global_topk(rho: float = 0.5, **_: object) -> Discretizer:
    """Keep the global top-⌈ρ·N⌉ modules by relaxed weight."""
    rho = _check_rho(rho)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        return top_k(inputs.scores, names, keep_count(rho, len(names)))

    return discretize


@DISCRETIZERS.register("per_layer_topk")
def per_layer_topk(rho: float | None = None, k: int | None = None, **_: object) -> Discretizer:
    """Keep the top-k_l modules of every layer l by relaxed weight.

    k_l = ⌈ρ·n_l⌉ (n_l candidates in layer l, at least 1), or k_l = min(k, n_l) when ``k`` is given (``k``
    then wins over ``rho``, which every discretizer config carries); neither means ρ = 0.5.
    """
    if k is not None:
        exact = _positive_int(k, "k", 2)

        def count(n: int) -> int:
            return min(exact, n)
    else:
        fraction = 0.5 if rho is None else _check_rho(rho)

        def count(n: int) -> int:
            return keep_count(fraction, n)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        by_layer: dict[int, list[str]] = {}
        for candidate in inputs.space:
            by_layer.setdefault(candidate.layer, []).append(candidate.name)
        kept = {name for names in by_layer.values() for name in top_k(inputs.scores, names, count(len(names)))}
        return [name for name in inputs.space.names if name in kept]

    return discretize


@DISCRETIZERS.register("threshold")
def threshold(threshold: float = 0.5, min_keep: int = 1, **_: object) -> Discretizer:
    """Keep every module with γ > threshold; when fewer than ``min_keep`` pass, keep the top-``min_keep``.

    ``min_keep`` is capped at the number of candidates, so the selection is never empty.
    """
    cut = _number(threshold, "threshold")
    if not 0.0 <= cut <= 1.0:
        raise ConfigError(f"discretizer.threshold={threshold} is outside [0, 1]; pass e.g. discretizer.threshold=0.5")
    floor = _positive_int(min_keep, "min_keep")

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        passed = [name for name in names if inputs.scores[name] > cut]
        if len(passed) >= floor:
            return passed
        return top_k(inputs.scores, names, min(floor, len(names)))

    return discretize


@DISCRETIZERS.register("param_budget")
def param_budget(rank: int | None = None, target_params: float | None = None, rho: float = 0.5,
                 **_: object) -> Discretizer:
    """Keep modules by relaxed weight until a trainable-parameter budget B is spent.

    cost(m) = r·(in_m + out_m);  B = target_params, or ⌊ρ·Σ_m cost(m)⌋ when target_params is None.
    Greedy (a knapsack approximation, not the optimum): walk the modules by descending γ (ties → earlier) and
    add each one whose cost still fits in what is left of B. The result never exceeds B; with equal costs c it
    holds exactly min(N, ⌊B/c⌋) modules. If even the cheapest module costs more than B: ConfigError.
    """
    if rank is None:
        raise ConfigError("param_budget needs the LoRA rank to cost modules; pass discretizer.rank (= space.rank)")
    r = _positive_int(rank, "rank", 8)
    if target_params is not None:
        budget = _number(target_params, "target_params")
        if budget <= 0:
            raise ConfigError(f"discretizer.target_params={target_params} must be > 0, or null to use rho")
        fraction = None
    else:
        fraction = _check_rho(rho)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        costs = {c.name: lora_params(c, r) for c in inputs.space}
        limit = budget if fraction is None else math.floor(round(fraction * sum(costs.values()), 6))
        cheapest = min(costs.values())
        if cheapest > limit:
            raise ConfigError(
                f"parameter budget {limit:g} is below the cheapest module's LoRA ({cheapest} parameters at rank {r}); "
                f"raise discretizer.target_params (or rho) to at least {cheapest}"
            )
        position = {name: i for i, name in enumerate(names)}
        used, kept = 0, set()
        for name in sorted(names, key=lambda n: (-inputs.scores[n], position[n])):
            if used + costs[name] <= limit:
                used += costs[name]
                kept.add(name)
        return [name for name in names if name in kept]

    return discretize


def removal_drops(inputs: DiscretizeInput) -> dict[str, float]:
    """drop(m) = base_score − removal_score(m): how much the α-split score falls when m's branch is removed."""
    if inputs.removal_score is None or inputs.base_score is None:
        raise ConfigError(
            "perturbation needs the supernet (removal_score and base_score); it is only available in the "
            "search pipeline. Use discretizer=global_topk otherwise."
        )
    drops = {name: float(inputs.base_score) - float(inputs.removal_score(name)) for name in inputs.space.names}
    bad = [name for name, drop in drops.items() if not math.isfinite(drop)]
    if bad:
        raise ValueError(f"perturbation: non-finite score drop for {bad[:3]} (base {inputs.base_score})")
    return drops


@DISCRETIZERS.register("perturbation")
def perturbation(rho: float = 0.5, **_: object) -> Discretizer:
    """Perturbation-based selection (DARTS-PT, Wang et al. 2021), one shot, without re-tuning.

    importance(m) = base_score − removal_score(m): how much the α-split score of the trained supernet drops
    when m's branch is removed (γ_m = 0). Keep the top-⌈ρ·N⌉ by importance (ties → earlier); γ is not used.
    """
    rho = _check_rho(rho)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        return top_k(removal_drops(inputs), names, keep_count(rho, len(names)))

    return discretize


def build_discretizer(config: Mapping[str, object]) -> Discretizer:
    """The discretizer named ``config["name"]``, given the rest of ``config`` as its parameters."""
    params = {key: value for key, value in config.items() if key != "name"}
    return DISCRETIZERS.get(str(config["name"]))(**params)
