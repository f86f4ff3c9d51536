"""Discretizers keep exactly ⌈ρN⌉ modules, break ties by search-space order, and reject bad ρ."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_bert

from nas.discretizer import DiscretizeInput, build_discretizer, keep_count, top_k
from search_spaces import build_search_space


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
