"""Random selection: the control for DiffoRA — same discretizer, same retrain, but scores drawn at random.

Scores are i.i.d. U(0, 1) from a generator seeded with the run's seed, so ``discretizer=global_topk`` keeps
⌈ρ·N⌉ uniformly random modules and ``discretizer=param_budget`` a random set that meets the budget.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from nas.engine.backbone import Backbone
from nas.engine.outputs import write_selection
from nas.methods.adapters import adapted_model
from nas.methods.base import METHODS, Method, MethodContext, Prepared
from nas.methods.diffora import discretizer_context
from nas.search.criteria import random_scores
from nas.search.discretizer import DiscretizeInput, build_discretizer


@METHODS.register("random")
class RandomSelection(Method):
    name = "random"
    discretizes = True

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        cfg = ctx.cfg
        scores = random_scores(ctx.space, int(cfg.seed))
        discretize = build_discretizer(OmegaConf.to_container(cfg.discretizer, resolve=True), discretizer_context(ctx))
        selected = discretize(DiscretizeInput(scores, ctx.space))
        write_selection(ctx.run_dir, ctx.space, selected, scores, rho=cfg.discretizer.rho,
                        discretizer=cfg.discretizer.name, seed=cfg.seed, task=ctx.task.name, criterion="random",
                        criteria={"random": scores})
        prepared = adapted_model(ctx, backbone, selected, cfg.space.operator, int(cfg.space.rank),
                                 cfg.space.operator_args, has_search=False)
        prepared.variant.update(discretizer=cfg.discretizer.name, rho=cfg.discretizer.rho)
        prepared.scores, prepared.criterion = {"random": scores}, "random"
        return prepared
