"""The criteria from the field (condition_number, snip, layer_cka) on cases with known answers, and the within-type
normalization of the scores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_run, tiny_batch, tiny_bert

from nas.errors import ConfigError
from nas.search.criteria import CRITERIA, NORMALIZATIONS, ScoringInput, normalize_scores, score_stage
from nas.search.criterion_cka import CKAStatistics, block_path, linear_cka
from nas.search.criterion_condition import condition_number
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.validation import validate_run_config
from search_spaces import build_search_space
from search_spaces.candidate import Candidate
from search_spaces.space import SearchSpace

FIELD = ("condition_number", "snip", "layer_cka")
HEAD = ["classifier.weight", "classifier.bias"]


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(5, 2, bias=False)
        self.unused = torch.nn.Linear(5, 2, bias=False)


class Toy(torch.nn.Module):
    """out = W_used x; W_unused x is computed and thrown away, so the loss never reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Block()])

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        self.layers[0].unused(x)
        return SimpleNamespace(out=self.layers[0].used(x))


def toy_supernet() -> SuperNet:
    model = Toy().double()
    space = build_search_space(model, preset=None, module_types=["used", "unused"])
    return SuperNet(model, space, build_relaxation("sigmoid", init_std=0.5), [], rank=2,
                    generator=torch.Generator().manual_seed(0)).double().eval()


def toy_loss(outputs: SimpleNamespace, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return (batch["labels"] * outputs.out).sum(-1).mean()  # L = mean_n y_nᵀ W x_n


def bert_supernet(seed: int = 0) -> SuperNet:
    model = tiny_bert(seed=seed)
    return SuperNet(model, build_search_space(model, "bert"), build_relaxation("sigmoid", init_std=0.5), HEAD,
                    rank=2, generator=torch.Generator().manual_seed(0)).eval()


def bert_loss(outputs, batch) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])


def padded_batches() -> list[dict[str, torch.Tensor]]:
    batches = [tiny_batch(batch_size=4, seed=i) for i in range(2)]
    for batch in batches:  # right padding of different lengths: padding tokens must not count
        for row, length in enumerate((7, 5, 3, 6)):
            batch["attention_mask"][row, length:] = 0
    return batches


# --- condition_number ------------------------------------------------------------------------------------------
def test_condition_number_of_known_matrices() -> None:
    padded = torch.zeros(2, 5)
    padded[0, 0], padded[1, 1] = 10.0, 1.0
    assert condition_number(padded) == pytest.approx(10.0, rel=1e-12)
    assert condition_number(padded.T) == pytest.approx(10.0, rel=1e-12)  # GPT-2's (in, out) layout: same κ
    orthogonal, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert condition_number(orthogonal) == pytest.approx(1.0, rel=1e-12)
    assert condition_number(3.0 * orthogonal[:, :4]) == pytest.approx(1.0, rel=1e-12)  # scale-invariant
    rank_one = torch.outer(torch.arange(1.0, 4.0), torch.arange(1.0, 5.0))  # σ_min = 0: capped, finite
    assert condition_number(rank_one) == pytest.approx(1 / (4 * np.finfo(np.float64).eps), rel=1e-6)
    assert condition_number(torch.zeros(3, 4)) == 1.0
    generic = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    assert condition_number(generic) == pytest.approx(np.linalg.cond(generic.double().numpy()), rel=1e-10)


def test_condition_number_scores_minus_kappa_so_the_better_conditioned_weight_ranks_first() -> None:
    net = toy_supernet()
    with torch.no_grad():
        net.adapters["layers.0.used"].base_layer.weight.copy_(torch.eye(2, 5, dtype=torch.float64) * 3.0)  # κ = 1
        diagonal = torch.zeros(2, 5, dtype=torch.float64)
        diagonal[0, 0], diagonal[1, 1] = 10.0, 1.0
        net.adapters["layers.0.unused"].base_layer.weight.copy_(diagonal)  # κ = 10
    scores = CRITERIA.get("condition_number").score(ScoringInput(net, toy_loss, [], seed=0))
    assert scores == pytest.approx({"layers.0.used": -1.0, "layers.0.unused": -10.0}, rel=1e-12)


