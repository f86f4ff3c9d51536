"""Data loaders, the plain fine-tuning loop, evaluation and parameter counting (shared by all stages)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from nas.logger import Logger
from objectives import GlueTask, compute_metrics, predictions_from_logits, task_loss

Batch = Mapping[str, torch.Tensor]


def make_loader(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    """Batches padded to their own longest sequence (dynamic padding)."""
    generator = torch.Generator().manual_seed(seed)
    collator = DataCollatorWithPadding(tokenizer)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=generator if shuffle else None)


def forever(loader: DataLoader) -> Iterator[Batch]:
    """Cycle through ``loader``, reshuffling at every pass."""
    while True:
        yield from loader


def to_device(batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def loss_for(task: GlueTask) -> Callable[[Any, Batch], torch.Tensor]:
    """(model outputs, batch) → task loss (cross-entropy, or MSE for regression)."""

    def loss(outputs: Any, batch: Batch) -> torch.Tensor:
        return task_loss(outputs.logits, batch["labels"], task)

    return loss


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def linear_warmup_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    return get_linear_schedule_with_warmup(optimizer, int(round(warmup_ratio * steps)), max(steps, 1))


def finetune(model: nn.Module, params: list[nn.Parameter], loader: DataLoader, task: GlueTask, steps: int,
             lr: float, weight_decay: float, warmup_ratio: float, grad_clip: float | None, device: str,
             logger: Logger, step_offset: int = 0, log_every: int = 10, desc: str = "retrain",
             hooks: TrainingHooks | None = None) -> float:
    """AdamW with linear warm-up and decay for ``steps`` steps on ``params``; returns the last loss.

    Per step: L = task loss + hooks.extra_loss; backward; clip ``params``; step; hooks.after_optimizer_step.
    """
    hooks = hooks or TrainingHooks()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = linear_warmup_schedule(optimizer, steps, warmup_ratio)
    compute_loss = loss_for(task)
    model.train()
    batches = forever(loader)
    last = float("nan")
    progress = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    for step in progress:
        batch = to_device(next(batches), device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        task_loss_value = compute_loss(model(**inputs), batch)
        extra = hooks.extra_loss(model)
        loss = task_loss_value if extra is None else task_loss_value + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        values = hooks.after_optimizer_step(step)
        last = float(task_loss_value.detach())
        progress.set_postfix(loss=f"{last:.4f}")
        if step % log_every == 0 or step == steps - 1:
            logged = {f"{desc}/loss": last, f"{desc}/lr": scheduler.get_last_lr()[0], **values}
            if extra is not None:
                logged[f"{desc}/extra_loss"] = float(extra.detach())
            logger.log(logged, step=step_offset + step)
    return last


class TrainingHooks:
    """Per-step work a method adds to :func:`finetune`; the defaults do nothing.

    Order inside one step: loss = task loss + :meth:`extra_loss`; backward; clip; main optimizer step;
    :meth:`after_optimizer_step` (this step's gradients are still there); the next step zeroes them.
    """

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        """Called once per step with the 0-based step; returns values to log."""
        return {}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: GlueTask, device: str) -> dict[str, float]:
    """The task's official GLUE metrics on every batch of ``loader``."""
    was_training = model.training
    model.eval()
    predictions: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in tqdm(loader, desc="evaluate", dynamic_ncols=True):
        batch = to_device(batch, device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        predictions.append(predictions_from_logits(model(**inputs).logits, task))
        labels.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    return compute_metrics(task, np.concatenate(predictions), np.concatenate(labels))
