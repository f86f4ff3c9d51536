"""Progressive pruning during the search (nas/search/pruning.py, ``bilevel.prune_stages``): the schedule, the order
of pruned modules in every criterion's scores, and a search that switches branches off for good."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_run
from test_search_options import run_search

from nas.errors import ConfigError
from nas.search.discretizer import keep_count
from nas.search.pruning import PruneRecord, PruneStage, lowest, prune_schedule, rank_pruned
from nas.validation import validate_run_config


@pytest.mark.parametrize(("steps", "candidates", "keep", "stages", "expected"), [
    (150, 36, 9, 2, [PruneStage(50, 23), PruneStage(100, 14)]),  # 36·(1/4)^(1/3) = 22.7, 36·(1/4)^(2/3) = 14.3
    (150, 36, 9, 1, [PruneStage(75, 18)]),
    (150, 36, 9, 0, []),
    (9, 12, 3, 2, [PruneStage(3, 8), PruneStage(6, 5)]),
])
def test_the_schedule_shrinks_the_live_count_geometrically(steps: int, candidates: int, keep: int, stages: int,
                                                          expected: list[PruneStage]) -> None:
    assert prune_schedule(steps, candidates, keep, stages) == expected


@pytest.mark.parametrize(("args", "message"), [
    ((2, 36, 9, 2), "needs at least 3 search steps"),
    ((150, 36, 36, 2), "nothing to prune"),
    ((150, 36, 9, -1), "must be >= 0"),
    ((10, 6, 4, 2), "stage 1 would prune nothing; lower prune_stages"),  # 6 live, and the last stage must leave 5
])
def test_a_schedule_that_cannot_run_is_refused_with_the_fix(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        prune_schedule(*args)


def test_lowest_returns_the_lowest_live_modules_with_their_scores() -> None:
    scores = {"a": 0.3, "b": 0.1, "c": 0.5, "d": 0.2, "e": 0.0}
    assert lowest(scores, ["a", "b", "c", "d"], 2) == {"b": 0.1, "d": 0.2}  # e is not live


def test_pruned_modules_rank_below_every_survivor_in_stage_order() -> None:
    record = PruneRecord(stages=[{"p0a": 0.9, "p0b": 0.1}, {"p1": 5.0}])
    scores = {"s1": 2.0, "s2": 3.0, "p0a": 7.0, "p0b": 8.0, "p1": 9.0}  # the final scores of pruned ones are ignored
    ranked = rank_pruned(scores, record)
    assert list(ranked) == list(scores)
    assert ranked["s1"] == 2.0 and ranked["s2"] == 3.0
    assert sorted(ranked, key=ranked.get) == ["p0b", "p0a", "p1", "s1", "s2"]  # stage 0 by its scores then, stage 1
    assert max(ranked["p0a"], ranked["p0b"]) < ranked["p1"] < 2.0


def test_a_search_with_pruning_switches_branches_off_and_ranks_them_last() -> None:
    cfg, space, outcome = run_search(["bilevel.steps=9", "bilevel.prune_stages=2", "discretizer.rho=0.25",
                                      "criterion.record=[dam,gate_saliency,perturbation,grad_norm]"])
    net, schedule = outcome.supernet, prune_schedule(9, len(space), keep_count(0.25, len(space)), 2)
    pruned = set(outcome.trajectory[-1]["pruned"])
    assert len(pruned) == len(space) - schedule[-1].alive == 7 and net.pruned == pruned
    first = {entry["step"]: set(entry["pruned"]) for entry in outcome.trajectory}
    assert len(first[2]) == len(space) - schedule[0].alive  # pruned after step index 2 (3 steps done)
    for name in ("dam", "gate_saliency", "perturbation"):  # criteria scored on the searched supernet
        scores = outcome.criteria[name]
        assert max(scores[n] for n in pruned) < min(scores[n] for n in space.names if n not in pruned), name
    # a pruned branch adds nothing to its layer's output
    name = sorted(pruned)[0]
    adapter = net.adapters[name]
    with torch.no_grad():
        net.eval()
        net(input_ids=torch.tensor([[2, 5, 7, 3]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    assert float(adapter.gate) == 0.0


def test_pruning_by_a_criterion_scored_at_init_is_refused() -> None:
    with pytest.raises(ConfigError, match="criterion=grad_norm scores only at init"):
        run_search(["bilevel.steps=9", "bilevel.prune_stages=2", "criterion=grad_norm"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["bilevel.prune_stages=-1"], "bilevel.prune_stages=-1 must be >= 0"),
    (["bilevel.prune_stages=2", "discretizer=threshold"], "discretizer=threshold could select pruned modules; use "
                                                          "discretizer=global_topk"),
])
def test_a_bad_pruning_config_is_refused_with_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_run_config(compose_run(overrides))
