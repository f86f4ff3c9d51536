"""Selection criteria against independent references on a tiny supernet, the gate probe, the non-finite guards and
the DAM optimizer that keeps gate gradients in proportion."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_batch, tiny_bert

from nas.errors import ConfigError, NonFiniteError
from nas.search.bilevel import StepStats
from nas.search.criteria import (
    CRITERIA,
    GateStatistics,
    ScoringInput,
    criteria_to_score,
    mean_loss,
    normalize_scores,
    score_stage,
)
from nas.search.dam_optimizer import SharedAdam
from nas.search.loop import check_step
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from objectives import get_task, task_loss
from search_spaces import build_search_space

HEAD = ["classifier.weight", "classifier.bias"]


def loss_fn(outputs, batch):
    return task_loss(outputs.logits, batch["labels"], get_task("sst2"))


def supernet(relaxation: str = "sigmoid", trained: bool = True) -> SuperNet:
    model = tiny_bert()
    net = SuperNet(model, build_search_space(model, "bert"), build_relaxation(relaxation, init_std=0.5),
                   HEAD, rank=2, dropout=0.0, generator=torch.Generator().manual_seed(0)).eval()
    if trained:  # non-zero branches, as after a search
        with torch.no_grad():
            for i, adapter in enumerate(net.adapters.values()):
                adapter.branch.lora_B.normal_(0.0, 0.1 * (1 + i % 3), generator=torch.Generator().manual_seed(i))
    return net


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    return [tiny_batch(batch_size=4, seed=i) for i in range(n)]


def loss64(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])


def test_the_gate_probe_gradient_is_dL_dgamma() -> None:
    net = supernet().double()  # float64 throughout, so that the central difference below is exact to ~1e-9
    batch = batches(1)[0]
    loss_fn = loss64
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    probe_grad, logit_grad = torch.autograd.grad(loss_fn(net(**inputs), batch), [net.gate_probe, net.dam_logits])
    gamma = torch.sigmoid(net.dam_logits.detach())
    torch.testing.assert_close(logit_grad, probe_grad * gamma * (1 - gamma))  # chain rule through σ
    name, (row, col) = net.space.names[3], net.space.coordinate(net.space.names[3])
    step = 1e-3  # and a central difference on γ of one module
    losses = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            net.gate_probe[row, col] = sign * step
            losses.append(float(loss_fn(net(**inputs), batch)))
            net.gate_probe.zero_()
    assert (losses[0] - losses[1]) / (2 * step) == pytest.approx(float(probe_grad[row, col]), rel=1e-5)
    nudged = []  # the same ±step on the gate of module `name` alone, set on its branch: the probe cell is its γ
    for sign in (1.0, -1.0):
        handle = net.adapters[name].register_forward_pre_hook(
            lambda module, _args, s=sign: setattr(module, "gate", module.gate + s * step))
        with torch.no_grad():
            nudged.append(float(loss_fn(net(**inputs), batch)))
        handle.remove()
    assert nudged == pytest.approx(losses, rel=1e-12, abs=0.0) and losses[0] != losses[1]


def test_grad_norm_is_the_norm_of_the_mean_lora_b_gradient_at_init() -> None:
    net = supernet(trained=False)
    data = batches(2)
    scores = CRITERIA.get("grad_norm").score(ScoringInput(net, loss_fn, data, seed=0))
    name = net.space.names[5]
    branch = net.adapters[name].branch
    total = torch.zeros_like(branch.lora_B)
    for batch in data:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        total += torch.autograd.grad(loss_fn(net(**inputs), batch), branch.lora_B)[0]
    assert scores[name] == pytest.approx(float((total / 2).norm()), rel=1e-5)
    assert all(torch.count_nonzero(a.branch.lora_A.grad if a.branch.lora_A.grad is not None else torch.zeros(1)) == 0
               for a in net.adapters.values())  # the score leaves no gradient behind


def test_perturbation_is_the_loss_rise_when_one_branch_is_zeroed_by_hand() -> None:
    net = supernet()
    data = batches(2)
    scores = CRITERIA.get("perturbation").score(ScoringInput(net, loss_fn, data, seed=0))
    victim = net.space.names[4]
    base = mean_loss(ScoringInput(net, loss_fn, data, seed=0))
    with torch.no_grad():
        saved = net.adapters[victim].branch.lora_B.clone()
        net.adapters[victim].branch.lora_B.zero_()
        removed = mean_loss(ScoringInput(net, loss_fn, data, seed=0))
        net.adapters[victim].branch.lora_B.copy_(saved)
    assert scores[victim] == pytest.approx(removed - base, rel=1e-5, abs=1e-8)
    assert net.removed == set()


def test_branch_norm_is_the_mean_gated_output_norm_per_real_token() -> None:
    net = supernet()
    batch = tiny_batch(batch_size=3, length=6)
    batch["attention_mask"][0, 4:] = 0  # two padding tokens are not counted
    scores = CRITERIA.get("branch_norm").score(ScoringInput(net, loss_fn, [batch], seed=0))
    name = net.space.names[7]
    captured = {}
    handle = net.adapters[name].branch.register_forward_hook(lambda m, a, out: captured.update(out=out.detach()))
    with torch.no_grad():
        net(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    mask = batch["attention_mask"].float()
    gamma = float(torch.sigmoid(net.dam_logits.detach())[net.space.coordinate(name)])
    expected = gamma * float((captured["out"].norm(dim=-1) * mask).sum() / mask.sum())
    assert scores[name] == pytest.approx(expected, rel=1e-5)


def test_gate_statistics_accumulate_saliency_and_fisher() -> None:
    net = supernet()
    stats = GateStatistics(net)
    grads = [torch.randn_like(net.gate_probe, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for grad in grads:
        stats.update(grad)
    gamma = torch.sigmoid(net.dam_logits.detach())
    inputs = ScoringInput(net, loss_fn, [], seed=0, gates=stats)
    saliency = CRITERIA.get("gate_saliency").score(inputs)
    fisher = CRITERIA.get("fisher").score(inputs)
    name = net.space.names[2]
    cell = net.space.coordinate(name)
    assert saliency[name] == pytest.approx(float(sum((gamma * g).abs()[cell] for g in grads)), rel=1e-6)
    assert fisher[name] == pytest.approx(float(sum(g[cell] ** 2 for g in grads) / 3), rel=1e-6)


def test_hard_concrete_dam_ranks_by_logits_so_clamped_gates_do_not_tie() -> None:
    net = supernet("hard_concrete")
    with torch.no_grad():
        net.dam_logits.copy_(torch.linspace(3.0, 6.0, net.dam_logits.numel()).reshape_as(net.dam_logits))
    assert len(set(net.export_probs().values())) == 1  # every evaluation weight is clamped to 1
    scores = CRITERIA.get("dam").score(ScoringInput(net, loss_fn, [], seed=0))
    assert len(set(scores.values())) == len(scores)  # but the ranking scores all differ


def test_criteria_that_need_the_search_are_left_out_without_alpha_steps() -> None:
    net = supernet(trained=False)
    inputs = ScoringInput(net, loss_fn, batches(1), seed=0, gates=GateStatistics(net))
    names = criteria_to_score("grad_norm", ["dam", "gate_saliency", "random"])
    assert list(score_stage("init", names, inputs)) == ["grad_norm", "random"]
    assert score_stage("final", names, inputs, searched=False) == {}
    with pytest.raises(ConfigError, match="none ran"):
        CRITERIA.get("fisher").score(inputs)
    with pytest.raises(ConfigError, match="criterion nope is unknown"):
        criteria_to_score("nope", [])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_and_losses_stop_with_the_quantity_and_step(bad: float) -> None:
    net = supernet()
    inputs = ScoringInput(net, loss_fn, batches(1), seed=0)
    with torch.no_grad():
        net.dam_logits[0, 1] = math.nan  # σ(±inf) is finite; NaN is not
    with pytest.raises(ValueError, match=r"non-finite criterion dam score for 1 of 12.*layer\.0.*key.*diverged"):
        score_stage("final", ["dam"], inputs)
    with pytest.raises(NonFiniteError, match="search step 7: the α-loss"):
        check_step(7, StepStats(w_loss=0.3, alpha_loss=bad), torch.zeros(2, 2))
    with pytest.raises(NonFiniteError, match="search step 3: the DAM logits"):
        check_step(3, StepStats(w_loss=0.3, alpha_loss=0.2), torch.tensor([[0.0, bad]]))


def test_shared_adam_moves_gates_in_proportion_to_their_gradients() -> None:
    grad = torch.tensor([1.0, 0.1, -0.01])
    shared, per_gate = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizers = [SharedAdam([shared], lr=0.1), torch.optim.Adam([per_gate], lr=0.1)]
    for _ in range(5):
        for param, optimizer in zip((shared, per_gate), optimizers, strict=True):
            param.grad = grad.clone()
            optimizer.step()
    torch.testing.assert_close(shared.detach() / shared.detach()[0], grad / grad[0])  # in proportion
    torch.testing.assert_close(per_gate.detach().abs(), torch.full((3,), 0.5))  # Adam: all alike
    scaled = torch.zeros(3, requires_grad=True)  # still free of the loss's scale
    optimizer = SharedAdam([scaled], lr=0.1)
    for _ in range(5):
        scaled.grad = 1000 * grad
        optimizer.step()
    torch.testing.assert_close(scaled.detach(), shared.detach())


def test_type_normalization_gives_z_scores_within_each_module_type() -> None:
    space = supernet(trained=False).space
    raw = {c.name: (100.0 if c.module_type == "intermediate.dense" else 1.0) * (1 + c.layer) for c in space}
    z = normalize_scores(raw, {c.name: c.module_type for c in space}, "within_type")
    for module_type in space.module_types:
        values = [z[c.name] for c in space if c.module_type == module_type]
        assert sum(values) == pytest.approx(0.0, abs=1e-12) and values == sorted(values)  # layer order kept
        assert sum(v * v for v in values) / len(values) == pytest.approx(1.0)
    assert normalize_scores(raw, {c.name: c.module_type for c in space}, "none") == raw
    with pytest.raises(ConfigError, match="criterion.normalize=layer is unknown"):
        normalize_scores(raw, {c.name: c.module_type for c in space}, "layer")
