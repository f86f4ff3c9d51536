"""A run's identity: what determines its result, so that a run is never mistaken for another.

The **fingerprint** of a run is

* ``config``: the composed, resolved config as flat ``dotted.key: value`` pairs, without the :data:`VOLATILE`
  settings (where and how a run runs, not what it computes: device, threads, logger, paths, …);
* ``files``: a SHA-256 digest of every file the run reads its inputs from, by role and file name — the model folder's
  files and the task's data files (``{"model": {"config.json": "…", …}, "data": {"train.tsv": "…", …}}``). The
  paths themselves are volatile (``model.name_or_path``, ``task.data_dir``): the same files in another folder are the
  same run, other files under the same name are not;
* ``digest``: SHA-256 of the canonical JSON of both.

Every run writes it to ``<run dir>/fingerprint.json`` before its work starts. ``skip_finished=true`` reuses a finished
run only when the fingerprints agree, ``resume=true`` continues a checkpoint only then, and ``diffora aggregate``
groups runs by the same flat config (nas/reporting/run_records.py). :func:`diff` names what differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

FILENAME = "fingerprint.json"
# Settings that change where and how a run runs, never what it computes. Each entry is a key or a key prefix.
VOLATILE = ("resume", "skip_finished", "overwrite", "search_cache", "threads", "device", "logger", "paths",
            "checkpoint", "bilevel.log_every", "retrain.log_every", "task.data_dir", "model.name_or_path")
UNSET = "<unset>"


def is_volatile(key: str) -> bool:
    """Is ``key`` (dotted) one of :data:`VOLATILE` or below one?"""
    return any(key == v or key.startswith(v + ".") for v in VOLATILE)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}``; lists are leaves."""
    flat: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif prefix:
        flat[prefix] = node
    return flat


def config_identity(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as flat ``key: value`` pairs without the :data:`VOLATILE` settings, JSON-normalized (so a
    value read back from ``fingerprint.json`` compares equal)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat = {key: value for key, value in flatten(tree).items() if not is_volatile(key)}
    return json.loads(json.dumps(flat, default=str))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; cached in this process by (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def folder_digests(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``folder`` (hidden files and caches excluded)."""
    return {path.relative_to(folder).as_posix(): file_digest(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                          for part in path.relative_to(folder).parts)}


def source_digests(source: str | Path | None, what: str) -> dict[str, str]:
    """Digests of a model or data source: a folder's files, one file, or, for a name that is not on disk (a hub id),
    ``{what: "hub:<name>"}`` (its content cannot be read without a network)."""
    if source is None:
        return {}
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return folder_digests(path)
    if path.is_file():
        return {path.name: file_digest(path)}
    return {what: f"hub:{source}"}


def fingerprint(cfg: DictConfig, model_path: str | Path | None, data_files: Mapping[str, str | Path]) -> dict[str, Any]:
    """The run's fingerprint (module docstring). ``model_path`` is the resolved model folder (or a hub id);
    ``data_files`` maps a name (``train.tsv``) to the file read (or to ``hub:…`` for data read from the hub)."""
    data = {name: file_digest(Path(path)) if Path(str(path)).is_file() else str(path)
            for name, path in sorted(data_files.items())}
    record = {"config": config_identity(cfg), "files": {"model": source_digests(model_path, "model"), "data": data}}
    record["digest"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved → current`` for every entry that differs (or exists on one side only); fingerprints are compared
    on their config and their files (``model file config.json: 1a2b3c4d → 5e6f7a8b``)."""
    if "config" in saved and "config" in current:
        lines = diff(saved["config"], current["config"])
        for role in ("model", "data"):
            old, new = (dict((record.get("files") or {}).get(role) or {}) for record in (saved, current))
            lines += [f"{role} file {name}: {_short(old.get(name, UNSET))} → {_short(new.get(name, UNSET))}"
                      for name in sorted(set(old) | set(new)) if old.get(name, UNSET) != new.get(name, UNSET)]
        return lines
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, UNSET)!r} → {current.get(k, UNSET)!r}" for k in keys
            if saved.get(k, UNSET) != current.get(k, UNSET)]


def _short(digest: str) -> str:
    return digest[:8] if len(digest) == 64 else digest


def read(path: Path) -> dict[str, Any] | None:
    """A fingerprint written by :func:`write`; None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "config" in data else None


def write(path: Path, record: Mapping[str, Any]) -> None:
    from nas.engine.outputs import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(record))


def data_files(task_cfg: DictConfig) -> dict[str, str | Path]:
    """The data files a run reads, by file name: a GLUE task's (or a planted task's source's) train and dev TSV,
    ``task=jsonl``'s two JSONL files, or ``{"glue": "hub:nyu-mll/glue/<task>"}`` where ``task.data_dir`` is null."""
    from objectives import get_task, glue_files
    from objectives.glue import HUB_DATASET

    if task_cfg.name == "jsonl":
        return {f"{split}:{Path(str(task_cfg[key])).name}": Path(str(task_cfg[key])).expanduser()
                for split, key in (("train", "train_file"), ("dev", "dev_file"))}
    name = task_cfg.get("source", task_cfg.name) if task_cfg.name == "planted" else task_cfg.name
    task = get_task(name)
    if task_cfg.data_dir is None:
        return {"glue": f"hub:{HUB_DATASET}/{task.name}"}
    return {path.name: path for path in glue_files(task, task_cfg.data_dir).values()}


def run_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """:func:`fingerprint` of a composed run config: its model folder and its data files."""
    from nas.engine.backbone import resolve_model_path

    return fingerprint(cfg, resolve_model_path(str(cfg.model.name_or_path)), data_files(cfg.task))


@functools.cache
def code_version() -> str:
    """The checkout's commit (``-dirty`` when tracked files changed); ``unknown`` without git. Provenance, written to
    metrics.json; not part of the fingerprint (a run may be resumed or reused across a commit). Read once per
    process (nas/app.py reads it at import): the jobs of a sweep run the code the process imported, whatever is
    committed while they run."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
