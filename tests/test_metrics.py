"""Metrics against hand-computed values and scipy; majority baseline on real MRPC; losses vs torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_batch, tiny_bert
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel

from nas.engine.training import evaluate
from nas.errors import NonFiniteError
from objectives import (
    GLUE_TASKS,
    accuracy,
    compute_metrics,
    default_glue_dir,
    f1_binary,
    get_task,
    load_glue,
    majority_baseline,
    matthews_corrcoef,
    pearson,
    predictions_from_logits,
    spearman,
    task_loss,
)
from objectives.lm import IGNORE, JSONL_TASK

# confusion matrix: TP=5, FN=2, FP=1, TN=4  (n = 12)
PRED = np.array([1] * 5 + [0] * 2 + [1] * 1 + [0] * 4)
GOLD = np.array([1] * 5 + [1] * 2 + [0] * 1 + [0] * 4)
TP, FN, FP, TN = 5, 2, 1, 4


def test_accuracy_and_f1_hand_computed() -> None:
    assert accuracy(PRED, GOLD) == pytest.approx((TP + TN) / 12)
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    assert f1_binary(PRED, GOLD) == pytest.approx(2 * precision * recall / (precision + recall))
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere
    assert f1_binary([1, 1, 0], [1, 1, 0]) == 1.0
    assert accuracy([0, 1], [1, 0]) == 0.0


def test_mcc_hand_computed() -> None:
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert matthews_corrcoef(PRED, GOLD) == pytest.approx(expected)
    assert matthews_corrcoef(GOLD, GOLD) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - GOLD, GOLD) == pytest.approx(-1.0)


def test_mcc_multiclass_formula() -> None:
    pred, gold = np.array([0, 1, 2, 2, 1, 0, 2]), np.array([0, 2, 2, 1, 1, 0, 2])
    cm = np.zeros((3, 3))
    for p, g in zip(pred, gold, strict=True):
        cm[g, p] += 1
    t, p, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    expected = (c * s - t @ p) / math.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    assert matthews_corrcoef(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("pred", "gold"), [([1, 1, 1, 1], [0, 1, 0, 1]), ([0, 1, 0, 1], [1, 1, 1, 1]),
                                            ([0, 0], [0, 0])])
def test_mcc_zero_denominator(pred: list[int], gold: list[int]) -> None:
    assert matthews_corrcoef(pred, gold) == 0.0


def test_correlations_match_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    y[:5] = y[5]  # ties for spearman
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_correlations_perfect_inverse_constant() -> None:
    x = np.array([0.0, 1.0, 2.5, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert pearson(np.full(4, 2.0), x) == 0.0
    assert spearman(x, np.full(4, 2.0)) == 0.0
    # hand-computed: deviations [-1,0,1] and [-1,1,0]: r = 1 / sqrt(2 * 2) = 0.5
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_length_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        pearson([], [])


@pytest.mark.parametrize("name", list(GLUE_TASKS))
def test_compute_metrics_keys(name: str) -> None:
    task = GLUE_TASKS[name]
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 20) if task.is_regression else rng.integers(0, 2, 20)
    out = compute_metrics(task, labels.copy(), labels)
    assert tuple(out) == task.metrics
    assert all(isinstance(v, float) and v == pytest.approx(1.0) for v in out.values())


def test_compute_metrics_accepts_logits() -> None:
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [0.0, 1.0]])
    assert compute_metrics("sst2", logits, np.array([0, 1, 0])) == {"accuracy": pytest.approx(2 / 3)}
    out = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 4.0]))
    assert out["spearman"] == pytest.approx(1.0)


def test_majority_baseline_small() -> None:
    assert majority_baseline("rte", [0, 0, 1], [0, 1, 1, 1]) == {"accuracy": 0.25}
    assert majority_baseline("cola", [1, 1, 0], [0, 1]) == {"matthews_correlation": 0.0}
    assert majority_baseline("stsb", [1.0, 3.0], [0.5, 4.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_majority_baseline_mrpc_dev() -> None:
    glue_dir = default_glue_dir()
    if not glue_dir.is_dir():
        pytest.skip(f"GLUE data not found at {glue_dir}")
    data = load_glue(get_task("mrpc"), glue_dir)
    out = majority_baseline("mrpc", data["train"]["label"], data["validation"]["label"])
    assert out["accuracy"] == pytest.approx(279 / 408)
    assert round(out["accuracy"], 3) == 0.684
    assert out["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129))  # always 1: TP=279, FP=129, FN=0


# ---------------------------------------------------------------- losses


def test_cross_entropy_matches_torch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 2, requires_grad=True)
    labels = torch.randint(0, 2, (8,))
    loss = task_loss(logits, labels, GLUE_TASKS["rte"])
    assert torch.allclose(loss, F.cross_entropy(logits, labels))
    manual = -torch.log_softmax(logits, -1)[torch.arange(8), labels].mean()
    assert torch.allclose(loss, manual)
    loss.backward()
    assert logits.grad is not None
    np.testing.assert_array_equal(predictions_from_logits(logits, "rte"), logits.argmax(-1).numpy())


def test_mse_for_stsb() -> None:
    logits = torch.tensor([[1.0], [2.5], [4.0]])
    labels = torch.tensor([1.5, 2.5, 3.0])
    loss = task_loss(logits, labels, GLUE_TASKS["stsb"])
    assert loss.item() == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert torch.allclose(loss, F.mse_loss(logits.squeeze(-1), labels))
    pred = predictions_from_logits(logits, "stsb")
    assert pred.dtype.kind == "f" and pred.tolist() == [1.0, 2.5, 4.0]
    one = task_loss(torch.tensor([[2.0]]), torch.tensor([1.0]), "stsb")  # batch of one keeps its shape
    assert one.item() == pytest.approx(1.0)


def test_loss_shape_errors() -> None:
    with pytest.raises(ValueError, match="2 labels"):
        task_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), "sst2")
    with pytest.raises(ValueError, match="regression"):
        task_loss(torch.zeros(4, 2), torch.zeros(4), "stsb")


# ---------------------------------------------------------------- evaluation refuses non-finite numbers


def poisoned(model: torch.nn.Module, module: torch.nn.Module, row: int, column: int) -> torch.nn.Module:
    """``model`` whose ``module`` output z[row, column] is NaN in every batch (a diverged head, say)."""

    def hook(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[row, column] = float("nan")
        return out

    module.register_forward_hook(hook)
    return model


@pytest.mark.parametrize(("task", "num_labels", "outputs"), [("sst2", 2, 16), ("stsb", 1, 8)])
def test_evaluation_refuses_non_finite_outputs_and_counts_them(task: str, num_labels: int, outputs: int) -> None:
    """Before: NaN logits scored as class 0 (accuracy ≈ 0.5) and a NaN score reached metrics.json as NaN."""
    model = tiny_bert(num_labels=num_labels)
    poisoned(model, model.classifier, row=1, column=0)
    batches = [tiny_batch(seed=seed) for seed in (0, 1)]  # 2 batches × 4 examples, one NaN output in each
    if num_labels == 1:
        batches = [{**b, "labels": b["labels"].float()} for b in batches]
    with pytest.raises(NonFiniteError, match=fr"^evaluation: 2 of {outputs} model outputs \(2 of 8 examples\) are "
                                             r"not finite; .*lower retrain.lr"):
        evaluate(model, batches, get_task(task), "cpu")
    assert not model.training  # restored to the mode it came in


def test_evaluation_refuses_a_non_finite_metric() -> None:
    """A causal-LM task's outputs are not checked one by one: a NaN completion loss must still stop the run."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    poisoned(model, model.lm_head, row=0, column=2)
    ids = torch.arange(1, 13).reshape(2, 6)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.where(torch.arange(6) >= 3, ids, torch.full_like(ids, IGNORE))}
    with pytest.raises(NonFiniteError, match=r"^evaluation: 1 of 2 metrics are not finite \(completion_loss=nan\); "
                                             r".*precision=fp32"):
        evaluate(model, [batch], JSONL_TASK, "cpu")
