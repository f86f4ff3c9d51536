"""What an adapter costs: the trainable parameters of one operator's branch on one module.

The single price list of the project: the matched budgets (:mod:`nas.engine.budget`), the ``param_budget``
discretizer and the regularizers' cost matrix (:mod:`nas.search.regularizers`) all call :func:`module_cost`.
For a linear map in → out at rank r (options from ``operator_args``, else the operator's defaults):

* ``lora``:     r·(in + out)                              A ∈ ℝ^{r×in}, B ∈ ℝ^{out×r}
* ``sora``:     r·(in + out) + r                          A, B and the gate g ∈ ℝ^r (r = r_max, before pruning)
* ``prolora``:  (r − u)(⌈in/m⌉ + ⌈out/n⌉) + u(in + out)   shared chunks A₀, B₀; u unshared ranks;
  m = sharing_in, n = sharing_out (see :mod:`nas.adapters.prolora`)
* ``adalora``:  r·(in + out + 1)                          peft's P Λ Q at rank r (a method, not a supernet operator)

An operator registered in :data:`nas.adapters.operators.OPERATORS` without a formula here is priced by building its
branch on the meta device (no memory) and counting its parameters; ``tests/test_cost.py`` checks every formula
against the built branch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from nas.adapters.operators import OPERATORS, build_operator, operator_options
from nas.adapters.prolora import prolora_param_count
from nas.errors import ConfigError
from search_spaces.candidate import Candidate

CostFormula = Callable[[int, int, int, Mapping[str, Any]], int]  # (in, out, rank, options) -> parameters


def _lora(in_features: int, out_features: int, rank: int, options: Mapping[str, Any]) -> int:
    return rank * (in_features + out_features)


def _sora(in_features: int, out_features: int, rank: int, options: Mapping[str, Any]) -> int:
    return rank * (in_features + out_features) + rank


def _prolora(in_features: int, out_features: int, rank: int, options: Mapping[str, Any]) -> int:
    return prolora_param_count(in_features, out_features, rank, int(options["sharing_in"]),
                               int(options["sharing_out"]), int(options["unshared_rank"]))


FORMULAS: dict[str, CostFormula] = {"lora": _lora, "sora": _sora, "prolora": _prolora, "adalora": _sora}
METHOD_ONLY = {"adalora"}  # priced here, but not operators of the supernet (they take no operator_args)


def _options(operator: str, operator_args: Mapping[str, Any] | None) -> dict[str, Any]:
    if operator in METHOD_ONLY:
        if operator_args:
            raise ConfigError(f"'{operator}' takes no operator_args (got {', '.join(operator_args)}); drop them")
        return {}
    if operator not in OPERATORS:
        known = sorted(set(OPERATORS.names()) | METHOD_ONLY)
        raise ConfigError(f"cannot price unknown operator '{operator}'; choose one of: {', '.join(known)}")
    return operator_options(operator, operator_args)


def _measured(operator: str, in_features: int, out_features: int, rank: int, options: Mapping[str, Any]) -> int:
    """Σ numel over the parameters of the branch built on the meta device (for operators without a formula)."""
    with torch.device("meta"):
        branch = build_operator(operator, in_features, out_features, rank, float(max(rank, 1)), 0.0, options)
    return sum(p.numel() for p in branch.parameters())


def pricer(operator: str, rank: int, operator_args: Mapping[str, Any] | None = None) -> Callable[[Candidate], int]:
    """candidate ↦ module_cost(candidate, operator, rank, operator_args), with the options checked once."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"rank={rank!r} must be an integer >= 0 to price an adapter; set space.rank")
    options = _options(operator, operator_args)
    formula = FORMULAS.get(operator)
    if formula is None:
        return lambda c: _measured(operator, c.in_features, c.out_features, rank, options)
    return lambda c: formula(c.in_features, c.out_features, rank, options)


def module_cost(candidate: Candidate, operator: str, rank: int,
                operator_args: Mapping[str, Any] | None = None) -> int:
    """Trainable parameters of ``operator``'s rank-``rank`` branch on ``candidate`` (see the module docstring)."""
    return pricer(operator, rank, operator_args)(candidate)


def space_cost(candidates: Iterable[Candidate], operator: str, rank: int,
               operator_args: Mapping[str, Any] | None = None) -> int:
    """Σ module_cost over ``candidates`` (e.g. a whole search space, or a selection)."""
    price = pricer(operator, rank, operator_args)
    return sum(price(c) for c in candidates)
