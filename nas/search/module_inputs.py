"""What every candidate module of a supernet receives: its input rows on the real tokens of some batches.

Several measurements made once at the start of a search read these inputs: how fast each branch moves its output
(``nas/search/branch_speed.py``) and the directions a branch's A starts on (``nas/search/branch_init.py``). One forward
pass per batch, in eval mode, with a hook on every adapter; the rows of padding tokens are left out where the batch
has an attention mask of the input's leading shape. The model's mode is restored and nothing is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from nas.engine.completions import model_inputs
from nas.search.hypergradient import Batch
from nas.search.supernet import SuperNet

Visitor = Callable[[str, torch.Tensor], None]  # (module name, its inputs on real tokens: (tokens, in))


@torch.no_grad()
def visit_module_inputs(supernet: SuperNet, batches: Sequence[Batch], visit: Visitor,
                        full_precision: bool = False) -> None:
    """Run ``batches`` through ``supernet`` and call ``visit(name, rows)`` for every adapter on every batch, ``rows``
    being the adapter's input on the batch's real tokens (all tokens where the batch has no mask), detached.
    ``full_precision``: autocast off during the forward passes, whatever the caller's precision."""
    if not batches:
        raise ValueError("measuring the modules' inputs needs at least one batch (criterion.batches >= 1)")
    mask: list[torch.Tensor | None] = [None]

    def recorder(name: str):  # noqa: ANN202 (a forward hook)
        def hook(_module: torch.nn.Module, args: tuple, _output: torch.Tensor) -> None:
            x = args[0].detach()
            keep = mask[0]
            visit(name, x[keep] if keep is not None and keep.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1]))
        return hook

    handles = [adapter.register_forward_hook(recorder(name)) for name, adapter in supernet.adapters.items()]
    was_training = supernet.training
    supernet.eval()
    device_type = next(supernet.parameters()).device.type
    try:
        with torch.autocast(device_type=device_type, enabled=False) if full_precision else nullcontext():
            for batch in batches:
                attention = batch.get("attention_mask")
                mask[0] = attention.bool() if attention is not None else None
                supernet(**model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
        supernet.train(was_training)
