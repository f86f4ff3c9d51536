"""The run folder's guard: what a run may do with the folder Hydra gave it, and the record it leaves there.

A folder holds at most one run. Before a run writes anything, :func:`claim` decides from what is there:

* a **finished** run (``metrics.json``) is replaced only with ``overwrite=true``; ``skip_finished=true`` reuses it
  only when its ``fingerprint.json`` equals this run's (nas/engine/identity.py), ``resume=true`` continues it only
  from a checkpoint of the same fingerprint; anything else is refused, naming the keys that differ, and nothing in
  the folder changes;
* a **failed or unfinished** run is started again from scratch (its files are removed), unless ``resume=true``.

Once claimed, :func:`record` writes ``.hydra/`` (config, hydra, overrides), ``fingerprint.json``, and
:func:`capture_output` copies everything the run prints into ``run.log``. Any error after that point, and any bad
config once the folder exists, leaves ``FAILED`` with the one-line reason (:func:`mark_failed`); ``metrics.json``
is written last, by the pipeline, so a folder without it never looks finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

from nas.engine import identity
from nas.errors import ConfigError

FINISHED = "metrics.json"
FAILED = "FAILED"
LOG = "run.log"
HYDRA_DIR = ".hydra"


class RunRefused(ConfigError):
    """The folder holds a run this one may not replace or reuse; nothing was written."""


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` decided: ``reuse`` (the finished run's metrics, for skip_finished), else run; ``resume``."""

    reuse: dict[str, Any] | None = None
    resume: bool = False


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).is_file()


def refuse_finished(run_dir: Path, *, resume: bool, skip_finished: bool, overwrite: bool) -> None:
    """A finished run is never overwritten by accident: without ``overwrite``, ``skip_finished`` or ``resume`` a run
    into its folder is refused (before the config is even validated)."""
    if is_finished(run_dir) and not (resume or skip_finished or overwrite):
        raise RunRefused(f"{run_dir} holds a finished run (metrics.json); pass overwrite=true to replace it, "
                         f"skip_finished=true to reuse it if it has this configuration, or choose another "
                         f"hydra.run.dir (hydra.sweep.dir for a sweep)")


def claim(run_dir: Path, fingerprint: Mapping[str, Any], *, resume: bool, skip_finished: bool,
          overwrite: bool) -> Claim:
    """Decide what this run does with ``run_dir`` (module docstring); raises :class:`RunRefused` having written
    nothing. Resume's own check (a checkpoint of this fingerprint) is :meth:`Checkpointer.start`'s."""
    refuse_finished(run_dir, resume=resume, skip_finished=skip_finished, overwrite=overwrite)
    if skip_finished and is_finished(run_dir) and not overwrite:
        saved = identity.read(run_dir / identity.FILENAME)
        if saved is None:
            raise RunRefused(f"skip_finished=true, but the finished run in {run_dir} has no {identity.FILENAME} "
                             f"(an older diffora wrote it), so it cannot be told apart from another configuration; "
                             f"pass overwrite=true to run it again, or aggregate it as it is")
        differ = identity.diff(saved, fingerprint)
        if differ:
            raise RunRefused(f"skip_finished=true, but the finished run in {run_dir} is of another configuration: "
                             f"{'; '.join(differ[:8])}{' …' if len(differ) > 8 else ''}; nothing was reused. Use "
                             f"another hydra.sweep.dir (or hydra.run.dir) for these settings, or overwrite=true to "
                             f"replace it")
        return Claim(reuse=json.loads((run_dir / FINISHED).read_text()))
    return Claim(resume=resume)


# What a run writes into its folder (nas/engine/pipeline.py, the methods, the logger, checkpoints, this module); a
# new run removes only these, so a run dir that also holds other files (a user's hydra.run.dir=.) keeps them.
OUTPUTS = (FINISHED, FAILED, LOG, HYDRA_DIR, identity.FILENAME, "selection.json", "dam.png", "dam_trajectory.json",
           "dam_trajectory.png", "adapter", "model", "checkpoint", "wandb")


def clear(run_dir: Path) -> None:
    """Remove an earlier run's outputs (:data:`OUTPUTS`) from ``run_dir``: a new run there starts clean."""
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def record(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig | None, fingerprint: Mapping[str, Any]) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` (as Hydra writes them) and ``fingerprint.json``."""
    folder = run_dir / HYDRA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if hydra_cfg is not None:
        (folder / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
        (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))
    identity.write(run_dir / identity.FILENAME, fingerprint)


def mark_failed(run_dir: Path, error: BaseException | str) -> None:
    """``FAILED`` with the one-line reason (the folder is created if Hydra has not)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED).write_text(text.strip().splitlines()[0] + "\n" if text.strip() else "failed\n")


class _LineLog:
    """Complete lines to a file; a carriage return (a progress bar redrawing itself) keeps only its last state."""

    def __init__(self, file: TextIO) -> None:
        self.file, self.pending = file, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.file.write(line.rsplit("\r", 1)[-1] + "\n")
        self.file.flush()
        return len(text)

    def close(self) -> None:
        if self.pending.rsplit("\r", 1)[-1].strip():
            self.file.write(self.pending.rsplit("\r", 1)[-1] + "\n")
        self.file.close()


class _Tee(io.TextIOBase):
    """A text stream that writes to ``stream`` and to a :class:`_LineLog`."""

    def __init__(self, stream: TextIO, log: _LineLog) -> None:
        super().__init__()
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def capture_output(run_dir: Path, append: bool = False) -> Iterator[_LineLog]:
    """Everything printed to stdout and stderr inside the block also goes to ``run_dir/run.log`` (appended when
    resuming); yields the log alone (``write``), e.g. for a traceback that the console gets from Hydra."""
    log = _LineLog(open(run_dir / LOG, "a" if append else "w", encoding="utf-8"))  # noqa: SIM115 (closed below)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = out, err
        log.close()
