"""One run of any method: load → (search →) adapt → train → evaluate → ``metrics.json``.

Every method goes through the same data, training loop (:func:`nas.engine.training.finetune`), evaluation and
parameter counting; a method only decides what trains (``nas.methods``). ``run_pipeline(cfg, run_dir,
logger)`` writes ``selection.json`` (and for DiffoRA ``dam.png``, ``dam_trajectory.json``) and, last,
``metrics.json``, whose presence marks a finished run.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nas.adapters.export import ADAPTER_DIR, MODEL_DIR, export_adapter, export_full_model, lora_factors
from nas.engine.backbone import Backbone, load_backbone
from nas.engine.budget import describe, resolve_target
from nas.engine.checkpoint import Checkpointer
from nas.engine.completions import class_labels, prepare_completion_data
from nas.engine.data import TaskData, prepare_data, prepare_planted_data
from nas.engine.identity import code_version
from nas.engine.logger import Logger
from nas.engine.outputs import seed_everything, write_json
from nas.engine.parallel import SINGLE, Parallel
from nas.engine.precision import precision_warning, resolve_precision
from nas.engine.training import count_parameters, evaluate, finetune, make_loader
from nas.errors import ConfigError
from nas.methods import METHODS, MethodContext, Prepared
from nas.search.discretizer import KEEPS_FRACTION, keep_count
from objectives import get_task, majority_baseline
from objectives.planted import PlantedSpec, recovery
from search_spaces.space import build_search_space


def parameter_counts(prepared: Prepared) -> dict[str, int]:
    """Counted the same way for every method, on the model the optimizer trained: trainable = parameters with
    requires_grad; head = the task head's; adapter = trainable − head."""
    trainable = count_parameters(prepared.model)
    head = sum(p.numel() for p in prepared.head_params if p.requires_grad)
    return {"trainable_params": trainable, "adapter_params": trainable - head, "head_params": head,
            "total_params": count_parameters(prepared.model, trainable_only=False)}


def planted_spec(task_cfg: DictConfig) -> PlantedSpec:
    """The typed planted-task settings of ``task=planted``; bad values are a ConfigError naming the fix."""
    try:
        return PlantedSpec(source=task_cfg.source, pattern=task_cfg.pattern, k=int(task_cfg.k),
                           module_types=None if task_cfg.module_types is None else tuple(task_cfg.module_types),
                           layers=None if task_cfg.layers is None else tuple(task_cfg.layers),
                           size=float(task_cfg.size), rank=int(task_cfg.rank), target=task_cfg.target,
                           seed=int(task_cfg.planted_seed), outputs=int(task_cfg.get("outputs", 1)),
                           effect=None if task_cfg.get("effect") is None else float(task_cfg.effect))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def check_planted_fits(rho: float, candidates: int, planted: int) -> None:
    """A ρ that keeps fewer modules than were planted cannot reach precision 1: a ConfigError naming the fix."""
    if keep_count(rho, candidates) < planted:
        raise ConfigError(f"discretizer.rho={rho} keeps {keep_count(rho, candidates)} of {candidates} modules, fewer "
                          f"than the {planted} planted, so no criterion can recover them; set discretizer.rho="
                          f"{planted / candidates:.4g} (|S|/N) or more")


def baseline(data: TaskData) -> dict[str, float]:
    """The dev metrics of always predicting the most frequent train class (the train mean for a regression); none
    for free completions."""
    task = data.task
    if task.objective == "head":
        return majority_baseline(task, data.train["labels"], data.dev["labels"])
    train, dev = class_labels(task, data.train), class_labels(task, data.dev)
    return {} if train is None else majority_baseline(task, train, dev)


def export_trained(prepared: Prepared, backbone: Backbone, run_dir: Path, base_model: str, dropout: float) -> None:
    """The run's deployable artifact from the model in memory (nas/adapters/export.py): ``model/``, the whole
    model, for full fine-tuning (no selected module); ``adapter/`` in PEFT's LoRA format for every adapter method."""
    if not prepared.selected:
        export_full_model(prepared.model, backbone.tokenizer, run_dir / MODEL_DIR)
        return
    factors = lora_factors(prepared.model)
    if not factors:
        print("diffora: warning: every adapter rank was pruned (all gates closed), so no adapter/ is written")
        return
    export_adapter(prepared.model, prepared.head_names, run_dir / ADAPTER_DIR, base_model, dropout, factors)