# --- snip ------------------------------------------------------------------------------------------------------
def test_snip_is_the_closed_form_connection_sensitivity_and_zero_for_an_unread_module() -> None:
    net = toy_supernet()
    generator = torch.Generator().manual_seed(3)
    batches = [{"x": torch.randn(6, 5, generator=generator, dtype=torch.float64),
                "labels": torch.randn(6, 2, generator=generator, dtype=torch.float64)} for _ in range(3)]
    scores = CRITERIA.get("snip").score(ScoringInput(net, toy_loss, batches, seed=0))
    # ∂/∂W mean_n y_nᵀ W x_n = mean_n y_n x_nᵀ = YᵀX / N, averaged over the batches (the mean loss)
    grad = sum(b["labels"].T @ b["x"] / len(b["x"]) for b in batches) / len(batches)
    weight = net.adapters["layers.0.used"].base_layer.weight.detach()
    assert scores["layers.0.used"] == pytest.approx(float((weight * grad).abs().sum()), rel=1e-12)
    assert scores["layers.0.unused"] == 0.0
    assert not any(p.requires_grad for a in net.adapters.values() for p in a.base_layer.parameters())  # still frozen


def test_snip_on_bert_matches_sensitivity_of_the_plain_model_whatever_the_branches() -> None:
    net = bert_supernet()
    with torch.no_grad():  # non-zero branches: snip reads the pretrained network, so they must not matter
        for adapter in net.adapters.values():
            adapter.branch.lora_B.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    batches = padded_batches()
    scores = CRITERIA.get("snip").score(ScoringInput(net, bert_loss, batches, seed=0))
    plain = tiny_bert()  # the same weights without adapters: an independent reference
    weights = {name: plain.get_submodule(name).weight for name in net.space.names}
    loss = sum(bert_loss(plain(**{k: v for k, v in b.items() if k != "labels"}), b) for b in batches) / len(batches)
    grads = torch.autograd.grad(loss, list(weights.values()))
    expected = {name: float((w.detach() * g).abs().sum()) for (name, w), g in zip(weights.items(), grads, strict=True)}
    assert scores == pytest.approx(expected, rel=1e-4)
    assert all(value > 0 for value in scores.values())
    assert net.removed == set() and all(a.gate is None for a in net.adapters.values())


def _trace(a: torch.Tensor, b: torch.Tensor) -> float:
    """tr(K̃ L̃) of symmetric centred Gram matrices, which equals ‖ỸᵀX̃‖_F²."""
    return float((a * b).sum())


# --- layer_cka -------------------------------------------------------------------------------------------------
def test_linear_cka_is_one_on_itself_and_invariant_to_rotation_scale_and_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator,
                                                                                   dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-12)  # the columns are centred
    assert linear_cka(x, x[:, :3]) < 1.0


def test_linear_cka_of_independent_data_is_near_zero_and_streams_like_the_gram_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randn(20000, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    assert linear_cka(x, y) < 0.01  # ≈ √(d·d')/n
    small_x, small_y = x[:60], x[:60, :5] ** 2 + 0.3 * y[:60, :5]
    centring = torch.eye(60, dtype=torch.float64) - 1.0 / 60
    k, l_ = centring @ small_x @ small_x.T @ centring, centring @ small_y @ small_y.T @ centring
    gram = _trace(k, l_) / (_trace(k, k) ** 0.5 * _trace(l_, l_) ** 0.5)
    stats = CKAStatistics()
    for rows in (slice(0, 17), slice(17, 41), slice(41, 60)):
        stats.update(small_x[rows], small_y[rows])
    assert stats.value() == pytest.approx(gram, rel=1e-10)
    assert linear_cka(small_x, small_y) == pytest.approx(gram, rel=1e-10)
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 3), torch.randn(5, 3))


