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


def plot_trajectory(space: SearchSpace, trajectory: list[Mapping], path: Path, title: str = "") -> Path:
    """γ of every candidate over the search steps, one colour per module type, with the mean binary entropy."""
    steps = [entry["step"] for entry in trajectory]
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    for candidate in space:
        col = space.module_types.index(candidate.module_type)
        top.plot(steps, [entry["dam"][candidate.name] for entry in trajectory], color=colors[col % 10],
                 linewidth=0.9, alpha=0.8)
    for col, module_type in enumerate(space.module_types):
        top.plot([], [], color=colors[col % 10], label=module_type)
    top.set_ylabel("relaxed weight γ")
    top.legend(fontsize=7, ncol=3, loc="best")
    top.set_title(title or "DAM trajectory")
    bottom.plot(steps, [entry.get("entropy", np.nan) for entry in trajectory], color="black")
    bottom.set_ylabel("entropy (nats)")
    bottom.set_xlabel("search step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
