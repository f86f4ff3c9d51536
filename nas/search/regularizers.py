"""Penalties on the DAM, added to the α-loss with weights from the config.

A regularizer is a pure function ``(keep, context) -> scalar tensor``. ``keep`` has shape (layers, types) and
holds p_{l,j}, the probability that cell (l, j) keeps its LoRA, as produced by the relaxation (so it is
differentiable w.r.t. Γ). Only the real cells (``context.mask``) count: empty cells never change a value nor
get a gradient. :func:`build_regularizer_loss` turns ``{name: weight}`` into  L_reg = Σ_i λ_i · R_i(keep).
Register new ones with ``@REGULARIZERS.register(name)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from nas.adapters.cost import pricer
from nas.errors import ConfigError
from nas.registry import Registry
from search_spaces.space import SearchSpace

PROB_EPS = 1e-6


@dataclass(frozen=True)
class RegularizerContext:
    """What regularizers may use besides ``keep``.

    Attributes:
        mask: bool (layers, types), True on cells that hold a candidate.
        cell_params: float (layers, types), trainable parameters of each cell's branch
            (:func:`nas.adapters.cost.module_cost`: r·(in + out) for LoRA); 0 on empty cells.
        logits: the raw DAM logits Γ, (layers, types) or (layers, types, k); needed by ``beta_decay`` only.
        target_fraction: ρ, the fraction of modules the discretizer will keep.
        target_params: parameter budget; None means "count modules, target ρ·N".
        progress: search progress in [0, 1] (step / total steps), for schedules.
    """

    mask: Tensor
    cell_params: Tensor
    logits: Tensor | None = None
    target_fraction: float = 0.5
    target_params: float | None = None
    progress: float = 0.0

    @classmethod
    def from_space(cls, space: SearchSpace, rank: int, logits: Tensor | None = None, target_fraction: float = 0.5,
                   target_params: float | None = None, progress: float = 0.0, operator: str = "lora",
                   operator_args: Mapping[str, Any] | None = None) -> RegularizerContext:
        """Context for ``space`` with rank-``rank`` ``operator`` branches (mask and costs on the device of
        ``logits``)."""
        mask, params = cell_mask(space), cell_param_matrix(space, rank, operator, operator_args)
        if logits is not None:
            mask, params = mask.to(logits.device), params.to(logits.device)
        return cls(mask, params, logits, target_fraction, target_params, progress)


Regularizer = Callable[[Tensor, RegularizerContext], Tensor]
REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


def cell_mask(space: SearchSpace) -> Tensor:
    """Bool (layers, types): True where a candidate sits."""
    mask = torch.zeros(space.shape, dtype=torch.bool)
    for name in space.names:
        mask[space.coordinate(name)] = True
    return mask


def cell_param_matrix(space: SearchSpace, rank: int, operator: str = "lora",
                      operator_args: Mapping[str, Any] | None = None) -> Tensor:
    """Float (layers, types): module_cost(candidate, operator, rank, operator_args) per candidate cell (LoRA:
    r·(in + out)), 0 on empty cells."""
    price = pricer(operator, rank, operator_args)
    params = torch.zeros(space.shape, dtype=torch.float32)
    for candidate in space:
        params[space.coordinate(candidate.name)] = float(price(candidate))
    return params


def _real(keep: Tensor, context: RegularizerContext) -> Tensor:
    """The keep probabilities of real cells, flattened (empty cells are dropped, not zeroed)."""
    if keep.shape != context.mask.shape:
        raise ValueError(f"keep has shape {tuple(keep.shape)} but the DAM mask has {tuple(context.mask.shape)}")
    return keep[context.mask.to(keep.device)]


@REGULARIZERS.register("expected_budget")
def expected_budget(keep: Tensor, context: RegularizerContext) -> Tensor:
    """R = ((Σ_{real} p·c − B) / B)², the squared relative gap between the expected budget and the target.

    With ``target_params``: c = cell_params and B = target_params (a parameter budget).
    Without it: c = 1 per module and B = ρ·N, N real cells (a module-count budget matching global top-k).
    """
    mask = context.mask.to(keep.device)
    if context.target_params is not None:
        cost, target = context.cell_params.to(keep)[mask], float(context.target_params)
    else:
        cost, target = torch.ones_like(keep[mask]), context.target_fraction * int(mask.sum())
    if not target > 0:
        raise ConfigError(f"expected_budget needs a positive target, got {target}; set rho or target_params > 0")
    expected = (_real(keep, context) * cost).sum()
    return ((expected - target) / target) ** 2


@REGULARIZERS.register("zero_one")
def zero_one(keep: Tensor, context: RegularizerContext) -> Tensor:
    """FairDARTS zero-one loss: R = −(1/N) Σ_{real} (p − 0.5)²; minimising it pushes p away from 0.5."""
    return -((_real(keep, context) - 0.5) ** 2).mean()


@REGULARIZERS.register("entropy")
def entropy(keep: Tensor, context: RegularizerContext) -> Tensor:
    """R = −(1/N) Σ_{real} [p log p + (1 − p) log(1 − p)], p clamped to [ε, 1 − ε]; minimising it → p ∈ {0, 1}."""
    p = _real(keep, context).clamp(PROB_EPS, 1.0 - PROB_EPS)
    return -(p * p.log() + (1.0 - p) * (1.0 - p).log()).mean()


@REGULARIZERS.register("beta_decay")
def beta_decay(keep: Tensor, context: RegularizerContext) -> Tensor:
    """β-Decay (Ye et al. 2022, arXiv 2203.01665) on the logits: R = (1/N) Σ_{real} logsumexp(Γ_cell).

    Softmax cells (k logits) use logsumexp over their k logits, as in β-DARTS, where ∂R/∂Γ_k = softmax(Γ)_k > 0.
    Single-logit (sigmoid) cells are read as the 2-way softmax over {Γ, 0} (LoRA vs. zero op, since σ(Γ) =
    softmax([Γ, 0])_0), so R uses logsumexp([Γ, 0]) = softplus(Γ), with ∂R/∂Γ = σ(Γ). ``keep`` is unused.
    """
    logits = context.logits
    if logits is None:
        raise ValueError("beta_decay needs the DAM logits: build the RegularizerContext with logits=...")
    mask = context.mask.to(logits.device)
    if logits.dim() == 3 and logits.shape[-1] == 1:
        logits = logits[..., 0]
    if logits.shape[:2] != mask.shape or logits.dim() not in (2, 3):
        raise ValueError(f"logits shape {tuple(logits.shape)} does not fit the DAM mask {tuple(mask.shape)}")
    smooth_max = F.softplus(logits) if logits.dim() == 2 else torch.logsumexp(logits, dim=-1)
    return smooth_max[mask].mean()


def build_regularizer_loss(
    weights: Mapping[str, float],
) -> Callable[[Tensor, RegularizerContext], tuple[Tensor, dict[str, float]]]:
    """L_reg(keep, ctx) = Σ_i λ_i · R_i(keep, ctx) over the non-zero weights; also returns each R_i (unweighted).

    An unknown name, or a weight that is negative or not finite, is a ConfigError. No active term → L_reg = 0.
    """
    active: list[tuple[str, float, Regularizer]] = []
    for name, weight in weights.items():
        if name not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer '{name}'; choose one of: {', '.join(REGULARIZERS.names())}")
        value = float(weight)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"regularizer weight {name}={weight} must be a finite number >= 0 (0 disables it)")
        if value != 0.0:
            active.append((name, value, REGULARIZERS.get(name)))

    def loss(keep: Tensor, context: RegularizerContext) -> tuple[Tensor, dict[str, float]]:
        total = keep.new_zeros(())
        terms: dict[str, float] = {}
        for name, weight, regularizer in active:
            term = regularizer(keep, context)
            terms[name] = float(term.detach())
            total = total + weight * term
        return total, terms

    return loss