def test_layer_cka_on_bert_gives_one_score_per_layer_from_the_block_hidden_states() -> None:
    net = bert_supernet()
    assert block_path(net.model, net.space.candidates[0]) == "bert.encoder.layer.0"
    batches = padded_batches()
    scores = CRITERIA.get("layer_cka").score(ScoringInput(net, bert_loss, batches, seed=0))
    assert set(scores) == set(net.space.names)
    per_layer = {layer: {scores[c.name] for c in net.space if c.layer == layer} for layer in net.space.layers}
    assert all(len(values) == 1 for values in per_layer.values())  # every module of a layer shares its score
    plain = tiny_bert()  # reference: hidden_states[l] → hidden_states[l + 1] on the non-padding tokens
    ins: dict[int, list[torch.Tensor]] = {layer: [] for layer in net.space.layers}
    outs: dict[int, list[torch.Tensor]] = {layer: [] for layer in net.space.layers}
    with torch.no_grad():
        for batch in batches:
            hidden = plain(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True).hidden_states
            keep = batch["attention_mask"].bool()
            for layer in net.space.layers:
                ins[layer].append(hidden[layer][keep])
                outs[layer].append(hidden[layer + 1][keep])
    for layer, values in per_layer.items():
        expected = 1.0 - linear_cka(torch.cat(ins[layer]), torch.cat(outs[layer]))
        assert values.pop() == pytest.approx(expected, rel=1e-6)
    assert net.removed == set()


# --- registration, config, normalization -------------------------------------------------------------------------
def test_field_criteria_are_init_stage_without_search_and_selectable_from_the_conf() -> None:
    for name in FIELD:
        criterion = CRITERIA.get(name)
        assert criterion.stage == "init" and not criterion.needs_search
        assert (Path(CONF_DIR) / "criterion" / f"{name}.yaml").is_file()
    cfg = compose_run(["criterion=snip", "criterion.record=[dam,condition_number,layer_cka]"])
    assert cfg.criterion.name == "snip" and list(cfg.criterion.record) == ["dam", "condition_number", "layer_cka"]
    validate_run_config(cfg)
    net = bert_supernet()
    scored = score_stage("init", ["snip", "dam", "condition_number", "layer_cka"],
                         ScoringInput(net, bert_loss, padded_batches(), seed=0))
    assert list(scored) == ["snip", "condition_number", "layer_cka"]  # dam scores after the search
    assert all(set(scores) == set(net.space.names) for scores in scored.values())


def test_within_type_normalization_gives_z_scores_per_module_type() -> None:
    space = SearchSpace(tuple(Candidate(f"l{layer}.{t}", layer, t, 4, 4) for layer in range(3) for t in ("a", "b")),
                        (0, 1, 2), ("a", "b"))
    raw = {"l0.a": 1.0, "l1.a": 2.0, "l2.a": 3.0, "l0.b": 500.0, "l1.b": 500.0, "l2.b": 500.0}
    z = normalize_scores(raw, {c.name: c.module_type for c in space}, "within_type")
    root = (2.0 / 3.0) ** 0.5  # population std of (1, 2, 3)
    assert z == pytest.approx({"l0.a": -1 / root, "l1.a": 0.0, "l2.a": 1 / root, "l0.b": 0.0, "l1.b": 0.0,
                               "l2.b": 0.0}, rel=1e-12)
    assert normalize_scores(raw, {c.name: c.module_type for c in space}, "none") == raw
    assert NORMALIZATIONS == ("none", "within_type")
    with pytest.raises(ConfigError, match="criterion.normalize=type is unknown; choose one of: none, within_type"):
        normalize_scores(raw, {c.name: c.module_type for c in space}, "type")
    validate_run_config(compose_run(["criterion.normalize=within_type"]))
    with pytest.raises(ConfigError, match="choose one of: none, within_type"):
        validate_run_config(compose_run(["criterion.normalize=type"]))
