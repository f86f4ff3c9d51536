"""Loggers: the wandb one runs the whole init → log → summary → finish cycle (disabled mode, no files)."""

from __future__ import annotations

import pytest

from nas.engine.logger import LOGGERS, NullLogger, WandbLogger, build_logger, run_group


def test_registry_has_both() -> None:
    assert LOGGERS.names() == ["none", "wandb"]
    assert isinstance(build_logger("none"), NullLogger)


def test_wandb_logger_cycle(tmp_path) -> None:
    """The run gets the asked name, group, config and mode; logged values and the summary reach it; finish ends
    it. In disabled mode the summary holds the last logged value of each key, as a real run's does."""
    import wandb

    logger = build_logger("wandb", run_dir=tmp_path, project="diffora-test", mode="disabled", group="g",
                          name="run", config={"seed": 0}, tags=["t"])
    assert isinstance(logger, WandbLogger) and wandb.run is logger._run
    run = logger._run
    assert (run.project, run.group, run.name, dict(run.config), tuple(run.tags)) == ("diffora-test", "g", "run",
                                                                                    {"seed": 0}, ("t",))
    assert run.disabled  # mode reached wandb.init: offline would write <run_dir>/wandb
    logger.log({"search/w_loss": 0.5, "dam/x": 0.5}, step=0)
    logger.log({"search/w_loss": 0.4}, step=1)
    logger.summary({"dev/accuracy": 0.9})
    assert dict(run.summary) == {"search/w_loss": 0.4, "dam/x": 0.5, "dev/accuracy": 0.9}
    logger.finish()
    assert wandb.run is None and not any(tmp_path.iterdir())


def test_unknown_logger() -> None:
    with pytest.raises(ValueError, match="unknown logger 'tensorboard'; choose one of: none, wandb"):
        build_logger("tensorboard")


def test_one_group_per_multirun() -> None:
    sweep = "logs/multiruns/2026-11-24_10-00-00"
    assert run_group(None, True, sweep) == "2026-11-24_10-00-00"
    assert run_group(None, False, sweep) is None
    assert run_group("ablation", True, sweep) == "ablation"
