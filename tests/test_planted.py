"""The planted-module task: which modules are planted, the teacher, its targets, and how recovery is judged."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import tiny_bert
from test_determinism import TOKENIZER, synthetic_data

from objectives.planted import (
    PlantedSpec,
    agreement,
    calibrate_effects,
    grouped_auc,
    model_outputs,
    plant_deltas,
    planted_modules,
    precision_at,
    recovery,
    roc_auc,
    standardize_head,
    targets_from,
    teacher_outputs,
)
from search_spaces import build_search_space

HEAD = ["classifier.weight", "classifier.bias"]


def space_of(model: torch.nn.Module):
    return build_search_space(model, "bert")


def test_random_pattern_is_k_modules_fixed_by_the_planted_seed() -> None:
    space = space_of(tiny_bert())
    first = planted_modules(space, PlantedSpec(pattern="random", k=4, seed=3))
    assert len(first) == 4 and set(first) <= set(space.names)
    assert first == planted_modules(space, PlantedSpec(pattern="random", k=4, seed=3))
    assert first != planted_modules(space, PlantedSpec(pattern="random", k=4, seed=4))


def test_grid_pattern_is_module_types_times_layers() -> None:
    space = space_of(tiny_bert())
    chosen = planted_modules(space, PlantedSpec(pattern="grid", module_types=("value", "output.dense"), layers=(1,)))
    assert chosen == ["bert.encoder.layer.1.attention.self.value", "bert.encoder.layer.1.output.dense"]


@pytest.mark.parametrize(("spec", "message"), [
    (dict(pattern="random", k=13), "do not fit a search space of 12"),
    (dict(pattern="grid", module_types=("gate_proj",)), "not in the search space"),
    (dict(pattern="grid", layers=(7,)), "not in the search space"),
    (dict(pattern="grid"), "whole search space"),
])
def test_bad_planted_sets_are_refused_with_the_fix(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        planted_modules(space_of(tiny_bert()), PlantedSpec(**spec))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pattern", "diagonal", "task.pattern='diagonal' is unknown"),
    ("target", "ranking", "task.target='ranking' is unknown"),
    ("size", 0.0, "task.size=0.0 must be a positive"),
])
def test_bad_spec_values_name_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PlantedSpec(**{field: value})


def test_planted_deltas_have_the_asked_rank_and_relative_size() -> None:
    model = tiny_bert()
    names = planted_modules(space_of(model), PlantedSpec(k=3))
    deltas = plant_deltas(model, names, size=0.3, rank=2, seed=0)
    for name, delta in deltas.items():
        weight = model.get_submodule(name).weight
        assert delta.shape == weight.shape
        assert float(delta.norm() / weight.detach().norm()) == pytest.approx(0.3, rel=1e-5)
        singular = torch.linalg.svdvals(delta.double())
        assert float(singular[1] / singular[0]) > 1e-3 > float(singular[2] / singular[0])  # rank 2


def test_teacher_is_the_student_plus_the_deltas_and_leaves_the_student_untouched() -> None:
    model = tiny_bert(num_labels=1)
    data = synthetic_data(16)
    names = planted_modules(space_of(model), PlantedSpec(k=3))
    deltas = plant_deltas(model, names, size=0.5, rank=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = teacher_outputs(model, deltas, data, TOKENIZER, "cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored bit for bit
    reference = tiny_bert(num_labels=1)
    with torch.no_grad():
        for name, delta in deltas.items():
            reference.get_submodule(name).weight.add_(delta)
    torch.testing.assert_close(teacher, model_outputs(reference, data, TOKENIZER, "cpu"))
    change = (teacher - model_outputs(model, data, TOKENIZER, "cpu")).abs().max()
    assert float(change) > 0.05 * float(teacher.std())  # the planted deltas do change the outputs


@pytest.mark.parametrize("target", ["regression", "classification"])
def test_standardized_head_gives_unit_scale_targets_for_teacher_and_student(target: str) -> None:
    model = tiny_bert(num_labels=1 if target == "regression" else 2)
    data = synthetic_data(64)
    names = planted_modules(space_of(model), PlantedSpec(k=3))
    deltas = plant_deltas(model, names, size=0.5, rank=2, seed=0)
    raw = teacher_outputs(model, deltas, data, TOKENIZER, "cpu")
    rescale = standardize_head(model, HEAD, raw, target)
    after = teacher_outputs(model, deltas, data, TOKENIZER, "cpu")
    torch.testing.assert_close(rescale(raw), after, rtol=1e-3, atol=1e-4)  # unit-scale outputs
    if target == "regression":
        assert float(after[:, 0].mean()) == pytest.approx(0.0, abs=1e-4)  # fp32 forward after a ~100x rescale
        assert float(after[:, 0].std()) == pytest.approx(1.0, rel=1e-4)
    else:
        labels = after.argmax(-1)
        assert abs(int(labels.sum()) - 32) <= 1  # the margin is centred at its median: balanced classes


def test_a_vector_target_standardizes_every_output_and_is_judged_per_output() -> None:
    model = tiny_bert(num_labels=6)
    data = synthetic_data(64)
    spec = PlantedSpec(k=3, outputs=6)
    deltas = plant_deltas(model, planted_modules(space_of(model), spec), size=0.5, rank=2, seed=0)
    raw = teacher_outputs(model, deltas, data, TOKENIZER, "cpu")
    rescale = standardize_head(model, HEAD, raw, "regression")
    after = teacher_outputs(model, deltas, data, TOKENIZER, "cpu")
    torch.testing.assert_close(rescale(raw), after, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(after.mean(0), torch.zeros(6), rtol=0, atol=1e-4)
    torch.testing.assert_close(after.std(0), torch.ones(6), rtol=1e-4, atol=0)
    task = spec.task()
    assert task.is_regression and task.multi_output and task.num_labels == 6
    assert spec.label == "planted-random-regressionx6-size0.5"
    targets = targets_from(after, "regression")
    assert len(targets) == 64 and len(targets[0]) == 6
    student = model_outputs(model, data, TOKENIZER, "cpu")  # the untouched student, per-output Pearson r averaged
    expected = sum(float(torch.corrcoef(torch.stack([student[:, j], after[:, j]]))[0, 1]) for j in range(6)) / 6
    assert agreement(student, after, "regression") == pytest.approx(expected, rel=1e-6)


def test_calibrated_deltas_each_move_the_outputs_by_the_asked_effect() -> None:
    model = tiny_bert(num_labels=8)
    data = synthetic_data(64)
    space = space_of(model)
    names = [space.names[2], space.names[5], space.names[-1]]  # an early value, a first FFN output, the last one
    deltas = plant_deltas(model, names, size=0.5, rank=2, seed=0)
    base = model_outputs(model, data, TOKENIZER, "cpu")

    def effect_of(delta_by_name: dict) -> float:
        moved = teacher_outputs(model, delta_by_name, data, TOKENIZER, "cpu")
        return float((moved - base).pow(2).mean().sqrt() / base.std())

    by_size = [effect_of({n: deltas[n]}) for n in names]
    calibrated = calibrate_effects(model, deltas, data, TOKENIZER, "cpu", effect=0.05, rounds=6)
    by_effect = [effect_of({n: calibrated[n]}) for n in names]
    assert max(by_size) / min(by_size) > 3  # equal relative norms do not move the outputs equally
    assert by_effect == pytest.approx([0.05] * 3, rel=0.1)
    query = space.names[0]  # in this random model an early query barely moves anything: refused, with the fix
    with pytest.raises(ValueError, match=f"a delta on {query} moves the outputs by .* lower task.effect"):
        calibrate_effects(model, plant_deltas(model, [query], 0.5, 2, 0), data, TOKENIZER, "cpu", effect=0.5)
    for name in names:  # only the scale changes: the same direction and rank
        ratio = calibrated[name] / deltas[name]
        assert float(ratio.std()) < 1e-4 * float(ratio.abs().mean())
    with pytest.raises(ValueError, match="task.effect=0.0 must be a positive fraction"):
        PlantedSpec(effect=0.0)


def test_a_vector_target_is_refused_for_classification() -> None:
    with pytest.raises(ValueError, match="task.outputs=3 must be .* 1 with task.target=classification"):
        PlantedSpec(target="classification", outputs=3)


def brute_force_auc(scores: dict[str, float], positives: set[str]) -> float:
    pairs = [(scores[p], scores[n]) for p in positives for n in scores if n not in positives]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    scores = {f"m{i}": float(rng.randint(0, 4)) for i in range(12)}  # many ties
    positives = set(rng.sample(sorted(scores), 4))
    assert roc_auc(scores, positives) == pytest.approx(brute_force_auc(scores, positives))


def test_recovery_of_an_oracle_a_reversed_oracle_and_a_selection() -> None:
    order = [f"m{i}" for i in range(8)]
    planted = ["m1", "m4"]
    oracle = {name: float(name in planted) + 0.01 * i for i, name in enumerate(order)}
    reversed_oracle = {name: -value for name, value in oracle.items()}
    result = recovery(["m1", "m2"], planted, order, {"oracle": oracle, "reversed": reversed_oracle}, "oracle")
    assert result["precision"] == 1.0 and result["auc"] == 1.0 and result["chance"] == 0.25  # the criterion's top-|S|
    assert result["selected_precision"] == 0.5 and result["selected_recall"] == 0.5  # the selection it made
    assert result["by_criterion"]["oracle"] == {"precision": 1.0, "auc": 1.0}
    assert result["by_criterion"]["reversed"] == {"precision": 0.0, "auc": 0.0}
    everything = recovery(order, planted, order)  # a method without scores (LoRA on all): judged by its selection
    assert everything["auc"] is None and everything["precision"] == 0.25 and everything["selected_recall"] == 1.0


def test_precision_is_at_the_planted_size_whatever_rho_keeps() -> None:
    """ρ = 0.5 keeps 4 of 8 with 2 planted: a perfect criterion has precision 1 (not 2/4), a selection that holds both
    planted modules has recall 1; a criterion whose top-2 holds one of them has precision 0.5 whatever was kept."""
    order = [f"m{i}" for i in range(8)]
    planted = ["m1", "m4"]
    perfect = {name: float(name in planted) for name in order}
    half = {name: float(name in ("m1", "m2")) + 0.1 * float(name == "m4") for name in order}
    for kept in (["m1", "m4", "m0", "m2"], ["m1", "m4"], ["m1", "m4", "m0", "m2", "m3", "m5"]):
        assert recovery(kept, planted, order, {"dam": perfect}, "dam")["precision"] == 1.0
    result = recovery(["m1", "m2", "m4", "m0"], planted, order, {"dam": half}, "dam")
    assert result["precision"] == 0.5 and result["selected_recall"] == 1.0 and result["selected_precision"] == 0.5


def test_precision_of_a_random_selection_averages_to_chance() -> None:
    order = [f"m{i}" for i in range(9)]
    planted = order[:3]
    picks = list(itertools.combinations(order, 3))
    mean = sum(precision_at(p, planted) for p in picks) / len(picks)
    assert mean == pytest.approx(3 / 9)


def test_auc_within_type_ignores_a_scale_that_differs_by_type() -> None:
    types = {"q0": "q", "q1": "q", "q2": "q", "f0": "ffn", "f1": "ffn", "f2": "ffn"}
    planted = ["q1", "f1"]
    # FFN scores are 100× the query scores, so the global ranking is by type; within each type S ranks first
    scores = {"q0": 0.1, "q1": 0.3, "q2": 0.2, "f0": 10.0, "f1": 30.0, "f2": 20.0}
    result = recovery([], planted, list(types), {"scaled": scores}, module_types=types)["by_criterion"]["scaled"]
    assert result["auc_within_type"] == 1.0 and result["auc"] == 0.75  # q1 loses to both other FFN modules
    assert grouped_auc(scores, {"q1"}, {name: "all" for name in types}) == roc_auc(scores, {"q1"})


def test_a_rho_that_keeps_fewer_modules_than_were_planted_is_refused() -> None:
    from nas.engine.pipeline import check_planted_fits
    from nas.errors import ConfigError

    check_planted_fits(0.25, 36, 9)  # ρ = |S|/N fits exactly
    with pytest.raises(ConfigError, match=r"discretizer.rho=0.2 keeps 8 of 36 modules, fewer than the 9 planted.*0.25"):
        check_planted_fits(0.2, 36, 9)


def test_a_delta_whose_outputs_overflow_is_refused_by_name_not_planted_as_nan() -> None:
    """Before: RMS = NaN made c_m NaN, ``abs(nan) > tolerance`` was False, and NaN deltas were planted."""
    model = tiny_bert(num_labels=4)
    data = synthetic_data(16)
    name = space_of(model).names[-1]
    deltas = {name: torch.full_like(model.get_submodule(name).weight, 1e38)}  # finite, but its outputs overflow
    with pytest.raises(ValueError, match=f"^the planted delta on {name} has a non-finite effect scale .* lower "
                                         f"task.effect or task.size"):
        calibrate_effects(model, deltas, data, TOKENIZER, "cpu", effect=0.05)


@pytest.mark.parametrize(("effect", "poison", "message"), [
    (float("nan"), False, "task.effect=nan must be a positive fraction"),
    (0.05, True, r"have spread std=nan \(non-finite or constant outputs\).*task.effect=null"),
])
def test_a_non_finite_effect_or_spread_is_refused_before_any_delta(effect: float, poison: bool, message: str) -> None:
    model = tiny_bert(num_labels=4)
    if poison:
        with torch.no_grad():
            model.classifier.bias[0] = float("nan")
    deltas = plant_deltas(model, [space_of(model).names[-1]], size=0.5, rank=2, seed=0)
    with pytest.raises(ValueError, match=message):
        calibrate_effects(model, deltas, synthetic_data(16), TOKENIZER, "cpu", effect=effect)
