"""The virtual step is the optimizer's own next step, leaves its state alone, and has the right Jacobian."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from nas.search.virtual_step import VirtualStep, optimizer_virtual_step, sgd_virtual_step

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adamw_wd": lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01, amsgrad=True),
    "adam_coupled_wd": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    "adam_maximize": lambda p: torch.optim.Adam(p, lr=0.05, maximize=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
}


def toy_params(seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64)) for shape in [(3, 4), (5,)]]


def toy_grads(params: list[nn.Parameter], step: int) -> list[torch.Tensor]:
    """∇ of a fixed non-quadratic loss at the current point, with one exactly-zero coordinate."""
    loss = sum((torch.sin(p * (step + 1)) * p).sum() for p in params)
    grads = [g.detach() for g in torch.autograd.grad(loss, params)]
    grads[1][0] = 0.0
    return grads


def state_copy(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def assert_same_state(before: dict, optimizer: torch.optim.Optimizer) -> None:
    after = optimizer.state_dict()
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys()
    for key, entry in before["state"].items():
        assert entry.keys() == after["state"][key].keys()
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][key][name])), (key, name)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_virtual_step_is_the_real_step_and_leaves_the_state_alone(name: str, clip: float | None) -> None:
    """At the first step (empty state) and after a few: w_new − w_old = Δ, and Δ changes no state."""
    params = toy_params()
    optimizer = OPTIMIZERS[name](params)
    virtual = optimizer_virtual_step(optimizer, params, grad_clip=clip)
    for step in range(4):
        grads = toy_grads(params, step)
        before, old = state_copy(optimizer), [p.detach().clone() for p in params]
        delta = virtual(grads)
        assert_same_state(before, optimizer)
        assert all(torch.equal(p.detach(), o) for p, o in zip(params, old, strict=True))
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        for p, o, d in zip(params, old, delta, strict=True):
            torch.testing.assert_close(p.detach() - o, d, atol=1e-7, rtol=0)


def test_the_step_follows_a_scheduler_lr() -> None:
    params = toy_params()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    virtual = optimizer_virtual_step(optimizer, params)
    grads = toy_grads(params, 0)
    first = virtual(grads)
    optimizer.param_groups[0]["lr"] = 0.05
    torch.testing.assert_close(virtual(grads)[0], 0.5 * first[0])


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_jacobian_is_the_derivative_of_the_step(name: str, steps: int, clip: float | None) -> None:
    """D = ∂Δ/∂g elementwise, checked against autograd of Δ (Δ is elementwise, so ∂Σ Δ/∂g is its diagonal)."""
    params = toy_params()
    optimizer = OPTIMIZERS[name](params)
    for step in range(steps):
        for p, g in zip(params, toy_grads(params, step), strict=True):
            p.grad = g
        optimizer.step()
    virtual = optimizer_virtual_step(optimizer, params, grad_clip=clip)
    grads = [g.requires_grad_(True) for g in toy_grads(params, steps)]
    grads[1].data[0] = 0.5  # a non-zero gradient everywhere (√v is not differentiable at v = 0)
    delta, jacobian = virtual.linearize(grads)
    exact = torch.autograd.grad(sum(d.sum() for d in delta), grads)
    for d, e in zip(jacobian, exact, strict=True):
        torch.testing.assert_close(torch.broadcast_to(d, e.shape), e, atol=1e-10, rtol=1e-9)


def test_sgd_xi_is_darts_step_for_any_number_of_parameters() -> None:
    step = sgd_virtual_step(0.3)
    grads = [torch.ones(2, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)]
    delta, jacobian = step.linearize(grads)
    assert [d.tolist() for d in delta] == [[-0.3, -0.3], [-0.6, -0.6, -0.6]]
    assert [float(j) for j in jacobian] == [-0.3, -0.3]
    assert step([torch.ones(1)])[0].item() == pytest.approx(-0.3)


def test_errors_name_the_fix() -> None:
    params = toy_params()
    with pytest.raises(ValueError, match="AdamW, Adam or SGD"):
        optimizer_virtual_step(torch.optim.RMSprop(params), params)
    with pytest.raises(ValueError, match="not in the AdamW"):
        optimizer_virtual_step(torch.optim.AdamW(params[:1]), params)
    with pytest.raises(ValueError, match="built for 2 parameters but got 1"):
        optimizer_virtual_step(torch.optim.AdamW(params), params)([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="xi=-1.*>= 0"):
        sgd_virtual_step(-1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        VirtualStep(sgd_virtual_step(0.1).rules, grad_clip=-1.0)
    assert VirtualStep(sgd_virtual_step(0.1).rules, grad_clip=0.0).grad_clip is None  # 0 = off, as in the w-step
