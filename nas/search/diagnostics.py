"""Search diagnostics on the relaxed DAM: entropy, spread, and collapse (all gates saturating together)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def mean_binary_entropy(scores: Mapping[str, float]) -> float:
    """(1/N) Σ −[γ log γ + (1−γ) log(1−γ)] in nats; log 2 ≈ 0.693 when every γ = 0.5, 0 when all are 0 or 1."""
    total = 0.0
    for gamma in scores.values():
        g = min(max(gamma, 1e-12), 1 - 1e-12)
        total -= g * math.log(g) + (1 - g) * math.log(1 - g)
    return total / max(len(scores), 1)


def collapse(scores: Mapping[str, float], margin: float = 0.05) -> str | None:
    """"all_on" when every γ > 1 − margin, "all_off" when every γ < margin, else None (the DAM discriminates)."""
    values = list(scores.values())
    if values and all(v > 1 - margin for v in values):
        return "all_on"
    if values and all(v < margin for v in values):
        return "all_off"
    return None


def summarize_dam(scores: Mapping[str, float]) -> dict[str, float | str | None]:
    values = list(scores.values())
    return {"entropy": mean_binary_entropy(scores), "spread": max(values) - min(values) if values else 0.0,
            "mean": sum(values) / max(len(values), 1), "collapse": collapse(scores)}
