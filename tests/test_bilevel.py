"""The bilevel step: each half updates only its own parameters; the optimizers share nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch, tiny_bert

from nas.search.bilevel import BilevelSearch, assert_disjoint
from nas.search.hypergradient import HYPERGRADIENTS, BilevelProblem, first_order, second_order
from nas.search.loop import w_lr_ramp
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.search.virtual_step import optimizer_virtual_step
from search_spaces import build_search_space


def cross_entropy(outputs, batch) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])


def make_search(warmup_steps: int = 0, w_average: float = 0.0) -> tuple[SuperNet, BilevelSearch]:
    model = tiny_bert()
    net = SuperNet(model, build_search_space(model, "bert"), build_relaxation("sigmoid"),
                   ["classifier.weight", "classifier.bias"], rank=4).train()
    with torch.no_grad():  # non-zero B so that the DAM receives a gradient from the first step
        for adapter in net.adapters.values():
            adapter.branch.lora_B.normal_(std=0.1)
    inner = net.named_weight_parameters()
    problem = BilevelProblem(net, cross_entropy, inner, {"dam_logits": net.dam_logits}, inner_lr=1e-2)
    w_optimizer = torch.optim.AdamW(list(inner.values()), lr=1e-2)
    alpha_optimizer = torch.optim.Adam(net.arch_parameters(), lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-3)
    return net, BilevelSearch(problem, first_order, w_optimizer, alpha_optimizer, warmup_steps=warmup_steps,
                              w_average=w_average)


def snapshot(net: SuperNet) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def changed(before: dict[str, torch.Tensor], net: SuperNet) -> set[str]:
    return {name for name, p in net.named_parameters() if not torch.equal(before[name], p.detach())}


def test_alpha_step_updates_only_the_dam() -> None:
    net, search = make_search()
    before = snapshot(net)
    search.alpha_step(tiny_batch(seed=1), tiny_batch(seed=2))
    assert changed(before, net) == {"dam_logits"} and torch.isfinite(net.dam_logits).all()


def test_w_step_updates_only_lora_and_head() -> None:
    net, search = make_search()
    before = snapshot(net)
    search.w_step(tiny_batch(seed=1))
    moved = changed(before, net)
    assert moved == set(search.problem.inner)
    assert all(".branch." in n or ".classifier." in n for n in moved)


def test_full_step_moves_both_and_never_the_base_weights() -> None:
    net, search = make_search()
    before = snapshot(net)
    stats = search.step(tiny_batch(seed=1), tiny_batch(seed=2))
    assert stats.alpha_loss is not None and stats.w_loss > 0
    assert changed(before, net) == set(search.problem.inner) | {"dam_logits"}


def test_warmup_defers_alpha_steps() -> None:
    net, search = make_search(warmup_steps=2)
    before = net.dam_logits.detach().clone()
    for seed in range(2):
        assert search.step(tiny_batch(seed=seed), tiny_batch(seed=seed + 10)).alpha_loss is None
    assert torch.equal(before, net.dam_logits.detach())
    assert search.step(tiny_batch(seed=5), tiny_batch(seed=6)).alpha_loss is not None
    assert not torch.equal(before, net.dam_logits.detach())


def test_optimizers_share_no_parameter() -> None:
    _, search = make_search()
    w_ids = {id(p) for g in search.w_optimizer.param_groups for p in g["params"]}
    a_ids = {id(p) for g in search.alpha_optimizer.param_groups for p in g["params"]}
    assert w_ids and a_ids and w_ids.isdisjoint(a_ids)


def test_shared_parameter_is_rejected() -> None:
    shared = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="share 1 parameter"):
        assert_disjoint(torch.optim.SGD([shared], lr=1.0), torch.optim.Adam([shared]))


def test_first_order_hypergradient_is_the_alpha_split_gradient() -> None:
    net, search = make_search()
    alpha_batch = tiny_batch(seed=3)
    result = HYPERGRADIENTS.get("first_order")(search.problem, tiny_batch(seed=4), alpha_batch)
    labels = alpha_batch["labels"]
    inputs = {k: v for k, v in alpha_batch.items() if k != "labels"}
    (expected,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(**inputs).logits, labels),
                                      [net.dam_logits])
    torch.testing.assert_close(result.grads[0], expected)


def test_loss_at_substituted_weights_uses_them_without_touching_the_model() -> None:
    """The hook a second-order method needs: L(w′, α) through functional_call, the model left as it was."""
    net, search = make_search()
    batch = tiny_batch(seed=7)
    shifted = {n: p.detach() + 0.05 for n, p in search.problem.inner.items()}
    before = snapshot(net)
    loss_shifted = search.problem.loss(batch, weights=shifted)
    assert changed(before, net) == set()
    with torch.no_grad():
        for name, p in search.problem.inner.items():
            p.copy_(shifted[name])
    torch.testing.assert_close(loss_shifted, search.problem.loss(batch))


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_the_optimizer_virtual_step_predicts_the_w_step(grad_clip: float | None) -> None:
    """Δ from the w-optimizer's virtual step (same clipping) is the change the next w-step makes."""
    _, search = make_search()
    search.grad_clip = grad_clip
    params = list(search.problem.inner.values())
    virtual = optimizer_virtual_step(search.w_optimizer, params, grad_clip=grad_clip)
    for seed in range(3):
        batch = tiny_batch(seed=seed)
        delta = virtual(torch.autograd.grad(search.problem.loss(batch), params))
        old = [p.detach().clone() for p in params]
        search.w_step(batch)
        for p, o, d in zip(params, old, delta, strict=True):
            torch.testing.assert_close(p.detach() - o, d, atol=1e-6, rtol=0)


