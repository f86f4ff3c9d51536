"""The α-steps' average of w (``bilevel.w_average``, nas/search/bilevel.py): the exact recurrence, and on a toy problem
with a known optimum the bias it removes from a gate's gradient."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch
from test_bilevel import make_search
from torch import nn

from nas.search.bilevel import BilevelSearch
from nas.search.hypergradient import BilevelProblem, first_order


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_the_alpha_step_reads_the_debiased_average_of_w_and_leaves_the_current_w(beta: float) -> None:
    """w̄_t = Σ_i (1 − β) β^{t−i} w_i / (1 − β^t) over the values after each w-step (nas/search/bilevel.py); β = 0
    reads the current w."""
    _, search = make_search(w_average=beta)
    inner = search.problem.inner
    history: list[dict[str, torch.Tensor]] = []
    seen: list[dict[str, torch.Tensor]] = []
    hypergradient = search.hypergradient

    def spying(problem, w_batch, alpha_batch):  # noqa: ANN001, ANN202 (a hypergradient)
        seen.append({n: p.detach().clone() for n, p in inner.items()})
        return hypergradient(problem, w_batch, alpha_batch)

    search.hypergradient = spying
    for step in range(3):
        search.w_step(tiny_batch(seed=step))
        history.append({n: p.detach().clone() for n, p in inner.items()})
    current = {n: p.detach().clone() for n, p in inner.items()}
    search.alpha_step(tiny_batch(seed=5), tiny_batch(seed=6))
    t = len(history)
    weights = [(1 - beta) * beta ** (t - 1 - i) for i in range(t)]
    for name in inner:
        expected = sum(w * h[name] for w, h in zip(weights, history, strict=True)) / (1 - beta ** t)
        torch.testing.assert_close(seen[-1][name], expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(inner[name].detach(), current[name])  # restored after the α-step
    if beta:
        assert any(not torch.allclose(seen[-1][n], current[n]) for n in inner)  # the average is not the current w
    with pytest.raises(ValueError, match=r"w_average=1.0 must be in \[0, 1\)"):
        BilevelSearch(search.problem, first_order, search.w_optimizer, search.alpha_optimizer, w_average=1.0)


class GatedRegression(nn.Module):
    """ŷ = σ(g)·xᵀb: one gate on one linear branch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(dim))
        self.logit = nn.Parameter(torch.tensor(-3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit) * (x @ self.b)


def gate_gradients(seed: int, beta: float = 0.98, steps: int = 600, burn_in: int = 300) -> tuple[float, float]:
    """Mean ∂L_α/∂g over the last steps of a search whose gate is held still (α lr 0), at the current b and at the
    average, on the same trajectory. y = xᵀw* + noise; the α-split is 65,536 draws, so its optimum is w* to about
    0.2%; the w-steps are AdamW at a constant rate on batches of 16."""
    generator = torch.Generator().manual_seed(seed)
    dim = 16
    w_star = 0.1 * torch.randn(dim, generator=generator)

    def draw(n: int) -> dict[str, torch.Tensor]:
        x = torch.randn(n, dim, generator=generator)
        return {"x": x, "labels": x @ w_star + 0.5 * torch.randn(n, generator=generator)}

    alpha_batch = draw(1 << 16)
    model = GatedRegression(dim)
    problem = BilevelProblem(model, lambda out, batch: ((out - batch["labels"]) ** 2).mean(), {"b": model.b},
                             {"logit": model.logit})
    search = BilevelSearch(problem, first_order, torch.optim.AdamW([model.b], lr=0.05, weight_decay=0.0),
                           torch.optim.Adam([model.logit], lr=0.0), grad_clip=None, w_average=beta)
    current, averaged = [], []
    for step in range(steps):
        w_batch = draw(16)
        search.step(w_batch, alpha_batch)
        if step >= burn_in:
            current.append(float(first_order(problem, w_batch, alpha_batch).grads[0]))
            with search.reading_average():
                averaged.append(float(first_order(problem, w_batch, alpha_batch).grads[0]))
    return sum(current) / len(current), sum(averaged) / len(averaged)


@pytest.mark.slow
def test_the_average_shrinks_the_push_that_w_steps_noise_gives_a_converged_branchs_gate() -> None:
    """At the optimum the gate's gradient is 0; a branch that w-steps keep moving about it reads as over-grown
    (∂L_α/∂g > 0: the gate would fall) in every seed. The average reads it as less so, on the same trajectory."""
    pairs = [gate_gradients(seed) for seed in range(3)]
    assert all(current > 0 for current, _ in pairs)
    assert all(averaged < current for current, averaged in pairs)
    assert sum(a for _, a in pairs) < 0.8 * sum(c for c, _ in pairs)
