"""Continuous relaxations of the DAM: logits Γ (one cell per layer × module type) → weights γ ∈ [0, 1].

Each relaxation declares how many logits a cell has and maps them to the weight that scales that
cell's LoRA branch. Register new ones with ``@RELAXATIONS.register(name)``; the conf group
``relaxation/<name>.yaml`` selects them. Stochastic relaxations (``stochastic = True``) sample γ in
training mode, from ``generator`` when one is given (else from torch's global generator), and are
deterministic in evaluation mode. The search loop calls :meth:`Relaxation.set_progress` each step with
``step / steps`` so that a relaxation can anneal its temperature. :meth:`Relaxation.expected_gate` is E[γ]
under the training distribution, the constant that stands for the sampled gates once the search is over.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from nas.errors import ConfigError
from nas.registry import Registry


class Relaxation:
    """Base: ``logits_per_cell`` logits per DAM cell; :meth:`weights` gives γ of shape (layers, types)."""

    logits_per_cell: int = 1
    stochastic: bool = False  # True: weights(training=True) samples
    mc_samples: int = 4096  # Monte-Carlo draws of expected_gate (stochastic relaxations)
    mc_seed: int = 0  # seed of the generator of those draws

    def __init__(self, init_mean: float = 0.0, init_std: float = 1e-3,
                 generator: torch.Generator | None = None) -> None:
        self.init_mean = init_mean
        self.init_std = init_std
        self.generator = generator
        self.progress = 0.0

    def logit_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        return (rows, cols) if self.logits_per_cell == 1 else (rows, cols, self.logits_per_cell)

    def init_logits(self, rows: int, cols: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Γ = init_mean + init_std · N(0, 1) (DARTS initializes with 1e-3 · N(0, 1))."""
        noise = torch.randn(self.logit_shape(rows, cols), generator=generator)
        return self.init_mean + self.init_std * noise

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        raise NotImplementedError

    def expected_keep(self, logits: torch.Tensor) -> torch.Tensor:
        """P(module keeps its LoRA), shape (layers, types); by default the evaluation-mode weights."""
        return self.weights(logits, training=False)

    def ranking_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What the ``dam`` criterion ranks (layers × types): by default the evaluation-mode weights."""
        return self.weights(logits, training=False)

    def expected_gate(self, logits: torch.Tensor) -> torch.Tensor:
        """E[γ] under the training distribution at the current progress (temperature), shape (layers, types).

        Deterministic relaxations: their weights (training and evaluation give the same γ). Stochastic ones:
        Ê[γ] = (1/S) Σ_s γ_s over S = ``mc_samples`` (4096) draws of ``weights(training=True)``, all drawn at
        once from a fresh generator seeded with ``mc_seed``, so the value is reproducible and the relaxation's
        own generator is not advanced; γ ∈ [0, 1], so the standard error is at most 0.5/√S ≈ 0.008.
        No gradient flows to ``logits``.
        """
        logits = logits.detach()
        with torch.no_grad():
            if not self.stochastic:
                return self.weights(logits, training=True)
            own = self.generator
            self.generator = torch.Generator().manual_seed(self.mc_seed)
            try:
                samples = self.weights(logits.expand(self.mc_samples, *logits.shape), training=True)
            finally:
                self.generator = own
            return samples.mean(dim=0)

    def set_progress(self, progress: float) -> None:
        """Record the search progress p = step / steps ∈ [0, 1] (clamped); annealed relaxations use it."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def uniform(self, like: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """u ~ U(eps, 1 − eps) of ``like``'s shape, dtype and device, drawn from ``self.generator`` if set."""
        device = self.generator.device if self.generator is not None else like.device
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype, device=device)
        return u.to(like.device).clamp_(eps, 1.0 - eps)


RELAXATIONS: Registry[type[Relaxation]] = Registry("relaxation")


@RELAXATIONS.register("sigmoid")
class SigmoidRelaxation(Relaxation):
    """Independent gates (FairDARTS): γ_{l,j} = σ(Γ_{l,j})."""

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        return torch.sigmoid(logits)


