"""Entry point: one DiffoRA run (search → discretize → retrain → evaluate) per composed config.

    python experiments/run.py task=mrpc discretizer.rho=0.25 seed=1
    python experiments/run.py -m task=rte,mrpc seed=0,1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nas.checkpoint import Checkpointer
from nas.config import register_configs, validate_run_config
from nas.errors import ConfigError, NonFiniteError
from nas.logger import build_logger, run_group
from nas.pipeline import run_pipeline

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="run")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        validate_run_config(cfg)
        if cfg.skip_finished and (run_dir / "metrics.json").exists():
            result = json.loads((run_dir / "metrics.json").read_text())
            print(f"{result['task']} {result['method']} seed {result['seed']}: finished earlier in {run_dir}, skipped")
            return float(result["score"])
        checkpoint = Checkpointer(run_dir, int(cfg.checkpoint.every), bool(cfg.resume))
        checkpoint.start(cfg)  # on resume: refuses a missing or foreign checkpoint before anything is written
        group = run_group(cfg.logger.group, hydra_cfg.mode == RunMode.MULTIRUN, hydra_cfg.sweep.dir)
        logger = build_logger(cfg.logger.name, run_dir=run_dir, project=cfg.logger.project,
                              mode=cfg.logger.mode, group=group, tags=cfg.logger.tags,
                              name=f"{cfg.method.name}-{cfg.task.name}-s{cfg.seed}",
                              config=OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:
        sys.exit(f"diffora: error: {error}")
    (run_dir / "FAILED").unlink(missing_ok=True)  # a rerun of a failed job starts clean
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        result = run_pipeline(cfg, run_dir, logger, checkpoint)
    except Exception as error:
        (run_dir / "FAILED").write_text(f"{type(error).__name__}: {error}\n")
        if isinstance(error, ConfigError | NonFiniteError):
            sys.exit(f"diffora: error: {error}")
        raise
    finally:
        logger.finish()
    print(f"{result['task']} dev {result['metrics']} | trainable params {result['trainable_params']:,} | "
          f"{result['num_selected']}/{result['num_candidates']} modules | outputs in {run_dir}")
    return float(result["score"])


if __name__ == "__main__":
    main()
