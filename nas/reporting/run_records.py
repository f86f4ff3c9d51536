"""Reading a sweep folder: one :class:`RunRecord` per run folder, finished or not: its results from metrics.json and
selection.json, its config from fingerprint.json (or, for older runs, .hydra/config.yaml). Grouping, statistics and
tables live in nas/reporting/aggregate.py."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from nas.engine import identity

Status = Literal["finished", "failed", "unfinished"]
# Where RunRecord.config was read from; "metrics.json variant" is the fallback for runs that kept neither config file.
ConfigSource = Literal["fingerprint.json", ".hydra/config.yaml", "metrics.json variant", "none"]
FULL_CONFIG_SOURCES: tuple[ConfigSource, ...] = ("fingerprint.json", ".hydra/config.yaml")
MISSING = "?"


class AggregateWarning(UserWarning):
    """A run folder that could not be read completely; the aggregation goes on without it."""


@dataclass
class Recovery:
    """metrics.json's ``recovery`` on a planted task with planted set S of N candidates: precision = precision@|S| of
    the driving criterion (|selected ∩ S| / |selected| for a method without scores; objectives/planted.py),
    auc = ROC-AUC of the per-module scores against membership of S (None where undefined), chance = |S| / N;
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
    variant: dict[str, Any] = field(default_factory=dict)  # metrics.json's own summary: shown in runs.csv, not grouped
    config: dict[str, Any] = field(default_factory=dict)  # flat, without volatile keys: see read_config
    config_source: ConfigSource = "none"
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
    dev_examples: int | None = None
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


def _resolved(cfg: DictConfig, key: str, raw: Any) -> Any:
    """``raw`` (a leaf of ``cfg`` at dotted ``key``) with its ``${…}`` interpolations resolved where that is possible
    outside the run (``${seed}``, ``${task.search_steps}``); else the raw value, compared as text."""
    if "${" not in json.dumps(raw, default=str):
        return raw
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    except Exception:  # noqa: BLE001 (any resolver may fail here: a run-time resolver, an unset variable)
        return raw


def _hydra_config(path: Path) -> dict[str, Any] | None:
    """.hydra/config.yaml as flat ``{dotted.key: value}`` without identity.is_volatile keys, interpolations resolved
    where possible (:func:`_resolved`) and JSON-normalized like identity.config_identity; None when unreadable."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 (OSError, YAML and OmegaConf errors alike)
        warnings.warn(f"{path}: unreadable ({type(error).__name__}: {error}); the run is grouped without its config",
                      AggregateWarning, stacklevel=4)
        return None
    if not isinstance(cfg, DictConfig):
        return None
    raw = identity.flatten(OmegaConf.to_container(cfg, resolve=False))
    flat = {key: _resolved(cfg, key, value) for key, value in raw.items() if not identity.is_volatile(key)}
    return json.loads(json.dumps(flat, default=str))


def read_config(run_dir: Path) -> tuple[dict[str, Any], ConfigSource]:
    """The run's flat config without volatile keys (nas/engine/identity.py), and where it was read: fingerprint.json's
    ``config`` (written by the run before its work, resolved), else .hydra/config.yaml (runs older than
    fingerprint.json; see :func:`_hydra_config`); ``({}, "none")`` without either."""
    record = identity.read(run_dir / identity.FILENAME)
    if record is not None and isinstance(record["config"], dict):
        flat = {key: value for key, value in record["config"].items() if not identity.is_volatile(key)}
        return flat, "fingerprint.json"
    path = run_dir / ".hydra" / "config.yaml"
    flat = _hydra_config(path) if path.is_file() else None
    return (flat, ".hydra/config.yaml") if flat is not None else ({}, "none")


def _number(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def task_name(config: dict[str, Any]) -> str:
    """The task as metrics.json names it, from a flat config: ``task.name``, or for ``task=planted`` the problem as
    objectives.planted.PlantedSpec.label names it, ``planted-<pattern>-<target>``, ``x<outputs>`` when outputs > 1,
    then ``-effect<e>`` or (without an effect) ``-size<s>``; MISSING without ``task.name``."""
    name = str(config.get("task.name", MISSING))
    if name != "planted":
        return name
    outputs = config.get("task.outputs") or 1
    effect = config.get("task.effect")
    strength = f"-effect{_number(effect)}" if effect is not None else f"-size{_number(config.get('task.size'))}"
    return (f"planted-{config.get('task.pattern', MISSING)}-{config.get('task.target', MISSING)}"
            + (f"x{outputs}" if str(outputs) != "1" else "") + strength)


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
        dev_examples=_optional(data, "dev_examples"),
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


def load_run(run_dir: Path, root: Path) -> RunRecord:
    """The run folder's RunRecord: results from metrics.json (task, method and seed from its config where there is
    none), config from :func:`read_config`, or, for a finished run without either config file, metrics.json's
    ``variant`` (``config_source="metrics.json variant"``)."""
    rel_dir = run_dir.relative_to(root).as_posix()
    config, source = read_config(run_dir)
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
        record.task = task_name(config)
        record.method = str(config.get("method.name", config.get("method", MISSING)))  # a group, or a plain string
        record.seed = config.get("seed")
    elif source == "none" and record.variant:
        config, source = dict(record.variant), "metrics.json variant"
    record.config, record.config_source = config, source
    record.selected, candidates = _read_selection(run_dir)
    record.num_candidates = candidates if candidates is not None else record.num_candidates
    return record
