"""AdaLoRA through ``peft``: SVD-form adapters W₀ + PΛQ on every candidate, pruned to a global rank budget.

The shared loop calls :meth:`AdaLoRAHooks.after_optimizer_step` every step, which calls peft's
``update_and_allocate(step)`` (importance update + cubic budget schedule + masking of Λ). Without that call
AdaLoRA silently trains as plain LoRA (peft #1327); ``tests/test_methods.py`` checks the ranks do shrink.
The orthogonal regularizer R = mean over P, Q of ‖PᵀP − I‖_F, ‖QQᵀ − I‖_F (peft's non-squared form),
weighted by ``method.orth_reg_weight``, is added to the loss here, because peft only adds it when the
model computes its own loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nas.adapters.cost import space_cost
from nas.engine.backbone import Backbone
from nas.engine.budget import resolve_rank
from nas.engine.outputs import write_selection
from nas.errors import ConfigError
from nas.methods.base import (
    METHODS,
    Method,
    MethodContext,
    Prepared,
    TrainingHooks,
    freeze,
    head_parameters,
    train_steps,
)

ADAPTER = "default"


def adalora_layers(model: nn.Module) -> dict[str, Any]:
    """peft's AdaLoRA layers by module name, found by type."""
    from peft.tuners.adalora import AdaLoraLayer  # peft is imported where it is used: it takes seconds

    return {name: module for name, module in model.named_modules() if isinstance(module, AdaLoraLayer)}


def orthogonal_penalty(layers: dict[str, Any]) -> torch.Tensor:
    """mean over matrices of ‖QQᵀ − I‖_F (Q = lora_A, r×in) and ‖PᵀP − I‖_F (P = lora_B, out×r)."""
    terms = []
    for layer in layers.values():
        q, p = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        eye = torch.eye(q.shape[0], device=q.device, dtype=q.dtype)
        terms.append(torch.linalg.matrix_norm(q @ q.T - eye))
        terms.append(torch.linalg.matrix_norm(p.T @ p - eye))
    return torch.stack(terms).mean()


def final_ranks(layers: dict[str, Any]) -> dict[str, int]:
    """Ranks left per module: the number of non-zero singular values Λ after masking."""
    return {name: int(torch.count_nonzero(layer.lora_E[ADAPTER])) for name, layer in layers.items()}


class AdaLoRAHooks(TrainingHooks):
    def __init__(self, peft_model: nn.Module, orth_reg_weight: float) -> None:
        self.peft_model = peft_model
        self.layers = adalora_layers(peft_model)
        self.orth_reg_weight = orth_reg_weight

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return self.orth_reg_weight * orthogonal_penalty(self.layers) if self.orth_reg_weight else None

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        """peft's budget allocation; needs the gradients of this step (called before zero_grad)."""
        self.peft_model.base_model.update_and_allocate(step)
        return {"adalora/total_rank": float(sum(final_ranks(self.layers).values()))}

    def state_dict(self) -> dict[str, Any]:
        """peft's importance averages (RankAllocator) and the rank pattern it has fixed so far."""
        model = self.peft_model.base_model
        allocator = model.rankallocator
        config = model.peft_config[model.trainable_adapter_name]
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": config.rank_pattern}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.peft_model.base_model
        allocator = model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (state["ipt"], state["exp_avg_ipt"],
                                                                       state["exp_avg_unc"])
        model.peft_config[model.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def schedule(steps: int, tinit: int | None, tfinal: int | None) -> tuple[int, int]:
    """(tinit, tfinal): given, or 15% and 35% of the steps (the budget shrinks during the middle half)."""
    tinit = round(0.15 * steps) if tinit is None else int(tinit)
    tfinal = round(0.35 * steps) if tfinal is None else int(tfinal)
    if tinit < 0 or tfinal < 0 or tinit >= steps - tfinal:
        raise ConfigError(f"method.tinit={tinit} and method.tfinal={tfinal} leave no budget-decreasing phase in "
                          f"{steps} steps; they need tinit < steps − tfinal: lower them or train longer")
    return tinit, tfinal


@METHODS.register("adalora")
class AdaLoRA(Method):
    name = "adalora"

    def ranks(self, ctx: MethodContext) -> tuple[int, int]:
        """(init_r, target_r): target from method.target_r, else the budget, else space.rank; init ⌈1.5·target⌉."""
        m = ctx.cfg.method
        # the final budget Σ r(in + out + 1) meets the target
        target = resolve_rank(m.target_r, ctx.budget_target, lambda r: space_cost(ctx.space, "adalora", r),
                              self.name, int(ctx.cfg.space.rank))
        init = math.ceil(1.5 * target) if m.init_r is None else int(m.init_r)
        if target < 1 or init <= target:
            raise ConfigError(f"AdaLoRA needs method.init_r > method.target_r ≥ 1 (got init_r={init}, "
                              f"target_r={target}); raise method.init_r")
        return init, target

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        m, steps = ctx.cfg.method, train_steps(ctx, has_search=False)
        init_r, target_r = self.ranks(ctx)
        tinit, tfinal = schedule(steps, m.tinit, m.tfinal)
        selected = list(ctx.space.names)
        write_selection(ctx.run_dir, ctx.space, selected, None, seed=ctx.cfg.seed, task=ctx.task.name)
        head = head_parameters(backbone)
        freeze(backbone.model)
        from peft import AdaLoraConfig, get_peft_model

        config = AdaLoraConfig(init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=int(m.deltaT),
                               beta1=float(m.beta1), beta2=float(m.beta2), orth_reg_weight=float(m.orth_reg_weight),
                               total_step=steps, target_modules=selected, lora_alpha=float(ctx.cfg.space.alpha),
                               lora_dropout=float(ctx.cfg.space.dropout))
        model = get_peft_model(backbone.model, config).to(ctx.cfg.device)
        for parameter in head:
            parameter.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        variant = {"init_r": init_r, "target_r": target_r, "tinit": tinit, "tfinal": tfinal, "deltaT": int(m.deltaT)}
        return Prepared(model=model, params=params, head_params=head, head_names=list(backbone.head_names),
                        selected=selected, steps=steps, lr=ctx.method_lr(), weight_decay=ctx.method_weight_decay(),
                        hooks=AdaLoRAHooks(model, float(m.orth_reg_weight)), variant=variant)

    def finalize(self, ctx: MethodContext, prepared: Prepared) -> dict[str, Any]:
        """Final per-module ranks; effective parameters Σ rank·(in + out + 1)."""
        layers = adalora_layers(prepared.model)
        ranks = final_ranks(layers)
        effective = sum(r * (layers[n].in_features + layers[n].out_features + 1) for n, r in ranks.items())
        prefix = "base_model.model."
        return {"effective_params": effective, "mean_final_rank": sum(ranks.values()) / max(len(ranks), 1),
                "final_ranks": {n.removeprefix(prefix): r for n, r in ranks.items()}}
