"""Outputs of nas.reporting.aggregate: summary.md (tables per task), runs.csv, summary.csv, paired.csv and
summary.png."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nas.reporting.run_records import RunRecord  # noqa: E402
from nas.reporting.statistics import PairedComparison, PairedReport  # noqa: E402
from nas.reporting.summaries import GroupSummary  # noqa: E402


def format_pm(mean: float | None, std: float | None) -> str:
    """``0.821 ± 0.012``; ``0.821 ± —`` for a single seed; ``—`` without any."""
    if mean is None:
        return "—"
    return f"{mean:.3f} ± {'—' if std is None else f'{std:.3f}'}"


def format_p(p: float | None) -> str:
    """A p-value: ``0.043``, ``<0.001``, or ``—`` where undefined."""
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def format_stability(j: float | None, chance: float | None) -> str:
    """``J (chance c)``: the mean pairwise Jaccard beside its chance level; ``—`` without J."""
    if j is None:
        return "—"
    return f"{j:.3f}" + ("" if chance is None else f" (chance {chance:.3f})")


def format_params(value: float | None) -> str:
    return "—" if value is None else f"{round(value):,}"


def format_time(seconds: float | None) -> str:
    """``45 s`` under a minute, ``12.3 min`` under two hours, else ``2.5 h``."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _by_task(summaries: Sequence[GroupSummary]) -> list[tuple[str, list[GroupSummary]]]:
    tasks: dict[str, list[GroupSummary]] = defaultdict(list)
    for summary in summaries:
        tasks[summary.task].append(summary)
    return [(task, sorted(groups, key=lambda g: (g.method, g.label))) for task, groups in sorted(tasks.items())]


def _task_main(groups: Sequence[GroupSummary]) -> tuple[str, float | None]:
    main = next((g.main_metric for g in groups if g.main_metric), "score")
    return main, next((g.baseline for g in groups if g.baseline is not None and g.main_metric == main), None)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 2) -> list[str]:
    """A markdown table: the first ``text_columns`` left-aligned, the rest right-aligned."""
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _variant(label: str) -> str:
    return label.replace("|", "\\|") or "—"


def _recovery_cells(g: GroupSummary) -> list[str]:
    r = g.recovery
    if r is None:
        return ["—", "—", "—"]
    return [format_pm(*r.precision), format_pm(*r.auc), "—" if r.chance is None else f"{r.chance:.3f}"]


