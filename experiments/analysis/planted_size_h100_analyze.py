"""Tables of experiments/results/planted_size_h100/summary.md from its runs/ (H100, seeds 10-12) and cpu/ (2 CPU
cores, seeds 0-2), folders named <variant>_<pattern>_s<seed>.

    python experiments/analysis/planted_size_h100_analyze.py

Per variant and pattern: mean precision@9 / AUC of every criterion. Then the DAM's precision of each variant against
its reference, paired over (pattern, seed), with the exact sign-flip p and a t-interval
(nas.reporting.statistics.paired_test). On the CPU the reference of the defaults is planted_prune_cpu's E05 (the same
problem, seeds and settings). `diffora aggregate runs` gives the H100 rows per pattern; this pools both patterns.
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

RESULTS = ROOT / "experiments" / "results"
HERE = RESULTS / "planted_size_h100"
FOLDERS = {"runs": HERE / "runs", "cpu": HERE / "cpu", "E05": RESULTS / "planted_prune_cpu" / "runs"}
CRITERIA = ["dam", "perturbation", "gate_saliency", "fisher", "grad_norm", "branch_norm", "random"]
PAIRS = [("Vsig", "Dsig"), ("Vsoft", "Dsoft"), ("Csig", "Dsig"), ("Csoft", "Dsoft"), ("CBsig", "Dsig"),
         ("CBsig", "Csig"), ("Vsig", "Csig"), ("Vsig2", "Vsig"), ("Vsoft2", "Vsoft"), ("C", "E05"), ("C0", "E05"),
         ("CF", "C"), ("Ngum", "Dgum"), ("Nhc", "Dhc"), ("L300", "C"), ("BO", "C"), ("R32", "C"),
         ("EI", "C"), ("VO", "C"), ("WS", "C"), ("LW3", "C"), ("WU30", "C"), ("RAMP", "C"), ("VO300", "L300"),
         ("Cf", "C"), ("SH5f", "Cf"), ("SF25", "Cf"), ("SF25L", "L300"), ("C1000", "L300"),
         ("C1000soft", "L300soft"), ("D1000", "C1000"), ("EMA9", "L300"), ("EMA98", "L300"), ("E1000", "C1000"),
         ("E995", "C1000"), ("ED1000", "E1000"), ("E1000", "C"), ("E1000soft", "C1000soft"),
         ("E1000soft", "L300soft"), ("E1000soft", "E1000"), ("E150", "Cf"), ("E1000gum", "Ngum"), ("E1000hc", "Nhc")]


def precision(run: dict, criterion: str = "dam") -> float:
    return run["recovery"]["by_criterion"][criterion]["precision"]


def load(folder: Path, only: str | None = None) -> dict[tuple[str, str, int], dict]:
    runs = {}
    for metrics in sorted(folder.glob("*/metrics.json")):
        variant, pattern, seed = metrics.parent.name.rsplit("_", 2)
        if only is None or variant == only:
            runs[(variant, pattern, int(seed[1:]))] = json.loads(metrics.read_text())
    return runs


def main() -> None:
    for folder in ("runs", "cpu"):
        table({k: v for k, v in load(FOLDERS[folder]).items() if not k[0].startswith("S05")})
    runs = {**load(FOLDERS["runs"]), **load(FOLDERS["cpu"]), **load(FOLDERS["E05"], only="E05")}
    pairs(runs)


def table(runs: dict[tuple[str, str, int], dict]) -> None:
    groups = defaultdict(list)
    for (variant, pattern, _), run in runs.items():
        groups[(variant, pattern)].append(run)
    print("\n| variant | pattern | seeds | " + " | ".join(CRITERIA) + " |")
    print("|---|---|---:|" + "---:|" * len(CRITERIA))
    for (variant, pattern), members in sorted(groups.items()):
        cells = [f"{statistics.mean(precision(r, c) for r in members):.2f} / "
                 f"{statistics.mean(r['recovery']['by_criterion'][c]['auc'] for r in members):.2f}" for c in CRITERIA]
        print(f"| {variant} | {pattern} | {len(members)} | " + " | ".join(cells) + " |")


def pairs(runs: dict[tuple[str, str, int], dict]) -> None:
    print("\n| DAM precision: variant − reference | pairs | mean d | 95% CI | sign-flip p "
          "| d per pair (grid, random) |")
    print("|---|---:|---:|---|---:|---|")
    for variant, base in PAIRS:
        keys = sorted((p, s) for v, p, s in runs if v == variant and (base, p, s) in runs)
        if not keys:
            continue
        x, y = [precision(runs[(variant, *k)]) for k in keys], [precision(runs[(base, *k)]) for k in keys]
        test = paired_test(x, y, resolution=1 / 9)
        ci = "—" if test.ci is None else f"[{test.ci[0]:+.2f}, {test.ci[1]:+.2f}]"
        p_value = "—" if test.perm_pvalue is None else f"{test.perm_pvalue:.3f}"
        diffs = ", ".join(f"{a - b:+.2f}" for a, b in zip(x, y, strict=True))
        print(f"| {variant} − {base} | {test.n} | {test.mean:+.3f} | {ci} | {p_value} | {diffs} |")


if __name__ == "__main__":
    main()
