"""``condition_number``: the condition number of each candidate's pretrained weight, a data-free proxy.

For candidate m with pretrained weight W_m (the base layer's weight, (out, in) or GPT-2's (in, out): the singular
values are the same) and singular values σ_1 ≥ … ≥ σ_k, k = min(out, in), computed in float64:

    κ(W_m) = σ_1 / max(σ_k, τ),   τ = σ_1 · max(out, in) · ε_float64,        score_m = −κ(W_m).

τ is the rank tolerance of ``numpy.linalg.matrix_rank``: a rank-deficient W has κ = 1 / (max(out, in) · ε)
(≈ 10¹³ for a 768-wide layer) instead of ∞, so the score stays finite and such a weight ranks last. An all-zero W
(every singular value equal) has κ = 1.

Orientation: higher score = keep = a *smaller* κ. A large κ means an anisotropic weight that amplifies a few
directions and compresses the rest: a unit that has specialized (Ludwig 2025, "The Condition Number as a
Scale-Invariant Proxy for Information Encoding in Neural Units", arXiv:2506.16289). KappaTune, the method of that
paper, fine-tunes the tensors with the *smallest* κ: they are numerically stable under the update, their
higher-entropy output leaves room to learn the new task, and leaving the specialized (high-κ) weights alone
preserves the pretrained knowledge. The same reading underlies heavy-tail (HT-SR) allocations, which give more
adaptation to the less heavy-tailed, less "trained" layers. So score = −κ: well-conditioned weights are adapted
first. Any decreasing function of κ ranks alike; note that κ of pretrained weights spans orders of magnitude
(about 10¹ to 10⁵ in MiniLM), so the z-scores of ``criterion.normalize=within_type`` are led by the largest κ.
It uses no data and no gradient; one SVD per candidate (of the full weight, on its device).
"""

from __future__ import annotations

import torch

from nas.search.criteria import CRITERIA, Criterion, Scores, ScoringInput
from nas.search.criterion_pretrained import base_weight


def condition_number(weight: torch.Tensor) -> float:
    """κ(W) = σ_max / max(σ_min, σ_max · max(shape) · ε) in float64; 1 for an all-zero W."""
    if weight.dim() != 2:
        raise ValueError(f"condition_number needs a 2-D weight, got shape {tuple(weight.shape)}; score linear modules")
    singular = torch.linalg.svdvals(weight.detach().to(torch.float64))
    largest, smallest = float(singular[0]), float(singular[-1])
    if largest == 0.0:
        return 1.0
    tolerance = largest * max(weight.shape) * torch.finfo(torch.float64).eps
    return largest / max(smallest, tolerance)


def condition_scores(inputs: ScoringInput) -> Scores:
    """score_m = −κ(W_m) for every candidate (higher = better conditioned = keep)."""
    net = inputs.supernet
    with torch.no_grad():
        return {name: -condition_number(base_weight(net, name)) for name in net.space.names}


CRITERIA.register("condition_number")(Criterion("init", condition_scores, needs_search=False))
