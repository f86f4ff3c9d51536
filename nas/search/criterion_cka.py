"""``layer_cka``: how much each transformer block changes its representation, by linear CKA, at initialization.

With X ∈ ℝ^{n×d} the hidden states entering block l and Y ∈ ℝ^{n×d'} those leaving it, one row per token of the
fixed α-split batches (padding excluded: attention_mask = 0), both column-centred (X̃ = X − 1μ_Xᵀ):

    CKA(X, Y) = ‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F · ‖ỸᵀỸ‖_F)   (linear CKA, Kornblith et al. 2019),
    score_m = 1 − CKA(X_l, Y_l)   for every candidate m of layer l.

CKA is 1 when Y is an orthogonal transform and/or a rescaling of X (it is invariant to both), and near 0 when they
are unrelated. Higher score = keep: the blocks whose output resembles their input least are the ones that change
the representation most, and adapting them moves the network most (layer-wise LoRA selection by CKA, e.g.
github.com/c2d-usp/Layer-wise-LoRA-with-CKA). Every module of a layer shares the layer's score, so the criterion
ranks layers; ties within a layer are left to the discretizer. The pretrained network is read (branches off).

The blocks are found from the search space: candidate m of layer l is ``<container>.<l>.<path>`` with
``<container>`` an nn.ModuleList (the rule of :mod:`search_spaces.space`), so the block is ``<container>.<l>``
for BERT, RoBERTa, DeBERTa, GPT-2 and LLaMA alike. The n × n Gram matrices are never formed: the sums Σx, Σy,
XᵀX, YᵀY and YᵀX are accumulated over the batches in float64 (3·d² numbers per layer), and centred at the end
(X̃ᵀX̃ = XᵀX − n·μ_X μ_Xᵀ, ỸᵀX̃ = YᵀX − n·μ_Y μ_Xᵀ).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nas.engine.completions import model_inputs
from nas.errors import ConfigError
from nas.search.criteria import CRITERIA, Criterion, Scores, ScoringInput
from nas.search.criterion_pretrained import pretrained_network
from search_spaces.candidate import Candidate


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F) of two (n, d) sample matrices, centred per column, in float64."""
    stats = CKAStatistics()
    stats.update(x, y)
    return stats.value()


class CKAStatistics:
    """Running sums over token rows for linear CKA: n, Σx, Σy, XᵀX, YᵀY, YᵀX (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the rows of x (n, d) and y (n, d'), row i of both being the same sample (token)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"linear CKA needs two (samples, features) matrices with the same samples, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}; flatten the tokens to rows first")
        x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
        terms = {"x": x.sum(0), "y": y.sum(0), "xx": x.T @ x, "yy": y.T @ y, "yx": y.T @ x}
        for key, value in terms.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += x.shape[0]

    def value(self) -> float:
        """CKA of all the rows added so far; a constant X or Y (no variance) is a ValueError."""
        if self.count < 2:
            raise ValueError(f"linear CKA needs at least 2 samples, got {self.count}; give it more tokens")
        s, n = self.sums, self.count
        mx, my = s["x"] / n, s["y"] / n
        cxx = s["xx"] - n * torch.outer(mx, mx)
        cyy = s["yy"] - n * torch.outer(my, my)
        cyx = s["yx"] - n * torch.outer(my, mx)
        denominator = float(torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy))
        if denominator <= 0.0:
            raise ValueError(f"linear CKA is undefined: X or Y is constant over its {n} samples; "
                             "give it samples that vary (more batches or tokens)")
        return float(torch.linalg.matrix_norm(cyx) ** 2) / denominator


def block_path(model: torch.nn.Module, candidate: Candidate) -> str:
    """``<container>.<layer>`` of a candidate, ``<container>`` the nn.ModuleList that holds its layer."""
    parts = candidate.name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == str(candidate.layer):
            parent = model.get_submodule(".".join(parts[:i]))
            if isinstance(parent, torch.nn.ModuleList):
                return ".".join(parts[: i + 1])
    raise ValueError(f"candidate {candidate.name} of layer {candidate.layer} is not inside an nn.ModuleList entry "
                     f"{candidate.layer}; layer_cka scores the blocks of a search space built by build_search_space")


def _hidden(value: object) -> torch.Tensor | None:
    """The hidden-state tensor of a block's input or output (a tensor, or the first entry of a tuple)."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


def layer_cka_scores(inputs: ScoringInput) -> Scores:
    """score_m = 1 − CKA(input, output of the block of m's layer) over the non-padding tokens of the fixed batches."""
    net = inputs.supernet
    if not inputs.batches:
        raise ConfigError("criterion layer_cka needs the fixed α-split batches, got none; set criterion.batches >= 1")
    blocks = {candidate.layer: block_path(net.model, candidate) for candidate in net.space}
    stats = {layer: CKAStatistics() for layer in blocks}
    mask: list[torch.Tensor | None] = [None]

    def recorder(layer: int) -> Callable:
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            x = _hidden(args[0] if args else kwargs.get("hidden_states"))
            y = _hidden(output)
            if x is None or y is None or x.shape[:-1] != y.shape[:-1]:
                raise ValueError(f"layer_cka could not read the hidden states entering and leaving block "
                                 f"{blocks[layer]}; its forward must take them first and return them first")
            keep = mask[0]
            if keep is not None and keep.shape == x.shape[:-1]:
                x, y = x[keep], y[keep]
            stats[layer].update(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
        return hook

    handles = [net.model.get_submodule(path).register_forward_hook(recorder(layer), with_kwargs=True)
               for layer, path in blocks.items()]
    try:
        with pretrained_network(net), torch.no_grad():
            for batch in inputs.batches:
                attention = batch.get("attention_mask")
                mask[0] = attention.bool() if attention is not None else None
                net(**model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    scores = {layer: 1.0 - stat.value() for layer, stat in stats.items()}
    return {candidate.name: scores[candidate.layer] for candidate in net.space}


CRITERIA.register("layer_cka")(Criterion("init", layer_cka_scores, needs_search=False))
