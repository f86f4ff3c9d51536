"""Discretizers: relaxed DAM weights → the set of modules that keep a LoRA.

A discretizer is built from its config and called with a :class:`DiscretizeInput`; it returns the
selected candidate names in search-space order. Register new ones with ``@DISCRETIZERS.register``.

Factories take their own parameters as keyword arguments and end in ``**_: object`` so that the pipeline
can pass one common set (``rho``, ``rank``, ``target_params``, ...) to whichever discretizer is chosen; each
factory validates the parameters it uses and raises :class:`~nas.errors.ConfigError` naming the fix.
Ties in any ranking go to the module that comes earlier in search-space order. A non-finite score (the
search diverged) is a ValueError naming the modules, never sorted.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nas.adapters.cost import pricer
from nas.errors import ConfigError
from nas.registry import Registry
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class DiscretizeInput:
    """What a discretizer sees.

    Attributes:
        scores: score per candidate name (the relaxed weight γ, or a selection criterion's score); higher is
            better, and every score must be finite.
        space: the search space (candidate order, layers, feature widths).
    """

    scores: Mapping[str, float]
    space: SearchSpace


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


DIVERGED_HINT = ("the search diverged (or the criterion that scored it did); lower bilevel.alpha_optimizer.lr "
                 "(or bilevel.w_optimizer.lr) and keep bilevel.grad_clip on; the search's non-finite checks "
                 "name the first step that went wrong")


def finite_scores(scores: Mapping[str, float], names: list[str], what: str = "score") -> dict[str, float]:
    """``scores`` of ``names`` as floats; a missing name is a ValueError, and so is a NaN or ±inf score (naming
    the modules and saying that the search diverged)."""
    missing = [name for name in names if name not in scores]
    if missing:
        raise ValueError(f"no {what} for {len(missing)} module(s), e.g. {missing[:3]}; the scores must cover "
                         f"every candidate of the search space")
    values = {name: float(scores[name]) for name in names}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        shown = ", ".join(f"{name}={values[name]}" for name in bad[:5])
        raise ValueError(f"non-finite {what} for {len(bad)} of {len(names)} module(s) ({shown}"
                         f"{', ...' if len(bad) > 5 else ''}): {DIVERGED_HINT}")
    return values


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
def global_topk(rho: float = 0.5) -> Discretizer:
    """Keep the global top-⌈ρ·N⌉ modules by relaxed weight."""
    rho = _check_rho(rho)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        return top_k(finite_scores(inputs.scores, names), names, keep_count(rho, len(names)))

    return discretize


@DISCRETIZERS.register("per_layer_topk")
def per_layer_topk(rho: float | None = None, k: int | None = None) -> Discretizer:
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
        scores = finite_scores(inputs.scores, list(inputs.space.names))
        by_layer: dict[int, list[str]] = {}
        for candidate in inputs.space:
            by_layer.setdefault(candidate.layer, []).append(candidate.name)
        kept = {name for names in by_layer.values() for name in top_k(scores, names, count(len(names)))}
        return [name for name in inputs.space.names if name in kept]

    return discretize


@DISCRETIZERS.register("threshold")
def threshold(threshold: float = 0.5, min_keep: int = 1, rho: float | None = None) -> Discretizer:
    """Keep every module with γ > threshold; when fewer than ``min_keep`` pass, keep the top-``min_keep``.

    ``min_keep`` is capped at the number of candidates, so the selection is never empty. ``rho``, which every
    discretizer config carries, plays no part: the threshold decides how many are kept.
    """
    cut = _number(threshold, "threshold")
    if not 0.0 <= cut <= 1.0:
        raise ConfigError(f"discretizer.threshold={threshold} is outside [0, 1]; pass e.g. discretizer.threshold=0.5")
    floor = _positive_int(min_keep, "min_keep")

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        scores = finite_scores(inputs.scores, names)
        passed = [name for name in names if scores[name] > cut]
        if len(passed) >= floor:
            return passed
        return top_k(scores, names, min(floor, len(names)))

    return discretize


@DISCRETIZERS.register("param_budget")
def param_budget(rank: int | None = None, target_params: float | None = None, rho: float = 0.5,
                 operator: str = "lora", operator_args: Mapping[str, Any] | None = None) -> Discretizer:
    """Keep modules by relaxed weight until a trainable-parameter budget B is spent.

    cost(m) = :func:`nas.adapters.cost.module_cost` of ``operator``'s rank-r branch on m (LoRA: r·(in_m + out_m));
    B = target_params, or ⌊ρ·Σ_m cost(m)⌋ when target_params is None.
    Greedy (a knapsack approximation, not the optimum): walk the modules by descending γ (ties → earlier) and
    add each one whose cost still fits in what is left of B. The result never exceeds B; with equal costs c it
    holds exactly min(N, ⌊B/c⌋) modules. If even the cheapest module costs more than B: ConfigError.
    """
    if rank is None:
        raise ConfigError("param_budget needs the adapter rank to cost modules; pass discretizer.rank (= space.rank)")
    r = _positive_int(rank, "rank", 8)
    price = pricer(str(operator), r, operator_args)  # checks the operator and its options now
    if target_params is not None:
        budget = _number(target_params, "target_params")
        if budget <= 0:
            raise ConfigError(f"discretizer.target_params={target_params} must be > 0, or null to use rho")
        fraction = None
    else:
        fraction = _check_rho(rho)

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        scores = finite_scores(inputs.scores, names)
        costs = {c.name: price(c) for c in inputs.space}
        limit = budget if fraction is None else math.floor(round(fraction * sum(costs.values()), 6))
        cheapest = min(costs.values())
        if cheapest > limit:
            raise ConfigError(
                f"parameter budget {limit:g} is below the cheapest module's {operator} branch ({cheapest} parameters "
                f"at rank {r}); raise discretizer.target_params (or rho) to at least {cheapest}"
            )
        position = {name: i for i, name in enumerate(names)}
        used, kept = 0, set()
        for name in sorted(names, key=lambda n: (-scores[n], position[n])):
            if used + costs[name] <= limit:
                used += costs[name]
                kept.add(name)
        return [name for name in names if name in kept]

    return discretize


# Discretizers whose options fix the kept count as a fraction ρ of the candidates (a planted task checks ρ against |S|)
KEEPS_FRACTION = frozenset({"global_topk", "per_layer_topk"})


def build_discretizer(config: Mapping[str, object], context: Mapping[str, object] | None = None) -> Discretizer:
    """The discretizer named ``config["name"]``, built from its own options in ``config`` and, from ``context``
    (what the run knows: ``rank``, ``operator``, ``operator_args``, ``target_params``), only what its signature
    declares; a value set in ``config`` wins. An option the discretizer does not take is a ConfigError."""
    name = str(config["name"])
    factory = DISCRETIZERS.get(name)
    declared = inspect.signature(factory).parameters
    params = {key: value for key, value in config.items() if key != "name"}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"discretizer={name} does not take {', '.join(unknown)}; it takes {', '.join(declared)}")
    for key, value in (context or {}).items():
        if key in declared and params.get(key) is None and value is not None:
            params[key] = value
    return factory(**params)
