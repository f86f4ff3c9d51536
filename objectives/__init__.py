"""Objectives: GLUE data (loading, tokenization, splits), losses and metrics."""

from objectives.glue import (
    GLUE_TASKS,
    GlueTask,
    clear_tokenized_cache,
    default_glue_dir,
    get_task,
    glue_files,
    load_glue,
    read_glue_tsv,
    tokenize_glue,
    tokenized_cache_key,
)
from objectives.losses import predictions_from_logits, task_loss
from objectives.metrics import (
    accuracy,
    compute_metrics,
    f1_binary,
    majority_baseline,
    matthews_corrcoef,
    pearson,
    spearman,
)
from objectives.splits import split_indices, subsample_indices

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "accuracy",
    "clear_tokenized_cache",
    "compute_metrics",
    "default_glue_dir",
    "f1_binary",
    "get_task",
    "glue_files",
    "load_glue",
    "majority_baseline",
    "matthews_corrcoef",
    "pearson",
    "predictions_from_logits",
    "read_glue_tsv",
    "spearman",
    "split_indices",
    "subsample_indices",
    "task_loss",
    "tokenize_glue",
    "tokenized_cache_key",
]
