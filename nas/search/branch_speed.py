"""How fast each branch of the supernet moves its output per w-step, and learning rates that make the speeds equal.

Adam moves every entry of B by about ±lr per step, so a LoRA branch's output ΔW·x = B·(A x) moves by about

    speed_m ∝ lr · √out_m · E_tokens ‖A_m x‖,

√out_m because the out_m entries of a column of B add up in norm, ‖A_m x‖ because the step multiplies the rank-r
code of the input. On MiniLM and SST-2 batches √out·E‖A x‖ is 44–55 for the FFN inputs (out = 1536) and 6–9 for the
attention and FFN outputs (out = 384, smaller inputs): in a supernet the fastest branches fit a residual first,
including a part that a slower branch would represent exactly. ``bilevel.balance_lr=true`` gives the parameters of
branch m the learning rate lr · median_k(speed_k) / speed_m, so every branch moves its output equally fast per step;
the head keeps lr. The speeds are measured once, at the start of the search, on the criteria's fixed α-split batches.

That speed is measured where the branch adds its output, inside the layer. How far the *network's* outputs move is
that times the layer's sensitivity, which differs far more between modules: a change of given size in an early
attention key moves the outputs ~20× less than one in a late FFN input. With the gate and B sharing one scale, a gate
keeps rising for as long as its branch still has to grow, so it ends up tracking how far its module's weights had to
move (on the planted random pattern the DAM's γ follows the planted deltas' ‖ΔW‖/‖W‖), not how much the module is
needed. ``bilevel.balance_space=output`` measures the speed in the network's outputs instead
(:func:`output_speeds`), so that equal learning progress means equal function change in every branch.
:func:`calibrate_sizes` measures sized branches (``bilevel.branch_size``) in the same units, so that a gate's value
is a share of function change rather than of weight norm (``bilevel.branch_size_units=output``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from nas.engine.completions import model_inputs
from nas.search.hypergradient import Batch
from nas.search.module_inputs import visit_module_inputs
from nas.search.supernet import SuperNet


def branch_speeds(supernet: SuperNet, batches: Sequence[Batch]) -> dict[str, float]:
    """√out_m · mean over real tokens of ‖A_m x‖ for every branch m, A_m from the branch's exact LoRA factors (so
    PRoLoRA and SoRA are measured by the A they apply); padding tokens are left out where the batch has a mask."""
    sums = dict.fromkeys(supernet.adapters, 0.0)
    counts = dict.fromkeys(supernet.adapters, 0)
    factors = {name: adapter.branch.lora_factors() for name, adapter in supernet.adapters.items()}

    def accumulate(name: str, rows: torch.Tensor) -> None:
        a, b = factors[name]
        code = torch.nn.functional.linear(rows.float(), a.float()).norm(dim=-1)
        sums[name] += float(code.sum()) * math.sqrt(b.shape[0])
        counts[name] += code.shape[0]

    visit_module_inputs(supernet, batches, accumulate)
    return {name: sums[name] / max(counts[name], 1) for name in supernet.adapters}


def full_precision_outputs(supernet: SuperNet, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """The supernet's logits on ``batches`` in float64, with autocast off whatever the caller's precision: the
    differences taken from them are far below bf16's resolution."""
    with torch.autocast(device_type=next(supernet.parameters()).device.type, enabled=False):
        return [supernet(**model_inputs(batch)).logits.double() for batch in batches]


@torch.no_grad()
def output_speeds(supernet: SuperNet, batches: Sequence[Batch], step: float, seed: int = 0) -> dict[str, float]:
    """How far one Adam-like w-step on branch m moves the network's outputs, per unit step:

        speed_m = RMS_{batches, outputs}( f(θ_m + step·R_m) − f(θ_m) ) / step,    R_m = random signs like θ_m,

    θ_m all trainable parameters of branch m (Adam's first steps move every entry by about ±lr, whatever its
    gradient); the others stay put. With LoRA's B = 0 only B's signs count to first order, for any operator the
    measure is the same. Run in full precision (differences this small vanish in bf16); the signs come from their
    own generator, so the run's random stream is untouched; every parameter is restored exactly."""
    if not batches:
        raise ValueError("output speeds need at least one batch (criterion.batches >= 1)")
    if not step > 0:
        raise ValueError(f"output speeds need a positive step, got {step}")
    generator = torch.Generator().manual_seed(seed)
    was_training = supernet.training
    supernet.eval()
    try:
        base = full_precision_outputs(supernet, batches)
        count = sum(out.numel() for out in base)
        speeds = {}
        for name, adapter in supernet.adapters.items():
            params = [p for p in adapter.branch.parameters() if p.requires_grad]
            saved = [p.detach().clone() for p in params]
            for p in params:
                signs = torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1
                p.add_(signs * step)
            try:
                moved = full_precision_outputs(supernet, batches)
            finally:
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)
            squares = sum(float((after - before).pow(2).sum()) for after, before in zip(moved, base, strict=True))
            speeds[name] = math.sqrt(squares / count) / step
    finally:
        supernet.train(was_training)
    return speeds


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


@torch.no_grad()
def calibrate_sizes(supernet: SuperNet, batches: Sequence[Batch], delta: float = 0.1) -> dict[str, float]:
    """Sized branches in units of the network's outputs (``bilevel.branch_size_units=output``):

        sens_m = RMS( f(γ_m + δ) − f(γ_m) ) / δ,    size_scales[m] = median_k(sens_k) / sens_m,

    measured once, at the initial gates, with every branch at its initial direction and size τ‖W₀‖. Afterwards a unit
    change of any gate moves the outputs as much as the median module's does (exactly so while γ·c·τ stays small, as
    it does from the default γ₀ ≈ 0.05), so that a gate's value measures how much the network's function
    uses the branch rather than how far its weights had to move. δ = 0.1 moves each module's weights by 0.1·τ of
    their norm, well inside the linear range and far above fp32's resolution. Full precision; returns the
    sensitivities."""
    if supernet.branch_size is None:
        raise ValueError("calibrating branch sizes needs sized branches (set bilevel.branch_size)")
    if not batches:
        raise ValueError("calibrating branch sizes needs at least one batch (criterion.batches >= 1)")
    was_training = supernet.training
    supernet.eval()
    probe = supernet.gate_probe
    try:
        base = full_precision_outputs(supernet, batches)
        count = sum(out.numel() for out in base)
        sensitivities = {}
        for name in supernet.adapters:
            row, col = supernet.space.coordinate(name)
            probe[row, col] += delta
            try:
                moved = full_precision_outputs(supernet, batches)
            finally:
                probe[row, col] -= delta
            squares = sum(float((after - before).pow(2).sum()) for after, before in zip(moved, base, strict=True))
            sensitivities[name] = math.sqrt(squares / count) / delta
    finally:
        supernet.train(was_training)
    reference = statistics.median(sensitivities.values())
    for name, sensitivity in sensitivities.items():
        if not sensitivity > 0:
            raise ValueError(f"a change of {name}'s gate does not move the outputs; its size cannot be calibrated, "
                             f"set bilevel.branch_size_units=weight")
        supernet.size_scales[name] = reference / sensitivity
    return sensitivities
