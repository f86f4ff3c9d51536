"""Every method's deployable artifact: a plain PEFT LoRA adapter (full fine-tuning: the whole model) that loads with
PEFT or transformers alone and gives the trained model's logits; ``diffora export`` and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from peft import PeftModel
from test_methods import TOKENIZER, context, tiny_backbone, train
from transformers import AutoModelForSequenceClassification

from nas.adapters.export import export_adapter, export_run, head_module_names, lora_factors, rank_config
from nas.adapters.retrain import adapt_selected
from nas.engine.pipeline import export_trained
from nas.engine.training import make_loader
from nas.errors import ConfigError
from nas.methods import METHODS

HEAD = ["classifier.weight", "classifier.bias"]
CASES = [  # method, overrides, PEFT ranks expected to differ by module
    ("lora", ["method.rank=3"], False),
    ("random", ["discretizer.rho=0.5"], False),
    ("diffora", ["bilevel.steps=3", "bilevel.batch_size=8", "discretizer.rho=0.5"], False),
    ("prolora", [], False),
    ("sora", ["method.xi=0.05", "method.sparse_lambda=100", "retrain.lr=1e-2", "retrain.steps=12"], True),
    ("adalora", ["method.target_r=2", "method.init_r=4", "retrain.steps=12", "method.tinit=2",
                 "method.tfinal=2", "method.deltaT=1"], True),
]


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def trained(tmp_path: Path, method: str, overrides: list[str]):
    ctx, backbone = context(tmp_path, [f"method={method}", *overrides])
    prepared = METHODS.get(method)().prepare(ctx, backbone)
    train(ctx, prepared)
    METHODS.get(method)().finalize(ctx, prepared)
    batch = next(iter(make_loader(ctx.data.dev, TOKENIZER, 16, False, 0)))
    return prepared, backbone, {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize(("method", "overrides", "mixed_ranks"), CASES, ids=[c[0] for c in CASES])
def test_every_method_exports_a_peft_lora_with_the_trained_logits(tmp_path: Path, method: str,
                                                                   overrides: list[str], mixed_ranks: bool) -> None:
    prepared, backbone, inputs = trained(tmp_path, method, overrides)
    export_trained(prepared, backbone, tmp_path, "tiny", 0.0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == ["classifier"]
    assert bool(config["rank_pattern"]) == mixed_ranks and config["alpha_pattern"] == config["rank_pattern"]
    if method in ("lora", "random", "diffora", "prolora"):
        assert sorted(config["target_modules"]) == sorted(prepared.selected)
    reloaded = PeftModel.from_pretrained(tiny_backbone().model, str(tmp_path / "adapter"))
    expected = logits(prepared.model, inputs)
    assert not torch.allclose(expected, logits(tiny_backbone().model, inputs), atol=1e-4)  # the adapter matters
    torch.testing.assert_close(logits(reloaded, inputs), expected, rtol=0, atol=1e-5)
    ranks = {n.removeprefix("base_model.model."): m.lora_A["default"].weight.shape[0]
             for n, m in reloaded.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert ranks == {n: a.shape[0] for n, (a, _) in lora_factors(prepared.model).items()}


def test_full_finetuning_exports_the_whole_model(tmp_path: Path) -> None:
    prepared, backbone, inputs = trained(tmp_path, "full_ft", [])
    export_trained(prepared, backbone, tmp_path, "tiny", 0.0)
    assert not (tmp_path / "adapter").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(logits(reloaded, inputs), logits(prepared.model, inputs), rtol=0, atol=1e-5)


def finished_run(tmp_path: Path) -> tuple[Path, torch.nn.Module, dict[str, torch.Tensor]]:
    """A run folder as a finished LoRA run leaves it, on a tiny BERT saved as a local base model."""
    base = tmp_path / "base"
    tiny_backbone().model.save_pretrained(base)
    TOKENIZER.save_pretrained(base)
    (tmp_path / "work").mkdir()
    prepared, _, inputs = trained(tmp_path / "work", "lora", [])
    run = tmp_path / "run"
    export_adapter(prepared.model, HEAD, run / "adapter", str(base))
    (run / "metrics.json").write_text(json.dumps({"model": str(base), "num_labels": 2}))
    return run, prepared.model, inputs


def test_export_merge_writes_a_model_that_transformers_loads_alone(tmp_path: Path) -> None:
    run, model, inputs = finished_run(tmp_path)
    export_run(run, tmp_path / "merged", merge=True)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, inputs), logits(model, inputs), rtol=0, atol=1e-5)
    export_run(run, tmp_path / "plain")  # without --merge: the adapter itself
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["adapter_config.json",
                                                                      "adapter_model.safetensors"]


def test_export_refuses_unfinished_failed_and_adapterless_runs_and_a_full_folder(tmp_path: Path) -> None:
    run, _, _ = finished_run(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not an empty folder; choose a new or empty folder"):
        export_run(run, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (run / "FAILED").write_text("NonFiniteError: train step 3: the loss is nan\n")
    with pytest.raises(ConfigError, match="is a failed run \\(NonFiniteError: train step 3"):
        export_run(run, tmp_path / "out")
    (run / "FAILED").unlink()
    (run / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="has no metrics.json, so the run did not finish; .*resume=true"):
        export_run(run, tmp_path / "out")
    (run / "metrics.json").write_text("{}")
    for path in (run / "adapter").iterdir():
        path.unlink()
    (run / "adapter").rmdir()
    with pytest.raises(ConfigError, match="holds no adapter/ .* retrain.export_adapter=true"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_rank_pattern_peft_cannot_represent_is_refused() -> None:
    assert rank_config({"a.q": 4, "a.k": 4, "b.q": 2}) == (4, {"b.q": 2})
    with pytest.raises(ConfigError, match="cannot be represented by PEFT: the key 'layer.1.q' also matches "
                                          "\\['enc.layer.1.q'\\]"):
        rank_config({"layer.1.q": 2, "enc.layer.1.q": 4, "enc.layer.2.q": 4})


def test_a_model_whose_every_rank_was_pruned_has_nothing_to_export(tmp_path: Path) -> None:
    model = tiny_bert()
    adapters = adapt_selected(model, HEAD, ["bert.encoder.layer.0.attention.self.query"], "sora", 2, 4.0, 0.0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.branch.gate.zero_()
    with pytest.raises(ConfigError, match="no adapter with a non-zero rank .* lower method.sparse_lambda"):
        export_adapter(model, HEAD, tmp_path / "adapter")


def test_a_fixed_gate_is_folded_into_the_exported_factors(batch) -> None:
    model = tiny_bert()
    name = "bert.encoder.layer.1.output.dense"
    adapter = adapt_selected(model, HEAD, [name], "lora", 4, 8.0, 0.0)[name]
    with torch.no_grad():
        adapter.branch.lora_B.normal_()
    adapter.gate = torch.tensor(0.3)
    a, b = lora_factors(model)[name]
    x = torch.randn(5, a.shape[1])
    torch.testing.assert_close(x @ (b @ a).T, 0.3 * adapter.branch(x), rtol=1e-5, atol=1e-6)


def test_head_module_names() -> None:
    assert head_module_names(["classifier.weight", "classifier.bias", "pooler.dense.weight"]) == [
        "classifier", "pooler.dense"]
