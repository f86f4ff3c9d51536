"""Decoder LMs in the shared loop: prompt → completion data (local JSONL, or GLUE posed with label words), the
collator that pads it, and its dev metrics (objectives/lm.py holds the objective itself).

With ``task.objective=causal_lm`` the data are sequences prompt ⊕ completion whose labels are −100 outside the
completion, so every method, the search and every criterion train on the completion tokens through the same
``task_loss``. Dev metrics: for GLUE, the task's official metrics of the class whose label word is the most
likely given the prompt; for JSONL, ``token_accuracy`` (teacher-forced argmax = the completion's next token) and
``completion_loss`` (mean cross-entropy per completion token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from nas.engine.precision import autocast
from nas.errors import ConfigError
from objectives import GlueTask, compute_metrics, get_task, load_glue
from objectives.lm import (
    IGNORE,
    JSONL_TASK,
    completion_stats,
    encode_pairs,
    glue_lm_examples,
    glue_lm_task,
    label_word_scores,
    read_jsonl,
)
from objectives.splits import subsample_indices

TARGET_KEYS = ("labels", "prompt_length", "class_id")  # batch entries that are not model inputs


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes: the batch without its targets."""
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}


class CompletionCollator:
    """Right-pads prompt ⊕ completion examples: input ids with ``pad_id``, attention mask 0, labels −100;
    ``prompt_length`` and ``class_id`` become (B,) tensors."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.as_tensor(feature["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.as_tensor(feature["labels"])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in ("prompt_length", "class_id"):
            if key in features[0]:
                batch[key] = torch.tensor([int(f[key]) for f in features])
        return batch


def prepare_completion_data(task_cfg: Any, tokenizer, max_length: int, seed: int = 0, max_train: int | None = None,
                            max_eval: int | None = None) -> tuple[GlueTask, Dataset, Dataset]:
    """(task, train, dev) for ``task.objective=causal_lm``: ``task=jsonl`` reads ``task.train_file`` and
    ``task.dev_file``; a GLUE task is posed with its label words (objectives/lm.py). Subsampling is seeded and,
    for GLUE, stratified by class."""
    try:
        if task_cfg.name == "jsonl":
            splits = {}
            for split, path, limit in (("train", task_cfg.train_file, max_train), ("dev", task_cfg.dev_file, max_eval)):
                records = read_jsonl(path)
                keep = subsample_indices(list(range(len(records))), limit, seed, False)
                records = [records[i] for i in keep]
                splits[split] = Dataset.from_list(encode_pairs(tokenizer, [r["prompt"] for r in records],
                                                               [r["completion"] for r in records], max_length))
            return JSONL_TASK, splits["train"], splits["dev"]
        base = get_task(task_cfg.name)
        task = glue_lm_task(base, tokenizer)
        raw = load_glue(base, task_cfg.data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    splits = {}
    for split, name, limit in (("train", "train", max_train), ("dev", "validation", max_eval)):
        rows = raw[name]
        rows = rows.select(subsample_indices(rows["label"], limit, seed, True))
        splits[split] = Dataset.from_list(glue_lm_examples(rows.to_dict(), base, tokenizer, max_length))
    return task, splits["train"], splits["dev"]


@torch.no_grad()
def evaluate_completions(model: nn.Module, loader, task: GlueTask, device: str,
                         precision: str = "fp32") -> dict[str, float]:
    """Dev metrics of a causal-LM task (see the module docstring), forward passes under ``precision``."""
    was_training = model.training
    model.eval()

    def logits_of(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits

    predictions, classes = [], []
    loss_sum, correct, count = 0.0, 0, 0
    for batch in tqdm(loader, desc="evaluate", dynamic_ncols=True):
        if task.label_word_ids is not None:
            scores = label_word_scores(logits_of, batch["input_ids"], batch["prompt_length"].tolist(),
                                       task.label_word_ids, pad_id=0)
            predictions.append(scores.argmax(dim=1).numpy())
            classes.append(batch["class_id"].numpy())
        else:
            stats = completion_stats(logits_of(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            loss_sum, correct, count = loss_sum + stats[0], correct + stats[1], count + stats[2]
    model.train(was_training)
    if task.label_word_ids is not None:
        return compute_metrics(task, np.concatenate(predictions), np.concatenate(classes))
    return {"token_accuracy": correct / max(count, 1), "completion_loss": loss_sum / max(count, 1)}


def class_labels(task: GlueTask, dataset: Dataset) -> list[int] | None:
    """Every example's class, to stratify by and for the majority baseline: the labels of a classification head,
    the class whose word completes a GLUE prompt; None for regression and for free completions."""
    if task.objective == "causal_lm":
        return dataset["class_id"] if "class_id" in dataset.column_names else None
    return None if task.is_regression else dataset["labels"]
