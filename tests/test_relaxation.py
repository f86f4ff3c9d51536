"""Relaxations Γ → γ: limits, range, gradients, straight-through, annealing, seeded sampling, options."""

from __future__ import annotations

import math

import pytest
import torch

from nas.errors import ConfigError
from nas.search.relaxation import (
    RELAXATIONS,
    GumbelRelaxation,
    HardConcreteRelaxation,
    Relaxation,
    build_relaxation,
    relaxation_options,
)

NAMES = RELAXATIONS.names()
STOCHASTIC = [name for name in NAMES if RELAXATIONS.get(name).stochastic]


def lora_logits(relax: Relaxation, value: float, rows: int = 2, cols: int = 3) -> torch.Tensor:
    """Logits whose LoRA score is ``value`` everywhere (the zero op's logit, if any, is 0)."""
    logits = torch.zeros(relax.logit_shape(rows, cols))
    if relax.logits_per_cell == 1:
        return logits.fill_(value)
    logits[..., 0] = value
    return logits


def test_the_new_relaxations_are_registered() -> None:
    assert {"sigmoid", "softmax", "gumbel", "hard_concrete"} <= set(NAMES)
    assert set(STOCHASTIC) == {"gumbel", "hard_concrete"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("value", "expected"), [(60.0, 1.0), (-60.0, 0.0)])
