"""The placement benchmark: method=fixed's placements, the table built from runs, and criteria scored against it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import compose_run, tiny_bert
from scipy import stats

from nas.bench.cli import main as bench
from nas.bench.cli import score_runs
from nas.bench.placement import PlacementTable, build_table, read_table, write_table
from nas.bench.score import (
    criterion_agreement,
    held_out_oracle,
    percentile,
    rank_agreement,
    selection_percentiles,
    top_k,
)
from nas.errors import ConfigError
from nas.methods.fixed import draw_subset, placement_modules
from search_spaces.space import build_search_space

NAMES = [f"m{i}" for i in range(6)]


@pytest.fixture(scope="module")
def space():
    return build_search_space(tiny_bert(), "bert", None, None)


def test_placements_name_their_modules(space) -> None:
    names = list(space.names)
    assert placement_modules("none", space, 0) == [] and placement_modules("all", space, 0) == names
    assert placement_modules("single:3", space, 0) == [names[3]]
    assert placement_modules("list", space, 0, [names[5], names[1]]) == [names[1], names[5]]  # in the space's order
    drawn = placement_modules("draw:4:2", space, 1)
    assert len(drawn) == 4 and drawn == placement_modules("draw:4:2", space, 1)  # reproducible
    assert drawn != placement_modules("draw:4:2", space, 2) or drawn != placement_modules("draw:4:3", space, 1)
    for bad, message in [("single:99", "single:0 to single:"), ("draw:0:1", "1 ≤ k"), ("some", "is not a placement"),
                         ("list", "needs method.modules")]:
        with pytest.raises(ConfigError, match=message):
            placement_modules(bad, space, 0)


def test_random_subsets_are_uniform() -> None:
    """Each of n modules is in a random k-subset with probability k/n: a chi-square test over 3,000 draws."""
    counts = Counter(i for draw in range(3000) for i in draw_subset(12, 3, seed=0, draw=draw))
    assert sorted(counts) == list(range(12)) and all(len(set(draw_subset(12, 3, 0, d))) == 3 for d in range(50))
    assert stats.chisquare([counts[i] for i in range(12)]).pvalue > 0.001


def test_the_experiments_placements_cover_minilms_search_space() -> None:
    """conf/experiment/placement_bench.yaml lists MiniLM's candidates by index: the list must match the space."""
    from hydra import compose, initialize_config_dir

    from nas.bench.cli import placement_list
    from nas.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("run", overrides=["experiment=placement_bench"], return_hydra_config=True)
    listed = str(cfg.hydra.sweeper.params["method.placement"])
    assert placement_list([], 10, 9) == f"method.placement={listed}"
    assert compose_run(["experiment=placement_bench"]).budget.match_steps is False


# ---------------------------------------------------------------- the table


def write_fixed_run(root: Path, placement: str, seed: int, score: float, config: dict | None = None,
                    modules: list[str] | None = None) -> None:
    run = root / f"{placement.replace(':', '_')}_s{seed}"
    run.mkdir(parents=True)
    if modules is None:
        kind = placement.split(":")
        modules = ([] if placement == "none" else NAMES if placement == "all" else [NAMES[int(kind[1])]]
                   if kind[0] == "single" else NAMES[:int(kind[1])])
    (run / "metrics.json").write_text(json.dumps({"method": "fixed", "seed": seed, "score": score, "main_metric":
                                                  "pearson", "metrics": {"pearson": score}, "variant": {},
                                                  "code_version": "abc"}))
    (run / "selection.json").write_text(json.dumps({"selected": modules, "placement": placement,
                                                    "coordinates": {n: [0, n] for n in NAMES}}))
    shared = {"task.name": "stsb", "model.name_or_path": "minilm", "space.rank": 8, **(config or {})}
    (run / "fingerprint.json").write_text(json.dumps({"config": {**shared, "seed": seed, "method.placement": placement},
                                                      "files": {"model": {"w": "1"}, "data": {"d": "2"}}}))


UTILITY = {0: [0.10, 0.05, 0.30, 0.00, -0.02, 0.20], 1: [0.12, 0.01, 0.25, 0.02, -0.01, 0.22]}


def bench_sweep(root: Path) -> Path:
    for seed, utilities in UTILITY.items():
        write_fixed_run(root, "none", seed, 0.50)
        write_fixed_run(root, "all", seed, 0.85)
        for i, u in enumerate(utilities):
            write_fixed_run(root, f"single:{i}", seed, 0.50 + u)
        for j, score in enumerate((0.70, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.79)):  # the minimum, 10
            write_fixed_run(root, f"draw:3:{j}", seed, score + 0.01 * seed)
    return root


