"""Checkpoint and resume: a run killed at any point continues from its last checkpoint and ends as an
uninterrupted run with the same seed would.

``checkpoint.every=N`` (steps; 0 = off) makes the search and the training loop each save, every N steps and at
their last step, one file per stage under ``<run dir>/checkpoint/``: ``search.pt`` and ``train.pt``. A stage's
state is what its loop needs to go on exactly: the trained tensors (adapters, head, DAM), both optimizers and
the scheduler, the RNG states (python, numpy, torch CPU and CUDA, the relaxation's sampler), the number of
batches each loader has given (the loaders are rebuilt with their seeds and fast-forwarded), and the loop's own
records (trajectory, gate statistics, a method's hook state). Files are written atomically (temporary file, then
rename), so a kill during a save leaves the previous checkpoint intact. ``config.json`` beside them holds the
run's identity; ``resume=true`` refuses a run dir without a checkpoint, or whose identity differs, before it
writes anything.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nas.errors import ConfigError, NonFiniteError

# Settings that may change between a run and its resumption: where and how it runs, not what it computes.
VOLATILE = ("resume", "skip_finished", "threads", "device", "logger", "paths", "checkpoint",
            "bilevel.log_every", "retrain.log_every", "task.data_dir", "model.name_or_path")
FOLDER = "checkpoint"


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat ``key: value`` pairs, without the :data:`VOLATILE` settings."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif not any(prefix == v or prefix.startswith(v + ".") for v in VOLATILE):
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tensors(named: Mapping[str, torch.Tensor], stage: str = "", step: int = -1) -> dict[str, torch.Tensor]:
    """Detached CPU copies, for a checkpoint; a non-finite tensor raises :class:`NonFiniteError` naming the stage
    and step instead, so that the last checkpoint on disk stays the last good one."""
    copies = {name: t.detach().to("cpu", copy=True) for name, t in named.items()}
    bad = [name for name, t in copies.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"{stage} step {step}: the trained weights are not finite ({', '.join(bad[:3])}); "
                             f"lower the learning rate, or keep grad_clip on")
    return copies


def load_tensors(named: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]) -> None:
    """Copy ``saved`` into ``named`` in place; the names must match exactly."""
    if set(named) != set(saved):
        missing, extra = sorted(set(named) - set(saved)), sorted(set(saved) - set(named))
        raise ConfigError(f"the checkpoint's tensors do not match the model (missing {missing[:3]}, unexpected "
                          f"{extra[:3]}); it was written by another configuration: run without resume=true")
    with torch.no_grad():
        for name, tensor in named.items():
            tensor.copy_(saved[name])


@dataclass
class Checkpointer:
    """Saves and loads the stages of one run dir; ``every=0`` saves nothing (loading still works on resume)."""

    run_dir: Path
    every: int = 0
    resume: bool = False
    writer: bool = True  # False on every process but the main one: they read checkpoints, never write them

    @property
    def folder(self) -> Path:
        return self.run_dir / FOLDER

    def due(self, step: int, last: int) -> bool:
        """Save after 0-based ``step``? Every ``every`` steps and at the stage's ``last`` step."""
        return self.every > 0 and ((step + 1) % self.every == 0 or step == last)

    def save(self, stage: str, state: dict[str, Any]) -> None:
        if not self.writer:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{stage}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, stage: str) -> dict[str, Any] | None:
        """The stage's saved state when resuming and one exists, else None."""
        path = self.folder / f"{stage}.pt"
        if not self.resume or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def start(self, cfg: DictConfig) -> None:
        """Before a run writes anything: on resume, check that a checkpoint of this very configuration is there;
        otherwise record this configuration's identity for a later resume (when checkpoints are on)."""
        record = self.folder / "config.json"
        if self.resume:
            stages = sorted(p.stem for p in self.folder.glob("*.pt")) if self.folder.is_dir() else []
            if not stages or not record.exists():
                raise ConfigError(f"resume=true but {self.run_dir} holds no checkpoint; run it without resume=true "
                                  f"(with checkpoint.every=N to make one), or point hydra.run.dir at the run to "
                                  f"resume")
            differ = diff(json.loads(record.read_text()), json.loads(json.dumps(identity(cfg), default=str)))
            if differ:
                if self.writer:
                    self._restore_hydra_files()  # Hydra rewrote .hydra/ before this check: put the original back
                raise ConfigError(f"resume=true, but the checkpoint in {self.folder} is from another configuration: "
                                  f"{'; '.join(differ[:6])}; resume with the original settings, or start a new run "
                                  f"in another hydra.run.dir")
        elif self.every > 0 and self.writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob("*.pt"):
                stale.unlink()  # a new run in this dir: an older run's checkpoints must not be resumed into it
            tmp = record.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(identity(cfg), indent=1, default=str))
            os.replace(tmp, record)
            hydra_copy = self.folder / "hydra"
            hydra_copy.mkdir(exist_ok=True)
            for path in (self.run_dir / ".hydra").glob("*.yaml"):
                shutil.copyfile(path, hydra_copy / path.name)

    def _restore_hydra_files(self) -> None:
        for path in (self.folder / "hydra").glob("*.yaml"):
            shutil.copyfile(path, self.run_dir / ".hydra" / path.name)


def diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved → current`` for every setting that differs (or exists on one side only)."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<unset>')!r} → {current.get(k, '<unset>')!r}" for k in keys
            if saved.get(k, "<unset>") != current.get(k, "<unset>")]
