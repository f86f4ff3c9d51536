"""LoRA and PRoLoRA on every candidate module of the search space: the plain baselines.

The rank is ``method.rank`` when set, else solved from the budget target (``budget.match`` or
``budget.target_params``), else ``space.rank``.
"""

from __future__ import annotations

from typing import Any

from nas.adapters.cost import space_cost
from nas.engine.backbone import Backbone
from nas.engine.budget import resolve_rank
from nas.engine.outputs import write_selection
from nas.methods.adapters import adapted_model
from nas.methods.base import METHODS, Method, MethodContext, Prepared


@METHODS.register("lora")
class LoRA(Method):
    name = "lora"
    operator = "lora"

    def operator_args(self, ctx: MethodContext) -> dict[str, Any]:
        return {}

    def budget_cost(self, ctx: MethodContext, rank: int) -> int:
        return space_cost(ctx.space, self.operator, rank, self.operator_args(ctx))

    def rank(self, ctx: MethodContext) -> int:
        return resolve_rank(ctx.cfg.method.rank, ctx.budget_target, lambda r: self.budget_cost(ctx, r), self.name,
                            int(ctx.cfg.space.rank), smallest=self.smallest_rank(ctx))

    def smallest_rank(self, ctx: MethodContext) -> int:
        return 1

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        selected = list(ctx.space.names)
        write_selection(ctx.run_dir, ctx.space, selected, None, seed=ctx.cfg.seed, task=ctx.task.name)
        return adapted_model(ctx, backbone, selected, self.operator, self.rank(ctx), self.operator_args(ctx),
                             has_search=False)


@METHODS.register("prolora")
class PRoLoRA(LoRA):
    """PRoLoRA branches (broadcast reduction, rotation, u unshared ranks, rectified init) on every candidate."""

    name = "prolora"
    operator = "prolora"

    def operator_args(self, ctx: MethodContext) -> dict[str, Any]:
        m = ctx.cfg.method
        return {"sharing_in": int(m.sharing_in), "sharing_out": int(m.sharing_out),
                "unshared_rank": int(m.unshared_rank), "rotate": bool(m.rotate),
                "rectified_init": bool(m.rectified_init)}

    def smallest_rank(self, ctx: MethodContext) -> int:
        return int(ctx.cfg.method.unshared_rank) + 1  # at least one shared rank