@RELAXATIONS.register("softmax")
class SoftmaxRelaxation(Relaxation):
    """DARTS mixed op over {LoRA, zero}: γ_{l,j} = exp(Γ_{l,j,0}) / (exp(Γ_{l,j,0}) + exp(Γ_{l,j,1}))."""

    logits_per_cell = 2

    def init_logits(self, rows: int, cols: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Γ_{·,·,0} = init_mean + init_std·N(0,1) (LoRA), Γ_{·,·,1} = init_std·N(0,1) (zero op)."""
        logits = self.init_std * torch.randn(self.logit_shape(rows, cols), generator=generator)
        logits[..., 0] += self.init_mean
        return logits

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)[..., 0]


@RELAXATIONS.register("gumbel")
class GumbelRelaxation(SoftmaxRelaxation):
    """Gumbel-softmax over {LoRA, zero} (SNAS; GDAS with ``hard=True``): γ = softmax((Γ + G)/τ)[..., 0].

    G_k = −log(−log u_k), u_k ~ U(0, 1). ``hard=True`` is straight-through: the forward value is the
    one-hot argmax (γ ∈ {0, 1}), the backward gradient that of the soft sample. In evaluation mode γ is
    the noise-free probability of LoRA, softmax(Γ)[..., 0] (no temperature), which is also
    :meth:`expected_keep`. The temperature anneals exponentially with the search progress p ∈ [0, 1]:
    τ(p) = τ_max · (τ_min / τ_max)^p; the defaults 10 → 0.1 are those of GDAS (Dong & Yang, 2019).
    """

    stochastic = True

    def __init__(self, init_mean: float = 0.0, init_std: float = 1e-3, generator: torch.Generator | None = None,
                 tau_max: float = 10.0, tau_min: float = 0.1, hard: bool = False) -> None:
        super().__init__(init_mean, init_std, generator)
        if not 0.0 < tau_min <= tau_max < math.inf:
            raise ConfigError(f"gumbel temperatures need 0 < tau_min <= tau_max < inf; got tau_min={tau_min}, "
                              f"tau_max={tau_max} (e.g. tau_max=10.0, tau_min=0.1)")
        self.tau_max = float(tau_max)
        self.tau_min = float(tau_min)
        self.hard = bool(hard)

    @property
    def tau(self) -> float:
        """τ(p) = τ_max · (τ_min / τ_max)^p."""
        return self.tau_max * (self.tau_min / self.tau_max) ** self.progress

    def expected_gate(self, logits: torch.Tensor) -> torch.Tensor:
        """E[γ_train]: with ``hard=True`` exactly P(argmax(Γ + G) = LoRA) = softmax(Γ)[..., 0] (the Gumbel-max
        trick; the value is one-hot), otherwise the Monte-Carlo mean of soft samples at τ(p), see the base class."""
        if self.hard:
            return torch.softmax(logits.detach(), dim=-1)[..., 0]
        return super().expected_gate(logits)

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        if not training:
            return torch.softmax(logits, dim=-1)[..., 0]
        gumbel = -torch.log(-torch.log(self.uniform(logits)))
        soft = torch.softmax((logits + gumbel) / self.tau, dim=-1)[..., 0]
        if not self.hard:
            return soft
        # (soft − soft.detach()) is exactly 0 in the forward, so the value is exactly 0 or 1.
        one_hot = (soft >= 0.5).to(soft.dtype)
        return one_hot + (soft - soft.detach())


@RELAXATIONS.register("hard_concrete")
class HardConcreteRelaxation(Relaxation):
    """Hard-concrete gates (Louizos et al., 2018, L0 regularization), one logit log α per cell.

    Training: u ~ U(0, 1), s = σ((log u − log(1 − u) + log α)/β), z = clamp(s(ζ − γ_l) + γ_l, 0, 1).
    Evaluation: z = clamp(σ(log α)(ζ − γ_l) + γ_l, 0, 1). Both reach exactly 0 and 1. Defaults are the
    paper's: β = 2/3, γ_l = −0.1, ζ = 1.1.
    """

    stochastic = True

    def __init__(self, init_mean: float = 0.0, init_std: float = 1e-3, generator: torch.Generator | None = None,
                 beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1) -> None:
        super().__init__(init_mean, init_std, generator)
        if not (beta > 0.0 and gamma < 0.0 and zeta > 1.0):
            raise ConfigError(f"hard_concrete needs beta > 0, gamma < 0 and zeta > 1; got beta={beta}, "
                              f"gamma={gamma}, zeta={zeta} (the paper uses beta=2/3, gamma=-0.1, zeta=1.1)")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.zeta = float(zeta)

    def stretch(self, s: torch.Tensor) -> torch.Tensor:
        """z = clamp(s(ζ − γ_l) + γ_l, 0, 1)."""
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        if not training:
            return self.stretch(torch.sigmoid(logits))
        u = self.uniform(logits)
        return self.stretch(torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / self.beta))

    def prob_nonzero(self, logits: torch.Tensor) -> torch.Tensor:
        """P(z ≠ 0) = σ(log α − β·log(−γ_l/ζ)), the expected L0 norm of each gate."""
        return torch.sigmoid(logits - self.beta * math.log(-self.gamma / self.zeta))

    def expected_keep(self, logits: torch.Tensor) -> torch.Tensor:
        """P(z ≠ 0): see :meth:`prob_nonzero`."""
        return self.prob_nonzero(logits)

    def ranking_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """log α itself: the evaluation weight clamps to exactly 0 or 1 beyond |log α| ≈ 2.4, which would tie."""
        return logits.detach().clone()


def relaxation_options(name: str) -> list[str]:
    """The options ``RELAXATIONS[name]`` takes besides init_mean and init_std."""
    parameters = inspect.signature(RELAXATIONS.get(name).__init__).parameters
    return [p for p in parameters if p not in ("self", "init_mean", "init_std")]


def build_relaxation(name: str, init_mean: float = 0.0, init_std: float = 1e-3, **options: Any) -> Relaxation:
    """``RELAXATIONS[name](init_mean=, init_std=, **options)``; an unknown option is a ConfigError."""
    accepted = relaxation_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"relaxation '{name}' does not take {', '.join(unknown)}; "
                          f"it accepts: {', '.join(accepted)}")
    return RELAXATIONS.get(name)(init_mean=init_mean, init_std=init_std, **options)
