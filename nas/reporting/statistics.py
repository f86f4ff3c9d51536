"""Pure statistics of a sweep: paired comparisons of seeds (a t-interval, a t-test and an exact sign-flip test),
and the chance level of a Jaccard index.

Nothing here reads files: nas.reporting.aggregate collects each row's scores by seed and its selections and calls these.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from nas.errors import ConfigError

EXACT_MAX_PAIRS = 16  # up to 2^16 sign patterns are enumerated; above, PERMUTATION_DRAWS random ones are drawn
PERMUTATION_DRAWS = 200_000
PERMUTATION_SEED = 0
DEFAULT_DECIMALS = 12  # without a resolution, differences are rounded to 1e-12 (float noise only)


@dataclass(frozen=True)
class PairedTest:
    """Differences d_i = x_i − y_i of n pairs (rounded to the metric's resolution, see ``paired_test``): their mean,
    sample std, a Student t-interval of the mean (``ci``), and two two-sided p-values.

    ``std`` and ``ci`` are None below two pairs; ``t_pvalue`` (paired t-test) None where t is undefined (n < 2 or
    every d_i = 0); ``perm_pvalue`` (sign-flip permutation test) None only for n = 0, and 1.0 when every d_i = 0.
    """

    n: int
    mean: float | None
    std: float | None
    t_pvalue: float | None
    perm_pvalue: float | None
    ci: tuple[float, float] | None


@dataclass
class PairedComparison:
    """A row (task, method, label) against the reference row of its task on the ``seeds`` both ran."""

    task: str
    method: str
    label: str
    reference: str
    reference_label: str
    seeds: list[Hashable]
    test: PairedTest


@dataclass
class PairedReport:
    """Every comparison against the ``reference`` method and, per task skipped, why (``notes``). ``quantity`` names
    what was paired: ``score`` (each run's main metric) or ``recovery precision`` (planted tasks)."""

    reference: str
    comparisons: list[PairedComparison] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    quantity: str = "score"


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the values given; (None, None) when empty, std None for one value."""
    array = np.array([v for v in values if v is not None], dtype=float)
    if array.size == 0:
        return None, None
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else None


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values given (None skipped); None when empty."""
    kept = [float(v) for v in values if v is not None]
    return statistics.median(kept) if kept else None


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """J(A, B) = |A∩B| / |A∪B|; two empty sets count as identical (1.0)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_pairwise_jaccard(sets: Sequence[Iterable[str]]) -> float | None:
    """Mean of J(A_i, A_j) over all pairs i < j; None with fewer than two sets."""
    sets = [set(s) for s in sets]
    if len(sets) < 2:
        return None
    return float(np.mean([jaccard(a, b) for a, b in combinations(sets, 2)]))


def to_units(values: Sequence[float], resolution: float | None = None) -> tuple[np.ndarray, float]:
    """The values as integers k_i in units of u, with value_i ≈ k_i · u: u = ``resolution`` (k_i = round(v_i / u)),
    or u = 1e-12 without one (rounding to 12 decimals). Returns (k as int64, u); sums of k are exact.

    Pass the metric's resolution where it is known (1/|S| for a planted recovery precision, 1/|dev| for an accuracy),
    so that float noise such as 2/9 − 1/9 ≠ 1/9 cannot change a comparison.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ValueError(f"to_units needs a flat sequence of finite numbers, got {values!r}")
    if resolution is None:
        unit = 10.0 ** -DEFAULT_DECIMALS
    elif math.isfinite(resolution) and resolution > 0:
        unit = float(resolution)
    else:
        raise ValueError(f"resolution must be a positive number, got {resolution!r}: pass the metric's step "
                         "(e.g. resolution=1/9 for precision@9) or None to round to 12 decimals")
    scaled = np.rint(data / unit)
    if np.abs(scaled).sum() >= 2.0 ** 52:  # beyond exact float integers, and near int64's range in sums
        raise ValueError(f"{values!r} is too large for units of {unit:g}: pass a coarser resolution=")
    return scaled.astype(np.int64), unit


def t_interval(values: Sequence[float], *, confidence: float = 0.95,
               resolution: float | None = None) -> tuple[float, float] | None:
    """Student t-interval of the mean of ``values`` (after ``to_units``); None below two values.

    d̄ ± t_{n−1, 1−α/2} · s / √n, with α = 1 − ``confidence`` and s the sample std (ddof = 1). Exact for normal d
    at any n ≥ 2 (the percentile bootstrap covered a 95% target only about 74–90% of the time at n = 3–10, see
    tests/test_statistics.py); a constant d gives exactly [d, d].
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}: pass e.g. confidence=0.95")
    units, unit = to_units(values, resolution)
    if units.size < 2:
        return None
    mean, std = _mean_std_units(units)
    half = float(stats.t.ppf(0.5 + confidence / 2, units.size - 1)) * std / math.sqrt(units.size)
    return (_from_units(mean - half, unit), _from_units(mean + half, unit))


def sign_flip_pvalue(values: Sequence[float], *, resolution: float | None = None, draws: int = PERMUTATION_DRAWS,
                     seed: int = PERMUTATION_SEED) -> float | None:
    """Two-sided sign-flip permutation p of H0 "each d_i is as likely −|d_i| as +|d_i|"; None for no values.

    With the d_i as integers k_i (``to_units``) and T = |Σ k_i|:
    p = #{ε ∈ {−1, +1}ⁿ : |Σ ε_i |k_i|| ≥ T} / 2ⁿ, enumerated exactly for n ≤ EXACT_MAX_PAIRS (16).
    Integer sums make the comparison exact, so float noise cannot move p. Zeros are kept (they add 0 under either
    sign); every d_i = 0 gives p = 1. The smallest p is 2/2ⁿ: 0.25 at n = 3, 0.0625 at n = 5.
    For n > 16: a Monte-Carlo estimate from ``draws`` uniform sign patterns of ``numpy.random.default_rng(seed)``,
    p = (1 + #{|Σ ε_i |k_i|| ≥ T}) / (1 + draws), which counts the observed pattern and so is never 0.
    """
    units, _ = to_units(values, resolution)
    if units.size == 0:
        return None
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}: pass e.g. draws={PERMUTATION_DRAWS}")
    observed, magnitudes = abs(int(units.sum())), np.abs(units)
    if units.size <= EXACT_MAX_PAIRS:
        sums = np.zeros(1, dtype=np.int64)
        for k in magnitudes:  # the 2^i signed sums of the first i magnitudes
            sums = np.concatenate([sums + k, sums - k])
        return float(np.count_nonzero(np.abs(sums) >= observed) / sums.size)
    rng, hits, left = np.random.default_rng(seed), 0, draws
    while left > 0:
        chunk = min(left, 20_000)
        signs = rng.integers(0, 2, size=(chunk, units.size), dtype=np.int64) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ magnitudes) >= observed))
        left -= chunk
    return (1 + hits) / (1 + draws)


def _from_units(value: float, unit: float) -> float:
    """value · u, as value / m where u = 1/m for an integer m (1e-12, 1/9, 1/408): then k/m is correctly rounded."""
    inverse = round(1 / unit)
    return value / inverse if inverse > 1 and math.isclose(1 / unit, inverse, rel_tol=1e-12) else value * unit


def _mean_std_units(units: np.ndarray) -> tuple[float, float]:
    """Mean and sample std of integers: the mean as Σk / n (a constant k gives k exactly, std exactly 0)."""
    mean = float(units.sum()) / units.size
    return mean, float(np.sqrt(np.sum((units - mean) ** 2) / (units.size - 1)))


def paired_test(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95, resolution: float | None = None,
                draws: int = PERMUTATION_DRAWS, seed: int = PERMUTATION_SEED) -> PairedTest:
    """Compare paired samples x_i and y_i (same seed, same data) through d_i = x_i − y_i.

    First d_i is rounded to the metric's resolution r: d_i = round(d_i / r) · r (``to_units``; r = 1e-12 without
    one). Then mean d̄ = Σ d_i / n; std s = sqrt(Σ (d_i − d̄)² / (n − 1));
    paired t-test: t = d̄ / (s / √n) with n − 1 degrees of freedom, two-sided (s = 0 with d̄ ≠ 0 gives p = 0);
    exact sign-flip permutation p (``sign_flip_pvalue``; Monte-Carlo above 16 pairs, seeded by ``seed``);
    CI: the t-interval d̄ ± t_{n−1, 1−α/2} · s / √n (``t_interval``).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two flat sequences of the same length, got {a.shape} and {b.shape}: "
                         "pair the values (same seed) before calling it")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}: pass e.g. confidence=0.95")
    d = a - b
    units, unit = to_units(d, resolution)
    n = int(units.size)
    if n == 0:
        return PairedTest(0, None, None, None, None, None)
    perm_p = sign_flip_pvalue(d, resolution=resolution, draws=draws, seed=seed)
    if n == 1:
        return PairedTest(1, _from_units(float(units[0]), unit), None, None, perm_p, None)
    mean, std = _mean_std_units(units)
    t_p = None
    if np.any(units != 0):
        t_p = 0.0 if std == 0 else float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return PairedTest(n, _from_units(mean, unit), _from_units(std, unit), t_p, perm_p,
                      t_interval(d, confidence=confidence, resolution=resolution))


