"""Every schema key explains itself: a one-line description in nas/config.py, printed by `diffora run --help` with
the resolved value, and docs/config.md rendered from the schema (and committed up to date)."""

from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nas.cli import run_help
from nas.config import RunConfig, field_doc, register_configs
from nas.config_docs import DOCS_PATH, REGENERATE, render


def schemas() -> set[type]:
    """RunConfig, every dataclass nested in it, and every node of Hydra's ConfigStore (the group options' schemas)."""
    register_configs()
    found: set[type] = set()
    pending = [RunConfig]
    store = ConfigStore.instance()
    for group in ("method", "relaxation", "discretizer", "task", "criterion"):
        pending += [OmegaConf.get_type(store.load(f"{group}/{name}").node) for name in store.list(group)]
    while pending:
        schema = pending.pop()
        if schema in found:
            continue
        found.add(schema)
        default = schema() if schema is not RunConfig else RunConfig()
        pending += [type(getattr(default, f.name)) for f in dataclasses.fields(schema)
                    if dataclasses.is_dataclass(getattr(default, f.name, None))]
    return found


def test_every_schema_field_has_a_one_line_description() -> None:
    found = schemas()
    assert {"RunConfig", "BilevelConfig", "OptimizerConfig", "AdaLoRAMethodConfig", "PlantedTaskConfig",
            "HardConcreteRelaxationConfig", "CheckpointConfig"} <= {s.__name__ for s in found}
    for schema in found:
        for f in dataclasses.fields(schema):
            text = field_doc(schema, f.name)
            assert text, f"{schema.__name__}.{f.name} has no description: give it one with doc(default, text)"
            assert "\n" not in text and len(text) <= 115, f"{schema.__name__}.{f.name}: one line of ≤ 115 characters"


def test_run_help_prints_every_key_resolved_with_its_description() -> None:
    text = run_help(["task=mrpc", "method=adalora"])
    listing = text.split("the composed config (task=mrpc method=adalora):")[1]
    lines = {line.split(" = ")[0].strip(): line for line in listing.splitlines() if " = " in line}
    assert "decay β of the average of w that the α-steps read" in lines["bilevel.w_average"]
    assert lines["bilevel.w_average"].startswith("  bilevel.w_average = 0.98 ")
    assert lines["bilevel.steps"].startswith("  bilevel.steps = 150 ")  # ${task.search_steps}, resolved
    assert "${" not in lines["paths.glue_dir"] and "${" not in lines["task.data_dir"]
    assert "final average rank" in lines["method.target_r"] and "  method.lr = 0.005 " in lines["method.lr"]
    assert "  task.name = mrpc " in lines["task.name"] and "relaxation.init_mean = -3.0" in listing
    assert "bilevel.alpha_optimizer.lr = 0.03" in listing and "bilevel.alpha_optimizer " not in listing


def test_a_value_that_resolves_only_inside_a_run_is_shown_as_written() -> None:
    listing = run_help(["task.data_dir=${hydra:runtime.cwd}/glue"])
    line = next(line for line in listing.splitlines() if line.strip().startswith("task.data_dir = "))
    assert "${hydra:runtime.cwd}/glue" in line and "[unresolved here:" in line and "GLUE folder" in line


def test_the_committed_config_reference_is_up_to_date() -> None:
    rendered = render()
    assert all(f"## {section}\n" in rendered for section in ("run", "method", "bilevel", "criterion", "checkpoint"))
    assert "| `bilevel.w_average` | `float` | `0.98` | decay β" in rendered
    assert "| `adalora` |" in rendered and "adalora_schema" not in rendered
    assert DOCS_PATH.exists() and DOCS_PATH.read_text(encoding="utf-8") == rendered, \
        f"docs/config.md differs from the schema and conf/; regenerate it: {REGENERATE}"
