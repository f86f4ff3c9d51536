"""How fast each branch of the supernet moves its output per w-step, and learning rates that make the speeds equal.

Adam moves every entry of B by about ±lr per step, so a LoRA branch's output ΔW·x = B·(A x) moves by about

    speed_m ∝ lr · √out_m · E_tokens ‖A_m x‖,

√out_m because the out_m entries of a column of B add up in norm, ‖A_m x‖ because the step multiplies the rank-r
code of the input. On MiniLM and SST-2 batches √out·E‖A x‖ is 44–55 for the FFN inputs (out = 1536) and 6–9 for the
attention and FFN outputs (out = 384, smaller inputs): in a supernet the fastest branches fit a residual first,
including a part that a slower branch would represent exactly. ``bilevel.balance_lr=true`` gives the parameters of
branch m the learning rate lr · median_k(speed_k) / speed_m, so every branch moves its output equally fast per step;
the head keeps lr. The speeds are measured once, at the start of the search, on the criteria's fixed α-split batches.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from nas.engine.completions import model_inputs
from nas.search.hypergradient import Batch
from nas.search.supernet import SuperNet


@torch.no_grad()
def branch_speeds(supernet: SuperNet, batches: Sequence[Batch]) -> dict[str, float]:
    """√out_m · mean over real tokens of ‖A_m x‖ for every branch m, A_m from the branch's exact LoRA factors (so
    PRoLoRA and SoRA are measured by the A they apply); padding tokens are left out where the batch has a mask."""
    if not batches:
        raise ValueError("branch speeds need at least one batch (criterion.batches >= 1)")
    sums = dict.fromkeys(supernet.adapters, 0.0)
    counts = dict.fromkeys(supernet.adapters, 0.0)
    mask: list[torch.Tensor | None] = [None]
    factors = {name: adapter.branch.lora_factors() for name, adapter in supernet.adapters.items()}

    def recorder(name: str):  # noqa: ANN202 (a forward hook)
        a, b = factors[name]

        def hook(_module: torch.nn.Module, args: tuple, _output: torch.Tensor) -> None:
            code = torch.nn.functional.linear(args[0].float(), a.float()).norm(dim=-1)
            weights = mask[0] if mask[0] is not None and mask[0].shape == code.shape else torch.ones_like(code)
            sums[name] += float((code * weights).sum()) * math.sqrt(b.shape[0])
            counts[name] += float(weights.sum())
        return hook

    handles = [adapter.register_forward_hook(recorder(name)) for name, adapter in supernet.adapters.items()]
    was_training = supernet.training
    supernet.eval()
    try:
        for batch in batches:
            attention = batch.get("attention_mask")
            mask[0] = attention.float() if attention is not None else None
            supernet(**model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
        supernet.train(was_training)
    return {name: sums[name] / max(counts[name], 1.0) for name in supernet.adapters}


def balanced_groups(supernet: SuperNet, inner: dict[str, torch.nn.Parameter], speeds: dict[str, float],
                    lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: one per branch with lr · median(speed) / speed_m, one for the rest of ``inner``
    (the head) with ``lr``. Branch parameters are found by identity (each adapter's own ``branch.parameters()``)."""
    reference = statistics.median(speeds.values())
    groups, claimed = [], set()
    for name, adapter in supernet.adapters.items():
        params = [p for p in adapter.branch.parameters() if p.requires_grad]
        if not params:
            continue
        if not speeds[name] > 0:
            raise ValueError(f"branch {name} does not move its output (speed {speeds[name]}); it cannot be balanced, "
                             f"set bilevel.balance_lr=false")
        claimed.update(id(p) for p in params)
        groups.append({"params": params, "lr": lr * reference / speeds[name]})
    rest = [p for p in inner.values() if id(p) not in claimed]
    if rest:
        groups.append({"params": rest, "lr": lr})
    return groups
