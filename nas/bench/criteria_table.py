"""One table of every selection criterion, judged against planted truth and against real utility.

    diffora bench criteria --planted logs/multiruns/planted_heldout \\
        --real benchmarks/placement/minilm_stsb.json logs/multiruns/budget_curve_stsb logs/multiruns/fixed_stsb

Columns, each a mean with its 95% Student t-interval and its n:

* **planted precision@|S|** and **planted AUC**: ``recovery.by_criterion`` of each finished planted run
  (objectives/planted.py), one value per run, so n counts planted sets (each held-out set one search);
* per placement table (a real task): **τ**, Kendall's τ-b between the criterion's module scores and the table's
  single-module utilities, n = seeds; and **pct@k**, the percentile of the criterion's k modules, trained as a fixed
  placement, among the table's random k-subsets of the same seed (50: what a random selection gets), n = seeds
  (nas/bench/score.py). ``<name> (within_type)`` rows rank by z-scores within each module type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from nas.bench.placement import PlacementTable, read_table
from nas.bench.score import OverSeeds, Scoring, read_runs, score
from nas.errors import ConfigError
from nas.reporting.run_records import find_run_dirs, load_run


def planted_recovery(sweep_dirs: Sequence[Path]) -> dict[str, dict[str, OverSeeds]]:
    """criterion → {"precision": …, "auc": …} over the finished planted runs under ``sweep_dirs`` (one value per
    run), read as ``diffora aggregate`` reads them (nas/reporting/run_records.py); a folder without finished planted
    runs is refused."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    runs = 0
    for root in map(Path, sweep_dirs):
        for run_dir in find_run_dirs(root):
            record = load_run(run_dir, root)
            if record.status != "finished" or record.recovery is None:
                continue
            for name, (precision, auc) in record.recovery.by_criterion.items():
                values.setdefault(name, {}).setdefault("precision", {})[runs] = precision
                if auc is not None:
                    values[name].setdefault("auc", {})[runs] = auc
            runs += 1
    if not runs:
        raise ConfigError(f"no finished planted runs under {', '.join(map(str, sweep_dirs))}: pass the sweep folders "
                          "of experiment=planted_heldout (and planted_heldout_grid)")
    return {name: {key: OverSeeds.of(v) for key, v in by_key.items()} for name, by_key in values.items()}


def _cell(over: OverSeeds | None, signed: bool = False) -> str:
    if over is None or over.mean is None:
        return "—"
    number = f"{over.mean:+.2f}" if signed else f"{over.mean:.2f}"
    ci = "" if over.ci is None else (f" [{over.ci[0]:+.2f}, {over.ci[1]:+.2f}]" if signed
                                     else f" [{over.ci[0]:.2f}, {over.ci[1]:.2f}]")
    return f"{number}{ci} ({len(over.by_seed)})"


def _percentile_of(scoring: Scoring, criterion: str) -> OverSeeds | None:
    """The percentile entry whose label names ``criterion`` (labels join the criteria that chose one set by ' = ')."""
    return next((over for label, over in scoring.percentiles.items() if criterion in label.split(" = ")), None)


def criteria_table(planted: Mapping[str, Mapping[str, OverSeeds]], real: Mapping[str, tuple[PlacementTable, Scoring]],
                   k: int) -> str:
    """Markdown: one row per criterion, the planted columns, then τ and pct@k for each real task."""
    names = sorted(set(planted) | {name for _, scoring in real.values() for name in scoring.agreement})
    header = ["criterion", "planted precision@|S|", "planted AUC"]
    for task in real:
        header += [f"{task} τ", f"{task} pct@{k}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        row = [name, _cell(planted.get(name, {}).get("precision")), _cell(planted.get(name, {}).get("auc"))]
        for _, scoring in real.values():
            agreement = scoring.agreement.get(name)
            row += [_cell(agreement[1] if agreement else None, signed=True), _cell(_percentile_of(scoring, name))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Cells: mean [95% t-interval] (n: planted sets, or seeds). — : not measured.")
    lines += [f"{task}, {note}" for task, (_, scoring) in real.items() for note in scoring.notes]
    return "\n".join(lines)


def build(planted_dirs: Sequence[Path], real: Sequence[Sequence[Path]], k: int) -> str:
    """The table from planted sweep folders and, for each real task, [placement table, run folder, …]."""
    scored = {}
    for table_path, *run_dirs in real:
        if not run_dirs:
            raise ConfigError(f"--real {table_path}: name the run folders to score after the table")
        table = PlacementTable.of(read_table(table_path))
        scored[Path(table_path).stem] = (table, score(table, read_runs(run_dirs, table), k))
    return criteria_table(planted_recovery(planted_dirs) if planted_dirs else {}, scored, k)
