"""The second-order (unrolled) hypergradient: exact on a small problem, ξ = 0 is first order, no side effects."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch import nn
from torch.func import functional_call

from nas.search.hypergradient import HYPERGRADIENTS, BilevelProblem, first_order, second_order
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.search.virtual_step import VirtualStep, optimizer_virtual_step, sgd_virtual_step
from search_spaces import build_search_space


class GatedNet(nn.Module):
    """y = w2 · tanh(σ(α) ⊙ (W1 x)): inner {W1, w2}, outer {α, unused}; counts its constructions."""

    built = 0

    def __init__(self, inputs: int = 3, hidden: int = 4, seed: int = 0) -> None:
        super().__init__()
        GatedNet.built += 1
        generator = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(torch.randn(hidden, inputs, generator=generator, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=generator, dtype=torch.float64))
        self.alpha = nn.Parameter(torch.randn(hidden, generator=generator, dtype=torch.float64))
        self.unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # an outer variable off the loss

    def __deepcopy__(self, memo: dict) -> GatedNet:
        raise AssertionError("the hypergradient must not copy the model")

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        hidden = torch.tanh(torch.sigmoid(self.alpha) * (x @ self.W1.T))
        return SimpleNamespace(logits=hidden @ self.w2)


def squared_error(outputs: SimpleNamespace, batch: dict) -> torch.Tensor:
    return ((outputs.logits - batch["labels"]) ** 2).mean()


def gated_batch(seed: int, size: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(size, 3, generator=generator, dtype=torch.float64),
            "labels": torch.randn(size, generator=generator, dtype=torch.float64)}


def gated_problem(inner_lr: float | None = None, virtual_step: VirtualStep | None = None) -> BilevelProblem:
    net = GatedNet()
    return BilevelProblem(net, squared_error, {"W1": net.W1, "w2": net.w2},
                          {"alpha": net.alpha, "unused": net.unused}, inner_lr=inner_lr, virtual_step=virtual_step)


def trained_step(make: Callable[[list[nn.Parameter]], torch.optim.Optimizer], steps: int,
                 grad_clip: float | None = None) -> Callable[[BilevelProblem], VirtualStep]:
    """A w-optimizer that has already taken ``steps`` real steps on the problem, as a virtual step."""
    def build(problem: BilevelProblem) -> VirtualStep:
        params = list(problem.inner.values())
        optimizer = make(params)
        for seed in range(steps):
            for p, g in zip(params, torch.autograd.grad(problem.loss(gated_batch(10 + seed)), params), strict=True):
                p.grad = g
            optimizer.step()
        return optimizer_virtual_step(optimizer, params, grad_clip=grad_clip)

    return build


# name → (the virtual step built on the problem, whether the second-order term is large here)
STEPS: dict[str, tuple[Callable[[BilevelProblem], VirtualStep | None], bool]] = {
    "inner_lr": (lambda problem: None, True),  # BilevelProblem(inner_lr=ξ): the SGD step, ξ = 0.5
    "sgd_xi": (lambda problem: sgd_virtual_step(0.3), True),
    "sgd_momentum": (trained_step(lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=0.01), 2), True),
    "adam_first_step": (trained_step(lambda p: torch.optim.Adam(p, lr=0.5), 0), False),
    "adam": (trained_step(lambda p: torch.optim.Adam(p, lr=0.5, weight_decay=0.01), 3), True),
    "adamw": (trained_step(lambda p: torch.optim.AdamW(p, lr=0.5, weight_decay=0.1), 3), True),
    "adamw_clipped": (trained_step(lambda p: torch.optim.AdamW(p, lr=0.5, weight_decay=0.1), 3, 0.2), True),
}


def exact_unrolled(problem: BilevelProblem, w_batch: dict, alpha_batch: dict) -> list[torch.Tensor]:
    """∇_α L_α(w + Δ(∇_w L_w(w, α)), α) by double backward through Δ (the clip factor constant), through
    functional copies of w and α."""
    w = {n: p.detach().clone().requires_grad_(True) for n, p in problem.inner.items()}
    alpha = {n: p.detach().clone().requires_grad_(True) for n, p in problem.outer.items()}

    def loss(batch: dict, weights: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return problem.loss_fn(functional_call(problem.model, {**weights, **alpha}, kwargs=inputs), batch)

    grads_w = torch.autograd.grad(loss(w_batch, w), list(w.values()), create_graph=True)
    delta = problem.inner_step()(list(grads_w))
    w_prime = {n: p + d for (n, p), d in zip(w.items(), delta, strict=True)}
    grads = torch.autograd.grad(loss(alpha_batch, w_prime), list(alpha.values()), allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(alpha.values(), grads, strict=True)]


def state(model: nn.Module) -> dict[str, tuple[torch.Tensor, int, bool, torch.Tensor | None]]:
    return {n: (p.detach().clone(), p.data_ptr(), p.requires_grad, p.grad) for n, p in model.named_parameters()}


def assert_untouched(before: dict, model: nn.Module) -> None:
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for name, (value, pointer, requires_grad, grad) in before.items():
        p = after[name]
        assert torch.equal(p.detach(), value), name
        assert (p.data_ptr(), p.requires_grad, p.grad) == (pointer, requires_grad, grad), name


def test_second_order_is_registered() -> None:
    assert HYPERGRADIENTS.get("second_order") is second_order


@pytest.mark.parametrize("inner_lr", [0.1, 0.5])
def test_second_order_matches_the_exact_unrolled_gradient(inner_lr: float) -> None:
    problem = gated_problem(inner_lr)
    w_batch, alpha_batch = gated_batch(1), gated_batch(2)
    result = second_order(problem, w_batch, alpha_batch)
    exact = exact_unrolled(problem, w_batch, alpha_batch)
    (first,) = torch.autograd.grad(problem.loss(alpha_batch), [problem.outer["alpha"]])
    assert (exact[0] - first).norm() > 0.05 * exact[0].norm()  # the second-order term matters here
    torch.testing.assert_close(result.grads[0], exact[0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(result.grads[1], torch.zeros(2, dtype=torch.float64), rtol=0, atol=0)
    w_prime = {n: p.detach() - inner_lr * g for (n, p), g in zip(
        problem.inner.items(), torch.autograd.grad(problem.loss(w_batch), list(problem.inner.values())),
        strict=True)}
    assert result.alpha_loss == pytest.approx(problem.loss(alpha_batch, weights=w_prime).item(), rel=1e-12)


@pytest.mark.parametrize("name", list(STEPS))
def test_second_order_is_exact_for_every_virtual_step(name: str) -> None:
    """The finite difference along D·v equals double backward through w′ = w + Δ(∇_w L_w), for each step rule."""
    build, matters = STEPS[name]
    problem = gated_problem(inner_lr=0.5)
    problem.virtual_step = build(problem)
    w_batch, alpha_batch = gated_batch(1), gated_batch(2)
    before = copy.deepcopy(optimizer_state(problem.virtual_step))
    result = second_order(problem, w_batch, alpha_batch)
    assert_same_state(before, optimizer_state(problem.virtual_step))
    exact = exact_unrolled(problem, w_batch, alpha_batch)
    grads_w = torch.autograd.grad(problem.loss(w_batch), list(problem.inner.values()))
    w_prime = {n: p.detach() + d for (n, p), d in zip(problem.inner.items(), problem.inner_step()(grads_w),
                                                      strict=True)}
    (at_w_prime,) = torch.autograd.grad(problem.loss(alpha_batch, weights=w_prime), [problem.outer["alpha"]])
    assert result.alpha_loss == pytest.approx(problem.loss(alpha_batch, weights=w_prime).item(), rel=1e-12)
    gap = float((exact[0] - at_w_prime).norm() / exact[0].norm())  # the size of the second-order correction
    assert gap > 0.05 if matters else gap < 1e-6  # Adam's first step ≈ −η·sign(g) barely depends on α
    torch.testing.assert_close(result.grads[0], exact[0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(result.grads[1], torch.zeros(2, dtype=torch.float64), rtol=0, atol=0)


def optimizer_state(step: VirtualStep | None) -> list:
    """The tensors of the optimizer behind ``step`` (found through its rules' closures), or []."""
    rules = [] if step is None or callable(step.rules) else step.rules
    cells = [c.cell_contents for rule in rules for c in (rule.__closure__ or ())]
    optimizers = {id(o): o for o in cells if isinstance(o, torch.optim.Optimizer)}
    return [o.state_dict() for o in optimizers.values()]


def assert_same_state(before: list, after: list) -> None:
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        assert old["param_groups"] == new["param_groups"]
        for key, entry in old["state"].items():
            for name, value in entry.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(new["state"][key][name])), (key, name)


