"""The Hydra app behind ``diffora run`` and ``experiments/run.py``: one run per composed config.

Parses nothing itself: Hydra composes ``conf/run.yaml`` with the command-line overrides (``-m`` for a sweep)
and calls :func:`main` once per job.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nas.config import CONF_DIR, register_configs
from nas.engine import run_folder
from nas.engine.checkpoint import Checkpointer
from nas.engine.identity import code_version, run_fingerprint
from nas.engine.logger import build_logger, run_group
from nas.engine.parallel import broadcast_object, from_environment, slurm_environment
from nas.engine.pipeline import run_pipeline
from nas.engine.precision import resolve_precision
from nas.engine.run_folder import RunRefused
from nas.errors import ConfigError, NonFiniteError
from nas.extensions import import_extensions
from nas.validation import validate_run_config

register_configs()
code_version()  # the commit this process imported: every job of a sweep records it (nas/engine/identity.py)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def main(cfg: DictConfig) -> float:
    """One run of ``cfg``: search (DiffoRA), train, evaluate; returns the dev score (Hydra sweepers read it).

    The run folder is guarded by nas/engine/run_folder.py: a finished run there is refused, reused (skip_finished,
    same fingerprint only) or replaced (overwrite); a refusal writes nothing; any other error leaves FAILED."""
    hydra_cfg = HydraConfig.get()
    own_dir = Path(hydra_cfg.runtime.output_dir)
    is_main = int(os.environ.get("RANK") or slurm_environment(os.environ).get("RANK", "0")) == 0
    flags = {"resume": bool(cfg.resume), "skip_finished": bool(cfg.skip_finished), "overwrite": bool(cfg.overwrite)}
    try:
        run_folder.refuse_finished(own_dir, **flags)
    except ConfigError as error:
        sys.exit(f"diffora: error: {error}")
    try:
        import_extensions(cfg.imports)  # their @REGISTRY.register calls, before validation reads the registries
        validate_run_config(cfg)
        cfg.precision = resolve_precision(cfg.precision, cfg.device)  # before identity and records: fp32 or bf16
        parallel = from_environment(int(cfg.grad_accum), str(cfg.device), cfg.processes)
        run_dir = Path(str(broadcast_object(hydra_cfg.runtime.output_dir, parallel)))  # rank 0's run dir
        fingerprint = run_fingerprint(cfg)
        claim = run_folder.claim(run_dir, fingerprint, **flags)
        checkpoint = Checkpointer(run_dir, int(cfg.checkpoint.every), bool(cfg.resume), writer=parallel.is_main)
        if claim.resume:
            checkpoint.start(fingerprint)  # refuses a missing or foreign checkpoint before anything is written
    except ConfigError as error:
        if is_main and not isinstance(error, RunRefused) and not run_folder.is_finished(own_dir) and not cfg.resume:
            run_folder.mark_failed(own_dir, error)  # a bad config in a fresh folder: the folder says why
        sys.exit(f"diffora: error: {error}")
    if claim.reuse is not None:
        result = claim.reuse
        print(f"{result['task']} {result['method']} seed {result['seed']}: finished earlier in {run_dir} with the "
              f"same fingerprint, skipped")
        return float(result["score"])
    if not parallel.is_main:  # only rank 0 writes into the run dir (and logs): the others write to a scratch dir
        scratch = tempfile.TemporaryDirectory(prefix=f"diffora-rank{parallel.rank}-")
        atexit.register(scratch.cleanup)
    out_dir = run_dir if parallel.is_main else Path(scratch.name)
    if parallel.is_main:
        if claim.resume:
            for stale in (run_folder.FAILED, run_folder.FINISHED):
                (run_dir / stale).unlink(missing_ok=True)  # the resumed run must finish again to look finished
        else:
            run_folder.clear(run_dir)  # an earlier run's files (failed, unfinished, or replaced with overwrite)
            checkpoint.start(fingerprint)  # the cleared folder gets this run's checkpoint record again
        run_folder.record(run_dir, cfg, hydra_cfg, fingerprint)
    with run_folder.capture_output(out_dir, append=claim.resume) as log:
        try:
            group = run_group(cfg.logger.group, hydra_cfg.mode == RunMode.MULTIRUN, hydra_cfg.sweep.dir)
            logger = build_logger(cfg.logger.name if parallel.is_main else "none", run_dir=out_dir,
                                  project=cfg.logger.project, mode=cfg.logger.mode, group=group, tags=cfg.logger.tags,
                                  name=f"{cfg.method.name}-{cfg.task.name}-s{cfg.seed}",
                                  config=OmegaConf.to_container(cfg, resolve=True))
        except ConfigError as error:
            run_folder.mark_failed(out_dir, error)
            sys.exit(f"diffora: error: {error}")
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        try:
            result = run_pipeline(cfg, out_dir, logger, checkpoint, parallel)
        except Exception as error:
            run_folder.mark_failed(out_dir, error)
            traceback.print_exc(file=log)
            if isinstance(error, ConfigError | NonFiniteError):
                sys.exit(f"diffora: error: {error}")
            raise
        finally:
            logger.finish()
        if parallel.is_main:
            print(f"{result['task']} dev {result['metrics']} | trainable params {result['trainable_params']:,} | "
                  f"{result['num_selected']}/{result['num_candidates']} modules | outputs in {run_dir}")
    return float(result["score"])


def quiet_hydra_off_rank_zero() -> None:
    """Under torchrun, processes other than rank 0 keep Hydra's own files and logs out of the run dir."""
    rank = os.environ.get("RANK") or slurm_environment(os.environ).get("RANK", "0")
    if int(rank) > 0:  # rank 0 broadcasts its run dir; this rank's own is scratch
        sys.argv = [arg for arg in sys.argv if not arg.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                     f"hydra.run.dir={tempfile.gettempdir()}/diffora-rank{rank}-hydra"]
