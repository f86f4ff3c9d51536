"""nas.reporting.aggregate and experiments/aggregate.py on synthetic sweep folders written here."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nas.config import PROJECT_ROOT
from nas.errors import ConfigError
from nas.reporting.aggregate import (
    AggregateWarning,
    aggregate,
    jaccard,
    load_runs,
    mean_pairwise_jaccard,
    plot_summary,
    summarize,
    to_markdown,
    write_tables,
)
from nas.reporting.statistics import expected_jaccard

ABLATION = {"sigmoid": "global_topk", "gumbel": "threshold"}


def write_fingerprint(run_dir: Path, config: dict[str, Any]) -> None:
    """fingerprint.json as the run writes it: the flat config without volatile keys (files left empty here)."""
    (run_dir / "fingerprint.json").write_text(json.dumps({"config": config, "files": {}, "digest": "0" * 64}))


def write_run(run_dir: Path, task: str = "mrpc", method: str = "diffora", seed: int = 0, score: float = 0.8,
              variant: dict[str, Any] | None = None, selected: list[str] | None = None,
              candidates: int | None = None, config: dict[str, Any] | None = None, fingerprint: bool = True,
              **extra: Any) -> Path:
    """A finished run folder as the pipeline writes it (metrics.json, optional selection.json, fingerprint.json,
    .hydra/); ``candidates`` is selection.json's num_candidates (absent when None; metrics.json says 36). The
    fingerprint's config is seed, task.name, method.name and ``config`` (default: the variant's keys as they are);
    ``fingerprint=False`` leaves it out (an older run without .hydra/config.yaml)."""
    run_dir.mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    if fingerprint:
        write_fingerprint(run_dir, {"seed": seed, "task.name": task, "method.name": method,
                                    **(dict(variant or {}) if config is None else config)})
    metrics: dict[str, Any] = {
        "task": task, "method": method, "seed": seed, "metrics": {"accuracy": score, "f1": score + 0.05},
        "main_metric": "accuracy", "score": score, "majority_baseline": {"accuracy": 0.684, "f1": 0.812},
        "trainable_params": 166658, "adapter_params": 165888, "effective_params": 165888, "total_params": 22880000,
        "num_selected": 18, "num_candidates": 36, "search_wall_s": 400.0, "train_wall_s": 300.0,
        "eval_wall_s": 5.0, "total_wall_s": 720.0, "variant": variant or {}, **extra}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if selected is not None:
        selection = {"selected": selected, "dam": {}}
        if candidates is not None:
            selection["num_candidates"] = candidates
        (run_dir / "selection.json").write_text(json.dumps(selection))
    return run_dir


def write_config(run_dir: Path, task: str, method: str, seed: int, relaxation: str, discretizer: str) -> Path:
    """Only .hydra/config.yaml: the run started and never wrote metrics.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nmethod:\n  name: {method}\ntask:\n  name: {task}\nrelaxation:\n  name: {relaxation}\n"
        f"discretizer:\n  name: {discretizer}\n  rho: 0.5\nspace:\n  rank: 8\n  operator: lora\n")
    return run_dir


def ablation_config(relaxation: str, discretizer: str) -> dict[str, Any]:
    """The flat config keys of write_config's .hydra/config.yaml but seed, task and method."""
    return {"relaxation.name": relaxation, "discretizer.name": discretizer, "discretizer.rho": 0.5, "space.rank": 8,
            "space.operator": "lora"}


def ablation_sweep(root: Path) -> Path:
    """mrpc: diffora × {sigmoid/global_topk, gumbel/threshold} × 2 seeds (rank constant) and lora × 1 seed."""
    job = 0
    for relaxation, discretizer in ABLATION.items():
        for seed, score in enumerate((0.5, 0.7) if relaxation == "sigmoid" else (0.8, 0.8)):
            variant = {"relaxation": relaxation, "discretizer": discretizer, "rank": 8}
            write_run(root / f"{job}_mrpc_s{seed}", seed=seed, score=score, variant=variant,
                      config=ablation_config(relaxation, discretizer),
                      selected=["q0", "k0", "v0"] if seed == 0 else ["q0", "k0", "v1"])
            job += 1
    write_run(root / f"{job}_mrpc_s0", method="lora", score=0.75, variant={"rank": 8}, trainable_params=300000,
              effective_params=None, total_wall_s=45.0, config={"space.rank": 8, "space.operator": "lora"})
    return root


def group(summaries: list, method: str, label: str = ""):
    return next(s for s in summaries if s.method == method and s.label == label)


