"""The DiffoRA search stage: alternate α-steps (α-split) and w-steps (w-split) on the supernet, then score
every candidate with the selection criteria (nas/search/criteria.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nas.config import OPTIMIZER_NAMES, BilevelConfig, CriterionConfig, OptimizerConfig, SpaceConfig
from nas.engine.backbone import Backbone
from nas.engine.checkpoint import Checkpointer, load_tensors, rng_state, set_rng_state, tensors
from nas.engine.completions import class_labels
from nas.engine.data import TaskData
from nas.engine.logger import Logger
from nas.engine.parallel import SINGLE, Parallel
from nas.engine.precision import autocast
from nas.engine.training import check_finite, forever, loss_for, make_loader, to_device
from nas.errors import ConfigError, NonFiniteError
from nas.search.bilevel import ArchPenalty, BilevelSearch, StepStats
from nas.search.branch_init import align_to_activations
from nas.search.branch_speed import balanced_groups, branch_speeds, calibrate_sizes, output_speeds
from nas.search.criteria import (
    CRITERIA,
    GateStatistics,
    ScoringInput,
    criteria_to_score,
    normalize_scores,
    score_stage,
)
from nas.search.dam_optimizer import SharedAdam
from nas.search.diagnostics import summarize_dam
from nas.search.discretizer import keep_count
from nas.search.hypergradient import HYPERGRADIENTS, Batch, BilevelProblem, Hypergradient, HypergradientFn
from nas.search.pruning import PruneRecord, lowest, prune_schedule, rank_pruned
from nas.search.regularizers import RegularizerContext, build_regularizer_loss
from nas.search.relaxation import Relaxation, build_relaxation
from nas.search.supernet import SuperNet
from nas.search.virtual_step import VirtualStep, optimizer_virtual_step, sgd_virtual_step
from objectives.splits import split_indices
from search_spaces.space import SearchSpace


@dataclass(frozen=True)
class SearchSettings:
    """What the search reads from a run's config, typed by the schema (nas/config.py); nothing else reaches it.

    ``relaxation`` is the relaxation node as a dict (name, init_mean, init_std and the relaxation's own options);
    ``target_fraction`` is the ρ the discretizer will keep, the ``expected_budget`` regularizer's target."""

    bilevel: BilevelConfig
    relaxation: dict[str, Any]
    space: SpaceConfig
    criterion: CriterionConfig
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    group_by_length: bool = False
    target_fraction: float = 0.5

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SearchSettings:
        """The typed parts of a composed run config."""
        return cls(bilevel=OmegaConf.to_object(cfg.bilevel), relaxation=OmegaConf.to_container(cfg.relaxation,
                                                                                               resolve=True),
                   space=OmegaConf.to_object(cfg.space), criterion=OmegaConf.to_object(cfg.criterion),
                   seed=int(cfg.seed), device=str(cfg.device), precision=str(cfg.precision),
                   group_by_length=bool(cfg.group_by_length), target_fraction=float(cfg.discretizer.rho))


def optimizer_from(cfg: OptimizerConfig, params: list[Any], adam: type) -> torch.optim.Optimizer:
    """``params``: parameters or parameter groups. ``adam`` (the class given: Adam for the DAM, AdamW for the
    weights), ``shared_adam`` (Adam with one second moment per tensor, nas/search/dam_optimizer.py) or ``sgd`` with
    momentum betas[0]."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=float(cfg.betas[0]), weight_decay=cfg.weight_decay)
    if cfg.name == "shared_adam":
        return SharedAdam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)
    if cfg.name != "adam":
        raise ConfigError(f"optimizer name {cfg.name!r} is unknown; use one of {', '.join(OPTIMIZER_NAMES)}")
    return adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)


@dataclass
class SearchOutcome:
    supernet: SuperNet
    scores: dict[str, float]  # the DAM's relaxed weight γ per module at the end
    criteria: dict[str, dict[str, float]]  # criterion → module → score (the driving one first, then the recorded)
    trajectory: list[dict[str, Any]]
    wall_s: float


def check_step(step: int, stats: StepStats, logits: torch.Tensor) -> None:
    """Raise NonFiniteError naming the quantity and the step when a loss, the w-gradient or the DAM is not
    finite."""
    check_finite("search", step, {"w-loss": stats.w_loss, "α-loss": stats.alpha_loss,
                                  "w-gradient norm": stats.w_grad_norm},
                 fix="lower bilevel.w_optimizer.lr or bilevel.alpha_optimizer.lr, or keep bilevel.grad_clip on")
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(f"search step {step}: the DAM logits are not finite; lower "
                                   f"bilevel.alpha_optimizer.lr")


def virtual_step_from(b: DictConfig, w_optimizer: torch.optim.Optimizer,
                      params: list[torch.nn.Parameter]) -> VirtualStep:
    """The unrolled step of the second-order hypergradient: the w-optimizer's own update (``optimizer``: AdamW's
    preconditioned step from its current moments, clipped as the w-step is) or DARTS' SGD step w − ξ∇w with
    ξ = ``bilevel.unrolled_lr`` (null: the w learning rate)."""
    if b.unrolled_step == "optimizer":
        return optimizer_virtual_step(w_optimizer, params, grad_clip=b.grad_clip)
    return sgd_virtual_step(b.unrolled_lr if b.unrolled_lr is not None else b.w_optimizer.lr)


def w_lr_ramp(start: float, steps: int) -> Callable[[int], float] | None:
    """The factor on the w learning rate at search step t: start^(1 − t/(steps − 1)), geometric from ``start`` at
    the first step to 1 at the last (``bilevel.w_lr_start``); None when start = 1 (a constant rate)."""
    if start == 1.0:
        return None
    if not (math.isfinite(start) and start > 0):
        raise ConfigError(f"bilevel.w_lr_start={start} must be a positive factor on the w learning rate (1: constant)")
    last = max(steps - 1, 1)
    return lambda step: start ** (1.0 - min(step, last) / last)


def relaxation_from(settings: SearchSettings) -> Relaxation:
    """The configured relaxation; its own options (τ, β, …) come from the rest of the ``relaxation`` node and
    its samples from a generator seeded by the run's seed."""
    node = settings.relaxation
    options = {k: v for k, v in node.items() if k not in ("name", "init_mean", "init_std")}
    sampler = torch.Generator().manual_seed(settings.seed + 7919)
    return build_relaxation(node["name"], node["init_mean"], node["init_std"], generator=sampler, **options)