def overlap_pmf(n_items: int, k1: int, k2: int) -> dict[int, Fraction]:
    """P(X = x) for the overlap X = |A ∩ B| of two independent uniform subsets |A| = k1, |B| = k2 of N items.

    X is hypergeometric: P(X = x) = C(k1, x) · C(N − k1, k2 − x) / C(N, k2), for max(0, k1 + k2 − N) ≤ x ≤ min(k1, k2).
    """
    for name, k in (("k1", k1), ("k2", k2)):
        if not 0 <= k <= n_items:
            raise ValueError(f"{name} = {k} is not a subset size of N = {n_items} items: need 0 ≤ {name} ≤ N "
                             "(is num_candidates in selection.json the size of the search space?)")
    total = math.comb(n_items, k2)
    return {x: Fraction(math.comb(k1, x) * math.comb(n_items - k1, k2 - x), total)
            for x in range(max(0, k1 + k2 - n_items), min(k1, k2) + 1)}


def expected_jaccard(n_items: int, k1: int, k2: int | None = None) -> float:
    """Chance level of the Jaccard index: E[J] of two independent uniform subsets of sizes k1, k2 (k2 = k1 if None).

    With X the overlap (``overlap_pmf``), |A ∪ B| = k1 + k2 − X, so E[J] = Σ_x P(X = x) · x / (k1 + k2 − x);
    for k1 = k2 = 0 the two empty sets count as identical, J = 1 (as ``jaccard``).
    Computed exactly in rationals, then rounded to a float.
    """
    k2 = k1 if k2 is None else k2
    if k1 == k2 == 0:
        if n_items < 0:
            raise ValueError(f"N = {n_items} items: N must be at least 0")
        return 1.0
    pmf = overlap_pmf(n_items, k1, k2)
    return float(sum(p * Fraction(x, k1 + k2 - x) for x, p in pmf.items()))


