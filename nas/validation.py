"""Checks of a composed run config that its schema (nas/config.py) cannot express: ranges, registry names, that
the task's data and the model exist. They run before any work, and each failure is one ConfigError naming the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nas.config import OPTIMIZER_NAMES
from nas.engine.precision import PRECISION_CHOICES
from nas.errors import ConfigError


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# Integer counts the schema types but cannot bound: key → (least value, the fix). A key that the composed config
# lacks (another method's or discretizer's option) or that is null (where the schema allows it) is not checked.
COUNTS: dict[str, tuple[int, str]] = {
    "task.max_train_samples": (1, "set the number of train examples to use, or null for all of them"),
    "task.max_eval_samples": (1, "set the number of dev examples to use, or null for all of them"),
    "task.k": (1, "plant at least one module, e.g. task.k=9"),
    "bilevel.log_every": (1, "log every N search steps, e.g. bilevel.log_every=10"),
    "retrain.log_every": (1, "log every N training steps, e.g. retrain.log_every=10"),
    "threads": (1, "set threads=1 or more, or null for torch's default"),
    "processes": (1, "set it to the number of processes torchrun starts, or null"),
    "method.rank": (1, "set a rank such as 8, or null to solve it from the budget (else space.rank)"),
    "method.sharing_in": (1, "set method.sharing_in=1 for no sharing along the input width"),
    "method.sharing_out": (1, "set method.sharing_out=1 for no sharing along the output width"),
    "method.unshared_rank": (0, "set method.unshared_rank=0 (all ranks shared) or more"),
    "method.target_r": (1, "set a rank such as 8, or null to solve it from the budget (else space.rank)"),
    "method.init_r": (1, "set a rank above method.target_r, or null for ⌈1.5·target_r⌉"),
    "method.tinit": (0, "set the steps before pruning starts, or null for 15% of the steps"),
    "method.tfinal": (0, "set the final steps at the target budget, or null for 35% of the steps"),
    "method.deltaT": (1, "set the steps between two budget allocations, e.g. method.deltaT=1"),
    "discretizer.k": (1, "keep at least one module per layer, or set discretizer.k=null to use rho"),
    "discretizer.min_keep": (1, "keep at least one module, e.g. discretizer.min_keep=1"),
    "discretizer.target_params": (1, "set a positive parameter budget, or null to use rho"),
}


def validate_run_config(cfg: Any) -> None:
    """Range and name checks that the schema cannot express; raises ConfigError naming the fix."""
    from nas.adapters.operators import OPERATORS
    from nas.engine.logger import LOGGERS
    from nas.methods import METHODS
    from nas.search.criteria import CRITERIA, NORMALIZATIONS
    from nas.search.discretizer import DISCRETIZERS
    from nas.search.hypergradient import HYPERGRADIENTS
    from nas.search.relaxation import RELAXATIONS

    rho = cfg.discretizer.rho
    _check(0.0 < rho <= 1.0 and math.isfinite(rho),
           f"discretizer.rho={rho} is outside (0, 1]; pass e.g. discretizer.rho=0.5")
    from nas.search.regularizers import REGULARIZERS

    for name, weight in cfg.bilevel.regularizers.items():
        _check(name in REGULARIZERS, f"bilevel.regularizers.{name} is unknown; choose among: "
                                     f"{', '.join(REGULARIZERS.names())}")
        _check(weight >= 0 and math.isfinite(weight), f"bilevel.regularizers.{name}={weight} must be >= 0")
    _check(cfg.discretizer.name != "perturbation",
           "discretizer=perturbation is now a selection criterion: use criterion=perturbation with a ranking "
           "discretizer (e.g. discretizer=global_topk)")
    for registry, value, key in (
        (RELAXATIONS, cfg.relaxation.name, "relaxation"),
        (HYPERGRADIENTS, cfg.bilevel.hypergradient, "bilevel.hypergradient"),
        (DISCRETIZERS, cfg.discretizer.name, "discretizer.name"),
        (OPERATORS, cfg.space.operator, "space.operator"),
        (LOGGERS, cfg.logger.name, "logger"),
        (CRITERIA, cfg.criterion.name, "criterion"),
    ):
        _check(value in registry, f"{key}={value} is unknown; choose one of: {', '.join(registry.names())}")
    for name in cfg.criterion.record:
        _check(name in CRITERIA, f"criterion.record has {name}, which is unknown; choose among: "
                                 f"{', '.join(CRITERIA.names())}")
    _check(cfg.criterion.normalize in NORMALIZATIONS,
           f"criterion.normalize={cfg.criterion.normalize} is unknown; choose one of: {', '.join(NORMALIZATIONS)}")
    _check(cfg.criterion.batches >= 1, f"criterion.batches={cfg.criterion.batches} must be a positive integer")
    _check(not (cfg.method.name in ("diffora", "random") and cfg.space.operator == "sora"),
           f"space.operator=sora with method={cfg.method.name} would train SoRA's gates without their L1 term and "
           f"proximal step; select over space.operator=lora or prolora, or run SoRA itself with method=sora")
    _check(cfg.bilevel.unrolled_step in ("optimizer", "sgd"),
           f"bilevel.unrolled_step={cfg.bilevel.unrolled_step} is unknown; choose optimizer or sgd")
    _check(cfg.bilevel.w_lr_start > 0, f"bilevel.w_lr_start={cfg.bilevel.w_lr_start} must be a positive factor on the "
           f"w learning rate at the first search step, e.g. 0.3 (1 keeps the rate constant)")
    for key in ("bilevel.w_optimizer", "bilevel.alpha_optimizer"):
        name = OmegaConf.select(cfg, f"{key}.name")
        _check(name in OPTIMIZER_NAMES, f"{key}.name={name} is unknown; choose {', '.join(OPTIMIZER_NAMES)}")
    _check(not (cfg.bilevel.hypergradient == "second_order" and cfg.bilevel.unrolled_step == "optimizer"
                and cfg.bilevel.w_optimizer.name == "shared_adam"),
           "bilevel.w_optimizer.name=shared_adam has no virtual step for the second-order hypergradient (its shared "
           "second moment couples every coordinate); use bilevel.unrolled_step=sgd, or w_optimizer adam or sgd")
    _check(cfg.grad_accum >= 1, f"grad_accum={cfg.grad_accum} must be a positive number of micro-batches per step")
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0 turns checkpoints off)")
    _check(cfg.precision in PRECISION_CHOICES,
           f"precision={cfg.precision} is unknown; choose one of: {', '.join(PRECISION_CHOICES)}")
    _check(cfg.retrain.init in ("shared", "fresh"),
           f"retrain.init={cfg.retrain.init} is unknown; choose retrain.init=shared or retrain.init=fresh")
    _check(0.0 < cfg.bilevel.w_fraction < 1.0,
           f"bilevel.w_fraction={cfg.bilevel.w_fraction} must be in (0, 1), e.g. 0.5 for a 50/50 split")
    for key in ("bilevel.batch_size", "retrain.batch_size", "retrain.eval_batch_size",
                "space.rank", "task.max_length"):
        value = OmegaConf.select(cfg, key)
        _check(value >= 1, f"{key}={value} must be a positive integer")
    for key in ("task.search_steps", "bilevel.steps", "retrain.steps", "bilevel.warmup_steps"):
        value = OmegaConf.select(cfg, key)
        _check(value is None and key == "retrain.steps" or value is not None and value >= 0,
               f"{key}={value} must be >= 0")
    for key, (least, fix) in COUNTS.items():
        value = OmegaConf.select(cfg, key)
        _check(value is None or value >= least,
               f"{key}={value} must be {'a positive integer' if least == 1 else '>= 0'}; {fix}")
    _check(cfg.space.layers is None or len(cfg.space.layers) > 0,
           "space.layers=[] selects no layer; list layer indices (negative ones count from the end) or set "
           "space.layers=null for all layers")
    planted_layers = OmegaConf.select(cfg, "task.layers") if cfg.task.name == "planted" else None
    _check(planted_layers is None or (len(planted_layers) > 0 and min(planted_layers) >= 0),
           f"task.layers={planted_layers} must be 0-based layer indices of the search space (at least one, none "
           f"negative); list them, or set task.layers=null for all layers")
    for key in ("retrain.epochs", "task.epochs"):
        epochs = OmegaConf.select(cfg, key)
        _check(epochs is None or (epochs > 0 and math.isfinite(epochs)),
               f"{key}={epochs} must be a positive number of passes over the train set, or null")
    _check(not (cfg.retrain.steps is None and cfg.retrain.epochs is None and cfg.task.get("epochs") is None),
           f"task={cfg.task.name} sets no default training length: set retrain.steps=N or retrain.epochs=E (or "
           f"task.epochs=E)")
    _check(cfg.model.dropout is None or 0.0 <= cfg.model.dropout < 1.0,
           f"model.dropout={cfg.model.dropout} must be in [0, 1), or null for the checkpoint's")
    _check(0.0 <= cfg.space.dropout < 1.0, f"space.dropout={cfg.space.dropout} must be in [0, 1)")
    _check(0.0 < cfg.bilevel.alpha_shrink_fraction <= 1.0,
           f"bilevel.alpha_shrink_fraction={cfg.bilevel.alpha_shrink_fraction} must be in (0, 1]: the share of gates "
           f"each α-step shrinks (1 shrinks them all)")
    _check(0.0 <= cfg.bilevel.w_average < 1.0,
           f"bilevel.w_average={cfg.bilevel.w_average} must be in [0, 1): the decay β of the average of w that the "
           f"α-steps read (0: the current w; 0.9 averages over about 10 w-steps)")
    _check(0.0 <= cfg.bilevel.alpha_shrink < 1.0,
           f"bilevel.alpha_shrink={cfg.bilevel.alpha_shrink} must be in [0, 1): the α-steps see (1 − δ)·γ")
    size = cfg.bilevel.branch_size
    _check(size is None or (size > 0 and math.isfinite(size)),
           f"bilevel.branch_size={size} must be a positive relative norm ‖ΔW‖/‖W₀‖ (e.g. 0.05), or null to leave the "
           f"branches' size to their weights")
    _check(size is None or cfg.space.operator == "lora",
           f"bilevel.branch_size rescales LoRA branches, but space.operator={cfg.space.operator}; use "
           f"space.operator=lora or bilevel.branch_size=null")
    _check(cfg.bilevel.branch_size_units in ("weight", "output"),
           f"bilevel.branch_size_units={cfg.bilevel.branch_size_units!r} is not known; use weight (‖ΔW‖ = τ‖W₀‖) or "
           f"output (τ calibrated per module in the network's outputs)")
    _check(cfg.bilevel.branch_size_units == "weight" or size is not None,
           "bilevel.branch_size_units=output calibrates sized branches, but bilevel.branch_size is null; set "
           "bilevel.branch_size=0.05 (for example) or bilevel.branch_size_units=weight")
    _check(cfg.bilevel.branch_init in ("kaiming", "activations"),
           f"bilevel.branch_init={cfg.bilevel.branch_init!r} is not known; use kaiming (LoRA's init) or activations "
           f"(A on the top-r directions of each module's input)")
    _check(cfg.bilevel.branch_init == "kaiming" or cfg.space.operator == "lora",
           f"bilevel.branch_init=activations sets LoRA's A, but space.operator={cfg.space.operator}; use "
           f"space.operator=lora or bilevel.branch_init=kaiming")
    _check(cfg.bilevel.balance_space in ("branch", "output"),
           f"bilevel.balance_space={cfg.bilevel.balance_space!r} is not known; use branch (the speed of the branch's "
           f"own output) or output (the speed of the network's outputs)")
    _check(cfg.bilevel.prune_stages >= 0,
           f"bilevel.prune_stages={cfg.bilevel.prune_stages} must be >= 0 (0 turns pruning off)")
    _check(cfg.bilevel.prune_stages == 0 or cfg.discretizer.name == "global_topk",
           f"bilevel.prune_stages={cfg.bilevel.prune_stages} prunes toward the ⌈ρN⌉ modules that global_topk keeps, "
           f"and discretizer={cfg.discretizer.name} could select pruned modules; use discretizer=global_topk or "
           f"bilevel.prune_stages=0")
    _check(cfg.bilevel.dropout is None or 0.0 <= cfg.bilevel.dropout < 1.0,
           f"bilevel.dropout={cfg.bilevel.dropout} must be in [0, 1), or null to search with model.dropout and "
           f"space.dropout")
    _check(cfg.method.name in METHODS,
           f"method={cfg.method.name} is unknown; choose one of: {', '.join(METHODS.names())}")
    if cfg.method.name == "fixed":
        from nas.methods.fixed import FORMS, PLACEMENT

        placement = str(cfg.method.placement)
        _check(PLACEMENT.fullmatch(placement) is not None,
               f"method.placement={placement} is not a placement; use {FORMS}")
        _check(placement != "list" or bool(cfg.method.modules),
               "method.placement=list needs method.modules=[<candidate name>, ...] (names as in selection.json)")
    for key in ("method.lr", "method.weight_decay", "budget.target_params"):
        value = OmegaConf.select(cfg, key)
        _check(value is None or value >= 0, f"{key}={value} must be >= 0 (or null for the default)")
    validate_inputs(cfg)


def validate_inputs(cfg: Any) -> None:
    """The task exists, its data folder is there (unless read from the hub), the model path resolves."""
    from nas.engine.backbone import resolve_model_path
    from objectives import get_task

    objective = cfg.task.get("objective", "head")
    _check(objective in ("head", "causal_lm"),
           f"task.objective={objective} is unknown; choose head (a classification/regression head) or causal_lm")
    _check(objective == "head" or cfg.task.name != "planted",
           "task=planted needs task.objective=head (its targets are the teacher's head outputs)")
    if cfg.task.name == "jsonl":
        _check(objective == "causal_lm", "task=jsonl needs task.objective=causal_lm (prompt → completion data)")
        for key in ("train_file", "dev_file"):
            _check(not OmegaConf.is_missing(cfg.task, key),
                   f"task=jsonl needs task.{key}: a JSONL file with one {{\"prompt\": ..., \"completion\": ...}} "
                   f"object per line")
            path = Path(str(cfg.task[key])).expanduser()
            _check(path.is_file(), f"task.{key}={path} does not exist; point it at a JSONL file with one "
                                   f'{{"prompt": ..., "completion": ...}} object per line')
        resolve_model_path(cfg.model.name_or_path)
        return
    name = cfg.task.get("source", cfg.task.name) if cfg.task.name == "planted" else cfg.task.name
    try:
        task = get_task(name)
    except ValueError as error:
        raise ConfigError(f"task.{'source' if name != cfg.task.name else 'name'}: {error} (or planted, or jsonl)"
                          ) from error
    if cfg.task.name == "planted":
        from nas.engine.pipeline import planted_spec

        planted_spec(cfg.task)  # pattern, target, size, rank: checked before any work
    if cfg.task.data_dir is not None:
        folder = Path(cfg.task.data_dir).expanduser() / task.folder
        _check(folder.is_dir(),
               f"GLUE data folder {folder} is missing; set DIFFORA_GLUE_DIR (or paths.glue_dir) to the folder "
               f"that holds CoLA/, SST-2/, MRPC/, ..., or task.data_dir=null to read nyu-mll/glue from the hub")
    resolve_model_path(cfg.model.name_or_path)
