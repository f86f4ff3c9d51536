"""`diffora aggregate` pools only runs of the same configuration: rows come from the runs' composed configs
(fingerprint.json, else .hydra/config.yaml), every non-seed, non-volatile key that varies is part of the row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_aggregate import write_fingerprint, write_run

from nas.reporting.aggregate import AggregateWarning, load_runs, paired_differences, summarize

BASE = {"task.name": "mrpc", "method.name": "diffora", "relaxation.name": "sigmoid", "criterion.name": "dam",
        "bilevel.dropout": 0.0, "bilevel.alpha_shrink": 0.0, "bilevel.alpha_optimizer.betas": [0.5, 0.999],
        "task.planted_seed": 0}


def write_hydra_config(run_dir: Path, config: dict[str, Any], failed: bool = False) -> Path:
    """.hydra/config.yaml only (a run older than fingerprint.json), nested from a flat ``config``; ``failed`` adds
    a FAILED file."""
    import yaml

    nested: dict[str, Any] = {}
    for key, value in config.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(nested))
    if failed:
        (run_dir / "FAILED").write_text("RuntimeError: boom\n")
    return run_dir


def rows(tmp_path: Path) -> list[tuple[str, int, list[int], int, int]]:
    return [(s.label, s.n, s.seeds, s.failed, s.unfinished) for s in summarize(load_runs(tmp_path))]


@pytest.mark.parametrize(("key", "values", "labels"), [
    ("bilevel.dropout", (0.0, 0.1), ("bilevel.dropout=0", "bilevel.dropout=0.1")),
    ("task.planted_seed", (1, 2), ("task.planted_seed=1", "task.planted_seed=2")),
    ("bilevel.alpha_optimizer.betas", ([0.5, 0.999], [0.9, 0.999]),
     ("bilevel.alpha_optimizer.betas=[0.5,0.999]", "bilevel.alpha_optimizer.betas=[0.9,0.999]"))])
def test_runs_differing_only_in_a_setting_the_variant_omits_are_separate_rows(
        tmp_path: Path, key: str, values: tuple[Any, Any], labels: tuple[str, str]) -> None:
    """metrics.json's variant is the same for all six runs; their configs differ in ``key``: two rows of 3 seeds."""
    for value in values:
        for seed in range(3):
            write_run(tmp_path / f"{value}_s{seed}", seed=seed, variant={"relaxation": "sigmoid"},
                      config=BASE | {key: value})
    assert rows(tmp_path) == [(labels[0], 3, [0, 1, 2], 0, 0), (labels[1], 3, [0, 1, 2], 0, 0)]


def test_group_names_drop_name_and_the_reference_label_criterion_random_works(tmp_path: Path) -> None:
    for criterion in ("dam", "random"):
        for seed, score in enumerate((0.7, 0.75) if criterion == "dam" else (0.6, 0.7)):
            write_run(tmp_path / f"{criterion}_s{seed}", seed=seed, score=score,
                      config=BASE | {"criterion.name": criterion, "relaxation.name": "softmax"})
    assert [label for label, *_ in rows(tmp_path)] == ["criterion=dam", "criterion=random"]
    report = paired_differences(load_runs(tmp_path), reference="diffora", reference_label="criterion=random")
    assert [c.label for c in report.comparisons] == ["criterion=dam"]


def test_a_failed_and_an_unfinished_run_join_the_finished_run_of_their_config(tmp_path: Path) -> None:
    """metrics.json's variant says alpha_shrink "off", the configs say 0.0: one row, finished or not; seed 1 failed
    (fingerprint.json and FAILED, no metrics.json), seed 2 never finished (.hydra/config.yaml only)."""
    write_run(tmp_path / "s0", variant={"alpha_shrink": "off", "relaxation": "sigmoid"}, config=BASE)
    failed = tmp_path / "s1"
    failed.mkdir()
    write_fingerprint(failed, BASE | {"seed": 1})
    (failed / "FAILED").write_text("RuntimeError: CUDA out of memory\n")
    write_hydra_config(tmp_path / "s2", BASE | {"seed": 2})
    write_run(tmp_path / "shrink_s0", variant={"alpha_shrink": "0.5@1", "relaxation": "sigmoid"},
              config=BASE | {"bilevel.alpha_shrink": 0.5})
    assert rows(tmp_path) == [("bilevel.alpha_shrink=0", 1, [0], 1, 1), ("bilevel.alpha_shrink=0.5", 1, [0], 0, 0)]
    summary = summarize(load_runs(tmp_path))[0]
    assert summary.not_finished == ["s1: failed (RuntimeError: CUDA out of memory)", "s2: unfinished"]


