"""Causal-LM objectives for decoder models: prompt → completion data, and GLUE posed as a language-model task.

Every example is one sequence  x = prompt ⊕ completion  whose labels are −100 on the prompt and the completion's
own ids on the completion, so the loss is the mean next-token cross-entropy over completion tokens only:

    L = − (1/|C|) Σ_{t ∈ C} log p(x_t | x_<t),   C = the completion positions.

Data: local JSONL files (one ``{"prompt": ..., "completion": ...}`` object per line; ``task=jsonl``), or a GLUE
task with a verbalizer (``task.objective=causal_lm``): the prompt is the task's template filled with the sentence
(pair), the completion is the label's word, and the dev metric comes from comparing the label words' likelihoods
given the prompt (:func:`label_word_scores`): the predicted class is argmax_k log p(word_k | prompt).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from objectives.glue import GlueTask

IGNORE = -100  # label of a position that carries no loss (prompt, padding)


@dataclass(frozen=True)
class Verbalizer:
    """A GLUE task as text: ``template`` formats the text fields; ``words[c]`` is class c's completion."""

    template: str
    words: tuple[str, ...]


VERBALIZERS: dict[str, Verbalizer] = {
    "sst2": Verbalizer("Review: {sentence}\nSentiment:", (" negative", " positive")),
    "cola": Verbalizer("Sentence: {sentence}\nGrammatical:", (" no", " yes")),
    "mrpc": Verbalizer("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nSame meaning:", (" no", " yes")),
    "rte": Verbalizer("Premise: {sentence1}\nHypothesis: {sentence2}\nEntailed:", (" yes", " no")),  # 0 = entailment
    "wnli": Verbalizer("Premise: {sentence1}\nHypothesis: {sentence2}\nEntailed:", (" no", " yes")),  # 1 = entailment
}


def verbalizer(task: str) -> Verbalizer:
    """The task's template and label words; a task without one (STS-B is a regression) is a ValueError."""
    if task not in VERBALIZERS:
        raise ValueError(f"task {task!r} has no label words for task.objective=causal_lm; choose one of: "
                         f"{', '.join(VERBALIZERS)} (STS-B is a regression), or use task=jsonl with your own "
                         f"prompt → completion pairs")
    return VERBALIZERS[task]


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The ``prompt``/``completion`` pairs of a JSONL file; a bad line is a ValueError naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"JSONL file {path} does not exist; set task.train_file / task.dev_file to files with one "
                         f'{{"prompt": ..., "completion": ...}} object per line')
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from error
        if not (isinstance(record, dict) and isinstance(record.get("prompt"), str)
                and isinstance(record.get("completion"), str) and record["completion"]):
            raise ValueError(f'{path}:{number}: each line needs a string "prompt" and a non-empty string '
                             f'"completion"')
        records.append({"prompt": record["prompt"], "completion": record["completion"]})
    if not records:
        raise ValueError(f"{path} holds no examples")
    return records


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                 max_length: int) -> list[dict[str, list[int] | int]]:
    """Each pair as input_ids = prompt ⊕ completion ⊕ eos with labels −100 on the prompt; a prompt is cut from the
    left when the whole does not fit in ``max_length`` (the completion is kept whole). ``prompt_length`` counts the
    prompt's tokens (with the special tokens the tokenizer puts in front)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    examples = []
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        completion = [*completion, *eos]
        room = max_length - len(completion)
        if room < 1:
            raise ValueError(f"a completion of {len(completion)} tokens does not fit task.max_length={max_length}; "
                             f"raise task.max_length")
        prompt = prompt[-room:]
        ids = [*prompt, *completion]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": [IGNORE] * len(prompt) + completion, "prompt_length": len(prompt)})
    return examples


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int) -> dict[str, list[int] | int]:
    """One pair of :func:`encode_pairs`."""
    return encode_pairs(tokenizer, [prompt], [completion], max_length)[0]


# The task object of prompt → completion data: no classes, completion-token metrics
JSONL_TASK = GlueTask("jsonl", "", ("prompt", "completion"), 0, ("token_accuracy", "completion_loss"),
                      "token_accuracy", objective="causal_lm")


def glue_lm_task(task: GlueTask, tokenizer) -> GlueTask:
    """``task`` posed as a language-model task: the same classes and metrics, each class's word as token ids."""
    words = verbalizer(task.name).words
    ids = tuple(tuple(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in words)
    if len(set(ids)) < len(ids) or not all(ids):
        raise ValueError(f"the tokenizer gives the label words {list(words)} of {task.name} the same or no tokens")
    return replace(task, objective="causal_lm", label_word_ids=ids)


def glue_lm_examples(columns: dict[str, list], task: GlueTask, tokenizer, max_length: int) -> list[dict]:
    """The rows of a GLUE split (text fields and ``label``) as prompt ⊕ label word, with ``class_id`` = the label."""
    v = verbalizer(task.name)
    rows = range(len(columns["label"]))
    prompts = [v.template.format(**{f: columns[f][i] for f in task.text_fields}) for i in rows]
    examples = encode_pairs(tokenizer, prompts, [v.words[int(columns["label"][i])] for i in rows], max_length)
    for example, label in zip(examples, columns["label"], strict=True):
        example["class_id"] = int(label)
    return examples


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of x_{t+1} given x_≤t over the positions whose label is not −100."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:].to(shifted.device)
    if not bool((targets != IGNORE).any()):
        raise ValueError("a batch without completion tokens has no loss; check that every example has a completion")
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def completion_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross-entropy, correct argmax predictions, count) over the completion tokens of a batch."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
    mask = targets != IGNORE
    loss = F.cross_entropy(shifted[mask], targets[mask], reduction="sum")
    correct = int((shifted[mask].argmax(-1) == targets[mask]).sum())
    return float(loss), correct, int(mask.sum())


def label_word_scores(logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                      prompt_lengths: Sequence[int], words: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(B, K) log p(word_k | prompt_b) summed over the word's tokens, for the prompts that open each row of
    ``input_ids``. ``logits_of(ids, mask)`` runs the model; rows are right-padded with ``pad_id``."""
    scores = []
    for word in words:
        rows = [[*input_ids[b, :prompt_lengths[b]].tolist(), *word] for b in range(len(prompt_lengths))]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row)
            mask[b, :len(row)] = 1
        logprobs = torch.log_softmax(logits_of(ids, mask).float(), dim=-1).cpu()
        total = torch.zeros(len(rows))
        for b, length in enumerate(prompt_lengths):
            for j, token in enumerate(word):  # token j of the word is predicted at position length + j − 1
                total[b] += logprobs[b, length + j - 1, token]
        scores.append(total)
    return torch.stack(scores, dim=1)
