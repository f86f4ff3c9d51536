"""``snip``: SNIP connection sensitivity (Lee et al. 2019) of each candidate's pretrained weight, at initialization.

With B̄ the fixed α-split batches, L̄ = (1/|B̄|) Σ_b L_b the mean loss of the pretrained network (every branch off,
evaluation mode) and W_m the pretrained weight of candidate m:

    s_m = Σ_ij | W_m,ij · ∂L̄/∂W_m,ij |.

Each term is the first-order estimate of the loss change when the connection W_ij is cut (L(W − W_ij e_ij) − L(W)
≈ −W_ij ∂L/∂W_ij), so s_m is how much the loss leans on the module's connections. Higher = keep.

Why not SNIP of the branch itself, Σ_{θ ∈ {A, B}} |θ · ∂L/∂θ|? With h = Wx + γ·s·BAx and LoRA's B = 0 at
initialization, |B ⊙ ∂L/∂B| = 0 because B = 0, and ∂L/∂A = γ·s·Bᵀ(∂L/∂h)xᵀ = 0 because B = 0, so the branch score is
identically 0 for every module and ranks nothing. What the branch can change is the module's effective weight
W + γ·s·BA, and ∂L/∂(BA) = γ·s·∂L/∂W: the gradient that reaches any update of the module is the base weight's,
so the branch inherits W's sensitivity. This is the standard adaptation of SNIP to LoRA placement: SNIP of W itself.
The gradient of L̄ (not of each batch) is taken, as SNIP does on its one mini-batch; a module whose output the
loss does not read scores 0.
"""

from __future__ import annotations

import torch

from nas.engine.completions import model_inputs
from nas.errors import ConfigError
from nas.search.criteria import CRITERIA, Criterion, Scores, ScoringInput
from nas.search.criterion_pretrained import base_weight, pretrained_network


def snip_scores(inputs: ScoringInput) -> Scores:
    """s_m = Σ |W_m ⊙ ∂L̄/∂W_m| over the fixed batches, W_m the pretrained weight (branches off)."""
    net = inputs.supernet
    if not inputs.batches:
        raise ConfigError("criterion snip needs the fixed α-split batches and got none; set criterion.batches >= 1")
    names = list(net.space.names)
    weights = [base_weight(net, name) for name in names]
    frozen = [w.requires_grad for w in weights]
    totals = [torch.zeros_like(w, dtype=torch.promote_types(w.dtype, torch.float32)) for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)  # only for the gradient below: the base weights stay frozen for every optimizer
        with pretrained_network(net):
            for batch in inputs.batches:
                loss = inputs.loss_fn(net(**model_inputs(batch)), batch)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for total, grad in zip(totals, grads, strict=True):
                    if grad is not None:  # None: the loss does not read this module
                        total += grad.detach().to(total.dtype)
    finally:
        for w, was in zip(weights, frozen, strict=True):
            w.requires_grad_(was)
    count = len(inputs.batches)
    with torch.no_grad():
        return {name: float((w.detach().to(total.dtype) * total / count).abs().sum())
                for name, w, total in zip(names, weights, totals, strict=True)}


CRITERIA.register("snip")(Criterion("init", snip_scores, needs_search=False))
