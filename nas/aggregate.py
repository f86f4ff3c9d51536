"""Turn a sweep folder (Hydra multirun, possibly nested) into runs.csv, summary.csv/.md and summary.png.

A row of the summary is one (task, method, variant label); the label names the ``variant`` keys whose value
differs among the runs of the same (task, method), and the seeds are the replicates. From a notebook::

    from nas.aggregate import load_runs, paired_differences, summarize, to_markdown
    runs = load_runs("logs/multiruns/2025-01-01_12-00-00")
    print(to_markdown(summarize(runs), paired_differences(runs, reference="random")))

Reading, grouping and pairing live here; the formulas (paired tests, bootstrap CI, Jaccard chance) in
nas/statistics.py; the tables and the figure in nas/aggregate_report.py.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from nas.aggregate_report import plot_summary, to_markdown, write_tables
from nas.errors import ConfigError
from nas.statistics import (
    PairedComparison,
    PairedReport,
    jaccard,
    mean_pairwise_jaccard,
    mean_pairwise_jaccard_chance,
    mean_std,
    median,
    paired_comparisons,
)

Status = Literal["finished", "failed", "unfinished"]
# Variant keys looked up in .hydra/config.yaml for a run without metrics.json when no finished run of the
# same (task, method) says which keys it has.
DEFAULT_VARIANT_KEYS = ("relaxation", "discretizer", "rho", "hypergradient", "retrain_init", "operator", "rank")
MISSING = "?"
DEFAULT_REFERENCE = "random"


class AggregateWarning(UserWarning):
    """A run folder that could not be read completely; the aggregation goes on without it."""


@dataclass
class Recovery:
    """metrics.json's ``recovery`` on a planted task with planted set S of N candidates: precision = |selected ∩ S| /
    |S|, auc = ROC-AUC of the per-module scores against membership of S (None where undefined), chance = |S| / N;
    ``by_criterion`` maps a scoring criterion to its (precision, auc)."""

    precision: float
    auc: float | None
    chance: float
    criterion: str
    planted: list[str]
    by_criterion: dict[str, tuple[float, float | None]] = field(default_factory=dict)


@dataclass
class RunRecord:
    """One run folder: what its metrics.json (and selection.json) says, or why there is none."""

    run_dir: Path
    rel_dir: str
    status: Status
    task: str = MISSING
    method: str = MISSING
    seed: int | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    main_metric: str | None = None
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    majority_baseline: dict[str, float] = field(default_factory=dict)
    trainable_params: int | None = None
    adapter_params: int | None = None
    effective_params: int | None = None
    total_params: int | None = None
    budget_target: int | None = None
    num_selected: int | None = None
    num_candidates: int | None = None
    train_steps: int | None = None
    search_steps: int | None = None
    search_wall_s: float | None = None
    train_wall_s: float | None = None
    eval_wall_s: float | None = None
    total_wall_s: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    selected: list[str] | None = None
    recovery: Recovery | None = None
    error: str | None = None


@dataclass
class RecoverySummary:
    """Recovery of the planted set over the n seeds that recorded it: (mean, std) of precision and AUC."""

    n: int
    precision: tuple[float | None, float | None]
    auc: tuple[float | None, float | None]
    chance: float | None


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


# ---------------------------------------------------------------- reading


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Folders holding metrics.json, FAILED or .hydra/, at any depth; a run folder is not searched further."""
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        if "metrics.json" in files or "FAILED" in files or ".hydra" in dirs:
            found.append(Path(root))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def _flat_config(run_dir: Path) -> dict[str, Any]:
    """.hydra/config.yaml as {dotted.path: value}; {} when absent or unreadable."""
    path = run_dir / ".hydra" / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(data if isinstance(data, dict) else {}, "")
    return flat


