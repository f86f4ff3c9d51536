"""The two planted modules the DAM misses, step by step, under each w-side variant (2 CPU cores, seed 0).

    python experiments/analysis/planted_size_h100_early_gates.py

For the random pattern layer 4's FFN input (bert.encoder.layer.4.intermediate.dense), for the grid layer 5's FFN
output (…layer.5.output.dense): the gate γ at search steps 0, 30, 60, 90 and at the end, the 9th-largest γ at the
end (the cut of ρ = 9/36), and the module's final rank of 36. Read from each run's dam_trajectory.json in
experiments/results/planted_size_h100/cpu/.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "experiments" / "results" / "planted_size_h100" / "cpu"
MISSED = {"random": "bert.encoder.layer.4.intermediate.dense", "grid": "bert.encoder.layer.5.output.dense"}
VARIANTS = ["C", "L300", "BO", "R32", "EI", "VO", "WU30", "WS", "LW3", "RAMP", "VO300", "Cf", "SH5f", "SF25", "SF25L",
            "C1000", "C1000soft", "D1000", "EMA9", "EMA98", "E1000", "ED1000",
            "E995", "E1000soft", "E150", "E1000gum", "E1000hc"]
STEPS = (0, 30, 60, 90)


def row(variant: str, pattern: str) -> str | None:
    path = HERE / f"{variant}_{pattern}_s0" / "dam_trajectory.json"
    if not path.exists():
        return None
    trajectory = json.loads(path.read_text())
    by_step = {entry["step"]: entry["dam"] for entry in trajectory}
    last = trajectory[-1]["dam"]
    name = MISSED[pattern]
    ranked = sorted(last, key=last.get, reverse=True)
    gates = " | ".join(f"{by_step[s][name]:.3f}" if s in by_step else "—" for s in STEPS)
    cut = last[ranked[8]]
    return (f"| {variant} | {pattern} | {gates} | {last[name]:.3f} (step {trajectory[-1]['step'] + 1}) | {cut:.3f} "
            f"| {ranked.index(name) + 1} |")


def main() -> None:
    print("| variant | pattern | γ step 0 | 30 | 60 | 90 | γ at the end | 9th γ | rank |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for pattern in MISSED:
        for variant in VARIANTS:
            line = row(variant, pattern)
            if line:
                print(line)


if __name__ == "__main__":
    main()
