"""Pure statistics of a sweep: paired comparisons of seeds, a bootstrap CI, and the chance level of a Jaccard index.

Nothing here reads files: nas.reporting.aggregate collects each row's scores by seed and its selections and calls these.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations

import numpy as np
from scipy import stats

from nas.errors import ConfigError

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PairedTest:
    """Differences d_i = x_i − y_i of n pairs: their mean, sample std, two tests and a bootstrap CI of the mean.

    ``std`` is None below two pairs; ``t_pvalue`` None where t is undefined (n < 2 or every d_i = 0);
    ``wilcoxon_pvalue`` None when n < 2 or every d_i = 0; ``ci`` None below two pairs.
    """

    n: int
    mean: float | None
    std: float | None
    t_pvalue: float | None
    wilcoxon_pvalue: float | None
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


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of ``values``; None below two values.

    Draw B = ``resamples`` samples of size n with replacement (``numpy.random.default_rng(seed)``), take each
    sample's mean m*_b, and return the α/2 and 1 − α/2 quantiles of {m*_b} with α = 1 − ``confidence``.
    A resample mean always lies in [min(values), max(values)], so the bounds are clipped there: this only removes
    floating-point rounding, and a constant d gives exactly [d, d].
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ValueError(f"bootstrap_ci needs a flat sequence of finite numbers, got {values!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}: pass e.g. confidence=0.95")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(np.clip(low, data.min(), data.max())), float(np.clip(high, data.min(), data.max())))


def paired_test(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95,
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedTest:
    """Compare paired samples x_i and y_i (same seed, same data) through d_i = x_i − y_i.

    mean d̄ = Σ d_i / n; std s = sqrt(Σ (d_i − d̄)² / (n − 1));
    paired t-test (``scipy.stats.ttest_rel``): t = d̄ / (s / √n) with n − 1 degrees of freedom, two-sided;
    Wilcoxon signed-rank (``scipy.stats.wilcoxon``, zeros dropped): W = Σ_{d_i > 0} rank(|d_i|), two-sided;
    CI: ``bootstrap_ci`` of the d_i.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two flat sequences of the same length, got {a.shape} and {b.shape}: "
                         "pair the values (same seed) before calling it")
    d = a - b
    n = int(d.size)
    if n == 0:
        return PairedTest(0, None, None, None, None, None)
    mean, std = float(d.mean()), float(d.std(ddof=1)) if n > 1 else None
    t_p = w_p = None
    if n > 1 and np.any(d != 0):
        with warnings.catch_warnings():  # nearly equal d_i: scipy warns about precision loss, t is still defined
            warnings.simplefilter("ignore", RuntimeWarning)
            t_p = _finite(stats.ttest_rel(a, b).pvalue)
            try:
                w_p = _finite(stats.wilcoxon(a, b).pvalue)
            except ValueError:  # e.g. too few non-zero differences for the chosen method
                w_p = None
    return PairedTest(n, mean, std, t_p, w_p, bootstrap_ci(d, confidence=confidence, resamples=resamples, seed=seed))


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


def paired_comparisons(rows: Mapping[tuple[str, str, str], Mapping[Hashable, float]], reference: str,
                       reference_label: str | None = None, quantity: str = "score") -> PairedReport:
    """``rows`` maps (task, method, label) to {seed: score}; each row is compared with its task's reference row
    on the seeds S both ran: d_s = score_s − reference_score_s for s ∈ S, tested by ``paired_test``.

    The reference row is the ``reference`` method's row of the task; when that method has several rows there,
    ``reference_label`` names it (and is not used elsewhere), else ConfigError. A task without a reference row
    is skipped with a note. Rows without a shared seed are kept with n = 0. ``quantity`` names the paired values.
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
        ref_label = _reference_label(task, reference, labels, reference_label)
        ref = rows[(task, reference, ref_label)]
        for method, label in keys:
            if (method, label) == (reference, ref_label):
                continue
            scores = rows[(task, method, label)]
            seeds = sorted(set(scores) & set(ref), key=lambda seed: (str(type(seed)), seed))
            report.comparisons.append(PairedComparison(
                task, method, label, reference, ref_label, seeds,
                paired_test([scores[s] for s in seeds], [ref[s] for s in seeds])))
    return report


__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "PairedComparison", "PairedReport", "PairedTest", "bootstrap_ci",
           "expected_jaccard", "jaccard", "mean_pairwise_jaccard", "mean_pairwise_jaccard_chance", "mean_std",
           "median", "overlap_pmf", "paired_comparisons", "paired_test"]
