"""SoRA (Ding et al., 2023, arXiv 2311.11696): a LoRA branch whose ranks are switched off by a sparse gate.

Each adapted module gets

    ΔW·x = (α/r) · B (g ⊙ A dropout(x)),   A ∈ ℝ^{r×in}, B ∈ ℝ^{out×r}, g ∈ ℝ^{r},

trained with an L1 term on g in the loss and, for g alone, a proximal AdamW step

    g ← S_ξ(AdamW(g)),   S_ξ(g) = sign(g) · max(|g| − ξ, 0),

which sets gates exactly to zero. At the end the ranks with g = 0 are cut out (:func:`prune_model_`); the
scaling stays α/r_max, so cutting them never changes the model's outputs.

The gates are *not* trained by the main optimizer: the training loop excludes :func:`gate_parameters` from it
and steps a :class:`ProximalGateOptimizer` next to it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nas.adapters.operators import OPERATORS, AdaptedLinear
from nas.engine.schedule import linear_warmup_decay
from nas.errors import ConfigError


@OPERATORS.register("sora")
class SoRABranch(nn.Module):
    """ΔW·x = (α/r) · B (g ⊙ A dropout(x)); A Kaiming-uniform(√5), B zero, gate g ~ N(0, 1).

    ``rank`` is the number of rank-one components kept (0 after pruning a fully closed gate: the branch then
    outputs zeros); ``scaling`` is α/r of the rank the branch was *built* with and never changes on pruning.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 0:
            raise ConfigError(f"SoRA rank must be ≥ 0, got {rank}; set space.rank to a positive integer")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank if rank > 0 else 0.0
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, rank))
        self.gate = nn.Parameter(torch.empty(rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ← Kaiming-uniform(a=√5), B ← 0, g ← N(0, 1) (SoRA's ``torch.randn`` gate)."""
        if self.rank == 0:  # nothing to initialise (and init on empty tensors only warns)
            return
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        nn.init.normal_(self.gate, mean=0.0, std=1.0)

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """ΔW ← factor · ΔW, by scaling B (the gate keeps its sparsity pattern)."""
        self.lora_B.mul_(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(α/r) · ((dropout(x) Aᵀ) ⊙ g) Bᵀ; rank 0 gives zeros of shape (..., out)."""
        return ((self.dropout(x) @ self.lora_A.T) * self.gate) @ self.lora_B.T * self.scaling

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_g, (α/r)·B_g·diag(g_g)) over the open ranks g ≠ 0: a LoRA of rank nnz(g) with the same ΔW."""
        keep = torch.nonzero(self.gate.detach() != 0, as_tuple=True)[0]
        return self.lora_A.index_select(0, keep), self.lora_B.index_select(1, keep) * self.gate[keep] * self.scaling

    def active_ranks(self) -> int:
        """nnz(g): the ranks whose gate is open."""
        return int(torch.count_nonzero(self.gate.detach()).item())

    def effective_params(self) -> int:
        """nnz(g) · (in + out) + nnz(g): the rows of A, columns of B and gate entries that still matter."""
        active = self.active_ranks()
        return active * (self.in_features + self.out_features) + active

    @torch.no_grad()
    def pruned(self) -> SoRABranch:
        """A new branch holding only the ranks with g ≠ 0; same scaling, dropout, device and dtype, same outputs."""
        keep = torch.nonzero(self.gate != 0, as_tuple=True)[0]
        new = SoRABranch(self.in_features, self.out_features, rank=int(keep.numel()), alpha=self.alpha, dropout=0.0)
        new.dropout = copy.deepcopy(self.dropout)
        new.scaling = self.scaling
        new.to(device=self.lora_A.device, dtype=self.lora_A.dtype)
        new.lora_A.copy_(self.lora_A.index_select(0, keep))
        new.lora_B.copy_(self.lora_B.index_select(1, keep))
        new.gate.copy_(self.gate.index_select(0, keep))
        for old_param, new_param in zip(self.parameters(), new.parameters(), strict=True):
            new_param.requires_grad_(old_param.requires_grad)
        return new.train(self.training)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def sora_branches(model: nn.Module) -> dict[str, SoRABranch]:
    """Every :class:`SoRABranch` inside ``model`` (``model`` itself included), by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, SoRABranch)}


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The gate vectors g of every SoRA branch in ``model`` (the parameters the main optimizer must skip)."""
    return [branch.gate for branch in sora_branches(model).values()]


def _as_branches(model_or_branches: nn.Module | Mapping[str, SoRABranch] | Iterable[SoRABranch]) -> list[SoRABranch]:
    if isinstance(model_or_branches, nn.Module):
        return list(sora_branches(model_or_branches).values())
    if isinstance(model_or_branches, Mapping):
        return list(model_or_branches.values())
    return list(model_or_branches)


def l1_penalty(model_or_branches: nn.Module | Mapping[str, SoRABranch] | Iterable[SoRABranch],
               lam: float) -> torch.Tensor:
    """The SoRA sparsity term  λ · Σ_m ‖g_m‖₁ / Σ_m r_m  (differentiable; ∂/∂g = λ·sign(g)/Σ_m r_m).

    This is SoRA's own aggregation (``compute_loss`` in TsinghuaC3I/SoRA ``src/trainer.py``): the |g| of all
    gate vectors are summed and divided by the total number of gate entries, i.e. the mean |g| over all gates
    of the model. With equal ranks r in M modules it equals λ · (1/M) Σ_m mean|g_m|. A model without gates
    (or with only rank-0 branches) gives a zero tensor.
    """
    gates = [branch.gate for branch in _as_branches(model_or_branches)]
    total = sum(gate.numel() for gate in gates)
    if total == 0:
        device = gates[0].device if gates else None
        return torch.zeros((), device=device)
    return lam * sum(gate.abs().sum() for gate in gates) / total


@torch.no_grad()
def soft_threshold_(gates: list[torch.Tensor], threshold: float) -> None:
    """In place: g ← sign(g) · max(|g| − threshold, 0) (the proximal map of threshold·‖g‖₁)."""
    if threshold < 0:
        raise ValueError(f"soft-threshold must be ≥ 0, got {threshold}")
    for gate in gates:
        gate.copy_(gate.sign() * (gate.abs() - threshold).clamp_min(0))


class ProximalGateOptimizer:
    """AdamW on the gates followed by the soft-threshold; owns its own linear warm-up/decay schedule.

    One :meth:`step` is  g ← AdamW_η(g);  η ← schedule;  g ← S_τ(g)  with τ = ξ, or τ = ξ·η when
    ``xi_times_lr`` (SoRA's ``sparse_optimizer_multiply_lr`` variant); η there is the learning rate the AdamW
    step just used, as in SoRA, where the threshold is applied inside the optimizer step before the scheduler
    moves. The schedule is linear warm-up over round(warmup_ratio·total_steps) steps, then linear decay to 0
    at ``total_steps`` (the main optimizer's). AdamW runs without weight decay: the L1 prox is the only shrinkage.
    """

    def __init__(self, gates: list[nn.Parameter], lr: float, xi: float, total_steps: int, warmup_ratio: float,
                 xi_times_lr: bool = False) -> None:
        self.gates = list(gates)
        if not self.gates:
            raise ConfigError("ProximalGateOptimizer got no gates: the model has no SoRA branch "
                              "(use space.operator=sora)")
        if lr < 0 or xi < 0:
            raise ConfigError(f"SoRA gate lr and xi must be ≥ 0, got lr={lr}, xi={xi}")
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.xi = xi
        self.xi_times_lr = xi_times_lr
        self.optimizer = torch.optim.AdamW(self.gates, lr=lr, weight_decay=0.0)
        self.scheduler = linear_warmup_decay(self.optimizer, int(round(warmup_ratio * total_steps)), total_steps)
        self.last_threshold = 0.0

    @property
    def lr(self) -> float:
        """The learning rate the next AdamW step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def threshold(self, lr: float | None = None) -> float:
        """τ = ξ·η if ``xi_times_lr`` else ξ (η defaults to the current learning rate)."""
        return self.xi * (self.lr if lr is None else lr) if self.xi_times_lr else self.xi

    def step(self) -> None:
        """AdamW step, scheduler step, then the proximal step g ← S_τ(g) on every gate."""
        used_lr = self.lr
        self.optimizer.step()
        self.scheduler.step()
        self.last_threshold = self.threshold(used_lr)
        soft_threshold_(self.gates, self.last_threshold)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def prune_model_(model: nn.Module) -> dict[str, int]:
    """Replace every SoRA branch of an :class:`AdaptedLinear` by its pruned copy; returns {module name: nnz(g)}.

    Outputs are unchanged; gate tensors held elsewhere (e.g. by a gate optimizer) are no longer the model's.
    """
    wrappers = {name: module for name, module in model.named_modules()
                if isinstance(module, AdaptedLinear) and isinstance(module.branch, SoRABranch)}
    ranks: dict[str, int] = {}
    for name, wrapper in wrappers.items():
        wrapper.branch = wrapper.branch.pruned()
        ranks[name] = wrapper.branch.rank
    return ranks
