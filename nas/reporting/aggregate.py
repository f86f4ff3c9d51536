"""Turn a sweep folder (Hydra multirun, possibly nested) into runs.csv, summary.csv/.md and summary.png.

A row of the summary is one (task, method, variant label); the label names the ``variant`` keys whose value
differs among the runs of the same (task, method), and the seeds are the replicates. From a notebook::

    from nas.reporting.aggregate import load_runs, paired_differences, summarize, to_markdown
    runs = load_runs("logs/multiruns/2025-01-01_12-00-00")
    print(to_markdown(summarize(runs), paired_differences(runs, reference="random")))

Grouping and pairing live here; reading the run folders in nas/reporting/run_records.py; the formulas (paired
tests, bootstrap CI, Jaccard chance) in nas/reporting/statistics.py; the tables and the figure in
nas/reporting/aggregate_report.py.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.reporting.aggregate_report import plot_summary, to_markdown, write_tables
from nas.reporting.run_records import (  # noqa: F401 (AggregateWarning, Recovery, RunRecord: public here too)
    DEFAULT_VARIANT_KEYS,
    MISSING,
    AggregateWarning,
    Recovery,
    RunRecord,
    config_value,
    find_run_dirs,
    load_run,
)
from nas.reporting.statistics import (
    PairedComparison,
    PairedReport,
    jaccard,
    mean_pairwise_jaccard,
    mean_pairwise_jaccard_chance,
    mean_std,
    median,
    paired_comparisons,
)

DEFAULT_REFERENCE = "random"


@dataclass
class RecoverySummary:
    """Recovery of the planted set over the n seeds that recorded it: (mean, std) of precision and AUC."""

    n: int
    precision: tuple[float | None, float | None]
    auc: tuple[float | None, float | None]
    chance: float | None


@dataclass
class StandIns:
    """Over the n seeds of a planted run: how often each planted module was left out of the selection (``missed``)
    and how often each other module was selected in its place (``extra``), most frequent first."""

    n: int
    missed: list[tuple[str, int]]
    extra: list[tuple[str, int]]


@dataclass
class GroupSummary:
    """Seeds of one (task, method, label); std is the sample std (None below two seeds)."""

    task: str
    method: str
    label: str
    variant: dict[str, Any]
    n: int
    seeds: list[int]
    main_metric: str | None
    score_mean: float | None
    score_std: float | None
    metrics: dict[str, tuple[float | None, float | None]]
    baseline: float | None
    trainable_params: float | None
    effective_params: float | None
    wall_s: float | None  # median over seeds: robust to a run slowed by other work on the machine
    stability: float | None
    failed: int
    unfinished: int
    not_finished: list[str] = field(default_factory=list)
    stability_chance: float | None = None  # expected mean pairwise Jaccard of uniformly random selections
    recovery: RecoverySummary | None = None  # None when no seed recorded recovery
    recovery_by_criterion: dict[str, RecoverySummary] = field(default_factory=dict)
    stand_ins: StandIns | None = None  # None when no seed recorded recovery with a selection


# ---------------------------------------------------------------- reading


def load_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run folder under ``sweep_dir`` (nested sweeps too), finished or not, with its variant label."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"sweep folder {root} does not exist: expected the hydra.sweep.dir of a multirun "
                          "(or a folder holding several)")
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise ConfigError(f"no runs found under {root}: expected run folders holding metrics.json, FAILED "
                          "or .hydra/ (is this the hydra.sweep.dir of a multirun?)")
    loaded = [load_run(run_dir, root) for run_dir in run_dirs]
    keys_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record, _ in loaded:
        if record.status == "finished":
            keys = keys_of[(record.task, record.method)]
            keys.extend(k for k in record.variant if k not in keys)
    for record, flat in loaded:
        if record.status != "finished" and flat:
            keys = keys_of.get((record.task, record.method)) or DEFAULT_VARIANT_KEYS
            derived = {key: config_value(flat, key) for key in keys}
            record.variant = {key: value for key, value in derived.items() if value != MISSING}
    records = [record for record, _ in loaded]
    for record, label in zip(records, variant_labels(records), strict=True):
        record.label = label
    return sorted(records, key=lambda r: (r.task, r.method, r.label, r.seed if isinstance(r.seed, int) else -1,
                                          r.rel_dir))


# ---------------------------------------------------------------- grouping and statistics


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _varying(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Per run, its values of the variant keys that differ within its (task, method); MISSING where it lacks one."""
    by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        by_pair[(run.task, run.method)].append(i)
    result: list[dict[str, Any]] = [{} for _ in runs]
    for indices in by_pair.values():
        keys: list[str] = []
        for i in indices:
            keys.extend(k for k in runs[i].variant if k not in keys)
        varying = [k for k in keys if len({_canon(runs[i].variant[k]) for i in indices if k in runs[i].variant}) > 1]
        for i in indices:
            result[i] = {k: runs[i].variant.get(k, MISSING) for k in varying}
    return result