def test_a_table_gives_utilities_and_random_subsets_by_seed(tmp_path: Path) -> None:
    table = build_table([bench_sweep(tmp_path / "sweep")], command="diffora run experiment=placement_bench")
    assert table["candidates"] == NAMES and table["main_metric"] == "pearson" and table["code_versions"] == ["abc"]
    assert table["config"] == {"task.name": "stsb", "model.name_or_path": "minilm", "space.rank": 8}
    placements = PlacementTable.of(table)
    assert placements.utility(1) == pytest.approx(dict(zip(NAMES, UTILITY[1], strict=True)))
    assert placements.random_subsets(1, 3) == pytest.approx([0.71 + 0.01 * j for j in range(10)])
    assert placements.coverage()[0] == {"none": 1, "all": 1, "single": 6, "draw": 10}
    path = write_table(table, tmp_path / "bench.json")
    write_fixed_run(tmp_path / "more", "draw:3:9", 2, 0.9)
    merged = build_table([tmp_path / "more"], read_table(path))  # a later session adds runs to the table
    assert len(merged["runs"]) == len(table["runs"]) + 1 and merged["commands"] == table["commands"]


def test_a_run_of_another_configuration_is_refused(tmp_path: Path) -> None:
    sweep = bench_sweep(tmp_path / "sweep")
    write_fixed_run(sweep, "single:0", 7, 0.6, config={"space.rank": 4})
    with pytest.raises(ConfigError, match="space.rank: 8 → 4; build one table per configuration"):
        build_table([sweep])


# ---------------------------------------------------------------- scoring


def test_rank_agreement_and_percentile_on_known_cases() -> None:
    utility = dict(zip(NAMES, UTILITY[0], strict=True))
    assert rank_agreement(utility, utility) == pytest.approx((1.0, 1.0))
    assert rank_agreement({m: -u for m, u in utility.items()}, utility) == pytest.approx((-1.0, -1.0))
    swapped = {**utility, "m2": 0.15, "m5": 0.31}  # the top two swapped: one discordant pair of 15
    assert rank_agreement(swapped, utility)[1] == pytest.approx(13 / 15)
    assert percentile(0.73, [0.70, 0.72, 0.74, 0.76] * 3) == 50.0
    assert percentile(0.72, [0.70, 0.72, 0.74, 0.76] * 3) == 37.5 and percentile(0.9, [0.1] * 10) == 100.0
    with pytest.raises(ConfigError, match="only 9 random subsets.*steps of 11 points; train at least 10"):
        percentile(0.9, [0.1] * 9)
    with pytest.raises(ConfigError, match="single-module runs"):
        rank_agreement({"m0": 1.0}, utility)


def test_the_held_out_oracle_is_chosen_on_the_other_seeds(tmp_path: Path) -> None:
    table = PlacementTable.of(build_table([bench_sweep(tmp_path)]))
    assert top_k(table.utility(0), 2, NAMES) == ["m2", "m5"]
    assert held_out_oracle(table, 0, 2) == ["m2", "m5"] == top_k(table.utility(1), 2, NAMES)
    over = selection_percentiles(table, {0: 0.75, 1: 0.80}, 3)
    assert over.by_seed == {0: 55.0, 1: 95.0} and over.mean == 75.0 and over.ci is not None


def test_a_seed_still_running_is_left_out_of_tau_oracle_and_percentiles(tmp_path: Path) -> None:
    """Seed 2 has the head, 2 of 6 singles and 3 draws: a τ over 2 modules, an oracle from them, or a percentile among
    3 draws would each be another quantity, so seed 2 is left out of each, and the notes say so."""
    from nas.bench.score import score

    sweep = bench_sweep(tmp_path / "sweep")
    write_fixed_run(sweep, "none", 2, 0.50)
    for i, u in ((0, 0.9), (1, 0.8)):
        write_fixed_run(sweep, f"single:{i}", 2, 0.50 + u)
    for j in range(3):
        write_fixed_run(sweep, f"draw:3:{j}", 2, 0.99)
    table = PlacementTable.of(build_table([sweep]))
    assert not table.has_every_single(2) and table.has_every_single(1)
    assert held_out_oracle(table, 0, 2) == top_k(table.utility(1), 2, NAMES)  # not from seed 2's two modules
    perfect = {seed: dict(zip(NAMES, UTILITY[seed % 2], strict=True)) for seed in (0, 2)}
    spearman, kendall = criterion_agreement(table, perfect)
    assert set(kendall.by_seed) == {0}
    assert set(selection_percentiles(table, {1: 0.80, 2: 0.99}, 3).by_seed) == {1}
    runs = [({"seed": 2, "method": "fixed", "score": 0.99}, {"selected": NAMES[:3], "placement": "list"})]
    assert score(table, runs, 3).notes == [
        "seed 2: 2 of 6 single-module runs: left out of τ and of the oracle",
        "seed 2: 3 random 3-subsets (fewer than 10): left out of the percentiles"]


