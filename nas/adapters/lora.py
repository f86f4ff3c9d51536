"""The LoRA operator (Hu et al., 2021): ΔW·x = (α/r) · B A dropout(x)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from nas.adapters.operators import OPERATORS


@OPERATORS.register("lora")
class LoRABranch(nn.Module):
    """ΔW·x = (α/r) · B A dropout(x), with A ∈ ℝ^{r×in} Kaiming-uniform(√5) and B ∈ ℝ^{out×r} zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """Multiply ΔW by ``factor`` (folds a fixed gate into B)."""
        self.lora_B.mul_(factor)

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, (α/r)·B): ΔW = B A with the scaling folded into B."""
        return self.lora_A, self.lora_B * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the scaling multiplies the rank-r intermediate, not the out-wide result: the same ΔW x, fewer flops
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.scaling, self.lora_B)
