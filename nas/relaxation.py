"""Continuous relaxations of the DAM: logits Γ (one cell per layer × module type) → weights γ ∈ (0, 1).

Each relaxation declares how many logits a cell has and maps them to the weight that scales that
cell's LoRA branch. Register new ones with ``@RELAXATIONS.register(name)``; the conf group
``relaxation/<name>.yaml`` selects them.
"""

from __future__ import annotations

import torch

from nas.registry import Registry


class Relaxation:
    """Base: ``logits_per_cell`` logits per DAM cell; :meth:`weights` gives γ of shape (layers, types)."""

    logits_per_cell: int = 1

    def __init__(self, init_mean: float = 0.0, init_std: float = 1e-3) -> None:
        self.init_mean = init_mean
        self.init_std = init_std

    def logit_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        return (rows, cols) if self.logits_per_cell == 1 else (rows, cols, self.logits_per_cell)

    def init_logits(self, rows: int, cols: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Γ = init_mean + init_std · N(0, 1) (DARTS initializes with 1e-3 · N(0, 1))."""
        noise = torch.randn(self.logit_shape(rows, cols), generator=generator)
        return self.init_mean + self.init_std * noise

    def weights(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        raise NotImplementedError


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


def build_relaxation(name: str, init_mean: float = 0.0, init_std: float = 1e-3) -> Relaxation:
    return RELAXATIONS.get(name)(init_mean=init_mean, init_std=init_std)
