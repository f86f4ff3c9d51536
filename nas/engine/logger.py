"""Experiment loggers: ``none`` and ``wandb`` (offline by default). Every run calls ``finish()``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from nas.registry import Registry


class Logger(Protocol):
    def log(self, values: Mapping[str, float], step: int | None = None) -> None: ...
    def summary(self, values: Mapping[str, Any]) -> None: ...
    def finish(self) -> None: ...


LOGGERS: Registry[type] = Registry("logger")


@LOGGERS.register("none")
class NullLogger:
    """Logs nothing."""

    def __init__(self, **_: Any) -> None:
        pass

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


@LOGGERS.register("wandb")
class WandbLogger:
    """A wandb run in ``mode`` (offline unless told), written under the run directory."""

    def __init__(self, run_dir: Path, project: str, mode: str, group: str | None, name: str,
                 config: Mapping[str, Any], tags: list[str] | None = None, **_: Any) -> None:
        import wandb

        self._wandb = wandb
        self._run = wandb.init(project=project, mode=mode, group=group, name=name, dir=str(run_dir),
                               config=dict(config), tags=list(tags or []), reinit="finish_previous")

    def log(self, values: Mapping[str, float], step: int | None = None) -> None:
        self._run.log(dict(values), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self._run.summary[key] = value

    def finish(self) -> None:
        self._run.finish()


def run_group(configured: str | None, multirun: bool, sweep_dir: str) -> str | None:
    """The configured group, else one group per multirun (its sweep folder's name), else none."""
    if configured:
        return configured
    return Path(sweep_dir).name if multirun else None


def build_logger(kind: str, **kwargs: Any) -> Logger:
    return LOGGERS.get(kind)(**kwargs)