def run_pipeline(cfg: DictConfig, run_dir: Path, logger: Logger, checkpoint: Checkpointer | None = None,
                 parallel: Parallel = SINGLE) -> dict[str, Any]:
    """The whole run of ``cfg.method.name``; returns the content of ``metrics.json``. ``checkpoint`` saves the
    search's and the training's state, and restores them when resuming (nas/engine/checkpoint.py); ``parallel`` is this
    process's share of every global batch (nas/engine/parallel.py). Only the main process writes files."""
    parallel.check(int(cfg.bilevel.batch_size), "bilevel.batch_size")
    parallel.check(int(cfg.retrain.batch_size), "retrain.batch_size")
    total_start = time.perf_counter()
    cfg.precision = resolve_precision(cfg.precision, cfg.device)  # a no-op after nas/app.py (which resolves first)
    if parallel.is_main and (warning := precision_warning(cfg.device, cfg.precision)):
        print(warning)
    seed_everything(cfg.seed)
    spec = planted_spec(cfg.task) if cfg.task.name == "planted" else None
    objective = str(cfg.task.objective)
    num_labels = (spec.task().num_labels if spec is not None else 0 if objective == "causal_lm"
                  else get_task(cfg.task.name).num_labels)
    backbone = load_backbone(cfg.model.name_or_path, num_labels, cfg.model.head_modules, cfg.model.dropout,
                             objective, cfg.model.pad_token)
    try:
        space = build_search_space(backbone.model, cfg.space.preset, cfg.space.module_types, cfg.space.layers)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"space: {error}") from error
    truth = None
    if spec is not None:
        data, truth = prepare_planted_data(spec, backbone.model, backbone.head_names,
                                           backbone.tokenizer, space, cfg.task.data_dir, cfg.task.max_length,
                                           cfg.device, cfg.paths.cache_dir, cfg.seed, cfg.task.max_train_samples,
                                           cfg.task.max_eval_samples)
    elif objective == "causal_lm":
        data = TaskData(*prepare_completion_data(cfg.task, backbone.tokenizer, cfg.task.max_length, cfg.seed,
                                                 cfg.task.max_train_samples, cfg.task.max_eval_samples))
    else:
        data = prepare_data(get_task(cfg.task.name), cfg.task.data_dir, backbone.tokenizer, cfg.task.max_length,
                            cfg.paths.cache_dir, cfg.seed, cfg.task.max_train_samples, cfg.task.max_eval_samples,
                            standardize=cfg.task.standardize_labels)
    task = data.task
    method = METHODS.get(cfg.method.name)()
    if truth is not None and method.discretizes and cfg.discretizer.name in KEEPS_FRACTION:
        check_planted_fits(float(cfg.discretizer.rho), len(space), len(truth.modules))
    ctx = MethodContext(cfg=cfg, data=data, space=space, run_dir=run_dir, logger=logger,
                        budget_target=resolve_target(cfg, space) if method.has_budget else None,
                        checkpoint=checkpoint, parallel=parallel)
    prepared = method.prepare(ctx, backbone)

    seed_everything(cfg.seed + 1)
    train_start = time.perf_counter()
    train_loader = make_loader(data.train, backbone.tokenizer, cfg.retrain.batch_size, True, cfg.seed,
                               cfg.group_by_length)
    finetune(prepared.model, prepared.params, train_loader, task, prepared.steps, prepared.lr, prepared.weight_decay,
             cfg.retrain.warmup_ratio, cfg.retrain.grad_clip, cfg.device, logger,
             step_offset=int(prepared.stage_metrics.get("search_steps", 0)), log_every=cfg.retrain.log_every,
             hooks=prepared.hooks, desc="train", precision=cfg.precision, checkpoint=checkpoint,
             parallel=parallel)
    train_wall = time.perf_counter() - train_start
    counts = parameter_counts(prepared)  # before the method prunes anything
    extra = method.finalize(ctx, prepared)  # effective = what is left after the method's own pruning
    counts["effective_params"] = int(extra.pop("effective_params", counts["adapter_params"]))
    if cfg.retrain.export_adapter and parallel.is_main:
        export_trained(prepared, backbone, run_dir, cfg.model.name_or_path, float(cfg.space.dropout))

    eval_start = time.perf_counter()
    dev_loader = make_loader(data.dev, backbone.tokenizer, cfg.retrain.eval_batch_size, False, cfg.seed)
    metrics = evaluate(prepared.model, dev_loader, task, cfg.device, cfg.precision)
    result = {
        "task": truth.spec.label if truth is not None else task.name, "method": cfg.method.name, "seed": cfg.seed,
        "model": str(cfg.model.name_or_path), "num_labels": task.num_labels, "metrics": metrics,
        "main_metric": task.main_metric, "score": metrics[task.main_metric],
        "majority_baseline": baseline(data), "objective": objective,
        **counts, **describe(ctx.budget_target, counts["effective_params"]),
        "num_selected": len(prepared.selected), "num_candidates": len(space),
        "train_examples": len(data.train), "dev_examples": len(data.dev),
        "train_steps": prepared.steps, "search_steps": 0, "search_wall_s": 0.0, **prepared.stage_metrics,
        "train_wall_s": train_wall, "eval_wall_s": time.perf_counter() - eval_start,
        "total_wall_s": time.perf_counter() - total_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: ru_maxrss is in KiB
        "variant": {**prepared.variant, "precision": cfg.precision, "group_by_length": cfg.group_by_length},
        "method_config": OmegaConf.to_container(cfg.method, resolve=True), "code_version": code_version(),
        **extra,
    }
    if truth is not None:
        result["recovery"] = recovery(prepared.selected, truth.modules, list(space.names), prepared.scores,
                                      prepared.criterion, {c.name: c.module_type for c in space})
        result["planted"] = {"modules": truth.modules, "base_agreement": truth.base_agreement,
                             **OmegaConf.to_container(cfg.task, resolve=True)}
    logger.summary({f"dev/{k}": v for k, v in metrics.items()} | {"trainable_params": counts["trainable_params"]})
    write_json(run_dir / "metrics.json", result)
    return result
