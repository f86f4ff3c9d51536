"""nas.reporting.statistics: Jaccard chance level, paired tests, bootstrap CI and the pairing of rows by seed."""

from __future__ import annotations

import warnings
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from nas.errors import ConfigError
from nas.reporting.statistics import (
    bootstrap_ci,
    expected_jaccard,
    jaccard,
    mean_pairwise_jaccard_chance,
    overlap_pmf,
    paired_comparisons,
    paired_test,
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
    assert result.n == len(d)
    assert result.mean == pytest.approx(np.mean(x - y)) and result.std == pytest.approx(np.std(x - y, ddof=1))
    assert result.t_pvalue == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert result.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-12)
    assert result.ci is not None and result.ci[0] <= result.mean <= result.ci[1]


def test_bootstrap_ci_shrinks_with_n_and_is_seeded() -> None:
    draws = np.random.default_rng(3).normal(0.05, 0.1, size=200)
    widths = []
    for n in (5, 20, 200):
        ci = bootstrap_ci(draws[:n])
        assert ci is not None and ci[0] <= draws[:n].mean() <= ci[1]
        widths.append(ci[1] - ci[0])
    assert widths[0] > widths[1] > widths[2] > 0
    assert bootstrap_ci(draws[:20]) == bootstrap_ci(draws[:20])  # default_rng(0): reproducible
    assert bootstrap_ci(draws[:20], seed=1) != bootstrap_ci(draws[:20])


def test_bootstrap_of_two_values_is_their_range() -> None:
    # resample means of {a, b} are a, (a+b)/2, b with probability 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles
    assert bootstrap_ci([0.2, 0.5]) == (0.2, 0.5)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's own call below
def test_constant_positive_difference_gives_a_point_ci() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # paired_test keeps scipy's precision-loss warning to itself
        result = paired_test([1.25, 2.25, 3.25, 4.25], [1.0, 2.0, 3.0, 4.0])
    assert (result.mean, result.std, result.ci) == (0.25, 0.0, (0.25, 0.25))
    assert result.t_pvalue == stats.ttest_rel([1.25, 2.25, 3.25, 4.25], [1.0, 2.0, 3.0, 4.0]).pvalue == 0.0
    assert result.wilcoxon_pvalue == pytest.approx(2 / 2**4)
    assert bootstrap_ci([0.1] * 7) == (0.1, 0.1)  # the rounding of the resample means is clipped away


@pytest.mark.parametrize(("x", "y", "expected"), [
    ([], [], (0, None, None, None, None, None)),
    ([0.8], [0.7], (1, 0.8 - 0.7, None, None, None, None)),
    ([0.7, 0.6, 0.9], [0.7, 0.6, 0.9], (3, 0.0, 0.0, None, None, (0.0, 0.0))),
])
def test_degenerate_pairs_give_none_without_warnings(x: list[float], y: list[float], expected: tuple) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_test(x, y)
    assert (result.n, result.mean, result.std, result.t_pvalue, result.wilcoxon_pvalue, result.ci) == expected


def test_bad_inputs_name_the_fix() -> None:
    with pytest.raises(ValueError, match="same length.*pair the values"):
        paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="confidence=0.95"):
        bootstrap_ci([0.1, 0.2], confidence=95)


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
