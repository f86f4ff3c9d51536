"""What every config key does, from the schema's descriptions (:func:`nas.config.doc`): the key listing of
``diffora run --help`` and the committed reference docs/config.md.

    python -m nas.config_docs > docs/config.md     # regenerate it (tests/test_config_docs.py fails while it is stale)
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from nas.config import CONF_DIR, PROJECT_ROOT, config_groups, field_doc, register_configs

DOCS_PATH = PROJECT_ROOT / "docs" / "config.md"
REGENERATE = "python -m nas.config_docs > docs/config.md"
SECTIONS = ("run", "method", "budget", "model", "task", "space", "relaxation", "bilevel", "discretizer", "criterion",
            "retrain", "logger", "paths", "checkpoint")  # "run": the top-level keys
KEY_WIDTH = 44  # the key = value column of --help; longer ones push their description right
SETS_SHOWN = 6  # values an option's yaml sets, listed in docs/config.md before "…"
LOCAL = "local"  # conf/local/: each machine's own overrides (gitignored), left out of docs/config.md


@dataclass(frozen=True)
class Row:
    """One leaf key of a composed config: its value as text, its schema type and description ("" off the schema),
    and a note when the value could not be resolved."""

    key: str
    value: str
    type: str
    doc: str
    note: str = ""


def show(value: Any) -> str:
    """A value as a user writes it on the command line: null, true, 0.98, [a, b], {entropy: 0.1}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return str(value) if value != "" else "''"


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/run.yaml`` composed with ``overrides``, without the hydra node (its ``${now:…}`` and ``${hydra:…}``
    values only exist inside a run)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("run", overrides=overrides, return_hydra_config=False)


def rows(node: DictConfig, resolve: bool = True, prefix: str = "") -> Iterator[Row]:
    """Every leaf key under ``node`` in schema order; ``resolve``: values with interpolations resolved (one that
    cannot be is shown as written, with a note), else as written in the config (``${task.search_steps}``)."""
    schema = OmegaConf.get_type(node)
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    raw = OmegaConf.to_container(node, resolve=False)
    for key in node:
        key = str(key)
        found = fields.get(key)
        if not OmegaConf.is_interpolation(node, key) and not OmegaConf.is_missing(node, key):
            child = node[key]
            if isinstance(child, DictConfig) and (found is None or dataclasses.is_dataclass(OmegaConf.get_type(child))):
                yield from rows(child, resolve, f"{prefix}{key}.")
                continue
        value, note = raw[key], ""
        if resolve and not OmegaConf.is_missing(node, key):
            try:
                value = node[key]
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=True)
            except Exception as error:  # any resolver's failure: the value as written, with a note
                value, note = raw[key], f"[unresolved here: {str(error).splitlines()[0][:80]}]"
        yield Row(f"{prefix}{key}", show(value), str(found.type) if found else "",
                  (field_doc(schema, key) or "") if found else "", note)


def listing(cfg: DictConfig) -> list[str]:
    """``--help``'s lines: ``  bilevel.w_average = 0.98   decay β of …``, a blank line between sections."""
    lines: list[str] = []
    section = None
    for row in rows(cfg):
        head = row.key.split(".")[0] if "." in row.key else None
        if lines and head != section:
            lines.append("")
        section = head
        left = f"{row.key} = {row.value}"
        text = " ".join(t for t in (row.doc, row.note) if t)
        lines.append(f"  {left:<{KEY_WIDTH}}  {text}".rstrip())
    return lines


def option_summary(path: Path) -> tuple[str, str]:
    """(first sentence of the yaml's leading comment, the values it sets) of one config group option."""
    comment: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            comment.append(line.lstrip("#").strip())
    text = " ".join(comment)
    first = re.split(r"(?<! al\.)(?<=[\w)\]]{2}[.!?])\s+", text)[0] if text else ""
    first = first if len(first) <= 160 else first[:159].rsplit(" ", 1)[0] + " …"
    loaded = OmegaConf.load(path)
    chosen = [f"{key.removeprefix('override /')}={value}" for entry in loaded.get("defaults", []) or []
              if isinstance(entry, DictConfig) for key, value in entry.items() if str(key).startswith("override /")]
    body = {k: v for k, v in OmegaConf.to_container(loaded, resolve=False).items() if k not in ("defaults", "hydra")}
    sets = chosen + [f"{key}={show(value)}" for key, value in _flatten(body)]
    more = f", … ({len(sets) - SETS_SHOWN} more)" if len(sets) > SETS_SHOWN else ""
    return first, ", ".join(sets[:SETS_SHOWN]) + more


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _key_table(table: list[Row]) -> list[str]:
    return ["| key | type | default | description |", "|---|---|---|---|",
            *(f"| `{r.key}` | {_code(r.type)} | {_code(r.value)} | {_cell(r.doc)} |" for r in table), ""]


