"""``diffora bench``: build a placement table from sweeps, show it, and score criteria against it.

    diffora bench build logs/multiruns/placement_stsb --out benchmarks/placement/minilm_stsb.json
    diffora bench show benchmarks/placement/minilm_stsb.json
    diffora bench score benchmarks/placement/minilm_stsb.json logs/multiruns/criteria_stsb [--k 9]
    diffora bench placements model=roberta_base        # the placement list of another model's search space
    diffora bench criteria --planted logs/multiruns/planted_heldout \
        --real benchmarks/placement/minilm_stsb.json logs/multiruns/budget_curve_stsb   # one table of every criterion
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.bench.placement import PlacementTable, build_table, read_table, write_table
from nas.bench.score import read_runs, score

USAGE = "diffora bench {build,show,score,placements,criteria} ..."


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
    table = sub.add_parser("criteria", help="one table of every criterion: planted truth and real utility")
    table.add_argument("--planted", nargs="+", type=Path, default=[], help="planted sweep folders (held-out sets)")
    table.add_argument("--real", nargs="+", type=Path, action="append", default=[], metavar="TABLE RUN_DIR",
                       help="a placement table, then the run folders to score against it; repeat per task")
    table.add_argument("--k", type=int, default=9, help="selection size judged by percentile (default 9)")
    args = parser.parse_args(argv)
    if args.action == "criteria":
        from nas.bench.criteria_table import build

        print(build(args.planted, args.real, args.k))
    elif args.action == "build":
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


def score_runs(table: PlacementTable, run_dirs: list[Path], k: int) -> str:
    """Markdown of :func:`nas.bench.score.score` on the finished runs under ``run_dirs``."""
    scoring = score(table, read_runs(run_dirs, table), k)
    lines = ["| criterion | Spearman (mean, 95% CI) | Kendall τ (mean, 95% CI) | seeds |", "|---|---|---|---:|"]
    for name, (spearman, kendall) in scoring.agreement.items():
        lines.append(f"| {name} | {_fmt(spearman.mean, True)} {_ci(spearman)} | {_fmt(kendall.mean, True)} "
                     f"{_ci(kendall)} | {len(spearman.by_seed)} |")
    lines += ["", f"| trained {k}-module placement | percentile among random {k}-subsets (mean, 95% CI) | seeds |",
              "|---|---|---:|"]
    for label, over in scoring.percentiles.items():
        lines.append(f"| {label} | {_fmt(over.mean)} {_ci(over)} | {len(over.by_seed)} |")
    lines += ["", f"not trained yet: each selection of {k} modules (the oracle's from the mean utility of the other "
              "seeds), to train as method=fixed method.placement=list seed=<seed>:"]
    lines += [f"  seed {seed}: method.modules=[{','.join(modules)}]  ({', '.join(labels)})"
              for (seed, modules), labels in scoring.untrained.items()]
    lines += [f"note: {note}" for note in scoring.notes]
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