def test_missing_inner_step_names_the_fix() -> None:
    with pytest.raises(ValueError, match="virtual_step=optimizer_virtual_step"):
        second_order(gated_problem(), gated_batch(1), gated_batch(2))


def test_zero_inner_lr_gives_exactly_first_order() -> None:
    problem = gated_problem(0.0)
    w_batch, alpha_batch = gated_batch(1), gated_batch(2)
    result = second_order(problem, w_batch, alpha_batch)
    problem.outer = {"alpha": problem.outer["alpha"]}  # first_order requires every outer variable to be used
    reference = first_order(problem, w_batch, alpha_batch)
    assert torch.equal(result.grads[0], reference.grads[0])
    assert result.alpha_loss == reference.alpha_loss


def test_second_order_neither_modifies_nor_copies_the_model() -> None:
    problem = gated_problem(0.5)
    before, built = state(problem.model), GatedNet.built
    second_order(problem, gated_batch(1), gated_batch(2))
    assert GatedNet.built == built
    assert_untouched(before, problem.model)


def bert_problem(relaxation: str = "sigmoid", inner_lr: float = 1e-1) -> tuple[SuperNet, BilevelProblem]:
    model = tiny_bert()
    net = SuperNet(model, build_search_space(model, "bert"), build_relaxation(relaxation),
                   ["classifier.weight", "classifier.bias"], rank=4).train()
    with torch.no_grad():  # non-zero B so that the DAM receives a gradient
        for adapter in net.adapters.values():
            adapter.branch.lora_B.normal_(std=0.1)

    def cross_entropy(outputs, batch) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.logits, batch["labels"])

    problem = BilevelProblem(net, cross_entropy, net.named_weight_parameters(), {"dam_logits": net.dam_logits},
                             inner_lr=inner_lr)
    return net, problem


