"""Shared by the criteria that score the pretrained network (``snip``, ``layer_cka``, ``condition_number``).

These criteria read the backbone as it was before any adapter: every branch is switched off (γ·ΔW = 0, exactly
what the supernet computes at initialization when B = 0, and also true when ``bilevel.branch_size`` starts B non-zero),
the network is in evaluation mode (no dropout), and the gates of the last forward pass are dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nas.search.supernet import SuperNet


@contextmanager
def pretrained_network(net: SuperNet) -> Iterator[SuperNet]:
    """The supernet in evaluation mode with every branch off; its mode and ``removed`` set are restored after."""
    was_training, removed = net.training, set(net.removed)
    net.eval()
    net.removed = set(net.adapters)
    try:
        yield net
    finally:
        net.removed = removed
        net.detach_gates()
        net.train(was_training)


def base_weight(net: SuperNet, name: str) -> torch.nn.Parameter:
    """The frozen pretrained weight W of candidate ``name`` (nn.Linear: (out, in); GPT-2 Conv1D: (in, out))."""
    adapter = net.adapters.get(name)
    if adapter is None:
        raise KeyError(f"{name} has no adapter in this supernet; score a supernet built over the same search space")
    return adapter.base_layer.weight
