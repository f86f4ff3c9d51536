"""A planted-module task: ground truth for module selection.

The teacher is the student's own backbone and head with rank-r weight deltas planted on a known set S of
candidate modules; nothing else separates the two. Its outputs on real GLUE sentences are the targets:

    W_m^teacher = W_m + ΔW_m  (m ∈ S),   ΔW_m = c_m · U_m V_mᵀ,  U_m ∈ ℝ^{out×r}, V_m ∈ ℝ^{in×r} ~ N(0, 1),
    c_m chosen so that ‖ΔW_m‖_F = size · ‖W_m‖_F.

Target kinds: ``regression`` (the teacher's outputs of a head with ``outputs`` rows, one scalar by default;
the student's MSE gradient is zero where the two already agree, so all of the signal comes from S) and
``classification`` (the argmax of the teacher's two logits). One scalar per sentence says little about which
modules moved: a LoRA on other modules can often imitate it. A vector target (``outputs`` = D, e.g. the hidden
size) asks the student to match D directions of the teacher's representation at once.

A selection criterion is then judged by how well it recovers S (:func:`recovery`):
precision = |selected ∩ S| / |S| and the ROC-AUC of its per-module scores against membership of S; a random
selection of |S| modules has expected precision |S| / N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from scipy.stats import rankdata
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from objectives.glue import GlueTask, get_task
from search_spaces.space import SearchSpace

PATTERNS = ("random", "grid")
TARGETS = ("regression", "classification")


@dataclass(frozen=True)
class PlantedSpec:
    """What is planted, where, and what the student is asked to predict.

    pattern: ``random`` (k modules drawn with ``seed``) or ``grid`` (every candidate whose module type is in
    ``module_types`` and whose layer is in ``layers``; null means all of them).
    """

    source: str = "sst2"
    pattern: str = "random"
    k: int = 9
    module_types: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    size: float = 0.5
    rank: int = 8
    target: str = "regression"
    seed: int = 0
    outputs: int = 1  # regression: the head's outputs (the target's dimension)
    effect: float | None = None  # each delta alone moves the outputs by effect·std(outputs) (None: size decides)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"task.pattern={self.pattern!r} is unknown; choose one of: {', '.join(PATTERNS)}")
        if self.target not in TARGETS:
            raise ValueError(f"task.target={self.target!r} is unknown; choose one of: {', '.join(TARGETS)}")
        if not (self.size > 0 and math.isfinite(self.size)):
            raise ValueError(f"task.size={self.size} must be a positive relative norm ‖ΔW‖/‖W‖, e.g. 0.5")
        if self.rank < 1:
            raise ValueError(f"task.rank={self.rank} must be a positive integer (the planted deltas' rank)")
        if self.effect is not None and not (self.effect > 0 and math.isfinite(self.effect)):
            raise ValueError(f"task.effect={self.effect} must be a positive fraction of the outputs' spread, e.g. "
                             f"0.3, or null to plant by relative weight norm (task.size)")
        if self.outputs < 1 or (self.target == "classification" and self.outputs != 1):
            raise ValueError(f"task.outputs={self.outputs} must be a positive integer, and 1 with "
                             f"task.target=classification (two classes)")

    @property
    def label(self) -> str:
        """Names the planted problem in tables (one row per problem): ``planted-<pattern>-<target>``, ``x<outputs>`` for
        a vector target, then how strongly it is planted, ``-effect<e>`` or (planting by weight norm) ``-size<s>``, so
        that an effect-size sweep gives one row per effect."""
        strength = f"-effect{self.effect:g}" if self.effect is not None else f"-size{self.size:g}"
        return f"planted-{self.pattern}-{self.target}" + (f"x{self.outputs}" if self.outputs > 1 else "") + strength

    def task(self) -> GlueTask:
        """The student's task: the source's text fields, ``outputs`` regression outputs or two classes."""
        source = get_task(self.source)
        if self.target == "regression":
            return GlueTask("planted", source.folder, source.text_fields, self.outputs, ("pearson", "spearman"),
                            "pearson", multi_output=self.outputs > 1)
        return GlueTask("planted", source.folder, source.text_fields, 2, ("accuracy",), "accuracy")


def planted_modules(space: SearchSpace, spec: PlantedSpec) -> list[str]:
    """The set S, in search-space order."""
    names = list(space.names)
    if spec.pattern == "random":
        if not 1 <= spec.k <= len(names):
            raise ValueError(f"task.k={spec.k} planted modules do not fit a search space of {len(names)} candidates; "
                             f"choose 1 <= task.k <= {len(names)}")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(spec.seed)).tolist()
        chosen = set(order[:spec.k])
        return [name for i, name in enumerate(names) if i in chosen]
    types = set(spec.module_types) if spec.module_types is not None else set(space.module_types)
    unknown_types = sorted(types - set(space.module_types))
    layers = set(spec.layers) if spec.layers is not None else set(space.layers)
    unknown_layers = sorted(layers - set(space.layers))
    if unknown_types or unknown_layers:
        raise ValueError(f"task.module_types {unknown_types or ''} / task.layers {unknown_layers or ''} are not in the "
                         f"search space (types {list(space.module_types)}, layers {list(space.layers)})")
    chosen_names = [c.name for c in space if c.module_type in types and c.layer in layers]
    if not chosen_names:
        raise ValueError("the grid pattern selects no candidate; widen task.module_types or task.layers")
    if len(chosen_names) == len(names):
        raise ValueError("the planted set is the whole search space, so no selection can be judged; "
                         "narrow task.module_types or task.layers")
    return chosen_names


def plant_deltas(model: nn.Module, names: Sequence[str], size: float, rank: int,
                 seed: int) -> dict[str, torch.Tensor]:
    """ΔW_m for each named linear module (shaped like its weight), with ‖ΔW_m‖_F = size·‖W_m‖_F."""
    generator = torch.Generator().manual_seed(seed + 104729)
    deltas = {}
    for name in names:
        weight = model.get_submodule(name).weight
        rows, cols = weight.shape
        u = torch.randn(rows, rank, generator=generator, dtype=torch.float64)
        v = torch.randn(cols, rank, generator=generator, dtype=torch.float64)
        delta = u @ v.T
        delta *= size * float(weight.detach().double().norm()) / float(delta.norm())
        deltas[name] = delta.to(device=weight.device, dtype=weight.dtype)
    return deltas


@torch.no_grad()
def calibrate_effects(model: nn.Module, deltas: Mapping[str, torch.Tensor], dataset: Dataset,
                      tokenizer: PreTrainedTokenizerBase, device: str | torch.device, effect: float,
                      rounds: int = 4, tolerance: float = 0.1) -> dict[str, torch.Tensor]:
    """The deltas rescaled so that each one alone moves the outputs by the same amount:

        RMS( f(W + c_m ΔW_m) − f(W) ) = effect · std(f(W))     over ``dataset``'s sentences and the outputs,

    solved for c_m by up to ``rounds`` proportional steps from c_m = 1 (the effect is close to linear in c_m); a
    module whose effect stays more than ``tolerance`` (relative) off, e.g. an attention key whose softmax
    saturates, is a ValueError naming it, and so is a non-finite effect, spread std(f(W)) or scale c_m (outputs
    that overflow to NaN or ±inf, which ``abs(nan) > tolerance`` would let through). A delta of a
    given relative norm moves the outputs 20× more on some modules than on others (an FFN input matrix late in the
    network against an early attention key), so by weight norm alone some planted modules are invisible in the
    targets; by effect each is equally visible, and recovering all of S is possible in principle."""
    if not (effect > 0 and math.isfinite(effect)):
        raise ValueError(f"task.effect={effect} must be a positive fraction of the outputs' spread, e.g. 0.05, or "
                         f"null to plant by relative weight norm (task.size)")
    base = model_outputs(model, dataset, tokenizer, device)
    spread = float(base.std())
    if not (spread > 0 and math.isfinite(spread)):
        raise ValueError(f"the student's outputs on the {len(base)} calibration sentences have spread std={spread} "
                         f"(non-finite or constant outputs), which task.effect is measured against; check that the "
                         f"model's outputs are finite and vary across sentences, or plant by weight norm "
                         f"(task.effect=null)")
    target = effect * spread

    def non_finite(name: str, scale: float, rms: float) -> ValueError:
        return ValueError(f"the planted delta on {name} has a non-finite effect scale (c={scale:.3g} moves the outputs "
                          f"by RMS {rms:.3g}: they overflow); lower task.effect or task.size, or plant by weight norm "
                          f"(task.effect=null)")

    calibrated = {}
    for name, delta in deltas.items():
        scale, rms = 1.0, 0.0
        for _ in range(rounds + 1):
            moved = teacher_outputs(model, {name: delta * scale}, dataset, tokenizer, device)
            rms = float((moved - base).pow(2).mean().sqrt())
            if not (math.isfinite(rms) and math.isfinite(scale)):
                raise non_finite(name, scale, rms)
            if rms == 0.0:
                raise ValueError(f"a delta on {name} does not move the outputs at all; it cannot be planted by effect")
            if abs(rms / target - 1.0) < tolerance / 5:
                break
            scale *= target / rms
        if not math.isfinite(scale):
            raise non_finite(name, scale, rms)
        if abs(rms / target - 1.0) > tolerance:
            raise ValueError(f"a delta on {name} moves the outputs by {rms / float(base.std()):.3g}·std at best, not "
                             f"task.effect={effect}; lower task.effect, or plant by weight norm (task.effect=null)")
        calibrated[name] = delta * scale
    return calibrated


@torch.no_grad()
def model_outputs(model: nn.Module, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, device: str | torch.device,
                  batch_size: int = 128) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on every example of ``dataset``, in order, on the CPU."""
    columns = [c for c in dataset.column_names if c != "labels"]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, shuffle=False,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    was_training = model.training
    model.eval()
    outputs = [model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def teacher_outputs(model: nn.Module, deltas: Mapping[str, torch.Tensor], dataset: Dataset,
                    tokenizer: PreTrainedTokenizerBase, device: str | torch.device) -> torch.Tensor:
    """Outputs of the teacher (``model`` with W_m ← W_m + ΔW_m on S); the weights are restored bit for bit."""
    saved = {name: model.get_submodule(name).weight.detach().clone() for name in deltas}
    try:
        for name, delta in deltas.items():
            model.get_submodule(name).weight.add_(delta)
        return model_outputs(model, dataset, tokenizer, device)
    finally:
        for name, weight in saved.items():
            model.get_submodule(name).weight.copy_(weight)


@torch.no_grad()
def standardize_head(model: nn.Module, head_names: Sequence[str], teacher_train: torch.Tensor,
                     target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rescale the shared output layer z = Wp + b in place so that the teacher's train targets are standardized.

    A randomly initialized head gives outputs of scale ~0.01, so unit-size optimizer steps on the head would
    swamp the planted signal. Regression: z ← (z − mean z)/std z, per output. Classification: the margin d = z₁ − z₀
    becomes (d − median d)/std d, so the classes are balanced. Both are affine maps of (W, b), applied to
    the one head that teacher and student share. Returns the same map for outputs already computed.
    """
    weight, bias = head_layer(model, head_names, teacher_train.shape[-1])
    if target == "regression":
        z = teacher_train.double()
        scale, shift = (1.0 / z.std(dim=0)).float(), z.mean(dim=0).float()
    else:
        if teacher_train.shape[-1] != 2:
            raise ValueError("classification targets need a two-class head")
        d = (teacher_train[:, 1] - teacher_train[:, 0]).double()
        scale_value, centre = 1.0 / float(d.std()), float(d.median())
        scale, shift = torch.full((2,), scale_value), torch.tensor([-centre / 2, centre / 2])
    weight.mul_(scale.to(weight)[:, None])
    bias.sub_(shift.to(bias)).mul_(scale.to(bias))
    return lambda outputs: (outputs - shift.to(outputs)) * scale.to(outputs)


def head_layer(model: nn.Module, head_names: Sequence[str], outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of the output layer among the head's parameters: weight (outputs, hidden), bias (outputs,)."""
    params = {name: model.get_parameter(name) for name in head_names}
    weights = [p for n, p in params.items() if n.endswith("weight") and p.dim() == 2 and p.shape[0] == outputs]
    biases = [p for n, p in params.items() if n.endswith("bias") and p.dim() == 1 and p.shape[0] == outputs]
    if len(weights) != 1 or len(biases) != 1:
        raise ValueError(f"the planted task needs one output layer with weight ({outputs}, hidden) and bias "
                         f"({outputs},) among the head parameters {list(head_names)}; set model.head_modules "
                         f"to the classifier module")
    return weights[0], biases[0]


def targets_from(outputs: torch.Tensor, target: str) -> list[float] | list[list[float]] | list[int]:
    """Regression: the scalar output (a list of them for a vector target); classification: the argmax class."""
    if target == "regression":
        return outputs[:, 0].tolist() if outputs.shape[-1] == 1 else outputs.tolist()
    return outputs.argmax(dim=-1).tolist()


def agreement(student: torch.Tensor, teacher: torch.Tensor, target: str) -> float:
    """How much the untouched student already predicts: Pearson r of the outputs (regression; the mean over the
    outputs of a vector target) or the fraction of equal argmax classes (classification). Near 1 means S barely
    matters."""
    if target == "regression":
        s, t = student.double(), teacher.double()
        return float(torch.stack([torch.corrcoef(torch.stack([s[:, j], t[:, j]]))[0, 1]
                                  for j in range(t.shape[1])]).mean())
    return float((student.argmax(-1) == teacher.argmax(-1)).double().mean())


def roc_auc(scores: Mapping[str, float], positives: set[str]) -> float | None:
    """ROC-AUC of ``scores`` for separating ``positives`` from the rest (Mann–Whitney U / (n₊ n₋), ties counted
    half); None when either class is empty."""
    names = list(scores)
    n_pos = sum(name in positives for name in names)
    n_neg = len(names) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.array([scores[name] for name in names], dtype=np.float64))
    rank_sum = float(sum(r for r, name in zip(ranks, names, strict=True) if name in positives))
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def precision_at(selected: Sequence[str], planted: Sequence[str]) -> float:
    """|selected ∩ S| / |S|."""
    return len(set(selected) & set(planted)) / len(planted)


def top_names(scores: Mapping[str, float], order: Sequence[str], k: int) -> list[str]:
    """The k best-scored names (ties to the earlier name in ``order``)."""
    position = {name: i for i, name in enumerate(order)}
    return sorted(order, key=lambda n: (-scores[n], position[n]))[:k]


def grouped_auc(scores: Mapping[str, float], positives: set[str], groups: Mapping[str, Hashable]) -> float | None:
    """Mean ROC-AUC within each group (e.g. one module type) that holds both planted and other modules; None
    when no group does. A criterion whose scale differs by group can fail the global AUC and pass this one."""
    members: dict[Hashable, list[str]] = {}
    for name in scores:
        members.setdefault(groups[name], []).append(name)
    values = [auc for names in members.values()
              if (auc := roc_auc({n: scores[n] for n in names}, positives & set(names))) is not None]
    return sum(values) / len(values) if values else None


def recovery(selected: Sequence[str], planted: Sequence[str], order: Sequence[str],
             scores: Mapping[str, Mapping[str, float]] | None = None, criterion: str | None = None,
             module_types: Mapping[str, Hashable] | None = None) -> dict:
    """The ``recovery`` entry of metrics.json.

    ``precision`` is precision@|S| of the criterion that drove the selection: |top-|S| of its scores ∩ S| / |S|,
    whatever ρ kept (so a ρ that keeps 18 of 36 with 9 planted does not turn it into a recall); a method without
    per-module scores is judged by its selection, |selected ∩ S| / |selected| (LoRA on every module: |S|/N, chance).
    ``selected_recall`` = |selected ∩ S| / |S| and ``selected_precision`` = |selected ∩ S| / |selected| judge the
    selection itself. ``auc`` is the driving criterion's ROC-AUC (None without scores). ``by_criterion`` judges
    every recorded criterion's scores by their own top-|S| (precision@|S|) and their AUC, so criteria are compared
    on the same trained supernet, and, given ``module_types`` (name → type), by ``auc_within_type``: the AUC among
    modules of one type (which layers?), averaged over types (:func:`grouped_auc`).
    """
    scores = dict(scores or {})
    truth = set(planted)
    by_criterion = {}
    for name, values in scores.items():
        by_criterion[name] = {"precision": precision_at(top_names(values, order, len(planted)), planted),
                              "auc": roc_auc(values, truth)}
        if module_types is not None:
            by_criterion[name]["auc_within_type"] = grouped_auc(values, truth, module_types)
    hits = len(set(selected) & truth)
    selected_precision = hits / len(selected) if selected else 0.0
    return {"precision": by_criterion[criterion]["precision"] if criterion in scores else selected_precision,
            "selected_precision": selected_precision, "selected_recall": hits / len(truth),
            "auc": roc_auc(scores[criterion], truth) if criterion in scores else None,
            "chance": len(planted) / len(order), "criterion": criterion, "planted": list(planted),
            "num_selected": len(selected), "by_criterion": by_criterion}
