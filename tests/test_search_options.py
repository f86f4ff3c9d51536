"""Every search option of issue 4 as one config switch, through the real search loop on a tiny BERT:
relaxations, second-order hypergradient, DAM regularizers, perturbation criterion, diagnostics."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BERT, compose_run
from test_determinism import TOKENIZER, synthetic_data
from transformers import BertConfig, BertForSequenceClassification

from nas.engine.backbone import Backbone
from nas.engine.data import TaskData
from nas.engine.logger import NullLogger
from nas.engine.outputs import seed_everything
from nas.search.diagnostics import collapse, mean_binary_entropy
from nas.search.loop import SearchSettings, dropout_set, search
from objectives import get_task
from search_spaces import build_search_space


def run_search(overrides: list[str], seed: int = 0):
    cfg = compose_run(["debug=smoke", f"seed={seed}", "bilevel.steps=4", "bilevel.batch_size=8", "logger=none",
                       "bilevel.alpha_optimizer.lr=0.05", "space.rank=4", *overrides])
    seed_everything(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT))
    backbone = Backbone(model, TOKENIZER, ["classifier.weight", "classifier.bias"], "tiny")
    space = build_search_space(model, "bert")
    data = TaskData(get_task("sst2"), synthetic_data(), synthetic_data(16, seed=1))
    return cfg, space, search(SearchSettings.from_config(cfg), backbone, space, data, NullLogger())


@pytest.mark.parametrize("overrides", [
    ["relaxation=sigmoid"], ["relaxation=softmax"], ["relaxation=gumbel"],
    ["relaxation=gumbel", "relaxation.hard=true"], ["relaxation=hard_concrete"],
    ["bilevel=second_order", "bilevel.warmup_steps=1"],  # its default 5 warm-up steps outlast this 4-step search
    ["bilevel=second_order", "bilevel.warmup_steps=1", "relaxation=gumbel"],
    ["+bilevel.regularizers.entropy=0.5", "+bilevel.regularizers.expected_budget=1.0"],
    ["+bilevel.regularizers.zero_one=1.0", "+bilevel.regularizers.beta_decay=0.1"],
    ["bilevel.warmup_steps=2"],
    ["bilevel.w_optimizer.name=shared_adam"],  # no virtual step exists for it: first order never builds one
    ["bilevel=second_order", "bilevel.warmup_steps=1", "bilevel.w_optimizer.name=shared_adam",
     "bilevel.unrolled_step=sgd"],
    ["bilevel.w_optimizer.name=sgd", "bilevel.w_optimizer.lr=0.1"],
    ["bilevel.w_lr_start=0.3"],
    ["bilevel.w_average=0.9"],
    ["bilevel=second_order", "bilevel.warmup_steps=1", "bilevel.w_average=0.9"],
])
def test_every_search_option_runs_and_moves_the_dam(overrides: list[str]) -> None:
    """α-steps (with an α-loss) run exactly after the bilevel.warmup_steps w-only steps; the DAM holds still
    during the warm-up and has moved by the last step."""
    cfg, space, outcome = run_search([*overrides, "bilevel.log_every=1"])  # one trajectory entry per step
    assert set(outcome.scores) == set(space.names)
    assert all(0.0 <= v <= 1.0 for v in outcome.scores.values())
    warmup, trajectory = cfg.bilevel.warmup_steps, outcome.trajectory
    assert [entry["step"] for entry in trajectory] == [0, 1, 2, 3] and warmup < 4
    assert [entry["alpha_loss"] is None for entry in trajectory] == [step < warmup for step in range(4)]
    dams = [entry["dam"] for entry in trajectory]
    assert all(dam == dams[0] for dam in dams[:warmup])  # no α-step, no move
    assert dams[-1] != dams[max(warmup - 1, 0)]  # moved since the warm-up's end (or since the first step)
    assert {"entropy", "spread", "collapse"} <= set(trajectory[-1])


def test_regularizer_values_are_logged_in_the_trajectory() -> None:
    _, _, outcome = run_search(["+bilevel.regularizers.entropy=0.5"])
    assert "entropy" in outcome.trajectory[-1]["penalties"]


def test_a_strong_budget_penalty_drives_the_expected_keep_toward_the_target() -> None:
    _, _, free = run_search(["discretizer.rho=0.25"])
    _, _, pushed = run_search(["discretizer.rho=0.25", "+bilevel.regularizers.expected_budget=50"])
    target = 0.25 * len(free.scores)  # Σγ the penalty asks for (the gates start near 0.05, so it pushes them up)
    assert abs(sum(pushed.scores.values()) - target) < abs(sum(free.scores.values()) - target) - 0.1


def test_gumbel_temperature_is_annealed_over_the_search() -> None:
    _, _, outcome = run_search(["relaxation=gumbel", "relaxation.tau_max=4", "relaxation.tau_min=0.5"])
    assert outcome.supernet.relaxation.tau == pytest.approx(0.5)


def test_perturbation_criterion_is_the_loss_rise_when_a_branch_is_removed() -> None:
    cfg, space, outcome = run_search(["criterion=perturbation", "criterion.batches=2", "criterion.record=[]"])
    assert list(outcome.criteria) == ["perturbation"]
    drops = outcome.criteria["perturbation"]
    assert len(set(drops.values())) > 1  # removals do change the α-split loss
    assert outcome.supernet.removed == set()
    assert set(drops) == set(space.names)


def test_diagnostics_detect_collapse_and_entropy() -> None:
    assert collapse({"a": 0.99, "b": 0.97}) == "all_on" and collapse({"a": 0.01, "b": 0.02}) == "all_off"
    assert collapse({"a": 0.99, "b": 0.02}) is None
    assert mean_binary_entropy({"a": 0.5}) == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert mean_binary_entropy({"a": 1.0, "b": 0.0}) == pytest.approx(0.0, abs=1e-9)


def test_unknown_regularizer_is_a_config_error() -> None:
    from nas.errors import ConfigError
    from nas.validation import validate_run_config

    with pytest.raises(ConfigError, match="bilevel.regularizers.entropyy is unknown"):
        validate_run_config(compose_run(["+bilevel.regularizers.entropyy=1.0"]))


def test_dropout_set_switches_every_dropout_inside_the_block_and_restores_it() -> None:
    model = BertForSequenceClassification(BertConfig(num_labels=2, **{**TINY_BERT, "hidden_dropout_prob": 0.3})).train()
    before = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert before and max(before) > 0
    ids = torch.randint(0, 50, (2, 6))
    with dropout_set(model, 0.0):
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
        torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits)  # train mode, no noise
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == before
    with dropout_set(model, None):
        assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == before


@pytest.mark.parametrize("dropout", ["0.0", "null"])
def test_the_search_leaves_the_dropout_of_the_retrain_as_configured(dropout: str) -> None:
    cfg, _, outcome = run_search([f"bilevel.dropout={dropout}", "space.dropout=0.2"])
    branches = [m for m in outcome.supernet.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.2]
    assert branches  # the LoRA branches' dropout is back at space.dropout after the search


def test_a_search_dropout_outside_zero_one_is_refused() -> None:
    from nas.errors import ConfigError
    from nas.validation import validate_run_config

    with pytest.raises(ConfigError, match=r"bilevel.dropout=1.5 must be in \[0, 1\)"):
        validate_run_config(compose_run(["bilevel.dropout=1.5"]))


def test_an_alpha_shrink_outside_zero_one_is_refused() -> None:
    from nas.errors import ConfigError
    from nas.validation import validate_run_config

    with pytest.raises(ConfigError, match=r"bilevel.alpha_shrink=1.0 must be in \[0, 1\)"):
        validate_run_config(compose_run(["bilevel.alpha_shrink=1.0"]))
