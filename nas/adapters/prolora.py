"""PRoLoRA operator (Wang et al., 2024, arXiv 2402.16902): a partially shared, rotated LoRA branch.

Of the rank r, u ranks are unshared (ordinary LoRA rows/columns) and r' = r − u are shared. The shared part of
A ∈ ℝ^{r'×h_in} is built from one trainable chunk A₀ ∈ ℝ^{r'×⌈h_in/m⌉} repeated m times along the input axis
(broadcast reduction) and truncated to h_in; copy k is A₀ rolled by k·s_A along the rank axis (rotation), with
s_A = max(⌊r'/m⌋, 1). B's shared part is built likewise from B₀ ∈ ℝ^{⌈h_out/n⌉×r'} with n copies along the output
axis and stride s_B = max(⌊r'/n⌋, 1). Then

    A = [A_shared; A_u] ∈ ℝ^{r×h_in},   B = [B_shared, B_u] ∈ ℝ^{h_out×r},   ΔW·x = (α/r) · B A dropout(x).

Trainable parameters per module: r'(⌈h_in/m⌉ + ⌈h_out/n⌉) + u(h_in + h_out).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas.adapters.operators import OPERATORS
from nas.errors import ConfigError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_prolora_args(in_features: int, out_features: int, rank: int, sharing_in: int, sharing_out: int,
                       unshared_rank: int) -> None:
    """Raise :class:`ConfigError` naming the bad argument and its fix; return None when the shape is valid."""
    for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank),
                        ("sharing_in", sharing_in), ("sharing_out", sharing_out), ("unshared_rank", unshared_rank)):
        if not _is_int(value):
            raise ConfigError(f"PRoLoRA {name}={value!r} must be an integer; give it as a whole number")
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if value < 1:
            raise ConfigError(f"PRoLoRA {name}={value} must be >= 1; the adapted module has no such width")
    if rank < 1:
        raise ConfigError(f"PRoLoRA rank={rank} must be >= 1; set space.rank to a positive integer")
    for name, value in (("sharing_in", sharing_in), ("sharing_out", sharing_out)):
        if value < 1:
            raise ConfigError(f"PRoLoRA {name}={value} must be >= 1 (it is how many copies of the shared chunk "
                              f"tile the width); set {name} to 1 for no sharing")
    if sharing_in > in_features:
        raise ConfigError(f"PRoLoRA sharing_in={sharing_in} exceeds in_features={in_features}: the input width "
                          f"does not divide sensibly into {sharing_in} chunks; set sharing_in <= {in_features}")
    if sharing_out > out_features:
        raise ConfigError(f"PRoLoRA sharing_out={sharing_out} exceeds out_features={out_features}: the output "
                          f"width does not divide sensibly into {sharing_out} chunks; "
                          f"set sharing_out <= {out_features}")
    if not 0 <= unshared_rank <= rank:
        raise ConfigError(f"PRoLoRA unshared_rank={unshared_rank} must lie in [0, rank={rank}]; "
                          f"set unshared_rank between 0 and {rank}")
    if unshared_rank == rank:
        for name, value in (("sharing_in", sharing_in), ("sharing_out", sharing_out)):
            if value > 1:
                raise ConfigError(f"PRoLoRA {name}={value} has nothing to share: unshared_rank={unshared_rank} "
                                  f"equals rank={rank}, so the shared rank is 0; lower unshared_rank below "
                                  f"{rank} or set {name} to 1")


def prolora_param_count(in_features: int, out_features: int, rank: int, sharing_in: int, sharing_out: int,
                        unshared_rank: int) -> int:
    """r'(⌈h_in/m⌉ + ⌈h_out/n⌉) + u(h_in + h_out) with r' = r − u (arguments are checked first)."""
    check_prolora_args(in_features, out_features, rank, sharing_in, sharing_out, unshared_rank)
    shared = rank - unshared_rank
    return (shared * (math.ceil(in_features / sharing_in) + math.ceil(out_features / sharing_out))
            + unshared_rank * (in_features + out_features))


def kaiming_uniform_bound(fan_in: int) -> float:
    """Bound b of Kaiming-uniform with a = √5: b = gain·√(3/fan_in), gain = √(2/(1+a²)), i.e. b = 1/√fan_in."""
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return gain * math.sqrt(3.0 / fan_in)


def broadcast_rotated(chunk: torch.Tensor, copies: int, width: int, rank_dim: int, stride: int,
                      rotate: bool) -> torch.Tensor:
    """cat_k roll(chunk, −k·stride, rank_dim) for k < copies along the other dim, truncated to ``width``."""
    width_dim = 1 - rank_dim
    parts = [torch.roll(chunk, -k * stride, dims=rank_dim) if rotate and k and chunk.shape[rank_dim] else chunk
             for k in range(copies)]
    return torch.cat(parts, dim=width_dim).narrow(width_dim, 0, width)


@OPERATORS.register("prolora")
class PRoLoRABranch(nn.Module):
    """ΔW·x = (α/r) · B A dropout(x) with A, B partially shared and rotated (see the module docstring).

    Parameters: ``shared_A`` (r'×⌈in/m⌉), ``shared_B`` (⌈out/n⌉×r'), ``unshared_A`` (u×in), ``unshared_B`` (out×u).
    A part whose rank is 0 is kept as a size-0 parameter, so the state_dict keys never depend on the options.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 sharing_in: int = 2, sharing_out: int = 2, unshared_rank: int = 1, rotate: bool = True,
                 rectified_init: bool = True) -> None:
        super().__init__()
        check_prolora_args(in_features, out_features, rank, sharing_in, sharing_out, unshared_rank)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.scaling = alpha / rank
        self.sharing_in = sharing_in
        self.sharing_out = sharing_out
        self.unshared_rank = unshared_rank
        self.shared_rank = rank - unshared_rank
        self.rotate = rotate
        self.rectified_init = rectified_init
        self.chunk_in = math.ceil(in_features / sharing_in)
        self.chunk_out = math.ceil(out_features / sharing_out)
        self.stride_in = max(self.shared_rank // sharing_in, 1)
        self.stride_out = max(self.shared_rank // sharing_out, 1)
        self.shared_A = nn.Parameter(torch.empty(self.shared_rank, self.chunk_in))
        self.shared_B = nn.Parameter(torch.empty(self.chunk_out, self.shared_rank))
        self.unshared_A = nn.Parameter(torch.empty(unshared_rank, in_features))
        self.unshared_B = nn.Parameter(torch.empty(out_features, unshared_rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
                f"unshared_rank={self.unshared_rank}, sharing=({self.sharing_in}, {self.sharing_out}), "
                f"rotate={self.rotate}")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A₀, A_u ~ U(−b, b), b = 1/√h_in (rectified; naive: b = 1/√⌈h_in/m⌉ for A₀); B₀ = B_u = 0."""
        full_bound = kaiming_uniform_bound(self.in_features)
        chunk_bound = full_bound if self.rectified_init else kaiming_uniform_bound(self.chunk_in)
        self.shared_A.uniform_(-chunk_bound, chunk_bound)
        self.unshared_A.uniform_(-full_bound, full_bound)
        self.shared_B.zero_()
        self.unshared_B.zero_()

    def full_A(self) -> torch.Tensor:
        """A = [broadcast_rotated(A₀, m, h_in); A_u] ∈ ℝ^{r×h_in}."""
        shared = broadcast_rotated(self.shared_A, self.sharing_in, self.in_features, 0, self.stride_in, self.rotate)
        return torch.cat([shared, self.unshared_A], dim=0)

    def full_B(self) -> torch.Tensor:
        """B = [broadcast_rotated(B₀, n, h_out), B_u] ∈ ℝ^{h_out×r}."""
        shared = broadcast_rotated(self.shared_B, self.sharing_out, self.out_features, 1, self.stride_out,
                                   self.rotate)
        return torch.cat([shared, self.unshared_B], dim=1)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A ∈ ℝ^{h_out×h_in}."""
        return self.full_B() @ self.full_A() * self.scaling

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, (α/r)·B), both materialized: an ordinary rank-r LoRA with the same ΔW."""
        return self.full_A(), self.full_B() * self.scaling

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """Multiply ΔW by ``factor`` (folds a fixed gate into both parts of B)."""
        self.shared_B.mul_(factor)
        self.unshared_B.mul_(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.full_A().T) @ self.full_B().T * self.scaling
