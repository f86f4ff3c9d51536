"""Reading a sweep folder: one :class:`RunRecord` per run folder, from its metrics.json, selection.json and
.hydra/config.yaml, finished or not. Grouping, statistics and tables live in nas/reporting/aggregate.py."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Status = Literal["finished", "failed", "unfinished"]
# Variant keys looked up in .hydra/config.yaml for a run without metrics.json when no finished run of the
# same (task, method) says which keys it has.
DEFAULT_VARIANT_KEYS = ("relaxation", "discretizer", "rho", "hypergradient", "retrain_init", "prune_stages", "operator",
                        "rank")
MISSING = "?"
# Variant keys whose metrics.json value is built from several config entries (e.g. alpha_optimizer = name@lr,
# balance_lr = off | bilevel.balance_space, branch_size_units = null without branch_size, search_steps = bilevel.steps
# or else task.search_steps): a config lookup cannot reproduce them, so a run without metrics.json leaves them unknown
# rather than showing a value of another kind.
DERIVED_VARIANT_KEYS = frozenset({"alpha_optimizer", "balance_lr", "branch_size_units", "dam_init", "search_steps",
                                  "w_optimizer"})


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


def config_value(flat: dict[str, Any], key: str) -> Any:
    """A variant key's value in the run config: ``<key>.name`` or the one leaf named ``key``; MISSING if unsure, and
    always for the keys that metrics.json derives (``DERIVED_VARIANT_KEYS``)."""
    if key in DERIVED_VARIANT_KEYS:
        return MISSING
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


def load_run(run_dir: Path, root: Path) -> tuple[RunRecord, dict[str, Any]]:
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
