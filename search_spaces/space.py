"""Search space of LoRA candidate sites in a Hugging Face transformer, laid out as the DAM matrix.

Semantics:

* A *linear module* is a ``torch.nn.Linear`` (weight ``(out, in)``) or a ``transformers.pytorch_utils.Conv1D``
  (GPT-2; weight ``(in, out)``). ``in_features``/``out_features`` are read accordingly.
* *Layer index*: the first component of a module's dotted name that is an integer whose parent module is a
  ``torch.nn.ModuleList`` (found through the module tree, not by container names), e.g. ``3`` in
  ``encoder.layer.3.``, ``model.layers.3.``, ``transformer.h.3.``. Linear modules outside any layer
  (classifier, pooler, lm_head, embedding projections) are never candidates.
* *In-layer path*: the rest of the name after ``<container>.<i>.``. A module type ``t`` matches a module when
  the in-layer path equals ``t`` or ends with ``"." + t``. If several types match, the longest type wins
  (in BERT ``output.dense`` gets ``layer.i.output.dense`` while ``layer.i.attention.output.dense`` goes to
  ``attention.output.dense``). A module gets at most one type; a (layer, type) cell holds at most one module,
  otherwise ``ValueError``.
* ``preset="auto"`` uses :func:`search_spaces.presets.preset_for_model`; explicit ``module_types`` override
  the preset (the preset is then not consulted); an unknown preset name is a ``ValueError``.
* A module type that matches no module is a ``ValueError`` naming it and listing the model's linear modules.
* ``layers`` keeps only those layer indices (negative ones count from the end, ``-1`` = last layer); an index
  that does not exist is a ``ValueError`` listing the valid ones. An empty result is a ``ValueError``.

DAM: rows are ``SearchSpace.layers`` (sorted), columns are ``SearchSpace.module_types`` (preset order).
Candidates are ordered row-major by (layer, module-type order). A cell may be empty when a layer lacks a type.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from search_spaces.candidate import Candidate
from search_spaces.presets import check_preset, preset_for_model

LINEAR_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, Conv1D)


@dataclass(frozen=True)
class SearchSpace:
    """Ordered LoRA candidates with their (row, column) coordinates in the DAM."""

    candidates: tuple[Candidate, ...]
    layers: tuple[int, ...]
    module_types: tuple[str, ...]
    _coords: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "module_types", tuple(self.module_types))
        rows = {layer: i for i, layer in enumerate(self.layers)}
        cols = {t: j for j, t in enumerate(self.module_types)}
        if len(rows) != len(self.layers) or len(cols) != len(self.module_types):
            raise ValueError("SearchSpace layers and module_types must be distinct")
        cells: dict[tuple[int, int], str] = {}
        for c in self.candidates:
            if c.layer not in rows or c.module_type not in cols:
                raise ValueError(f"candidate {c.name!r} has layer/type outside the DAM axes")
            cell = (rows[c.layer], cols[c.module_type])
            if cell in cells or c.name in self._coords:
                raise ValueError(f"candidates {cells.get(cell, c.name)!r} and {c.name!r} collide")
            cells[cell] = c.name
            self._coords[c.name] = cell

    @property
    def names(self) -> tuple[str, ...]:
        """Module names of the candidates, in candidate order."""
        return tuple(c.name for c in self.candidates)

    @property
    def shape(self) -> tuple[int, int]:
        """DAM shape: (number of layers, number of module types)."""
        return len(self.layers), len(self.module_types)

    def coordinate(self, name: str) -> tuple[int, int]:
        """(row, col) of a candidate in the DAM; unknown name -> KeyError."""
        try:
            return self._coords[name]
        except KeyError:
            preview = ", ".join(self.names[:4])
            raise KeyError(
                f"{name!r} is not a candidate of this search space ({len(self)} candidates, e.g. {preview})"
            ) from None

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: names, layers, module types, coordinates and per-candidate details."""
        return {
            "names": list(self.names),
            "layers": list(self.layers),
            "module_types": list(self.module_types),
            "shape": list(self.shape),
            "coordinates": {name: list(rc) for name, rc in self._coords.items()},
            "candidates": [c.to_dict() for c in self.candidates],
        }


