"""The DiffoRA search stage: alternate α-steps (α-split) and w-steps (w-split) on the supernet."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from nas.backbone import Backbone
from nas.bilevel import BilevelSearch
from nas.data import TaskData
from nas.hypergradient import HYPERGRADIENTS, BilevelProblem
from nas.logger import Logger
from nas.relaxation import build_relaxation
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


def search(cfg: DictConfig, backbone: Backbone, space: SearchSpace, data: TaskData, logger: Logger) -> SearchOutcome:
    """Alternate α-steps (α-split) and w-steps (w-split) for ``bilevel.steps`` steps."""
    b = cfg.bilevel
    relaxation = build_relaxation(cfg.relaxation.name, cfg.relaxation.init_mean, cfg.relaxation.init_std)
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
                            grad_clip=b.grad_clip, warmup_steps=b.warmup_steps)
    supernet.train()
    w_batches, a_batches = forever(w_loader), forever(a_loader)
    trajectory: list[dict[str, Any]] = []
    start = time.perf_counter()
    progress = tqdm(range(b.steps), desc="search", dynamic_ncols=True)
    for step in progress:
        stats = bilevel.step(to_device(next(w_batches), cfg.device), to_device(next(a_batches), cfg.device))
        progress.set_postfix(w_loss=f"{stats.w_loss:.4f}")
        if step % b.log_every == 0 or step == b.steps - 1:
            scores = supernet.export_probs()
            trajectory.append({"step": step, "dam": scores, "w_loss": stats.w_loss,
                               "alpha_loss": stats.alpha_loss})
            values = {"search/w_loss": stats.w_loss, **{f"dam/{n}": v for n, v in scores.items()}}
            if stats.alpha_loss is not None:
                values["search/alpha_loss"] = stats.alpha_loss
            logger.log(values, step=step)
    supernet.detach_gates()
    return SearchOutcome(supernet, supernet.export_probs(), trajectory, time.perf_counter() - start)
