"""A deployable artifact from every method: a plain PEFT LoRA adapter (or, for full fine-tuning, the whole model).

Every adapter diffora trains is a low-rank ΔW = B A on some modules, whatever its parametrization:

    LoRA, DiffoRA, random selection:  ΔW = γ·(α/r)·B A                 (γ: a fixed gate, 1 when absent)
    PRoLoRA:                          ΔW = (α/r)·B A with A, B materialized from the shared, rotated chunks
    SoRA:                             ΔW = (α/r)·B diag(g) A, ranks with g = 0 dropped
    AdaLoRA (peft):                   ΔW = α/(r_num + 1e-5) · P diag(λ) Q, ranks with λ = 0 dropped

so each module m becomes PEFT LoRA factors (A_m ∈ ℝ^{r_m×in}, B_m ∈ ℝ^{out×r_m}) with every scale folded into
B_m (:func:`lora_factors`). The adapter is written as PEFT writes it (``adapter_config.json`` with r, and
``rank_pattern``/``alpha_pattern`` for modules of another rank, α_m = r_m so that PEFT's scaling α_m/r_m is 1;
``adapter_model.safetensors``; the head in ``modules_to_save``) straight from the trained model in memory, without
loading the base model again. It loads with ``PeftModel.from_pretrained(base, folder)`` alone; ``tests/
test_export.py`` checks the logits of every method's export against the trained model.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nas.adapters.operators import AdaptedLinear
from nas.errors import ConfigError

PEFT_PREFIX = "base_model.model."
ADAPTER_DIR, MODEL_DIR = "adapter", "model"


def head_module_names(head_parameter_names: list[str]) -> list[str]:
    """``classifier.weight`` → ``classifier`` (unique, in order)."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in head_parameter_names))


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT model (``model`` itself otherwise)."""
    from peft import PeftModel  # peft is imported only where it is used: it takes seconds to import

    return model.base_model.model if isinstance(model, PeftModel) else model


@torch.no_grad()
def lora_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name → (A, B) with ΔW = B A exactly (every scale and gate folded into B); modules whose rank is 0 are
    left out. Branches give their own factors (``branch.lora_factors()``); peft's AdaLoRA layers are read here."""
    from peft.tuners.adalora import AdaLoraLayer

    factors = {}
    for name, module in unwrap(model).named_modules():
        if isinstance(module, AdaptedLinear):
            a, b = module.branch.lora_factors()
            if module.gate is not None:
                b = b * module.gate.detach().to(b)
        elif isinstance(module, AdaLoraLayer):
            keep = module.lora_E["default"].detach().flatten() != 0
            a = (module.lora_A["default"] * module.lora_E["default"])[keep]
            b = module.lora_B["default"][:, keep] * (module.scaling["default"] / (module.ranknum["default"] + 1e-5))
        else:
            continue
        if a.shape[0] > 0:
            factors[name] = (a.detach().float().contiguous(), b.detach().float().contiguous())
    return factors