def test_runs_with_only_hydra_config_group_the_same_way(tmp_path: Path) -> None:
    """Older runs: .hydra/config.yaml, unresolved; ${task.search_steps} and ${seed} are resolved, an interpolation
    that cannot be (an unset variable) is compared as its text; a run with fingerprint.json (resolved) joins them."""
    config = BASE | {"task.search_steps": 150, "bilevel.steps": "${task.search_steps}", "task.data_seed": "${seed}",
                     "model.cache": "${oc.env:DIFFORA_TEST_UNSET_VARIABLE}"}
    for dropout in (0.0, 0.1):
        for seed in range(2):
            run_dir = write_run(tmp_path / f"{dropout}_s{seed}", seed=seed, variant={"relaxation": "sigmoid"},
                                fingerprint=False)
            write_hydra_config(run_dir, config | {"seed": seed, "bilevel.dropout": dropout})
    write_run(tmp_path / "0.1_s2", seed=2, config=config | {"bilevel.dropout": 0.1, "bilevel.steps": 150,
                                                            "task.data_seed": 2})
    assert rows(tmp_path) == [("bilevel.dropout=0", 2, [0, 1], 0, 0), ("bilevel.dropout=0.1", 3, [0, 1, 2], 0, 0)]


def test_volatile_settings_do_not_split_a_row(tmp_path: Path) -> None:
    for seed, (device, threads) in enumerate((("cpu", 1), ("cuda", 4), ("cuda", None))):
        write_run(tmp_path / f"s{seed}", seed=seed, fingerprint=False)
        write_hydra_config(tmp_path / f"s{seed}", BASE | {
            "seed": seed, "device": device, "threads": threads, "paths.log_dir": f"/machine{seed}/logs",
            "model.name_or_path": f"/machine{seed}/model", "task.data_dir": f"/machine{seed}/glue",
            "bilevel.log_every": 10 * (seed + 1)})
    write_run(tmp_path / "s3", seed=3, config=BASE | {"device": "mps", "paths.cache_dir": "/elsewhere"})
    assert rows(tmp_path) == [("", 4, [0, 1, 2, 3], 0, 0)]


def test_a_key_that_follows_the_seed_is_no_variant_but_one_confounded_with_it_is(tmp_path: Path) -> None:
    for seed in range(3):
        write_run(tmp_path / f"s{seed}", seed=seed,
                  config=BASE | {"task.data_seed": seed, "run_name": f"job_s{seed}", "space.rank": 8})
    assert rows(tmp_path) == [("", 3, [0, 1, 2], 0, 0)]
    write_run(tmp_path / "rank4_s0", seed=0, config=BASE | {"task.data_seed": 0, "run_name": "job_s0",
                                                             "space.rank": 4})
    write_run(tmp_path / "rank16_s1", seed=1, config=BASE | {"task.data_seed": 1, "run_name": "job_s1",
                                                              "space.rank": 16})
    assert rows(tmp_path) == [("space.rank=16", 1, [1], 0, 0), ("space.rank=4", 1, [0], 0, 0),
                              ("space.rank=8", 3, [0, 1, 2], 0, 0)]


def test_runs_without_a_config_fall_back_to_the_variant_with_a_warning(tmp_path: Path) -> None:
    """Committed studies kept only metrics.json: their variant groups them as before (a key that a later session's
    metrics.json added, with one value, splits nothing); beside runs with a config they are marked config=none."""
    for seed in range(2):
        for criterion in ("dam", "random"):
            write_run(tmp_path / f"{criterion}_s{seed}", seed=seed, variant={"criterion": criterion},
                      fingerprint=False)
    write_run(tmp_path / "dam_s2", seed=2, variant={"criterion": "dam", "branch_init": "kaiming"}, fingerprint=False)
    with pytest.warns(AggregateWarning, match=r"5 finished run\(s\) without fingerprint.json.*metrics.json's variant"):
        assert rows(tmp_path) == [("criterion=dam", 3, [0, 1, 2], 0, 0), ("criterion=random", 2, [0, 1], 0, 0)]
    write_run(tmp_path / "config_s0", config=BASE | {"criterion.name": "random"})
    with pytest.warns(AggregateWarning, match="5 finished run"):
        assert rows(tmp_path) == [("", 1, [0], 0, 0), ("config=none, criterion=dam", 3, [0, 1, 2], 0, 0),
                                  ("config=none, criterion=random", 2, [0, 1], 0, 0)]


