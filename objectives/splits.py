"""Seeded index splits and subsamples, optionally stratified by class label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _classes(labels: Sequence, stratify: bool) -> list[np.ndarray]:
    """Index groups to sample within: one per class (sorted by label) when stratifying, else one group."""
    arr = np.asarray(labels)
    if not stratify:  # any labels, one per row (a vector regression target too)
        return [np.arange(len(arr))]
    if arr.ndim != 1:
        raise ValueError(f"stratify=True needs 1-D class labels, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise ValueError("stratify=True needs discrete class labels; use stratify=False for regression")
    values, inverse = np.unique(arr, return_inverse=True)
    return [np.flatnonzero(inverse == i) for i in range(len(values))]


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_indices(labels: Sequence, first_fraction: float, seed: int,
                  stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into two disjoint, covering, sorted index arrays.

    The first part holds round(first_fraction * n) indices, or, when stratifying, round(first_fraction * n_c)
    of each class c, so each class keeps its proportion in both parts. Sampling uses
    ``np.random.default_rng(seed)``. Raises ValueError unless 0 < first_fraction < 1 and both parts are
    non-empty.
    """
    if not 0.0 < float(first_fraction) < 1.0:
        raise ValueError(f"first_fraction must be in (0, 1), got {first_fraction}")
    rng = np.random.default_rng(seed)
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for group in _classes(labels, stratify):
        perm = rng.permutation(group)
        k = _round_half_up(first_fraction * len(group))
        first.append(perm[:k])
        second.append(perm[k:])
    a = np.sort(np.concatenate(first)).astype(np.int64) if first else np.zeros(0, np.int64)
    b = np.sort(np.concatenate(second)).astype(np.int64) if second else np.zeros(0, np.int64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(
            f"split of {len(a) + len(b)} items with first_fraction={first_fraction} leaves a part empty "
            f"({len(a)} / {len(b)})"
        )
    return a, b


def subsample_indices(labels: Sequence, k: int | None, seed: int, stratify: bool) -> np.ndarray:
    """k sorted, seeded indices drawn without replacement (all indices when k is None or k >= n).

    Stratified: class c gets floor(k * n_c / n) items, and the remaining items go to the classes with the
    largest fractional parts (largest-remainder rounding), so the total is exactly k.
    """
    n = len(labels)
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        raise ValueError(f"k must be positive or None, got {k}")
    rng = np.random.default_rng(seed)
    groups = _classes(labels, stratify)
    quota = np.array([k * len(g) / n for g in groups])
    counts = np.floor(quota).astype(int)
    extra = k - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:extra]] += 1
    picked = [rng.choice(g, size=c, replace=False) for g, c in zip(groups, counts, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