def test_second_order_on_the_supernet() -> None:
    net, problem = bert_problem()
    before, state_dict = state(net), {k: v.clone() for k, v in net.state_dict().items()}
    w_batch, alpha_batch = tiny_batch(seed=1), tiny_batch(seed=2)
    result = second_order(problem, w_batch, alpha_batch)
    assert_untouched(before, net)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state_dict.items())
    (grad,) = result.grads
    assert grad.shape == net.dam_logits.shape and torch.isfinite(grad).all()
    first = first_order(problem, w_batch, alpha_batch).grads[0]
    assert not torch.allclose(grad, first, rtol=1e-3, atol=1e-7)


def test_stochastic_relaxation_replays_one_sample_across_the_finite_difference() -> None:
    """Every L_w forward sees the same γ sample; L_α draws its own; the next forward a fresh one."""
    net, problem = bert_problem("hard_concrete")
    w_batch, alpha_batch = tiny_batch(seed=1), tiny_batch(seed=2)
    seen: list[tuple[str, torch.Tensor]] = []
    loss_fn = problem.loss_fn

    def recording(outputs, batch) -> torch.Tensor:
        gates = torch.stack([adapter.gate.detach() for adapter in net.adapters.values()])
        seen.append(("w" if batch is w_batch else "alpha", gates))
        return loss_fn(outputs, batch)

    problem.loss_fn = recording
    torch.manual_seed(0)
    grad = second_order(problem, w_batch, alpha_batch).grads[0]
    assert torch.isfinite(grad).all()
    assert [kind for kind, _ in seen] == ["w", "alpha", "w", "w"]
    w_gates = [gates for kind, gates in seen if kind == "w"]
    assert all(torch.equal(w_gates[0], gates) for gates in w_gates[1:])
    assert not torch.equal(w_gates[0], seen[1][1])
    problem.loss(w_batch)
    assert not any(torch.equal(seen[-1][1], gates) for _, gates in seen[:-1])


def test_second_order_is_reproducible_under_a_seed() -> None:
    results = []
    for _ in range(2):
        _, problem = bert_problem("gumbel")
        torch.manual_seed(3)
        results.append(second_order(problem, tiny_batch(seed=1), tiny_batch(seed=2)).grads[0])
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