def to_markdown(summaries: Sequence[GroupSummary], paired: PairedReport | None = None,
                paired_recovery: PairedReport | None = None) -> str:
    """Per task: a table with rows by method then label and the majority-class baseline above it; recovery columns
    and a recovery-by-criterion table where a run recorded recovery; the two-factor grids; and, given ``paired``
    (and ``paired_recovery``, of the recovery precision), the paired differences against its reference."""
    lines: list[str] = []
    for task, groups in _by_task(summaries):
        main, baseline = _task_main(groups)
        others: list[str] = []
        for g in groups:
            others.extend(k for k in g.metrics if k != main and k not in others)
        base = "not recorded" if baseline is None else f"{baseline:.3f}"
        recovery = any(g.recovery is not None for g in groups)
        header = ["method", "variant", "n", f"{main} (mean ± std)", *others, "trainable params",
                  "effective params", "wall time (median)", "selection stability",
                  *(["recovery precision", "recovery AUC", "recovery chance"] if recovery else []),
                  "failed", "unfinished"]
        rows = [[g.method, _variant(g.label), str(g.n), format_pm(g.score_mean, g.score_std),
                 *(format_pm(*g.metrics.get(k, (None, None))) for k in others),
                 format_params(g.trainable_params), format_params(g.effective_params), format_time(g.wall_s),
                 format_stability(g.stability, g.stability_chance), *(_recovery_cells(g) if recovery else []),
                 str(g.failed), str(g.unfinished)] for g in groups]
        lines += [f"## {task}", "", f"Majority-class baseline ({main}): {base}", "", *_table(header, rows)]
        lines += recovery_by_criterion(groups)
        lines += stand_ins(groups)
        lines += to_grids(groups)
        for report in (paired, paired_recovery):
            if report is not None:  # a recovery report holds only tasks with recovery
                lines += paired_section(task, main, report)
        problems = [p for g in groups for p in g.not_finished]
        if problems:
            lines += ["", "Not finished:", *(f"- `{p}`" for p in problems)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def to_grids(groups: Sequence[GroupSummary]) -> list[str]:
    """Per method whose runs vary in exactly two variant keys (e.g. relaxation × discretizer): a grid of
    ``mean ± std (J = stability)`` with the first key's values as rows and the second's as columns."""
    lines: list[str] = []
    methods: dict[str, list[GroupSummary]] = defaultdict(list)
    for g in groups:
        methods[g.method].append(g)
    for method, rows in methods.items():
        keys = list(rows[0].variant)
        if len(keys) != 2 or any(list(g.variant) != keys for g in rows):
            continue
        first = list(dict.fromkeys(str(g.variant[keys[0]]) for g in rows))
        second = list(dict.fromkeys(str(g.variant[keys[1]]) for g in rows))
        cells = {(str(g.variant[keys[0]]), str(g.variant[keys[1]])): g for g in rows}
        lines += ["", f"{method}: {keys[0]} × {keys[1]} (mean ± std; J = mean pairwise Jaccard of the selections, "
                  "chance = its expectation for uniformly random selections of the same sizes)",
                  "", f"| {keys[0]} \\ {keys[1]} | " + " | ".join(second) + " |",
                  "|---|" + "---:|" * len(second)]
        for a in first:
            row = []
            for b in second:
                g = cells.get((a, b))
                stability = "" if g is None or g.stability is None else f" (J = {g.stability:.2f}" + (
                    "" if g.stability_chance is None else f", chance {g.stability_chance:.2f}") + ")"
                row.append("—" if g is None else format_pm(g.score_mean, g.score_std) + stability)
            lines.append(f"| {a} | " + " | ".join(row) + " |")
    return lines


def _counts(items: Sequence[tuple[str, int]], prefix: str) -> str:
    return ", ".join(f"{name.removeprefix(prefix)} ({count})" for name, count in items) or "none"


def stand_ins(groups: Sequence[GroupSummary]) -> list[str]:
    """One row per (method, label) of a planted task: the planted modules the selections missed and the modules they
    took instead, with how many seeds each; [] when no group recorded recovery."""
    judged = [g for g in groups if g.stand_ins is not None]
    if not judged:
        return []
    names = [name for g in judged for name, _ in (*g.stand_ins.missed, *g.stand_ins.extra)]
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[:prefix.rfind(".") + 1]  # cut at a dot: "bert.encoder.layer.", never half a name
    rows = [[g.method, _variant(g.label), str(g.stand_ins.n), _counts(g.stand_ins.missed, prefix),
             _counts(g.stand_ins.extra, prefix)] for g in judged]
    caption = (f"Misses and stand-ins: planted modules left out of the selection, and modules selected instead "
               f"(in brackets, the number of seeds{'; names without ' + repr(prefix) if prefix else ''})")
    return ["", caption, "", *_table(["method", "variant", "n seeds", "missed", "selected instead"], rows,
                                     text_columns=5)]


def recovery_by_criterion(groups: Sequence[GroupSummary]) -> list[str]:
    """One row per (method, label, criterion) of the runs' ``recovery.by_criterion``; [] when none has any."""
    rows = [[g.method, _variant(g.label), name, str(r.n), format_pm(*r.precision), format_pm(*r.auc),
             "—" if r.chance is None else f"{r.chance:.3f}"]
            for g in groups for name, r in sorted(g.recovery_by_criterion.items())]
    if not rows:
        return []
    caption = ("Recovery by criterion (precision = |selected ∩ S| / |S|, AUC of the module scores against S, "
               "chance = |S| / N; mean ± std over seeds)")
    header = ["method", "variant", "criterion", "n seeds", "precision", "AUC", "chance"]
    return ["", caption, "", *_table(header, rows, text_columns=3)]


def paired_section(task: str, main: str, paired: PairedReport) -> list[str]:
    """The task's paired differences against ``paired.reference``, or the note saying why there are none."""
    what = main if paired.quantity == "score" else paired.quantity
    title = "Paired differences" + ("" if paired.quantity == "score" else f" in {paired.quantity}")
    if task in paired.notes:
        return ["", f"{title} vs {paired.reference}: skipped ({paired.notes[task]})."]
    comparisons = [c for c in paired.comparisons if c.task == task]
    if not comparisons:
        return []
    ref = paired.reference + (f" ({comparisons[0].reference_label})" if comparisons[0].reference_label else "")
    caption = (f"{title} vs {ref}: d = row's {what} − {paired.reference}'s {what}, seed by seed over "
               "the seeds both ran; 95% CI: Student t-interval of mean d; p two-sided: paired t-test and exact "
               "sign-flip permutation test (with n pairs the smallest sign-flip p is 2/2^n)")
    rows = [[c.method, _variant(c.label), str(c.test.n), _signed(c.test.mean),
             "—" if c.test.std is None else f"{c.test.std:.3f}",
             "—" if c.test.ci is None else f"[{_signed(c.test.ci[0])}, {_signed(c.test.ci[1])}]",
             format_p(c.test.t_pvalue), format_p(c.test.perm_pvalue)] for c in comparisons]
    header = ["method", "variant", "n pairs", "mean d", "std d", "95% CI", "t-test p", "sign-flip p"]
    return ["", caption, "", *_table(header, rows)]


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return value


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in header} for row in rows)
    return path


