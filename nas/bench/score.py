"""Scoring a selection criterion against a placement table (nas/bench/placement.py), NAS-Bench style.

Two questions, each answered per seed s and then over seeds (mean, Student t-interval, nas/reporting/statistics.py):

* **Does it rank modules like their real utility?** Spearman ρ_s and Kendall τ_s between the criterion's module
  scores c_{m,s} (from a run at seed s) and the table's utilities u_{m,s} = score(single:m) − score(head only).
* **Does its selection train better than random ones of the same size?** For a trained k-module selection with
  score x_s, its percentile among the table's random k-subsets at the same seed,
  P_s = 100 · (#{r < x_s} + ½ #{r = x_s}) / #draws: 50 is what a random selection gets on average.

The **oracle** is the top-k modules by utility; its rank agreement is 1 by construction, so what matters is its
percentile once trained. Choose on one set, report on another: :func:`held_out_oracle` picks the oracle of seed s
from the mean utility of the *other* seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from nas.bench.placement import PlacementTable, mean_utility
from nas.errors import ConfigError
from nas.reporting.run_records import find_run_dirs
from nas.reporting.statistics import mean_std, t_interval


@dataclass(frozen=True)
class OverSeeds:
    """A per-seed quantity: its values by seed, their mean and the 95% t-interval of the mean (None below 2 seeds)."""

    by_seed: dict[int, float]
    mean: float | None
    ci: tuple[float, float] | None

    @classmethod
    def of(cls, by_seed: Mapping[int, float]) -> OverSeeds:
        values = [v for _, v in sorted(by_seed.items()) if math.isfinite(v)]
        mean = mean_std(values)[0]
        return cls(dict(sorted(by_seed.items())), mean, t_interval(values) if len(values) > 1 else None)


def rank_agreement(scores: Mapping[str, float], utility: Mapping[str, float]) -> tuple[float, float]:
    """(Spearman ρ, Kendall τ-b) between a criterion's scores and the utilities, on the modules both have."""
    common = [m for m in utility if m in scores]
    if len(common) < 3:
        raise ConfigError(f"only {len(common)} modules have both a criterion score and a utility; the table needs "
                          f"the single-module runs of this seed (placement single:i)")
    x, y = [scores[m] for m in common], [utility[m] for m in common]
    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y).statistic)


MIN_SUBSETS = 10  # below it a percentile moves in steps of more than 10 points


def percentile(value: float, distribution: Sequence[float]) -> float:
    """100 · (#{r < value} + ½ · #{r = value}) / n: the mid-rank percentile of ``value`` among ``distribution``;
    refused for fewer than :data:`MIN_SUBSETS` random subsets."""
    if not distribution:
        raise ConfigError("no random subsets of this size at this seed in the table (placement draw:k:j)")
    if len(distribution) < MIN_SUBSETS:
        raise ConfigError(f"only {len(distribution)} random subsets of this size at this seed: a percentile among "
                          f"them moves in steps of {100 / len(distribution):.0f} points; train at least {MIN_SUBSETS} "
                          "(method.placement=draw:k:0,...,draw:k:9) and rebuild the table")
    below = sum(r < value for r in distribution)
    ties = sum(r == value for r in distribution)
    return 100.0 * (below + 0.5 * ties) / len(distribution)


def criterion_agreement(table: PlacementTable, scores_by_seed: Mapping[int, Mapping[str, float]]
                        ) -> tuple[OverSeeds, OverSeeds]:
    """Spearman and Kendall of a criterion over the seeds where the table has every single-module run."""
    spearman, kendall = {}, {}
    for seed, scores in scores_by_seed.items():
        if table.has_every_single(seed):
            spearman[seed], kendall[seed] = rank_agreement(scores, table.utility(seed))
    return OverSeeds.of(spearman), OverSeeds.of(kendall)


def selection_percentiles(table: PlacementTable, scores_by_seed: Mapping[int, float], k: int) -> OverSeeds:
    """The percentile of a trained k-selection's score at each seed among that seed's random k-subsets (seeds with
    fewer than :data:`MIN_SUBSETS` of them are left out; :class:`Scoring`'s notes say which)."""
    return OverSeeds.of({seed: percentile(score, draws) for seed, score in scores_by_seed.items()
                         if len(draws := table.random_subsets(seed, k)) >= MIN_SUBSETS})


def top_k(utility: Mapping[str, float], k: int, order: Sequence[str]) -> list[str]:
    """The k modules of highest utility (ties by the space's order), listed in the space's order."""
    ranked = sorted(utility, key=lambda m: (-utility[m], order.index(m)))[:k]
    return [m for m in order if m in ranked]


