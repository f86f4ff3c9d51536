"""The inputs every candidate module receives on the real tokens of some batches (nas/search/module_inputs.py)."""

from __future__ import annotations

import pytest
import torch
from test_branch_init import batch, tiny_supernet

from nas.search.module_inputs import visit_module_inputs


def test_every_module_is_visited_once_per_batch_with_its_input_on_real_tokens_only_and_the_mode_is_restored() -> None:
    net, data = tiny_supernet(), batch()
    net.train()
    seen: dict[str, list[torch.Tensor]] = {}
    visit_module_inputs(net, [data, data], lambda name, rows: seen.setdefault(name, []).append(rows))
    assert net.training and set(seen) == set(net.adapters) and all(len(v) == 2 for v in seen.values())
    real = int(data["attention_mask"].sum())
    assert all(rows.shape[0] == real for v in seen.values() for rows in v)
    with torch.no_grad():
        net.eval()
        embeddings = net.model.bert.embeddings(input_ids=data["input_ids"])[data["attention_mask"].bool()]
    assert torch.allclose(seen["bert.encoder.layer.0.attention.self.query"][0], embeddings)
    widths = {name: rows[0].shape[1] for name, rows in seen.items()}
    assert widths["bert.encoder.layer.0.output.dense"] == net.model.config.intermediate_size


def test_without_a_mask_every_token_counts_and_full_precision_turns_a_callers_autocast_off() -> None:
    net, data = tiny_supernet(), batch()
    unmasked = {"input_ids": data["input_ids"], "labels": data["labels"]}
    dtypes: dict[str, torch.dtype] = {}
    counts: dict[str, int] = {}

    def record(name: str, rows: torch.Tensor) -> None:
        dtypes[name], counts[name] = rows.dtype, rows.shape[0]

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        visit_module_inputs(net, [unmasked], record, full_precision=True)
        assert set(dtypes.values()) == {torch.float32}
        visit_module_inputs(net, [unmasked], record)
        assert torch.bfloat16 in set(dtypes.values())  # the caller's autocast is kept where not asked otherwise
    assert set(counts.values()) == {data["input_ids"].numel()}


def test_no_batches_is_refused_with_the_setting_to_change() -> None:
    with pytest.raises(ValueError, match="criterion.batches"):
        visit_module_inputs(tiny_supernet(), [], lambda name, rows: None)