def _union(dicts: Iterable[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    return keys


def _recovery_columns(g: GroupSummary) -> dict[str, Any]:
    r = g.recovery
    if r is None:
        return {}
    return {"recovery_n": r.n, "recovery_precision_mean": r.precision[0], "recovery_precision_std": r.precision[1],
            "recovery_auc_mean": r.auc[0], "recovery_auc_std": r.auc[1], "recovery_chance": r.chance}


def _paired_row(c: PairedComparison, mains: dict[tuple[str, str, str], str | None]) -> dict[str, Any]:
    t = c.test
    return {"task": c.task, "method": c.method, "label": c.label, "reference": c.reference,
            "reference_label": c.reference_label, "main_metric": mains.get((c.task, c.method, c.label)), "n": t.n,
            "seeds": c.seeds, "mean_diff": t.mean, "std_diff": t.std, "ci_low": t.ci[0] if t.ci else None,
            "ci_high": t.ci[1] if t.ci else None, "t_pvalue": t.t_pvalue, "perm_pvalue": t.perm_pvalue}


PAIRED_HEADER = ["task", "method", "label", "reference", "reference_label", "main_metric", "n", "seeds", "mean_diff",
                 "std_diff", "ci_low", "ci_high", "t_pvalue", "perm_pvalue"]
RECOVERY_HEADER = ["recovery_n", "recovery_precision_mean", "recovery_precision_std", "recovery_auc_mean",
                   "recovery_auc_std", "recovery_chance"]


def write_tables(summaries: Sequence[GroupSummary], runs: Sequence[RunRecord], out_dir: str | Path,
                 paired: PairedReport | None = None, recovery: PairedReport | None = None) -> dict[str, Path]:
    """runs.csv (finished runs), summary.csv and summary.md into ``out_dir``, and paired.csv given ``paired``
    (one row per comparison, d = row − reference; then ``recovery``'s rows, whose main_metric is
    ``recovery precision``); returns their paths. summary.csv has the recovery columns only when some run recorded
    recovery."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = [r for r in runs if r.status == "finished"]
    names, keys = _union(r.metrics for r in done), _union(r.variant for r in done)
    run_rows = [{"task": r.task, "method": r.method, "label": r.label, "seed": r.seed, "score": r.score,
                 "main_metric": r.main_metric, **{f"metric/{k}": v for k, v in r.metrics.items()},
                 "trainable_params": r.trainable_params, "effective_params": r.effective_params,
                 "total_wall_s": r.total_wall_s, "search_wall_s": r.search_wall_s, "train_wall_s": r.train_wall_s,
                 "num_selected": r.num_selected, **{f"variant/{k}": v for k, v in r.variant.items()},
                 "run_dir": r.rel_dir} for r in done]
    run_header = ["task", "method", "label", "seed", "score", "main_metric", *(f"metric/{k}" for k in names),
                  "trainable_params", "effective_params", "total_wall_s", "search_wall_s", "train_wall_s",
                  "num_selected", *(f"variant/{k}" for k in keys), "run_dir"]
    names, keys = _union(g.metrics for g in summaries), _union(g.variant for g in summaries)
    summary_rows = []
    for g in summaries:
        row = {"task": g.task, "method": g.method, "label": g.label, "n": g.n, "seeds": g.seeds,
               "main_metric": g.main_metric, "score_mean": g.score_mean, "score_std": g.score_std,
               "majority_baseline": g.baseline, "trainable_params": _round(g.trainable_params),
               "effective_params": _round(g.effective_params), "wall_s_median": g.wall_s,
               "selection_stability": g.stability, "jaccard_chance": g.stability_chance, **_recovery_columns(g),
               "failed": g.failed, "unfinished": g.unfinished, **{f"variant/{k}": v for k, v in g.variant.items()}}
        for name, (mean, std) in g.metrics.items():
            row |= {f"metric/{name}/mean": mean, f"metric/{name}/std": std}
        summary_rows.append(row)
    summary_header = ["task", "method", "label", "n", "seeds", "main_metric", "score_mean", "score_std",
                      *(f"metric/{k}/{stat}" for k in names for stat in ("mean", "std")), "majority_baseline",
                      "trainable_params", "effective_params", "wall_s_median", "selection_stability",
                      "jaccard_chance", *(RECOVERY_HEADER if any(g.recovery for g in summaries) else []), "failed",
                      "unfinished", *(f"variant/{k}" for k in keys)]
    (out / "summary.md").write_text(to_markdown(summaries, paired, recovery))
    paths = {"runs_csv": _write_csv(out / "runs.csv", run_header, run_rows),
             "summary_csv": _write_csv(out / "summary.csv", summary_header, summary_rows),
             "summary_md": out / "summary.md"}
    if paired is not None:
        mains = {(g.task, g.method, g.label): g.main_metric for g in summaries}
        rows = [_paired_row(c, mains) for c in paired.comparisons]
        if recovery is not None:
            rows += [_paired_row(c, {}) | {"main_metric": recovery.quantity} for c in recovery.comparisons]
        paths["paired_csv"] = _write_csv(out / "paired.csv", PAIRED_HEADER, rows)
    return paths


def plot_summary(summaries: Sequence[GroupSummary], path: str | Path) -> Path:
    """One subplot per task: a bar (± std) per group with n ≥ 1, the majority baseline dashed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [(task, [g for g in groups if g.score_mean is not None]) for task, groups in _by_task(summaries)]
    panels = [(task, groups) for task, groups in panels if groups]
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center")
        ax.axis("off")
    else:
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        width = max(4.0, 1.4 * max(len(groups) for _, groups in panels) + 1.5)
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.5 * nrows), squeeze=False)
        methods = sorted({g.method for _, groups in panels for g in groups})
        colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
        for ax, (task, groups) in zip(axes.flat, panels, strict=False):
            _draw_task(ax, task, groups, colors)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_task(ax: Any, task: str, groups: list[GroupSummary], colors: dict[str, Any]) -> None:
    main, baseline = _task_main(groups)
    x = np.arange(len(groups))
    means = np.array([g.score_mean for g in groups], dtype=float)
    errors = np.array([g.score_std or 0.0 for g in groups])
    center, half = (len(groups) - 1) / 2, max(len(groups), 3) / 2
    ax.set_xlim(center - half, center + half)
    ax.bar(x, means, width=0.6, yerr=errors, capsize=4, color=[colors[g.method] for g in groups], edgecolor="black",
           linewidth=0.6)
    for xi, mean, error, g in zip(x, means, errors, groups, strict=True):
        ax.text(xi, mean + error, f"n={g.n}", ha="center", va="bottom", fontsize=7)
    values = [*(means - errors), *(means + errors)] + ([] if baseline is None else [baseline])
    low, high = min(values), max(values)
    pad = 0.15 * (high - low) or 0.05
    ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="gray", label=f"majority baseline ({baseline:.3f})")
        ax.legend(fontsize=7, loc="best")
    rotate = len(groups) > 4
    labels = [g.method + (f"\n{g.label}" if g.label else "") for g in groups]
    if not rotate:
        labels = [label.replace(", ", "\n") for label in labels]
    ax.set_xticks(x, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=7)
    ax.set_ylabel(main)
    ax.set_title(task)