def _label(variant: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_format_value(value)}" for key, value in variant.items())


def variant_labels(runs: Sequence[RunRecord]) -> list[str]:
    """The label of each run: ``key=value`` of the variant keys that vary within its (task, method)."""
    return [_label(variant) for variant in _varying(runs)]


def _groups(runs: Sequence[RunRecord]) -> dict[tuple[str, str, str], list[int]]:
    """Indices of the runs of each (task, method, label), sorted by key; labels recomputed from ``runs``."""
    varying = _varying(runs)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        groups[(run.task, run.method, _label(varying[i]))].append(i)
    return dict(sorted(groups.items()))


def _stability_chance(done: Sequence[RunRecord]) -> float | None:
    """Chance level of the stability: None below two selections or when their num_candidates are unknown/differ."""
    with_selection = [r for r in done if r.selected is not None]
    spaces = {r.num_candidates for r in with_selection}
    if len(with_selection) < 2 or len(spaces) != 1 or None in spaces:
        return None
    try:
        return mean_pairwise_jaccard_chance([len(set(r.selected or [])) for r in with_selection], int(spaces.pop()))
    except ValueError as error:  # a selection larger than its space: inconsistent files, no chance level
        warnings.warn(f"{with_selection[0].task} {with_selection[0].method}: {error}", AggregateWarning, stacklevel=3)
        return None


def _recovery(values: Sequence[tuple[float, float | None, float | None]]) -> RecoverySummary | None:
    """(precision, auc, chance) of each seed → RecoverySummary; None without any."""
    if not values:
        return None
    return RecoverySummary(n=len(values), precision=mean_std(v[0] for v in values),
                           auc=mean_std(v[1] for v in values), chance=mean_std(v[2] for v in values)[0])


def _recovery_by_criterion(done: Sequence[RunRecord]) -> dict[str, RecoverySummary]:
    values: dict[str, list[tuple[float, float | None, float | None]]] = defaultdict(list)
    for r in done:
        for name, (precision, auc) in (r.recovery.by_criterion.items() if r.recovery else ()):
            values[name].append((precision, auc, r.recovery.chance if r.recovery else None))
    return {name: summary for name, v in values.items() if (summary := _recovery(v)) is not None}


