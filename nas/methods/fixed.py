"""LoRA on a fixed set of modules: the placements of the placement benchmark (``experiment=placement_bench``).

``method.placement`` names the set among the N candidates of the search space (in its order, ``space.names``):

* ``none``           no adapter: the task head alone trains (the benchmark's zero point);
* ``all``            every candidate (LoRA as ``method=lora`` at ``space.rank``);
* ``single:<i>``     candidate i alone (0 ≤ i < N);
* ``draw:<k>:<j>``   the j-th uniformly random subset of k candidates at this seed: k indices drawn without
                     replacement by ``numpy.random.default_rng([seed, j, k])``, so each (seed, j) is its own subset;
* ``list``           the modules named in ``method.modules`` (full names, as in selection.json).

Every placement trains LoRA at ``space.rank`` with the shared loop for the task's default length; nothing is
searched or budgeted, so two placements differ only in where the adapters are.
"""

from __future__ import annotations

import re

import numpy as np

from nas.engine.backbone import Backbone
from nas.engine.outputs import write_selection
from nas.errors import ConfigError
from nas.methods.adapters import adapted_model
from nas.methods.base import METHODS, Method, MethodContext, Prepared
from search_spaces.space import SearchSpace

FORMS = "none, all, single:<i>, draw:<k>:<j> or list (with method.modules)"
PLACEMENT = re.compile(r"none|all|list|single:\d+|draw:\d+:\d+")


def draw_subset(n: int, k: int, seed: int, draw: int) -> list[int]:
    """The ``draw``-th uniform k-subset of range(n) at ``seed``, as sorted indices."""
    chosen = np.random.default_rng([seed, draw, k]).choice(n, size=k, replace=False)
    return sorted(int(i) for i in chosen)


def placement_modules(placement: str, space: SearchSpace, seed: int, modules: list[str] | None = None) -> list[str]:
    """The candidate names of ``placement`` (module docstring) in the space's order; a ConfigError names the fix."""
    names = list(space.names)
    n = len(names)
    if placement == "none":
        return []
    if placement == "all":
        return names
    if placement == "list":
        unknown = [m for m in modules or [] if m not in names]
        if modules is None or unknown:
            raise ConfigError(f"method.placement=list needs method.modules, a list of candidate names; unknown: "
                              f"{unknown[:3] or 'none given'} (candidates look like {names[0]})")
        return [name for name in names if name in set(modules)]
    if found := re.fullmatch(r"single:(\d+)", placement):
        index = int(found.group(1))
        if index >= n:
            raise ConfigError(f"method.placement={placement}: the space has {n} candidates; use single:0 to "
                              f"single:{n - 1}")
        return [names[index]]
    if found := re.fullmatch(r"draw:(\d+):(\d+)", placement):
        k, draw = int(found.group(1)), int(found.group(2))
        if not 1 <= k <= n:
            raise ConfigError(f"method.placement={placement}: a subset of {k} of {n} candidates; use 1 ≤ k ≤ {n}")
        return [names[i] for i in draw_subset(n, k, seed, draw)]
    raise ConfigError(f"method.placement={placement} is not a placement; use {FORMS}")


@METHODS.register("fixed")
class FixedPlacement(Method):
    name = "fixed"
    has_budget = False

    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        cfg = ctx.cfg
        modules = None if cfg.method.modules is None else [str(m) for m in cfg.method.modules]
        selected = placement_modules(str(cfg.method.placement), ctx.space, int(cfg.seed), modules)
        write_selection(ctx.run_dir, ctx.space, selected, None, seed=cfg.seed, task=ctx.task.name,
                        placement=str(cfg.method.placement))
        prepared = adapted_model(ctx, backbone, selected, cfg.space.operator, int(cfg.space.rank),
                                 cfg.space.operator_args, has_search=False)
        prepared.variant.update(placement=str(cfg.method.placement))
        return prepared
