"""The DiffoRA search stage: alternate α-steps (α-split) and w-steps (w-split) on the supernet."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from nas.backbone import Backbone
from nas.bilevel import ArchPenalty, BilevelSearch
from nas.data import TaskData
from nas.diagnostics import summarize_dam
from nas.hypergradient import HYPERGRADIENTS, BilevelProblem, LossFn
from nas.logger import Logger
from nas.regularizers import RegularizerContext, build_regularizer_loss
from nas.relaxation import Relaxation, build_relaxation
from nas.supernet import SuperNet
from nas.training import forever, loss_for, make_loader, to_device
from objectives.splits import split_indices
from search_spaces.space import SearchSpace


def optimizer_from(cfg: DictConfig, params: list[torch.nn.Parameter], kind: type) -> torch.optim.Optimizer:
    return kind(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)


@dataclass
class SearchOutcome:
    supernet: SuperNet
    scores: dict[str, float]
    trajectory: list[dict[str, Any]]
    wall_s: float
    removal_score: Callable[[str | None], float] | None = None  # for discretizer=perturbation


def relaxation_from(cfg: DictConfig) -> Relaxation:
    """The configured relaxation; its own options (τ, β, …) come from the rest of the ``relaxation`` node and
    its samples from a generator seeded by the run's seed."""
    options = {k: v for k, v in cfg.relaxation.items() if k not in ("name", "init_mean", "init_std")}
    sampler = torch.Generator().manual_seed(int(cfg.seed) + 7919)
    return build_relaxation(cfg.relaxation.name, cfg.relaxation.init_mean, cfg.relaxation.init_std,
                            generator=sampler, **options)


def dam_penalty(cfg: DictConfig, supernet: SuperNet, space: SearchSpace,
                budget_target: int | None) -> ArchPenalty | None:
    """Σ λ_i R_i on the DAM's keep probabilities (``bilevel.regularizers``), or None when no weight is set."""
    weights = {name: float(w) for name, w in cfg.bilevel.regularizers.items() if w}
    if not weights:
        return None
    loss = build_regularizer_loss(weights)
    base = RegularizerContext.from_space(space, int(cfg.space.rank), supernet.dam_logits,
                                         target_fraction=float(cfg.discretizer.rho), target_params=budget_target)

    def penalty() -> tuple[torch.Tensor, dict[str, float]]:
        keep = supernet.relaxation.expected_keep(supernet.dam_logits)
        return loss(keep, replace(base, logits=supernet.dam_logits, progress=supernet.relaxation.progress))

    return penalty


def search(cfg: DictConfig, backbone: Backbone, space: SearchSpace, data: TaskData, logger: Logger,
           budget_target: int | None = None) -> SearchOutcome:
    """Alternate α-steps (α-split) and w-steps (w-split) for ``bilevel.steps`` steps."""
    b = cfg.bilevel
    relaxation = relaxation_from(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    supernet = SuperNet(backbone.model, space, relaxation, backbone.head_names, operator=cfg.space.operator,
                        rank=cfg.space.rank, alpha=cfg.space.alpha, dropout=cfg.space.dropout,
                        operator_args=cfg.space.operator_args, generator=generator).to(cfg.device)
    w_idx, a_idx = split_indices(data.train["labels"], b.w_fraction, cfg.seed, not data.task.is_regression)
    w_loader = make_loader(data.train.select(w_idx), backbone.tokenizer, b.batch_size, True, cfg.seed)
    a_loader = make_loader(data.train.select(a_idx), backbone.tokenizer, b.batch_size, True, cfg.seed + 1)
    inner = supernet.named_weight_parameters()
    w_optimizer = optimizer_from(b.w_optimizer, list(inner.values()), torch.optim.AdamW)
    alpha_optimizer = optimizer_from(b.alpha_optimizer, supernet.arch_parameters(), torch.optim.Adam)
    problem = BilevelProblem(model=supernet, loss_fn=loss_for(data.task), inner=inner,
                             outer={"dam_logits": supernet.dam_logits},
                             inner_lr=b.unrolled_lr if b.unrolled_lr is not None else b.w_optimizer.lr)
    bilevel = BilevelSearch(problem, HYPERGRADIENTS.get(b.hypergradient), w_optimizer, alpha_optimizer,
                            grad_clip=b.grad_clip, warmup_steps=b.warmup_steps,
                            arch_penalty=dam_penalty(cfg, supernet, space, budget_target))
    supernet.train()
    w_batches, a_batches = forever(w_loader), forever(a_loader)
    trajectory: list[dict[str, Any]] = []
    start = time.perf_counter()
    progress = tqdm(range(b.steps), desc="search", dynamic_ncols=True)
    for step in progress:
        relaxation.set_progress(step / max(b.steps - 1, 1))
        stats = bilevel.step(to_device(next(w_batches), cfg.device), to_device(next(a_batches), cfg.device))
        progress.set_postfix(w_loss=f"{stats.w_loss:.4f}")
        if step % b.log_every == 0 or step == b.steps - 1:
            scores = supernet.export_probs()
            summary = summarize_dam(scores)
            trajectory.append({"step": step, "dam": scores, "w_loss": stats.w_loss,
                               "alpha_loss": stats.alpha_loss, "penalties": stats.penalties, **summary})
            values = {"search/w_loss": stats.w_loss, "search/dam_entropy": summary["entropy"],
                      "search/dam_spread": summary["spread"], **{f"dam/{n}": v for n, v in scores.items()},
                      **{f"search/penalty/{n}": v for n, v in stats.penalties.items()}}
            if stats.alpha_loss is not None:
                values["search/alpha_loss"] = stats.alpha_loss
            logger.log(values, step=step)
    supernet.detach_gates()
    scores = supernet.export_probs()
    perturbation = cfg.discretizer.name == "perturbation"
    removal = removal_scorer(cfg, supernet, a_loader, problem.loss_fn) if perturbation else None
    return SearchOutcome(supernet, scores, trajectory, time.perf_counter() - start, removal)


def removal_scorer(cfg: DictConfig, supernet: SuperNet, loader: Iterable[dict[str, torch.Tensor]],
                   loss_fn: LossFn) -> Callable[[str | None], float]:
    """score(name) = −L_α of the trained supernet with ``name``'s branch removed (γ = 0), on the first
    ``bilevel.perturbation_batches`` α-split batches (None: nothing removed). DARTS-PT's selection signal.
    The supernet is final here, so each score is computed once and remembered."""
    batches = [to_device(batch, cfg.device) for batch, _ in zip(loader, range(cfg.bilevel.perturbation_batches),
                                                                strict=False)]
    compute_loss = loss_for_batches(supernet, batches, loss_fn)
    known: dict[str | None, float] = {}

    def score(name: str | None) -> float:
        if name in known:
            return known[name]
        supernet.removed = {name} if name else set()
        try:
            known[name] = -compute_loss()
        finally:
            supernet.removed = set()
        return known[name]

    return score


def loss_for_batches(supernet: SuperNet, batches: list[dict[str, torch.Tensor]],
                     loss_fn: LossFn) -> Callable[[], float]:
    """Mean task loss of the supernet (eval mode, no sampling) over fixed batches."""
    def mean_loss() -> float:
        was_training = supernet.training
        supernet.eval()
        total = 0.0
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                total += float(loss_fn(supernet(**inputs), batch))
        supernet.detach_gates()
        supernet.train(was_training)
        return total / max(len(batches), 1)

    return mean_loss
