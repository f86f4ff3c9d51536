"""Selection criteria: each gives every candidate module a score; the discretizers rank the scores.

A criterion runs at one stage of the search (``stage``): ``init`` (on the supernet before any step: a
zero-cost proxy), or ``final`` (after the search, on the trained supernet and on what the search
accumulated, :class:`GateStatistics`). Higher scores mean "keep". Register new ones with
``@CRITERIA.register(name)``; the conf group ``criterion/<name>.yaml`` selects the one that drives the
selection, and ``criterion.record`` lists the others that are scored alongside and written to selection.json.

Scores per module m (γ_m its relaxed DAM entry, g_m = ∂L_α/∂γ_m at an α-step, B̄ the fixed α-split batches):

* ``dam``            γ_m at the end of the search (the relaxation's own ranking score, e.g. the hard-concrete
                     logit, which is not clamped to [0, 1]).
* ``gate_saliency``  Σ_t |γ_m,t · g_m,t| over the α-steps: a first-order estimate of the α-loss change when
                     the branch is removed (SNIP, applied to a whole branch).
* ``fisher``         (1/T) Σ_t g_m,t²: the (batch-level) Fisher information of the gate.
* ``grad_norm``      ‖(1/|B̄|) Σ_b ∇_{θ_m} L_b‖ at initialization, θ_m the branch's parameters (for LoRA with
                     B = 0 this is ‖∂L/∂B‖); the mean gradient keeps what the batches agree on.
* ``branch_norm``    mean over the tokens of B̄ of ‖γ_m ΔW_m x‖ (LoRA-drop's output norm of the branch).
* ``perturbation``   L_α(without m) − L_α(all) on B̄: how much the loss rises when the branch is removed
                     (DARTS-PT).
* ``random``         i.i.d. U(0, 1), seeded by the run's seed: the control.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from nas.engine.completions import model_inputs
from nas.errors import ConfigError
from nas.registry import Registry
from nas.search.discretizer import finite_scores
from nas.search.hypergradient import Batch, LossFn
from nas.search.supernet import SuperNet
from search_spaces.space import SearchSpace

Stage = Literal["init", "final"]
Scores = dict[str, float]


class GateStatistics:
    """Per-gate sums over the α-steps of the search: Σ|γ·g| and Σ g², with g = ∂L_α/∂γ."""

    def __init__(self, supernet: SuperNet) -> None:
        self.supernet = supernet
        self.saliency = torch.zeros_like(supernet.gate_probe)
        self.squares = torch.zeros_like(supernet.gate_probe)
        self.steps = 0

    def update(self, gate_grad: torch.Tensor) -> None:
        """Add one α-step's ∂L_α/∂γ (layers × types); γ is the evaluation-mode DAM at that step."""
        with torch.no_grad():
            gamma = self.supernet.relaxation.weights(self.supernet.dam_logits, training=False)
            self.saliency += (gamma * gate_grad).abs()
            self.squares += gate_grad.square()
        self.steps += 1


@dataclass
class ScoringInput:
    """What a criterion may read."""

    supernet: SuperNet
    loss_fn: LossFn
    batches: Sequence[Batch]  # fixed α-split batches, on the supernet's device
    seed: int
    gates: GateStatistics | None = None


@dataclass(frozen=True)
class Criterion:
    stage: Stage
    score: Callable[[ScoringInput], Scores]
    needs_search: bool = field(default=False)  # scores are meaningless without α-steps (gate statistics)


CRITERIA: Registry[Criterion] = Registry("criterion")


def by_module(space: SearchSpace, matrix: torch.Tensor) -> Scores:
    """{name: matrix[row, col]} for every candidate."""
    return {name: float(matrix[space.coordinate(name)]) for name in space.names}


def _dam(inputs: ScoringInput) -> Scores:
    net = inputs.supernet
    with torch.no_grad():
        return by_module(net.space, net.relaxation.ranking_scores(net.dam_logits))


def _gate_statistic(kind: str) -> Callable[[ScoringInput], Scores]:
    def score(inputs: ScoringInput) -> Scores:
        gates = inputs.gates
        if gates is None or gates.steps == 0:
            raise ConfigError(f"criterion {kind} accumulates ∂L_α/∂γ over the search's α-steps, and none ran; "
                              "give the search α-steps (bilevel.steps > bilevel.warmup_steps) or pick a criterion "
                              "that needs none (grad_norm, random)")
        values = gates.saliency if kind == "gate_saliency" else gates.squares / gates.steps
        return by_module(inputs.supernet.space, values)

    return score


def _grad_norm(inputs: ScoringInput) -> Scores:
    net = inputs.supernet
    was_training = net.training
    net.eval()
    params = {name: list(adapter.branch.parameters()) for name, adapter in net.adapters.items()}
    flat = [p for group in params.values() for p in group]
    totals = [torch.zeros_like(p) for p in flat]
    for batch in inputs.batches:
        loss = inputs.loss_fn(net(**model_inputs(batch)), batch)
        for total, grad in zip(totals, torch.autograd.grad(loss, flat, allow_unused=True), strict=True):
            if grad is not None:
                total += grad
    net.detach_gates()
    net.train(was_training)
    scores, i = {}, 0
    for name, group in params.items():
        squared = sum(float(t.square().sum()) for t in totals[i:i + len(group)])
        scores[name] = math.sqrt(squared) / max(len(inputs.batches), 1)
        i += len(group)
    return scores


