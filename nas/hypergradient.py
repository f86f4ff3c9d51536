"""Hypergradients of the bilevel problem  min_α L_α(w*(α), α)  s.t.  w*(α) = argmin_w L_w(w, α).

Every method is a pure function with one signature, ``(problem, w_batch, alpha_batch) -> Hypergradient``,
kept in :data:`HYPERGRADIENTS`; the search loop never knows which one it runs. A method that needs the
weights at another point (the unrolled w′ = w − ξ∇_w L_w) evaluates the loss there through
:meth:`BilevelProblem.loss` with ``weights=...``, which uses ``torch.func.functional_call`` — the model
is never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nas.registry import Registry

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[Any, Batch], torch.Tensor]  # (model outputs, batch) -> scalar loss


@dataclass
class BilevelProblem:
    """What a hypergradient method may use: the supernet, its loss, w (inner) and α (outer), and ξ."""

    model: nn.Module
    loss_fn: LossFn
    inner: dict[str, nn.Parameter]
    outer: dict[str, nn.Parameter]
    inner_lr: float

    def loss(self, batch: Batch, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """L(w, α) on ``batch``; with ``weights`` the inner variables are replaced by those tensors."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if weights is None:
            outputs = self.model(**inputs)
        else:
            outputs = functional_call(self.model, dict(weights), args=(), kwargs=inputs, strict=False)
        return self.loss_fn(outputs, batch)


@dataclass
class Hypergradient:
    grads: list[torch.Tensor]  # aligned with problem.outer.values()
    alpha_loss: float


HypergradientFn = Callable[[BilevelProblem, Batch, Batch], Hypergradient]
HYPERGRADIENTS: Registry[HypergradientFn] = Registry("hypergradient")


@HYPERGRADIENTS.register("first_order")
def first_order(problem: BilevelProblem, w_batch: Batch, alpha_batch: Batch) -> Hypergradient:
    """∇_α L_α(w, α): the unrolled gradient with ξ = 0 (DARTS first order)."""
    loss = problem.loss(alpha_batch)
    grads = torch.autograd.grad(loss, list(problem.outer.values()))
    return Hypergradient(grads=list(grads), alpha_loss=float(loss.detach()))
