"""Checkpoint and resume: a run killed at any point continues from its last checkpoint and ends as an
uninterrupted run with the same seed would.

``checkpoint.every=N`` (steps; 0 = off) makes the search and the training loop each save, every N steps and at
their last step, one file per stage under ``<run dir>/checkpoint/``: ``search.pt`` and ``train.pt``. A stage's
state is what its loop needs to go on exactly: the trained tensors (adapters, head, DAM), both optimizers and
the scheduler, the RNG states (python, numpy, torch CPU and CUDA, the relaxation's sampler), the number of
batches each loader has given (the loaders are rebuilt with their seeds and fast-forwarded), and the loop's own
records (trajectory, gate statistics, a method's hook state). Files are written atomically (temporary file, then
rename), so a kill during a save leaves the previous checkpoint intact. ``fingerprint.json`` beside them holds the
run's fingerprint (nas/engine/identity.py: config, model and data digests); ``resume=true`` refuses a run dir
without a checkpoint, or whose fingerprint differs, before it writes anything.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.engine import identity
from nas.errors import ConfigError, NonFiniteError

FOLDER = "checkpoint"
RECORD = "fingerprint.json"  # the fingerprint of the run whose checkpoints these are


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

    def start(self, fingerprint: Mapping[str, Any]) -> None:
        """Before a run writes anything: on resume, check that a checkpoint of this very run (the same
        :mod:`nas.engine.identity` fingerprint: config, model files, data files) is there, else refuse with what
        differs; otherwise record the fingerprint beside the checkpoints this run will write (when they are on)."""
        record = self.folder / RECORD
        if self.resume:
            stages = sorted(p.stem for p in self.folder.glob("*.pt")) if self.folder.is_dir() else []
            saved = identity.read(record) if stages else None
            if saved is None:
                raise ConfigError(f"resume=true but {self.run_dir} holds no checkpoint; run it without resume=true "
                                  f"(with checkpoint.every=N to make one), or point hydra.run.dir at the run to "
                                  f"resume")
            differ = identity.diff(saved, fingerprint)
            if differ:
                raise ConfigError(f"resume=true, but the checkpoint in {self.folder} is from another configuration: "
                                  f"{'; '.join(differ[:6])}; resume with the original settings and inputs, or start "
                                  f"a new run in another hydra.run.dir")
        elif self.every > 0 and self.writer:
            if self.folder.is_dir():
                shutil.rmtree(self.folder)  # a new run in this dir: an older run's checkpoints must not be resumed
            identity.write(record, fingerprint)
