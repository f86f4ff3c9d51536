"""`diffora bench criteria`: one table of every criterion against planted truth and real utility, on known cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_placement_bench import NAMES, UTILITY, bench_sweep, write_fixed_run

from nas.bench.cli import main as bench
from nas.bench.criteria_table import planted_recovery
from nas.bench.placement import build_table, write_table
from nas.errors import ConfigError

PLANTED = {"dam": [(1.0, 1.0), (0.75, 0.9), (0.5, 0.8)], "grad_norm": [(0.25, 0.5), (0.25, 0.6), (0.5, 0.4)]}


def planted_runs(root: Path) -> Path:
    """Three planted sets, each one finished search with two recorded criteria; plus an unfinished run."""
    for i in range(3):
        run = root / f"{i}_random_p{100 + i}_s0"
        run.mkdir(parents=True)
        by_criterion = {name: {"precision": values[i][0], "auc": values[i][1]} for name, values in PLANTED.items()}
        recovery = {"precision": PLANTED["dam"][i][0], "auc": PLANTED["dam"][i][1], "chance": 0.25,
                    "criterion": "dam", "planted": NAMES[:1], "by_criterion": by_criterion}
        (run / "metrics.json").write_text(json.dumps({"task": f"planted-random-p{100 + i}", "method": "diffora",
                                                      "seed": 0, "score": 0.5, "recovery": recovery}))
    (root / "3_random_p103_s0").mkdir()  # killed before it finished: no metrics.json
    return root


def test_planted_columns_average_over_planted_sets(tmp_path: Path) -> None:
    recovery = planted_recovery([planted_runs(tmp_path / "planted")])
    assert recovery["dam"]["precision"].mean == pytest.approx(0.75)
    assert recovery["dam"]["precision"].by_seed == {0: 1.0, 1: 0.75, 2: 0.5}  # one value per planted set
    assert recovery["grad_norm"]["auc"].mean == pytest.approx(0.5) and recovery["grad_norm"]["auc"].ci is not None
    with pytest.raises(ConfigError, match="no finished planted runs.*experiment=planted_heldout"):
        planted_recovery([tmp_path / "empty"])


def test_the_table_joins_planted_truth_and_each_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "minilm_stsb.json"
    write_table(build_table([bench_sweep(tmp_path / "sweep")]), out)
    runs = tmp_path / "runs"
    for seed, utilities in UTILITY.items():  # dam ranks as the utility; grad_norm backwards
        run = runs / f"s{seed}"
        run.mkdir(parents=True)
        scores = dict(zip(NAMES, utilities, strict=True))
        (run / "metrics.json").write_text(json.dumps({"method": "diffora", "seed": seed, "score": 0.8}))
        (run / "selection.json").write_text(json.dumps({"selected": NAMES[:3], "criteria": {
            "dam": scores, "grad_norm": {m: -u for m, u in scores.items()}}}))
    write_fixed_run(runs, "list", 1, 0.785, modules=["m0", "m2", "m5"])  # dam's top 3 at seed 1: 80th percentile
    assert bench(["criteria", "--planted", str(planted_runs(tmp_path / "planted")), "--real", str(out), str(runs),
                  "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| criterion | planted precision@|S| | planted AUC | minilm_stsb τ | minilm_stsb pct@3 |"
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines[2:] if line.startswith("| ")]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["dam"][0].startswith("0.75 [") and rows["dam"][0].endswith("(3)")
    assert rows["dam"][2] == "+1.00 [+1.00, +1.00] (2)" and rows["dam"][3] == "80.00 (1)"
    assert rows["grad_norm"][2] == "-1.00 [-1.00, -1.00] (2)" and rows["grad_norm"][3] == "—"
    with pytest.raises(ConfigError, match="name the run folders to score after the table"):
        bench(["criteria", "--real", str(out)])
