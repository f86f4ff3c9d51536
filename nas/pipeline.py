"""DiffoRA end to end: search (bilevel, relaxed DAM) → discretize → retrain the selected LoRAs → evaluate.

``run_pipeline(cfg, run_dir, logger)`` writes into ``run_dir``: ``selection.json`` and ``dam.png`` after
the search, ``dam_trajectory.json``, and last ``metrics.json`` (its presence marks a finished run).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from nas.backbone import Backbone, load_backbone
from nas.bilevel import BilevelSearch
from nas.discretizer import DiscretizeInput, build_discretizer
from nas.errors import ConfigError
from nas.export import export_peft_adapter
from nas.hypergradient import HYPERGRADIENTS, BilevelProblem
from nas.logger import Logger
from nas.plots import dam_matrix, plot_dam
from nas.relaxation import build_relaxation
from nas.retrain import adapt_selected
from nas.supernet import SuperNet
from nas.training import count_parameters, evaluate, finetune, forever, loss_for, make_loader, to_device
from objectives import GlueTask, get_task, load_glue, majority_baseline, tokenize_glue
from objectives.splits import split_indices, subsample_indices
from search_spaces.space import SearchSpace, build_search_space


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass
class TaskData:
    task: GlueTask
    train: Dataset
    dev: Dataset


def prepare_data(task: GlueTask, data_dir: str | None, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 cache_dir: str | None = None, seed: int = 0, max_train: int | None = None,
                 max_eval: int | None = None) -> TaskData:
    """Read, tokenize (cached) and optionally subsample (stratified, seeded) the task's train and dev sets."""
    try:
        raw = load_glue(task, data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    tokenized = tokenize_glue(raw, task, tokenizer, max_length, cache_dir)
    stratify = not task.is_regression
    train, dev = tokenized["train"], tokenized["validation"]
    train = train.select(subsample_indices(train["labels"], max_train, seed, stratify))
    dev = dev.select(subsample_indices(dev["labels"], max_eval, seed, stratify))
    return TaskData(task, train, dev)


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
                        generator=generator).to(cfg.device)
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


def build_retrain_model(cfg: DictConfig, selected: list[str], task: GlueTask,
                        outcome: SearchOutcome) -> Backbone:
    """A freshly loaded backbone with LoRA on the selected modules (warm-started when retrain.init=shared)."""
    backbone = load_backbone(cfg.model.name_or_path, task.num_labels, cfg.model.head_modules)
    shared = cfg.retrain.init == "shared"
    adapt_selected(backbone.model, backbone.head_names, selected, cfg.space.operator, cfg.space.rank,
                   cfg.space.alpha, cfg.space.dropout, supernet=outcome.supernet if shared else None,
                   gates=outcome.scores if shared and cfg.retrain.fold_gate else None)
    backbone.model.to(cfg.device)
    return backbone


def run_pipeline(cfg: DictConfig, run_dir: Path, logger: Logger) -> dict[str, Any]:
    """The whole DiffoRA run; returns the content of ``metrics.json``."""
    total_start = time.perf_counter()
    seed_everything(cfg.seed)
    task = get_task(cfg.task.name)
    backbone = load_backbone(cfg.model.name_or_path, task.num_labels, cfg.model.head_modules)
    data = prepare_data(task, cfg.task.data_dir, backbone.tokenizer, cfg.task.max_length, cfg.paths.cache_dir,
                        cfg.seed, cfg.task.max_train_samples, cfg.task.max_eval_samples)
    try:
        space = build_search_space(backbone.model, cfg.space.preset, cfg.space.module_types, cfg.space.layers)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"space: {error}") from error

    outcome = search(cfg, backbone, space, data, logger)
    discretize = build_discretizer(cfg.discretizer)
    selected = outcome.supernet.export(lambda scores: discretize(DiscretizeInput(scores, space)))
    write_json(run_dir / "selection.json", {
        "selected": selected, "dam": outcome.scores, "rho": cfg.discretizer.rho,
        "discretizer": cfg.discretizer.name, "relaxation": cfg.relaxation.name,
        "hypergradient": cfg.bilevel.hypergradient, "seed": cfg.seed, "task": task.name,
        "layers": list(space.layers), "module_types": list(space.module_types),
        "dam_matrix": np.nan_to_num(dam_matrix(space, outcome.scores), nan=-1.0).tolist(),
        "num_candidates": len(space), "num_selected": len(selected),
    })
    write_json(run_dir / "dam_trajectory.json", outcome.trajectory)
    plot_dam(space, outcome.scores, selected, run_dir / "dam.png",
             title=f"DAM · {task.name} · ρ={cfg.discretizer.rho} · seed {cfg.seed}")
    tqdm.write(f"selected {len(selected)}/{len(space)} modules:\n  " + "\n  ".join(selected))

    seed_everything(cfg.seed + 1)
    retrain_start = time.perf_counter()
    retrained = build_retrain_model(cfg, selected, task, outcome)
    trainable = [p for p in retrained.model.parameters() if p.requires_grad]
    train_loader = make_loader(data.train, backbone.tokenizer, cfg.retrain.batch_size, True, cfg.seed)
    finetune(retrained.model, trainable, train_loader, task, cfg.retrain.steps, cfg.retrain.lr,
             cfg.retrain.weight_decay, cfg.retrain.warmup_ratio, cfg.retrain.grad_clip, cfg.device, logger,
             step_offset=cfg.bilevel.steps, log_every=cfg.retrain.log_every)
    retrain_wall = time.perf_counter() - retrain_start

    eval_start = time.perf_counter()
    dev_loader = make_loader(data.dev, backbone.tokenizer, cfg.retrain.eval_batch_size, False, cfg.seed)
    metrics = evaluate(retrained.model, dev_loader, task, cfg.device)
    head = set(retrained.head_names)
    adapter_params = sum(p.numel() for n, p in retrained.model.named_parameters() if p.requires_grad and n not in head)
    result = {
        "task": task.name, "method": cfg.method, "seed": cfg.seed, "metrics": metrics,
        "main_metric": task.main_metric, "score": metrics[task.main_metric],
        "majority_baseline": majority_baseline(task, data.train["labels"], data.dev["labels"]),
        "trainable_params": count_parameters(retrained.model),
        "adapter_params": adapter_params,
        "total_params": count_parameters(retrained.model, trainable_only=False),
        "num_selected": len(selected), "num_candidates": len(space),
        "train_examples": len(data.train), "dev_examples": len(data.dev),
        "search_steps": cfg.bilevel.steps, "retrain_steps": cfg.retrain.steps,
        "search_wall_s": outcome.wall_s, "retrain_wall_s": retrain_wall,
        "eval_wall_s": time.perf_counter() - eval_start, "total_wall_s": time.perf_counter() - total_start,
    }
    if cfg.retrain.export_adapter and cfg.space.operator == "lora":
        base = load_backbone(cfg.model.name_or_path, task.num_labels, cfg.model.head_modules).model
        export_peft_adapter(retrained.model, base, selected, retrained.head_names, cfg.space.rank,
                            cfg.space.alpha, cfg.space.dropout, run_dir / "adapter")
    logger.summary({f"dev/{k}": v for k, v in metrics.items()} | {"trainable_params": result["trainable_params"]})
    write_json(run_dir / "metrics.json", result)
    return result
