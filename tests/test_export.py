"""PEFT export: the saved adapter reloads with PeftModel.from_pretrained and gives identical logits."""

from __future__ import annotations

import json

import torch
from conftest import tiny_bert
from peft import PeftModel

from nas.export import export_peft_adapter, head_module_names
from nas.retrain import adapt_selected

HEAD = ["classifier.weight", "classifier.bias"]
SELECTED = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense",
            "bert.encoder.layer.1.attention.output.dense"]


def test_round_trip_through_peft(tmp_path, batch) -> None:
    adapted = tiny_bert(seed=0)
    adapters = adapt_selected(adapted, HEAD, SELECTED, "lora", 4, 8.0, 0.0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.branch.lora_B.normal_()
        adapted.classifier.weight.add_(0.5)
    export_peft_adapter(adapted, tiny_bert(seed=0), SELECTED, HEAD, 4, 8.0, 0.0, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(SELECTED) and config["r"] == 4
    reloaded = PeftModel.from_pretrained(tiny_bert(seed=0), str(tmp_path)).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = adapted.eval()(**inputs).logits
    assert not torch.allclose(expected, tiny_bert(seed=0)(**inputs).logits, atol=1e-4)
    torch.testing.assert_close(reloaded(**inputs).logits, expected)


def test_head_module_names() -> None:
    assert head_module_names(["classifier.weight", "classifier.bias", "pooler.dense.weight"]) == [
        "classifier", "pooler.dense"]