def test_labels_name_only_the_varying_variant_keys(tmp_path: Path) -> None:
    runs = load_runs(ablation_sweep(tmp_path))
    assert len(runs) == 5 and all(r.status == "finished" for r in runs)
    labels = {(r.method, r.label) for r in runs}
    assert labels == {("diffora", "discretizer=global_topk, relaxation=sigmoid"),
                      ("diffora", "discretizer=threshold, relaxation=gumbel"), ("lora", "")}
    summaries = summarize(runs)
    assert [(s.method, s.label, s.n) for s in summaries] == [
        ("diffora", "discretizer=global_topk, relaxation=sigmoid", 2),
        ("diffora", "discretizer=threshold, relaxation=gumbel", 2), ("lora", "", 1)]
    assert list(summaries[1].variant.items()) == [("discretizer", "threshold"), ("relaxation", "gumbel")]


def test_mean_std_and_single_seed(tmp_path: Path) -> None:
    summaries = summarize(load_runs(ablation_sweep(tmp_path)))
    sigmoid = group(summaries, "diffora", "discretizer=global_topk, relaxation=sigmoid")
    assert sigmoid.score_mean == pytest.approx(0.6) and sigmoid.score_std == pytest.approx(0.1414214, abs=1e-6)
    assert sigmoid.metrics["f1"] == (pytest.approx(0.65), pytest.approx(0.1414214, abs=1e-6))
    assert sigmoid.seeds == [0, 1] and sigmoid.baseline == pytest.approx(0.684)
    lora = group(summaries, "lora")
    assert lora.n == 1 and lora.score_mean == pytest.approx(0.75) and lora.score_std is None
    assert lora.effective_params == 300000  # absent effective_params → trainable
    assert lora.stability is None


def test_jaccard_on_hand_made_sets() -> None:
    assert jaccard({"a", "b"}, {"b", "a"}) == 1.0
    assert jaccard({"a"}, {"b"}) == 0.0
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0
    assert mean_pairwise_jaccard([{"a", "b"}, {"a", "b"}, {"a", "c"}]) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert mean_pairwise_jaccard([{"a"}]) is None and mean_pairwise_jaccard([]) is None


def test_selection_stability_of_a_group(tmp_path: Path) -> None:
    summaries = summarize(load_runs(ablation_sweep(tmp_path)))
    # seed 0 {q0,k0,v0} vs seed 1 {q0,k0,v1}: 2 shared of 4
    gumbel = group(summaries, "diffora", "discretizer=threshold, relaxation=gumbel")
    assert gumbel.stability == pytest.approx(0.5)
    assert gumbel.stability_chance == pytest.approx(expected_jaccard(36, 3))  # N from metrics.json: no selection's
    assert group(summaries, "lora").stability_chance is None  # no selection.json


def test_jaccard_chance_uses_selection_num_candidates_and_the_actual_sizes(tmp_path: Path) -> None:
    for seed, selected in enumerate((["a", "b"], ["a", "b", "c", "d"], ["c", "d", "e", "f"])):
        write_run(tmp_path / f"s{seed}", seed=seed, selected=selected, candidates=7)
    (summary,) = summarize(load_runs(tmp_path))
    assert summary.stability == pytest.approx((2 / 4 + 0 + 2 / 6) / 3)
    assert summary.stability_chance == pytest.approx((2 * expected_jaccard(7, 2, 4) + expected_jaccard(7, 4)) / 3)
    paths = write_tables([summary], load_runs(tmp_path), tmp_path / "out")
    with paths["summary_csv"].open() as handle:
        row = next(csv.DictReader(handle))
    assert float(row["jaccard_chance"]) == pytest.approx(summary.stability_chance)
    write_run(tmp_path / "s3", seed=3, selected=list("abcdefghi"), candidates=7)  # 9 of 7: inconsistent files
    with pytest.warns(AggregateWarning, match="k2 = 9 is not a subset size of N = 7"):
        (summary,) = summarize(load_runs(tmp_path))
    assert summary.stability_chance is None and summary.stability is not None