def plot_curve(summaries: Sequence[GroupSummary], within: Sequence[str], path: str | Path) -> Path:
    """One subplot per task: the dev metric against adapter parameters (effective, else trainable; the mean over
    seeds), one line per (method, label without the ``within`` keys) through its sizes, with the 95% t-interval of
    the mean, x̄ ± t₍ₙ₋₁, 0.975₎·s/√n, as a band (none below two seeds)."""
    from scipy import stats

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [(task, [g for g in groups if g.score_mean is not None]) for task, groups in _by_task(summaries)]
    panels = [(task, groups) for task, groups in panels if groups] or [("no finished runs", [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (task, groups) in zip(axes.flat, panels, strict=True):
        series: dict[str, list[GroupSummary]] = defaultdict(list)
        for g in groups:
            rest = ", ".join(f"{k}={v}" for k, v in g.variant.items() if k not in within)
            series[f"{g.method} {rest}".strip()].append(g)
        for name, members in sorted(series.items()):
            points = sorted((g.effective_params or g.trainable_params or 0.0, g.score_mean, g.score_std, g.n)
                            for g in members)
            x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)
            half = np.array([stats.t.ppf(0.975, n - 1) * s / math.sqrt(n) if n > 1 and s is not None else 0.0
                             for _, _, s, n in points])
            ax.plot(x, y, marker="o", label=name)
            ax.fill_between(x, y - half, y + half, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("adapter parameters")
        ax.set_ylabel(_task_main(groups)[0] if groups else "")
        ax.set_title(task)
        if series:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