def shrunk_gates(hypergradient: HypergradientFn, supernet: SuperNet, shrink: float,
                 fraction: float = 1.0) -> HypergradientFn:
    """The hypergradient taken with every gate at (1 − shrink)·γ (``bilevel.alpha_shrink``); w-steps see γ. The
    whole α-step is shrunk (second order's unrolled step too), and so are the gate gradients that ``gate_saliency``
    and ``fisher`` accumulate. Each gate's gradient is ∂L/∂γ taken at the shrunk point (not scaled by 1 − δ).

    With ``fraction`` < 1 (``bilevel.alpha_shrink_fraction``) each α-step shrinks only a random share of the gates,
    each independently with that probability (drawn from torch's global generator, which checkpoints save), the
    others staying at γ: a gate is probed at (1 − δ)·γ while most of the rest still carry their part of the fit, so
    the residual its branch sees is not inflated by every other branch shrinking at once.

    Once the branches fit, γ and B are redundant scales and ∂L/∂γ ≈ 0 at γ: the α-step sees only what is still
    under-trained. At (1 − δ)·γ the loss is L(γ) − δγ ∂L/∂γ + ½ δ²γ² c with c = ∂²L/∂γ², so ∂L/∂γ there ≈ −δγ·c: every
    gate is pushed up in proportion to how much its branch is needed (c), the curvature a removal would pay."""

    def shrunk(problem: BilevelProblem, w_batch: Batch, alpha_batch: Batch) -> Hypergradient:
        if fraction >= 1.0:
            supernet.gate_scale = 1.0 - shrink
        else:
            drawn = torch.rand(supernet.gate_probe.shape) < fraction
            supernet.gate_scale = torch.where(drawn, 1.0 - shrink, 1.0).to(supernet.gate_probe.device)
        try:
            return hypergradient(problem, w_batch, alpha_batch)
        finally:
            supernet.gate_scale = 1.0

    return shrunk


