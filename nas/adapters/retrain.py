"""From the supernet to the discrete model: LoRA on the selected modules only, optionally warm-started.

Weight sharing ("shared" init): each kept module starts from the supernet's LoRA weights, with B multiplied
by a constant gate when ``fold_gate`` is set, so that h = W₀x + c·ΔW x holds exactly at the start of retraining
for every kept module; the head is copied too. "fresh" init re-initializes the LoRA branches (A Kaiming, B = 0)
and keeps the model's own head.

The constant to fold is what the branch was trained with: c = E[γ] under the relaxation's training distribution
at the end of the search (:func:`expected_gates`). For sigmoid/softmax that is the relaxed weight itself; for
stochastic relaxations (gumbel, hard_concrete) the branches saw sampled gates, whose mean differs from the
evaluation-mode γ (e.g. hard-concrete's stretched sigmoid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nas.adapters.operators import AdaptedLinear, inject_adapters
from nas.search.supernet import SuperNet


def adapt_selected(model: nn.Module, head_names: list[str], selected: list[str], operator: str, rank: int,
                   alpha: float, dropout: float, supernet: SuperNet | None = None,
                   gates: Mapping[str, float] | None = None,
                   operator_args: Mapping[str, Any] | None = None) -> dict[str, AdaptedLinear]:
    """Freeze ``model``, wrap ``selected``, make the head trainable; warm-start from ``supernet`` if given.

    ``gates`` (module → c, e.g. :func:`expected_gates`) are folded into the warm-started branches: ΔW ← c·ΔW
    (B ← c·B). When ``model`` is the supernet's own model, the supernet is unwrapped in place
    (:meth:`SuperNet.unwrap`) and its head is already the searched one: no second copy of the backbone exists.
    """
    trained: dict[str, nn.Module] = {}
    if supernet is not None:
        in_place = supernet.model is model
        source = None if in_place else supernet.model
        trained = supernet.unwrap() if in_place else {n: a.branch for n, a in supernet.adapters.items()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = inject_adapters(model, selected, operator, rank, alpha, dropout, operator_args)
    if supernet is not None:
        for name, adapter in adapters.items():
            adapter.branch.load_state_dict(trained[name].state_dict())
            if gates is not None:
                adapter.branch.scale_output_(gates[name])
        if source is not None:
            with torch.no_grad():
                for name in head_names:
                    model.get_parameter(name).copy_(source.get_parameter(name))
    for name in head_names:
        model.get_parameter(name).requires_grad_(True)
    return adapters


def expected_gates(supernet: SuperNet) -> dict[str, float]:
    """E[γ] of every candidate by module name: :meth:`~nas.search.relaxation.Relaxation.expected_gate` of the supernet's
    DAM at the relaxation's current (final) progress, times the branch's size factor when ``bilevel.branch_size``
    rescaled it (:meth:`SuperNet.size_factor`): the constants to fold at the end of the search."""
    matrix = supernet.relaxation.expected_gate(supernet.dam_logits)
    with torch.no_grad():
        return {name: float(matrix[supernet.space.coordinate(name)]) * float(supernet.size_factor(name))
                for name in supernet.space.names}
