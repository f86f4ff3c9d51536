"""Per-branch learning rates that equalize how fast each branch moves its output (nas/search/branch_speed.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_BERT, compose_run
from test_search_options import run_search
from transformers import BertConfig, BertForSequenceClassification

from nas.errors import ConfigError
from nas.search.branch_speed import balanced_groups, branch_speeds, output_speeds
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.validation import validate_run_config
from search_spaces import build_search_space


def tiny_supernet() -> SuperNet:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT))
    space = build_search_space(model, "bert")
    return SuperNet(model, space, build_relaxation("sigmoid", 0.0, 1e-3), ["classifier.weight", "classifier.bias"],
                    rank=4)


def test_the_speed_of_the_first_branch_matches_its_formula_on_the_embeddings() -> None:
    net = tiny_supernet()
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0  # padding is left out of the mean
    speeds = branch_speeds(net, [{"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(3)}])
    name = "bert.encoder.layer.0.attention.self.query"
    net.eval()
    with torch.no_grad():
        x = net.model.bert.embeddings(input_ids=ids)  # the input of layer 0's query
        a, b = net.adapters[name].branch.lora_factors()
        code = (x @ a.T).norm(dim=-1)
    expected = math.sqrt(b.shape[0]) * float(code[mask.bool()].mean())
    assert speeds[name] == pytest.approx(expected, rel=1e-5)
    ffn_in = speeds["bert.encoder.layer.0.intermediate.dense"]
    assert set(speeds) == set(net.adapters) and all(v > 0 for v in speeds.values()) and ffn_in != speeds[name]


def test_balanced_groups_give_every_branch_the_same_lr_times_speed_and_the_head_the_base_lr() -> None:
    net = tiny_supernet()
    inner = net.named_weight_parameters()
    speeds = {name: 1.0 + i for i, name in enumerate(net.adapters)}
    groups = balanced_groups(net, inner, speeds, lr=1e-3)
    assert len(groups) == len(net.adapters) + 1
    covered = [id(p) for g in groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in inner.values())  # every weight exactly once
    median = sorted(speeds.values())[len(speeds) // 2 - 1:len(speeds) // 2 + 1]
    for group, (name, adapter) in zip(groups, net.adapters.items(), strict=False):
        assert {id(p) for p in group["params"]} == {id(p) for p in adapter.branch.parameters()}
        assert group["lr"] * speeds[name] == pytest.approx(1e-3 * sum(median) / 2)
    head = groups[-1]
    assert head["lr"] == 1e-3 and {id(p) for p in head["params"]} == {id(net.model.get_parameter(n))
                                                                       for n in net.head_names}
    with pytest.raises(ValueError, match="balance_lr=false"):
        balanced_groups(net, inner, dict.fromkeys(speeds, 0.0), lr=1e-3)


def test_a_search_with_balanced_rates_runs_and_moves_the_dam() -> None:
    _, space, outcome = run_search(["bilevel.balance_lr=true"])
    first, last = outcome.trajectory[0], outcome.trajectory[-1]
    assert set(outcome.scores) == set(space.names) and last["dam"] != first["dam"]


def test_output_speeds_match_a_direct_perturbation_and_restore_every_parameter() -> None:
    net = tiny_supernet()
    ids = torch.randint(5, 90, (3, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(3)}
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state = torch.random.get_rng_state()
    speeds = output_speeds(net, [batch], step=1e-3, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's random stream is untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's bf16 does not reach the measurement
        assert output_speeds(net, [batch], step=1e-3, seed=0) == speeds
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # the first branch by hand: the same signs from the same generator, the same outputs
    name, adapter = next(iter(net.adapters.items()))
    generator = torch.Generator().manual_seed(0)
    net.eval()
    with torch.no_grad():
        base = net(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        for p in adapter.branch.parameters():
            p.add_((torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1) * 1e-3)
        moved = net(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    assert speeds[name] == pytest.approx(float((moved - base).pow(2).mean().sqrt()) / 1e-3, rel=1e-4)
    assert set(speeds) == set(net.adapters) and all(v > 0 for v in speeds.values())
    assert len({round(v, 6) for v in speeds.values()}) > len(speeds) // 2  # modules differ in how far they move f


def test_output_speeds_refuse_no_batches_and_a_non_positive_step() -> None:
    net = tiny_supernet()
    with pytest.raises(ValueError, match="criterion.batches"):
        output_speeds(net, [], step=1e-3)
    ids = torch.randint(5, 90, (2, 5))
    with pytest.raises(ValueError, match="positive step"):
        output_speeds(net, [{"input_ids": ids}], step=0.0)


def test_a_search_balanced_in_output_space_runs_and_an_unknown_space_is_refused() -> None:
    _, space, outcome = run_search(["bilevel.balance_lr=true", "bilevel.balance_space=output"])
    assert set(outcome.scores) == set(space.names) and outcome.trajectory[-1]["dam"] != outcome.trajectory[0]["dam"]
    with pytest.raises(ConfigError, match="balance_space='logits' is not known; use branch"):
        validate_run_config(compose_run(["bilevel.balance_lr=true", "bilevel.balance_space=logits"]))
