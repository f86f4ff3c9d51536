"""The supernet: wrapping from outside, gate semantics, parameter groups, relaxations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_run, tiny_batch, tiny_bert
from transformers import GPT2Config, GPT2ForSequenceClassification

from nas.adapters.lora import LoRABranch
from nas.adapters.operators import AdaptedLinear, inject_adapters
from nas.search.loop import SearchSettings, relaxation_from
from nas.search.relaxation import RELAXATIONS, build_relaxation
from nas.search.supernet import SuperNet
from search_spaces import build_search_space

HEAD = ["classifier.weight", "classifier.bias"]


def make_supernet(relaxation: str = "sigmoid", seed: int = 0) -> SuperNet:
    model = tiny_bert(seed=seed)
    space = build_search_space(model, "bert")
    return SuperNet(model, space, build_relaxation(relaxation), HEAD, rank=4, alpha=8.0)


def randomize_branches(net: SuperNet) -> None:
    """B starts at zero (ΔW = 0); give every branch a non-zero B so gates matter."""
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.branch.lora_B.normal_(std=0.5)


@pytest.mark.parametrize("relaxation", RELAXATIONS.names())
def test_all_gates_zero_equals_base_model(relaxation: str, batch: dict) -> None:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reference = tiny_bert()(**inputs).logits
    net = make_supernet(relaxation).eval()
    randomize_branches(net)
    assert not torch.allclose(net(**inputs).logits, reference, atol=1e-4)  # the branches do change outputs
    with torch.no_grad():
        if net.relaxation.logits_per_cell == 2:
            net.dam_logits[..., 0] = -math.inf  # all weight on the zero op
        else:
            net.dam_logits.fill_(-math.inf)
    assert torch.count_nonzero(net.relaxed_matrix()) == 0
    torch.testing.assert_close(net(**inputs).logits, reference, rtol=0, atol=0)


def test_adapted_linear_computes_base_plus_gated_lora() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    branch = LoRABranch(6, 5, rank=3, alpha=6.0, dropout=0.0)
    torch.nn.init.normal_(branch.lora_B)
    layer = AdaptedLinear(base, branch)
    layer.gate = torch.tensor(0.3)
    x = torch.randn(2, 6)
    expected = base(x) + 0.3 * (6.0 / 3) * x @ branch.lora_A.T @ branch.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    assert not any(p.requires_grad for p in base.parameters())


def test_parameter_groups_are_disjoint_and_base_is_frozen() -> None:
    net = make_supernet()
    arch = {id(p) for p in net.arch_parameters()}
    weights = net.named_weight_parameters()
    assert arch.isdisjoint(id(p) for p in weights.values())
    adapter_ids = {id(p) for p in net.adapter_parameters()}
    head = {n for n in weights if n.endswith(("classifier.weight", "classifier.bias"))}
    assert len(head) == 2
    assert {id(weights[n]) for n in weights if n not in head} == adapter_ids
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == arch | {id(p) for p in weights.values()}
    assert len(net.adapters) == 12 and net.dam_logits.shape == (2, 6)


def test_relaxed_matrix_uses_space_coordinates() -> None:
    net = make_supernet()
    with torch.no_grad():
        net.dam_logits.copy_(torch.arange(12.0).reshape(2, 6) - 6)
    probs = net.export_probs()
    assert probs["bert.encoder.layer.0.attention.self.query"] == pytest.approx(torch.sigmoid(torch.tensor(-6.0)).item())
    assert probs["bert.encoder.layer.1.output.dense"] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    assert net.export(lambda scores: [max(scores, key=scores.get)]) == ["bert.encoder.layer.1.output.dense"]


@pytest.mark.parametrize(
    ("relaxation", "logits", "expected"),
    [
        ("sigmoid", torch.tensor([[0.0, 50.0, -50.0]]), [0.5, 1.0, 0.0]),
        ("softmax", torch.tensor([[[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]]]), [0.5, 1.0, 0.0]),
        ("softmax", torch.tensor([[[1.0, -1.0]]]), [1 / (1 + math.exp(-2.0))]),
    ],
)
def test_relaxation_limits(relaxation: str, logits: torch.Tensor, expected: list[float]) -> None:
    weights = build_relaxation(relaxation).weights(logits, training=True)
    torch.testing.assert_close(weights, torch.tensor([expected]), atol=1e-6, rtol=0)


# γ at the noise-free logit of each relaxation's configured init_mean (conf/relaxation/*.yaml): σ(−3) ≈ 0.047 where
# the gates start near 0.05, else σ(0) = 1/2 (hard concrete: clamp(σ(0)(ζ − γ_l) + γ_l, 0, 1) = 1/2 too)
CONFIGURED_START = {"sigmoid": 1 / (1 + math.exp(3.0)), "softmax": 1 / (1 + math.exp(3.0)), "gumbel": 0.5,
                    "hard_concrete": 0.5}


@pytest.mark.parametrize("relaxation", RELAXATIONS.names())
def test_relaxation_init_is_small_noise_around_its_start(relaxation: str) -> None:
    """init_mean 0 (DARTS) starts every gate near 1/2; the run's configured relaxation, built as the search
    builds it, starts where CONFIGURED_START says (the default init_mean −3 of sigmoid and softmax)."""
    relax = build_relaxation(relaxation, init_std=1e-3)
    logits = relax.init_logits(3, 4, generator=torch.Generator().manual_seed(0))
    weights = relax.weights(logits, training=not relax.stochastic)  # stochastic ones sample in training
    assert weights.shape == (3, 4)
    assert torch.all((weights - 0.5).abs() < 1e-2)
    assert set(CONFIGURED_START) == set(RELAXATIONS.names())
    configured = relaxation_from(SearchSettings.from_config(compose_run([f"relaxation={relaxation}"])))
    logits = configured.init_logits(3, 4, generator=torch.Generator().manual_seed(0))
    weights = configured.weights(logits, training=not configured.stochastic)
    assert torch.all((weights - CONFIGURED_START[relaxation]).abs() < 2e-3) and float(weights.std()) > 0


def test_gates_receive_gradient_once_b_is_nonzero(batch: dict) -> None:
    net = make_supernet().train()
    randomize_branches(net)
    labels = batch.pop("labels")
    loss = torch.nn.functional.cross_entropy(net(**batch).logits, labels)
    (grad,) = torch.autograd.grad(loss, net.arch_parameters())
    assert grad.shape == net.dam_logits.shape and torch.count_nonzero(grad) == grad.numel()


def test_gpt2_conv1d_modules_are_wrapped() -> None:
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0, num_labels=2)
    model = GPT2ForSequenceClassification(config).eval()
    inputs = {k: v for k, v in tiny_batch().items() if k != "labels"}
    reference = model(**inputs).logits
    space = build_search_space(model, "gpt2")
    net = SuperNet(model, space, build_relaxation("sigmoid"), ["score.weight"], rank=2)
    torch.testing.assert_close(net(**inputs).logits, reference)  # B = 0: the supernet starts at the base model
    assert len(net.adapters) == 8


def test_inject_adapters_wraps_only_named_modules(bert) -> None:
    names = ["bert.encoder.layer.1.attention.self.value"]
    adapters = inject_adapters(bert, names, "lora", rank=2, alpha=4.0, dropout=0.0)
    assert list(adapters) == names
    wrapped = [n for n, m in bert.named_modules() if isinstance(m, AdaptedLinear)]
    assert wrapped == names
