"""The placement benchmark's table: what LoRA on a given set of modules reaches on one (model, task), by seed.

Built from the runs of ``experiment=placement_bench`` (``method=fixed``, nas/methods/fixed.py), one JSON file per
(model, task) under ``benchmarks/placement/``. A table holds

* ``candidates``: the N candidate modules in the search space's order;
* ``config``: the flat config every run shares (nas/engine/identity.py), without ``seed`` and ``method.placement``;
  ``files``: the digests of the model and data files they read; ``code_versions``: the commits that ran them;
* ``runs``: per run its ``placement`` (``none``, ``all``, ``single:i``, ``draw:k:j``, ``list``), ``seed``, the
  ``modules`` that carried LoRA, the main metric's ``score`` and every dev metric.

From it (:class:`PlacementTable`): the head-only score h_s at seed s, module m's **utility** u_{m,s} = score of
``single:m`` at s − h_s, and the distribution of the scores of random k-subsets at s (``draw:k:*``). A table is
built from one or more sweep folders and an earlier table (runs are merged by (placement, seed); a run that
disagrees with the table's config is an error naming the keys), so it can grow over several sessions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.engine import identity
from nas.engine.outputs import write_json
from nas.errors import ConfigError
from nas.reporting.run_records import find_run_dirs

VERSION = 1
PER_RUN = ("seed", "method.placement", "method.modules")  # what varies between the runs of one table


def _read_run(run_dir: Path) -> dict[str, Any] | None:
    """A finished ``method=fixed`` run as a table row with its fingerprint; None for other or unfinished runs."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        selection = json.loads((run_dir / "selection.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("method") != "fixed":
        return None
    fingerprint = identity.read(run_dir / identity.FILENAME)
    if fingerprint is None:
        raise ConfigError(f"{run_dir} has no fingerprint.json, so it cannot be told apart from another "
                          f"configuration; rerun it with this version of diffora")
    return {"placement": selection.get("placement") or metrics["variant"]["placement"], "seed": int(metrics["seed"]),
            "modules": list(selection["selected"]), "score": float(metrics["score"]),
            "metrics": dict(metrics["metrics"]), "main_metric": metrics["main_metric"],
            "code_version": metrics.get("code_version", "unknown"), "_fingerprint": fingerprint,
            "_candidates": _candidates(selection)}


def _candidates(selection: Mapping[str, Any]) -> list[str]:
    """The search space's names in order, from selection.json's ``coordinates`` (layer, type) ordering."""
    coordinates = selection.get("coordinates") or {}
    return list(coordinates)