def test_failed_unfinished_and_corrupt_runs_are_counted(tmp_path: Path) -> None:
    ablation_sweep(tmp_path)
    write_config(tmp_path / "9_mrpc_s2", "mrpc", "diffora", 2, "gumbel", "threshold")
    (tmp_path / "9_mrpc_s2" / "FAILED").write_text("RuntimeError: CUDA out of memory\nmore\n")
    write_config(tmp_path / "10_mrpc_s3", "mrpc", "diffora", 3, "gumbel", "threshold")
    write_config(tmp_path / "11_mrpc_s2", "mrpc", "diffora", 2, "sigmoid", "global_topk")
    (tmp_path / "11_mrpc_s2" / "metrics.json").write_text('{"task": "mrpc", "metr')
    with pytest.warns(AggregateWarning, match="metrics.json"):
        runs = load_runs(tmp_path)
    assert sorted(r.status for r in runs).count("failed") == 2
    assert [r.rel_dir for r in runs if r.status == "unfinished"] == ["10_mrpc_s3"]
    summaries = summarize(runs)
    gumbel = group(summaries, "diffora", "discretizer=threshold, relaxation=gumbel")
    sigmoid = group(summaries, "diffora", "discretizer=global_topk, relaxation=sigmoid")
    assert (gumbel.n, gumbel.failed, gumbel.unfinished) == (2, 1, 1)
    assert (sigmoid.n, sigmoid.failed, sigmoid.unfinished) == (2, 1, 0)
    assert "9_mrpc_s2: failed (RuntimeError: CUDA out of memory)" in gumbel.not_finished
    markdown = to_markdown(summaries)
    assert "- `9_mrpc_s2: failed (RuntimeError: CUDA out of memory)`" in markdown


def test_an_unfinished_run_joins_its_group_whatever_the_variant_keys_derived_from_several_config_entries(
        tmp_path: Path) -> None:
    """balance_lr is "off" in metrics.json but a bool in the config, alpha_optimizer "name@lr" there but a group here:
    rows come from the configs (fingerprint.json of the finished runs, .hydra/config.yaml of the unfinished one), so
    the unfinished run must not open a group of its own."""
    for seed, criterion in ((0, "dam"), (0, "random"), (1, "dam"), (1, "random")):
        write_run(tmp_path / f"{seed}_{criterion}_s{seed}", seed=seed,
                  variant={"criterion": criterion, "balance_lr": "off", "alpha_optimizer": "shared_adam@0.03"},
                  config={"criterion.name": criterion, "bilevel.balance_lr": False,
                          "bilevel.alpha_optimizer.name": "shared_adam", "bilevel.alpha_optimizer.lr": 0.03})
    run_dir = tmp_path / "4_dam_s2"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "seed: 2\nmethod:\n  name: diffora\ntask:\n  name: mrpc\ncriterion:\n  name: dam\nbilevel:\n"
        "  balance_lr: false\n  alpha_optimizer:\n    name: shared_adam\n    lr: 0.03\n")
    summaries = summarize(load_runs(tmp_path))
    assert sorted((s.label, s.n, s.unfinished) for s in summaries) == [("criterion=dam", 2, 1),
                                                                        ("criterion=random", 2, 0)]


def test_markdown_cells(tmp_path: Path) -> None:
    markdown = to_markdown(summarize(load_runs(ablation_sweep(tmp_path))))
    assert markdown.startswith("## mrpc\n")
    assert "Majority-class baseline (accuracy): 0.684" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | variant | n | accuracy (mean ± std) | f1 |")
    assert rows[2] == ("| diffora | discretizer=threshold, relaxation=gumbel | 2 | 0.800 ± 0.000 | 0.850 ± 0.000 "
                       "| 166,658 | 165,888 | 12.0 min | 0.500 (chance 0.051) | 0 | 0 |")
    assert "| diffora | discretizer=global_topk, relaxation=sigmoid | 2 | 0.600 ± 0.141 |" in rows[1]
    assert rows[3] == "| lora | — | 1 | 0.750 ± — | 0.800 ± — | 300,000 | 300,000 | 45 s | — | 0 | 0 |"


def test_two_factor_grid(tmp_path: Path) -> None:
    """diffora varies in discretizer and relaxation: a grid, rows × columns (label keys in order), missing cells as —;
    lora gets none."""
    markdown = to_markdown(summarize(load_runs(ablation_sweep(tmp_path))))
    grid = markdown[markdown.index("diffora: discretizer × relaxation"):].splitlines()
    assert grid[2] == "| discretizer \\ relaxation | sigmoid | gumbel |"
    assert grid[4] == "| global_topk | 0.600 ± 0.141 (J = 0.50, chance 0.05) | — |"
    assert grid[5] == "| threshold | — | 0.800 ± 0.000 (J = 0.50, chance 0.05) |"
    assert "lora: " not in markdown


