"""The alternating bilevel search step: an α-step on an α-split batch, then a w-step on a w-split batch.

The α-step applies whichever hypergradient method it is given; the w-step is one w-optimizer step along
∇_w L_w(w, α) (clipped to global norm ``grad_clip``) over the inner variables only. The two optimizers share
no parameter (checked on creation). A second-order hypergradient that unrolls "the optimizer's own step"
predicts exactly this w-step when its virtual step is ``optimizer_virtual_step(w_optimizer, inner, grad_clip)``.

With ``w_average`` = β > 0 the α-step reads, instead of the current w, their debiased exponential average over the
w-steps so far (Polyak averaging): w̄_t = m_t / (1 − β^t), m_t = β·m_{t−1} + (1 − β)·w_t, m_0 = 0. A w-optimizer with
a constant rate leaves w moving about its optimum; for a gate that scales a branch, ∂L_α/∂γ = ⟨∇_B L_α, B⟩/γ, and
that motion adds E[δᵀHδ] > 0 to it (δ: the branch's distance from its optimum, H: the α-loss curvature), pushing
every converged branch's gate down at a rate set by the w learning rate, not by the branch's use. The average damps
that motion: on a toy regression with a known optimum, β = 0.98 cuts the push by a quarter to two thirds
(tests/test_weight_average.py). The w-steps, and everything after the search, use the current w.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from nas.search.hypergradient import Batch, BilevelProblem, HypergradientFn


@dataclass
class StepStats:
    w_loss: float
    alpha_loss: float | None  # None while α-steps wait for the warm-up
    w_grad_norm: float | None = None  # global norm of ∇_w L_w before clipping
    penalties: dict[str, float] = field(default_factory=dict)  # each DAM regularizer's (unweighted) value


ArchPenalty = Callable[[], tuple[torch.Tensor, dict[str, float]]]  # () -> (Σ λ_i R_i(Γ), {name: R_i})


def assert_disjoint(first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
    """Raise if any parameter is in both optimizers."""
    ids = {id(p) for group in first.param_groups for p in group["params"]}
    shared = [p for group in second.param_groups for p in group["params"] if id(p) in ids]
    if shared:
        raise ValueError(f"the w- and α-optimizers share {len(shared)} parameter(s); each must own its own")


class BilevelSearch:
    """Owns the two optimizers and performs one search step at a time."""

    def __init__(self, problem: BilevelProblem, hypergradient: HypergradientFn,
                 w_optimizer: torch.optim.Optimizer, alpha_optimizer: torch.optim.Optimizer,
                 grad_clip: float | None = 1.0, warmup_steps: int = 0, arch_penalty: ArchPenalty | None = None,
                 w_lr_factor: Callable[[int], float] | None = None, w_average: float = 0.0) -> None:
        assert_disjoint(w_optimizer, alpha_optimizer)
        self.problem = problem
        self.hypergradient = hypergradient
        self.w_optimizer = w_optimizer
        self.alpha_optimizer = alpha_optimizer
        self.grad_clip = grad_clip
        self.warmup_steps = warmup_steps
        self.arch_penalty = arch_penalty
        self.w_lr_factor = w_lr_factor  # step → factor on every w group's initial lr (a pure function of the step, so a
        # resumed search continues it exactly)
        for group in w_optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        if not 0.0 <= w_average < 1.0:
            raise ValueError(f"w_average={w_average} must be in [0, 1): the decay β of the weights' average")
        self.w_average = w_average
        self.averaged: list[torch.Tensor] | None = (  # m_t of the module docstring; None when w_average = 0
            [torch.zeros_like(p, dtype=torch.float32) for p in problem.inner.values()] if w_average else None)
        self.averaged_steps = 0  # t of the module docstring
        self.steps_done = 0
        self.last_penalties: dict[str, float] = {}
        self.last_w_grad_norm: float | None = None

    def alpha_step(self, w_batch: Batch, alpha_batch: Batch) -> float:
        """α ← optimizer step along the hypergradient plus ∇_α of the DAM penalty (if any); only α changes."""
        with self.reading_average():
            result = self.hypergradient(self.problem, w_batch, alpha_batch)
        grads = [grad.detach() for grad in result.grads]
        if self.arch_penalty is not None:
            penalty, self.last_penalties = self.arch_penalty()
            outer = list(self.problem.outer.values())
            if penalty.requires_grad:
                extra = torch.autograd.grad(penalty, outer, allow_unused=True)
                grads = [g if e is None else g + e.detach() for g, e in zip(grads, extra, strict=True)]
        self.alpha_optimizer.zero_grad(set_to_none=True)
        for parameter, grad in zip(self.problem.outer.values(), grads, strict=True):
            parameter.grad = grad
        self.alpha_optimizer.step()
        return result.alpha_loss

    def w_step(self, w_batch: Batch) -> float:
        """w ← optimizer step along ∇_w L_w(w, α); only w changes. The gradient's global norm (before clipping)
        is kept in ``last_w_grad_norm``."""
        params = list(self.problem.inner.values())
        grads, loss = self.problem.grads(w_batch, params)
        self.w_optimizer.zero_grad(set_to_none=True)
        for parameter, grad in zip(params, grads, strict=True):
            parameter.grad = grad
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
        self.last_w_grad_norm = float(norm)
        self.w_optimizer.step()
        self._update_average(params)
        return loss

    def _update_average(self, params: list[torch.nn.Parameter]) -> None:
        if self.averaged is None:
            return
        with torch.no_grad():
            for mean, parameter in zip(self.averaged, params, strict=True):
                mean.mul_(self.w_average).add_(parameter.detach().float(), alpha=1.0 - self.w_average)
        self.averaged_steps += 1

    def average_state(self) -> dict[str, object]:
        """What a checkpoint keeps of the average (m_t and t)."""
        return {"mean": self.averaged, "steps": self.averaged_steps}

    def load_average_state(self, state: dict[str, object]) -> None:
        """Restore what :meth:`average_state` kept (nothing to restore when ``w_average`` = 0)."""
        if self.averaged is None:
            return
        with torch.no_grad():
            for mean, value in zip(self.averaged, state["mean"], strict=True):
                mean.copy_(value)
        self.averaged_steps = int(state["steps"])

    @contextmanager
    def reading_average(self) -> Iterator[None]:
        """Inside, the inner variables hold their debiased average w̄ (unchanged when ``w_average`` = 0 or before
        the first w-step); on leaving, their current values again, whatever happened inside."""
        if self.averaged is None or self.averaged_steps == 0:
            yield
            return
        params = list(self.problem.inner.values())
        current = [p.detach().clone() for p in params]
        debias = 1.0 - self.w_average ** self.averaged_steps
        with torch.no_grad():
            for parameter, mean in zip(params, self.averaged, strict=True):
                parameter.copy_(mean / debias)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(params, current, strict=True):
                    parameter.copy_(value)

    def step(self, w_batch: Batch, alpha_batch: Batch) -> StepStats:
        if self.w_lr_factor is not None:  # before the α-step, whose virtual step reads the lr of this step's w-step
            factor = self.w_lr_factor(self.steps_done)
            for group in self.w_optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        alpha_loss = None
        if self.steps_done >= self.warmup_steps:
            alpha_loss = self.alpha_step(w_batch, alpha_batch)
        w_loss = self.w_step(w_batch)
        self.steps_done += 1
        return StepStats(w_loss=w_loss, alpha_loss=alpha_loss,
                         penalties=dict(self.last_penalties) if alpha_loss is not None else {},
                         w_grad_norm=self.last_w_grad_norm)
