"""nas.reporting.statistics: Jaccard chance level, paired tests (t-interval, t-test, exact sign-flip p) and the
pairing of rows by seed."""

from __future__ import annotations

import warnings
from fractions import Fraction
from itertools import combinations, product
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nas.errors import ConfigError
from nas.reporting.aggregate import Recovery, RunRecord, paired_differences
from nas.reporting.statistics import (
    expected_jaccard,
    jaccard,
    mean_pairwise_jaccard_chance,
    overlap_pmf,
    paired_comparisons,
    paired_test,
    sign_flip_pvalue,
    t_interval,
)


def brute_force_jaccard(n_items: int, k1: int, k2: int) -> Fraction:
    """E[J] by enumerating every pair (A, B) of subsets with |A| = k1, |B| = k2."""
    pairs = [(set(a), set(b)) for a in combinations(range(n_items), k1) for b in combinations(range(n_items), k2)]
    return sum((Fraction(len(a & b), len(a | b)) if a | b else Fraction(1) for a, b in pairs), Fraction(0)) / len(pairs)


@pytest.mark.parametrize(("n_items", "k1", "k2"), [(6, 3, 3), (7, 2, 4), (7, 4, 2), (5, 1, 1), (5, 5, 5), (6, 0, 2),
                                                   (3, 0, 0), (8, 6, 5)])
def test_expected_jaccard_matches_enumeration(n_items: int, k1: int, k2: int) -> None:
    assert expected_jaccard(n_items, k1, k2) == pytest.approx(float(brute_force_jaccard(n_items, k1, k2)), abs=1e-12)


def test_expected_jaccard_of_18_of_36_is_about_a_third() -> None:
    exact = expected_jaccard(36, 18)
    assert exact == pytest.approx(0.3376, abs=1e-4)
    rng = np.random.default_rng(1)
    simulated = np.mean([jaccard(rng.choice(36, 18, replace=False), rng.choice(36, 18, replace=False))
                         for _ in range(20_000)])
    assert simulated == pytest.approx(exact, abs=0.005)


def test_overlap_is_hypergeometric() -> None:
    pmf = overlap_pmf(36, 18, 10)
    assert sum(pmf.values()) == 1 and min(pmf) == 0 and max(pmf) == 10
    for x, p in pmf.items():
        assert float(p) == pytest.approx(stats.hypergeom.pmf(x, 36, 18, 10), rel=1e-9)
    assert set(overlap_pmf(7, 5, 4)) == {2, 3, 4}  # at least k1 + k2 − N shared


def test_subset_larger_than_the_space_names_the_fix() -> None:
    with pytest.raises(ValueError, match="k2 = 9 .* N = 8 .*num_candidates"):
        expected_jaccard(8, 3, 9)
    with pytest.raises(ValueError, match="k1 = -1"):
        expected_jaccard(8, -1, 2)


def test_mean_pairwise_chance_over_the_actual_pairs() -> None:
    assert mean_pairwise_jaccard_chance([3, 3, 3], 6) == pytest.approx(expected_jaccard(6, 3))
    mixed = (2 * expected_jaccard(7, 2, 4) + expected_jaccard(7, 4, 4)) / 3  # pairs (2,4), (2,4), (4,4)
    assert mean_pairwise_jaccard_chance([2, 4, 4], 7) == pytest.approx(mixed)
    assert mean_pairwise_jaccard_chance([3], 6) is None and mean_pairwise_jaccard_chance([], 6) is None


