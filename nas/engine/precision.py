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
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs with bf16 matrix instructions


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


def cpu_bf16_is_native(cpuinfo: str | None = None) -> bool | None:
    """Whether this x86 CPU has bf16 matrix instructions (a flag of :data:`NATIVE_BF16_FLAGS` in ``/proc/cpuinfo``,
    or in ``cpuinfo`` when given); ``None`` where that cannot be read (not Linux, or not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def precision_warning(device: str | torch.device, precision: str, cpuinfo: str | None = None) -> str | None:
    """A warning for ``precision=bf16`` on a CPU without bf16 instructions, where autocast emulates bf16: measured
    25–50× slower than fp32 on a 2-core AVX2 EPYC (a planted search at 10–20 s per step against 0.4 s), while on
    an AVX512-BF16 CPU it is about 1.7× faster. ``None`` otherwise."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_bf16_is_native(cpuinfo) is not False:
        return None
    return (f"diffora: warning: precision=bf16 on a CPU without bf16 instructions (no {' or '.join(NATIVE_BF16_FLAGS)} "
            f"flag): autocast emulates bf16 there, many times slower than fp32; use precision=fp32 on this machine")
