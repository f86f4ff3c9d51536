"""The whole pipeline on the real all-MiniLM-L6-v2 and a slice of real GLUE SST-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_run

from nas.logger import NullLogger
from nas.pipeline import run_pipeline


@pytest.mark.integration
def test_diffora_beats_the_majority_class_on_real_sst2(tmp_path: Path) -> None:
    cfg = compose_run(["task=sst2", "seed=0", "task.max_train_samples=2000", "task.max_eval_samples=300",
                       "task.max_length=64", "bilevel.steps=30", "bilevel.batch_size=16",
                       "retrain.steps=80", "retrain.batch_size=16", "logger=none"])
    result = run_pipeline(cfg, tmp_path, NullLogger())
    majority = result["majority_baseline"]["accuracy"]
    assert result["dev_examples"] == 300 and result["num_selected"] == 18
    assert result["metrics"]["accuracy"] > majority + 0.1, (result["metrics"], majority)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == result["metrics"]
