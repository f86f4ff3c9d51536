"""assembled:<name> models: a zip split over PyPI packages, assembled once; the MPNet preset's 72 candidates."""

from __future__ import annotations

import importlib.metadata
import io
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import MPNetConfig, MPNetForSequenceClassification

from nas.engine import model_parts
from nas.engine.backbone import resolve_model_path
from nas.errors import ConfigError
from search_spaces import build_search_space


def split_zip(tmp_path: Path, files: dict[str, str], parts: int) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, text in files.items():
            zipped.writestr(name, text)
    data, size = buffer.getvalue(), -(-len(buffer.getvalue()) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"model.zip.{i + 1:03d}"
        path.write_bytes(data[i * size:(i + 1) * size])
        paths.append(path)
    return paths


def test_parts_are_concatenated_in_order_and_extracted_once(tmp_path: Path) -> None:
    parts = split_zip(tmp_path, {"m/config.json": '{"model_type": "mpnet"}', "m/vocab.txt": "a\nb\n"}, 3)
    target = tmp_path / "cache" / "models" / "m"
    folder = model_parts.assemble(parts, target)
    assert folder == target / "m" and (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temporary folder or zip left
    for part in parts:
        part.unlink()  # a second run uses the folder, not the parts
    assert model_parts.assemble(parts, target) == folder


def test_parts_out_of_order_are_not_a_model(tmp_path: Path) -> None:
    parts = split_zip(tmp_path, {"config.json": "{}" * 2000}, 3)
    with pytest.raises(ConfigError, match="do not form a zip.*reinstall"):
        model_parts.assemble(list(reversed(parts)), tmp_path / "cache" / "x")
    assert not (tmp_path / "cache" / "x").exists()


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(ConfigError, match=r"optional extra 'mpnet'.*pip install -e \"\.\[mpnet\]\""):
        resolve_model_path("assembled:all-mpnet-base-v2")
    with pytest.raises(ConfigError, match="unknown; choose one of assembled:all-mpnet-base-v2"):
        resolve_model_path("assembled:nope")


def test_mpnet_preset_has_six_module_types_per_layer() -> None:
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40, num_labels=2)
    space = build_search_space(MPNetForSequenceClassification(config), "auto")
    assert len(space) == 18  # 12 layers of all-mpnet-base-v2 give 72
    assert list(space.names)[:6] == [f"mpnet.encoder.layer.0.{t}" for t in (
        "attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense",
        "output.dense")]
