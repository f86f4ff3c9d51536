"""Numeric precision of the forward passes: ``precision=fp32`` (default) or ``bf16`` (autocast).

Under ``bf16`` every forward pass of the search, the training loop, the criteria and the evaluation runs in
``torch.autocast(device_type, dtype=torch.bfloat16)``: matrix products take bf16 inputs and accumulate in fp32,
while the parameters, their gradients and both optimizers' states stay fp32 (no loss scaling is needed: bf16
has fp32's exponent range). The loss is computed in fp32 (autocast's own rule for cross-entropy and MSE).
CPUs with AVX512-BF16 or AMX and GPUs from Ampere on run it natively. The second-order hypergradient's finite
difference then compares two bf16 forward passes; its step ε is relative to ‖w‖, far above bf16's resolution
of the loss only when the loss changes by more than about 1e-3 of itself, so prefer fp32 for exact
second-order checks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")
