"""search_cache: one search serves every ρ and criterion; a loaded search gives the run a search of its own gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_run

from nas.engine.identity import run_fingerprint
from nas.engine.logger import NullLogger
from nas.engine.pipeline import run_pipeline
from nas.errors import ConfigError
from nas.search import search_cache

SMOKE = ["task=mrpc", "debug=smoke", "logger=none", "retrain.export_adapter=false", "precision=fp32",
         "criterion.record=[dam,perturbation,random]"]


def identity(overrides: list[str]) -> dict:
    return search_cache.search_identity(run_fingerprint(compose_run([*SMOKE, *overrides])))


@pytest.mark.parametrize(("first", "second", "same"), [
    (["discretizer.rho=0.25"], ["discretizer.rho=0.5"], True),  # what the search keeps is decided after it
    (["criterion.name=dam"], ["criterion.name=perturbation"], True),  # both scored by the search
    (["retrain.epochs=1"], ["retrain.epochs=3", "retrain.lr=5e-4", "retrain.init=fresh"], True),
    (["discretizer=threshold"], ["discretizer=global_topk"], True),
    (["seed=0"], ["seed=1"], False),
    (["bilevel.steps=6"], ["bilevel.steps=7"], False),
    (["relaxation=sigmoid"], ["relaxation=softmax"], False),
    (["criterion.name=dam"], ["criterion.name=grad_norm"], False),  # not recorded: the scored set differs
    (["discretizer.rho=0.25", "bilevel.prune_stages=1"], ["discretizer.rho=0.5", "bilevel.prune_stages=1"], False),
    (["discretizer.rho=0.25", "+bilevel.regularizers.expected_budget=1.0"],
     ["discretizer.rho=0.5", "+bilevel.regularizers.expected_budget=1.0"], False),  # its target is ρ
    (["threads=1", "search_cache=/a"], ["threads=2", "search_cache=/b"], True),  # volatile
])
def test_the_search_identity_drops_only_what_the_search_does_not_read(first: list[str], second: list[str],
                                                                      same: bool) -> None:
    assert (identity(first)["digest"] == identity(second)["digest"]) is same


def test_a_folder_with_another_search_is_refused_naming_the_difference(tmp_path: Path) -> None:
    mine, other = identity(["seed=0"]), identity(["seed=1"])
    folder = search_cache.folder_of(tmp_path, mine)
    folder.mkdir(parents=True)
    (folder / search_cache.STATE).write_bytes(b"")
    (folder / "fingerprint.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"holds another search \(seed: 1 → 0.*remove that folder"):
        search_cache.load(tmp_path, mine, None, "dam")  # type: ignore[arg-type]  (refused before the supernet)


@pytest.mark.slow
def test_a_loaded_search_gives_the_run_its_own_search_gives(tmp_path: Path, tiny_encoder: Path) -> None:
    """Run 1 (DAM, ρ 0.25) searches and saves; run 2 (perturbation, ρ 0.5) loads that search; run 3 is run 2 without
    the cache, searching itself: its selection and dev metrics equal run 2's. On the tiny encoder: the equality does
    not depend on what the backbone knows."""
    tiny = f"model.name_or_path={tiny_encoder}"
    cache = tmp_path / "cache"
    for run in ("1", "2", "3"):
        (tmp_path / run).mkdir()
    first = run_pipeline(compose_run([*SMOKE, tiny, "discretizer.rho=0.25", f"search_cache={cache}"]), tmp_path / "1",
                         NullLogger())
    assert first["search_reused"] is None and len(list(cache.iterdir())) == 1
    overrides = [*SMOKE, tiny, "discretizer.rho=0.5", "criterion.name=perturbation"]
    loaded = run_pipeline(compose_run([*overrides, f"search_cache={cache}"]), tmp_path / "2", NullLogger())
    assert loaded["search_reused"] == str(next(cache.iterdir()))
    own = run_pipeline(compose_run(overrides), tmp_path / "3", NullLogger())
    assert own["search_reused"] is None and own["num_selected"] == loaded["num_selected"] == 18
    selections = [json.loads((tmp_path / run / "selection.json").read_text()) for run in ("2", "3")]
    assert selections[0]["selected"] == selections[1]["selected"]
    assert selections[0]["criteria"] == selections[1]["criteria"]
    assert loaded["metrics"] == pytest.approx(own["metrics"], abs=1e-6)
    assert loaded["search_wall_s"] == first["search_wall_s"]  # the cost of the search that was run
