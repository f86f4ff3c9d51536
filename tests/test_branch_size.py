"""bilevel.branch_size: during the search every LoRA branch has ‖ΔW‖_F = τ‖W₀‖_F, so γ alone sets its size."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_run, tiny_batch, tiny_bert
from test_search_options import run_search

from nas.adapters.retrain import adapt_selected, expected_gates
from nas.errors import ConfigError
from nas.search.branch_speed import calibrate_sizes
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.validation import validate_run_config
from search_spaces import build_search_space

HEAD = ["classifier.weight", "classifier.bias"]
TAU = 0.05


def sized_supernet(operator: str = "lora", relaxation: str = "sigmoid") -> SuperNet:
    model = tiny_bert(seed=0)
    return SuperNet(model, build_search_space(model, "bert"), build_relaxation(relaxation), HEAD, operator=operator,
                    rank=4, alpha=8.0, generator=torch.Generator().manual_seed(0), branch_size=TAU)


def applied_delta(net: SuperNet, name: str) -> torch.Tensor:
    """The ΔW the layer adds in a forward pass: gate (γ·s) times B A."""
    adapter = net.adapters[name]
    a, b = adapter.branch.lora_factors()
    return adapter.gate.detach() * (b @ a).detach()


def test_every_branch_starts_non_zero_and_reaches_the_layer_at_gamma_times_tau(batch: dict) -> None:
    net = sized_supernet()
    net(**{k: v for k, v in batch.items() if k != "labels"})
    gamma = net.export_probs()
    for name, adapter in net.adapters.items():
        assert torch.count_nonzero(adapter.branch.lora_B) > 0
        relative = applied_delta(net, name).norm() / adapter.base_layer.weight.norm()
        assert math.isclose(float(relative), gamma[name] * TAU, rel_tol=1e-4)


def test_the_size_of_b_no_longer_changes_the_function(batch: dict) -> None:
    """(γ, B) and (γ, c·B) give the same outputs: only γ can make a branch larger."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    net = sized_supernet().eval()
    before = net(**inputs).logits
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.branch.lora_B.mul_(7.0)
    torch.testing.assert_close(net(**inputs).logits, before)
    name = net.space.names[0]
    size = applied_delta(net, name).norm()
    with torch.no_grad():
        net.dam_logits.add_(1.0)
    net(**inputs)
    gamma = net.export_probs()[name]
    assert math.isclose(float(applied_delta(net, name).norm() / size), gamma / torch.sigmoid(
        net.dam_logits.detach() - 1.0)[net.space.coordinate(name)].item(), rel_tol=1e-4)


@pytest.mark.parametrize("relaxation", ["sigmoid", "softmax"])
def test_the_retrain_starts_from_the_sized_branches(relaxation: str, batch: dict) -> None:
    """Folding E[γ]·s into B reproduces the discretized supernet exactly."""
    net = sized_supernet(relaxation=relaxation).eval()
    with torch.no_grad():
        net.dam_logits.copy_(torch.randn(net.dam_logits.shape, generator=torch.Generator().manual_seed(2)))
    scores = net.export_probs()
    selected = sorted(scores, key=scores.get)[-6:]
    gates = expected_gates(net)
    model = tiny_bert(seed=0)
    adapt_selected(model, HEAD, selected, "lora", 4, 8.0, 0.0, supernet=net, gates=gates)
    net.removed = set(net.space.names) - set(selected)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(model.eval()(**inputs).logits, net(**inputs).logits)


def test_a_sized_search_runs_moves_the_dam_and_keeps_the_size() -> None:
    _, space, outcome = run_search(["bilevel.branch_size=0.05"])
    assert outcome.trajectory[-1]["dam"] != outcome.trajectory[0]["dam"]
    net = outcome.supernet
    name = space.names[0]
    with torch.no_grad():
        a, b = net.adapters[name].branch.lora_factors()
        relative = net.size_factor(name) * (b @ a).norm() / net.adapters[name].base_layer.weight.norm()
    assert math.isclose(float(relative), 0.05, rel_tol=1e-4)


