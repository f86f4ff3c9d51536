"""Loggers: the wandb one runs the whole init → log → summary → finish cycle (disabled mode, no files)."""

from __future__ import annotations

import pytest

from nas.engine.logger import LOGGERS, NullLogger, WandbLogger, build_logger, run_group


def test_registry_has_both() -> None:
    assert LOGGERS.names() == ["none", "wandb"]
    assert isinstance(build_logger("none"), NullLogger)


def test_wandb_logger_cycle(tmp_path) -> None:
    logger = build_logger("wandb", run_dir=tmp_path, project="diffora-test", mode="disabled", group="g",
                          name="run", config={"seed": 0})
    assert isinstance(logger, WandbLogger)
    logger.log({"search/w_loss": 0.5, "dam/x": 0.5}, step=0)
    logger.log({"search/w_loss": 0.4}, step=1)
    logger.summary({"dev/accuracy": 0.9})
    logger.finish()


def test_unknown_logger() -> None:
    with pytest.raises(ValueError, match="unknown logger 'tensorboard'; choose one of: none, wandb"):
        build_logger("tensorboard")


def test_one_group_per_multirun() -> None:
    sweep = "logs/multiruns/2026-11-24_10-00-00"
    assert run_group(None, True, sweep) == "2026-11-24_10-00-00"
    assert run_group(None, False, sweep) is None
    assert run_group("ablation", True, sweep) == "ablation"
