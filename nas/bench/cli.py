"""``diffora bench``: build a placement table from sweeps, show it, and score criteria against it.

    diffora bench build logs/multiruns/placement_stsb --out benchmarks/placement/minilm_stsb.json
    diffora bench show benchmarks/placement/minilm_stsb.json
    diffora bench score benchmarks/placement/minilm_stsb.json logs/multiruns/criteria_stsb [--k 9]
    diffora bench placements model=roberta_base        # the placement list of another model's search space
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.bench.placement import PlacementTable, build_table, read_table, write_table
from nas.bench.score import criterion_agreement, held_out_oracle, selection_percentiles, top_k
from nas.errors import ConfigError
from nas.reporting.run_records import find_run_dirs

USAGE = "diffora bench {build,show,score,placements} ..."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffora bench", description="the placement benchmark (benchmarks/placement)")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="a table from placement_bench sweeps, merged into --out if it exists")
    build.add_argument("sweep_dirs", nargs="+", type=Path)
    build.add_argument("--out", required=True, type=Path, help="benchmarks/placement/<model>_<task>.json")
    build.add_argument("--command", default=None, help="the command that made the runs (recorded in the table)")
    show = sub.add_parser("show", help="coverage, head-only and all-module scores, utilities, random subsets")
    show.add_argument("table", type=Path)
    score = sub.add_parser("score", help="criteria in the runs' selection.json scored against the table")
    score.add_argument("table", type=Path)
    score.add_argument("run_dirs", nargs="+", type=Path, help="folders holding runs on the table's task")
    score.add_argument("--k", type=int, default=9, help="selection size judged by percentile (default 9)")
    places = sub.add_parser("placements", help="the sweep's placement list for a model's search space")
    places.add_argument("overrides", nargs="*", help="config overrides, e.g. model=roberta_base")
    places.add_argument("--draws", type=int, default=10)
    places.add_argument("--k", type=int, default=9)
    args = parser.parse_args(argv)
    if args.action == "build":
        previous = read_table(args.out) if args.out.exists() else None
        table = build_table(args.sweep_dirs, previous, args.command)
        print(f"wrote {write_table(table, args.out)}: {len(table['runs'])} runs")
        print(show_table(PlacementTable.of(table)))
    elif args.action == "show":
        print(show_table(PlacementTable.of(read_table(args.table))))
    elif args.action == "score":
        print(score_runs(PlacementTable.of(read_table(args.table)), args.run_dirs, args.k))
    else:
        print(placement_list(args.overrides, args.draws, args.k))
    return 0


def _fmt(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _ci(over) -> str:
    return "—" if over.ci is None else f"[{over.ci[0]:+.3f}, {over.ci[1]:+.3f}]"


def show_table(table: PlacementTable) -> str:
    from nas.bench.score import OverSeeds

    lines = [f"{len(table.candidates)} candidates; main metric {table.main_metric}", "",
             "| seed | head only | all | singles | draws | draws: min / median / max |",
             "|---|---:|---:|---:|---:|---|"]
    for seed, counts in sorted(table.coverage().items()):
        draws = sorted(r for (p, s), r in table.scores.items() if s == seed and p.startswith("draw:"))
        spread = f"{draws[0]:.3f} / {draws[len(draws) // 2]:.3f} / {draws[-1]:.3f}" if draws else "—"
        lines.append(f"| {seed} | {_fmt(table.scores.get(('none', seed)))} | {_fmt(table.scores.get(('all', seed)))} "
                     f"| {counts['single']} | {counts['draw']} | {spread} |")
    utilities = {m: OverSeeds.of({s: u[m] for s in table.seeds if m in (u := table.utility(s))})
                 for m in table.candidates}
    lines += ["", "| module | utility (mean over seeds) | 95% CI | seeds |", "|---|---:|---|---:|"]
    for module, over in sorted(utilities.items(), key=lambda item: -(item[1].mean or -1e9)):
        if over.by_seed:
            lines.append(f"| {module} | {_fmt(over.mean, True)} | {_ci(over)} | {len(over.by_seed)} |")
    return "\n".join(lines)


def _runs(run_dirs: list[Path], table: PlacementTable) -> list[tuple[dict, dict]]:
    """The finished runs under ``run_dirs``; a run of another task, model or candidate set than ``table`` is
    refused, naming what differs."""
    found = []
    for root in run_dirs:
        for run_dir in find_run_dirs(root):
            try:
                found.append((json.loads((run_dir / "metrics.json").read_text()),
                              json.loads((run_dir / "selection.json").read_text())))
            except (OSError, ValueError):
                continue
            if differences := table.differences(run_dir, found[-1][1]):
                raise ConfigError(f"{run_dir} is not comparable with the table ({'; '.join(differences)}); score "
                                  "it against a table built for its model, task and search space")
    if not found:
        raise ConfigError(f"no finished runs under {', '.join(map(str, run_dirs))}")
    return found


def score_runs(table: PlacementTable, run_dirs: list[Path], k: int) -> str:
    """Markdown: each criterion recorded in the runs' selection.json (by seed) against the table's utilities, as
    recorded and, where the runs say each module's type (its DAM column), as z-scores within each type (``<name>
    (within_type)``, what ``criterion.normalize=within_type`` ranks by); and each trained k-module fixed placement
    (``list``) by its percentile among the random k-subsets."""
    from nas.search.criteria import normalize_scores

    criteria: dict[str, dict[int, dict[str, float]]] = {}
    trained: dict[tuple[int, frozenset[str]], tuple[str, float]] = {}
    for metrics, selection in _runs(run_dirs, table):
        seed = int(metrics["seed"])
        types = {name: column for name, (_, column) in (selection.get("coordinates") or {}).items()}
        for name, scores in (selection.get("criteria") or {}).items():
            criteria.setdefault(name, {})[seed] = scores
            if types and name != "random":
                criteria.setdefault(f"{name} (within_type)", {})[seed] = normalize_scores(scores, types, "within_type")
        if metrics.get("method") == "fixed" and len(selection["selected"]) == k:
            trained[seed, frozenset(selection["selected"])] = (selection.get("placement", "?"), float(metrics["score"]))
    lines = ["| criterion | Spearman (mean, 95% CI) | Kendall τ (mean, 95% CI) | seeds |", "|---|---|---|---:|"]
    for name, by_seed in sorted(criteria.items()):
        spearman, kendall = criterion_agreement(table, by_seed)
        lines.append(f"| {name} | {_fmt(spearman.mean, True)} {_ci(spearman)} | {_fmt(kendall.mean, True)} "
                     f"{_ci(kendall)} | {len(spearman.by_seed)} |")
    chosen = {label: {seed: top_k(scores, k, table.candidates) for seed, scores in by_seed.items()}
              for label, by_seed in criteria.items()}  # each criterion's k modules at each seed
    if len(table.seeds) > 1:
        chosen["oracle (held out)"] = {seed: held_out_oracle(table, seed, k) for seed in table.seeds}
    by_label: dict[str, dict[int, float]] = {}
    for (seed, modules), (placement, score) in trained.items():
        names = [label for label, sets in chosen.items() if set(sets.get(seed, ())) == modules] or [placement]
        by_label.setdefault(" = ".join(names), {})[seed] = score
    lines += ["", f"| trained {k}-module placement | percentile among random {k}-subsets (mean, 95% CI) | seeds |",
              "|---|---|---:|"]
    for label, by_seed in sorted(by_label.items()):
        over = selection_percentiles(table, by_seed, k)
        lines.append(f"| {label} | {_fmt(over.mean)} {_ci(over)} | {len(over.by_seed)} |")
    untrained: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for label, sets in chosen.items():
        for seed, modules in sorted(sets.items()):
            if (seed, frozenset(modules)) not in trained:
                untrained.setdefault((seed, tuple(modules)), []).append(label)
    lines += ["", f"not trained yet: each selection of {k} modules (the oracle's from the mean utility of the other "
              "seeds), to train as method=fixed method.placement=list seed=<seed>:"]
    lines += [f"  seed {seed}: method.modules=[{','.join(modules)}]  ({', '.join(labels)})"
              for (seed, modules), labels in sorted(untrained.items())]
    return "\n".join(lines)


def placement_list(overrides: list[str], draws: int, k: int) -> str:
    """``method.placement=none,all,single:0,…,draw:k:0,…`` for the composed model's space: a command-line sweep
    override, which replaces the experiment's own list (Hydra refuses ``hydra.sweeper.params.method.placement=`` from
    the command line, since ``method`` is not a key of the sweeper's params node)."""
    from hydra import compose, initialize_config_dir

    from nas.config import CONF_DIR, register_configs
    from nas.engine.backbone import load_backbone
    from search_spaces.space import build_search_space

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("run", overrides=overrides)
    backbone = load_backbone(cfg.model.name_or_path, 2, cfg.model.head_modules, cfg.model.dropout, "head",
                             cfg.model.pad_token)
    n = len(build_search_space(backbone.model, cfg.space.preset, cfg.space.module_types, cfg.space.layers))
    places = ["none", "all", *(f"single:{i}" for i in range(n)), *(f"draw:{k}:{j}" for j in range(draws))]
    return f"method.placement={','.join(places)}"