@pytest.mark.parametrize("d", [[0.05, -0.01, 0.03, 0.08, 0.02], [0.1, -0.2, 0.05], [0.3, 0.0, 0.1, 0.2, -0.05, 0.4]])
def test_paired_test_agrees_with_scipy(d: list[float]) -> None:
    y = np.linspace(0.6, 0.7, len(d))
    x = y + np.array(d)
    result = paired_test(x, y)
    n, diff = len(d), x - y
    assert result.n == n
    assert result.mean == pytest.approx(np.mean(diff)) and result.std == pytest.approx(np.std(diff, ddof=1))
    assert result.t_pvalue == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
    half = stats.t.ppf(0.975, n - 1) * np.std(diff, ddof=1) / np.sqrt(n)
    assert result.ci == pytest.approx((np.mean(diff) - half, np.mean(diff) + half), rel=1e-9)
    signs = np.array(list(product((-1, 1), repeat=n)))  # the sign-flip p by brute force over all 2^n patterns
    brute = np.mean(np.abs(signs @ np.abs(np.round(diff, 12))) >= abs(np.round(diff, 12).sum()) - 1e-12)
    assert result.perm_pvalue == pytest.approx(brute, abs=1e-15)


@pytest.mark.parametrize(("d", "p"), [([1, 2, 3], 2 / 8), ([1, 1, 1, 1, 1], 2 / 32), ([1, -1, 1, -1], 1.0),
                                      ([3, -1, 2, 0], 8 / 16), ([0.5] * 16, 2 / 2**16)])
def test_sign_flip_p_exact_references(d: list[float], p: float) -> None:
    """E.g. [3, −1, 2, 0]: |Σ| = 4; the signed sums of 3, 1, 2 are ±6, ±4, ±2, 0, 0, of which 4 of 8 reach 4."""
    assert sign_flip_pvalue(d) == p  # exact: counted in integer units
    assert paired_test(d, [0.0] * len(d)).perm_pvalue == p


def test_sign_flip_p_ignores_float_noise_at_the_resolution() -> None:
    """d = [1/9, 2/9, −1/9]: |Σ| = 2/9, and 6 of the 8 patterns reach it: p = 0.75 with or without noise at 1e-15
    (float comparisons of the sums would move p by which of the ties ±2/9 happen to round above or below)."""
    d = np.array([1 / 9, 2 / 9, -1 / 9])
    noisy = d + np.array([1e-15, -1e-15, 1e-15])
    assert sign_flip_pvalue(d, resolution=1 / 9) == sign_flip_pvalue(noisy, resolution=1 / 9) == 0.75
    assert sign_flip_pvalue(noisy) == 0.75  # the default rounding to 12 decimals removes it too
    test = paired_test([5 / 9, 6 / 9, 8 / 9], [4 / 9, 5 / 9, 5 / 9], resolution=1 / 9)
    assert (test.perm_pvalue, test.mean) == (0.25, pytest.approx(5 / 27))


def test_sign_flip_p_of_all_zeros_is_one_and_above_16_pairs_is_monte_carlo() -> None:
    assert sign_flip_pvalue([0.0, 0.0, 0.0]) == 1.0 and sign_flip_pvalue([]) is None
    assert sign_flip_pvalue([0.0, 0.0, 0.3]) == 1.0  # zeros are kept: they add 0 under either sign
    d = np.round(np.random.default_rng(2).normal(0.3, 1.0, size=20), 3)
    sums = np.zeros(1)
    for k in np.abs(d):  # the exact p over all 2^20 patterns, for reference
        sums = np.concatenate([sums + k, sums - k])
    exact = np.mean(np.abs(sums) >= abs(d.sum()) - 1e-9)
    estimate = sign_flip_pvalue(d, draws=100_000)
    assert sign_flip_pvalue(d, draws=100_000) == estimate  # seeded
    assert estimate == pytest.approx(exact, abs=0.007)  # 4 standard errors of 10^5 draws
    assert sign_flip_pvalue(np.ones(20), draws=1_000) == 1 / 1_001  # never 0: the observed pattern counts


def test_constant_positive_difference_gives_a_point_ci() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_test([1.25, 2.25, 3.25, 4.25], [1.0, 2.0, 3.0, 4.0])
        noisy = paired_test([0.8, 0.9, 0.3], [0.7, 0.8, 0.2])  # 0.1 up to float noise in each difference
    assert (result.mean, result.std, result.ci, result.t_pvalue) == (0.25, 0.0, (0.25, 0.25), 0.0)
    assert result.perm_pvalue == 2 / 2**4
    assert (noisy.mean, noisy.std, noisy.ci, noisy.perm_pvalue) == (0.1, 0.0, (0.1, 0.1), 0.25)
    assert t_interval([0.1] * 7) == (0.1, 0.1)


