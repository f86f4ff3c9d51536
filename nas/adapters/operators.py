"""Adapter operators: the registry of branches ΔW·x that a candidate module can get, and the wrapper that adds one.

An operator is an ``nn.Module`` mapping the module input x to ΔW·x. :class:`AdaptedLinear` wraps a
frozen linear module from outside (the model's code is never edited) and computes

    h = W₀x + γ · ΔW·x,

where γ is the module's relaxed DAM entry during search, a constant during retraining, or 1.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from nas.errors import ConfigError
from nas.registry import Registry
from search_spaces.space import linear_features


class Operator(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def reset_parameters(self) -> None: ...
    def scale_output_(self, factor: float) -> None: ...
    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]: ...  # (A, B) with ΔW = B A exactly (the export)


# Every entry is an nn.Module class following the Operator protocol, built as
# cls(in, out, rank=, alpha=, dropout=, **operator_args); operator_args are the operator's own options. Each operator
# lives in its own file (lora.py, prolora.py, sora.py) and registers itself; importing the package nas.adapters
# imports them all, so this module never imports them back.
OPERATORS: Registry[type[nn.Module]] = Registry("adapter operator")


COMMON_ARGS = ("self", "in_features", "out_features", "rank", "alpha", "dropout")


def operator_options(name: str, operator_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The operator's own options: its constructor defaults updated with ``operator_args``.

    An option the operator does not take is a ConfigError that lists the accepted ones.
    """
    parameters = {n: p for n, p in inspect.signature(OPERATORS.get(name).__init__).parameters.items()
                  if n not in COMMON_ARGS}
    extra = dict(operator_args or {})
    unknown = sorted(set(extra) - set(parameters))
    if unknown:
        raise ConfigError(f"space.operator_args has {', '.join(unknown)}, which operator '{name}' does not take; "
                          f"it accepts: {', '.join(parameters) or 'no options'}")
    defaults = {n: p.default for n, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **extra}


def build_operator(name: str, in_features: int, out_features: int, rank: int, alpha: float,
                   dropout: float, operator_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``OPERATORS[name](in, out, rank=, alpha=, dropout=, **operator_args)``; unknown options are a ConfigError."""
    options = operator_options(name, operator_args)
    return OPERATORS.get(name)(in_features, out_features, rank=rank, alpha=alpha, dropout=dropout, **options)


class AdaptedLinear(nn.Module):
    """h = W₀x + γ·branch(x); ``base_layer`` stays frozen, ``gate`` (γ) is set from outside or is 1."""

    def __init__(self, base_layer: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.branch = branch
        self.gate: torch.Tensor | None = None
        for parameter in self.base_layer.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.branch(x)
        if self.gate is not None:
            delta = delta * self.gate
        return self.base_layer(x) + delta


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``model.get_submodule(name)`` was; returns the old module."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def inject_adapters(model: nn.Module, names: list[str], operator: str, rank: int, alpha: float,
                    dropout: float, operator_args: Mapping[str, Any] | None = None) -> dict[str, AdaptedLinear]:
    """Wrap each named linear module of ``model`` with an :class:`AdaptedLinear`; returns them by name."""
    adapted: dict[str, AdaptedLinear] = {}
    for name in names:
        base = model.get_submodule(name)
        in_features, out_features = linear_features(base)
        branch = build_operator(operator, in_features, out_features, rank, alpha, dropout, operator_args)
        branch.to(device=base.weight.device, dtype=base.weight.dtype)
        wrapper = AdaptedLinear(base, branch)
        replace_module(model, name, wrapper)
        adapted[name] = wrapper
    return adapted

