"""DiffoRA: search the DAM (bilevel), discretize it, retrain the kept LoRAs (warm-started or fresh)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from nas.adapters.retrain import expected_gates
from nas.engine.backbone import Backbone, reset_head
from nas.engine.identity import run_fingerprint
from nas.engine.outputs import seed_everything, write_json, write_selection
from nas.methods.adapters import adapted_model
from nas.methods.base import METHODS, Method, MethodContext, Prepared
from nas.reporting.plots import plot_dam, plot_trajectory
from nas.search import search_cache
from nas.search.diagnostics import summarize_dam
from nas.search.discretizer import DiscretizeInput, build_discretizer
from nas.search.loop import SearchOutcome, SearchSettings, build_supernet, search


def discretizer_context(ctx: MethodContext) -> dict[str, Any]:
    """What the run knows that a discretizer may declare it needs: the branches' rank, operator and options (to
    price modules) and the budget target."""
    return {"rank": int(ctx.cfg.space.rank), "operator": str(ctx.cfg.space.operator),
            "operator_args": dict(ctx.cfg.space.operator_args), "target_params": ctx.budget_target}


def searched(ctx: MethodContext, backbone: Backbone) -> tuple[SearchOutcome, str | None]:
    """The search's outcome, and the folder it was loaded from (None when this run searched). With ``search_cache``
    set (nas/search/search_cache.py), a saved search of the same search identity is loaded instead of searching,
    and a new one is saved. Not used (a note says so) with sized branches (bilevel.branch_size: the sizes are not
    saved) or with several processes (each would have to agree on loading)."""
    cfg, settings = ctx.cfg, SearchSettings.from_config(ctx.cfg)
    cache = cfg.search_cache
    if cache is not None and (cfg.bilevel.branch_size is not None or ctx.parallel.world > 1):
        tqdm.write("search_cache: not used with bilevel.branch_size set or with several processes")
        cache = None
    record = search_cache.search_identity(run_fingerprint(cfg)) if cache is not None else None
    if cache is not None and search_cache.is_saved(cache, record):
        outcome = search_cache.load(cache, record, build_supernet(settings, backbone, ctx.space),
                                    str(cfg.criterion.name))
        folder = str(search_cache.folder_of(cache, record))
        tqdm.write(f"search_cache: this run's search loaded from {folder}")
        return outcome, folder
    outcome = search(settings, backbone, ctx.space, ctx.data, ctx.logger, ctx.budget_target, ctx.checkpoint,
                     ctx.parallel)
    if cache is not None:
        search_cache.save(cache, record, outcome)
    return outcome, None


@METHODS.register("diffora")
class DiffoRA(Method):
    name = "diffora"
    has_search = True
    discretizes = True

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        cfg = ctx.cfg
        criterion = cfg.criterion.name
        outcome, reused = searched(ctx, backbone)
        seed_everything(int(cfg.seed) + 1)  # the retrain's RNG: the same after a search and after a saved one
        discretize = build_discretizer(OmegaConf.to_container(cfg.discretizer, resolve=True), discretizer_context(ctx))
        selected = discretize(DiscretizeInput(outcome.criteria[criterion], ctx.space))
        write_selection(ctx.run_dir, ctx.space, selected, outcome.scores, rho=cfg.discretizer.rho,
                        discretizer=cfg.discretizer.name, relaxation=cfg.relaxation.name,
                        hypergradient=cfg.bilevel.hypergradient, seed=cfg.seed, task=ctx.task.name,
                        criterion=criterion, criteria=outcome.criteria)
        write_json(ctx.run_dir / "dam_trajectory.json", outcome.trajectory)
        plot_dam(ctx.space, outcome.scores, selected, ctx.run_dir / "dam.png",
                 title=f"DAM · {ctx.task.name} · ρ={cfg.discretizer.rho} · seed {cfg.seed}")
        plot_trajectory(ctx.space, outcome.trajectory, ctx.run_dir / "dam_trajectory.png",
                        title=f"DAM trajectory · {ctx.task.name} · {cfg.relaxation.name} · seed {cfg.seed}")
        tqdm.write(f"selected {len(selected)}/{len(ctx.space)} modules:\n  " + "\n  ".join(selected))

        # one model per run: the supernet's own backbone becomes the retrained model (no second load)
        shared = cfg.retrain.init == "shared"
        gates = expected_gates(outcome.supernet) if shared and cfg.retrain.fold_gate else None
        if not shared:
            outcome.supernet.unwrap()
            reset_head(backbone)
        prepared = adapted_model(ctx, backbone, selected, cfg.space.operator, int(cfg.space.rank),
                                 cfg.space.operator_args, has_search=True,
                                 supernet=outcome.supernet if shared else None, gates=gates)
        search_steps = int(cfg.bilevel.steps)  # a stage metric, and a variant key that splits aggregate rows
        prepared.stage_metrics = {"search_steps": search_steps, "search_wall_s": outcome.wall_s,
                                  "search_reused": reused, "diagnostics": summarize_dam(outcome.scores)}
        prepared.scores, prepared.criterion = outcome.criteria, criterion
        prepared.variant.update(relaxation=cfg.relaxation.name, discretizer=cfg.discretizer.name, criterion=criterion,
                                rho=cfg.discretizer.rho, hypergradient=cfg.bilevel.hypergradient,
                                search_steps=search_steps,
                                retrain_init=cfg.retrain.init, prune_stages=int(cfg.bilevel.prune_stages),
                                branch_size=cfg.bilevel.branch_size, dam_init=float(cfg.relaxation.init_mean),
                                alpha_optimizer=f"{cfg.bilevel.alpha_optimizer.name}@{cfg.bilevel.alpha_optimizer.lr:g}",
                                balance_lr=cfg.bilevel.balance_space if cfg.bilevel.balance_lr else "off",
                                branch_init=cfg.bilevel.branch_init,
                                w_optimizer=f"{cfg.bilevel.w_optimizer.name}@{cfg.bilevel.w_optimizer.lr:g}",
                                w_lr_start=float(cfg.bilevel.w_lr_start), w_average=float(cfg.bilevel.w_average),
                                alpha_shrink=(f"{cfg.bilevel.alpha_shrink:g}@{cfg.bilevel.alpha_shrink_fraction:g}"
                                              if cfg.bilevel.alpha_shrink else "off"),
                                branch_size_units=cfg.bilevel.branch_size_units if cfg.bilevel.branch_size else None)
        return prepared
