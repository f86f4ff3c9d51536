"""Files a run writes: atomic JSON, and ``selection.json`` (which modules carry an adapter, and why)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.reporting.plots import dam_matrix
from search_spaces.space import SearchSpace


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_selection(run_dir: Path, space: SearchSpace, selected: list[str], scores: Mapping[str, float] | None,
                    **details: Any) -> None:
    """``selection.json``: the kept modules, their scores (the DAM, random draws, …) as a list and as a matrix."""
    data: dict[str, Any] = {"selected": list(selected), "num_candidates": len(space), "num_selected": len(selected),
                            "layers": list(space.layers), "module_types": list(space.module_types),
                            "coordinates": {name: list(space.coordinate(name)) for name in space.names}, **details}
    if scores is not None:
        data["dam"] = dict(scores)
        data["dam_matrix"] = np.nan_to_num(dam_matrix(space, scores), nan=-1.0).tolist()
    write_json(run_dir / "selection.json", data)
