"""The inner optimizer's next update as a function of the gradient: w′ = w + Δ(g), without stepping it.

The unrolled (second-order) hypergradient differentiates L_α(w′(α), α) through one inner step
w′ = w + Δ(g), g = ∇_w L_w(w, α). DARTS takes Δ(g) = −ξg; the real inner optimizer here is AdamW, whose step
is neither −ξg nor linear in g. A :class:`VirtualStep` computes the update the optimizer *would* apply for
given gradients, reading (never writing) its state, together with the diagonal of its Jacobian

    D = ∂Δ/∂g  (elementwise: every supported rule updates each coordinate from its own gradient only),

which is what the finite-difference correction of :func:`nas.search.hypergradient.second_order` needs.

Global-norm gradient clipping (as in the w-step) multiplies every g by s = min(1, c / (‖g‖₂ + 1e-6)), the
factor of ``torch.nn.utils.clip_grad_norm_``; s is treated as a constant (it is not differentiated), so
Δ(g) = Δ_opt(s·g) and D = s·D_opt(s·g).

Rules (g̃ = g, or −g with ``maximize``; w the current parameter; t the step about to be taken):

* explicit ξ (:func:`sgd_virtual_step`):  Δ = −ξg,  D = −ξ  (DARTS' virtual step; ξ = 0 is first order).
* SGD (lr η, weight decay λ, momentum μ, dampening δ, Nesterov):  d = g̃ + λw;
  b = d on the first step (no buffer) else μb_prev + (1 − δ)d;  Δ = −η·(d + μb if Nesterov else b);
  ∂b/∂d = 1 on the first step else 1 − δ;  D = ∓η·(1 + μ∂b/∂d if Nesterov else ∂b/∂d) (− unless maximize).
* Adam / AdamW (lr η, betas β₁ β₂, eps ε, weight decay λ, coupled for Adam: g̃ ← g̃ + λw; decoupled for
  AdamW): with m_prev = v_prev = 0 and t = 1 when the state is empty (as torch initialises it),

      m = β₁m_prev + (1 − β₁)g̃,   v = β₂v_prev + (1 − β₂)g̃²   (AMSGrad: v ← max(v_max, v)),
      c₁ = 1 − β₁ᵗ,  c₂ = 1 − β₂ᵗ,   den = √v / √c₂ + ε,
      Δ = −(η/c₁)·m/den  (− ηλw for AdamW),
      ∂Δ/∂g̃ = −(η/c₁)·[(1 − β₁)/den − m·(∂√v/∂g̃)/(√c₂·den²)],   ∂√v/∂g̃ = (1 − β₂)g̃/√v

  (∂√v/∂g̃ = 0 where v = 0, and where AMSGrad keeps the old maximum). This is the exact derivative of the
  elementwise step, the dependence of the second moment on g included; no preconditioner is frozen. (Freezing
  √v̂ would keep only the first term, −η(1 − β₁)/(c₁·den); on the first step, where m̂ = g̃ and v̂ = g̃², the two
  differ most: frozen −η/(|g̃| + ε), exact −η·ε/(|g̃| + ε)², the step being ≈ −η·sign(g̃).) Where v = 0 the slope
  is −η(1 − β₁)/(c₁ε), exact but valid only for |g̃| ≲ ε. So while the Adam state is young, coordinates whose
  gradient is of the order of ε get slopes up to η/ε and dominate D: let the w-optimizer take a few steps
  before the first unrolled α-step (``bilevel.warmup_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

StepRule = Callable[[Tensor], tuple[Tensor, Tensor]]  # g -> (Δ, ∂Δ/∂g elementwise), for one parameter
CLIP_EPS = 1e-6  # the ε of clip_grad_norm_: s = c / (‖g‖ + ε)


class VirtualStep:
    """Δ(g) for a list of gradients (one per inner variable, in order); see the module docstring.

    Calling it, ``virtual_step(grads)``, returns Δ (w′ = w + Δ), differentiable in ``grads`` when they carry a graph;
    :meth:`linearize` returns Δ and D = ∂Δ/∂g (elementwise, same shapes or broadcastable). ``rules`` holds one
    rule per inner variable, or one rule for all of them. The optimizer rules read its state and
    hyper-parameters when called, so a scheduler's lr and the moments are always current.
    """

    def __init__(self, rules: Sequence[StepRule] | StepRule, grad_clip: float | None = None,
                 description: str = "") -> None:
        if grad_clip is not None and not grad_clip >= 0:
            raise ValueError(f"grad_clip={grad_clip} must be > 0, or 0/None for no clipping (as bilevel.grad_clip)")
        self.rules = rules
        self.grad_clip = grad_clip or None
        self.description = description

    def __repr__(self) -> str:
        return f"VirtualStep({self.description}, grad_clip={self.grad_clip})"

    def clip_scale(self, grads: Sequence[Tensor]) -> float:
        """s = min(1, c / (‖g‖₂ + 1e-6)) over all gradients, a constant; 1 without clipping."""
        if not self.grad_clip or not grads:
            return 1.0
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
        return min(1.0, self.grad_clip / (float(norm) + CLIP_EPS))

    def _rules_for(self, grads: Sequence[Tensor]) -> list[StepRule]:
        if callable(self.rules):
            return [self.rules] * len(grads)
        if len(grads) != len(self.rules):
            raise ValueError(f"the virtual step was built for {len(self.rules)} parameters but got {len(grads)} "
                             f"gradients; build it from the same inner variables as BilevelProblem.inner")
        return list(self.rules)

    def __call__(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Δ, one tensor per gradient."""
        return self.linearize(grads)[0]

    def linearize(self, grads: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(Δ, D) with D = ∂Δ/∂g elementwise, the clip factor s held constant."""
        scale = self.clip_scale(grads)
        deltas, jacobians = [], []
        for rule, grad in zip(self._rules_for(grads), grads, strict=True):
            delta, jacobian = rule(grad * scale if scale != 1.0 else grad)
            deltas.append(delta)
            jacobians.append(jacobian * scale if scale != 1.0 else jacobian)
        return deltas, jacobians


def sgd_virtual_step(xi: float, grad_clip: float | None = None) -> VirtualStep:
    """DARTS' virtual step with an explicit ξ: w′ = w − ξ·∇_w L_w, i.e. Δ = −ξg and D = −ξ.

    It follows no optimizer: ξ is the step size the unrolled model assumes (DARTS uses the w learning rate of
    plain SGD); ξ = 0 makes the second-order hypergradient exactly first order.
    """
    xi = float(xi)
    if not math.isfinite(xi) or xi < 0:
        raise ValueError(f"the unrolled step size xi={xi} must be a finite number >= 0 (0 means first order)")

    def rule(grad: Tensor) -> tuple[Tensor, Tensor]:
        return -xi * grad, grad.new_tensor(-xi)

    return VirtualStep(rule, grad_clip, f"sgd xi={xi:g}")


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _sgd_rule(optimizer: torch.optim.Optimizer, group: Mapping[str, Any], param: nn.Parameter) -> StepRule:
    def rule(grad: Tensor) -> tuple[Tensor, Tensor]:
        lr, decay = _as_float(group["lr"]), _as_float(group["weight_decay"])
        momentum, dampening = _as_float(group["momentum"]), _as_float(group["dampening"])
        sign = -1.0 if group.get("maximize", False) else 1.0
        direction = sign * grad
        if decay:
            direction = direction + decay * param.detach()
        slope = 1.0
        if momentum:
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is None:
                new_buffer, buffer_slope = direction, 1.0
            else:
                new_buffer, buffer_slope = momentum * buffer + (1.0 - dampening) * direction, 1.0 - dampening
            if group.get("nesterov", False):
                direction, slope = direction + momentum * new_buffer, 1.0 + momentum * buffer_slope
            else:
                direction, slope = new_buffer, buffer_slope
        return -lr * direction, grad.new_tensor(-lr * slope * sign)

    return rule


def _adam_rule(optimizer: torch.optim.Optimizer, group: Mapping[str, Any], param: nn.Parameter) -> StepRule:
    decoupled_default = isinstance(optimizer, torch.optim.AdamW)

    def rule(grad: Tensor) -> tuple[Tensor, Tensor]:
        lr, eps, decay = _as_float(group["lr"]), _as_float(group["eps"]), _as_float(group["weight_decay"])
        beta1, beta2 = (_as_float(b) for b in group["betas"])
        decoupled = bool(group.get("decoupled_weight_decay", decoupled_default))
        sign = -1.0 if group.get("maximize", False) else 1.0
        weights = param.detach()
        g = sign * grad
        if decay and not decoupled:
            g = g + decay * weights
        state = optimizer.state.get(param, {})
        step = (_as_float(state["step"]) if "step" in state else 0.0) + 1.0
        m_prev, v_prev = state.get("exp_avg"), state.get("exp_avg_sq")
        m = (1.0 - beta1) * g if m_prev is None else m_prev + (1.0 - beta1) * (g - m_prev)
        v = (1.0 - beta2) * g * g if v_prev is None else beta2 * v_prev + (1.0 - beta2) * g * g
        moves = v > 0  # where ∂√v/∂g̃ is defined and v is this step's (not AMSGrad's old maximum)
        if group.get("amsgrad", False):
            v_max = state.get("max_exp_avg_sq")
            if v_max is not None:
                moves = moves & (v >= v_max)
                v = torch.maximum(v_max, v)
        c1, c2_sqrt = 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)
        root = v.sqrt()
        denominator = root / c2_sqrt + eps
        delta = -(lr / c1) * m / denominator
        if decay and decoupled:
            delta = delta - lr * decay * weights
        with torch.no_grad():
            d_root = torch.where(moves, (1.0 - beta2) * g / root.clamp_min(torch.finfo(root.dtype).tiny),
                                 torch.zeros_like(root))
            slope = -(lr / c1) * ((1.0 - beta1) / denominator - m * d_root / (c2_sqrt * denominator ** 2))
        return delta, sign * slope

    return rule


RULES: dict[type[torch.optim.Optimizer], Callable[..., StepRule]] = {
    torch.optim.AdamW: _adam_rule, torch.optim.Adam: _adam_rule, torch.optim.SGD: _sgd_rule,
}


def optimizer_virtual_step(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                           grad_clip: float | None = None) -> VirtualStep:
    """The update ``optimizer.step()`` would make to ``params`` (the inner variables, in order) for given
    gradients, after the same global-norm clipping as the w-step (``grad_clip``); the optimizer is never
    stepped and its state never written. Supports Adam, AdamW and SGD (with or without momentum/Nesterov).
    """
    kind = next((cls for cls in type(optimizer).__mro__ if cls in RULES), None)
    if kind is None:
        raise ValueError(f"no virtual step for {type(optimizer).__name__}: use torch.optim.AdamW, Adam or SGD for "
                         f"the w-optimizer, or an explicit step size (sgd_virtual_step(xi))")
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in groups]
    if missing:
        raise ValueError(f"{len(missing)} inner variable(s) (positions {missing[:5]}) are not in the "
                         f"{type(optimizer).__name__}; build the virtual step from the optimizer that updates w")
    rules = [RULES[kind](optimizer, groups[id(p)], p) for p in params]
    return VirtualStep(rules, grad_clip, type(optimizer).__name__)
