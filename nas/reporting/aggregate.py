"""Turn a sweep folder (Hydra multirun, possibly nested) into runs.csv, summary.csv/.md and summary.png.

A row of the summary is one (task, method, variant label): the runs of one config, whose seeds are the replicates.
The label names the config keys whose value differs among the runs of the same (task, method), ``key=value`` sorted by
key (``bilevel.dropout=0.1, relaxation=softmax``; see :func:`_varying`). From a notebook::

    from nas.reporting.aggregate import load_runs, paired_differences, summarize, to_markdown
    runs = load_runs("logs/multiruns/2025-01-01_12-00-00")
    print(to_markdown(summarize(runs), paired_differences(runs, reference="random")))

Each module imports only downward: the data model (nas/reporting/run_records.py: a run as read from its folder;
nas/reporting/summaries.py: a row of the summary), the formulas (nas/reporting/statistics.py: paired tests,
t-interval, sign-flip p, Jaccard chance), the renderers (nas/reporting/aggregate_report.py: tables and the figure),
and this summarizer on top: grouping, pairing and :func:`aggregate`, which runs them in order.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.engine.identity import is_volatile
from nas.errors import ConfigError
from nas.reporting.aggregate_report import plot_curve, plot_summary, to_markdown, write_tables
from nas.reporting.run_records import (  # noqa: F401 (AggregateWarning, Recovery, RunRecord: public here too)
    FULL_CONFIG_SOURCES,
    MISSING,
    AggregateWarning,
    Recovery,
    RunRecord,
    find_run_dirs,
    load_run,
)
from nas.reporting.statistics import (
    PairedComparison,
    PairedReport,
    jaccard,
    mean_pairwise_jaccard,
    mean_pairwise_jaccard_chance,
    mean_std,
    median,
    paired_comparisons,
)
from nas.reporting.summaries import GroupSummary, RecoverySummary, StandIns

DEFAULT_REFERENCE = "random"


# ---------------------------------------------------------------- reading


def load_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run folder under ``sweep_dir`` (nested sweeps too), finished or not, with its variant label; a warning
    names the finished runs without a config file, grouped by metrics.json's variant instead (:func:`_varying`)."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"sweep folder {root} does not exist: expected the hydra.sweep.dir of a multirun "
                          "(or a folder holding several)")
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise ConfigError(f"no runs found under {root}: expected run folders holding metrics.json, FAILED "
                          "or .hydra/ (is this the hydra.sweep.dir of a multirun?)")
    records = [load_run(run_dir, root) for run_dir in run_dirs]
    without = [r.rel_dir for r in records if r.status == "finished" and r.config_source not in FULL_CONFIG_SOURCES]
    if without:
        warnings.warn(f"{len(without)} finished run(s) without fingerprint.json or .hydra/config.yaml (e.g. "
                      f"{without[0]}): grouped by metrics.json's variant, which omits settings such as "
                      "bilevel.dropout, so runs differing only there share a row; keep each run folder's "
                      "fingerprint.json or .hydra/ to group by the full config", AggregateWarning, stacklevel=2)
    for record, label in zip(records, variant_labels(records), strict=True):
        record.label = label
    return sorted(records, key=lambda r: (r.task, r.method, r.label, r.seed if isinstance(r.seed, int) else -1,
                                          r.rel_dir))


# ---------------------------------------------------------------- grouping and statistics

SEED_KEY = "seed"
NO_CONFIG_KEY = "config"  # label key of runs compared by metrics.json's variant beside runs with a config
_ABSENT = object()


def _format_value(value: Any) -> str:
    """A config value as a label shows it: booleans in lower case, floats in the shortest form that reads back as the
    same number (``3``, ``0.1``, ``1e-05``), lists and mappings as compact JSON (without ``", "``, the label's
    separator), anything else as ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _label_key(key: str) -> str:
    """A config key as a label names it: a config group's ``<group>.name`` as ``<group>`` (``relaxation.name`` →
    ``relaxation``, ``criterion.name`` → ``criterion``), any other key by its dotted path (``bilevel.dropout``)."""
    return key.removesuffix(".name")


def _seed_template(value: Any, seed: Any) -> str | None:
    """The value as a label shows it with the run's seed written ``{seed}`` (the whole value where it equals the seed,
    each occurrence of the seed's digits in a text, not inside a longer number); None for an absent value."""
    if value is _ABSENT:
        return None
    text = _format_value(value)
    if not isinstance(seed, int) or isinstance(seed, bool):
        return text
    return re.sub(rf"(?<![\d.]){re.escape(str(seed))}(?![\d.])", "{seed}", text)