@pytest.mark.parametrize(("x", "y", "expected"), [
    ([], [], (0, None, None, None, None, None)),
    ([0.8], [0.7], (1, 0.1, None, None, 1.0, None)),
    ([0.7, 0.6, 0.9], [0.7, 0.6, 0.9], (3, 0.0, 0.0, None, 1.0, (0.0, 0.0))),
])
def test_degenerate_pairs_give_none_without_warnings(x: list[float], y: list[float], expected: tuple) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_test(x, y)
    assert (result.n, result.mean, result.std, result.t_pvalue, result.perm_pvalue, result.ci) == expected


def test_bad_inputs_name_the_fix() -> None:
    with pytest.raises(ValueError, match="same length.*pair the values"):
        paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="confidence=0.95"):
        t_interval([0.1, 0.2], confidence=95)
    with pytest.raises(ValueError, match="confidence=0.95"):
        paired_test([0.1], [0.2], confidence=95)
    with pytest.raises(ValueError, match=r"resolution=1/9"):
        paired_test([0.1, 0.2], [0.0, 0.0], resolution=0)
    with pytest.raises(ValueError, match="coarser resolution="):
        sign_flip_pvalue([1e9, 2e9])


# Coverage of the 95% CI of a mean paired difference, true mean 0. Normal d, and a moderately skewed d: a centred
# gamma with shape 9 (skewness 2/√9 = 0.67; over 2·10^5 trials its coverage is 0.942–0.945 at n = 3–10). The t-interval
# undercovers harder skew at these n (centred exponential, skewness 2: 0.88; gamma shape 4, skewness 1: 0.93;
# lognormal σ = 0.5, skewness 1.75: 0.92). 4,000 trials: a standard error of 0.0035 around 0.943–0.951.
COVERAGE_TRIALS = 4_000
DRAWS = {"normal": lambda rng, size: rng.normal(size=size),
         "gamma9": lambda rng, size: rng.gamma(9.0, size=size) - 9.0}


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("dist", sorted(DRAWS))
def test_t_interval_covers_95_percent_at_small_n(dist: str, n: int) -> None:
    d = DRAWS[dist](np.random.default_rng(n), (COVERAGE_TRIALS, n))
    mean, half = d.mean(axis=1), stats.t.ppf(0.975, n - 1) * d.std(axis=1, ddof=1) / np.sqrt(n)
    for i in range(20):  # the vectorized interval is t_interval's
        assert t_interval(d[i]) == pytest.approx((mean[i] - half[i], mean[i] + half[i]), abs=1e-11)
    coverage = np.mean(np.abs(mean) <= half)
    assert 0.93 <= coverage <= 0.97, f"{dist}, n = {n}: the t-interval covers 0 in {coverage:.3f} of the trials"


@pytest.mark.parametrize("dist", sorted(DRAWS))
def test_the_old_percentile_bootstrap_undercovers_at_three_pairs(dist: str) -> None:
    """Why the CI is no longer a percentile bootstrap: at n = 3 its 95% interval covers the true mean ~74% of the
    time (the resample means only span [min d, max d], and the quantiles of 3 points are too narrow)."""
    n, trials, resamples = 3, 2_000, 1_000
    rng = np.random.default_rng(0)
    d = DRAWS[dist](rng, (trials, n))
    means = np.take_along_axis(d[:, None, :], rng.integers(0, n, size=(trials, resamples, n)), axis=2).mean(axis=2)
    low, high = np.quantile(means, [0.025, 0.975], axis=1)
    assert np.mean((low <= 0) & (high >= 0)) < 0.90


ROWS = {("mrpc", "diffora", "rank=4"): {0: 0.80, 1: 0.82, 2: 0.79, 7: 0.9},
        ("mrpc", "diffora", "rank=8"): {0: 0.81, 1: 0.85},
        ("mrpc", "random", ""): {0: 0.75, 1: 0.78, 2: 0.74},
        ("rte", "diffora", ""): {0: 0.6, 1: 0.62}}


