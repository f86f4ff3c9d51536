"""An optimizer for the DAM that keeps the gates' gradients in proportion to one another.

Per-coordinate Adam divides every gate's gradient by that gate's own running RMS, so each gate whose gradient
keeps one sign moves at the same speed ≈ lr, however small its gradient is: the ranking it leaves behind says
which gates were *consistent*, not which mattered. ``SharedAdam`` keeps Adam's momentum and bias correction but
shares one second moment per tensor (the mean square over all its entries):

    m_t = β₁ m_{t−1} + (1 − β₁) g_t,          v_t = β₂ v_{t−1} + (1 − β₂) · mean(g_t²),
    Γ_t = Γ_{t−1} − lr · (m_t / (1 − β₁ᵗ)) / (√(v_t / (1 − β₂ᵗ)) + ε) − lr · λ · Γ_{t−1}   (decoupled decay),

so the step is still free of the loss's scale, but a gate whose gradient is ten times another's moves ten
times as far.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SharedAdam(torch.optim.Optimizer):
    """Adam with one second-moment scalar per parameter tensor (see the module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"SharedAdam needs lr > 0, eps > 0, betas in [0, 1) and weight_decay >= 0; got lr={lr}, "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros((), dtype=param.dtype, device=param.device)
                state["step"] += 1
                t = state["step"]
                grad = param.grad
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(grad.square().mean(), alpha=1 - beta2)
                if group["weight_decay"]:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                denominator = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt() + group["eps"]
                param.sub_(state["exp_avg"] / (1 - beta1 ** t) / denominator * group["lr"])
        return loss
