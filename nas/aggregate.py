"""Turn a sweep folder (Hydra multirun, possibly nested) into runs.csv, summary.csv/.md and summary.png.

A row of the summary is one (task, method, variant label); the label names the ``variant`` keys whose value
differs among the runs of the same (task, method), and the seeds are the replicates. From a notebook::

    from nas.aggregate import load_runs, summarize, to_markdown
    runs = load_runs("logs/multiruns/2025-01-01_12-00-00")
    print(to_markdown(summarize(runs)))

Reading, grouping and statistics live here; the tables and the figure in nas/aggregate_report.py.
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from nas.aggregate_report import plot_summary, to_markdown, write_tables
from nas.errors import ConfigError

Status = Literal["finished", "failed", "unfinished"]
# Variant keys looked up in .hydra/config.yaml for a run without metrics.json when no finished run of the
# same (task, method) says which keys it has.
DEFAULT_VARIANT_KEYS = ("relaxation", "discretizer", "rho", "hypergradient", "retrain_init", "operator", "rank")
MISSING = "?"


class AggregateWarning(UserWarning):
    """A run folder that could not be read completely; the aggregation goes on without it."""


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
    error: str | None = None


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


def _read_selection(run_dir: Path) -> list[str] | None:
    path = run_dir / "selection.json"
    if not path.is_file():
        return None
    try:
        return [str(name) for name in json.loads(path.read_text())["selected"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"{path}: unreadable ({error}); its selection is left out", AggregateWarning, stacklevel=4)
        return None


def _load_one(run_dir: Path, root: Path) -> tuple[RunRecord, dict[str, Any]]:
    rel_dir = run_dir.relative_to(root).as_posix()
    flat = _flat_config(run_dir)
    metrics_path = run_dir / "metrics.json"
    record = None
    if metrics_path.is_file():
        try:
            record = _finished_record(json.loads(metrics_path.read_text()), run_dir, rel_dir)
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
        record.method = str(flat.get("method.name", flat.get("method", MISSING)))  # a group, or a plain string
        record.seed = flat.get("seed")
    record.selected = _read_selection(run_dir)
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


def _median(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.median(kept) if kept else None


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the values given; (None, None) when empty, std None for one value."""
    array = np.array([v for v in values if v is not None], dtype=float)
    if array.size == 0:
        return None, None
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else None


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A∩B| / |A∪B|; two empty sets count as identical (1.0)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_pairwise_jaccard(sets: Sequence[Iterable[str]]) -> float | None:
    """Mean Jaccard index over all pairs; None with fewer than two sets."""
    sets = [set(s) for s in sets]
    if len(sets) < 2:
        return None
    return float(np.mean([jaccard(a, b) for a, b in combinations(sets, 2)]))


def summarize(runs: Sequence[RunRecord]) -> list[GroupSummary]:
    """One GroupSummary per (task, method, label), sorted; labels are recomputed from ``runs`` as given."""
    varying = _varying(runs)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        groups[(run.task, run.method, _label(varying[i]))].append(i)
    summaries = []
    for (task, method, label), indices in sorted(groups.items()):
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
            wall_s=_median(r.total_wall_s for r in done),
            stability=mean_pairwise_jaccard([r.selected for r in done if r.selected is not None]),
            failed=sum(r.status == "failed" for r in members),
            unfinished=sum(r.status == "unfinished" for r in members),
            not_finished=[f"{r.rel_dir}: {r.status}" + (f" ({r.error})" if r.error else "")
                          for r in members if r.status != "finished"]))
    return summaries


__all__ = ["AggregateWarning", "GroupSummary", "RunRecord", "aggregate", "find_run_dirs", "jaccard", "load_runs",
           "mean_pairwise_jaccard", "mean_std", "plot_summary", "summarize", "to_markdown", "variant_labels",
           "write_tables"]


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """load_runs → summarize → tables and plot in ``out_dir`` (default ``<sweep_dir>/aggregate``)."""
    runs = load_runs(sweep_dir)
    summaries = summarize(runs)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir).expanduser() / "aggregate"
    paths = write_tables(summaries, runs, out)
    paths["summary_png"] = plot_summary(summaries, out / "summary.png")
    return paths