def test_a_non_lora_operator_is_refused() -> None:
    with pytest.raises(ConfigError, match="space.operator=lora or bilevel.branch_size=null"):
        sized_supernet(operator="prolora")
    with pytest.raises(ConfigError, match="bilevel.branch_size rescales LoRA branches"):
        validate_run_config(compose_run(["bilevel.branch_size=0.05", "space.operator=prolora"]))


@pytest.mark.parametrize("value", ["0", "-0.1"])
def test_a_branch_size_that_is_not_positive_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="must be a positive relative norm"):
        validate_run_config(compose_run([f"bilevel.branch_size={value}"]))


def gate_sensitivity(net: SuperNet, inputs: dict, name: str, delta: float = 1e-3) -> float:
    """RMS output change per unit change of one gate, by hand through the gate probe."""
    row, col = net.space.coordinate(name)
    with torch.no_grad():
        base = net(**inputs).logits
        net.gate_probe[row, col] += delta
        moved = net(**inputs).logits
        net.gate_probe[row, col] -= delta
    return float((moved - base).pow(2).mean().sqrt()) / delta


def test_sizes_in_output_units_make_every_gate_move_the_outputs_equally(batch: dict) -> None:
    model = tiny_bert(seed=0)  # gates near 0 (γ₀ = 0.0025): the calibration is a derivative at the initial gates
    net = SuperNet(model, build_search_space(model, "bert"), build_relaxation("sigmoid", -6.0, 0.0), HEAD, rank=4,
                   alpha=8.0, generator=torch.Generator().manual_seed(0), branch_size=TAU)
    net = net.eval().double()  # float64: the tiny model's logits move by ~1e-8 per step
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    before = {name: gate_sensitivity(net, inputs, name) for name in net.space.names}
    assert max(before.values()) > 10 * min(before.values())  # in weight units the modules differ
    sensitivities = calibrate_sizes(net, [batch], delta=1e-3)
    for name in net.space.names:
        assert sensitivities[name] == pytest.approx(before[name], rel=1e-6)
    after = [gate_sensitivity(net, inputs, name) for name in net.space.names]
    assert max(after) == pytest.approx(min(after), rel=1e-2)  # from a spread of more than 10x
    assert torch.count_nonzero(net.gate_probe) == 0  # the probe is left as it was


def test_output_units_need_sized_branches_and_a_known_unit() -> None:
    model = tiny_bert(seed=0)
    plain = SuperNet(model, build_search_space(model, "bert"), build_relaxation("sigmoid"), HEAD, rank=4)
    with pytest.raises(ValueError, match="set bilevel.branch_size"):
        calibrate_sizes(plain, [tiny_batch()])
    with pytest.raises(ConfigError, match="bilevel.branch_size is null; set"):
        validate_run_config(compose_run(["bilevel.branch_size_units=output"]))
    with pytest.raises(ConfigError, match="branch_size_units='joules' is not known"):
        validate_run_config(compose_run(["bilevel.branch_size=0.05", "bilevel.branch_size_units=joules"]))


def test_a_search_sized_in_output_units_runs_and_keeps_the_calibrated_size() -> None:
    _, space, outcome = run_search(["bilevel.branch_size=0.05", "bilevel.branch_size_units=output"])
    assert outcome.trajectory[-1]["dam"] != outcome.trajectory[0]["dam"]
    net = outcome.supernet
    assert len({round(c, 6) for c in net.size_scales.values()}) > 1
    name = space.names[0]
    with torch.no_grad():
        a, b = net.adapters[name].branch.lora_factors()
        relative = net.size_factor(name) * (b @ a).norm() / net.adapters[name].base_layer.weight.norm()
    assert math.isclose(float(relative), 0.05 * net.size_scales[name], rel_tol=1e-4)
