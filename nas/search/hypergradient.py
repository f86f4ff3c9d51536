"""Hypergradients of the bilevel problem  min_α L_α(w*(α), α)  s.t.  w*(α) = argmin_w L_w(w, α).

Every method is a pure function with one signature, ``(problem, w_batch, alpha_batch) -> Hypergradient``,
kept in :data:`HYPERGRADIENTS`; the search loop never knows which one it runs. A method that needs the
weights at another point (the unrolled w′ = w + Δ(∇_w L_w), Δ the inner optimizer's virtual step, see
:mod:`nas.search.virtual_step`) evaluates the loss there through :meth:`BilevelProblem.loss` with ``weights=...``,
which uses ``torch.func.functional_call`` — the model is never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nas.engine.completions import model_inputs
from nas.engine.parallel import SINGLE, Parallel
from nas.registry import Registry
from nas.search.virtual_step import VirtualStep, sgd_virtual_step

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[Any, Batch], torch.Tensor]  # (model outputs, batch) -> scalar loss


@dataclass
class BilevelProblem:
    """What a hypergradient method may use: the supernet, its loss, w (inner) and α (outer), and the inner step.

    ``virtual_step`` maps the gradients ∇_w L_w (aligned with ``inner``) to the update Δ of one inner step,
    w′ = w + Δ: the w-optimizer's own step (:func:`~nas.search.virtual_step.optimizer_virtual_step`) or DARTS' explicit
    w′ = w − ξ∇_w L_w (:func:`~nas.search.virtual_step.sgd_virtual_step`). ``build_virtual_step`` makes it on first use
    instead (a first-order search never asks for it). When there is neither, ``inner_lr`` is that ξ.
    Every gradient goes through :meth:`grads`, which splits a batch into this process's micro-batches and sums
    their gradients over the processes (``parallel``, nas/engine/parallel.py): the global batch's gradient.
    """

    model: nn.Module
    loss_fn: LossFn
    inner: dict[str, nn.Parameter]
    outer: dict[str, nn.Parameter]
    inner_lr: float | None = None
    virtual_step: VirtualStep | None = None
    parallel: Parallel = SINGLE
    build_virtual_step: Callable[[], VirtualStep] | None = None

    def inner_step(self) -> VirtualStep:
        """``virtual_step`` (built by ``build_virtual_step`` the first time), or the SGD step w′ = w − ξ∇_w L_w with
        ξ = ``inner_lr``."""
        if self.virtual_step is None and self.build_virtual_step is not None:
            self.virtual_step = self.build_virtual_step()
        if self.virtual_step is not None:
            return self.virtual_step
        if self.inner_lr is None:
            raise ValueError("the unrolled hypergradient needs the inner step: give BilevelProblem "
                             "virtual_step=optimizer_virtual_step(w_optimizer, list(inner.values())) or inner_lr=ξ")
        return sgd_virtual_step(self.inner_lr)

    def loss(self, batch: Batch, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """L(w, α) on ``batch``; with ``weights`` the inner variables are replaced by those tensors."""
        inputs = model_inputs(batch)
        if weights is None:
            outputs = self.model(**inputs)
        else:
            outputs = functional_call(self.model, dict(weights), args=(), kwargs=inputs, strict=False)
        return self.loss_fn(outputs, batch)

    def grads(self, batch: Batch, inputs: list[torch.Tensor],
              weights: Mapping[str, torch.Tensor] | None = None) -> tuple[list[torch.Tensor], float]:
        """(∂L/∂x for each x of ``inputs``, zeros where x does not reach L; L) for the mean loss of the global
        ``batch``, over micro-batches and processes (:meth:`nas.engine.parallel.Parallel.grads`)."""
        return self.parallel.grads(lambda part: self.loss(part, weights), batch, inputs)


@dataclass
class Hypergradient:
    grads: list[torch.Tensor]  # aligned with problem.outer.values()
    alpha_loss: float


HypergradientFn = Callable[[BilevelProblem, Batch, Batch], Hypergradient]
HYPERGRADIENTS: Registry[HypergradientFn] = Registry("hypergradient")


@HYPERGRADIENTS.register("first_order")
def first_order(problem: BilevelProblem, w_batch: Batch, alpha_batch: Batch) -> Hypergradient:
    """∇_α L_α(w, α): the unrolled gradient with ξ = 0 (DARTS first order).

    For a gate γ_m that scales a LoRA branch ΔW_m = γ_m·s·B_m A_m (no ``bilevel.branch_size``) this is, exactly,

        ∂L_α/∂γ_m = ⟨∇_{B_m} L_α, B_m⟩ / γ_m,

    the α-split's gradient for B_m along B_m itself: the gate moves only while the branch is under- (or over-)grown
    along its own direction, and its gradient on the w-split is 0 wherever B_m is at a stationary point of L_w. What
    the DAM ends up with is therefore a record of the search's path (how long and how strongly each branch stayed
    under-grown), not a property of the trained supernet (tests/test_bilevel.py checks the identity).
    """
    grads, loss = problem.grads(alpha_batch, list(problem.outer.values()))
    return Hypergradient(grads=grads, alpha_loss=loss)


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


@HYPERGRADIENTS.register("second_order")
def second_order(problem: BilevelProblem, w_batch: Batch, alpha_batch: Batch) -> Hypergradient:
    """Unrolled hypergradient through one virtual inner step, with a central finite difference:

        g = ∇_w L_w(w, α),   w′ = w + Δ(g),   D = ∂Δ/∂g (diagonal),   v = ∇_{w′} L_α(w′, α),
        u = D v,   ε = 0.01 / ‖u‖,   w± = w ± εu,
        ∇_α L_α(w′(α), α) ≈ ∇_α L_α(w′, α) + [∇_α L_w(w⁺, α) − ∇_α L_w(w⁻, α)] / (2ε).

    Derivation: w′ depends on α through g, dw′/dα = D ∂g/∂α with ∂g/∂α = ∇²_{wα} L_w, so the chain rule adds
    (∂g/∂α)ᵀ D v = ∇_α ⟨∇_w L_w(w, α), u⟩ = ∇²_{αw} L_w · u, the directional derivative of ∇_α L_w along u,
    which the central difference approximates (error O(ε²), perturbation ‖w± − w‖ = 0.01). With DARTS' step
    Δ = −ξg, D = −ξ and this is DARTS' g = ∇_α L_α(w′) − ξ[∇_α L_w(w + εv) − ∇_α L_w(w − εv)]/(2ε). For Adam(W)
    D is the exact diagonal Jacobian of the step (Adam is elementwise; see :mod:`nas.search.virtual_step`), so the
    result is the unrolled gradient through the real inner update, up to the finite difference and the clip
    factor, which is held constant.

    w′ is detached from w (and from α); w′ and w± replace only the inner variables, through
    ``problem.loss(weights=...)``; no parameter, and no optimizer state, is copied or modified. The three L_w
    evaluations replay the same random draws (dropout, stochastic relaxations) so that the finite difference
    sees one function; afterwards the random streams are where two forwards (L_w, L_α) would have left them.
    """
    names = list(problem.inner)
    w = [problem.inner[n].detach() for n in names]
    outer = list(problem.outer.values())
    step = problem.inner_step()

    replay = _RandomState(problem.model)
    grads_w, _ = problem.grads(w_batch, [problem.inner[n] for n in names])
    with torch.no_grad():
        delta, jacobian = step.linearize(grads_w)
    w_prime = [(p + d).requires_grad_(True) for p, d in zip(w, delta, strict=True)]
    del grads_w, delta

    grads, alpha_loss = problem.grads(alpha_batch, outer + w_prime, weights=dict(zip(names, w_prime, strict=True)))
    grads_alpha, v = grads[:len(outer)], grads[len(outer):]
    after = _RandomState(problem.model)

    u = [d * g for d, g in zip(jacobian, v, strict=True)]
    del jacobian, v
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in u])))
    if norm != 0.0:  # u = 0 (ξ = 0, or v = 0): the correction is 0; a NaN norm propagates
        eps = 0.01 / norm
        finite_difference = []
        for sign in (1.0, -1.0):
            replay.restore()
            shifted = {n: p + sign * eps * d for n, p, d in zip(names, w, u, strict=True)}
            finite_difference.append(problem.grads(w_batch, outer, weights=shifted)[0])
        grads_alpha = [g + (plus - minus) / (2.0 * eps)
                       for g, plus, minus in zip(grads_alpha, *finite_difference, strict=True)]
        after.restore()
    return Hypergradient(grads=grads_alpha, alpha_loss=alpha_loss)
