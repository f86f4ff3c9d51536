"""SoRA as a method: gated LoRA on every candidate, an L1 term on the gates, a proximal gate optimizer, and
the zero-gate ranks removed at the end (``effective_params`` counts what is left).

Loss = task loss + λ₁ · Σ‖g‖₁ / Σr (``method.sparse_lambda``); gates: AdamW then g ← S_ξ(g) (``method.xi``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.adapters.cost import space_cost
from nas.adapters.sora import ProximalGateOptimizer, gate_parameters, l1_penalty, prune_model_, sora_branches
from nas.engine.backbone import Backbone
from nas.engine.budget import resolve_rank
from nas.engine.outputs import write_selection
from nas.methods.adapters import adapted_model
from nas.methods.base import METHODS, Method, MethodContext, Prepared, TrainingHooks


class SoRAHooks(TrainingHooks):
    """Adds the L1 term to the loss and steps the proximal gate optimizer after the main one."""

    def __init__(self, gate_optimizer: ProximalGateOptimizer, sparse_lambda: float) -> None:
        self.gate_optimizer = gate_optimizer
        self.sparse_lambda = sparse_lambda

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return l1_penalty(model, self.sparse_lambda) if self.sparse_lambda else None

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        self.gate_optimizer.step()
        self.gate_optimizer.zero_grad()
        gates = torch.cat([g.detach().flatten() for g in self.gate_optimizer.gates])
        return {"sora/open_gates": float((gates != 0).float().mean())}

    def state_dict(self) -> dict[str, Any]:
        g = self.gate_optimizer
        return {"optimizer": g.optimizer.state_dict(), "scheduler": g.scheduler.state_dict(),
                "last_threshold": g.last_threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        g = self.gate_optimizer
        g.optimizer.load_state_dict(state["optimizer"])
        g.scheduler.load_state_dict(state["scheduler"])
        g.last_threshold = state["last_threshold"]


@METHODS.register("sora")
class SoRA(Method):
    name = "sora"

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        m = ctx.cfg.method
        # r_max meets the budget before pruning (gates counted)
        rank = resolve_rank(m.rank, ctx.budget_target, lambda r: space_cost(ctx.space, "sora", r), self.name,
                            int(ctx.cfg.space.rank))
        selected = list(ctx.space.names)
        write_selection(ctx.run_dir, ctx.space, selected, None, seed=ctx.cfg.seed, task=ctx.task.name)
        prepared = adapted_model(ctx, backbone, selected, "sora", rank, {}, has_search=False)
        gates = gate_parameters(prepared.model)
        gate_ids = {id(g) for g in gates}
        prepared.params = [p for p in prepared.params if id(p) not in gate_ids]
        gate_lr = ctx.method_lr() if m.gate_lr is None else float(m.gate_lr)
        optimizer = ProximalGateOptimizer(gates, lr=gate_lr, xi=float(m.xi), total_steps=prepared.steps,
                                          warmup_ratio=float(ctx.cfg.retrain.warmup_ratio),
                                          xi_times_lr=bool(m.xi_times_lr))
        prepared.hooks = SoRAHooks(optimizer, float(m.sparse_lambda))
        prepared.variant.update(r_max=rank, sparse_lambda=m.sparse_lambda, xi=m.xi)
        return prepared

    def finalize(self, ctx: MethodContext, prepared: Prepared) -> dict[str, Any]:
        """Cut the zero-gate ranks (outputs unchanged) and count what remains: nnz·(in + out + 1) per module."""
        ranks = prune_model_(prepared.model)
        effective = sum(branch.effective_params() for branch in sora_branches(prepared.model).values())
        return {"effective_params": effective, "final_ranks": ranks,
                "mean_final_rank": sum(ranks.values()) / max(len(ranks), 1)}
