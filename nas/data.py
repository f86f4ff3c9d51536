"""The task data every method shares: tokenized (cached) GLUE train and dev sets, optionally subsampled."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from nas.errors import ConfigError
from objectives import GlueTask, load_glue, tokenize_glue
from objectives.splits import subsample_indices


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
