"""Numeric precision of the forward passes: ``precision=auto`` (default), ``fp32`` or ``bf16`` (autocast).

``auto`` is resolved once, before a run's identity is taken (:func:`resolve_precision`): bf16 where the hardware
has bf16 matrix instructions (an x86 CPU with AVX512-BF16 or AMX, a CUDA GPU of compute capability ≥ 8.0, i.e.
Ampere or later), fp32 elsewhere. The run records the precision it used (its config, fingerprint and metrics.json
say fp32 or bf16, never auto), so runs on two machines are never pooled as one configuration.

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

import functools
from contextlib import AbstractContextManager
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")  # what a run computes in
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs with bf16 matrix instructions


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (disabled for fp32; ``auto`` as :func:`resolve_precision`
    resolves it, for callers of the library that pass a composed config without running it through the app)."""
    precision = resolve_precision(precision, device)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


@functools.cache
def _this_cpuinfo() -> str | None:
    """This machine's ``/proc/cpuinfo`` (read once per process: autocast asks at every step); None where absent."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_bf16_is_native(cpuinfo: str | None = None) -> bool | None:
    """Whether this x86 CPU has bf16 matrix instructions (a flag of :data:`NATIVE_BF16_FLAGS` in ``/proc/cpuinfo``,
    or in ``cpuinfo`` when given); ``None`` where that cannot be read (not Linux, or not x86)."""
    if cpuinfo is None:
        cpuinfo = _this_cpuinfo()
        if cpuinfo is None:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(choice: str, device: str | torch.device, cpuinfo: str | None = None) -> str:
    """``choice`` itself for fp32 or bf16; for ``auto``: bf16 on a CUDA device of capability ≥ 8.0 or a CPU with
    bf16 instructions (:func:`cpu_bf16_is_native`), fp32 elsewhere (older GPUs, AVX2-only CPUs, other devices)."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"precision={choice} is unknown; choose one of: {', '.join(PRECISION_CHOICES)}")
    if choice != "auto":
        return choice
    kind = torch.device(device)
    if kind.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.get_device_capability(kind)[0] >= 8 else "fp32"
    if kind.type == "cpu":
        return "bf16" if cpu_bf16_is_native(cpuinfo) else "fp32"
    return "fp32"


def precision_warning(device: str | torch.device, precision: str, cpuinfo: str | None = None) -> str | None:
    """A warning for ``precision=bf16`` on a CPU without bf16 instructions, where autocast emulates bf16: measured
    25–50× slower than fp32 on a 2-core AVX2 EPYC (a planted search at 10–20 s per step against 0.4 s), while on
    an AVX512-BF16 CPU it is about 1.7× faster. ``None`` otherwise."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_bf16_is_native(cpuinfo) is not False:
        return None
    return (f"diffora: warning: precision=bf16 on a CPU without bf16 instructions (no {' or '.join(NATIVE_BF16_FLAGS)} "
            f"flag): autocast emulates bf16 there, many times slower than fp32; use precision=fp32 on this machine")