def _follows_seed(values: Sequence[Any], seeds: Sequence[Any]) -> bool:
    """Does a key vary with the seed alone, as a config value interpolating ``${seed}`` does? True when every run has
    it and all read alike once each run's seed is written as ``{seed}`` (:func:`_seed_template`): 7 at seed 7 and 9
    at seed 9, ``s7``/``s9``. A setting that merely changes along with the seed (rank 4 at seed 0, rank 8 at seed 1)
    does not follow it."""
    templates = {_seed_template(value, seed) for value, seed in zip(values, seeds, strict=True)}
    return None not in templates and len(templates) == 1


def _shown(run: RunRecord, key: str) -> str:
    return _format_value(run.config[key]) if key in run.config else MISSING


def _set_by_option(key: str, varying: Sequence[str], members: Sequence[RunRecord]) -> bool:
    """Is ``key`` a setting of a config group whose option is in the label (``relaxation.tau_max`` beside a varying
    ``relaxation.name``) that is the same for all runs of each option (absent from the others)? Then the option says
    it, and the label leaves it out."""
    parts = key.split(".")
    for cut in range(1, len(parts)):
        option = ".".join(parts[:cut]) + ".name"
        if option != key and option in varying:
            values: dict[str, set[str]] = defaultdict(set)
            for run in members:
                values[_shown(run, option)].add(_shown(run, key))
            if all(len(found) == 1 for found in values.values()):
                return True
    return False


def _differing_keys(members: Sequence[RunRecord], full: bool) -> list[str]:
    """The config keys of the label of these runs (one (task, method)), sorted by label key: those whose value, as the
    label shows it, differs among them; absent counts as a value (MISSING) where the runs have full configs (``full``)
    and not in metrics.json's variant (whose keys were added over time). Never ``seed``, a volatile key
    (nas.engine.identity.is_volatile), one that follows the seed (:func:`_follows_seed`) or one that a group's option
    in the label says (:func:`_set_by_option`)."""
    seeds = [r.seed for r in members]
    keys = sorted({k for r in members for k in r.config if k != SEED_KEY and not is_volatile(k)}, key=_label_key)
    varying = []
    for key in keys:
        values = [r.config.get(key, _ABSENT) for r in members]
        shown = {_shown(r, key) for r in members if full or key in r.config}
        if len(shown) > 1 and not _follows_seed(values, seeds):
            varying.append(key)
    return [key for key in varying if not _set_by_option(key, varying, members)]


def _varying(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Per run, ``{label key: value}`` (:func:`_label_key`) of the config keys whose value differs among the runs of
    its (task, method) (:func:`_differing_keys`); MISSING where the run lacks a key others have.

    Runs share a label exactly when their configs (RunRecord.config) agree on every key but ``seed``, the volatile
    ones and those following the seed: their seeds are replicates, finished or not. Runs without a config file,
    compared by metrics.json's ``variant`` (another vocabulary), are compared among themselves; where their (task,
    method) also has runs with a config, their label starts with ``config=none``."""
    parts: dict[tuple[str, str, bool], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        parts[(run.task, run.method, run.config_source in FULL_CONFIG_SOURCES)].append(i)
    result: list[dict[str, Any]] = [{} for _ in runs]
    for (task, method, full), indices in parts.items():
        members = [runs[i] for i in indices]
        varying = _differing_keys(members, full)
        marked = {NO_CONFIG_KEY: "none"} if not full and (task, method, True) in parts else {}
        for i, run in zip(indices, members, strict=True):
            result[i] = marked | {_label_key(k): run.config.get(k, MISSING) for k in varying}
    return result


def _label(variant: dict[str, Any]) -> str:
    """``key=value`` of :func:`_varying`'s entries, joined by ", "."""
    return ", ".join(f"{key}={_format_value(value)}" for key, value in variant.items())


def variant_labels(runs: Sequence[RunRecord]) -> list[str]:
    """The label of each run: ``key=value`` of the config keys that vary within its (task, method); see
    :func:`_varying`."""
    return [_label(variant) for variant in _varying(runs)]


def _groups(runs: Sequence[RunRecord]) -> dict[tuple[str, str, str], list[int]]:
    """Indices of the runs of each (task, method, label), sorted by key; labels recomputed from ``runs``."""
    varying = _varying(runs)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        groups[(run.task, run.method, _label(varying[i]))].append(i)
    return dict(sorted(groups.items()))


def _stability_chance(done: Sequence[RunRecord]) -> float | None:
    """Chance level of the stability: None below two selections or when their num_candidates are unknown/differ."""
    with_selection = [r for r in done if r.selected is not None]
    spaces = {r.num_candidates for r in with_selection}
    if len(with_selection) < 2 or len(spaces) != 1 or None in spaces:
        return None
    try:
        return mean_pairwise_jaccard_chance([len(set(r.selected or [])) for r in with_selection], int(spaces.pop()))
    except ValueError as error:  # a selection larger than its space: inconsistent files, no chance level
        warnings.warn(f"{with_selection[0].task} {with_selection[0].method}: {error}", AggregateWarning, stacklevel=3)
        return None