def mean_pairwise_jaccard_chance(sizes: Sequence[int], n_items: int) -> float | None:
    """Chance level of ``mean_pairwise_jaccard`` for selections of these sizes out of N items; None below two.

    The mean over the actual pairs (i < j) of ``expected_jaccard(N, k_i, k_j)``; equal sizes k give E[J](N, k).
    """
    if len(sizes) < 2:
        return None
    cache: dict[tuple[int, int], float] = {}
    values = []
    for k1, k2 in combinations(sizes, 2):
        key = (min(k1, k2), max(k1, k2))
        if key not in cache:
            cache[key] = expected_jaccard(n_items, *key)
        values.append(cache[key])
    return float(np.mean(values))


def _reference_label(task: str, reference: str, labels: Sequence[str], reference_label: str | None) -> str:
    """The reference row of ``task``: the reference method's only row, else the one named ``reference_label``."""
    if len(labels) == 1:
        return labels[0]
    shown = "; ".join(repr(label) for label in labels)
    if reference_label is None:
        raise ConfigError(f"task {task}: the reference method {reference!r} has {len(labels)} variant rows ({shown}),"
                          " so the paired reference is ambiguous: pick one with --reference-label LABEL "
                          "(reference_label= in the Python API)")
    if reference_label not in labels:
        raise ConfigError(f"task {task}: --reference-label {reference_label!r} names no row of {reference!r}; "
                          f"pass one of {shown}")
    return reference_label


def _label_pairs(label: str) -> dict[str, str]:
    """``{"criterion": "random"}`` of the label ``criterion=random`` (pairs joined by ", ")."""
    pairs = [part.split("=", 1) for part in label.split(", ") if part]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"--reference-label {label!r}: expected key=value pairs joined by ', ', "
                          "e.g. criterion=random")
    return dict(pairs)  # type: ignore[arg-type]