def rank_config(ranks: dict[str, int]) -> tuple[int, dict[str, int]]:
    """(r, rank_pattern): the most common rank, and every module of another rank. PEFT reads a rank_pattern key as
    a pattern that matches a module name's end; a key that would match another adapted module cannot say which
    rank is meant, and is refused."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: rank for name, rank in ranks.items() if rank != r}
    for key in pattern:
        clashes = [n for n in ranks if n != key and re.match(rf"(.*\.)?({key})$", n)]
        if clashes:
            raise ConfigError(f"the adapter's rank pattern cannot be represented by PEFT: the key {key!r} also "
                              f"matches {clashes}; export with uniform ranks (e.g. method=lora) or rename the modules")
    return r, pattern


def export_adapter(model: nn.Module, head_parameter_names: list[str], folder: Path, base_model: str | None = None,
                   dropout: float = 0.0,
                   factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, int]:
    """Write ``model``'s adapters and head to ``folder`` in PEFT's LoRA format; returns the rank of every module.
    ``factors``: :func:`lora_factors` of ``model`` when the caller has them already.

    A model with no adapter left (e.g. every SoRA gate closed) has nothing PEFT can load: a ConfigError."""
    factors = lora_factors(model) if factors is None else factors
    if not factors:
        raise ConfigError("the trained model has no adapter with a non-zero rank (e.g. every SoRA gate is zero), "
                          "so there is no LoRA to export; lower method.sparse_lambda or method.xi")
    ranks = {name: a.shape[0] for name, (a, _) in factors.items()}
    r, pattern = rank_config(ranks)
    from peft import LoraConfig

    inner = unwrap(model)
    conv1d = any(type(getattr(inner.get_submodule(n), "base_layer", None)).__name__ == "Conv1D" for n in factors)
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=dropout, target_modules=sorted(factors),
                        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores W transposed; A and B are the same
                        rank_pattern=pattern, alpha_pattern=dict(pattern),
                        modules_to_save=head_module_names(head_parameter_names) or None,
                        base_model_name_or_path=base_model, inference_mode=True)
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
    for name in head_parameter_names:
        tensors[PEFT_PREFIX + name] = inner.get_parameter(name).detach().float().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return ranks


def export_full_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """Full fine-tuning has no adapter: the whole model (and its tokenizer) in transformers' format."""
    unwrap(model).save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def finished_run(run_dir: Path) -> dict:
    """``run_dir``'s metrics.json; an unfinished or failed run, or one that wrote nothing to export, is a
    ConfigError naming the fix."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder; pass the folder that holds the run's metrics.json")
    if (run_dir / "FAILED").exists():
        reason = (run_dir / "FAILED").read_text().strip()
        raise ConfigError(f"{run_dir} is a failed run ({reason}); fix it and run it again before exporting")
    if not (run_dir / "metrics.json").exists():
        raise ConfigError(f"{run_dir} has no metrics.json, so the run did not finish; finish it (the same command "
                          f"with resume=true continues from its last checkpoint) before exporting")
    if not any((run_dir / d).is_dir() for d in (ADAPTER_DIR, MODEL_DIR)):
        raise ConfigError(f"{run_dir} holds no {ADAPTER_DIR}/ (it ran with retrain.export_adapter=false); run it "
                          f"again with retrain.export_adapter=true")
    return json.loads((run_dir / "metrics.json").read_text())


def export_run(run_dir: Path, out_dir: Path, merge: bool = False) -> Path:
    """``diffora export``: a finished run's adapter (or full model) copied to ``out_dir``; with ``merge``, the base
    model with the adapter merged in, which ``AutoModelForSequenceClassification.from_pretrained`` loads alone."""
    result = finished_run(run_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} is not an empty folder; choose a new or empty folder (nothing is overwritten)")
    if (run_dir / MODEL_DIR).is_dir():  # full fine-tuning: already a whole model
        shutil.copytree(run_dir / MODEL_DIR, out_dir, dirs_exist_ok=True)
        return out_dir
    if not merge:
        shutil.copytree(run_dir / ADAPTER_DIR, out_dir, dirs_exist_ok=True)
        return out_dir
    from peft import PeftModel

    from nas.engine.backbone import load_backbone

    if "model" not in result or "num_labels" not in result:
        raise ConfigError(f"{run_dir}/metrics.json does not name its base model (a run from an older diffora); "
                          f"merge by hand with PeftModel.from_pretrained(base, '{run_dir / ADAPTER_DIR}')"
                          f".merge_and_unload()")
    adapter_config = json.loads((run_dir / ADAPTER_DIR / "adapter_config.json").read_text())
    objective = result.get("objective", "head")
    backbone = load_backbone(result["model"], int(result["num_labels"]), adapter_config.get("modules_to_save"),
                             objective=objective, pad_token="eos" if objective == "causal_lm" else None)
    merged = PeftModel.from_pretrained(backbone.model, str(run_dir / ADAPTER_DIR)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    backbone.tokenizer.save_pretrained(str(out_dir))
    return out_dir
