"""The summary's data model: one row per (task, method, variant label), filled by nas/reporting/aggregate.py's
summarizer and drawn by nas/reporting/aggregate_report.py's renderers; it imports nothing of either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecoverySummary:
    """Recovery of the planted set over the n seeds that recorded it: (mean, std) of precision and AUC."""

    n: int
    precision: tuple[float | None, float | None]
    auc: tuple[float | None, float | None]
    chance: float | None


@dataclass
class StandIns:
    """Over the n seeds of a planted run: how often each planted module was left out of the selection (``missed``)
    and how often each other module was selected in its place (``extra``), most frequent first."""

    n: int
    missed: list[tuple[str, int]]
    extra: list[tuple[str, int]]


@dataclass
class GroupSummary:
    """Seeds of one (task, method, label); std is the sample std (None below two seeds)."""

    task: str
    method: str
    label: str
    variant: dict[str, Any]
    n: int
    seeds: list[int]
    main_metric: str | None
    score_mean: float | None
    score_std: float | None
    metrics: dict[str, tuple[float | None, float | None]]
    baseline: float | None
    trainable_params: float | None
    effective_params: float | None
    wall_s: float | None  # median over seeds: robust to a run slowed by other work on the machine
    stability: float | None
    failed: int
    unfinished: int
    not_finished: list[str] = field(default_factory=list)
    stability_chance: float | None = None  # expected mean pairwise Jaccard of uniformly random selections
    recovery: RecoverySummary | None = None  # None when no seed recorded recovery
    recovery_by_criterion: dict[str, RecoverySummary] = field(default_factory=dict)
    stand_ins: StandIns | None = None  # None when no seed recorded recovery with a selection