def test_eval_limits(name: str, value: float, expected: float) -> None:
    relax = build_relaxation(name)
    weights = relax.weights(lora_logits(relax, value), training=False)
    torch.testing.assert_close(weights, torch.full((2, 3), expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(("value", "expected"), [(50.0, 1.0), (-50.0, 0.0), (math.inf, 1.0), (-math.inf, 0.0)])
def test_hard_concrete_reaches_exact_zero_and_one(training: bool, value: float, expected: float) -> None:
    relax = build_relaxation("hard_concrete", generator=torch.Generator().manual_seed(0))
    weights = relax.weights(torch.full((4, 5), value), training=training)
    assert torch.equal(weights, torch.full((4, 5), expected))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [False, True])
def test_weights_have_the_dam_shape_and_lie_in_unit_interval(name: str, training: bool) -> None:
    relax = build_relaxation(name, generator=torch.Generator().manual_seed(0))
    logits = 3.0 * torch.randn(relax.logit_shape(4, 6), generator=torch.Generator().manual_seed(1))
    weights = relax.weights(logits, training=training)
    assert weights.shape == (4, 6)
    assert torch.all((weights >= 0) & (weights <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_logits_in_training(name: str) -> None:
    relax = build_relaxation(name, generator=torch.Generator().manual_seed(0))
    logits = (0.5 * torch.randn(relax.logit_shape(4, 6), generator=torch.Generator().manual_seed(1)))
    logits.requires_grad_(True)
    target = torch.linspace(-1, 1, 24).reshape(4, 6)
    (grad,) = torch.autograd.grad((relax.weights(logits, training=True) * target).sum(), [logits])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gumbel_hard_is_one_hot_forward_with_soft_gradient() -> None:
    relax = build_relaxation("gumbel", hard=True, generator=torch.Generator().manual_seed(0))
    relax.set_progress(0.5)  # τ = 1
    logits = 0.3 * torch.randn(8, 6, 2, generator=torch.Generator().manual_seed(1))
    logits.requires_grad_(True)
    weights = relax.weights(logits, training=True)
    assert torch.all((weights == 0) | (weights == 1)) and 0 < weights.sum() < weights.numel()
    (grad,) = torch.autograd.grad(weights.sum(), [logits])
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == grad.numel()
    torch.testing.assert_close(grad[..., 0], -grad[..., 1])  # softmax over two: the gradients are opposite


def test_gumbel_soft_sample_is_the_tempered_softmax_of_perturbed_logits() -> None:
    logits = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    relax = build_relaxation("gumbel", tau_max=2.0, tau_min=0.5, generator=torch.Generator().manual_seed(7))
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(7)).clamp(1e-6, 1 - 1e-6)
    expected = torch.softmax((logits - torch.log(-torch.log(u))) / 2.0, dim=-1)[..., 0]
    torch.testing.assert_close(relax.weights(logits, training=True), expected)
    torch.testing.assert_close(relax.weights(logits, training=False), torch.softmax(logits, -1)[..., 0])


def test_gumbel_temperature_anneals_exponentially_from_max_to_min() -> None:
    relax = build_relaxation("gumbel", tau_max=5.0, tau_min=0.05)
    assert relax.tau == pytest.approx(5.0)
    taus = []
    for step in range(11):
        relax.set_progress(step / 10)
        taus.append(relax.tau)
    assert taus[0] == pytest.approx(5.0) and taus[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    assert taus[5] == pytest.approx(math.sqrt(5.0 * 0.05))  # geometric midpoint
    relax.set_progress(2.0)
    assert relax.tau == pytest.approx(0.05)  # progress is clamped to [0, 1]


def test_gumbel_defaults_are_documented() -> None:
    relax = build_relaxation("gumbel")
    assert isinstance(relax, GumbelRelaxation) and relax.logits_per_cell == 2
    assert (relax.tau_max, relax.tau_min, relax.hard) == (10.0, 0.1, False)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sampling_is_reproducible_with_a_seeded_generator(name: str) -> None:
    def draws(seed: int) -> list[torch.Tensor]:
        relax = build_relaxation(name, generator=torch.Generator().manual_seed(seed))
        logits = torch.zeros(relax.logit_shape(3, 4))
        return [relax.weights(logits, training=True) for _ in range(3)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # successive draws differ
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sampling_without_generator_follows_the_global_seed(name: str) -> None:
    relax = build_relaxation(name)
    logits = torch.zeros(relax.logit_shape(3, 4))
    torch.manual_seed(5)
    first = relax.weights(logits, training=True)
    torch.manual_seed(5)
    assert torch.equal(first, relax.weights(logits, training=True))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_eval_mode_is_deterministic(name: str) -> None:
    relax = build_relaxation(name)
    logits = torch.randn(relax.logit_shape(3, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(relax.weights(logits, training=False), relax.weights(logits, training=False))


@pytest.mark.parametrize("name", NAMES)
def test_expected_keep_is_a_probability_of_the_dam_shape(name: str) -> None:
    relax = build_relaxation(name)
    logits = 2.0 * torch.randn(relax.logit_shape(4, 6), generator=torch.Generator().manual_seed(0))
    keep = relax.expected_keep(logits)
    assert keep.shape == (4, 6) and torch.all((keep > 0) & (keep < 1))
    if name != "hard_concrete":  # σ(Γ), softmax(Γ)[..., 0]: the evaluation weights
        torch.testing.assert_close(keep, relax.weights(logits, training=False))


def test_hard_concrete_prob_nonzero_is_the_expected_l0_term() -> None:
    relax = build_relaxation("hard_concrete", generator=torch.Generator().manual_seed(0))
    assert isinstance(relax, HardConcreteRelaxation)
    logits = torch.tensor([[-2.0, 0.0, 1.5]])
    expected = torch.sigmoid(logits - (2.0 / 3.0) * math.log(0.1 / 1.1))
    torch.testing.assert_close(relax.prob_nonzero(logits), expected)
    torch.testing.assert_close(relax.expected_keep(logits), expected)
    samples = torch.stack([relax.weights(logits.expand(2000, 3), training=True) for _ in range(10)])
    empirical = (samples > 0).double().mean(dim=(0, 1))
    torch.testing.assert_close(empirical, expected[0].double(), atol=0.01, rtol=0)


def test_hard_concrete_eval_is_the_stretched_sigmoid() -> None:
    relax = build_relaxation("hard_concrete")
    logits = torch.tensor([[-3.0, 0.0, 0.5, 3.0]])
    expected = (torch.sigmoid(logits) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(relax.weights(logits, training=False), expected)
    assert relax.weights(logits, training=False)[0, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_set_progress_is_a_no_op_for_deterministic_relaxations(name: str) -> None:
    relax = build_relaxation(name)
    logits = torch.randn(relax.logit_shape(2, 3), generator=torch.Generator().manual_seed(0))
    before = relax.weights(logits, training=True)
    relax.set_progress(0.7)
    assert torch.equal(before, relax.weights(logits, training=True))


def test_unknown_option_is_a_config_error_listing_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="'gumbel' does not take tau; it accepts: generator, tau_max, tau_min, hard"):
        build_relaxation("gumbel", tau=1.0)
    with pytest.raises(ConfigError, match="does not take hard; it accepts: generator$"):
        build_relaxation("sigmoid", hard=True)
    assert relaxation_options("hard_concrete") == ["generator", "beta", "gamma", "zeta"]


@pytest.mark.parametrize(("name", "options"), [
    ("gumbel", {"tau_min": 0.0}), ("gumbel", {"tau_min": 2.0, "tau_max": 1.0}),
    ("hard_concrete", {"zeta": 1.0}), ("hard_concrete", {"beta": 0.0}),
])
def test_invalid_option_values_are_config_errors(name: str, options: dict) -> None:
    with pytest.raises(ConfigError):
        build_relaxation(name, **options)


def test_existing_positional_callers_still_work() -> None:
    relax = build_relaxation("softmax", 0.5, 1e-2)
    assert (relax.init_mean, relax.init_std, relax.generator) == (0.5, 1e-2, None)


# --- expected gate (what a folded branch was trained with) ---------------------------------------------------------
VARIANTS = [(name, {}) for name in NAMES] + [("gumbel", {"hard": True})]


def spread_logits(relax: Relaxation) -> torch.Tensor:
    """LoRA scores from −3 to 3 across a (2, 3) DAM (zero-op logit 0)."""
    logits = torch.zeros(relax.logit_shape(2, 3), dtype=torch.float64)
    scores = torch.linspace(-3.0, 3.0, 6, dtype=torch.float64).reshape(2, 3)
    if relax.logits_per_cell == 1:
        return logits + scores
    logits[..., 0] = scores
    return logits


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_expected_gate_is_the_mean_training_gate(name: str, options: dict, progress: float) -> None:
    """Ê[γ] (4096 seeded draws) agrees with the mean of 40 000 independent training draws within ~5 standard errors."""
    relax = build_relaxation(name, generator=torch.Generator().manual_seed(11), **options)
    relax.set_progress(progress)
    logits = spread_logits(relax)
    expected = relax.expected_gate(logits)
    assert expected.shape == (2, 3)
    draws = relax.weights(logits.expand(40_000, *logits.shape), training=True)
    torch.testing.assert_close(expected, draws.mean(dim=0), atol=0.04, rtol=0)
    if not relax.stochastic:
        assert torch.equal(expected, relax.weights(logits, training=False))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_expected_gate_is_reproducible_and_leaves_the_sampler_alone(name: str) -> None:
    relax = build_relaxation(name, generator=torch.Generator().manual_seed(3))
    logits = spread_logits(relax).requires_grad_(True)
    state = relax.generator.get_state()
    first = relax.expected_gate(logits)
    assert torch.equal(first, relax.expected_gate(logits)) and not first.requires_grad
    assert torch.equal(state, relax.generator.get_state())


def test_gumbel_hard_expected_gate_is_exactly_the_lora_probability() -> None:
    relax = build_relaxation("gumbel", hard=True)
    logits = spread_logits(relax)
    assert torch.equal(relax.expected_gate(logits), torch.softmax(logits, dim=-1)[..., 0])


@pytest.mark.parametrize(("name", "progress"), [("hard_concrete", 1.0), ("gumbel", 0.0)])
def test_expected_gate_differs_from_the_evaluation_gate(name: str, progress: float) -> None:
    """Why fold E[γ]: hard-concrete's mean gate is not its stretched sigmoid; a hot Gumbel-softmax averages ≈ ½."""
    relax = build_relaxation(name)
    relax.set_progress(progress)
    logits = spread_logits(relax)
    gap = (relax.expected_gate(logits) - relax.weights(logits, training=False)).abs().max()
    assert gap > 0.05
