"""bf16 autocast (``precision``) and length-grouped batches (``group_by_length``) in the shared loop."""

from __future__ import annotations

import pytest
import torch
from test_determinism import TOKENIZER, synthetic_data
from test_methods import tiny_backbone

from nas.engine.logger import NullLogger
from nas.engine.precision import autocast, cpu_bf16_is_native, precision_warning, resolve_precision
from nas.engine.training import LengthGroupedBatches, evaluate, finetune, make_loader
from objectives import get_task


def test_grouped_batches_see_every_example_once_per_pass_and_are_seeded() -> None:
    lengths = [int(n) for n in torch.randint(3, 200, (1003,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(5), window=8)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for batch in batches for i in batch) == list(range(1003))
        assert len(batches) == len(sampler) == 63
    assert first != second  # a new order each pass
    again = LengthGroupedBatches(lengths, 16, torch.Generator().manual_seed(5), window=8)
    assert list(again) == first  # the same seed gives the same passes


def test_grouped_batches_pad_less_than_shuffled_ones() -> None:
    lengths = [int(n) for n in torch.randint(3, 200, (2048,), generator=torch.Generator().manual_seed(1))]

    def padded(batches: list[list[int]]) -> int:
        return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)

    grouped = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0)))
    shuffled = torch.randperm(2048, generator=torch.Generator().manual_seed(0)).split(32)
    assert padded(grouped) < 0.6 * padded([b.tolist() for b in shuffled])


def test_loader_groups_only_when_asked_and_only_for_shuffled_passes() -> None:
    data = synthetic_data(40)
    grouped = make_loader(data, TOKENIZER, 8, True, seed=0, group_by_length=True)
    assert isinstance(grouped.batch_sampler, LengthGroupedBatches)
    assert sum(len(batch["labels"]) for batch in grouped) == 40
    plain = make_loader(data, TOKENIZER, 8, False, seed=0, group_by_length=True)  # evaluation keeps its order
    assert not isinstance(plain.batch_sampler, LengthGroupedBatches)


def test_bad_precision_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="precision=fp16 is unknown; choose one of: auto, fp32, bf16"):
        autocast("cpu", "fp16")


def test_bf16_runs_matmuls_in_bf16_and_keeps_weights_and_grads_fp32() -> None:
    backbone = tiny_backbone()
    layer = backbone.model.bert.encoder.layer[0].attention.self.query
    seen: list[torch.dtype] = []
    layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    params = [p for p in backbone.model.parameters() if p.requires_grad]
    loader = make_loader(synthetic_data(32), TOKENIZER, 8, True, seed=0, group_by_length=True)
    loss = finetune(backbone.model, params, loader, get_task("sst2"), 3, 1e-3, 0.0, 0.0, 1.0, "cpu", NullLogger(),
                    precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in params) and torch.isfinite(torch.tensor(loss))
    metrics = evaluate(backbone.model, make_loader(synthetic_data(16, seed=1), TOKENIZER, 8, False, 0),
                       get_task("sst2"), "cpu", precision="bf16")
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_bf16_loss_is_close_to_fp32() -> None:
    """Same weights, same batch: the bf16 forward agrees with fp32 to bf16's resolution (8 mantissa bits)."""
    backbone = tiny_backbone()
    batch = next(iter(make_loader(synthetic_data(16), TOKENIZER, 16, False, 0)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        full = backbone.model(**inputs).logits
        with autocast("cpu", "bf16"):
            half = backbone.model(**inputs).logits
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, atol=0.05, rtol=0.05) and not torch.equal(half.float(), full)



def test_the_schedule_matches_transformers_linear_warmup_and_decay() -> None:
    from transformers import get_linear_schedule_with_warmup

    from nas.engine.schedule import linear_warmup_decay

    for warmup, total in ((0, 10), (3, 10), (10, 10), (4, 1)):
        ours = linear_warmup_decay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), warmup, total)
        theirs = get_linear_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                                 warmup, total)
        for _ in range(total + 3):
            assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), abs=1e-12)
            ours.optimizer.step(), ours.step(), theirs.optimizer.step(), theirs.step()


AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(AVX2, False), (AVX512_BF16, True), (AMX, True),
                                                 ("processor\t: 0\nFeatures\t: fp asimd\n", None)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool | None) -> None:
    assert cpu_bf16_is_native(cpuinfo) is native


@pytest.mark.parametrize(("device", "precision", "cpuinfo", "warns"), [
    ("cpu", "bf16", AVX2, True),  # emulated bf16: the one case that warns
    ("cpu", "bf16", AVX512_BF16, False),
    ("cpu", "fp32", AVX2, False),
    ("cuda", "bf16", AVX2, False),  # the GPU decides, not the host CPU
    ("cpu", "bf16", "no flags line", False),  # unknown: no warning rather than a wrong one
])
def test_bf16_on_a_cpu_without_bf16_instructions_gets_a_warning_naming_the_fix(
        device: str, precision: str, cpuinfo: str, warns: bool) -> None:
    warning = precision_warning(device, precision, cpuinfo)
    assert (warning is not None) is warns
    if warns:
        assert "precision=fp32" in warning and "avx512_bf16" in warning


@pytest.mark.parametrize(("choice", "device", "cpuinfo", "resolved"), [
    ("auto", "cpu", AVX2, "fp32"),  # no bf16 instructions: autocast would emulate bf16, many times slower
    ("auto", "cpu", AVX512_BF16, "bf16"),
    ("auto", "cpu", AMX, "bf16"),
    ("auto", "cpu", "processor\t: 0\nFeatures\t: fp asimd\n", "fp32"),  # not x86, or unreadable: the safe choice
    ("auto", "mps", AMX, "fp32"),  # neither CPU nor CUDA
    ("fp32", "cpu", AMX, "fp32"),  # an explicit choice is kept
    ("bf16", "cpu", AVX2, "bf16"),  # (and warned about elsewhere)
])
def test_auto_precision_is_bf16_only_where_the_hardware_has_bf16_instructions(
        choice: str, device: str, cpuinfo: str, resolved: str) -> None:
    assert resolve_precision(choice, device, cpuinfo) == resolved


def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, resolved in (((7, 0), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", "cuda:0", AVX2) == resolved
    with pytest.raises(ValueError, match="precision=fp16 is unknown; choose one of: auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
