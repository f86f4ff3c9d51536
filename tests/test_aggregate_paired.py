"""nas.reporting.aggregate's paired comparisons (against a reference method, by seed) and the planted recovery
columns, on synthetic sweep folders written by tests/test_aggregate.py's helpers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_aggregate import cli, write_run

from nas.errors import ConfigError
from nas.reporting.aggregate import (
    AggregateWarning,
    aggregate,
    load_runs,
    paired_differences,
    summarize,
    to_markdown,
    write_tables,
)


def paired_sweep(root: Path) -> Path:
    """mrpc: random × seeds 0–2, diffora rank=4 × seeds 0–2, diffora rank=8 × seeds 0, 1, 5; rte: diffora only."""
    for seed, score in enumerate((0.70, 0.74, 0.71)):
        write_run(root / f"random_s{seed}", method="random", seed=seed, score=score, variant={"rank": 8})
    for seed, score in enumerate((0.78, 0.80, 0.76)):
        write_run(root / f"r4_s{seed}", seed=seed, score=score, variant={"rank": 4})
    for seed, score in ((0, 0.72), (1, 0.77), (5, 0.99)):
        write_run(root / f"r8_s{seed}", seed=seed, score=score, variant={"rank": 8})
    write_run(root / "rte_s0", task="rte", score=0.6)
    return root


def test_paired_differences_against_random(tmp_path: Path) -> None:
    paths = aggregate(paired_sweep(tmp_path / "sweep"))
    with paths["paired_csv"].open() as handle:
        rows = {row["label"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"rank=4", "rank=8"}
    r4, r8 = rows["rank=4"], rows["rank=8"]
    assert (r4["task"], r4["reference"], r4["main_metric"], r4["n"], r4["seeds"]) == ("mrpc", "random", "accuracy",
                                                                                     "3", "0 1 2")
    assert (r8["n"], r8["seeds"]) == ("2", "0 1")  # seed 5 has no random partner
    assert float(r4["mean_diff"]) == pytest.approx(np.mean([0.08, 0.06, 0.05]))
    assert float(r4["t_pvalue"]) == pytest.approx(stats.ttest_rel([0.78, 0.80, 0.76], [0.70, 0.74, 0.71]).pvalue)
    assert float(r4["perm_pvalue"]) == 0.25  # all three positive: 2 / 2^3
    half = stats.t.ppf(0.975, 2) * np.std([0.08, 0.06, 0.05], ddof=1) / np.sqrt(3)  # Student t-interval
    assert (float(r4["ci_low"]), float(r4["ci_high"])) == pytest.approx((0.19 / 3 - half, 0.19 / 3 + half))
    markdown = paths["summary_md"].read_text()
    section = markdown[markdown.index("Paired differences vs random: d = row's accuracy"):].splitlines()
    assert section[2] == "| method | variant | n pairs | mean d | std d | 95% CI | t-test p | sign-flip p |"
    assert section[4] == "| diffora | rank=4 | 3 | +0.063 | 0.015 | [+0.025, +0.101] | 0.019 | 0.250 |"
    assert section[5].startswith("| diffora | rank=8 | 2 | +0.025 |")
    assert "Paired differences vs random: skipped (no finished random run with a seed on rte" in markdown
    assert "recovery precision" not in markdown  # no run recorded recovery: no paired recovery section


def test_accuracy_differences_are_taken_in_units_of_one_dev_example(tmp_path: Path) -> None:
    """An accuracy is correct/|dev|: the pairing works in units of 1/|dev| when every run says |dev| (dev_examples)."""
    from nas.reporting.aggregate import _groups, _resolutions

    for seed, (ours, ref) in enumerate([(300, 290), (305, 301), (299, 300)]):
        write_run(tmp_path / f"d{seed}", seed=seed, score=ours / 408 + 1e-13, dev_examples=408)
        write_run(tmp_path / f"r{seed}", method="random", seed=seed, score=ref / 408, dev_examples=408)
    runs = load_runs(tmp_path)
    assert _resolutions(runs, _groups(runs), "score") == {"mrpc": 1 / 408}
    test = paired_differences(runs).comparisons[0].test
    assert test.mean == 13 / 3 / 408 and test.perm_pvalue == 0.5  # |Σ±(10, 4, 1)| ≥ 13 in 4 of the 8 patterns
    write_run(tmp_path / "other_dev", seed=7, score=0.5, dev_examples=400)  # another dev set: no common unit
    runs = load_runs(tmp_path)
    assert _resolutions(runs, _groups(runs), "score") == {}


@pytest.mark.slow
def test_reference_option_and_ambiguous_reference(tmp_path: Path) -> None:
    sweep = paired_sweep(tmp_path / "sweep")
    with pytest.raises(ConfigError, match=r"mrpc: the reference method 'diffora' has 2 variant rows.*reference-label"):
        aggregate(sweep, reference="diffora")
    result = cli([str(sweep), "--reference", "diffora"])
    assert result.returncode != 0 and result.stderr.startswith("diffora: error: task mrpc")
    assert "--reference-label" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli([str(sweep), "--reference", "diffora", "--reference-label", "rank=4"])
    assert result.returncode == 0, result.stderr
    assert "Paired differences vs diffora (rank=4): d = row's accuracy − diffora's accuracy" in result.stdout
    assert f"wrote {sweep / 'aggregate' / 'paired.csv'}" in result.stdout
    with (sweep / "aggregate" / "paired.csv").open() as handle:
        rows = [(r["task"], r["method"], r["label"], r["reference_label"], r["n"]) for r in csv.DictReader(handle)]
    # rte has one diffora row: it is the reference there, with nothing to compare
    assert rows == [("mrpc", "diffora", "rank=8", "rank=4", "2"), ("mrpc", "random", "", "rank=4", "3")]


RECOVERY = {"precision": 0.5, "auc": 0.75, "chance": 0.25, "planted": ["q0", "k0", "v0", "o0"], "criterion": "dam",
            "by_criterion": {"dam": {"precision": 0.5, "auc": 0.75}, "magnitude": {"precision": 0.25, "auc": None}}}


def test_recovery_columns_and_table(tmp_path: Path) -> None:
    for seed, (precision, auc) in enumerate(((0.5, 0.75), (1.0, 0.95))):
        recovery = RECOVERY | {"precision": precision, "auc": auc, "criterion": "dam" if seed == 0 else None,
                               "by_criterion": RECOVERY["by_criterion"] | {"dam": {"precision": precision, "auc": auc}}}
        write_run(tmp_path / f"planted_s{seed}", task="planted", seed=seed, score=0.7, recovery=recovery)
    write_run(tmp_path / "random_s0", task="planted", method="random", score=0.6)  # no recovery
    write_run(tmp_path / "mrpc_s0", score=0.8)
    bad = write_run(tmp_path / "planted_s2", task="planted", seed=2, score=0.7, recovery={"auc": 0.5})
    with pytest.warns(AggregateWarning, match=f"{bad.name}.*malformed recovery"):
        runs = load_runs(tmp_path)
    assert next(r for r in runs if r.run_dir == bad).status == "finished"
    summaries = summarize(runs)
    planted = next(s for s in summaries if (s.task, s.method) == ("planted", "diffora"))
    assert planted.task == "planted" and planted.n == 3 and planted.recovery is not None
    assert planted.recovery.n == 2 and planted.recovery.precision == (pytest.approx(0.75), pytest.approx(0.3535534))
    assert planted.recovery.auc[0] == pytest.approx(0.85) and planted.recovery.chance == 0.25
    assert planted.recovery_by_criterion["magnitude"].auc == (None, None)
    planted_runs = [r for r in runs if r.task == "planted"]
    assert [r.recovery.criterion if r.recovery else None for r in planted_runs] == ["dam", "", None, None]
    markdown = to_markdown(summaries)
    mrpc = markdown[markdown.index("## mrpc"):markdown.index("## planted")]
    assert "| diffora | — | 1 | 0.800 ± — |" in mrpc
    assert "recovery" not in mrpc.lower()  # no run of mrpc has recovery: no empty columns
    planted_md = markdown[markdown.index("## planted"):]
    header = next(line for line in planted_md.splitlines() if line.startswith("| method | variant | n |"))
    assert header.endswith("| selection stability | recovery precision | recovery AUC | recovery chance | failed "
                           "| unfinished |")
    assert "| 0.750 ± 0.354 | 0.850 ± 0.141 | 0.250 | 0 | 0 |" in planted_md
    random_row = next(line for line in planted_md.splitlines() if line.startswith("| random |"))
    assert random_row.endswith("| — | — | — | — | 0 | 0 |")  # stability and the three recovery cells
    table = planted_md[planted_md.index("Recovery by criterion"):].splitlines()
    assert table[2] == "| method | variant | criterion | n seeds | precision | AUC | chance |"
    assert table[4:6] == ["| diffora | — | dam | 2 | 0.750 ± 0.354 | 0.850 ± 0.141 | 0.250 |",
                          "| diffora | — | magnitude | 2 | 0.250 ± 0.000 | — | 0.250 |"]
    paths = write_tables(summaries, runs, tmp_path / "out")
    with paths["summary_csv"].open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["task"] == "planted" and r["method"] == "diffora")
    assert float(row["recovery_precision_mean"]) == pytest.approx(0.75) and row["recovery_n"] == "2"
    assert float(row["recovery_auc_std"]) == pytest.approx(0.1414214) and float(row["recovery_chance"]) == 0.25


def test_search_variants_are_paired_on_recovery_precision(tmp_path: Path) -> None:
    """A planted sweep of two search variants: their recovery precision is paired seed by seed against the one named
    as reference, in summary.md and in paired.csv (main_metric 'recovery precision'), beside the paired scores."""
    precisions = {0: (4 / 9, 6 / 9), 1: (5 / 9, 6 / 9), 2: (5 / 9, 8 / 9)}  # seed: (prune_stages=0, prune_stages=2)
    for seed, pair in precisions.items():
        for stages, precision in zip((0, 2), pair, strict=True):
            recovery = RECOVERY | {"precision": precision, "by_criterion": {"dam": {"precision": precision,
                                                                                   "auc": 0.8}}}
            write_run(tmp_path / f"p{stages}_s{seed}", task="planted-grid", seed=seed, score=0.9 + 0.01 * stages,
                      variant={"prune_stages": stages}, recovery=recovery)
    paths = aggregate(tmp_path, tmp_path / "out", reference="diffora", reference_label="prune_stages=0")
    with paths["paired_csv"].open() as handle:
        rows = {row["main_metric"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"accuracy", "recovery precision"}
    row = rows["recovery precision"]
    assert (row["label"], row["reference_label"], row["n"]) == ("prune_stages=2", "prune_stages=0", "3")
    assert float(row["mean_diff"]) == pytest.approx(np.mean([2 / 9, 1 / 9, 3 / 9]))
    assert float(row["perm_pvalue"]) == 0.25  # exact in units of 1/|S| = 1/9
    assert float(rows["accuracy"]["mean_diff"]) == pytest.approx(0.02)
    markdown = paths["summary_md"].read_text()
    assert ("Paired differences in recovery precision vs diffora (prune_stages=0): d = row's recovery precision − "
            "diffora's recovery precision") in markdown
    assert "| diffora | prune_stages=2 | 3 | +0.222 |" in markdown


def test_a_seed_run_twice_is_averaged_with_a_warning(tmp_path: Path) -> None:
    paired_sweep(tmp_path)
    write_run(tmp_path / "again" / "random_s0", method="random", seed=0, score=0.72, variant={"rank": 8})
    runs = load_runs(tmp_path)
    with pytest.warns(AggregateWarning, match="random.*seed 0 has 2 finished runs"):
        report = paired_differences(runs)
    r4 = next(c for c in report.comparisons if c.label == "rank=4")
    assert r4.test.mean == pytest.approx(np.mean([0.78 - 0.71, 0.06, 0.05]))


def test_misses_and_stand_ins_are_counted_over_seeds(tmp_path: Path) -> None:
    planted = ["bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.5.output.dense"]
    recovery = RECOVERY | {"planted": planted}
    selections = [["bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.5.intermediate.dense"],
                  ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.5.intermediate.dense"],
                  planted]
    for seed, selected in enumerate(selections):
        write_run(tmp_path / f"planted_s{seed}", task="planted", seed=seed, score=0.7, recovery=recovery,
                  selected=selected)
    write_run(tmp_path / "mrpc_s0", score=0.8, selected=["q0"])  # no recovery: no stand-ins
    summaries = summarize(load_runs(tmp_path))
    stand = next(s for s in summaries if s.task == "planted").stand_ins
    assert stand is not None and stand.n == 3
    assert stand.missed == [("bert.encoder.layer.5.output.dense", 2), ("bert.encoder.layer.1.attention.self.key", 1)]
    assert stand.extra == [("bert.encoder.layer.5.intermediate.dense", 2),
                           ("bert.encoder.layer.1.attention.self.query", 1)]
    assert next(s for s in summaries if s.task == "mrpc").stand_ins is None
    markdown = to_markdown(summaries)
    assert "Misses and stand-ins" in markdown and "names without 'bert.encoder.layer.'" in markdown
    assert ("| diffora | — | 3 | 5.output.dense (2), 1.attention.self.key (1) | 5.intermediate.dense (2), "
            "1.attention.self.query (1) |") in markdown
    assert "stand-ins" not in markdown[markdown.index("## mrpc"):markdown.index("## planted")]
