"""Task losses on model logits and the predictions that the metrics take."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from objectives.glue import GlueTask, get_task
from objectives.lm import causal_lm_loss


def _scores(logits: torch.Tensor, task: GlueTask) -> torch.Tensor:
    """Regression logits (..., 1) -> (...); a multi-output task's (..., num_labels) stay as they are."""
    if task.multi_output:
        if logits.shape[-1] != task.num_labels:
            raise ValueError(f"{task.name} regresses {task.num_labels} outputs, got logits {tuple(logits.shape)}")
        return logits
    if logits.shape[-1] != 1:
        raise ValueError(
            f"{task.name} is a regression task: expected logits (..., 1), got {tuple(logits.shape)}"
        )
    return logits.squeeze(-1)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: GlueTask | str) -> torch.Tensor:
    """Mean loss over the batch.

    Classification: cross-entropy -(1/B) sum_i log softmax(z_i)[y_i] on logits (B, num_labels).
    Causal LM: the mean next-token cross-entropy over completion tokens (objectives/lm.py).
    Regression: MSE (1/B) sum_i (z_i - y_i)^2 on logits.squeeze(-1) (B,) against float labels; a multi-output
    task averages over its D outputs too: (1/(B·D)) sum_ij (z_ij - y_ij)^2 on logits (B, D).
    """
    task = get_task(task)
    if task.objective == "causal_lm":  # logits (B, T, V), labels (B, T) with −100 off the completions
        return causal_lm_loss(logits, labels)
    if task.is_regression:
        scores = _scores(logits, task)
        if scores.shape != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
        return F.mse_loss(scores.float(), labels.to(device=scores.device, dtype=torch.float32))
    if logits.shape[-1] != task.num_labels:
        raise ValueError(
            f"{task.name} has {task.num_labels} labels but logits have shape {tuple(logits.shape)}"
        )
    return F.cross_entropy(logits.reshape(-1, task.num_labels).float(), labels.reshape(-1).long())


def predictions_from_logits(logits: torch.Tensor, task: GlueTask | str) -> np.ndarray:
    """Class ids argmax_k z_k (int64), or the float64 scores z for regression."""
    task = get_task(task)
    logits = logits.detach().cpu()
    if task.is_regression:
        return _scores(logits, task).double().numpy()
    return logits.argmax(dim=-1).numpy().astype(np.int64)