def test_bench_cli_builds_shows_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = bench_sweep(tmp_path / "sweep")
    out = tmp_path / "benchmarks" / "placement" / "minilm_stsb.json"
    assert bench(["build", str(sweep), "--out", str(out)]) == 0
    assert "| m2 | +0.275 |" in capsys.readouterr().out  # the most useful module first
    criteria = tmp_path / "criteria"
    types = {n: [0, i % 2] for i, n in enumerate(NAMES)}  # two module types: m0, m2, m4 and m1, m3, m5
    for seed, utilities in UTILITY.items():  # a criterion that ranks exactly as the utility, one backwards, and one
        run = criteria / f"s{seed}"          # whose second type is on another scale (x100, +5)
        run.mkdir(parents=True)
        scores = dict(zip(NAMES, utilities, strict=True))
        (run / "metrics.json").write_text(json.dumps({"method": "diffora", "seed": seed, "score": 0.8}))
        (run / "selection.json").write_text(json.dumps({"selected": NAMES[:3], "coordinates": types, "criteria": {
            "perfect": scores, "backwards": {m: -u for m, u in scores.items()},
            "scaled": {m: 100 * u + 5 if types[m][1] else u for m, u in scores.items()}, "random": scores}}))
    write_fixed_run(criteria, "list", 0, 0.75, modules=NAMES[:3])
    (criteria / "oracle").mkdir()
    write_fixed_run(criteria / "oracle", "list", 1, 0.785, modules=["m0", "m2", "m5"])
    assert bench(["score", str(out), str(criteria), "--k", "3"]) == 0
    text = capsys.readouterr().out
    assert "| perfect | +1.000 [+1.000, +1.000] | +1.000 [+1.000, +1.000] | 2 |" in text
    assert "| backwards | -1.000" in text and "| list | 55.000 — | 1 |" in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ", 1)[1] for line in text.splitlines() if " | " in line}
    assert not rows["scaled"].startswith("+1.000")  # the scale of its second type puts that type on top
    assert rows["scaled (within_type)"] == rows["perfect (within_type)"]  # z-scores within a type undo any scale
    assert "backwards (within_type)" in rows and "random" in rows and "random (within_type)" not in rows
    assert "seed 0: method.modules=[m0,m2,m5]" in text  # the top 3 of seed 1's utilities, in the space's order
    # a trained selection is named by every criterion (and the oracle) that chose it at its seed
    named = "perfect = perfect (within_type) = scaled (within_type) = random = oracle (held out)"
    assert f"| {named} | 80.000 — | 1 |" in text
    assert "seed 1: method.modules=[m1,m3,m5]  (scaled)" in text  # what is left to train, once per module set


@pytest.mark.parametrize(("config", "files", "names", "message"), [
    ({"task.name": "mrpc"}, None, None, "task.name: 'stsb' → 'mrpc'"),
    ({}, {"w": "9"}, None, r"model files differ \(w\)"),
    ({}, None, [*NAMES, "m6"], "candidates: 6 of the table's space → 7 \\(m6\\)"),
])
def test_runs_of_another_task_model_or_space_are_refused_when_scored(
        tmp_path: Path, config: dict, files: dict | None, names: list[str] | None, message: str) -> None:
    out = tmp_path / "bench.json"
    write_table(build_table([bench_sweep(tmp_path / "sweep")]), out)
    write_fixed_run(tmp_path / "other", "list", 0, 0.75, config=config, modules=NAMES[:3])
    run = tmp_path / "other" / "list_s0"
    if files is not None:
        record = json.loads((run / "fingerprint.json").read_text())
        (run / "fingerprint.json").write_text(json.dumps({**record, "files": {**record["files"], "model": files}}))
    if names is not None:
        selection = json.loads((run / "selection.json").read_text())
        selection["coordinates"] = {n: [0, n] for n in names}
        (run / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(ConfigError, match=f"not comparable with the table \\({message}"):
        score_runs(PlacementTable.of(read_table(out)), [tmp_path / "other"], 3)


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.placement=sngle:3"], "method.placement=sngle:3 is not a placement"),
    (["method.placement=list"], "method.placement=list needs method.modules"),
])
def test_a_bad_placement_is_refused_before_the_model_loads(overrides: list[str], message: str) -> None:
    from nas.validation import validate_run_config

    with pytest.raises(ConfigError, match=message):
        validate_run_config(compose_run(["method=fixed", *overrides]))


@pytest.mark.slow
def test_a_fixed_placement_trains_lora_on_its_module_alone(tmp_path: Path, tiny_encoder: Path) -> None:
    """End to end on MRPC (the tiny encoder, MiniLM's 36 candidates at hidden 32): single:3 puts LoRA on the 4th
    candidate only; nothing else trains but the head."""
    from conftest import TINY_ENCODER
    from test_cli import run

    result = run(["task=mrpc", "debug=smoke", "logger=none", "method=fixed", "method.placement=single:3",
                  "retrain.export_adapter=false", f"model.name_or_path={tiny_encoder}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["selected"] == [list(selection["coordinates"])[3]] and selection["placement"] == "single:3"
    assert metrics["variant"]["placement"] == "single:3"
    assert metrics["adapter_params"] == 8 * 2 * TINY_ENCODER["hidden_size"]  # the 4th candidate: an attention key
    assert metrics["train_steps"] == 12  # bilevel.steps + retrain.steps: budget.match_steps (off in placement_bench)
    assert metrics["code_version"] != ""
