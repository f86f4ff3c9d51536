"""Seeded, optionally stratified index splits and subsamples."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from objectives import split_indices, subsample_indices

LABELS = np.array([0] * 70 + [1] * 30 + [2] * 10)
np.random.default_rng(3).shuffle(LABELS)


@pytest.mark.parametrize("stratify", [True, False])
def test_split_disjoint_and_covering(stratify: bool) -> None:
    a, b = split_indices(LABELS, 0.7, seed=0, stratify=stratify)
    assert len(np.intersect1d(a, b)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(len(LABELS)))
    assert len(a) == 77 and len(b) == 33
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)


def test_split_stratified_proportions() -> None:
    a, b = split_indices(LABELS, 0.7, seed=5, stratify=True)
    assert Counter(LABELS[a].tolist()) == {0: 49, 1: 21, 2: 7}
    assert Counter(LABELS[b].tolist()) == {0: 21, 1: 9, 2: 3}
    a, b = split_indices(LABELS, 0.25, seed=5, stratify=True)  # round per class: 17.5->18, 7.5->8, 2.5->3
    assert Counter(LABELS[a].tolist()) == {0: 18, 1: 8, 2: 3}


def test_split_seeded() -> None:
    a1, b1 = split_indices(LABELS, 0.5, seed=11, stratify=True)
    a2, b2 = split_indices(list(LABELS), 0.5, seed=11, stratify=True)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    a3, _ = split_indices(LABELS, 0.5, seed=12, stratify=True)
    assert not np.array_equal(a1, a3)
    a4, _ = split_indices(LABELS, 0.5, seed=12, stratify=False)
    assert not np.array_equal(a3, a4)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="first_fraction"):
        split_indices(LABELS, fraction, seed=0, stratify=False)


def test_split_empty_part() -> None:
    with pytest.raises(ValueError, match="empty"):
        split_indices([0, 1, 0], 0.05, seed=0, stratify=False)
    with pytest.raises(ValueError, match="empty"):
        split_indices([0], 0.5, seed=0, stratify=True)


def test_split_regression_labels() -> None:
    scores = np.linspace(0, 5, 40)
    a, b = split_indices(scores, 0.75, seed=0, stratify=False)
    assert (len(a), len(b)) == (30, 10)
    with pytest.raises(ValueError, match="discrete"):
        split_indices(scores, 0.75, seed=0, stratify=True)


def test_subsample_all() -> None:
    np.testing.assert_array_equal(subsample_indices(LABELS, None, seed=0, stratify=True), np.arange(110))
    np.testing.assert_array_equal(subsample_indices(LABELS, 500, seed=0, stratify=False), np.arange(110))


@pytest.mark.parametrize("stratify", [True, False])
def test_subsample_k(stratify: bool) -> None:
    idx = subsample_indices(LABELS, 20, seed=1, stratify=stratify)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < len(LABELS)
    np.testing.assert_array_equal(idx, subsample_indices(LABELS, 20, seed=1, stratify=stratify))
    assert not np.array_equal(idx, subsample_indices(LABELS, 20, seed=2, stratify=stratify))


def test_subsample_stratified_counts() -> None:
    idx = subsample_indices(LABELS, 11, seed=0, stratify=True)
    assert Counter(LABELS[idx].tolist()) == {0: 7, 1: 3, 2: 1}
    idx = subsample_indices(LABELS, 20, seed=0, stratify=True)  # quotas 12.73, 5.45, 1.82 -> 13, 5, 2
    assert Counter(LABELS[idx].tolist()) == {0: 13, 1: 5, 2: 2}


def test_subsample_bad_k() -> None:
    with pytest.raises(ValueError, match="positive"):
        subsample_indices(LABELS, 0, seed=0, stratify=False)