def test_second_order_with_the_optimizer_step_moves_only_the_dam() -> None:
    net, search = make_search()
    search.hypergradient = second_order
    search.problem.virtual_step = optimizer_virtual_step(search.w_optimizer, list(search.problem.inner.values()),
                                                         grad_clip=search.grad_clip)
    search.w_step(tiny_batch(seed=0))  # the w-optimizer has a state now
    before, state = snapshot(net), {k: v.clone() for k, v in search.w_optimizer.state_dict()["state"][0].items()}
    search.alpha_step(tiny_batch(seed=1), tiny_batch(seed=2))
    assert changed(before, net) == {"dam_logits"} and torch.isfinite(net.dam_logits).all()
    assert all(torch.equal(v, search.w_optimizer.state_dict()["state"][0][k]) for k, v in state.items())


def test_shrunk_gates_take_the_hypergradient_at_a_fraction_of_every_gate_and_restore_it() -> None:
    from nas.search.loop import shrunk_gates

    net, search = make_search()
    batch = tiny_batch()
    shrunk = shrunk_gates(first_order, net, 0.5)(search.problem, batch, batch)
    assert net.gate_scale == 1.0  # restored after the α-step
    plain = first_order(search.problem, batch, batch)
    net.gate_scale = 0.5  # the reference: the plain hypergradient of the network whose gates are halved
    reference = first_order(search.problem, batch, batch)
    net.gate_scale = 1.0
    torch.testing.assert_close(shrunk.grads[0], reference.grads[0])
    assert shrunk.alpha_loss == pytest.approx(reference.alpha_loss)
    assert not torch.allclose(shrunk.grads[0], plain.grads[0])


def test_a_scaled_gate_passes_the_gradient_taken_at_the_scaled_point() -> None:
    """∂L/∂Γ under a gate scale c is σ'(Γ)·∂L/∂γ′ at γ′ = c·γ (the probe's gradient there), per cell, not c times it."""
    net, search = make_search()
    batch = tiny_batch()
    scale = torch.ones_like(net.gate_probe)
    scale[0, 0], scale[1, 2] = 0.5, 0.25
    net.gate_scale = scale
    search.problem.outer["gate_probe"] = net.gate_probe
    grads = first_order(search.problem, batch, batch).grads
    net.gate_scale = 1.0
    gamma = torch.sigmoid(net.dam_logits.detach())
    torch.testing.assert_close(grads[0], grads[1] * gamma * (1 - gamma))
    assert grads[1][0, 0] != 0 and grads[1][1, 2] != 0


