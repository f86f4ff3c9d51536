"""Tables of experiments/results/planted_prune_cpu/summary.md from its run folders in runs/ (named
<variant>_<pattern>_s<seed>).

    python experiments/analysis/planted_prune_cpu_analyze.py [RUNS_FOLDER]

Per variant and pattern: mean precision@9 / AUC of every criterion; paired precision differences of each variant's
driving criterion against the same criterion in D (the defaults), over (pattern, seed) pairs, with the
exact sign-flip p and a t-interval (nas.reporting.statistics.paired_test); and where each criterion's extra
selections sit relative to S (a same-layer "twin" of a planted module: query↔key, value↔attention output, FFN
input↔FFN output; or the same module type in an adjacent layer).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nas.reporting.statistics import paired_test  # noqa: E402

STUDY = ROOT / "experiments" / "results" / "planted_prune_cpu"
RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else STUDY / "runs"
CRITERIA = ["dam", "perturbation", "gate_saliency", "fisher", "grad_norm", "branch_norm", "random"]
REFERENCE = {"WD05": "E05"}  # variants planted at task.effect=0.05 pair with E05; the others with D (0.1)
TWIN = {"attention.self.query": "attention.self.key", "attention.self.key": "attention.self.query",
        "attention.self.value": "attention.output.dense", "attention.output.dense": "attention.self.value",
        "intermediate.dense": "output.dense", "output.dense": "intermediate.dense"}


def where(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return int(parts[3]), ".".join(parts[4:])


def load() -> dict[tuple[str, str, int], dict]:
    runs = {}
    for metrics in sorted(RUNS.glob("*/metrics.json")):
        variant, pattern, seed = metrics.parent.name.rsplit("_", 2)
        selection = json.loads((metrics.parent / "selection.json").read_text())
        runs[(variant, pattern, int(seed[1:]))] = {"metrics": json.loads(metrics.read_text()), "selection": selection}
    return runs


def main() -> None:
    runs = load()
    groups = defaultdict(list)
    for (variant, pattern, _), run in runs.items():
        groups[(variant, pattern)].append(run)
    print("| variant | pattern | seeds | " + " | ".join(CRITERIA) + " |")
    print("|---|---|---:|" + "---:|" * len(CRITERIA))
    for (variant, pattern), members in sorted(groups.items()):
        cells = []
        for c in CRITERIA:
            values = [r["metrics"]["recovery"]["by_criterion"][c] for r in members]
            cells.append(f"{statistics.mean(v['precision'] for v in values):.2f} / "
                         f"{statistics.mean(v['auc'] for v in values):.2f}")
        print(f"| {variant} | {pattern} | {len(members)} | " + " | ".join(cells) + " |")
    print("\nPaired precision of each variant's driving criterion against the same criterion in its reference (D, or "
          "E05 for variants planted at 0.05), over (pattern, seed):\n")
    print("| variant − reference | criterion | pairs | mean d | 95% CI | sign-flip p | d per pair |")
    print("|---|---|---:|---:|---|---:|---|")
    for variant in sorted({v for v, _, _ in runs} - {"D"}):
        base = REFERENCE.get(variant, "D")
        keys = sorted((p, s) for v, p, s in runs if v == variant and (base, p, s) in runs)
        if not keys:
            continue
        driving = runs[(variant, *keys[0])]["metrics"]["recovery"]["criterion"]
        x = [runs[(variant, p, s)]["metrics"]["recovery"]["by_criterion"][driving]["precision"] for p, s in keys]
        y = [runs[(base, p, s)]["metrics"]["recovery"]["by_criterion"][driving]["precision"] for p, s in keys]
        test = paired_test(x, y, resolution=1 / 9)
        ci = "—" if test.ci is None else f"[{test.ci[0]:+.2f}, {test.ci[1]:+.2f}]"
        p_value = "—" if test.perm_pvalue is None else f"{test.perm_pvalue:.2f}"
        diffs = ", ".join(f"{a - b:+.2f}" for a, b in zip(x, y, strict=True))
        print(f"| {variant} − {base} | {driving} | {test.n} | {test.mean:+.3f} | {ci} | {p_value} | {diffs} |")
    print("\nPlanting strength (E05: task.effect=0.05, E2: 0.2) against D (0.1), paired over (pattern, seed), per "
          "criterion:\n")
    print("| variant | criterion | pairs | mean d | sign-flip p | d per pair |")
    print("|---|---|---:|---:|---:|---|")
    for variant in ("E05", "E2"):
        keys = sorted((p, s) for v, p, s in runs if v == variant and ("D", p, s) in runs)
        for c in ("dam", "perturbation", "gate_saliency"):
            x = [runs[(variant, p, s)]["metrics"]["recovery"]["by_criterion"][c]["precision"] for p, s in keys]
            y = [runs[("D", p, s)]["metrics"]["recovery"]["by_criterion"][c]["precision"] for p, s in keys]
            test = paired_test(x, y, resolution=1 / 9)
            p_value = "—" if test.perm_pvalue is None else f"{test.perm_pvalue:.3f}"
            diffs = ", ".join(f"{a - b:+.2f}" for a, b in zip(x, y, strict=True))
            print(f"| {variant} | {c} | {test.n} | {test.mean:+.3f} | {p_value} | {diffs} |")
    print("\nExtra selections (selected, not planted) of D, by where they sit:\n")
    print("| criterion | pattern | extras | same-layer twin of a planted module | same type, adjacent layer | other |")
    print("|---|---|---:|---:|---:|---:|")
    for c in ["dam", "perturbation", "gate_saliency"]:
        for pattern in ("random", "grid"):
            counts = [0, 0, 0, 0]
            for (variant, p, _), run in runs.items():
                if variant != "D" or p != pattern:
                    continue
                planted = set(run["metrics"]["recovery"]["planted"])
                scores = run["selection"]["criteria"][c]
                top = sorted(scores, key=lambda n: -scores[n])[:len(planted)]
                cells = {where(n) for n in planted}
                for name in set(top) - planted:
                    layer, kind = where(name)
                    counts[0] += 1
                    if (layer, TWIN[kind]) in cells:
                        counts[1] += 1
                    elif (layer - 1, kind) in cells or (layer + 1, kind) in cells:
                        counts[2] += 1
                    else:
                        counts[3] += 1
            print(f"| {c} | {pattern} | " + " | ".join(str(n) for n in counts) + " |")


if __name__ == "__main__":
    main()