def held_out_oracle(table: PlacementTable, seed: int, k: int) -> list[str]:
    """The oracle of ``seed``: the top-k modules by the mean utility of the table's other seeds that have every
    single-module run."""
    others = [s for s in table.seeds if s != seed and table.has_every_single(s)]
    if not others:
        raise ConfigError(f"the held-out oracle of seed {seed} needs every single-module run of another seed")
    return top_k(mean_utility(table, others), k, table.candidates)


def read_runs(run_dirs: Sequence[Path], table: PlacementTable) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(metrics, selection) of each finished run under ``run_dirs``; a run of another task, model or candidate set
    than ``table`` is refused, naming what differs."""
    found = []
    for root in run_dirs:
        for run_dir in find_run_dirs(Path(root)):
            try:
                found.append((json.loads((run_dir / "metrics.json").read_text()),
                              json.loads((run_dir / "selection.json").read_text())))
            except (OSError, ValueError):
                continue
            if differences := table.differences(run_dir, found[-1][1]):
                raise ConfigError(f"{run_dir} is not comparable with the table ({'; '.join(differences)}); score "
                                  "it against a table built for its model, task and search space")
    if not found:
        raise ConfigError(f"no finished runs under {', '.join(map(str, run_dirs))}")
    return found


@dataclass(frozen=True)
class Scoring:
    """What the runs say against a table: each criterion's (Spearman, Kendall) over seeds; each trained k-selection's
    percentile over seeds, labelled by the criteria (and the held-out oracle) that chose it; the selections
    of each criterion and of the oracle not trained yet, (seed, modules) → labels; and notes on the seeds left out
    where the table is incomplete."""

    agreement: dict[str, tuple[OverSeeds, OverSeeds]]
    percentiles: dict[str, OverSeeds]
    untrained: dict[tuple[int, tuple[str, ...]], list[str]]
    notes: list[str]


def score(table: PlacementTable, runs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], k: int) -> Scoring:
    """Each criterion recorded in the runs' selection.json (by seed), as recorded and, where the runs say each
    module's type (its DAM column), as z-scores within each type (``<name> (within_type)``, what
    ``criterion.normalize=within_type`` ranks by), against the table; each trained k-module fixed placement by its
    percentile among the random k-subsets of its seed."""
    from nas.search.criteria import normalize_scores

    criteria: dict[str, dict[int, dict[str, float]]] = {}
    trained: dict[tuple[int, frozenset[str]], tuple[str, float]] = {}
    for metrics, selection in runs:
        seed = int(metrics["seed"])
        types = {name: column for name, (_, column) in (selection.get("coordinates") or {}).items()}
        for name, scores in (selection.get("criteria") or {}).items():
            criteria.setdefault(name, {})[seed] = scores
            if types and name != "random":
                criteria.setdefault(f"{name} (within_type)", {})[seed] = normalize_scores(scores, types, "within_type")
        if metrics.get("method") == "fixed" and len(selection["selected"]) == k:
            trained[seed, frozenset(selection["selected"])] = (selection.get("placement", "?"), float(metrics["score"]))
    chosen = {label: {seed: top_k(scores, k, table.candidates) for seed, scores in by_seed.items()}
              for label, by_seed in criteria.items()}  # each criterion's k modules at each seed
    complete = [seed for seed in table.seeds if table.has_every_single(seed)]
    oracle = {seed: held_out_oracle(table, seed, k) for seed in table.seeds if set(complete) - {seed}}
    if oracle:  # each seed's oracle from the other seeds that have every single-module run
        chosen["oracle (held out)"] = oracle
    notes = [f"seed {seed}: {len(table.utility(seed))} of {len(table.candidates)} single-module runs: left out of τ "
             "and of the oracle" for seed in table.seeds if seed not in complete]
    notes += [f"seed {seed}: {n} random {k}-subsets (fewer than {MIN_SUBSETS}): left out of the percentiles"
              for seed in table.seeds if 0 < (n := len(table.random_subsets(seed, k))) < MIN_SUBSETS]
    by_label: dict[str, dict[int, float]] = {}
    for (seed, modules), (placement, value) in trained.items():
        names = [label for label, sets in chosen.items() if set(sets.get(seed, ())) == modules] or [placement]
        by_label.setdefault(" = ".join(names), {})[seed] = value
    untrained: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for label, sets in chosen.items():
        for seed, modules in sorted(sets.items()):
            if (seed, frozenset(modules)) not in trained:
                untrained.setdefault((seed, tuple(modules)), []).append(label)
    return Scoring({name: criterion_agreement(table, by_seed) for name, by_seed in sorted(criteria.items())},
                   {label: selection_percentiles(table, by_seed, k) for label, by_seed in sorted(by_label.items())},
                   dict(sorted(untrained.items())), notes)