def linear_features(module: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a GPT-2 Conv1D (whose weight is stored (in, out))."""
    if not isinstance(module, LINEAR_TYPES):
        raise TypeError(f"{type(module).__name__} is not a linear module; only nn.Linear and Conv1D are supported")
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return int(module.in_features), int(module.out_features)


def _locate(name: str, containers: set[str]) -> tuple[int, str] | None:
    """(layer index, in-layer path) of a module name, or None when it is outside any layer."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and ".".join(parts[:i]) in containers:
            return int(part), ".".join(parts[i + 1 :])
    return None


def _best_type(path: str, module_types: Sequence[str]) -> str | None:
    """Longest module type matching an in-layer path, or None."""
    hits = [t for t in module_types if path == t or path.endswith("." + t)]
    return max(hits, key=len) if hits else None


def _brief(items: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "") if items else "none"


def _resolve_types(
    model: torch.nn.Module, preset: str | None, module_types: Sequence[str] | None
) -> tuple[str, ...]:
    if module_types is None:
        if preset is None:
            raise ValueError("give a preset (or 'auto') or explicit module_types")
        return check_preset(preset_for_model(model) if preset == "auto" else preset)
    if isinstance(module_types, str):
        raise TypeError(f"module_types must be a sequence of strings, not the string {module_types!r}")
    types = tuple(str(t) for t in module_types)
    if not types or any(not t or t.startswith(".") or t.endswith(".") for t in types):
        raise ValueError(f"module_types must be non-empty dotted names, got {list(types)}")
    if len(set(types)) != len(types):
        raise ValueError(f"module_types has duplicates: {list(types)}")
    return types


def _resolve_layers(requested: Sequence[int], available: Sequence[int]) -> set[int]:
    if isinstance(requested, (str, bytes)):
        raise TypeError(f"layers must be a sequence of ints, got {requested!r}")
    if len(requested) == 0:
        raise ValueError("layers is empty; pass None to keep all layers")
    chosen: set[int] = set()
    for raw in requested:
        if isinstance(raw, bool):
            raise TypeError(f"layer index must be an int, got {raw!r}")
        i = operator.index(raw)
        if -len(available) <= i < 0:
            chosen.add(available[i])
        elif i in available:
            chosen.add(i)
        else:
            raise ValueError(
                f"layer index {i} does not exist; valid layer indices: {list(available)} "
                f"(or -1..-{len(available)} from the end)"
            )
    return chosen


def build_search_space(
    model: torch.nn.Module,
    preset: str | None = "auto",
    module_types: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> SearchSpace:
    """Enumerate the LoRA candidates of ``model`` (see the module docstring for the rules)."""
    types = _resolve_types(model, preset, module_types)
    named = list(model.named_modules())
    containers = {n for n, m in named if isinstance(m, torch.nn.ModuleList)}
    found: list[tuple[str, int, str, torch.nn.Module]] = []
    outside: list[str] = []
    for name, module in named:
        if not isinstance(module, LINEAR_TYPES):
            continue
        where = _locate(name, containers)
        if where is None:
            outside.append(name)
        else:
            found.append((name, where[0], where[1], module))
    all_layers = sorted({layer for _, layer, _, _ in found})

    matched = [
        (name, layer, t, module) for name, layer, path, module in found if (t := _best_type(path, types))
    ]
    missing = [t for t in types if not any(m[2] == t for m in matched)]
    if missing:
        paths = list(dict.fromkeys(path for _, _, path, _ in found))
        raise ValueError(
            f"module type(s) {missing} match no linear module inside a layer of {type(model).__name__} "
            "(a type matches an in-layer path equal to it or ending with '.' + type; the longest type wins). "
            f"Linear modules inside layers (in-layer paths): {_brief(paths)}; "
            f"linear modules outside layers (never candidates): {_brief(outside)}. "
            "Fix space.module_types."
        )

    if layers is not None:
        keep = _resolve_layers(layers, all_layers)
        matched = [m for m in matched if m[1] in keep]
    if not matched:
        raise ValueError(
            f"empty search space for {type(model).__name__} (types {list(types)}, layers {layers})"
        )

    order = {t: j for j, t in enumerate(types)}
    matched.sort(key=lambda m: (m[1], order[m[2]]))
    cells: dict[tuple[int, str], str] = {}
    for name, layer, t, _ in matched:
        if (layer, t) in cells:
            raise ValueError(
                f"ambiguous module type {t!r}: modules {cells[(layer, t)]!r} and {name!r} both fall in layer "
                f"{layer}; each (layer, type) cell holds one module. Use a longer, more specific type "
                "(more of the in-layer path) in space.module_types."
            )
        cells[(layer, t)] = name

    candidates = tuple(Candidate(name, layer, t, *linear_features(module)) for name, layer, t, module in matched)
    return SearchSpace(
        candidates=candidates,
        layers=tuple(sorted({c.layer for c in candidates})),
        module_types=types,
    )
