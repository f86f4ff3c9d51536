"""The learning-rate schedule of every AdamW loop (and of SoRA's gate optimizer): linear warm-up, then linear decay.

    factor(t) = t / W                       for t < W   (W warm-up steps)
    factor(t) = max(0, (T − t) / (T − W))   for t ≥ W   (T total steps)

the same factors as transformers' ``get_linear_schedule_with_warmup``, written here so that a run does not import
transformers' trainer (which imports peft: seconds at every start).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """``LambdaLR`` with the factors above."""
    warmup, total = int(warmup_steps), max(int(total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return LambdaLR(optimizer, factor)
