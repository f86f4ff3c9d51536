"""Tests for search_spaces on tiny random-init models built from configs (no downloads)."""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch
import transformers as tf

from search_spaces import (
    MODEL_TYPE_TO_PRESET,
    MODULE_TYPE_PRESETS,
    Candidate,
    SearchSpace,
    build_search_space,
    preset_for_model,
)

_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128)


@cache
def tiny(kind: str) -> torch.nn.Module:
    """A tiny random-init sequence classifier, built once per test session."""
    torch.manual_seed(0)
    if kind == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(**_ENC))
    if kind == "roberta":
        return tf.RobertaForSequenceClassification(tf.RobertaConfig(**_ENC))
    if kind == "deberta":
        return tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**_ENC))
    if kind == "mpnet":
        return tf.MPNetForSequenceClassification(tf.MPNetConfig(**_ENC))
    if kind == "llama":
        cfg = tf.LlamaConfig(**_ENC, num_key_value_heads=2, pad_token_id=0)
        return tf.LlamaForSequenceClassification(cfg)
    if kind == "gpt2":
        ids = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, **ids)
        return tf.GPT2ForSequenceClassification(cfg)
    raise KeyError(kind)


# kind, preset, number of layers, prefix of layer 0, outside-layer linear names
MODELS = [
    ("bert", "bert", 2, "bert.encoder.layer.0.", ("classifier", "bert.pooler.dense")),
    ("roberta", "roberta", 2, "roberta.encoder.layer.0.", ("classifier.dense", "classifier.out_proj")),
    ("deberta", "deberta", 2, "deberta.encoder.layer.0.", ("classifier", "pooler.dense")),
    ("mpnet", "mpnet", 2, "mpnet.encoder.layer.0.", ("classifier.dense", "classifier.out_proj")),
    ("llama", "llama", 2, "model.layers.0.", ("score",)),
    ("gpt2", "gpt2", 2, "transformer.h.0.", ("score",)),
]
KINDS = [m[0] for m in MODELS]

# kind, module type, in_features, out_features
FEATURES = [
    ("bert", "query", 32, 32),
    ("bert", "attention.output.dense", 32, 32),
    ("bert", "intermediate.dense", 32, 64),
    ("bert", "output.dense", 64, 32),
    ("deberta", "value_proj", 32, 32),
    ("mpnet", "attention.attn.o", 32, 32),
    ("mpnet", "output.dense", 64, 32),  # the FFN's output: MPNet's attention output is attention.attn.o
    ("llama", "k_proj", 32, 16),  # grouped-query attention: 2 kv heads of 8
    ("llama", "gate_proj", 32, 64),
    ("llama", "down_proj", 64, 32),
    ("gpt2", "attn.c_attn", 32, 96),  # Conv1D: weight is (in, out)
    ("gpt2", "mlp.c_fc", 32, 128),
    ("gpt2", "mlp.c_proj", 128, 32),
]


@pytest.mark.parametrize(("kind", "preset", "n_layers", "prefix", "outside"), MODELS)
def test_auto_preset_enumerates_all_cells(kind, preset, n_layers, prefix, outside):
    model = tiny(kind)
    assert preset_for_model(model) == preset
    space = build_search_space(model)
    types = MODULE_TYPE_PRESETS[preset]
    assert space.module_types == types
    assert space.layers == tuple(range(n_layers))
    assert len(space) == n_layers * len(types) == len(set(space.names))
    layer0 = [n for n, _ in model.named_modules() if n.startswith(prefix) and n.endswith(types)]
    assert [c.name for c in space.candidates if c.layer == 0] == layer0
    assert not set(outside) & set(space.names)
    assert all(isinstance(c, Candidate) for c in space)


@pytest.mark.parametrize("kind", KINDS)
def test_coordinates_unique_and_row_major(kind):
    space = build_search_space(tiny(kind))
    coords = [space.coordinate(n) for n in space.names]
    assert coords == sorted(coords) and len(set(coords)) == len(coords)
    for c, (row, col) in zip(space.candidates, coords, strict=True):
        assert (space.layers[row], space.module_types[col]) == (c.layer, c.module_type)
    assert coords == [(r, c) for r in range(space.shape[0]) for c in range(space.shape[1])]


def test_bert_layer0_exact_names():
    space = build_search_space(tiny("bert"))
    p = "bert.encoder.layer.0."
    assert [(c.name, c.module_type) for c in space.candidates[:6]] == [
        (p + "attention.self.query", "query"),
        (p + "attention.self.key", "key"),
        (p + "attention.self.value", "value"),
        (p + "attention.output.dense", "attention.output.dense"),
        (p + "intermediate.dense", "intermediate.dense"),
        (p + "output.dense", "output.dense"),
    ]


@pytest.mark.parametrize(("kind", "module_type", "n_in", "n_out"), FEATURES)
def test_in_out_features(kind, module_type, n_in, n_out):
    space = build_search_space(tiny(kind))
    found = [(c.in_features, c.out_features) for c in space if c.module_type == module_type]
    assert found == [(n_in, n_out)] * 2


