"""The method interface: every method (DiffoRA and each baseline) goes through one loop.

A method turns a freshly loaded backbone into a :class:`Prepared` model — which weights train, which
modules carry an adapter, and the per-step work it needs (:class:`TrainingHooks`) — and reports what only
it knows after training (:meth:`Method.finalize`). Data, the training loop, evaluation, parameter counting
and ``metrics.json`` are shared (``nas.engine.pipeline``), so no method has a training loop of its own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from nas.engine.backbone import Backbone
from nas.engine.checkpoint import Checkpointer
from nas.engine.data import TaskData
from nas.engine.logger import Logger
from nas.engine.parallel import SINGLE, Parallel
from nas.engine.training import TrainingHooks
from nas.registry import Registry
from search_spaces.space import SearchSpace


@dataclass
class MethodContext:
    """Everything a method may read: the composed config, the task data, the candidates, the budget."""

    cfg: DictConfig
    data: TaskData
    space: SearchSpace
    run_dir: Path
    logger: Logger
    budget_target: int | None  # adapter parameters to meet (head excluded), or None when budgets are not matched
    checkpoint: Checkpointer | None = None  # saves and restores the search's and the training's state
    parallel: Parallel = SINGLE  # this process's rank and micro-batches (nas/engine/parallel.py)

    @property
    def task(self):
        return self.data.task

    def method_lr(self) -> float:
        lr = self.cfg.method.lr
        return float(self.cfg.retrain.lr if lr is None else lr)

    def method_weight_decay(self) -> float:
        wd = self.cfg.method.weight_decay
        return float(self.cfg.retrain.weight_decay if wd is None else wd)


@dataclass
class Prepared:
    """What the shared loop trains and evaluates."""

    model: nn.Module  # forward(**inputs) returns an object with .logits
    params: list[nn.Parameter]  # the main AdamW's parameters
    head_params: list[nn.Parameter]  # the task head (counted apart from the adapters)
    head_names: list[str]  # the head's parameter names in the unwrapped model
    selected: list[str]  # candidate modules that carry an adapter (all of them for full fine-tuning)
    steps: int  # steps of the shared loop
    lr: float
    weight_decay: float
    hooks: TrainingHooks = field(default_factory=TrainingHooks)
    stage_metrics: dict[str, Any] = field(default_factory=dict)  # e.g. the search stage's steps and wall time
    variant: dict[str, Any] = field(default_factory=dict)  # the method's own settings that define it (ranks…)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # criterion → module → score, if it ranked
    criterion: str | None = None  # the criterion whose scores made the selection


class Method(ABC):
    """One entry of :data:`METHODS`; built from its config node ``cfg.method``."""

    name: str = ""
    has_search: bool = False  # a search stage spends bilevel.steps before the shared loop
    has_budget: bool = True  # False: the method's size is not an adapter budget (full fine-tuning)
    discretizes: bool = False  # True: keeps the modules the discretizer picks from per-module scores (ρ applies)

    @abstractmethod
    def prepare(self, ctx: MethodContext, backbone: Backbone) -> Prepared:
        """Freeze, wrap and select on ``backbone.model``; return what the loop trains."""

    def finalize(self, ctx: MethodContext, prepared: Prepared) -> dict[str, Any]:
        """After training, before evaluation: prune, export, report. ``effective_params`` overrides the
        adapter count when the method removes parameters at the end (SoRA's zero gates, AdaLoRA's ranks)."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def train_steps(ctx: MethodContext, has_search: bool) -> int:
    """Steps of the shared loop: ⌈E · |train| / retrain.batch_size⌉ for E = ``retrain.epochs`` when set, else
    ``retrain.steps`` when set, else E = ``task.epochs`` (each task's default length); plus bilevel.steps for
    methods without a search stage when ``budget.match_steps`` is set (every method then makes the same number
    of weight updates)."""
    epochs = ctx.cfg.retrain.epochs
    if epochs is None and ctx.cfg.retrain.steps is not None:
        steps = int(ctx.cfg.retrain.steps)
    else:
        epochs = epochs if epochs is not None else ctx.cfg.task.epochs
        steps = math.ceil(float(epochs) * len(ctx.data.train) / int(ctx.cfg.retrain.batch_size))
    if ctx.cfg.budget.match_steps and not has_search:
        steps += int(ctx.cfg.bilevel.steps)
    return steps


def freeze(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def head_parameters(backbone: Backbone) -> list[nn.Parameter]:
    """The head's parameter objects (held by identity, so they survive any later wrapping of the model)."""
    return [backbone.model.get_parameter(name) for name in backbone.head_names]