def test_pairing_uses_only_shared_seeds_and_notes_a_missing_reference() -> None:
    report = paired_comparisons(ROWS, "random")
    assert report.reference == "random" and set(report.notes) == {"rte"} and "no finished random" in report.notes["rte"]
    by_label = {c.label: c for c in report.comparisons}
    assert set(by_label) == {"rank=4", "rank=8"}
    assert by_label["rank=4"].seeds == [0, 1, 2] and by_label["rank=8"].seeds == [0, 1]
    assert by_label["rank=4"].test.mean == pytest.approx(np.mean([0.05, 0.04, 0.05]))
    assert by_label["rank=8"].test.t_pvalue == pytest.approx(stats.ttest_rel([0.81, 0.85], [0.75, 0.78]).pvalue)


def test_reference_with_several_rows_needs_a_label() -> None:
    with pytest.raises(ConfigError, match=r"ambiguous.*--reference-label.*reference_label="):
        paired_comparisons(ROWS, "diffora")
    report = paired_comparisons(ROWS, "diffora", reference_label="rank=4")
    mrpc = [c for c in report.comparisons if c.task == "mrpc"]
    assert [(c.method, c.label, c.reference_label, c.seeds) for c in mrpc] == [
        ("diffora", "rank=8", "rank=4", [0, 1]), ("random", "", "rank=4", [0, 1, 2])]
    assert [c.method for c in report.comparisons if c.task == "rte"] == []  # rte: diffora's only row is the reference
    with pytest.raises(ConfigError, match=r"--reference-label 'rank=16' names no row.*'rank=4'; 'rank=8'"):
        paired_comparisons(ROWS, "diffora", reference_label="rank=16")


# d = [1/9 + ε, 2/9, −1/9]: at the resolution 1/9, |Σ| = 2/9 is tied by 6 of 8 sign patterns (p = 0.75); an ε kept
# by the 12-decimal rounding breaks two of those ties (p = 0.5). Real noise is ~1e-16; ε = 3e-12 shows the rounding.
NOISY = {("planted", "diffora", ""): {0: 5 / 9 + 3e-12, 1: 6 / 9, 2: 4 / 9},
         ("planted", "random", ""): {0: 4 / 9, 1: 4 / 9, 2: 5 / 9}}


def test_paired_comparisons_round_at_each_tasks_resolution() -> None:
    def p_of(**kwargs: object) -> float | None:
        return paired_comparisons(NOISY, "random", **kwargs).comparisons[0].test.perm_pvalue

    assert p_of() == 0.5 and p_of(resolution={"other": 1 / 9}) == 0.5
    assert p_of(resolution=1 / 9) == p_of(resolution={"planted": 1 / 9}) == 0.75


def test_paired_differences_round_recovery_precision_at_one_over_planted() -> None:
    def record(method: str, seed: int, precision: float, planted: int) -> RunRecord:
        recovery = Recovery(precision=precision, auc=None, chance=0.25, criterion="dam",
                            planted=[f"m{i}" for i in range(planted)])
        return RunRecord(run_dir=Path(f"{method}_{seed}"), rel_dir=f"{method}_{seed}", status="finished",
                         task="planted", method=method, seed=seed, score=0.9, recovery=recovery)

    runs = [record(method, seed, precision, 9) for (_, method, _), values in NOISY.items()
            for seed, precision in values.items()]
    test = paired_differences(runs, "random", quantity="recovery precision").comparisons[0].test
    assert (test.n, test.perm_pvalue, test.mean) == (3, 0.75, pytest.approx(2 / 27))
    runs[-1] = record("random", 2, 5 / 9, 8)  # |S| differs between runs: no common resolution, 12 decimals
    assert paired_differences(runs, "random", quantity="recovery precision").comparisons[0].test.perm_pvalue == 0.5
    assert paired_differences(runs, "random").comparisons[0].test.perm_pvalue == 1.0  # scores: all d = 0