@pytest.mark.parametrize(
    ("layers", "expected_layers"),
    [([0], (0,)), ([1], (1,)), ([-1], (1,)), ([-2], (0,)), ([1, 0], (0, 1)), ([0, -2], (0,)), ((-1,), (1,))],
)
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_layer_subset(kind, layers, expected_layers):
    space = build_search_space(tiny(kind), layers=layers)
    assert space.layers == expected_layers
    assert len(space) == len(expected_layers) * len(space.module_types)
    assert {c.layer for c in space} == set(expected_layers)
    assert {space.coordinate(n)[0] for n in space.names} == set(range(len(expected_layers)))


@pytest.mark.parametrize(
    ("kind", "module_types", "expected"),
    [
        ("bert", ["value", "query"], ("attention.self.value", "attention.self.query")),
        ("bert", ["self.query", "intermediate.dense"], ("attention.self.query", "intermediate.dense")),
        ("llama", ["v_proj", "q_proj"], ("self_attn.v_proj", "self_attn.q_proj")),
        ("gpt2", ["c_attn"], ("attn.c_attn",)),
    ],
)
def test_explicit_module_types_override_preset(kind, module_types, expected):
    space = build_search_space(tiny(kind), preset="roberta", module_types=module_types, layers=[0])
    assert space.module_types == tuple(module_types)
    assert tuple(n.split(".0.", 1)[1] for n in space.names) == expected


def test_longest_type_wins():
    types = ["output.dense", "attention.output.dense"]
    space = build_search_space(tiny("bert"), module_types=types, layers=[0])
    assert dict(zip(space.names, (c.module_type for c in space), strict=True)) == {
        "bert.encoder.layer.0.attention.output.dense": "attention.output.dense",
        "bert.encoder.layer.0.output.dense": "output.dense",
    }


@pytest.mark.parametrize("preset", list(MODULE_TYPE_PRESETS))
def test_explicit_preset_name(preset):
    kind = {"roberta": "bert"}.get(preset, preset)  # roberta preset has the same types as bert
    assert build_search_space(tiny(kind), preset=preset).module_types == MODULE_TYPE_PRESETS[preset]


def test_unmatched_type_lists_linear_modules():
    with pytest.raises(ValueError, match="q_proj") as err:
        build_search_space(tiny("bert"), module_types=["query", "q_proj"])
    msg = str(err.value)
    for path in ["attention.self.query", "attention.self.key", "intermediate.dense", "output.dense"]:
        assert path in msg
    assert "classifier" in msg and "bert.pooler.dense" in msg


def test_ambiguous_cell_raises():
    with pytest.raises(ValueError, match="ambiguous module type 'dense'"):
        build_search_space(tiny("bert"), module_types=["dense"])


@pytest.mark.parametrize("bad", [[2], [-3], [0, 5]])
def test_bad_layer_lists_valid_indices(bad):
    with pytest.raises(ValueError, match=r"does not exist; valid layer indices: \[0, 1\]"):
        build_search_space(tiny("bert"), layers=bad)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"preset": "bret"}, ValueError, "unknown module-type preset 'bret'.*bert"),
        ({"preset": None}, ValueError, "module_types"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"module_types": []}, ValueError, "non-empty"),
        ({"module_types": ["query", "query"]}, ValueError, "duplicates"),
        ({"module_types": "query"}, TypeError, "sequence of strings"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        build_search_space(tiny("bert"), **kwargs)


def test_unknown_model_type_needs_module_types():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="space.module_types"):
        preset_for_model(model)
    with pytest.raises(ValueError, match="space.module_types"):
        build_search_space(model)


def test_plain_modulelist_model_and_empty_result():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 5)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block(), Block()])
            self.head = torch.nn.Sequential(torch.nn.Linear(5, 2))  # integer path but not a ModuleList

    space = build_search_space(Net(), module_types=["proj"], layers=[-1])
    assert space.names == ("blocks.2.proj",) and space.coordinate("blocks.2.proj") == (0, 0)
    with pytest.raises(ValueError, match=r"head\.0"):
        build_search_space(Net(), module_types=["0"])


def test_unknown_name_keyerror_and_to_dict_json():
    space = build_search_space(tiny("gpt2"), layers=[-1])
    with pytest.raises(KeyError, match="not a candidate"):
        space.coordinate("score")
    data = json.loads(json.dumps(space.to_dict()))
    assert data["names"] == list(space.names) and data["layers"] == [1]
    assert data["module_types"] == list(MODULE_TYPE_PRESETS["gpt2"])
    assert data["coordinates"]["transformer.h.1.mlp.c_fc"] == [0, 2]
    assert data["candidates"][0]["out_features"] == 96


def test_search_space_is_frozen_and_validates():
    space = build_search_space(tiny("bert"), layers=[0])
    with pytest.raises(AttributeError):
        space.layers = (1,)  # type: ignore[misc]
    with pytest.raises(ValueError, match="collide"):
        SearchSpace(candidates=space.candidates[:1] * 2, layers=(0,), module_types=space.module_types)


def test_model_type_map_points_to_presets():
    assert set(MODEL_TYPE_TO_PRESET.values()) <= set(MODULE_TYPE_PRESETS)
    for model_type in ["bert", "roberta", "xlm-roberta", "deberta-v2", "llama", "mistral", "qwen2", "gpt2"]:
        assert model_type in MODEL_TYPE_TO_PRESET