def _branch_norm(inputs: ScoringInput) -> Scores:
    net = inputs.supernet
    sums = dict.fromkeys(net.adapters, 0.0)
    tokens = 0.0
    mask: list[torch.Tensor | None] = [None]

    def recorder(name: str) -> Callable:
        def hook(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> None:
            norms = output.detach().float().norm(dim=-1)
            weights = mask[0] if mask[0] is not None and mask[0].shape == norms.shape else torch.ones_like(norms)
            sums[name] += float((norms * weights).sum())
        return hook

    handles = [adapter.branch.register_forward_hook(recorder(name)) for name, adapter in net.adapters.items()]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for batch in inputs.batches:
                attention = batch.get("attention_mask")
                mask[0] = attention.float() if attention is not None else None
                net(**model_inputs(batch))
                tokens += float(mask[0].sum()) if mask[0] is not None else float(batch["input_ids"].numel())
            gamma = by_module(net.space, net.relaxation.weights(net.dam_logits, training=False))
    finally:
        for handle in handles:
            handle.remove()
        net.detach_gates()
        net.train(was_training)
    with torch.no_grad():  # the branch's output before its gate: γ·s·ΔWx is what reaches the layer
        size = {name: float(net.size_factor(name)) for name in sums}
    return {name: abs(gamma[name]) * size[name] * total / max(tokens, 1.0) for name, total in sums.items()}


def mean_loss(inputs: ScoringInput, removed: set[str] | None = None) -> float:
    """Mean α-loss of the supernet (evaluation mode) on the fixed batches, with ``removed`` branches off."""
    net = inputs.supernet
    was_training = net.training
    net.eval()
    net.removed = set(removed or ())
    try:
        with torch.no_grad():
            total = sum(float(inputs.loss_fn(net(**model_inputs(b)), b)) for b in inputs.batches)
    finally:
        net.removed = set()
        net.detach_gates()
        net.train(was_training)
    return total / max(len(inputs.batches), 1)


def _perturbation(inputs: ScoringInput) -> Scores:
    base = mean_loss(inputs)
    return {name: mean_loss(inputs, {name}) - base for name in inputs.supernet.space.names}


def random_scores(space: SearchSpace, seed: int) -> Scores:
    """One U(0, 1) draw per candidate, reproducible from ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(len(space), generator=generator, dtype=torch.float64).tolist()
    return dict(zip(space.names, draws, strict=True))


CRITERIA.register("dam")(Criterion("final", _dam, needs_search=True))
CRITERIA.register("gate_saliency")(Criterion("final", _gate_statistic("gate_saliency"), needs_search=True))
CRITERIA.register("fisher")(Criterion("final", _gate_statistic("fisher"), needs_search=True))
CRITERIA.register("grad_norm")(Criterion("init", _grad_norm))
CRITERIA.register("branch_norm")(Criterion("final", _branch_norm, needs_search=True))
CRITERIA.register("perturbation")(Criterion("final", _perturbation, needs_search=True))
CRITERIA.register("random")(Criterion("init", lambda inputs: random_scores(inputs.supernet.space, inputs.seed)))


def criteria_to_score(driving: str, record: Sequence[str]) -> list[str]:
    """The driving criterion first, then the recorded ones (each once); unknown names are a ConfigError."""
    names = [driving, *[name for name in record if name != driving]]
    unknown = [name for name in names if name not in CRITERIA]
    if unknown:
        raise ConfigError(f"criterion {', '.join(unknown)} is unknown; choose among: {', '.join(CRITERIA.names())}")
    return list(dict.fromkeys(names))


def score_stage(stage: Stage, names: Sequence[str], inputs: ScoringInput, searched: bool = True) -> dict[str, Scores]:
    """Scores of the criteria in ``names`` that run at ``stage``; each is checked to be finite (the discretizers'
    own check, so a NaN never reaches a ranking, selection.json or a recovery figure).

    With ``searched=False`` (no α-step ran) the criteria that need the search are left out."""
    results = {}
    for name in names:
        criterion = CRITERIA.get(name)
        if criterion.stage != stage or (criterion.needs_search and not searched):
            continue
        scores = criterion.score(inputs)
        results[name] = finite_scores(scores, list(scores), f"criterion {name} score")
    return results


NORMALIZATIONS = ("none", "within_type")


def normalize_scores(scores: Mapping[str, float], module_type: Mapping[str, Hashable], how: str) -> Scores:
    """``none``: the scores as they are. ``within_type``: z-scores within each module type, (s − mean_t) / std_t
    (population std), so that a criterion whose scale differs by module type (an FFN branch's gradient dwarfs a key
    branch's) ranks layers within a type against one another; a type whose scores are all equal gets 0.
    ``module_type``: each candidate's type, or any key that stands for it (its DAM column in selection.json)."""
    if how not in NORMALIZATIONS:
        raise ConfigError(f"criterion.normalize={how} is unknown; choose one of: {', '.join(NORMALIZATIONS)}")
    if how == "none":
        return dict(scores)
    by_type: dict[Hashable, list[float]] = {}
    for name, value in scores.items():
        by_type.setdefault(module_type[name], []).append(value)
    moments = {t: (sum(v) / len(v), math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)))
               for t, v in by_type.items()}
    out = {}
    for name, value in scores.items():
        mean, std = moments[module_type[name]]
        out[name] = (value - mean) / std if std > 0 else 0.0
    return out