def test_shrinking_a_fraction_of_the_gates_draws_them_per_step_and_probes_the_drawn_ones() -> None:
    from nas.search.loop import shrunk_gates

    net, search = make_search()
    batch = tiny_batch()
    seen = []

    def record(problem, w_batch, alpha_batch):  # noqa: ANN001, ANN202
        seen.append(net.gate_scale.clone())
        return first_order(problem, w_batch, alpha_batch)

    torch.manual_seed(0)
    probe = shrunk_gates(record, net, 0.5, fraction=0.3)
    for _ in range(200):
        probe(search.problem, batch, batch)
    assert net.gate_scale == 1.0  # restored after each α-step
    stacked = torch.stack(seen)
    assert set(stacked.unique().tolist()) == {0.5, 1.0}
    assert (stacked == 0.5).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert not torch.equal(stacked[0], stacked[1])  # a new draw each α-step
    torch.manual_seed(0)
    again = []
    shrunk_gates(lambda p, w, a: again.append(net.gate_scale.clone()) or first_order(p, w, a), net, 0.5,
                 fraction=0.3)(search.problem, batch, batch)
    assert torch.equal(again[0], stacked[0])  # torch's global generator decides (saved by checkpoints)


def test_a_w_lr_ramp_sets_every_steps_rate_before_its_alpha_step_and_stays_a_function_of_the_step() -> None:
    """The α-step's virtual step reads the group's lr when called (test above: it then predicts the w-step), so the
    rate must be this step's already when the hypergradient runs."""
    _, search = make_search()
    search.w_lr_factor = w_lr_ramp(0.1, 4)
    seen: list[float] = []
    hypergradient = search.hypergradient

    def spying(problem, w_batch, alpha_batch):  # noqa: ANN001, ANN202 (a hypergradient)
        seen.append(search.w_optimizer.param_groups[0]["lr"])
        return hypergradient(problem, w_batch, alpha_batch)

    search.hypergradient = spying
    for step in range(5):
        search.step(tiny_batch(seed=step), tiny_batch(seed=step + 10))
        expected = 1e-2 * 0.1 ** (1 - min(step, 3) / 3)
        assert seen[-1] == pytest.approx(expected) and search.w_optimizer.param_groups[0]["lr"] == seen[-1]
    assert w_lr_ramp(1.0, 4) is None and w_lr_ramp(3.0, 5)(0) == pytest.approx(3.0)  # > 1: a decay
    with pytest.raises(ValueError, match="w_lr_start"):
        w_lr_ramp(-1.0, 4)


def test_a_gates_gradient_is_its_branchs_b_gradient_along_b_divided_by_the_gate() -> None:
    """∂L/∂γ_m = ⟨∇_{B_m} L, B_m⟩ / γ_m for every LoRA branch (nas/search/hypergradient.py first_order)."""
    net, _ = make_search()
    batch = tiny_batch(seed=3)
    net.gate_probe.grad = None
    b_factors = {name: adapter.branch.lora_B for name, adapter in net.adapters.items()}
    loss = cross_entropy(net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch)
    probe, *b_grads = torch.autograd.grad(loss, [net.gate_probe, *b_factors.values()])
    gates = net.relaxed_matrix().detach()
    for (name, b), grad in zip(b_factors.items(), b_grads, strict=True):
        row, col = net.space.coordinate(name)
        along = float((grad * b.detach()).sum()) / float(gates[row, col])
        assert float(probe[row, col]) == pytest.approx(along, rel=1e-4, abs=1e-9)
    assert float(probe.abs().max()) > 0  # B ≠ 0 here, so the gates do receive a gradient