@contextmanager
def dropout_set(model: torch.nn.Module, p: float | None) -> Iterator[None]:
    """Every ``nn.Dropout`` of ``model`` at probability ``p`` inside the block (None: unchanged), its own p after.

    The search runs without dropout by default (``bilevel.dropout=0``): on the planted task MiniLM's dropout (0.1)
    adds output noise several times the planted residual, and the gates' gradient follows that noise."""
    if p is None:
        yield
        return
    saved = [(module, module.p) for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    try:
        for module, _ in saved:
            module.p = float(p)
        yield
    finally:
        for module, old in saved:
            module.p = old


def dam_penalty(settings: SearchSettings, supernet: SuperNet, space: SearchSpace,
                budget_target: int | None) -> ArchPenalty | None:
    """Σ λ_i R_i on the DAM's keep probabilities (``bilevel.regularizers``), or None when no weight is set."""
    weights = {name: float(w) for name, w in settings.bilevel.regularizers.items() if w}
    if not weights:
        return None
    loss = build_regularizer_loss(weights)
    base = RegularizerContext.from_space(space, int(settings.space.rank), supernet.dam_logits,
                                         operator=str(settings.space.operator),
                                         operator_args=settings.space.operator_args,
                                         target_fraction=settings.target_fraction, target_params=budget_target)

    def penalty() -> tuple[torch.Tensor, dict[str, float]]:
        keep = supernet.relaxation.expected_keep(supernet.dam_logits)
        return loss(keep, replace(base, logits=supernet.dam_logits, progress=supernet.relaxation.progress))

    return penalty


def prune(scoring: ScoringInput, criterion: str, record: PruneRecord, alive: int, settings: SearchSettings) -> None:
    """Switch off the live modules that ``criterion`` scores lowest, leaving ``alive``; the survivors refit in the
    steps that follow (nas/search/pruning.py)."""
    net = scoring.supernet
    with autocast(settings.device, settings.precision):
        scores = score_stage("final", [criterion], scoring)[criterion]
    stage = lowest(scores, [name for name in net.space.names if name not in net.pruned], alive)
    record.stages.append(stage)
    net.pruned = record.pruned


def search(settings: SearchSettings, backbone: Backbone, space: SearchSpace, data: TaskData, logger: Logger,
           budget_target: int | None = None, checkpoint: Checkpointer | None = None,
           parallel: Parallel = SINGLE) -> SearchOutcome:
    """Score the criteria that run at init, alternate α-steps (α-split) and w-steps (w-split) for
    ``bilevel.steps`` steps, then score the criteria that run on the trained supernet. With ``checkpoint``, the
    search's state is saved as stage ``search`` when due, and a saved one is restored after the init criteria.
    ``parallel`` splits every global batch over the processes and micro-batches (nas/engine/parallel.py)."""
    supernet = build_supernet(settings, backbone, space)
    with dropout_set(supernet, settings.bilevel.dropout):
        return _search(settings, supernet, backbone, data, logger, budget_target, checkpoint, parallel)


def build_supernet(settings: SearchSettings, backbone: Backbone, space: SearchSpace) -> SuperNet:
    """The untrained supernet of ``settings`` on ``backbone`` (wrapped in place), as every search starts: its
    branches and DAM logits drawn from the seed (a saved search is loaded into one built the same way)."""
    generator = torch.Generator().manual_seed(settings.seed)
    return SuperNet(backbone.model, space, relaxation_from(settings), backbone.head_names,
                    operator=settings.space.operator, rank=settings.space.rank, alpha=settings.space.alpha,
                    dropout=settings.space.dropout, operator_args=settings.space.operator_args, generator=generator,
                    branch_size=settings.bilevel.branch_size).to(settings.device)


def _search(settings: SearchSettings, supernet: SuperNet, backbone: Backbone, data: TaskData, logger: Logger,
            budget_target: int | None, checkpoint: Checkpointer | None, parallel: Parallel) -> SearchOutcome:
    """The body of :func:`search` on a built supernet (with the search's dropout set)."""
    b, relaxation, space = settings.bilevel, supernet.relaxation, supernet.space
    classes = class_labels(data.task, data.train)
    w_idx, a_idx = split_indices(classes if classes is not None else list(range(len(data.train))), b.w_fraction,
                                 settings.seed, classes is not None)
    w_loader = make_loader(data.train.select(w_idx), backbone.tokenizer, b.batch_size, True, settings.seed,
                           settings.group_by_length)
    a_loader = make_loader(data.train.select(a_idx), backbone.tokenizer, b.batch_size, True, settings.seed + 1,
                           settings.group_by_length)
    inner = supernet.named_weight_parameters()
    fixed_loader = make_loader(data.train.select(a_idx), backbone.tokenizer, b.batch_size, True, settings.seed + 2)
    fixed = [to_device(batch, settings.device) for batch, _ in zip(fixed_loader, range(settings.criterion.batches),
                                                              strict=False)]
    if b.branch_init == "activations":  # before the speeds and sizes, which depend on A
        align_to_activations(supernet, fixed)
    if b.branch_size is not None and b.branch_size_units == "output":
        calibrate_sizes(supernet, fixed)
    w_params: list[Any] = list(inner.values())
    if b.balance_lr:
        if b.balance_space == "output":  # full precision: the output differences are too small for bf16
            speeds = output_speeds(supernet, fixed, b.w_optimizer.lr, settings.seed)
        else:
            with autocast(settings.device, settings.precision):
                speeds = branch_speeds(supernet, fixed)
        w_params = balanced_groups(supernet, inner, speeds, b.w_optimizer.lr)
    w_optimizer = optimizer_from(b.w_optimizer, w_params, torch.optim.AdamW)
    alpha_optimizer = optimizer_from(b.alpha_optimizer, supernet.arch_parameters(), torch.optim.Adam)
    problem = BilevelProblem(model=supernet, loss_fn=loss_for(data.task), inner=inner,
                             outer={"dam_logits": supernet.dam_logits, "gate_probe": supernet.gate_probe},
                             build_virtual_step=lambda: virtual_step_from(b, w_optimizer, list(inner.values())),
                             parallel=parallel)
    hypergradient = HYPERGRADIENTS.get(b.hypergradient)
    if b.alpha_shrink:
        hypergradient = shrunk_gates(hypergradient, supernet, b.alpha_shrink, b.alpha_shrink_fraction)
    bilevel = BilevelSearch(problem, hypergradient, w_optimizer, alpha_optimizer,
                            grad_clip=b.grad_clip, warmup_steps=b.warmup_steps,
                            arch_penalty=dam_penalty(settings, supernet, space, budget_target),
                            w_lr_factor=w_lr_ramp(b.w_lr_start, b.steps), w_average=b.w_average)
    names = criteria_to_score(settings.criterion.name, settings.criterion.record)
    gates = GateStatistics(supernet)
    scoring = ScoringInput(supernet, problem.loss_fn, fixed, int(settings.seed), gates)
    schedule = {stage.step: stage.alive for stage in prune_schedule(
        b.steps, len(space), keep_count(settings.target_fraction, len(space)), b.prune_stages)}
    if schedule and CRITERIA.get(settings.criterion.name).stage != "final":
        raise ConfigError(f"bilevel.prune_stages={b.prune_stages} prunes by the driving criterion during the search, "
                          f"and criterion={settings.criterion.name} scores only at init; use a criterion scored on "
                          f"the searched supernet (dam, perturbation, gate_saliency, fisher, branch_norm) or "
                          f"bilevel.prune_stages=0")
    record = PruneRecord()
    with autocast(settings.device, settings.precision):
        criteria = score_stage("init", names, scoring)
    supernet.train()
    w_batches, a_batches = forever(w_loader), forever(a_loader)
    trajectory: list[dict[str, Any]] = []
    start = time.perf_counter()
    outer = {"dam_logits": supernet.dam_logits}

    def state(step: int) -> dict[str, Any]:
        return {"step": step, "inner": tensors(inner, "search", step), "outer": tensors(outer, "search", step),
                "w_optimizer": w_optimizer.state_dict(),
                "alpha_optimizer": alpha_optimizer.state_dict(), "steps_done": bilevel.steps_done,
                "w_average": bilevel.average_state(),
                "sampler": None if relaxation.generator is None else relaxation.generator.get_state(),
                "gates": {"saliency": gates.saliency.clone(), "squares": gates.squares.clone(), "steps": gates.steps},
                "trajectory": trajectory, "pruned": record.stages, "wall_s": time.perf_counter() - start,
                "rng": rng_state()}

    first = 0
    saved = checkpoint.load("search") if checkpoint is not None else None
    if saved is not None:
        load_tensors(inner, saved["inner"])
        load_tensors(outer, saved["outer"])
        w_optimizer.load_state_dict(saved["w_optimizer"])
        alpha_optimizer.load_state_dict(saved["alpha_optimizer"])
        bilevel.steps_done, trajectory[:] = int(saved["steps_done"]), saved["trajectory"]
        bilevel.load_average_state(saved["w_average"])
        if saved["sampler"] is not None:
            relaxation.generator.set_state(saved["sampler"])
        gates.saliency.copy_(saved["gates"]["saliency"])
        gates.squares.copy_(saved["gates"]["squares"])
        gates.steps = int(saved["gates"]["steps"])
        record.stages[:] = saved.get("pruned", [])
        supernet.pruned = record.pruned
        first = int(saved["step"]) + 1
        for _ in range(first):  # the loaders' own generators replay the batches already seen
            next(w_batches), next(a_batches)
        start -= float(saved["wall_s"])
        set_rng_state(saved["rng"])
    progress = tqdm(range(first, b.steps), desc="search", dynamic_ncols=True, initial=first, total=b.steps)
    for step in progress:
        relaxation.set_progress(step / max(b.steps - 1, 1))
        with autocast(settings.device, settings.precision):
            stats = bilevel.step(to_device(next(w_batches), settings.device),
                                 to_device(next(a_batches), settings.device))
        check_step(step, stats, supernet.dam_logits.detach())
        if stats.alpha_loss is not None and supernet.gate_probe.grad is not None:
            gates.update(supernet.gate_probe.grad)
        if step + 1 in schedule:
            prune(scoring, settings.criterion.name, record, schedule[step + 1], settings)
        progress.set_postfix(w_loss=f"{stats.w_loss:.4f}")
        if step % b.log_every == 0 or step == b.steps - 1:
            scores = supernet.export_probs()
            summary = summarize_dam(scores)
            trajectory.append({"step": step, "dam": scores, "w_loss": stats.w_loss,
                               "alpha_loss": stats.alpha_loss, "penalties": stats.penalties,
                               "pruned": sorted(record.pruned), **summary})
            values = {"search/w_loss": stats.w_loss, "search/dam_entropy": summary["entropy"],
                      "search/dam_spread": summary["spread"], **{f"dam/{n}": v for n, v in scores.items()},
                      **{f"search/penalty/{n}": v for n, v in stats.penalties.items()}}
            if stats.alpha_loss is not None:
                values["search/alpha_loss"] = stats.alpha_loss
            logger.log(values, step=step)
        if checkpoint is not None and checkpoint.due(step, b.steps - 1):
            checkpoint.save("search", state(step))
    supernet.detach_gates()
    wall = time.perf_counter() - start
    if gates.steps == 0 and CRITERIA.get(settings.criterion.name).needs_search:
        raise ConfigError(f"criterion={settings.criterion.name} needs the search's α-steps and none ran "
                          f"(bilevel.steps={b.steps}, warmup_steps={b.warmup_steps}); give the search α-steps or "
                          f"use criterion=grad_norm or criterion=random")
    with autocast(settings.device, settings.precision):
        final = score_stage("final", names, scoring, searched=gates.steps > 0)
    criteria |= {name: rank_pruned(scores, record) for name, scores in final.items()} if record.stages else final
    types = {candidate.name: candidate.module_type for candidate in space}
    ordered = {name: normalize_scores(criteria[name], types, settings.criterion.normalize) for name in names
               if name in criteria}
    return SearchOutcome(supernet, supernet.export_probs(), ordered, trajectory, wall)
