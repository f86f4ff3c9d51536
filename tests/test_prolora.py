"""The PRoLoRA operator: LoRA as a special case, parameter count, rotation, init, errors, registry, injection."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_batch, tiny_bert

from nas.adapters.lora import LoRABranch
from nas.adapters.operators import build_operator, inject_adapters
from nas.adapters.prolora import PRoLoRABranch, check_prolora_args, prolora_param_count
from nas.errors import ConfigError


def make(in_f: int, out_f: int, r: int, m: int, n: int, u: int, seed: int = 0, **kwargs) -> PRoLoRABranch:
    torch.manual_seed(seed)
    return PRoLoRABranch(in_f, out_f, rank=r, alpha=2.0 * r, dropout=0.0, sharing_in=m, sharing_out=n,
                         unshared_rank=u, **kwargs)


def randomize(branch: PRoLoRABranch) -> None:
    """B is zero at init; give both B parts non-zero values so outputs are informative."""
    with torch.no_grad():
        branch.shared_B.normal_()
        branch.unshared_B.normal_()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# (in, out, r, m, n, u): the two cases where PRoLoRA has no sharing at all.
LORA_CASES = [
    (6, 5, 3, 1, 1, 0),
    (10, 7, 4, 1, 1, 0),
    (6, 5, 3, 1, 1, 3),
    (10, 7, 4, 1, 1, 4),
]


@pytest.mark.parametrize(("in_f", "out_f", "r", "m", "n", "u"), LORA_CASES)
def test_equals_lora_without_sharing(in_f: int, out_f: int, r: int, m: int, n: int, u: int) -> None:
    branch = make(in_f, out_f, r, m, n, u)
    randomize(branch)
    lora = LoRABranch(in_f, out_f, rank=r, alpha=2.0 * r, dropout=0.0)
    with torch.no_grad():
        lora.lora_A.copy_(branch.full_A())
        lora.lora_B.copy_(branch.full_B())
    x = torch.randn(3, 2, in_f)
    torch.testing.assert_close(branch(x), lora(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(branch.delta_weight(), lora.lora_B @ lora.lora_A * lora.scaling)
    assert branch.scaling == lora.scaling
    assert n_params(branch) == r * (in_f + out_f) == n_params(lora)
    assert prolora_param_count(in_f, out_f, r, m, n, u) == r * (in_f + out_f)


def test_all_unshared_still_rejects_sharing_rates() -> None:
    """u = r leaves nothing to share, so a sharing rate above 1 is a configuration mistake, not a no-op."""
    with pytest.raises(ConfigError, match="sharing_in"):
        make(8, 8, 4, 2, 1, 4)


PARAM_CASES = [
    (16, 24, 4, 2, 2, 1),
    (10, 7, 4, 3, 2, 1),   # ⌈10/3⌉ = 4, ⌈7/2⌉ = 4
    (10, 10, 5, 4, 3, 0),
    (9, 11, 6, 9, 11, 2),  # chunk of width 1
    (13, 5, 2, 1, 5, 1),
    (8, 8, 3, 1, 1, 3),
    (33, 17, 8, 5, 4, 4),
]


@pytest.mark.parametrize(("in_f", "out_f", "r", "m", "n", "u"), PARAM_CASES)
def test_parameter_count_and_shapes(in_f: int, out_f: int, r: int, m: int, n: int, u: int) -> None:
    branch = make(in_f, out_f, r, m, n, u)
    shared = r - u
    expected = shared * (math.ceil(in_f / m) + math.ceil(out_f / n)) + u * (in_f + out_f)
    assert n_params(branch) == prolora_param_count(in_f, out_f, r, m, n, u) == expected
    assert branch.shared_A.shape == (shared, math.ceil(in_f / m))
    assert branch.shared_B.shape == (math.ceil(out_f / n), shared)
    assert branch.unshared_A.shape == (u, in_f) and branch.unshared_B.shape == (out_f, u)
    assert branch.full_A().shape == (r, in_f) and branch.full_B().shape == (out_f, r)
    assert branch.delta_weight().shape == (out_f, in_f)
    assert branch(torch.randn(2, in_f)).shape == (2, out_f)


def test_state_dict_round_trips() -> None:
    source = make(10, 7, 4, 3, 2, 1, seed=1)
    randomize(source)
    target = make(10, 7, 4, 3, 2, 1, seed=2)
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target.delta_weight(), source.delta_weight(), rtol=0, atol=0)
    assert set(source.state_dict()) == {"shared_A", "shared_B", "unshared_A", "unshared_B"}
    assert set(make(8, 8, 3, 1, 1, 0).state_dict()) == set(source.state_dict())


@pytest.mark.parametrize(("in_f", "r", "u", "m"), [(10, 4, 1, 3), (12, 7, 1, 3), (9, 3, 1, 3), (11, 5, 0, 3)])
def test_rotation_of_A(in_f: int, r: int, u: int, m: int) -> None:
    branch = make(in_f, 6, r, m, 1, u)
    shared, chunk = r - u, math.ceil(in_f / m)
    stride = max(shared // m, 1)
    assert branch.stride_in == stride
    a0, full = branch.shared_A.detach(), branch.full_A().detach()
    for k in range(m):
        expected = torch.roll(a0, -k * stride, dims=0)
        copy = full[:shared, k * chunk : (k + 1) * chunk]
        torch.testing.assert_close(copy, expected[:, : copy.shape[1]], rtol=0, atol=0)
        for j in range(shared):  # the row-wise definition: row j of copy k is row (j + k·s) mod r' of A₀
            torch.testing.assert_close(copy[j], a0[(j + k * stride) % shared, : copy.shape[1]], rtol=0, atol=0)
    torch.testing.assert_close(full[shared:], branch.unshared_A.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(("out_f", "r", "u", "n"), [(10, 4, 1, 3), (8, 5, 1, 2)])
def test_rotation_of_B(out_f: int, r: int, u: int, n: int) -> None:
    branch = make(6, out_f, r, 1, n, u)
    randomize(branch)
    shared, chunk = r - u, math.ceil(out_f / n)
    stride = max(shared // n, 1)
    b0, full = branch.shared_B.detach(), branch.full_B().detach()
    for k in range(n):
        copy = full[k * chunk : (k + 1) * chunk, :shared]
        expected = torch.roll(b0, -k * stride, dims=1)[: copy.shape[0]]
        torch.testing.assert_close(copy, expected, rtol=0, atol=0)
    torch.testing.assert_close(full[:, shared:], branch.unshared_B.detach(), rtol=0, atol=0)


def test_rotate_false_tiles_plainly() -> None:
    branch = make(10, 7, 4, 3, 2, 1, rotate=False)
    randomize(branch)
    a0, b0 = branch.shared_A.detach(), branch.shared_B.detach()
    torch.testing.assert_close(branch.full_A()[:3].detach(), a0.repeat(1, 3)[:, :10], rtol=0, atol=0)
    torch.testing.assert_close(branch.full_B()[:, :3].detach(), b0.repeat(2, 1)[:7], rtol=0, atol=0)
    rotated = make(10, 7, 4, 3, 2, 1, rotate=True)
    assert not torch.equal(rotated.full_A()[:3, 4:8], rotated.shared_A)  # rotation does change copy 1


@pytest.mark.parametrize(("rectified", "m"), [(True, 4), (False, 4), (True, 1), (False, 8)])
def test_rectified_init_bound(rectified: bool, m: int) -> None:
    in_f = 256
    branch = make(in_f, 64, 64, m, 1, 8, rectified_init=rectified)
    bound_full = 1 / math.sqrt(in_f)
    bound_a0 = bound_full if rectified else 1 / math.sqrt(math.ceil(in_f / m))
    a0, au = branch.shared_A.detach().abs().max().item(), branch.unshared_A.detach().abs().max().item()
    assert 0.9 * bound_a0 < a0 <= bound_a0
    assert 0.9 * bound_full < au <= bound_full
    assert torch.count_nonzero(branch.shared_B) == 0 and torch.count_nonzero(branch.unshared_B) == 0


def test_zero_output_at_init_and_reset() -> None:
    branch = make(10, 7, 4, 3, 2, 1)
    x = torch.randn(5, 10)
    assert torch.count_nonzero(branch(x)) == 0
    randomize(branch)
    assert torch.count_nonzero(branch(x)) > 0
    branch.reset_parameters()
    assert torch.count_nonzero(branch(x)) == 0


@pytest.mark.parametrize("factor", [0.0, 0.37, -2.0])
def test_scale_output_scales_exactly(factor: float) -> None:
    branch = make(10, 7, 4, 3, 2, 1)
    randomize(branch)
    x = torch.randn(5, 10)
    before, delta = branch(x).detach(), branch.delta_weight().detach()
    branch.scale_output_(factor)
    torch.testing.assert_close(branch(x), factor * before)
    torch.testing.assert_close(branch.delta_weight(), factor * delta)


def test_forward_matches_delta_weight_and_gradients_reach_all_parameters() -> None:
    branch = make(10, 7, 4, 3, 2, 2)
    randomize(branch)
    x = torch.randn(2, 3, 10)
    out = branch(x)
    torch.testing.assert_close(out, x @ branch.delta_weight().T)
    out.square().sum().backward()
    for name, parameter in branch.named_parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0, name


# (argument that must be named, in, out, r, m, n, u)
BAD_ARGS = [
    ("sharing_in", 8, 8, 4, 0, 2, 1),
    ("sharing_out", 8, 8, 4, 2, -1, 1),
    ("sharing_in", 8, 8, 4, 9, 2, 1),
    ("sharing_out", 8, 6, 4, 2, 7, 1),
    ("unshared_rank", 8, 8, 4, 2, 2, -1),
    ("unshared_rank", 8, 8, 4, 2, 2, 5),
    ("sharing_in", 8, 8, 4, 2, 1, 4),
    ("sharing_out", 8, 8, 4, 1, 3, 4),
    ("rank", 8, 8, 0, 1, 1, 0),
    ("sharing_in", 8, 8, 4, 2.5, 2, 1),
    ("in_features", 0, 8, 4, 1, 1, 1),
]


@pytest.mark.parametrize(("arg", "in_f", "out_f", "r", "m", "n", "u"), BAD_ARGS)
def test_bad_arguments_raise_config_error(arg: str, in_f: int, out_f: int, r: int, m: int, n: int, u: int) -> None:
    with pytest.raises(ConfigError, match=arg) as info:
        check_prolora_args(in_f, out_f, r, m, n, u)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=arg):
        PRoLoRABranch(in_f, out_f, rank=r, alpha=8.0, dropout=0.0, sharing_in=m, sharing_out=n, unshared_rank=u)
    with pytest.raises(ConfigError, match=arg):
        prolora_param_count(in_f, out_f, r, m, n, u)


def test_build_through_registry() -> None:
    branch = build_operator("prolora", 16, 24, 4, 8.0, 0.0, {"sharing_in": 2, "sharing_out": 2, "unshared_rank": 1})
    assert isinstance(branch, PRoLoRABranch) and branch.rank == 4 and branch.scaling == 2.0
    assert n_params(branch) == prolora_param_count(16, 24, 4, 2, 2, 1) == 3 * (8 + 12) + 1 * (16 + 24)
    with pytest.raises(ConfigError, match="sharing_rate"):
        build_operator("prolora", 16, 24, 4, 8.0, 0.0, {"sharing_rate": 2})


def test_inject_into_tiny_bert_runs_forward_and_backward() -> None:
    model = tiny_bert()
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.intermediate.dense",
             "bert.encoder.layer.1.output.dense"]
    adapted = inject_adapters(model, names, "prolora", rank=4, alpha=8.0, dropout=0.1,
                              operator_args={"sharing_in": 4, "sharing_out": 2, "unshared_rank": 1})
    assert all(isinstance(a.branch, PRoLoRABranch) for a in adapted.values())
    for adapter in adapted.values():
        randomize(adapter.branch)
    model.train()
    loss = model(**tiny_batch()).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name, adapter in adapted.items():
        for pname, parameter in adapter.branch.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), f"{name}.{pname}"
        assert adapter.base_layer.weight.grad is None
