"""Figures of a run: the DAM heatmap (layers × module types) with the selected modules marked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from search_spaces.space import SearchSpace  # noqa: E402


def dam_matrix(space: SearchSpace, scores: Mapping[str, float]) -> np.ndarray:
    """(layers × types) array of relaxed weights; NaN where a cell has no candidate."""
    matrix = np.full((len(space.layers), len(space.module_types)), np.nan)
    for name in space.names:
        row, col = space.coordinate(name)
        matrix[row, col] = scores[name]
    return matrix


def plot_dam(space: SearchSpace, scores: Mapping[str, float], selected: Iterable[str], path: Path,
             title: str = "") -> Path:
    """Heatmap of γ; a selected cell gets a black frame and a dot."""
    matrix = dam_matrix(space, scores)
    fig, ax = plt.subplots(figsize=(1.3 * len(space.module_types) + 2.5, 0.5 * len(space.layers) + 2))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="relaxed weight γ")
    for name in selected:
        row, col = space.coordinate(name)
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
        ax.plot(col, row, "o", color="white", markeredgecolor="black", markersize=6)
    for (row, col), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(col, row + 0.3, f"{value:.4f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(space.module_types)), space.module_types, rotation=30, ha="right")
    ax.set_yticks(range(len(space.layers)), [str(layer) for layer in space.layers])
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    ax.set_title(title or "DAM (framed: selected)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
