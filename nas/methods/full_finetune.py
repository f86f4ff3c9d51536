"""Full fine-tuning: every weight of the backbone trains (the upper reference; no adapter, no budget)."""

from __future__ import annotations

from nas.engine.backbone import Backbone
from nas.methods.base import METHODS, Method, MethodContext, Prepared, head_parameters, train_steps


@METHODS.register("full_ft")
class FullFineTuning(Method):
    name = "full_ft"
    has_budget = False

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        model = backbone.model.to(ctx.cfg.device)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return Prepared(model=model, params=list(model.parameters()), head_params=head_parameters(backbone),
                        head_names=list(backbone.head_names), selected=[], steps=train_steps(ctx, False),
                        lr=ctx.method_lr(), weight_decay=ctx.method_weight_decay())
