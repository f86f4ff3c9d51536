"""Progressive pruning during the search (``bilevel.prune_stages``): branches compete for the residual.

A continuous gate cannot make branches compete: γ and B are redundant scales of one branch, so once the w-steps fit,
∂L/∂γ ≈ 0 and the DAM keeps only what was still under-trained. Pruning makes the choice real. At ``stages`` evenly
spaced steps t_i = ⌊T·i/(stages + 1)⌋ the lowest-scored live modules (by the driving criterion) are switched off for
the rest of the search, and the survivors refit what the pruned branches carried (DARTS-PT's "remove, then tune the
supernet", for whole LoRA branches). The live count shrinks geometrically from N toward K = ⌈ρ·N⌉:

    n_i = round(N · (K/N)^(i / (stages + 1))),   i = 1 … stages,

so every stage removes the same fraction and the last segment still ranks more than K modules; the discretizer keeps
K of the survivors from the final scores.

The final scores of every criterion scored on the searched supernet rank the pruned modules below every survivor,
the earliest pruned lowest, and within one stage in the order of the driving criterion's scores at that stage
(:func:`rank_pruned`): a selection or a recovery figure then judges the whole procedure, not only its last segment.
Criteria scored at init (``grad_norm``, ``random``) are left as they were.

Measured on the planted task (2 CPU cores, 3 seeds, 2 patterns; README), pruning by the DAM does not raise its
precision (−0.04 over six pairs): the DAM ranks some planted modules low from the first steps, and pruning makes that
final. It stays an option, off by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nas.errors import ConfigError

Scores = dict[str, float]


@dataclass(frozen=True)
class PruneStage:
    """At search step ``step`` (after its w-step), keep ``alive`` modules."""

    step: int
    alive: int


@dataclass
class PruneRecord:
    """The modules switched off so far, stage by stage, with the driving criterion's scores at their stage."""

    stages: list[Scores] = field(default_factory=list)  # one {pruned module: score when pruned} per stage

    @property
    def pruned(self) -> set[str]:
        return {name for stage in self.stages for name in stage}


def prune_schedule(steps: int, candidates: int, keep: int, stages: int) -> list[PruneStage]:
    """The stages of a ``steps``-step search over ``candidates`` modules that will keep ``keep``; [] for 0 stages.

    A schedule that would prune in the same step twice or leave fewer than ``keep`` (+1 per later stage) modules is a
    ConfigError naming the fix."""
    if stages == 0:
        return []
    if stages < 0:
        raise ConfigError(f"bilevel.prune_stages={stages} must be >= 0 (0 turns pruning off)")
    if not 1 <= keep < candidates:
        raise ConfigError(f"pruning keeps {keep} of {candidates} modules, nothing to prune; raise discretizer.rho "
                          f"below 1 or set bilevel.prune_stages=0")
    if steps < stages + 1:
        raise ConfigError(f"bilevel.prune_stages={stages} needs at least {stages + 1} search steps, "
                          f"bilevel.steps={steps}; lower prune_stages or raise bilevel.steps")
    schedule, previous = [], candidates
    for i in range(1, stages + 1):
        alive = round(candidates * (keep / candidates) ** (i / (stages + 1)))
        alive = max(alive, keep + stages - i + 1)  # every stage prunes at least one and the last leaves > keep
        if alive >= previous:
            raise ConfigError(f"bilevel.prune_stages={stages} is too many for {candidates} candidates keeping "
                              f"{keep}: stage {i} would prune nothing; lower prune_stages")
        schedule.append(PruneStage(step=steps * i // (stages + 1), alive=alive))
        previous = alive
    return schedule


def lowest(scores: Mapping[str, float], live: Sequence[str], alive: int) -> Scores:
    """The ``len(live) − alive`` live modules with the lowest scores, with their scores (a stable sort: among equal
    scores the earlier module in ``live`` goes first)."""
    order = sorted(live, key=lambda name: scores[name])
    return {name: float(scores[name]) for name in order[:len(live) - alive]}


def rank_pruned(scores: Mapping[str, float], record: PruneRecord) -> Scores:
    """``scores`` of the survivors unchanged; pruned modules placed below them in stage order.

    With lo = the lowest survivor score, s = the spread of the survivor scores (1 if none), P stages, a module
    pruned at stage p (0-based) with within-stage position u ∈ [0, 1) (by its score when pruned) gets
    lo − s·(P − p − 0.9·u): stage p's values lie in (lo − s·(P − p), lo − s·(P − p − 0.9)], all below stage p + 1's
    and below lo. Only the order carries meaning for pruned modules."""
    pruned = record.pruned
    survivors = [v for name, v in scores.items() if name not in pruned]
    if not survivors:
        raise ValueError("pruning left no survivor to rank")
    lo, spread = min(survivors), max(survivors) - min(survivors)
    spread = spread if spread > 0 else 1.0
    out = {name: float(v) for name, v in scores.items() if name not in pruned}
    total = len(record.stages)
    for p, stage in enumerate(record.stages):
        ordered = sorted(stage, key=lambda name: stage[name])
        for j, name in enumerate(ordered):
            out[name] = lo - spread * (total - p - 0.9 * j / len(ordered))
    return {name: out[name] for name in scores}
