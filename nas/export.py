"""Export a retrained selection in PEFT's adapter format (``adapter_config.json`` + safetensors).

The exported LoRA has ``target_modules`` = the selected full module names (never a regex), rank r, α and
dropout as searched, and the task head in ``modules_to_save``; it loads with plain
``PeftModel.from_pretrained(base_model, folder)``. Only the ``lora`` operator has a PEFT equivalent.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from nas.operators import AdaptedLinear


def head_module_names(head_parameter_names: list[str]) -> list[str]:
    """``classifier.weight`` → ``classifier`` (unique, in order)."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in head_parameter_names))


def selection_to_lora_config(selected: list[str], rank: int, alpha: float, dropout: float,
                             head_modules: list[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(selected),
                      modules_to_save=head_modules or None)


def export_peft_adapter(adapted: nn.Module, base: nn.Module, selected: list[str], head_parameter_names: list[str],
                        rank: int, alpha: float, dropout: float, folder: Path) -> PeftModel:
    """Copy the LoRA branches of ``adapted`` and its head into a PEFT model built on ``base``; save it."""
    config = selection_to_lora_config(selected, rank, alpha, dropout, head_module_names(head_parameter_names))
    peft_model = get_peft_model(base, config)
    inner = peft_model.base_model.model
    wrapped = {name for name, module in inner.named_modules() if hasattr(module, "lora_A")}
    if wrapped != set(selected):
        raise RuntimeError(f"PEFT wrapped {sorted(wrapped ^ set(selected))} differently from the selection")
    with torch.no_grad():
        for name in selected:
            ours: AdaptedLinear = adapted.get_submodule(name)
            theirs = inner.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(ours.branch.lora_A)
            theirs.lora_B["default"].weight.copy_(ours.branch.lora_B)
        for parameter_name in head_parameter_names:
            module_name, _, attribute = parameter_name.rpartition(".")
            target = inner.get_submodule(module_name).modules_to_save["default"]
            getattr(target, attribute).copy_(adapted.get_parameter(parameter_name))
    peft_model.save_pretrained(str(folder))
    return peft_model