def _options_table(group: str, options: list[str]) -> list[str]:
    lines = [f"Options (`{group}=<option>`, conf/{group}/<option>.yaml):", "",
             "| option | what it is | what it sets |", "|---|---|---|"]
    for option in options:
        text, sets = option_summary(CONF_DIR / group / f"{option}.yaml")
        lines.append(f"| `{option}` | {_cell(text)} | {_code(sets)} |")
    return [*lines, ""]


def render() -> str:
    """docs/config.md: every key of each section with its type, default and description, and each config group's
    options. Defaults are those of ``diffora run`` without overrides (an option's own keys: with that option),
    interpolations as written, so the file is the same on every machine."""

    groups = {group: options for group, options in config_groups(CONF_DIR).items() if group != LOCAL}
    default = compose_config([f"~{LOCAL}"] if (CONF_DIR / LOCAL).is_dir() else [])
    all_rows = list(rows(default, resolve=False))
    run_docs = {f.name: field_doc(OmegaConf.get_type(default), f.name) or "" for f in
                dataclasses.fields(OmegaConf.get_type(default))}
    out = ["# Configuration reference", "",
           f"Generated from the schema (nas/config.py) and conf/ by `{REGENERATE}`; do not edit by hand.",
           "Every key is set on the command line as `diffora run section.key=value`, and every config group as",
           "`diffora run group=option`; `diffora run --help [overrides]` prints the composed config with resolved",
           "values. Defaults are those of `diffora run` without overrides (the group defaults of conf/run.yaml",
           "applied), interpolations as written.", ""]
    for section in SECTIONS:
        out += [f"## {section}", ""]
        if section == "run":
            out += ["The top-level keys (`diffora run seed=1`).", "", *_key_table([r for r in all_rows
                                                                                  if "." not in r.key])]
            continue
        intro = run_docs.get(section, "")
        out += [f"{intro[:1].upper()}{intro[1:]}.", ""]
        base = [r for r in all_rows if r.key.startswith(f"{section}.")]
        out += _key_table(base)
        if section in groups:
            out += _options_table(section, groups[section])
            out += _option_keys(section, groups[section], default, {r.key for r in base})
    others = [g for g in groups if g not in SECTIONS]
    if others:
        out += ["## other config groups", ""]
        for group in others:
            out += [f"### {group}", "", *_options_table(group, groups[group])]
    return "\n".join(out).rstrip() + "\n"


def _option_keys(section: str, options: list[str], default: DictConfig, known: set[str]) -> list[str]:
    """Tables of the keys that only some options' schemas have (method=adalora: target_r, …), valued as the option's
    yaml leaves them: its ``*_schema`` node (Hydra's ConfigStore) merged with the yaml's own values."""
    from hydra.core.config_store import ConfigStore

    base = OmegaConf.get_type(default[section])
    extra: dict[str, tuple[list[str], list[Row]]] = {}
    for option in options:
        loaded = OmegaConf.load(CONF_DIR / section / f"{option}.yaml")
        nodes = [entry for entry in loaded.get("defaults", []) or [] if isinstance(entry, str) and
                 entry.endswith("_schema")]
        if not nodes:
            continue
        schema_node = ConfigStore.instance().load(f"{section}/{nodes[0]}.yaml").node
        schema = OmegaConf.get_type(schema_node)
        if schema is base:
            continue
        body = {k: v for k, v in OmegaConf.to_container(loaded, resolve=False).items() if k != "defaults"}
        cfg = OmegaConf.merge(schema_node, body)
        own = [r for r in rows(cfg, resolve=False, prefix=f"{section}.") if r.key not in known]
        extra.setdefault(getattr(schema, "__name__", str(schema)), ([], own))[0].append(option)
    out: list[str] = []
    for name, (chosen, table) in extra.items():
        which = ", ".join(f"`{section}={o}`" for o in chosen)
        out += [f"With {which} ({name}), also:", "", *_key_table(table)]
    return out


if __name__ == "__main__":
    sys.stdout.write(render())