def _reference_within(task: str, reference: str, labels: Sequence[str], reference_label: str | None,
                      row: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]], within: Sequence[str]) -> str:
    """The reference method's row of ``task`` that has ``row``'s values of the ``within`` keys and every pair of
    ``reference_label`` (a partial label: ``criterion=random``); exactly one must, else ConfigError."""
    wanted = _label_pairs(reference_label or "")
    found = [label for label in labels
             if all(variants[label].get(key) == row.get(key) for key in within)
             and all(str(_shown(variants[label].get(key))) == value for key, value in wanted.items())]
    if len(found) != 1:
        where = ", ".join(f"{key}={_shown(row.get(key))}" for key in within)
        shown = "; ".join(repr(label) for label in found or labels)
        raise ConfigError(f"task {task}: {len(found)} rows of the reference method {reference!r} match {where}"
                          f"{' and ' + reference_label if reference_label else ''} ({shown}); name one with "
                          "--reference-label (key=value pairs that the reference row has)")
    return found[0]


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def paired_comparisons(rows: Mapping[tuple[str, str, str], Mapping[Hashable, float]], reference: str,
                       reference_label: str | None = None, quantity: str = "score",
                       resolution: float | Mapping[str, float | None] | None = None, within: Sequence[str] = (),
                       variants: Mapping[tuple[str, str, str], Mapping[str, Any]] | None = None) -> PairedReport:
    """``rows`` maps (task, method, label) to {seed: score}; each row is compared with its task's reference row
    on the seeds S both ran: d_s = score_s − reference_score_s for s ∈ S, tested by ``paired_test`` at the
    ``resolution`` of the values (one for every task, or task → resolution; None or a task left out: 12 decimals).

    The reference row is the ``reference`` method's row of the task; when that method has several rows there,
    ``reference_label`` names it (and is not used elsewhere), else ConfigError. With ``within`` (label keys, e.g.
    ``discretizer.rho``) and ``variants`` (each row's ``{label key: value}``), each row has its own reference: the
    reference method's row with the same values of those keys (a budget curve: each k against random at that k),
    narrowed by ``reference_label`` read as key=value pairs. A task without a reference row is skipped with a note.
    Rows without a shared seed are kept with n = 0. ``quantity`` names the paired values.
    """
    report = PairedReport(reference=reference, quantity=quantity)
    tasks: dict[str, list[tuple[str, str]]] = {}
    for task, method, label in sorted(rows):
        tasks.setdefault(task, []).append((method, label))
    for task, keys in tasks.items():
        labels = [label for method, label in keys if method == reference]
        if not labels:
            what = "" if quantity == "score" else f" and a {quantity}"
            report.notes[task] = f"no finished {reference} run with a seed{what} on {task}, so no paired comparison"
            continue
        ref_label = None if within else _reference_label(task, reference, labels, reference_label)
        step = resolution.get(task) if isinstance(resolution, Mapping) else resolution
        references = {label: (variants or {}).get((task, reference, label), {}) for label in labels}
        for method, label in keys:
            if within:
                row = (variants or {}).get((task, method, label), {})
                if any(key not in row for key in within):  # e.g. a method run at one size only
                    report.notes[task] = (f"{method} {label}".strip() + f" does not vary {', '.join(within)}, "
                                          "so it has no paired reference")
                    continue
                ref_label = _reference_within(task, reference, labels, reference_label, row, references, within)
            if (method, label) == (reference, ref_label):
                continue
            ref = rows[(task, reference, ref_label)]
            scores = rows[(task, method, label)]
            seeds = sorted(set(scores) & set(ref), key=lambda seed: (str(type(seed)), seed))
            report.comparisons.append(PairedComparison(
                task, method, label, reference, ref_label, seeds,
                paired_test([scores[s] for s in seeds], [ref[s] for s in seeds], resolution=step)))
    return report


__all__ = ["EXACT_MAX_PAIRS", "PERMUTATION_DRAWS", "PERMUTATION_SEED", "PairedComparison", "PairedReport",
           "PairedTest", "expected_jaccard", "jaccard", "mean_pairwise_jaccard", "mean_pairwise_jaccard_chance",
           "mean_std", "median", "overlap_pmf", "paired_comparisons", "paired_test", "sign_flip_pvalue",
           "t_interval", "to_units"]
