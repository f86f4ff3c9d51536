"""One price list: every operator's cost formula is the parameter count of the branch it builds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nas.adapters.cost import FORMULAS, _measured, module_cost, space_cost
from nas.adapters.operators import OPERATORS, build_operator
from nas.errors import ConfigError
from search_spaces.candidate import Candidate

# (operator, in, out, rank, operator_args)
CASES: list[tuple[str, int, int, int, dict[str, Any]]] = [
    ("lora", 32, 32, 8, {}), ("lora", 32, 64, 1, {}), ("lora", 7, 5, 3, {}),
    ("sora", 32, 64, 8, {}), ("sora", 7, 5, 1, {}), ("sora", 7, 5, 0, {}),
    ("prolora", 32, 64, 8, {}),  # defaults: sharing 2 × 2, one unshared rank
    ("prolora", 33, 65, 8, {"sharing_in": 4, "sharing_out": 3, "unshared_rank": 2}),  # ragged chunks
    ("prolora", 32, 64, 4, {"sharing_in": 1, "sharing_out": 1, "unshared_rank": 0, "rotate": False}),
    ("prolora", 30, 20, 4, {"sharing_in": 1, "sharing_out": 1, "unshared_rank": 4}),  # all unshared: plain LoRA
]


def built(operator: str, in_features: int, out_features: int, rank: int, args: dict[str, Any]) -> int:
    branch = build_operator(operator, in_features, out_features, rank, alpha=16.0, dropout=0.0, operator_args=args)
    return sum(p.numel() for p in branch.parameters())


@pytest.mark.parametrize(("operator", "in_features", "out_features", "rank", "args"), CASES)
def test_cost_is_the_parameter_count_of_the_branch(operator: str, in_features: int, out_features: int, rank: int,
                                                    args: dict[str, Any]) -> None:
    candidate = Candidate("m", 0, "t", in_features, out_features)
    expected = built(operator, in_features, out_features, rank, args)
    assert module_cost(candidate, operator, rank, args) == expected
    assert _measured(operator, in_features, out_features, rank, args) == expected


def test_every_registered_operator_has_a_tested_formula() -> None:
    assert set(OPERATORS.names()) <= set(FORMULAS)
    assert set(OPERATORS.names()) <= {case[0] for case in CASES}


def test_documented_formulas() -> None:
    c = Candidate("m", 0, "t", 32, 64)
    assert module_cost(c, "lora", 8, None) == 8 * 96
    assert module_cost(c, "sora", 8, None) == 8 * 97 == module_cost(c, "adalora", 8, None)
    assert module_cost(c, "prolora", 8, {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1}) == 7 * 48 + 96
    assert space_cost([c, Candidate("n", 1, "t", 4, 4)], "lora", 2, None) == 2 * 96 + 2 * 8


def test_an_operator_without_a_formula_is_measured() -> None:
    class Doubled(nn.Module):  # registered nowhere: priced through the fallback
        def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                     copies: int = 2) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(copies, rank, in_features + out_features))

    OPERATORS._entries["doubled_for_test"] = Doubled
    try:
        assert module_cost(Candidate("m", 0, "t", 3, 5), "doubled_for_test", 4, {"copies": 3}) == 3 * 4 * 8
    finally:
        del OPERATORS._entries["doubled_for_test"]


@pytest.mark.parametrize(("operator", "rank", "args", "match"), [
    ("nope", 4, None, "unknown operator 'nope'.*lora"),
    ("lora", 4, {"sharing_in": 2}, "does not take; it accepts: no options"),
    ("prolora", 4, {"unshared": 1}, "unshared.*accepts: sharing_in"),
    ("adalora", 4, {"x": 1}, "takes no operator_args"),
    ("lora", -1, None, "rank=-1"),
    ("prolora", 2, {"unshared_rank": 3}, "unshared_rank=3"),
])
def test_bad_arguments_are_config_errors(operator: str, rank: int, args: dict | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        module_cost(Candidate("m", 0, "t", 8, 8), operator, rank, args)
