"""Shared step of the selection methods (DiffoRA, random, LoRA, PRoLoRA, SoRA): wrap the chosen modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.adapters.retrain import adapt_selected
from nas.engine.backbone import Backbone
from nas.methods.base import MethodContext, Prepared, head_parameters, train_steps
from nas.search.supernet import SuperNet


def adapted_model(ctx: MethodContext, backbone: Backbone, selected: list[str], operator: str, rank: int,
                  operator_args: Mapping[str, Any] | None, has_search: bool, supernet: SuperNet | None = None,
                  gates: Mapping[str, float] | None = None) -> Prepared:
    """Freeze ``backbone``, put ``operator`` branches on ``selected`` (warm-started from ``supernet`` if given)."""
    space = ctx.cfg.space
    adapt_selected(backbone.model, backbone.head_names, selected, operator, rank, space.alpha, space.dropout,
                   supernet=supernet, gates=gates, operator_args=operator_args)
    backbone.model.to(ctx.cfg.device)
    params = [p for p in backbone.model.parameters() if p.requires_grad]
    return Prepared(model=backbone.model, params=params, head_params=head_parameters(backbone),
                    head_names=list(backbone.head_names), selected=selected,
                    steps=train_steps(ctx, has_search), lr=ctx.method_lr(), weight_decay=ctx.method_weight_decay(),
                    variant={"operator": operator, "rank": rank, **dict(operator_args or {})})

