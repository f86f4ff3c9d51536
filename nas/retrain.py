"""From the supernet to the discrete model: LoRA on the selected modules only, optionally warm-started.

Weight sharing ("shared" init): each kept module starts from the supernet's LoRA weights, with B multiplied
by the module's final relaxed weight γ when ``fold_gate`` is set, so that h = W₀x + γ·ΔW x holds exactly
at the start of retraining for every kept module; the head is copied too. "fresh" init re-initializes
the LoRA branches (A Kaiming, B = 0) and keeps the model's own head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nas.operators import AdaptedLinear, inject_adapters
from nas.supernet import SuperNet


def adapt_selected(model: nn.Module, head_names: list[str], selected: list[str], operator: str, rank: int,
                   alpha: float, dropout: float, supernet: SuperNet | None = None,
                   gates: Mapping[str, float] | None = None,
                   operator_args: Mapping[str, Any] | None = None) -> dict[str, AdaptedLinear]:
    """Freeze ``model``, wrap ``selected``, make the head trainable; warm-start from ``supernet`` if given.

    ``gates`` (module → γ) are folded into B of the warm-started branches: B ← γ·B.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = inject_adapters(model, selected, operator, rank, alpha, dropout, operator_args)
    if supernet is not None:
        for name, adapter in adapters.items():
            adapter.branch.load_state_dict(supernet.adapters[name].branch.state_dict())
            if gates is not None:
                adapter.branch.scale_output_(gates[name])
        with torch.no_grad():
            for name in head_names:
                model.get_parameter(name).copy_(supernet.model.get_parameter(name))
    for name in head_names:
        model.get_parameter(name).requires_grad_(True)
    return adapters