def _config_value(flat: dict[str, Any], key: str) -> Any:
    """A variant key's value in the run config: ``<key>.name`` or the one leaf named ``key``; MISSING if unsure."""
    if f"{key}.name" in flat:
        return flat[f"{key}.name"]
    matches = [value for path, value in flat.items() if path.rsplit(".", 1)[-1] == key]
    return matches[0] if len(matches) == 1 else MISSING


def _optional(data: dict[str, Any], *keys: str) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def _finished_record(data: dict[str, Any], run_dir: Path, rel_dir: str) -> RunRecord:
    """RunRecord of a metrics.json; KeyError/TypeError/ValueError when it lacks task, method or score."""
    metrics = {str(k): float(v) for k, v in (data.get("metrics") or {}).items() if v is not None}
    main = data.get("main_metric")
    score = data["score"] if data.get("score") is not None else metrics[main]
    trainable = _optional(data, "trainable_params")
    return RunRecord(
        run_dir=run_dir, rel_dir=rel_dir, status="finished", task=str(data["task"]), method=str(data["method"]),
        seed=data.get("seed"), variant=dict(data.get("variant") or {}), main_metric=main, score=float(score),
        metrics=metrics, majority_baseline=dict(data.get("majority_baseline") or {}), trainable_params=trainable,
        adapter_params=_optional(data, "adapter_params"),
        effective_params=_optional(data, "effective_params", "trainable_params"),
        total_params=_optional(data, "total_params"), budget_target=_optional(data, "budget_target"),
        num_selected=_optional(data, "num_selected"), num_candidates=_optional(data, "num_candidates"),
        train_steps=_optional(data, "train_steps", "retrain_steps"), search_steps=_optional(data, "search_steps"),
        search_wall_s=_optional(data, "search_wall_s"), train_wall_s=_optional(data, "train_wall_s", "retrain_wall_s"),
        eval_wall_s=_optional(data, "eval_wall_s"), total_wall_s=_optional(data, "total_wall_s"),
        diagnostics=dict(data.get("diagnostics") or {}))


def _first_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[0][:200] if lines else ""


def _read_selection(run_dir: Path) -> tuple[list[str] | None, int | None]:
    """selection.json's ``selected`` and ``num_candidates`` (None where absent or unreadable)."""
    path = run_dir / "selection.json"
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
        candidates = data.get("num_candidates")
        return [str(name) for name in data["selected"]], None if candidates is None else int(candidates)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"{path}: unreadable ({error}); its selection is left out", AggregateWarning, stacklevel=4)
        return None, None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _read_recovery(data: Any, path: Path) -> Recovery | None:
    """metrics.json's ``recovery`` block; None when absent, or (with a warning) when malformed."""
    if data is None:
        return None
    try:
        by_criterion = {str(name): (float(entry["precision"]), _optional_float(entry.get("auc")))
                        for name, entry in (data.get("by_criterion") or {}).items()}
        return Recovery(precision=float(data["precision"]), auc=_optional_float(data.get("auc")),
                        chance=float(data["chance"]), criterion=str(data.get("criterion") or ""),
                        planted=[str(name) for name in data.get("planted") or []], by_criterion=by_criterion)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        warnings.warn(f"{path}: malformed recovery ({type(error).__name__}: {error}); expected {{precision, auc, "
                      "chance, planted, criterion, by_criterion}, the run's recovery is left out", AggregateWarning,
                      stacklevel=4)
        return None


