"""Discretizers: relaxed DAM weights → the set of modules that keep a LoRA.

A discretizer is built from its config and called with a :class:`DiscretizeInput`; it returns the
selected candidate names in search-space order. Register new ones with ``@DISCRETIZERS.register``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nas.registry import Registry
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class DiscretizeInput:
    scores: Mapping[str, float]  # relaxed weight γ per candidate name
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


@DISCRETIZERS.register("global_topk")
def global_topk(rho: float = 0.5, **_: object) -> Discretizer:
    """Keep the global top-⌈ρ·N⌉ modules by relaxed weight."""

    def discretize(inputs: DiscretizeInput) -> list[str]:
        names = list(inputs.space.names)
        return top_k(inputs.scores, names, keep_count(rho, len(names)))

    return discretize


def build_discretizer(config: Mapping[str, object]) -> Discretizer:
    """The discretizer named ``config["name"]``, given the rest of ``config`` as its parameters."""
    params = {key: value for key, value in config.items() if key != "name"}
    return DISCRETIZERS.get(str(config["name"]))(**params)