def test_a_group_options_own_settings_are_named_by_the_option(tmp_path: Path) -> None:
    """relaxation.tau_max exists for gumbel only: relaxation=gumbel says it, until two gumbel runs differ in it."""
    for seed in range(2):
        write_run(tmp_path / f"gumbel_s{seed}", seed=seed,
                  config=BASE | {"relaxation.name": "gumbel", "relaxation.tau_max": 10.0})
        write_run(tmp_path / f"sigmoid_s{seed}", seed=seed, config=BASE)
    assert rows(tmp_path) == [("relaxation=gumbel", 2, [0, 1], 0, 0), ("relaxation=sigmoid", 2, [0, 1], 0, 0)]
    write_run(tmp_path / "gumbel5_s0", config=BASE | {"relaxation.name": "gumbel", "relaxation.tau_max": 5.0})
    assert rows(tmp_path) == [("relaxation=gumbel, relaxation.tau_max=10", 2, [0, 1], 0, 0),
                              ("relaxation=gumbel, relaxation.tau_max=5", 1, [0], 0, 0),
                              ("relaxation=sigmoid, relaxation.tau_max=?", 2, [0, 1], 0, 0)]


def test_a_failed_planted_run_is_named_like_the_finished_ones(tmp_path: Path) -> None:
    """A run without metrics.json names its planted problem from its config as PlantedSpec.label does."""
    config = BASE | {"task.name": "planted", "task.pattern": "grid", "task.target": "regression",
                     "task.outputs": 384, "task.effect": 0.05, "task.size": 0.5}
    write_run(tmp_path / "s0", task="planted-grid-regressionx384-effect0.05", config=config)
    (tmp_path / "s1").mkdir()
    write_fingerprint(tmp_path / "s1", config | {"seed": 1})
    (tmp_path / "s1" / "FAILED").write_text("RuntimeError: boom\n")
    (summary,) = summarize(load_runs(tmp_path))
    assert (summary.task, summary.label, summary.n, summary.failed) == ("planted-grid-regressionx384-effect0.05", "",
                                                                        1, 1)


def test_a_budget_curve_pairs_each_size_with_random_at_that_size_and_draws_the_curve(tmp_path: Path) -> None:
    """Two criteria and LoRA at two ρ, 3 seeds: with --within discretizer.rho each row is paired with
    criterion=random at its own ρ (the differences are exact: 0.01·(1 + seed) and 0.1), LoRA included; a row of one
    size only (full_ft) gets a note, not a wrong reference; curve.png is drawn."""
    from nas.errors import ConfigError
    from nas.reporting.aggregate import aggregate

    for rho in (0.25, 0.5):
        for seed in range(3):
            for criterion, gain in (("dam", 0.01 * (1 + seed)), ("random", 0.0)):
                write_run(tmp_path / f"{criterion}_{rho}_s{seed}", seed=seed, score=0.5 + rho + gain,
                          config=BASE | {"criterion.name": criterion, "discretizer.rho": rho})
            write_run(tmp_path / f"lora_{rho}_s{seed}", method="lora", seed=seed, score=0.6 + rho,
                      config={"discretizer.rho": rho, "space.rank": 8})
            write_run(tmp_path / f"full_s{seed}", method="full_ft", seed=seed, score=0.9, config={}) if rho == 0.5 \
                else None
    runs = load_runs(tmp_path)
    report = paired_differences(runs, "diffora", "criterion=random", within=["discretizer.rho"])
    found = {(c.method, c.label): (round(c.test.mean, 9), c.test.n, c.reference_label) for c in report.comparisons}
    random_at = {rho: f"criterion=random, discretizer.rho={rho}" for rho in (0.25, 0.5)}
    expected = {("diffora", f"criterion=dam, discretizer.rho={rho}"): (0.02, 3, random_at[rho]) for rho in random_at}
    expected |= {("lora", f"discretizer.rho={rho}"): (0.1, 3, random_at[rho]) for rho in random_at}
    assert found == expected
    assert "full_ft" in report.notes["mrpc"] and "no paired reference" in report.notes["mrpc"]
    with pytest.raises(ConfigError, match="2 rows of the reference method 'diffora' match discretizer.rho=0.25"):
        paired_differences(runs, "diffora", None, within=["discretizer.rho"])
    paths = aggregate(tmp_path, tmp_path / "out", reference="diffora", reference_label="criterion=random",
                      within=["discretizer.rho"])
    assert paths["curve_png"].stat().st_size > 10_000
