"""Reuse of a finished search: one search per (search config, seed) serves every ρ, criterion and retrain setting.

The search does not read what is decided after it (the discretizer, the driving criterion among the scored ones,
the retrain), so runs that differ only there can share one search: with ``search_cache=<folder>`` (a top-level key;
off by default) the first such run saves its outcome under ``<folder>/<search digest>/`` and the others load it
instead of searching again. A budget curve over k ∈ {2, 4, 9, 18} and four criteria at 5 seeds then costs 5
searches and 80 retrains instead of 80 searches.

The **search identity** is the run's fingerprint (nas/engine/identity.py: config minus volatile keys, model and data
digests) without the keys in :data:`AFTER_SEARCH`. Where the search does read them, they stay in it: a regularizer
(``bilevel.regularizers``) reads ρ and the budget target, and pruning (``bilevel.prune_stages``) prunes by the
driving criterion at ρ. The driving criterion also stays when it is not among ``criterion.record`` (the set of scored
criteria would differ). A saved search is used only when its identity equals the run's, key by key.

A saved search holds what the retrain and the records read: the supernet's trained tensors (branches, head, DAM
logits, with its buffers), the final DAM, every scored criterion and the trajectory, and the search's wall time.
It is written atomically (``search.pt`` last: its presence marks a finished search). Every diffora run, searched or
loaded, reseeds the global RNGs after the search (nas/methods/diffora.py), so the retrain after a loaded search is
the retrain after the search itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nas.engine import identity
from nas.errors import ConfigError
from nas.search.loop import SearchOutcome
from nas.search.supernet import SuperNet

# keys read only after the search: what it kept (discretizer), by which score (criterion.name), and the retrain
AFTER_SEARCH = ("discretizer", "criterion.name", "retrain", "method.lr", "method.weight_decay", "task.epochs")
STATE = "search.pt"


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def search_identity(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The run's fingerprint without the keys the search does not read (module docstring), with its own digest."""
    config = dict(fingerprint["config"])
    regularized = any(_under(k, ("bilevel.regularizers",)) and v not in (None, {}, 0, 0.0) for k, v in config.items())
    searched_by_rho = regularized or bool(config.get("bilevel.prune_stages"))
    recorded = config.get("criterion.record") or []
    keep = {"criterion.name"} if searched_by_rho or config.get("criterion.name") not in recorded else set()
    if searched_by_rho:
        keep |= {k for k in config if _under(k, ("discretizer",))}
    kept = {k: v for k, v in config.items() if k in keep or not _under(k, AFTER_SEARCH)}
    record = {"config": kept, "files": fingerprint.get("files", {})}
    record["digest"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def folder_of(cache: str | Path, record: Mapping[str, Any]) -> Path:
    return Path(cache).expanduser() / str(record["digest"])[:20]


def save(cache: str | Path, record: Mapping[str, Any], outcome: SearchOutcome) -> Path:
    """Write ``outcome`` under the cache folder of ``record`` (atomically; ``search.pt`` last)."""
    folder = folder_of(cache, record)
    folder.mkdir(parents=True, exist_ok=True)
    identity.write(folder / identity.FILENAME, record)
    net = outcome.supernet
    state = {"tensors": {n: p.detach().cpu().clone() for n, p in net.named_parameters() if p.requires_grad},
             "buffers": {n: b.detach().cpu().clone() for n, b in net.named_buffers()},
             "scores": outcome.scores, "criteria": outcome.criteria, "trajectory": outcome.trajectory,
             "wall_s": outcome.wall_s}
    tmp = folder / f"{STATE}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE)
    return folder


def is_saved(cache: str | Path, record: Mapping[str, Any]) -> bool:
    return (folder_of(cache, record) / STATE).is_file()


def load(cache: str | Path, record: Mapping[str, Any], supernet: SuperNet, criterion: str) -> SearchOutcome:
    """The saved search of ``record`` (:func:`is_saved`) restored into ``supernet`` (built as the search builds it,
    untrained). A saved identity that differs from ``record`` (a digest collision, or a folder edited by hand) and a
    saved search without ``criterion``'s scores are refused, naming what differs."""
    folder = folder_of(cache, record)
    saved = identity.read(folder / identity.FILENAME)
    if saved is None or saved.get("digest") != record["digest"]:
        differences = identity.diff(saved or {}, record) if saved else ["its fingerprint.json is missing"]
        raise ConfigError(f"search_cache: {folder} holds another search ({'; '.join(differences[:5])}); remove that "
                          "folder or point search_cache elsewhere")
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    if criterion not in state["criteria"]:
        raise ConfigError(f"search_cache: the search in {folder} scored {', '.join(state['criteria'])}, not "
                          f"criterion={criterion}; add it to criterion.record")
    trainable = {n: p for n, p in supernet.named_parameters() if p.requires_grad}
    buffers = dict(supernet.named_buffers())
    if set(trainable) != set(state["tensors"]) or set(buffers) != set(state["buffers"]):
        raise ConfigError(f"search_cache: the tensors in {folder} do not match this run's supernet; remove that folder")
    with torch.no_grad():
        for store, live in ((state["tensors"], trainable), (state["buffers"], buffers)):
            for name, tensor in live.items():
                tensor.copy_(store[name].to(tensor.device))
    criteria = {criterion: state["criteria"][criterion],
                **{k: v for k, v in state["criteria"].items() if k != criterion}}  # the driving one first
    return SearchOutcome(supernet, dict(state["scores"]), criteria, list(state["trajectory"]), float(state["wall_s"]))