def _load_one(run_dir: Path, root: Path) -> tuple[RunRecord, dict[str, Any]]:
    rel_dir = run_dir.relative_to(root).as_posix()
    flat = _flat_config(run_dir)
    metrics_path = run_dir / "metrics.json"
    record = None
    if metrics_path.is_file():
        try:
            data = json.loads(metrics_path.read_text())
            record = _finished_record(data, run_dir, rel_dir)
            record.recovery = _read_recovery(data.get("recovery"), metrics_path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            message = f"unreadable metrics.json ({type(error).__name__}: {error})"
            warnings.warn(f"{metrics_path}: {message}; counted as failed", AggregateWarning, stacklevel=3)
            record = RunRecord(run_dir, rel_dir, "failed", error=message)
    elif (run_dir / "FAILED").exists():
        record = RunRecord(run_dir, rel_dir, "failed", error=_first_line(run_dir / "FAILED") or None)
    else:
        record = RunRecord(run_dir, rel_dir, "unfinished")
    if record.status != "finished":
        record.task = str(flat.get("task.name", MISSING))
        if record.task == "planted":  # finished planted runs name their problem (PlantedSpec.label)
            record.task = f"planted-{flat.get('task.pattern', MISSING)}-{flat.get('task.target', MISSING)}"
        record.method = str(flat.get("method.name", flat.get("method", MISSING)))  # a group, or a plain string
        record.seed = flat.get("seed")
    record.selected, candidates = _read_selection(run_dir)
    record.num_candidates = candidates if candidates is not None else record.num_candidates
    return record, flat


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
    loaded = [_load_one(run_dir, root) for run_dir in run_dirs]
    keys_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record, _ in loaded:
        if record.status == "finished":
            keys = keys_of[(record.task, record.method)]
            keys.extend(k for k in record.variant if k not in keys)
    for record, flat in loaded:
        if record.status != "finished" and flat:
            keys = keys_of.get((record.task, record.method)) or DEFAULT_VARIANT_KEYS
            derived = {key: _config_value(flat, key) for key in keys}
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
            recovery_by_criterion=_recovery_by_criterion(done)))
    return summaries


def _scores_by_seed(runs: Sequence[RunRecord], where: str) -> dict[Any, float]:
    """Seed → score of the finished runs with a seed; a seed run twice is averaged (with a warning)."""
    scores: dict[Any, list[float]] = defaultdict(list)
    for r in runs:
        if r.status == "finished" and r.score is not None and r.seed is not None:
            scores[r.seed].append(r.score)
    for seed, values in scores.items():
        if len(values) > 1:
            warnings.warn(f"{where}: seed {seed} has {len(values)} finished runs; their mean score is paired",
                          AggregateWarning, stacklevel=3)
    return {seed: float(np.mean(values)) for seed, values in scores.items()}


def paired_differences(runs: Sequence[RunRecord], reference: str = DEFAULT_REFERENCE,
                       reference_label: str | None = None) -> PairedReport:
    """Per task, every (method, label) row against the ``reference`` method's row, seed by seed (runs sharing a
    seed share data order and split): ``nas.statistics.paired_comparisons`` on the finished runs' scores."""
    rows = {key: _scores_by_seed([runs[i] for i in indices], " ".join(key).rstrip())
            for key, indices in _groups(runs).items()}
    return paired_comparisons({key: scores for key, scores in rows.items() if scores}, reference, reference_label)


__all__ = ["AggregateWarning", "GroupSummary", "PairedComparison", "PairedReport", "Recovery", "RecoverySummary",
           "RunRecord", "aggregate", "find_run_dirs", "jaccard", "load_runs", "mean_pairwise_jaccard", "mean_std",
           "paired_differences", "plot_summary", "summarize", "to_markdown", "variant_labels", "write_tables"]


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None, *, reference: str = DEFAULT_REFERENCE,
              reference_label: str | None = None) -> dict[str, Path]:
    """load_runs → summarize and paired_differences → tables and plot in ``out_dir`` (default
    ``<sweep_dir>/aggregate``): runs.csv, summary.csv, summary.md, paired.csv and summary.png."""
    runs = load_runs(sweep_dir)
    summaries = summarize(runs)
    paired = paired_differences(runs, reference, reference_label)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir).expanduser() / "aggregate"
    paths = write_tables(summaries, runs, out, paired)
    paths["summary_png"] = plot_summary(summaries, out / "summary.png")
    return paths
