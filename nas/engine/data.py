"""The task data every method shares: tokenized (cached) GLUE train and dev sets, optionally subsampled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset, Sequence, Value
from torch import nn
from transformers import PreTrainedTokenizerBase

from nas.errors import ConfigError
from objectives import GlueTask, get_task, load_glue, tokenize_glue
from objectives.planted import (
    PlantedSpec,
    agreement,
    calibrate_effects,
    model_outputs,
    plant_deltas,
    planted_modules,
    standardize_head,
    targets_from,
    teacher_outputs,
)
from objectives.splits import subsample_indices
from search_spaces.space import SearchSpace


@dataclass
class TaskData:
    task: GlueTask
    train: Dataset
    dev: Dataset


def prepare_data(task: GlueTask, data_dir: str | None, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 cache_dir: str | None = None, seed: int = 0, max_train: int | None = None,
                 max_eval: int | None = None, standardize: bool = False) -> TaskData:
    """Read, tokenize (cached) and optionally subsample (stratified, seeded) the task's train and dev sets.

    ``standardize`` (regression only): both splits' labels become z = (y − μ)/σ with μ, σ the mean and standard
    deviation of the (subsampled) train labels. A regression head starts at outputs ≈ 0, and AdamW at learning rate
    η over T linearly decayed steps moves its bias by at most ≈ η·T/2 (0.27 for STS-B's default 539 steps at 1e-3)
    while STS-B's labels have mean ≈ 2.7: without z-scores a head alone does not even reach the mean. Pearson and
    Spearman are invariant to the affine map, so the dev metrics keep their meaning."""
    try:
        raw = load_glue(task, data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    tokenized = tokenize_glue(raw, task, tokenizer, max_length, cache_dir)
    stratify = not task.is_regression
    train, dev = tokenized["train"], tokenized["validation"]
    train = train.select(subsample_indices(train["labels"], max_train, seed, stratify))
    dev = dev.select(subsample_indices(dev["labels"], max_eval, seed, stratify))
    if standardize and task.is_regression and not task.multi_output:
        train, dev = standardized(train, dev, task)
    return TaskData(task, train, dev)


def standardized(train: Dataset, dev: Dataset, task: GlueTask) -> tuple[Dataset, Dataset]:
    """Both splits with labels z = (y − μ)/σ, μ and σ from the train labels; refused for constant train labels."""
    labels = np.asarray(train["labels"], dtype=np.float64)
    mean, std = float(labels.mean()), float(labels.std())
    if not np.isfinite(std) or std == 0.0:
        raise ConfigError(f"task {task.name}: the train labels are constant ({mean}), so they cannot be "
                          "standardized; use more train examples (task.max_train_samples) or "
                          "task.standardize_labels=false")
    return tuple(relabel(split, ((np.asarray(split["labels"], dtype=np.float64) - mean) / std).tolist(), task)
                 for split in (train, dev))  # type: ignore[return-value]


@dataclass
class PlantedTruth:
    """The planted set S and how much of the targets the untouched student already predicts."""

    spec: PlantedSpec
    modules: list[str]
    base_agreement: float  # dev: Pearson r of student-at-init vs teacher outputs, or equal-class fraction


def prepare_planted_data(spec: PlantedSpec, model: nn.Module, head_names: list[str],
                         tokenizer: PreTrainedTokenizerBase, space: SearchSpace, data_dir: str | None,
                         max_length: int, device: str,
                         cache_dir: str | None = None, seed: int = 0, max_train: int | None = None,
                         max_eval: int | None = None) -> tuple[TaskData, PlantedTruth]:
    """The source task's sentences, labelled by the teacher (``model`` with ΔW planted on S).

    ``model`` must be the student exactly as it starts (same backbone, same head): the teacher borrows it for
    one pass and the backbone weights are restored bit for bit. The head (``head_names``: its weight and bias) is
    first standardized, for teacher and student alike (:func:`objectives.planted.standardize_head`), so that the
    targets have unit scale. Subsampling is stratified on the source labels.
    """
    try:
        task = spec.task()
        modules = planted_modules(space, spec)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    source = prepare_data(get_task(spec.source), data_dir, tokenizer, max_length, cache_dir, seed,
                          max_train, max_eval)
    model.to(device)
    deltas = plant_deltas(model, modules, spec.size, spec.rank, spec.seed)
    if spec.effect is not None:  # equal visibility: each delta alone moves the outputs by effect·std
        deltas = calibrate_effects(model, deltas, source.train.select(range(min(256, len(source.train)))),
                                   tokenizer, device, spec.effect)
    outputs = {split: teacher_outputs(model, deltas, dataset, tokenizer, device)
               for split, dataset in (("train", source.train), ("dev", source.dev))}
    rescale = standardize_head(model, head_names, outputs["train"], spec.target)
    outputs = {split: rescale(values) for split, values in outputs.items()}
    splits = {split: relabel(dataset, targets_from(outputs[split], spec.target), task)
              for split, dataset in (("train", source.train), ("dev", source.dev))}
    base = agreement(model_outputs(model, source.dev, tokenizer, device), outputs["dev"], spec.target)
    return TaskData(task, splits["train"], splits["dev"]), PlantedTruth(spec, modules, base)


def relabel(dataset: Dataset, labels: list, task: GlueTask) -> Dataset:
    """``dataset`` with its ``labels`` column replaced (float32 for regression, int64 for classes)."""
    kind = "float32" if task.is_regression else "int64"
    feature = Sequence(Value(kind), length=task.num_labels) if task.multi_output else Value(kind)
    return dataset.remove_columns("labels").add_column("labels", labels).cast_column("labels", feature)