def _most_common(counts: Counter[str]) -> list[tuple[str, int]]:
    """(name, count), most frequent first, ties by name (stable across runs)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _stand_ins(done: Sequence[RunRecord]) -> StandIns | None:
    """Counts of missed planted modules and of the modules selected instead, over the seeds with both a recovery and
    a selection (derived here from metrics.json's planted set and selection.json); None without any."""
    judged = [r for r in done if r.recovery is not None and r.selected is not None]
    if not judged:
        return None
    missed: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    for r in judged:
        truth, chosen = set(r.recovery.planted), set(r.selected)
        missed.update(truth - chosen)
        extra.update(chosen - truth)
    return StandIns(len(judged), _most_common(missed), _most_common(extra))


def summarize(runs: Sequence[RunRecord]) -> list[GroupSummary]:
    """One GroupSummary per (task, method, label), sorted; labels are recomputed from ``runs`` as given."""
    varying = _varying(runs)
    summaries = []
    for (task, method, label), indices in _groups(runs).items():
        members = [runs[i] for i in indices]
        done = [r for r in members if r.status == "finished"]
        mains = Counter(r.main_metric for r in done if r.main_metric)
        main = mains.most_common(1)[0][0] if mains else None
        names: list[str] = []
        for r in done:
            names.extend(k for k in r.metrics if k not in names)
        score_mean, score_std = mean_std(r.score for r in done)
        summaries.append(GroupSummary(
            task=task, method=method, label=label, variant=varying[indices[0]], n=len(done),
            seeds=[r.seed for r in done if r.seed is not None], main_metric=main,
            score_mean=score_mean, score_std=score_std,
            metrics={name: mean_std(r.metrics.get(name) for r in done) for name in names},
            baseline=mean_std(r.majority_baseline.get(main) for r in done)[0] if main else None,
            trainable_params=mean_std(r.trainable_params for r in done)[0],
            effective_params=mean_std(r.effective_params for r in done)[0],
            wall_s=median(r.total_wall_s for r in done),
            stability=mean_pairwise_jaccard([r.selected for r in done if r.selected is not None]),
            failed=sum(r.status == "failed" for r in members),
            unfinished=sum(r.status == "unfinished" for r in members),
            not_finished=[f"{r.rel_dir}: {r.status}" + (f" ({r.error})" if r.error else "")
                          for r in members if r.status != "finished"],
            stability_chance=_stability_chance(done),
            recovery=_recovery([(r.recovery.precision, r.recovery.auc, r.recovery.chance)
                                for r in done if r.recovery is not None]),
            recovery_by_criterion=_recovery_by_criterion(done), stand_ins=_stand_ins(done)))
    return summaries


PAIRED_QUANTITIES = {"score": lambda r: r.score,
                     "recovery precision": lambda r: r.recovery.precision if r.recovery is not None else None}


def _scores_by_seed(runs: Sequence[RunRecord], where: str, quantity: str = "score") -> dict[Any, float]:
    """Seed → ``quantity`` (PAIRED_QUANTITIES) of the finished runs with a seed and that quantity; a seed run twice is
    averaged (with a warning)."""
    value = PAIRED_QUANTITIES[quantity]
    scores: dict[Any, list[float]] = defaultdict(list)
    for r in runs:
        x = value(r) if r.status == "finished" and r.seed is not None else None
        if x is not None:
            scores[r.seed].append(float(x))
    for seed, values in scores.items():
        if len(values) > 1:
            warnings.warn(f"{where}: seed {seed} has {len(values)} finished runs; their mean score is paired",
                          AggregateWarning, stacklevel=3)
    return {seed: float(np.mean(values)) for seed, values in scores.items()}


def paired_differences(runs: Sequence[RunRecord], reference: str = DEFAULT_REFERENCE,
                       reference_label: str | None = None, quantity: str = "score") -> PairedReport:
    """Per task, every (method, label) row against the ``reference`` method's row, seed by seed (runs sharing a
    seed share data order and split): ``nas.reporting.statistics.paired_comparisons`` on the finished runs' scores,
    or with ``quantity="recovery precision"`` on the planted runs' recovery precision (rows without recovery have no
    values and are left out)."""
    if quantity not in PAIRED_QUANTITIES:
        raise ValueError(f"quantity={quantity!r} is unknown; choose one of: {', '.join(PAIRED_QUANTITIES)}")
    rows = {key: _scores_by_seed([runs[i] for i in indices], " ".join(key).rstrip(), quantity)
            for key, indices in _groups(runs).items()}
    return paired_comparisons({key: scores for key, scores in rows.items() if scores}, reference, reference_label,
                              quantity)


__all__ = ["AggregateWarning", "GroupSummary", "PairedComparison", "PairedReport", "Recovery", "RecoverySummary",
           "RunRecord", "aggregate", "find_run_dirs", "jaccard", "load_runs", "mean_pairwise_jaccard", "mean_std",
           "paired_differences", "plot_summary", "summarize", "to_markdown", "variant_labels", "write_tables"]


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None, *, reference: str = DEFAULT_REFERENCE,
              reference_label: str | None = None) -> dict[str, Path]:
    """load_runs → summarize and paired_differences (of the scores and, where runs recorded recovery, of the recovery
    precision) → tables and plot in ``out_dir`` (default ``<sweep_dir>/aggregate``): runs.csv, summary.csv,
    summary.md, paired.csv and summary.png."""
    runs = load_runs(sweep_dir)
    summaries = summarize(runs)
    paired = paired_differences(runs, reference, reference_label)
    recovery = paired_differences(runs, reference, reference_label, "recovery precision")
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir).expanduser() / "aggregate"
    paths = write_tables(summaries, runs, out, paired, recovery)
    paths["summary_png"] = plot_summary(summaries, out / "summary.png")
    return paths
