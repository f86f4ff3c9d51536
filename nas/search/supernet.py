"""The DiffoRA supernet: every candidate module gets a LoRA branch scaled by its relaxed DAM entry.

For candidate (l, j):  h = W₀x + γ_{l,j} · ΔW_{l,j} x,  γ = relaxation(Γ),  Γ ∈ ℝ^{layers × types (× k)}.
Base weights are frozen; the LoRA branches and the task head are the weights w; Γ is the architecture.

With ``branch_size`` τ set, every branch is rescaled to a fixed norm before its gate multiplies it:

    h = W₀x + γ · s · ΔW x,   s = τ‖W₀‖_F / ‖ΔW‖_F,   ‖ΔW‖_F² = Σ (BᵀB) ⊙ (AAᵀ)   (ΔW = B A, r × r Gram matrices),

so (γ, B) and (γ/c, c·B) are no longer the same function: the weights choose the direction of each branch, γ alone its
size (DARTS uses BatchNorm without affine parameters in its ops for the same reason). B starts non-zero (Kaiming-uniform
like A), since a zero branch has no direction. ``size_scales`` (1 by default) multiplies τ per candidate:
:func:`nas.search.branch_speed.calibrate_sizes` sets it so that τ is measured in the network's outputs, not in weights.
Exposes the one-shot NAS protocol: :meth:`arch_parameters`, :meth:`export_probs`, :meth:`export`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nas.adapters.lora import LoRABranch
from nas.adapters.operators import AdaptedLinear, inject_adapters, replace_module
from nas.errors import ConfigError
from nas.search.relaxation import Relaxation
from search_spaces.space import SearchSpace


class SuperNet(nn.Module):
    """Wraps ``model`` in place; ``forward(**batch)`` sets each branch's γ, then runs the model."""

    def __init__(self, model: nn.Module, space: SearchSpace, relaxation: Relaxation, head_names: list[str],
                 operator: str = "lora", rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 operator_args: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
                 branch_size: float | None = None) -> None:
        super().__init__()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        self.space = space
        self.relaxation = relaxation
        self.adapters = inject_adapters(model, list(space.names), operator, rank, alpha, dropout,
                                        operator_args)
        self._coordinates = [space.coordinate(name) for name in space.names]
        rows, cols = len(space.layers), len(space.module_types)
        self.dam_logits = nn.Parameter(relaxation.init_logits(rows, cols, generator=generator))
        # γ + 0: a zero offset whose gradient is ∂L/∂γ (put it among the outer variables to read gate gradients);
        # a plain tensor, not a Parameter, so that it is neither a weight nor updated by any optimizer
        self.gate_probe = torch.zeros(rows, cols, requires_grad=True)
        self.head_names = list(head_names)
        self.removed: set[str] = set()  # candidates whose branch is switched off (γ = 0), e.g. for perturbation
        self.pruned: set[str] = set()  # switched off for the rest of the search (bilevel.prune_stages)
        # multiplies γ in forward, one factor for all or a (layers, types) tensor (bilevel.alpha_shrink probes the
        # α-loss at (1 − δ)·γ); ∂/∂γ is then ∂L/∂γ taken at the scaled point, not times the scale
        self.gate_scale: float | torch.Tensor = 1.0
        for name in self.head_names:
            model.get_parameter(name).requires_grad_(True)
        self.branch_size = branch_size
        self.base_norms: dict[str, float] = {}  # ‖W₀‖_F by candidate, recorded when branch_size is set
        self.size_scales: dict[str, float] = dict.fromkeys(self.adapters, 1.0)  # per-candidate multiplier of τ
        if branch_size is not None:
            self._init_sized_branches(generator)

    def _init_sized_branches(self, generator: torch.Generator | None) -> None:
        """B ← Kaiming-uniform(√5) (A's LoRA init) so that every branch has a direction to rescale; records ‖W₀‖_F."""
        for name, adapter in self.adapters.items():
            if not isinstance(adapter.branch, LoRABranch):
                raise ConfigError(f"bilevel.branch_size rescales LoRA branches, but {name} has a "
                                  f"{type(adapter.branch).__name__}; use space.operator=lora or "
                                  f"bilevel.branch_size=null")
            nn.init.kaiming_uniform_(adapter.branch.lora_B, a=math.sqrt(5), generator=generator)
            self.base_norms[name] = float(adapter.base_layer.weight.detach().float().norm())

    def size_factor(self, name: str) -> torch.Tensor:
        """s = τ·c·‖W₀‖_F / ‖ΔW‖_F of one candidate (c = ``size_scales``; differentiable in A and B); 1 when
        ``branch_size`` is off."""
        if self.branch_size is None:
            return torch.ones(())
        a, b = self.adapters[name].branch.lora_factors()
        a, b = a.float(), b.float()
        norm = ((b.T @ b) * (a @ a.T)).sum().clamp_min(1e-24).sqrt()
        return self.branch_size * self.size_scales[name] * self.base_norms[name] / norm

    # --- parameter groups -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture variables α (the DAM logits Γ)."""
        return [self.dam_logits]

    def named_weight_parameters(self) -> dict[str, nn.Parameter]:
        """The inner variables w: every LoRA branch parameter plus the task head, by full name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad and p is not self.dam_logits}

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module's signature): .to()/.cuda() move the probe
        super()._apply(fn, recurse)
        self.gate_probe = fn(self.gate_probe.detach()).requires_grad_(True)
        return self

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for adapter in self.adapters.values() for p in adapter.branch.parameters()]

    # --- relaxed architecture ---------------------------------------------------------------------
    def relaxed_matrix(self) -> torch.Tensor:
        """γ = relaxation(Γ), shape (layers, types); cells without a candidate are ignored downstream."""
        return self.relaxation.weights(self.dam_logits, training=self.training)

    def export_probs(self) -> dict[str, float]:
        """Relaxed weight γ of each candidate, by module name (evaluation mode: no sampling)."""
        with torch.no_grad():
            matrix = self.relaxation.weights(self.dam_logits, training=False)
        return {name: float(matrix[r, c]) for name, (r, c) in zip(self.space.names, self._coordinates, strict=True)}

    def export(self, discretize: Callable[[Mapping[str, float]], list[str]]) -> list[str]:
        """Discrete architecture: the candidate names that ``discretize`` keeps from :meth:`export_probs`."""
        return discretize(self.export_probs())

    def forward(self, **batch: torch.Tensor):
        relaxed = self.relaxed_matrix()
        scale = self.gate_scale
        if isinstance(scale, torch.Tensor) or scale != 1.0:  # value c·γ; the gradient passes as ∂L/∂(c·γ)
            relaxed = relaxed + (scale - 1.0) * relaxed.detach()
        matrix = relaxed + self.gate_probe
        for (name, adapter), (row, col) in zip(self.adapters.items(), self._coordinates, strict=True):
            off = name in self.removed or name in self.pruned
            gate = matrix[row, col] * 0.0 if off else matrix[row, col]
            adapter.gate = gate if self.branch_size is None else gate * self.size_factor(name).to(gate)
        return self.model(**batch)

    def unwrap(self) -> dict[str, nn.Module]:
        """Put every candidate's base layer back into the model and return the trained branches by name: the
        model is the plain backbone again (with the search's head), to be adapted for retraining without loading
        it a second time. The supernet has no branch afterwards and must not be run again."""
        branches = {}
        for name, adapter in self.adapters.items():
            replace_module(self.model, name, adapter.base_layer)
            branches[name] = adapter.branch
        self.adapters = {}
        return branches

    def detach_gates(self) -> None:
        """Drop the γ tensors held by the branches (they reference the last forward's graph)."""
        adapter: AdaptedLinear
        for adapter in self.adapters.values():
            adapter.gate = None
