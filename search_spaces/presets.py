"""Module-type presets: which linear modules of each model family are LoRA candidates.

A module type is a dotted suffix of a module's in-layer path (see :mod:`search_spaces.space`).
Preset order is the column order of the DAM.
"""

from __future__ import annotations

import torch

_BERT_TYPES: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

MODULE_TYPE_PRESETS: dict[str, tuple[str, ...]] = {
    # BERT and MiniLM (MiniLM checkpoints are model_type "bert").
    "bert": _BERT_TYPES,
    "roberta": _BERT_TYPES,
    # DeBERTa-v2 / v3.
    "deberta": (
        "query_proj",
        "key_proj",
        "value_proj",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    # MPNet (all-mpnet-base-v2): the attention's projections are attention.attn.{q,k,v,o}; output.dense is the FFN's.
    "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense",
              "output.dense"),
    # Llama-style decoders (also Mistral, Qwen2/3, Gemma).
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    # GPT-2 (transformers Conv1D modules).
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}

MODEL_TYPE_TO_PRESET: dict[str, str] = {
    "bert": "bert",
    "electra": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
    "deberta-v2": "deberta",
    "mpnet": "mpnet",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "gpt2": "gpt2",
}


def _presets_listing() -> str:
    return ", ".join(f"{name} {types}" for name, types in MODULE_TYPE_PRESETS.items())


def check_preset(preset: str) -> tuple[str, ...]:
    """Return the module types of a preset name; unknown name -> ValueError listing the presets."""
    if preset not in MODULE_TYPE_PRESETS:
        raise ValueError(
            f"unknown module-type preset {preset!r}; known presets: {_presets_listing()}. "
            "Use preset='auto' to pick one from the model's config, or set space.module_types explicitly."
        )
    return MODULE_TYPE_PRESETS[preset]


def preset_for_model(model: torch.nn.Module) -> str:
    """Name of the preset for ``model`` from ``model.config.model_type``; unknown -> ValueError."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_TYPE_TO_PRESET:
        return MODEL_TYPE_TO_PRESET[model_type]
    known = ", ".join(sorted(MODEL_TYPE_TO_PRESET))
    what = f"model_type {model_type!r}" if model_type else f"{type(model).__name__} (no config.model_type)"
    raise ValueError(
        f"no module-type preset for {what}; model types with a preset: {known}. "
        f"Presets: {_presets_listing()}. "
        "Set space.module_types to the in-layer module names to adapt (e.g. ['q_proj', 'v_proj'])."
    )
