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


class _RandomState:
    """Snapshot of every random stream a forward may draw from: torch's CPU and CUDA generators and the
    ``generator`` of any ``relaxation`` attribute of the model's modules (the supernet's). Restoring it
    replays the same dropout masks and relaxation samples."""

    def __init__(self, model: nn.Module) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        generators = {id(g): g for m in model.modules()
                      if isinstance(g := getattr(getattr(m, "relaxation", None), "generator", None), torch.Generator)}
        self.generators = [(g, g.get_state()) for g in generators.values()]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, state in self.generators:
            generator.set_state(state)


def _grads_or_zeros(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """∂loss/∂x for each x, with zeros where x does not reach the loss."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


@HYPERGRADIENTS.register("second_order")
def second_order(problem: BilevelProblem, w_batch: Batch, alpha_batch: Batch) -> Hypergradient:
    """DARTS unrolled hypergradient with a central finite difference for the mixed second derivative:

        w′ = w − ξ∇_w L_w(w, α),   v = ∇_{w′} L_α(w′, α),   ε = 0.01 / ‖v‖,   w± = w ± εv,
        g  = ∇_α L_α(w′, α) − ξ · [∇_α L_w(w⁺, α) − ∇_α L_w(w⁻, α)] / (2ε).

    w′ is detached from w (and from α); w′ and w± replace only the inner variables, through
    ``problem.loss(weights=...)``; no parameter is copied or modified. The three L_w evaluations replay
    the same random draws (dropout, stochastic relaxations) so that the finite difference sees one
    function; afterwards the random streams are where two forwards (L_w, L_α) would have left them.
    """
    names = list(problem.inner)
    w = [problem.inner[n].detach() for n in names]
    outer = list(problem.outer.values())
    xi = problem.inner_lr

    replay = _RandomState(problem.model)
    grads_w = _grads_or_zeros(problem.loss(w_batch), [problem.inner[n] for n in names])
    w_prime = [(p - xi * g).requires_grad_(True) for p, g in zip(w, grads_w, strict=True)]
    del grads_w

    alpha_loss = problem.loss(alpha_batch, weights=dict(zip(names, w_prime, strict=True)))
    grads = _grads_or_zeros(alpha_loss, outer + w_prime)
    grads_alpha, v = grads[:len(outer)], grads[len(outer):]
    after = _RandomState(problem.model)

    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v])))
    if xi != 0.0 and norm != 0.0:  # v = 0: the correction is 0; a NaN norm propagates
        eps = 0.01 / norm
        finite_difference = []
        for sign in (1.0, -1.0):
            replay.restore()
            shifted = {n: p + sign * eps * d for n, p, d in zip(names, w, v, strict=True)}
            finite_difference.append(_grads_or_zeros(problem.loss(w_batch, weights=shifted), outer))
        grads_alpha = [g - xi * (plus - minus) / (2.0 * eps)
                       for g, plus, minus in zip(grads_alpha, *finite_difference, strict=True)]
        after.restore()
    return Hypergradient(grads=grads_alpha, alpha_loss=float(alpha_loss.detach()))
