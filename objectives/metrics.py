"""GLUE metrics (numpy/scipy only). All values are fractions in [0, 1] (correlations in [-1, 1])."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from objectives.glue import GlueTask, get_task


def _pair(pred: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(pred).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.size == 0:
        raise ValueError("metrics need at least one prediction")
    return p, y


def accuracy(pred: Any, labels: Any) -> float:
    """acc = (1/n) * sum_i [pred_i == label_i]."""
    p, y = _pair(pred, labels)
    return float(np.mean(p == y))


def f1_binary(pred: Any, labels: Any) -> float:
    """F1 of the positive class 1: 2TP / (2TP + FP + FN); 0.0 when TP + FP + FN = 0."""
    p, y = _pair(pred, labels)
    tp = float(np.sum((p == 1) & (y == 1)))
    fp = float(np.sum((p == 1) & (y != 1)))
    fn = float(np.sum((p != 1) & (y == 1)))
    denom = 2.0 * tp + fp + fn
    return 2.0 * tp / denom if denom > 0 else 0.0


def matthews_corrcoef(pred: Any, labels: Any) -> float:
    """Matthews correlation (multi-class form, equal to the binary one for two classes).

    With C the confusion matrix, s = n, c = trace(C), p_k = predicted counts, t_k = true counts:
    MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2)); binary:
    (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)). 0.0 when the denominator is 0.
    """
    p, y = _pair(pred, labels)
    classes, inv = np.unique(np.concatenate([p, y]), return_inverse=True)
    pi, yi = inv[: p.size], inv[p.size:]
    p_counts = np.bincount(pi, minlength=len(classes)).astype(np.float64)
    t_counts = np.bincount(yi, minlength=len(classes)).astype(np.float64)
    s, c = float(p.size), float(np.sum(pi == yi))
    cov_pt = c * s - float(p_counts @ t_counts)
    cov_pp = s * s - float(p_counts @ p_counts)
    cov_tt = s * s - float(t_counts @ t_counts)
    denom = np.sqrt(cov_pp * cov_tt)
    return float(cov_pt / denom) if denom > 0 else 0.0


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def pearson(pred: Any, labels: Any) -> float:
    """Pearson r = cov(x, y) / (std(x) std(y)); 0.0 when either input is constant."""
    p, y = _pair(pred, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if p.size < 2 or _constant(p) or _constant(y):
        return 0.0
    return float(stats.pearsonr(p, y)[0])


def spearman(pred: Any, labels: Any) -> float:
    """Spearman rho = Pearson r of the (average-tie) ranks; 0.0 when either input is constant."""
    p, y = _pair(pred, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if p.size < 2 or _constant(p) or _constant(y):
        return 0.0
    return float(stats.spearmanr(p, y)[0])


_METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(task: GlueTask | str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{metric: value}`` for exactly ``task.metrics``.

    predictions are class ids (or scores for regression); 2-D logits of shape (n, num_labels) are accepted
    and reduced by argmax (or squeezed for regression). A multi-output regression task's (n, D) predictions and
    labels give each metric's mean over the D outputs.
    """
    task = get_task(task)
    pred = np.asarray(predictions)
    if task.multi_output:
        y = np.asarray(labels)
        if pred.shape != y.shape or pred.ndim != 2:
            raise ValueError(f"{task.name}: predictions {pred.shape} and labels {y.shape} must both be (n, outputs)")
        return {name: float(np.mean([_METRICS[name](pred[:, j], y[:, j]) for j in range(y.shape[1])]))
                for name in task.metrics}
    if pred.ndim == 2 and pred.shape[1] == task.num_labels:
        pred = pred[:, 0] if task.is_regression else pred.argmax(axis=1)
    return {name: _METRICS[name](pred, labels) for name in task.metrics}


def majority_baseline(task: GlueTask | str, train_labels: Any, eval_labels: Any) -> dict[str, float]:
    """Metrics of a constant predictor: the most frequent train class (smallest id on ties),
    or the train mean for regression (whose Pearson/Spearman are 0.0)."""
    task = get_task(task)
    if task.multi_output:  # the train mean of every output
        train_2d, y_2d = np.asarray(train_labels, dtype=np.float64), np.asarray(eval_labels, dtype=np.float64)
        if train_2d.size == 0:
            raise ValueError("majority_baseline needs at least one train label")
        return compute_metrics(task, np.broadcast_to(train_2d.mean(axis=0), y_2d.shape), y_2d)
    train = np.asarray(train_labels).reshape(-1)
    y = np.asarray(eval_labels).reshape(-1)
    if train.size == 0:
        raise ValueError("majority_baseline needs at least one train label")
    if task.is_regression:
        const: float | int = float(np.mean(train.astype(np.float64)))
    else:
        values, counts = np.unique(train, return_counts=True)
        const = values[int(np.argmax(counts))].item()
    return compute_metrics(task, np.full(y.shape, const), y)