def _shared(fingerprint: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config = {k: v for k, v in fingerprint["config"].items() if k not in PER_RUN}
    return config, dict(fingerprint.get("files") or {})


def build_table(sweep_dirs: Sequence[str | Path], previous: Mapping[str, Any] | None = None,
                command: str | None = None) -> dict[str, Any]:
    """The table of the finished ``method=fixed`` runs under ``sweep_dirs``, merged into ``previous`` (a table read
    by :func:`read_table`); a run of another configuration or other inputs than the rest is a ConfigError."""
    rows: list[dict[str, Any]] = []
    for sweep in sweep_dirs:
        root = Path(sweep).expanduser()
        if not root.is_dir():
            raise ConfigError(f"sweep folder {root} does not exist: pass the hydra.sweep.dir of placement_bench runs")
        rows += [row for run_dir in find_run_dirs(root) if (row := _read_run(run_dir)) is not None]
    table = dict(previous) if previous else {}
    config, files = (table.get("config"), table.get("files")) if table else (None, None)
    candidates = table.get("candidates")
    for row in rows:
        row_config, row_files = _shared(row.pop("_fingerprint"))
        if config is None:
            config, files = row_config, row_files
        differ = identity.diff({"config": config, "files": files}, {"config": row_config, "files": row_files})
        if differ:
            raise ConfigError(f"a run of placement {row['placement']} seed {row['seed']} differs from the table's "
                              f"other runs: {'; '.join(differ[:6])}; build one table per configuration")
        row_candidates = row.pop("_candidates")
        candidates = candidates or row_candidates
        if row_candidates and row_candidates != candidates:
            raise ConfigError(f"placement {row['placement']} seed {row['seed']} ran on another search space; build "
                              f"one table per (model, space)")
    if config is None:
        raise ConfigError(f"no finished method=fixed run under {', '.join(map(str, sweep_dirs))} (and no earlier "
                          f"table): run experiment=placement_bench first")
    merged = {(r["placement"], r["seed"]): r for r in table.get("runs", [])}
    merged.update({(r["placement"], r["seed"]): r for r in rows})
    runs = sorted(merged.values(), key=lambda r: (r["seed"], _placement_order(r["placement"])))
    mains = {r.pop("main_metric", None) or table.get("main_metric") for r in runs}
    return {"version": VERSION, "model": config.get("model.name_or_path") or table.get("model"),
            "task": config.get("task.name"), "main_metric": sorted(m for m in mains if m)[0] if any(mains) else None,
            "candidates": candidates, "config": config, "files": files,
            "commands": sorted({*table.get("commands", []), *([command] if command else [])}),
            "code_versions": sorted({*table.get("code_versions", []), *(r["code_version"] for r in runs)}),
            "runs": runs}


def _placement_order(placement: str) -> tuple[int, int, int]:
    kind, *numbers = placement.split(":")
    rank = {"none": 0, "all": 1, "single": 2, "draw": 3, "list": 4}.get(kind, 5)
    return (rank, *(int(n) for n in numbers if n.isdigit()), 0, 0)[:3]  # type: ignore[return-value]


def read_table(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"placement table {path} is unreadable ({error}); build it with `diffora bench build`"
                          ) from error
    if table.get("version") != VERSION:
        raise ConfigError(f"{path} is a version {table.get('version')} table; rebuild it with `diffora bench build`")
    return table


def write_table(table: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(table))
    return path


@dataclass
class PlacementTable:
    """A table read for scoring: scores by (placement, seed)."""

    candidates: list[str]
    main_metric: str
    scores: dict[tuple[str, int], float]
    modules: dict[tuple[str, int], list[str]]
    task: str | None = None
    model_files: dict[str, str] | None = None

    @classmethod
    def of(cls, table: Mapping[str, Any]) -> PlacementTable:
        return cls(list(table["candidates"]), str(table["main_metric"]),
                   {(r["placement"], int(r["seed"])): float(r["score"]) for r in table["runs"]},
                   {(r["placement"], int(r["seed"])): list(r["modules"]) for r in table["runs"]},
                   (table.get("config") or {}).get("task.name"), (table.get("files") or {}).get("model"))

    def differences(self, run_dir: Path, selection: Mapping[str, Any]) -> list[str]:
        """What makes a run incomparable with this table: another task, model files or candidate set."""
        fingerprint = identity.read(run_dir / identity.FILENAME) or {}
        found = []
        task = (fingerprint.get("config") or {}).get("task.name")
        if self.task is not None and task is not None and task != self.task:
            found.append(f"task.name: {self.task!r} → {task!r}")
        model = (fingerprint.get("files") or {}).get("model")
        if self.model_files is not None and model is not None and model != self.model_files:
            changed = sorted(n for n in set(model) | set(self.model_files) if model.get(n) != self.model_files.get(n))
            found.append(f"model files differ ({', '.join(changed[:3])})")
        candidates = _candidates(selection)
        if candidates and candidates != self.candidates:
            found.append(f"candidates: {len(self.candidates)} of the table's space → {len(candidates)} "
                         f"({next((c for c in candidates if c not in self.candidates), 'another order')})")
        return found

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for _, seed in self.scores})

    def utility(self, seed: int) -> dict[str, float]:
        """u_m = score(single:m) − score(none) at ``seed``, for the modules whose single run is there."""
        head = self.scores.get(("none", seed))
        if head is None:
            return {}
        return {self.candidates[i]: self.scores[(f"single:{i}", seed)] - head
                for i in range(len(self.candidates)) if (f"single:{i}", seed) in self.scores}

    def has_every_single(self, seed: int) -> bool:
        """Whether ``seed`` has the head-only run and every candidate's single-module run: only such a seed's
        utilities rank the whole space (a τ over some of the modules is another quantity)."""
        return len(self.utility(seed)) == len(self.candidates)

    def random_subsets(self, seed: int, k: int) -> list[float]:
        """The scores of the random k-subsets (``draw:k:*``) at ``seed``."""
        return [score for (placement, s), score in self.scores.items()
                if s == seed and placement.startswith(f"draw:{k}:")]

    def coverage(self) -> dict[int, dict[str, int]]:
        """Per seed: how many singles, draws and the head/all runs are in the table."""
        counts: dict[int, dict[str, int]] = defaultdict(lambda: {"none": 0, "all": 0, "single": 0, "draw": 0})
        for placement, seed in self.scores:
            kind = placement.split(":")[0]
            if kind in counts[seed]:
                counts[seed][kind] += 1
        return dict(counts)


def mean_utility(table: PlacementTable, seeds: Iterable[int]) -> dict[str, float]:
    """Each module's utility averaged over ``seeds`` (the modules present at every one of them)."""
    per_seed = [table.utility(seed) for seed in seeds]
    common = set.intersection(*(set(u) for u in per_seed)) if per_seed else set()
    return {m: sum(u[m] for u in per_seed) / len(per_seed) for m in table.candidates if m in common}
