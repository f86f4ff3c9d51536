"""SoRA: the gated branch, the L1 term, the proximal gate optimizer and pruning of closed ranks."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch import nn

from nas.adapters.lora import LoRABranch
from nas.adapters.operators import AdaptedLinear, build_operator, inject_adapters
from nas.adapters.sora import (
    ProximalGateOptimizer,
    SoRABranch,
    gate_parameters,
    l1_penalty,
    prune_model_,
    soft_threshold_,
    sora_branches,
)
from nas.errors import ConfigError

NAMES = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
         "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense"]


def make_branch(in_features: int = 6, out_features: int = 5, rank: int = 4, alpha: float = 8.0,
                seed: int = 0) -> SoRABranch:
    """A branch with random (non-zero) B, so that ΔW ≠ 0."""
    torch.manual_seed(seed)
    branch = SoRABranch(in_features, out_features, rank=rank, alpha=alpha, dropout=0.0)
    with torch.no_grad():
        branch.lora_B.normal_()
    return branch


def sora_bert(rank: int = 4, seed: int = 0) -> tuple[nn.Module, dict[str, AdaptedLinear]]:
    model = tiny_bert(seed=seed)
    adapted = inject_adapters(model, NAMES, "sora", rank, 8.0, 0.0)
    with torch.no_grad():
        for wrapper in adapted.values():
            wrapper.branch.lora_B.normal_(std=0.5)
    return model.eval(), adapted


# --- the branch ------------------------------------------------------------------------------------------------


def test_branch_init_and_forward_match_the_equation() -> None:
    branch = make_branch(rank=4, alpha=8.0)
    assert branch.lora_A.shape == (4, 6) and branch.lora_B.shape == (5, 4) and branch.gate.shape == (4,)
    assert branch.scaling == 2.0
    x = torch.randn(3, 2, 6)
    expected = 2.0 * ((x @ branch.lora_A.T) * branch.gate) @ branch.lora_B.T
    torch.testing.assert_close(branch(x), expected)
    branch.reset_parameters()
    assert torch.count_nonzero(branch.lora_B) == 0
    assert torch.count_nonzero(branch(x)) == 0  # B = 0: ΔW = 0 at init, as LoRA
    assert torch.count_nonzero(branch.gate) == 4  # N(0, 1) gates are all open


def test_registered_as_operator_and_scale_output() -> None:
    branch = build_operator("sora", 6, 5, rank=4, alpha=8.0, dropout=0.0)
    assert isinstance(branch, SoRABranch)
    with torch.no_grad():
        branch.lora_B.normal_()
    x = torch.randn(2, 6)
    before = branch(x)
    branch.scale_output_(0.25)
    torch.testing.assert_close(branch(x), 0.25 * before)


def test_negative_rank_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rank"):
        SoRABranch(6, 5, rank=-1, alpha=8.0, dropout=0.0)


# --- 1. the proximal step --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "threshold", "expected"), [
    ([0.5, -0.5, 0.2, -0.2, 0.0, 1.0, -3.0], 0.5, [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, -2.5]),
    ([0.25, -0.75, 0.1], 0.25, [0.0, -0.5, 0.0]),
    ([0.3, -0.3, 0.0], 0.0, [0.3, -0.3, 0.0]),
])
def test_soft_threshold_exact_values(values: list[float], threshold: float, expected: list[float]) -> None:
    gates = [nn.Parameter(torch.tensor(values)), nn.Parameter(torch.tensor(values) * 2)]
    soft_threshold_(gates, threshold)
    assert torch.equal(gates[0].detach(), torch.tensor(expected))
    doubled = torch.tensor(values) * 2
    assert torch.equal(gates[1].detach(), doubled.sign() * (doubled.abs() - threshold).clamp_min(0))
    assert gates[0].grad is None  # done under no_grad, nothing recorded


# --- 2. the proximal gate optimizer ----------------------------------------------------------------------------


def test_l1_only_closes_gates_monotonically() -> None:
    """Task loss absent: λ·L1 + prox only ever shrink |g|; closed gates stay closed and more close each step."""
    branches = [make_branch(rank=8, seed=seed) for seed in range(3)]
    gates = [b.gate for b in branches]
    optimizer = ProximalGateOptimizer(gates, lr=0.05, xi=0.1, total_steps=100, warmup_ratio=0.0)
    nnz = [sum(b.active_ranks() for b in branches)]
    assert nnz[0] == 24
    for _ in range(12):
        before = [g.detach().clone() for g in gates]
        optimizer.zero_grad()
        l1_penalty(branches, lam=1.0).backward()
        optimizer.step()
        for old, new in zip(before, gates, strict=True):
            assert torch.all(new.abs() <= old.abs())  # every |g| shrinks or stays
            assert torch.all(new[old == 0] == 0)  # a closed gate never reopens
            assert torch.all(new.sign() * old.sign() >= 0)  # no gate crosses zero
        nnz.append(sum(b.active_ranks() for b in branches))
    assert all(b <= a for a, b in zip(nnz, nnz[1:], strict=False))
    assert nnz[-1] < nnz[0]
    for _ in range(60):  # |g| falls by ≥ ξ per step, and N(0, 1) draws of 24 gates stay well under 6
        optimizer.zero_grad()
        l1_penalty(branches, lam=1.0).backward()
        optimizer.step()
    assert sum(b.active_ranks() for b in branches) == 0


@pytest.mark.parametrize(("xi_times_lr", "factors"), [
    (False, [1.0, 1.0, 1.0, 1.0]),
    # linear warm-up over round(0.5·4) = 2 steps, then decay to 0 at step 4: η/lr = 0, ½, 1, ½
    (True, [0.0, 0.5, 1.0, 0.5]),
])
def test_threshold_follows_schedule(xi_times_lr: bool, factors: list[float]) -> None:
    """With a zero task gradient AdamW does not move g, so each step only subtracts τ = ξ (or ξ·η)."""
    lr, xi = 0.2, 0.05
    gate = nn.Parameter(torch.tensor([1.0, -1.0, 0.01]))
    optimizer = ProximalGateOptimizer([gate], lr=lr, xi=xi, total_steps=4, warmup_ratio=0.5, xi_times_lr=xi_times_lr)
    expected = torch.tensor([1.0, -1.0, 0.01], dtype=torch.float64)
    learning_rates = []
    for factor in factors:
        learning_rates.append(optimizer.lr)
        optimizer.zero_grad()
        gate.grad = torch.zeros_like(gate)
        optimizer.step()
        tau = xi * lr * factor if xi_times_lr else xi
        assert optimizer.last_threshold == pytest.approx(tau)
        expected = expected.sign() * (expected.abs() - tau).clamp_min(0)
        torch.testing.assert_close(gate.detach(), expected.float(), rtol=0, atol=1e-7)
    assert learning_rates == pytest.approx([lr * f for f in [0.0, 0.5, 1.0, 0.5]])


def test_gate_optimizer_moves_gates_with_the_task_gradient() -> None:
    """ξ = 0: a plain AdamW on the gates (no weight decay), driven by the task loss."""
    branch = make_branch(rank=4)
    optimizer = ProximalGateOptimizer([branch.gate], lr=0.1, xi=0.0, total_steps=10, warmup_ratio=0.0)
    start = branch.gate.detach().clone()
    x = torch.randn(8, 6)
    branch(x).pow(2).sum().backward()
    grad = branch.gate.grad.clone()
    optimizer.step()
    torch.testing.assert_close(branch.gate.detach(), start - 0.1 * grad.sign(), rtol=0, atol=1e-5)
    optimizer.zero_grad()
    assert branch.gate.grad is None
    assert branch.lora_A.grad is not None  # the gate optimizer touches only the gates


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(gates=[]), "no gates"),
    (dict(lr=-1.0), "lr"),
    (dict(xi=-0.1), "xi"),
    (dict(warmup_ratio=1.5), "warmup_ratio"),
])
def test_gate_optimizer_rejects_bad_settings(kwargs: dict, match: str) -> None:
    settings = dict(gates=[nn.Parameter(torch.ones(2))], lr=0.1, xi=0.1, total_steps=10, warmup_ratio=0.1)
    with pytest.raises(ConfigError, match=match):
        ProximalGateOptimizer(**{**settings, **kwargs})


# --- 3. pruning a branch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("closed", [[], [1], [0, 2], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_pruned_branch_has_same_outputs(closed: list[int]) -> None:
    branch = make_branch(in_features=6, out_features=5, rank=8, alpha=16.0)
    with torch.no_grad():
        branch.gate[closed] = 0.0
    nnz = 8 - len(closed)
    assert branch.active_ranks() == nnz
    assert branch.effective_params() == nnz * (6 + 5) + nnz
    x = torch.randn(3, 4, 6)
    small = branch.pruned()
    assert isinstance(small, SoRABranch) and small is not branch
    assert small.rank == nnz and small.active_ranks() == nnz
    assert small.lora_A.shape == (nnz, 6) and small.lora_B.shape == (5, nnz) and small.gate.shape == (nnz,)
    assert small.scaling == branch.scaling == 2.0  # α/r_max, not α/nnz
    assert small.effective_params() == branch.effective_params()
    torch.testing.assert_close(small(x), branch(x), rtol=0, atol=1e-6)
    assert small(x).shape == (3, 4, 5)
    assert torch.equal(small.gate.detach(), branch.gate.detach()[branch.gate != 0])


def test_pruned_branch_keeps_dropout_mode_and_trainability() -> None:
    torch.manual_seed(0)
    branch = SoRABranch(6, 5, rank=4, alpha=8.0, dropout=0.1).train()
    with torch.no_grad():
        branch.gate[0] = 0.0
    branch.lora_A.requires_grad_(False)
    small = branch.pruned()
    assert small.training and isinstance(small.dropout, nn.Dropout) and small.dropout.p == 0.1
    assert not small.lora_A.requires_grad and small.lora_B.requires_grad and small.gate.requires_grad


def test_rank_zero_branch_outputs_zeros() -> None:
    branch = make_branch(rank=3)
    with torch.no_grad():
        branch.gate.zero_()
    empty = branch.pruned()
    x = torch.randn(2, 7, 6, requires_grad=True)
    out = empty(x)
    assert empty.rank == 0 and empty.active_ranks() == 0 and empty.effective_params() == 0
    assert out.shape == (2, 7, 5) and torch.count_nonzero(out) == 0
    out.sum().backward()  # still differentiable (zero gradient)
    assert torch.count_nonzero(x.grad) == 0


# --- 4. pruning a model ----------------------------------------------------------------------------------------


def test_prune_model_keeps_logits_and_reports_ranks() -> None:
    model, adapted = sora_bert(rank=4)
    closed = {NAMES[0]: [1, 3], NAMES[1]: [], NAMES[2]: [0, 1, 2, 3], NAMES[3]: [2]}
    with torch.no_grad():
        for name, ranks in closed.items():
            adapted[name].branch.gate[ranks] = 0.0
    batch = tiny_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
        base = tiny_bert()(**inputs).logits
    assert not torch.allclose(before, base, atol=1e-4)  # the open ranks do change the model

    ranks = prune_model_(model)

    assert ranks == {name: 4 - len(closed[name]) for name in NAMES}
    for name in NAMES:
        wrapper = model.get_submodule(name)
        assert isinstance(wrapper, AdaptedLinear) and wrapper is adapted[name]
        assert wrapper.branch.rank == ranks[name] and wrapper.branch.scaling == 2.0
    assert model.get_submodule(NAMES[2]).branch.lora_A.shape == (0, 32)
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in gate_parameters(model)) == sum(ranks.values())


def test_prune_model_leaves_other_operators_alone() -> None:
    model = tiny_bert()
    inject_adapters(model, NAMES[:2], "lora", 4, 8.0, 0.0)
    inject_adapters(model, NAMES[2:], "sora", 4, 8.0, 0.0)
    ranks = prune_model_(model)
    assert set(ranks) == set(NAMES[2:]) and all(r == 4 for r in ranks.values())
    assert all(isinstance(model.get_submodule(n).branch, LoRABranch) for n in NAMES[:2])


# --- 5. the L1 term --------------------------------------------------------------------------------------------


def test_l1_penalty_value_and_gradient() -> None:
    branches = {"a": make_branch(rank=2), "b": make_branch(rank=3)}
    with torch.no_grad():
        branches["a"].gate.copy_(torch.tensor([0.5, -1.5]))
        branches["b"].gate.copy_(torch.tensor([0.0, 2.0, -1.0]))
    # SoRA: λ · Σ_m ‖g_m‖₁ / Σ_m r_m = 0.3 · (2 + 3) / 5
    penalty = l1_penalty(branches, lam=0.3)
    assert penalty.item() == pytest.approx(0.3)
    penalty.backward()
    for branch in branches.values():
        assert torch.equal(branch.gate.grad.sign(), branch.gate.detach().sign())
        torch.testing.assert_close(branch.gate.grad, 0.3 / 5 * branch.gate.detach().sign())
    assert branches["a"].lora_B.grad is None


def test_l1_penalty_accepts_model_dict_or_list() -> None:
    model, adapted = sora_bert(rank=4)
    branches = sora_branches(model)
    expected = sum(b.gate.detach().abs().sum() for b in branches.values()) / (4 * len(NAMES))
    for source in (model, branches, list(branches.values())):
        assert l1_penalty(source, lam=2.0).item() == pytest.approx(2.0 * expected.item())
    assert l1_penalty(tiny_bert(), lam=1.0).item() == 0.0  # no SoRA branch: zero, not an error


# --- 6. finding the gates --------------------------------------------------------------------------------------


def test_sora_branches_and_gate_parameters_by_identity() -> None:
    model, adapted = sora_bert(rank=4)
    branches = sora_branches(model)
    assert set(branches) == {f"{name}.branch" for name in NAMES}
    assert all(branches[f"{name}.branch"] is adapted[name].branch for name in NAMES)
    gates = gate_parameters(model)
    assert len(gates) == len(NAMES)
    expected = {id(wrapper.branch.gate) for wrapper in adapted.values()}
    assert {id(g) for g in gates} == expected
    decoy = nn.Module()
    decoy.gate = nn.Parameter(torch.ones(4))  # named like a gate, but no SoRA branch: must not be found
    model.add_module("lora", decoy)
    assert {id(g) for g in gate_parameters(model)} == expected
