"""LoRA branches that start on their input's main directions (``bilevel.branch_init=activations``).

A LoRA branch ΔW·x = s·B A x starts with B = 0. Until B has grown, only B learns: its gradient is
γ·s·(∂L/∂h)(A x)ᵀ, while A's, γ·s·Bᵀ(∂L/∂h)xᵀ, is 0 at B = 0. So at first a branch can fit only the part of what its
module needs that lies in the r input directions its random A happens to keep: r/in of it for a need spread evenly
over the input (8/384 ≈ 2% on MiniLM's attention and FFN inputs, 8/1536 ≈ 0.5% on its FFN outputs). Its gate sees that
part, and little else until A turns.

``activations`` sets the rows of every branch's A to the top-r eigenvectors of the module's uncentered input second
moment E[x xᵀ] over the real tokens of the given batches, as EVA does for fine-tuning (Paischer et al., 2024,
arXiv 2410.07170). Each row is scaled so that ‖A‖_F stays what its Kaiming init drew: the directions change, not the
size, so the learning rates keep their meaning. B stays 0, so the supernet's function at step 0 is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nas.adapters.lora import LoRABranch
from nas.search.hypergradient import Batch
from nas.search.module_inputs import visit_module_inputs
from nas.search.supernet import SuperNet


def input_moments(supernet: SuperNet, batches: Sequence[Batch]) -> dict[str, tuple[torch.Tensor, int]]:
    """Per branch: (Σ x xᵀ over the real tokens of ``batches`` in float64, the token count), in full precision."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(supernet.adapters, 0)

    def accumulate(name: str, rows: torch.Tensor) -> None:
        x = rows.double()
        sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
        counts[name] += x.shape[0]

    visit_module_inputs(supernet, batches, accumulate, full_precision=True)
    return {name: (sums[name], counts[name]) for name in supernet.adapters}


@torch.no_grad()
def align_to_activations(supernet: SuperNet, batches: Sequence[Batch]) -> dict[str, float]:
    """Set every branch's A to its input's top-r eigenvectors (largest first), at A's own Frobenius norm; returns per
    branch the share of the input's energy (trace of E[x xᵀ]) that those r directions carry."""
    shares = {}
    for name, (moment, count) in input_moments(supernet, batches).items():
        branch = supernet.adapters[name].branch
        if not isinstance(branch, LoRABranch):
            raise ValueError(f"bilevel.branch_init=activations sets LoRA's A, but {name} has a "
                             f"{type(branch).__name__}; use space.operator=lora or bilevel.branch_init=kaiming")
        if count == 0:
            raise ValueError(f"no token reached {name}; activation-aligned branches need real tokens in the batches")
        values, vectors = torch.linalg.eigh(moment / count)
        rank = branch.lora_A.shape[0]
        top = vectors[:, -rank:].flip(-1).T  # (r, in): eigenvalues descending
        norm = float(branch.lora_A.norm())
        branch.lora_A.copy_((top * (norm / math.sqrt(rank))).to(branch.lora_A))
        total = float(values.clamp(min=0).sum())
        shares[name] = float(values[-rank:].clamp(min=0).sum()) / total if total > 0 else 0.0
    return shares
