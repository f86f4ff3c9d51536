"""Weight sharing: the retrained model starts exactly where the discretized supernet ended."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert

from nas.adapters.retrain import adapt_selected, expected_gates
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from search_spaces import build_search_space

HEAD = ["classifier.weight", "classifier.bias"]


def trained_looking_supernet(relaxation: str = "sigmoid") -> SuperNet:
    model = tiny_bert(seed=0)
    net = SuperNet(model, build_search_space(model, "bert"), build_relaxation(relaxation), HEAD, rank=4, alpha=8.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.branch.lora_B.copy_(torch.randn(adapter.branch.lora_B.shape, generator=generator))
        net.dam_logits.copy_(torch.randn(net.dam_logits.shape, generator=generator))
        net.model.classifier.weight.add_(1.0)
    return net.eval()


def test_shared_init_with_folded_gates_reproduces_the_discretized_supernet(batch: dict) -> None:
    net = trained_looking_supernet()
    scores = net.export_probs()
    selected = sorted(scores, key=scores.get)[-6:]
    model = tiny_bert(seed=0)
    adapt_selected(model, HEAD, selected, "lora", 4, 8.0, 0.0, supernet=net, gates=scores)
    with torch.no_grad():  # discretize the supernet: γ = 0 for every module that was not kept
        for name, (row, col) in zip(net.space.names, map(net.space.coordinate, net.space.names), strict=True):
            if name not in selected:
                net.dam_logits[row, col] = -math.inf
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(model.eval()(**inputs).logits, net(**inputs).logits)


def test_fresh_init_keeps_only_the_structure(batch: dict) -> None:
    net = trained_looking_supernet()
    selected = list(net.space.names[:3])
    model = tiny_bert(seed=0)
    adapters = adapt_selected(model, HEAD, selected, "lora", 4, 8.0, 0.0)
    assert list(adapters) == selected
    assert all(torch.count_nonzero(a.branch.lora_B) == 0 for a in adapters.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.branch.lora_{m}" for n in selected for m in "AB"} | set(HEAD)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(model.eval()(**inputs).logits, tiny_bert(seed=0)(**inputs).logits)


@pytest.mark.parametrize("relaxation", ["sigmoid", "softmax", "gumbel", "hard_concrete"])
def test_folded_gates_are_the_expected_training_gates(relaxation: str) -> None:
    """B ← E[γ]·B with E[γ] the relaxation's expected gate (the evaluation γ only for deterministic ones)."""
    net = trained_looking_supernet(relaxation)
    net.relaxation.set_progress(1.0)  # the end of the search
    gates = expected_gates(net)
    matrix = net.relaxation.expected_gate(net.dam_logits)
    assert gates == {n: float(matrix[net.space.coordinate(n)]) for n in net.space.names}
    if not net.relaxation.stochastic:
        assert gates == pytest.approx(net.export_probs(), abs=0, rel=0)
    selected = list(net.space.names[::2])
    adapters = adapt_selected(tiny_bert(seed=0), HEAD, selected, "lora", 4, 8.0, 0.0, supernet=net, gates=gates)
    for name, adapter in adapters.items():
        torch.testing.assert_close(adapter.branch.lora_B, gates[name] * net.adapters[name].branch.lora_B)


def test_the_supernet_becomes_the_retrained_model_in_place(batch: dict) -> None:
    """One model per run: adapting the supernet's own model unwraps it, keeps the searched head and gives the
    same function as a retrained copy built on a second backbone."""
    net, copy_net = trained_looking_supernet(), trained_looking_supernet()
    scores = net.export_probs()
    selected = sorted(scores, key=scores.get)[-6:]
    copy = tiny_bert(seed=0)
    adapt_selected(copy, HEAD, selected, "lora", 4, 8.0, 0.0, supernet=copy_net, gates=scores)
    model = net.model
    adapters = adapt_selected(model, HEAD, selected, "lora", 4, 8.0, 0.0, supernet=net, gates=scores)
    assert sorted(adapters) == sorted(selected) and not net.adapters
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "AdaptedLinear"}
    assert wrapped == set(selected)  # every other candidate is its plain base layer again
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"{n}.branch.lora_{m}" for n in selected for m in "AB"} | set(HEAD)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(model.eval()(**inputs).logits, copy.eval()(**inputs).logits)


@pytest.mark.slow
def test_a_diffora_run_loads_the_backbone_once(tmp_path, monkeypatch: pytest.MonkeyPatch, tiny_encoder) -> None:
    from conftest import compose_run
    from transformers import AutoModelForSequenceClassification

    from nas.engine.logger import NullLogger
    from nas.engine.pipeline import run_pipeline

    loads = []
    original = AutoModelForSequenceClassification.from_pretrained
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained",
                        lambda *args, **kwargs: loads.append(args) or original(*args, **kwargs))
    for init in ("shared", "fresh"):
        loads.clear()
        cfg = compose_run(["debug=smoke", "logger=none", f"model.name_or_path={tiny_encoder}",
                           "retrain.export_adapter=false", "bilevel.steps=2",
                           "retrain.steps=2", "criterion.record=[dam]", f"retrain.init={init}"])
        result = run_pipeline(cfg, tmp_path, NullLogger())
        assert len(loads) == 1, init
        assert result["num_selected"] == 18 and result["peak_rss_mb"] > 0