def _recovery(values: Sequence[tuple[float, float | None, float | None]]) -> RecoverySummary | None:
    """(precision, auc, chance) of each seed → RecoverySummary; None without any."""
    if not values:
        return None
    return RecoverySummary(n=len(values), precision=mean_std(v[0] for v in values),
                           auc=mean_std(v[1] for v in values), chance=mean_std(v[2] for v in values)[0])


def _recovery_by_criterion(done: Sequence[RunRecord]) -> dict[str, RecoverySummary]:
    values: dict[str, list[tuple[float, float | None, float | None]]] = defaultdict(list)
    for r in done:
        for name, (precision, auc) in (r.recovery.by_criterion.items() if r.recovery else ()):
            values[name].append((precision, auc, r.recovery.chance if r.recovery else None))
    return {name: summary for name, v in values.items() if (summary := _recovery(v)) is not None}


def _most_common(counts: Counter[str]) -> list[tuple[str, int]]:
    """(name, count), most frequent first, ties by name (stable across runs)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _stand_ins(done: Sequence[RunRecord]) -> StandIns | None:
    """Counts of missed planted modules and of the modules selected instead, over the seeds with both a recovery and
    a selection (derived here from metrics.json's planted set and selection.json); None without any."""
    judged = [r for r in done if r.recovery is not None and r.selected is not None]
    if not judged:
        return None
    missed: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    for r in judged:
        truth, chosen = set(r.recovery.planted), set(r.selected)
        missed.update(truth - chosen)
        extra.update(chosen - truth)
    return StandIns(len(judged), _most_common(missed), _most_common(extra))


def summarize(runs: Sequence[RunRecord]) -> list[GroupSummary]:
    """One GroupSummary per (task, method, label), sorted; labels are recomputed from ``runs`` as given."""
    varying = _varying(runs)
    summaries = []
    for (task, method, label), indices in _groups(runs).items():
        members = [runs[i] for i in indices]
        done = [r for r in members if r.status == "finished"]
        mains = Counter(r.main_metric for r in done if r.main_metric)
        main = mains.most_common(1)[0][0] if mains else None
        names: list[str] = []
        for r in done:
            names.extend(k for k in r.metrics if k not in names)
        score_mean, score_std = mean_std(r.score for r in done)
        summaries.append(GroupSummary(
            task=task, method=method, label=label, variant=varying[indices[0]], n=len(done),
            seeds=[r.seed for r in done if r.seed is not None], main_metric=main,
            score_mean=score_mean, score_std=score_std,
            metrics={name: mean_std(r.metrics.get(name) for r in done) for name in names},
            baseline=mean_std(r.majority_baseline.get(main) for r in done)[0] if main else None,
            trainable_params=mean_std(r.trainable_params for r in done)[0],
            effective_params=mean_std(r.effective_params for r in done)[0],
            wall_s=median(r.total_wall_s for r in done),
            stability=mean_pairwise_jaccard([r.selected for r in done if r.selected is not None]),
            failed=sum(r.status == "failed" for r in members),
            unfinished=sum(r.status == "unfinished" for r in members),
            not_finished=[f"{r.rel_dir}: {r.status}" + (f" ({r.error})" if r.error else "")
                          for r in members if r.status != "finished"],
            stability_chance=_stability_chance(done),
            recovery=_recovery([(r.recovery.precision, r.recovery.auc, r.recovery.chance)
                                for r in done if r.recovery is not None]),
            recovery_by_criterion=_recovery_by_criterion(done), stand_ins=_stand_ins(done)))
    return summaries


PAIRED_QUANTITIES = {"score": lambda r: r.score,
                     "recovery precision": lambda r: r.recovery.precision if r.recovery is not None else None}


def _scores_by_seed(runs: Sequence[RunRecord], where: str, quantity: str = "score") -> dict[Any, float]:
    """Seed → ``quantity`` (PAIRED_QUANTITIES) of the finished runs with a seed and that quantity; a seed run twice is
    averaged (with a warning)."""
    value = PAIRED_QUANTITIES[quantity]
    scores: dict[Any, list[float]] = defaultdict(list)
    for r in runs:
        x = value(r) if r.status == "finished" and r.seed is not None else None
        if x is not None:
            scores[r.seed].append(float(x))
    for seed, values in scores.items():
        if len(values) > 1:
            warnings.warn(f"{where}: seed {seed} has {len(values)} finished runs; their mean score is paired",
                          AggregateWarning, stacklevel=3)
    return {seed: float(np.mean(values)) for seed, values in scores.items()}


def paired_differences(runs: Sequence[RunRecord], reference: str = DEFAULT_REFERENCE,
                       reference_label: str | None = None, quantity: str = "score",
                       within: Sequence[str] = ()) -> PairedReport:
    """Per task, every (method, label) row against the ``reference`` method's row, seed by seed (runs sharing a
    seed share data order and split): ``nas.reporting.statistics.paired_comparisons`` on the finished runs' scores,
    or with ``quantity="recovery precision"`` on the planted runs' recovery precision (rows without recovery have no
    values and are left out).

    Differences are rounded to the quantity's resolution where it is known (:func:`_resolutions`): 1/|S| for the
    recovery precision, 1/|dev| for an accuracy; else to 12 decimals. ``within`` (label keys): each row against the
    reference row with the same values of those keys (``discretizer.rho``: each budget against random at that budget;
    nas.reporting.statistics.paired_comparisons)."""
    if quantity not in PAIRED_QUANTITIES:
        raise ValueError(f"quantity={quantity!r} is unknown; choose one of: {', '.join(PAIRED_QUANTITIES)}")
    groups = _groups(runs)
    rows = {key: _scores_by_seed([runs[i] for i in indices], " ".join(key).rstrip(), quantity)
            for key, indices in groups.items()}
    varying = _varying(runs)
    variants = {key: varying[indices[0]] for key, indices in groups.items()}
    return paired_comparisons({key: scores for key, scores in rows.items() if scores}, reference, reference_label,
                              quantity, _resolutions(runs, groups, quantity), within, variants)


def _resolution_count(run: RunRecord, quantity: str) -> int | None:
    """m such that the run's ``quantity`` is a multiple of 1/m: |S| for the recovery precision (|top-|S| ∩ S|/|S|;
    a method without scores, judged by |selected ∩ S|/|selected|, is off that grid and :func:`_resolutions` sees it),
    the dev-set size for an accuracy (correct/|dev|); None where unknown."""
    if quantity == "recovery precision":
        return len(run.recovery.planted) if run.recovery is not None and run.recovery.planted else None
    return run.dev_examples if run.main_metric == "accuracy" and run.dev_examples else None


def _resolutions(runs: Sequence[RunRecord], groups: dict[tuple[str, str, str], list[int]],
                 quantity: str) -> dict[str, float]:
    """Task → resolution 1/m of ``quantity``, for the tasks whose finished runs all share one m
    (:func:`_resolution_count`), ran each seed once in each row (a mean of two runs is not a multiple of 1/m) and
    recorded multiples of 1/m; other tasks are left out (rounded to 12 decimals)."""
    value = PAIRED_QUANTITIES[quantity]
    counts: dict[str, set[int | None]] = defaultdict(set)
    for (task, _, _), indices in groups.items():
        done = [runs[i] for i in indices if runs[i].status == "finished" and runs[i].seed is not None
                and value(runs[i]) is not None]
        for run in done:
            m = _resolution_count(run, quantity)
            on_grid = m is not None and abs(value(run) * m - round(value(run) * m)) < 1e-6
            counts[task].add(m if on_grid else None)
        if len({run.seed for run in done}) < len(done):
            counts[task].add(None)
    return {task: 1 / m for task, found in counts.items() if len(found) == 1 and (m := next(iter(found)))}


__all__ = ["AggregateWarning", "GroupSummary", "PairedComparison", "PairedReport", "Recovery", "RecoverySummary",
           "RunRecord", "aggregate", "find_run_dirs", "jaccard", "load_runs", "mean_pairwise_jaccard", "mean_std",
           "paired_differences", "plot_summary", "summarize", "to_markdown", "variant_labels", "write_tables"]


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None, *, reference: str = DEFAULT_REFERENCE,
              reference_label: str | None = None, within: Sequence[str] = ()) -> dict[str, Path]:
    """load_runs → summarize and paired_differences (of the scores and, where runs recorded recovery, of the recovery
    precision) → tables and plot in ``out_dir`` (default ``<sweep_dir>/aggregate``): runs.csv, summary.csv,
    summary.md, paired.csv and summary.png; with ``within`` (a budget curve's size key), each row is paired with the
    reference at the same size, and curve.png draws the dev metric against adapter parameters with t-CI bands."""
    runs = load_runs(sweep_dir)
    summaries = summarize(runs)
    paired = paired_differences(runs, reference, reference_label, within=within)
    recovery = paired_differences(runs, reference, reference_label, "recovery precision", within=within)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir).expanduser() / "aggregate"
    paths = write_tables(summaries, runs, out, paired, recovery)
    paths["summary_png"] = plot_summary(summaries, out / "summary.png")
    if within:
        paths["curve_png"] = plot_curve(summaries, within, out / "curve.png")
    return paths
