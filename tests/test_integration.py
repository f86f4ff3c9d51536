"""The whole pipeline on the real all-MiniLM-L6-v2 and a slice of real GLUE SST-2; the planted task end to end on the
tiny encoder (MiniLM's 36 candidates at hidden 32: the planted set is judged the same way whatever the backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_run

from nas.engine.logger import NullLogger
from nas.engine.pipeline import run_pipeline

pytestmark = pytest.mark.slow  # whole runs: the full suite only (-m "not slow" leaves them out)


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


@pytest.mark.integration
@pytest.mark.parametrize("method", ["diffora", "random", "lora"])
def test_planted_task_judges_every_method_against_the_planted_set(tmp_path: Path, method: str,
                                                                  tiny_encoder: Path) -> None:
    cfg = compose_run(["experiment=planted_search", f"method={method}", "seed=0", "task.max_train_samples=256",
                       f"model.name_or_path={tiny_encoder}",
                       "task.max_eval_samples=64", "task.k=9", "task.effect=null",  # no calibration: 80 s less each
                       "bilevel.steps=4", "bilevel.batch_size=16", "criterion.batches=1", "retrain.steps=2",
                       "retrain.batch_size=16", "logger=none", "retrain.export_adapter=false"])
    result = run_pipeline(cfg, tmp_path, NullLogger())
    recovery, planted = result["recovery"], result["planted"]
    assert result["task"] == "planted-random-regressionx384-size0.5" and len(planted["modules"]) == 9
    assert recovery["chance"] == 0.25 and recovery["planted"] == planted["modules"]
    selected = json.loads((tmp_path / "selection.json").read_text())["selected"]
    assert recovery["selected_recall"] == len(set(selected) & set(planted["modules"])) / 9
    if method == "lora":  # every module, no scores: judged by its selection, precision = chance, no AUC
        assert recovery["precision"] == 0.25 and recovery["selected_recall"] == 1.0 and recovery["auc"] is None
    else:
        assert len(selected) == 9 and 0.0 <= recovery["auc"] <= 1.0
        driving = recovery["criterion"]  # at |selected| = |S| both readings agree
        assert recovery["precision"] == recovery["by_criterion"][driving]["precision"] == recovery["selected_recall"]
        assert set(recovery["by_criterion"]) == ({"random"} if method == "random" else
                                                 {"dam", "gate_saliency", "fisher", "grad_norm", "branch_norm",
                                                  "perturbation", "random"})
    assert -1.0 <= planted["base_agreement"] <= 1.0


@pytest.mark.integration
@pytest.mark.parametrize("outputs", [1, 64])
def test_planted_task_with_a_scalar_or_vector_target_reports_the_mean_pearson(tmp_path: Path, outputs: int,
                                                                             tiny_encoder: Path) -> None:
    # the 64-output case plants by effect (its calibration; a delta on the random tiny encoder's attention moves the
    # outputs less than one on MiniLM, hence 0.002, not the default 0.05); the scalar case plants by weight norm
    # (task.effect=null), which the recovery does not depend on
    effect = ["task.effect=0.002"] if outputs > 1 else ["task.effect=null"]
    cfg = compose_run(["experiment=planted_search", f"task.outputs={outputs}", *effect, "seed=0",
                       f"model.name_or_path={tiny_encoder}",
                       "task.max_train_samples=256",
                       "task.max_eval_samples=64", "bilevel.steps=4", "bilevel.batch_size=16", "criterion.batches=1",
                       "retrain.steps=2", "retrain.batch_size=16", "logger=none", "retrain.export_adapter=false",
                       "grad_accum=2"])  # micro-batches must not cut the (batch, 64) labels as if they were tokens
    result = run_pipeline(cfg, tmp_path, NullLogger())
    assert result["task"] == "planted-random-regression" + ("x64-effect0.002" if outputs > 1 else "-size0.5")
    assert set(result["metrics"]) == {"pearson", "spearman"} and -1 <= result["metrics"]["pearson"] <= 1
    assert result["majority_baseline"] == {"pearson": 0.0, "spearman": 0.0}
    assert 0.0 < result["planted"]["base_agreement"] < 1.0 and 0.0 <= result["recovery"]["auc"] <= 1.0
