"""Data loaders, the plain fine-tuning loop, evaluation and parameter counting (shared by all stages)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from nas.engine.checkpoint import Checkpointer, load_tensors, rng_state, set_rng_state, tensors
from nas.engine.completions import CompletionCollator, evaluate_completions, model_inputs
from nas.engine.logger import Logger
from nas.engine.parallel import SINGLE, Parallel
from nas.engine.precision import autocast
from nas.engine.schedule import linear_warmup_decay
from nas.errors import NonFiniteError
from objectives import GlueTask, compute_metrics, predictions_from_logits, task_loss

Batch = Mapping[str, torch.Tensor]


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of similar length, seeded: each pass draws a random order of all examples, cuts it into
    windows of ``window`` batches, sorts each window by length (longest first, ties in the drawn order), cuts it
    into batches and shuffles the order of all batches. Every example is seen once per pass, as with plain
    shuffling, but a batch pads to a length close to its members' own (HF's ``group_by_length`` idea)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, window: int = 50) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size={batch_size} and window={window} must be positive")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.window = window

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.window * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def make_loader(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
                seed: int, group_by_length: bool = False) -> DataLoader:
    """Batches padded to their own longest sequence (dynamic padding); with ``group_by_length`` (and
    ``shuffle``) the batches are :class:`LengthGroupedBatches`, so each pads less."""
    generator = torch.Generator().manual_seed(seed)
    completions = "prompt_length" in dataset.column_names  # a causal-LM task's prompt ⊕ completion examples
    collator = CompletionCollator(tokenizer.pad_token_id) if completions else DataCollatorWithPadding(tokenizer)
    if group_by_length and shuffle:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return DataLoader(dataset, batch_sampler=LengthGroupedBatches(lengths, batch_size, generator),
                          collate_fn=collator)
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
    return linear_warmup_decay(optimizer, int(round(warmup_ratio * steps)), max(steps, 1))


def finetune(model: nn.Module, params: list[nn.Parameter], loader: DataLoader, task: GlueTask, steps: int,
             lr: float, weight_decay: float, warmup_ratio: float, grad_clip: float | None, device: str,
             logger: Logger, step_offset: int = 0, log_every: int = 10, desc: str = "retrain",
             hooks: TrainingHooks | None = None, precision: str = "fp32",
             checkpoint: Checkpointer | None = None, parallel: Parallel = SINGLE) -> float:
    """AdamW with linear warm-up and decay for ``steps`` steps on ``params``; returns the last loss.

    Per step, on the global batch: for each of this process's micro-batches c (``parallel``, nas/engine/parallel.py),
    backward of (n_c/n)·task loss (forward under ``precision``, nas/engine/precision.py), plus hooks.extra_loss once
    (rank 0's first micro-batch); the gradients are summed over the processes; clip ``params``; step;
    hooks.after_optimizer_step. With ``checkpoint``, the state after a due step is saved as the stage ``desc``
    (nas/engine/checkpoint.py), and a saved state of that stage is restored before the first step.
    """
    hooks = hooks or TrainingHooks()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = linear_warmup_schedule(optimizer, steps, warmup_ratio)
    compute_loss = loss_for(task)
    model.train()
    batches = forever(loader)
    last = float("nan")
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    start = 0
    saved = checkpoint.load(desc) if checkpoint is not None else None
    if saved is not None:
        load_tensors(trained, saved["tensors"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        hooks.load_state_dict(saved["hooks"])
        start, last = int(saved["step"]) + 1, float(saved["loss"])
        for _ in range(start):  # the loader's own generator replays the batches already seen
            next(batches)
        set_rng_state(saved["rng"])
    progress = tqdm(range(start, steps), desc=desc, dynamic_ncols=True, initial=start, total=steps)
    for step in progress:
        batch = to_device(next(batches), device)
        optimizer.zero_grad(set_to_none=True)
        task_total, extra = torch.zeros((), device=device), None
        for index, (part, weight) in enumerate(parallel.micro_batches(batch)):
            with autocast(device, precision):
                loss = compute_loss(model(**model_inputs(part)), part) * weight
            task_total += loss.detach().float()
            if index == 0 and parallel.is_main:
                extra = hooks.extra_loss(model)
                loss = loss if extra is None else loss + extra
            loss.backward()
        if parallel.world > 1:  # every rank reduces the same tensors, in the same order
            for parameter in trained.values():
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
            parallel.all_reduce_([parameter.grad for parameter in trained.values()])
        last = parallel.sum_scalar(float(task_total), device)  # one host sync for the whole step
        extra_value = parallel.sum_scalar(float(extra.detach()) if extra is not None else 0.0, device)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf")))
        check_finite(desc, step, {"loss": last + extra_value, "gradient norm": grad_norm})
        optimizer.step()
        scheduler.step()
        values = hooks.after_optimizer_step(step)
        progress.set_postfix(loss=f"{last:.4f}")
        if step % log_every == 0 or step == steps - 1:
            logged = {f"{desc}/loss": last, f"{desc}/lr": scheduler.get_last_lr()[0], **values}
            if extra_value:
                logged[f"{desc}/extra_loss"] = extra_value
            logger.log(logged, step=step_offset + step)
        if checkpoint is not None and checkpoint.due(step, steps - 1):
            checkpoint.save(desc, {"step": step, "loss": last, "tensors": tensors(trained, desc, step),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "hooks": hooks.state_dict(), "rng": rng_state()})
    return last


TRAINING_FIX = "lower retrain.lr (or method.lr), keep retrain.grad_clip on, or try precision=fp32"


def check_finite(stage: str, step: int, values: Mapping[str, float | None], fix: str = TRAINING_FIX) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite quantity (None: not measured this step), the
    stage, the step and ``fix``; the training loop calls it before the optimizer step, so the weights stay as
    they were."""
    for quantity, value in values.items():
        if value is not None and not math.isfinite(value):
            raise NonFiniteError(f"{stage} step {step}: the {quantity} is {value}; {fix}")


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

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep besides the trained tensors (e.g. a second optimizer's moments)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content."""


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: GlueTask, device: str,
             precision: str = "fp32") -> dict[str, float]:
    """The task's official GLUE metrics on every batch of ``loader`` (forward passes under ``precision``); a
    causal-LM task's metrics come from :func:`~nas.engine.completions.evaluate_completions`.

    Every model output z_ij (logit or regression score) must be finite, and so must every metric: otherwise a
    :class:`NonFiniteError` names the count #{(i, j): z_ij ∉ ℝ} (or the metric) and the fix, and no number is
    returned (argmax over NaN logits would score as class 0, a NaN score would reach metrics.json as is)."""
    fix = "the trained weights give NaN or ±inf; " + TRAINING_FIX
    if task.objective == "causal_lm":
        metrics = evaluate_completions(model, loader, task, device, precision)
    else:
        was_training = model.training
        model.eval()
        predictions: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        bad, total, bad_rows, rows = 0, 0, 0, 0
        for batch in tqdm(loader, desc="evaluate", dynamic_ncols=True):
            batch = to_device(batch, device)
            inputs = model_inputs(batch)
            with autocast(device, precision):
                logits = model(**inputs).logits.float()
            finite = torch.isfinite(logits).reshape(len(logits), -1)
            bad, total = bad + int((~finite).sum()), total + finite.numel()
            bad_rows, rows = bad_rows + int((~finite.all(dim=1)).sum()), rows + len(finite)
            predictions.append(predictions_from_logits(logits, task))
            labels.append(batch["labels"].cpu().numpy())
        model.train(was_training)
        if bad:
            raise NonFiniteError(f"evaluation: {bad} of {total} model outputs ({bad_rows} of {rows} examples) are "
                                 f"not finite; {fix}")
        metrics = compute_metrics(task, np.concatenate(predictions), np.concatenate(labels))
    broken = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if broken:
        raise NonFiniteError(f"evaluation: {len(broken)} of {len(metrics)} metrics are not finite "
                             f"({', '.join(f'{k}={v}' for k, v in broken.items())}); {fix}")
    return metrics
