"""docs/extending.md runs: its worked example (a criterion in a module outside the package, listed in ``imports``)
drives a planted search end to end and is named by ``diffora aggregate``; its sketches register parts that work;
``import_extensions`` names a module that cannot be imported and the fix."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import compose_run, tiny_batch
from torch import nn

from nas.adapters.cost import module_cost
from nas.adapters.operators import OPERATORS, build_operator
from nas.config import PROJECT_ROOT
from nas.engine.identity import config_identity, is_volatile
from nas.errors import ConfigError
from nas.extensions import import_extensions
from nas.methods import METHODS
from nas.search.criteria import CRITERIA, ScoringInput, score_stage
from nas.search.discretizer import DISCRETIZERS, DiscretizeInput, build_discretizer, top_k
from nas.search.relaxation import RELAXATIONS, build_relaxation
from nas.search.supernet import SuperNet
from nas.validation import validate_run_config
from search_spaces import build_search_space
from search_spaces.candidate import Candidate

GUIDE = PROJECT_ROOT / "docs" / "extending.md"
REGISTRIES = (CRITERIA, METHODS, OPERATORS, RELAXATIONS, DISCRETIZERS)
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def guide_blocks(kind: str) -> dict[str, str]:
    """{file name: code} of every ```python block right after a line ``<!-- <kind>: <file name> -->``."""
    found = re.findall(rf"^<!-- {kind}: (\S+) -->\n```python\n(.*?)^```$", GUIDE.read_text(), re.S | re.M)
    return dict(found)


def with_path(folder: Path) -> dict[str, str]:
    """The environment with ``folder`` first on PYTHONPATH."""
    return {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(folder), ENV.get("PYTHONPATH", "")) if p)}


@pytest.fixture
def guide_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The guide's example and sketches written to ``tmp_path`` and importable; whatever gets registered while the
    test runs is removed after it, and so are the imported modules (other tests list the registries)."""
    written = {**guide_blocks("example"), **guide_blocks("sketch")}
    for name, code in written.items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {id(registry): set(registry.names()) for registry in REGISTRIES}
    yield tmp_path
    for registry in REGISTRIES:
        for added in set(registry.names()) - before[id(registry)]:
            del registry._entries[added]
    for name in written:
        sys.modules.pop(name.removesuffix(".py"), None)


def test_the_guide_has_the_example_and_a_sketch_of_every_other_kind() -> None:
    assert list(guide_blocks("example")) == ["my_criteria.py"]
    assert set(guide_blocks("sketch")) == {"my_method.py", "my_operator.py", "my_relaxation.py", "my_discretizer.py"}


# --- import_extensions ------------------------------------------------------------------------------------------
def test_import_extensions_imports_each_listed_module_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    (tmp_path / "first_ext_for_test.py").write_text("ORDER = ['first']\n")
    (tmp_path / "second_ext_for_test.py").write_text("import first_ext_for_test\nfirst_ext_for_test.ORDER += "
                                                     "['second']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        modules = import_extensions(["first_ext_for_test", "second_ext_for_test"])
        assert [m.__name__ for m in modules] == ["first_ext_for_test", "second_ext_for_test"]
        assert modules[0].ORDER == ["first", "second"]
        assert import_extensions([]) == []
    finally:
        for name in ("first_ext_for_test", "second_ext_for_test"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize(("name", "missing"), [("no_such_module_for_test", "no_such_module_for_test"),
                                               ("no_such_lab_for_test.criteria", "no_such_lab_for_test")])
def test_a_missing_module_is_a_config_error_naming_it_and_the_fix(name: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=rf"imports: module {re.escape(name)} cannot be imported \(no module named "
                                          rf"{missing}\); is it on PYTHONPATH .* or installed\?"):
        import_extensions([name])


@pytest.mark.parametrize("name", ["my_criteria.py", "lab/my_criteria.py", ""])
def test_a_file_path_is_refused_with_the_module_name_to_list(name: str) -> None:
    with pytest.raises(ConfigError, match=r"not a module name; list the module as for `import` \(e\.g\. imports=\["
                                          r"(my_criteria|my_module)\]\) and put its folder on PYTHONPATH"):
        import_extensions([name])


@pytest.mark.parametrize(("code", "match"), [
    ("raise RuntimeError('half written')\n", r"failed while it was imported \(RuntimeError: half written\)"),
    ("import no_such_dependency_for_test\n", r"needs no_such_dependency_for_test, which is not installed"),
    ("from nas.search.criteria import CRITERIA, Criterion\n"
     "CRITERIA.register('dam')(Criterion('init', lambda inputs: {}))\n", r"criterion 'dam' is registered twice"),
])
def test_a_module_that_fails_while_imported_is_named_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      code: str, match: str) -> None:
    (tmp_path / "broken_ext_for_test.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=rf"imports: module broken_ext_for_test .*{match}"):
            import_extensions(["broken_ext_for_test"])
    finally:
        sys.modules.pop("broken_ext_for_test", None)


def test_imports_is_part_of_the_run_identity() -> None:
    assert not is_volatile("imports")
    plain, extended = (config_identity(compose_run(o)) for o in ([], ["imports=[my_lab.criteria,my_criteria]"]))
    assert plain["imports"] == [] and extended["imports"] == ["my_lab.criteria", "my_criteria"]


@pytest.mark.slow
def test_a_run_refuses_a_module_it_cannot_import_before_any_work(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), "logger=none",
                             "imports=[no_such_module_for_test]", f"hydra.run.dir={run_dir}"],
                            capture_output=True, text=True, timeout=300, env=ENV, cwd=PROJECT_ROOT)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("diffora: error: imports: module no_such_module_for_test cannot be imported"), last
    assert not (run_dir / "selection.json").exists() and not (run_dir / "fingerprint.json").exists()
    assert "no_such_module_for_test" in (run_dir / "FAILED").read_text()  # the folder says why


# --- the worked example, in this process -------------------------------------------------------------------------
def tiny_supernet() -> SuperNet:
    from conftest import tiny_bert

    model = tiny_bert()
    return SuperNet(model, build_search_space(model, "bert"), build_relaxation("sigmoid"),
                    ["classifier.weight", "classifier.bias"], rank=2, generator=torch.Generator().manual_seed(0))


def test_the_example_scores_one_over_the_depth_from_the_output(guide_modules: Path) -> None:
    import_extensions(["my_criteria"])
    net = tiny_supernet()  # 2 layers of 6 modules: layer 0 scores 1/2, layer 1 scores 1
    scores = score_stage("init", ["inverse_depth"], ScoringInput(net, lambda o, b: o.logits.sum(), [], 0))
    assert scores["inverse_depth"] == {c.name: [0.5, 1.0][c.layer] for c in net.space}
    assert CRITERIA.get("inverse_depth").stage == "init" and not CRITERIA.get("inverse_depth").needs_search


def test_validation_knows_the_example_once_it_is_imported(guide_modules: Path) -> None:
    cfg = compose_run(["imports=[my_criteria]", "criterion.name=inverse_depth", "criterion.record=[dam,inverse_depth]"])
    with pytest.raises(ConfigError, match="criterion=inverse_depth is unknown; choose one of: branch_norm"):
        validate_run_config(cfg)
    import_extensions(cfg.imports)
    validate_run_config(cfg)


def test_a_conf_folder_of_ones_own_selects_the_example_as_a_group_option(guide_modules: Path) -> None:
    conf = guide_modules / "my_conf" / "criterion"
    conf.mkdir(parents=True)
    yaml = re.search(r"```yaml\n(# conf/criterion/inverse_depth\.yaml.*?)```", GUIDE.read_text(), re.S)
    assert yaml is not None, "the guide's yaml for conf/criterion/inverse_depth.yaml is gone"
    (conf / "inverse_depth.yaml").write_text(yaml.group(1))
    cfg = compose_run([f"hydra.searchpath=[file://{conf.parent}]", "imports=[my_criteria]", "criterion=inverse_depth"])
    assert cfg.criterion.name == "inverse_depth" and cfg.criterion.batches == 8  # the schema's defaults fill the rest
    import_extensions(cfg.imports)
    validate_run_config(cfg)


# --- the sketches ------------------------------------------------------------------------------------------------
def test_the_operator_sketch_is_the_lora_its_factors_say_and_is_priced_by_its_parameters(guide_modules: Path) -> None:
    import_extensions(["my_operator"])
    branch = build_operator("scaled_lora", 6, 5, rank=3, alpha=6.0, dropout=0.0, operator_args={"init_scale": 0.5})
    with torch.no_grad():
        nn.init.normal_(branch.lora_B)
        x = torch.randn(4, 6)
        a, b = branch.lora_factors()
        assert torch.allclose(branch(x), x @ (b @ a).T, atol=1e-6)  # ΔW = B A exactly
        before = branch(x)
        branch.scale_output_(0.25)
        assert torch.allclose(branch(x), 0.25 * before, atol=1e-6)
        branch.reset_parameters()
        assert torch.equal(branch(x), torch.zeros(4, 5)) and torch.all(branch.scale == 0.5)
    assert module_cost(Candidate("m", 0, "t", 6, 5), "scaled_lora", 3, {"init_scale": 0.5}) == 3 * (6 + 5) + 3
    with pytest.raises(ConfigError, match="does not take; it accepts: init_scale"):
        build_operator("scaled_lora", 6, 5, 3, 6.0, 0.0, {"scale": 1.0})


def test_the_relaxation_sketch_is_a_tempered_sigmoid_with_a_checked_option(guide_modules: Path) -> None:
    import_extensions(["my_relaxation"])
    logits = torch.tensor([[-1.0, 0.0], [1.0, 2.0]], requires_grad=True)
    gates = build_relaxation("tempered_sigmoid", temperature=0.5).weights(logits, training=True)
    assert torch.allclose(gates, torch.sigmoid(2 * logits)) and gates.requires_grad
    with pytest.raises(ConfigError, match=r"relaxation.temperature=0 must be > 0"):
        build_relaxation("tempered_sigmoid", temperature=0)
    cfg = compose_run(["imports=[my_relaxation]", "relaxation.name=tempered_sigmoid", "+relaxation.temperature=0.5"])
    validate_run_config(cfg)
    assert cfg.relaxation.temperature == 0.5


def test_the_discretizer_sketch_keeps_exactly_k_with_ties_to_the_earlier_module(guide_modules: Path) -> None:
    import_extensions(["my_discretizer"])
    space = tiny_supernet().space
    names = list(space.names)
    scores = {name: float(i % 3) for i, name in enumerate(names)}  # 0, 1, 2, 0, 1, 2, ...
    cfg = compose_run(["imports=[my_discretizer]", "discretizer.name=exact_k", "+discretizer.k=3"])
    validate_run_config(cfg)
    discretize = build_discretizer({"name": "exact_k", "rho": 0.5, "k": 3})
    assert discretize(DiscretizeInput(scores, space)) == [names[2], names[5], names[8]]
    with pytest.raises(ConfigError, match=r"discretizer.k=0 must be a positive integer"):
        build_discretizer({"name": "exact_k", "rho": 0.5, "k": 0})


def test_the_method_sketch_puts_lora_on_the_last_layers_only(guide_modules: Path, tmp_path: Path) -> None:
    from test_methods import context, trainable

    import_extensions(["my_method"])
    ctx, backbone = context(tmp_path, ["imports=[my_method]", "method.name=last_layers", "+method.layers=1"])
    validate_run_config(ctx.cfg)
    prepared = METHODS.get("last_layers")().prepare(ctx, backbone)
    assert prepared.selected == [c.name for c in ctx.space if c.layer == 1]  # the tiny BERT's last layer
    assert trainable(prepared.model) == sum(4 * (c.in_features + c.out_features) for c in ctx.space
                                            if c.layer == 1) + 32 * 2 + 2  # LoRA r=4 on 6 modules + the head
    assert json.loads((tmp_path / "selection.json").read_text())["selected"] == prepared.selected
    output = prepared.model(**{k: v for k, v in tiny_batch().items() if k != "labels"}).logits
    assert output.shape == (4, 2) and bool(torch.isfinite(output).all())


# --- the worked example, end to end ------------------------------------------------------------------------------
# A short planted search: the smoke sizes, shorter still, and no calibration of the planted deltas (task.effect=null).
# threads=1: on 2 busy cores two torch threads made it twice as slow (62 s against 30 s); threads is volatile.
SHORT = ["task=planted", "debug=smoke", "logger=none", "retrain.export_adapter=false", "task.effect=null",
         "task.max_train_samples=128", "task.max_eval_samples=32", "bilevel.steps=3", "retrain.steps=2",
         "criterion.batches=1", "threads=1"]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's command: a planted search driven by the example criterion, imported from outside the package."""
    folder = tmp_path_factory.mktemp("example")
    for name, code in guide_blocks("example").items():
        (folder / name).write_text(code)
    run_dir = folder / "runs" / "run"
    command = [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), *SHORT, "imports=[my_criteria]",
               "criterion.name=inverse_depth", "criterion.record=[dam,inverse_depth]", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=with_path(folder),
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.integration
def test_a_planted_search_driven_by_the_example_gets_its_known_answer(example_run: Path) -> None:
    selection = json.loads((example_run / "selection.json").read_text())
    metrics = json.loads((example_run / "metrics.json").read_text())
    rows = {name: row for name, (row, _) in selection["coordinates"].items()}
    names, depth = list(rows), len(selection["layers"])
    assert depth == 6 and len(names) == 36  # MiniLM: 6 layers × 6 module types
    scores = selection["criteria"]["inverse_depth"]
    assert selection["criterion"] == "inverse_depth" and set(selection["criteria"]) == {"inverse_depth", "dam"}
    assert all(math.isclose(scores[name], 1 / (depth - rows[name])) for name in names)
    by_layer = [sorted({scores[n] for n in names if rows[n] == row}) for row in range(depth)]
    assert all(len(values) == 1 for values in by_layer) and by_layer == sorted(by_layer)  # ties within, rising across
    assert selection["selected"] == [name for name in names if rows[name] >= 3]  # ⌈0.5·36⌉ = 18: layers 3, 4, 5

    recovery, planted = metrics["recovery"], metrics["recovery"]["planted"]
    assert recovery["criterion"] == "inverse_depth" and set(recovery["by_criterion"]) == {"inverse_depth", "dam"}
    top = [name for name in names if rows[name] == 4][:3] + [name for name in names if rows[name] == 5]
    assert top == top_k(scores, names, len(planted))  # the guide's T: the first 3 modules of layer 4, and layer 5
    assert recovery["by_criterion"]["inverse_depth"]["precision"] == len(set(top) & set(planted)) / len(planted)
    assert recovery["selected_recall"] == len(set(selection["selected"]) & set(planted)) / len(planted)
    assert json.loads((example_run / "fingerprint.json").read_text())["config"]["imports"] == ["my_criteria"]


@pytest.mark.slow
@pytest.mark.integration
def test_aggregate_names_the_example_criterion(example_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "aggregate"
    result = subprocess.run([sys.executable, "-m", "nas.cli", "aggregate", str(example_run.parent), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=ENV, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    table = summary[summary.index("Recovery by criterion"):]
    assert re.search(r"^\| diffora \| .* \| inverse_depth \| 1 \|", table, re.M), table