def test_csv_columns_and_png(tmp_path: Path) -> None:
    runs = load_runs(ablation_sweep(tmp_path / "sweep"))
    summaries = summarize(runs)
    paths = write_tables(summaries, runs, tmp_path / "out")
    with paths["runs_csv"].open() as handle:
        run_rows = list(csv.DictReader(handle))
    assert len(run_rows) == 5
    assert list(run_rows[0])[:8] == ["task", "method", "label", "seed", "score", "main_metric", "metric/accuracy",
                                     "metric/f1"]
    assert {"trainable_params", "effective_params", "total_wall_s", "search_wall_s", "train_wall_s",
            "num_selected", "run_dir"} <= set(run_rows[0])
    assert run_rows[0]["run_dir"] == "0_mrpc_s0"
    assert run_rows[0]["label"] == "discretizer=global_topk, relaxation=sigmoid"
    with paths["summary_csv"].open() as handle:
        summary_rows = list(csv.DictReader(handle))
    assert {"task", "method", "label", "n", "main_metric", "score_mean", "score_std", "metric/f1/mean",
            "metric/f1/std", "trainable_params", "effective_params", "wall_s_median", "selection_stability",
            "failed", "unfinished", "majority_baseline", "jaccard_chance"} <= set(summary_rows[0])
    assert not any(key.startswith("recovery") for key in summary_rows[0])  # no run recorded recovery
    lora = next(row for row in summary_rows if row["method"] == "lora")
    assert lora["score_std"] == "" and lora["selection_stability"] == "" and float(lora["score_mean"]) == 0.75
    assert lora["jaccard_chance"] == ""
    sigmoid = next(row for row in summary_rows if row["label"].endswith("relaxation=sigmoid"))
    assert float(sigmoid["score_std"]) == pytest.approx(0.1414214, abs=1e-6) and sigmoid["n"] == "2"
    assert paths["summary_md"].read_text() == to_markdown(summaries)
    png = plot_summary(summaries, tmp_path / "out" / "summary.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nested_sweeps_and_old_metrics(tmp_path: Path) -> None:
    write_run(tmp_path / "sweep_a" / "0_mrpc_s0", score=0.8, variant={"rank": 4})
    write_run(tmp_path / "sweep_b" / "nested" / "0_rte_s0", task="rte", score=0.6)
    old = write_run(tmp_path / "sweep_b" / "nested" / "1_rte_s1", task="rte", seed=1, score=0.62)
    data = json.loads((old / "metrics.json").read_text())
    for key in ("variant", "effective_params", "train_wall_s", "total_wall_s"):
        del data[key]
    (old / "metrics.json").write_text(json.dumps(data | {"retrain_wall_s": 12.0}))
    (tmp_path / "sweep_b" / "multirun.yaml").write_text("hydra: {}\n")
    paths = aggregate(tmp_path)
    runs = load_runs(tmp_path)
    assert [r.rel_dir for r in runs] == ["sweep_a/0_mrpc_s0", "sweep_b/nested/0_rte_s0", "sweep_b/nested/1_rte_s1"]
    assert runs[2].effective_params == runs[2].trainable_params == 166658 and runs[2].train_wall_s == 12.0
    summaries = summarize(runs)
    assert [(s.task, s.n, s.label) for s in summaries] == [("mrpc", 1, ""), ("rte", 2, "")]
    assert summaries[1].wall_s == pytest.approx(720.0)
    assert set(paths) == {"runs_csv", "summary_csv", "summary_md", "paired_csv", "summary_png"}
    assert all(p.parent == tmp_path / "aggregate" and p.stat().st_size > 0 for p in paths.values())
    assert "## rte" in paths["summary_md"].read_text()
    assert "Paired differences vs random: skipped (no finished random run with a seed on rte" in (
        paths["summary_md"].read_text())
    assert paths["paired_csv"].read_text().splitlines() == [
        "task,method,label,reference,reference_label,main_metric,n,seeds,mean_diff,std_diff,ci_low,ci_high,"
        "t_pvalue,perm_pvalue"]


def test_missing_or_empty_sweep_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_runs(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no runs found under .*empty.*metrics.json"):
        load_runs(tmp_path / "empty")


def cli(args: list[str]) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "experiments/aggregate.py", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": pythonpath, "MPLBACKEND": "Agg"})


@pytest.mark.slow
def test_cli_writes_tables_and_prints_markdown(tmp_path: Path) -> None:
    sweep = ablation_sweep(tmp_path / "sweep")
    (sweep / "7_mrpc_s9").mkdir()
    (sweep / "7_mrpc_s9" / "metrics.json").write_text("not json")
    result = cli([str(sweep)])
    assert result.returncode == 0, result.stderr
    assert "| lora | — | 1 | 0.750 ± — |" in result.stdout
    assert "diffora: warning:" in result.stderr and "7_mrpc_s9" in result.stderr
    for name in ("runs.csv", "summary.csv", "summary.md", "summary.png"):
        assert (sweep / "aggregate" / name).stat().st_size > 0
        assert f"wrote {sweep / 'aggregate' / name}" in result.stdout
    result = cli([str(sweep), "--out", str(tmp_path / "elsewhere")])
    assert result.returncode == 0 and (tmp_path / "elsewhere" / "summary.png").exists()


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = cli([str(tmp_path)])
    assert result.returncode != 0
    assert result.stderr.startswith("diffora: error:") and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
