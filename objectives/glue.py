"""GLUE tasks: task table, TSV reader for the original GLUE files, hub fallback and cached tokenization."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

SPLIT_FILES: dict[str, str] = {"train": "train.tsv", "validation": "dev.tsv"}
HUB_DATASET = "nyu-mll/glue"
_CACHE_FORMAT = "glue-tok-v1"  # bump when the tokenized layout changes, so old caches are not reused


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its key, data folder, text columns (as nyu-mll/glue names them) and metrics."""

    name: str
    folder: str
    text_fields: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    multi_output: bool = False  # regression on all num_labels outputs at once (the planted task's task.outputs)
    objective: str = "head"  # head: a classification/regression head | causal_lm: next-token loss on completions
    label_word_ids: tuple[tuple[int, ...], ...] | None = None  # causal_lm on a GLUE task: class c's word's ids

    @property
    def is_regression(self) -> bool:
        """True for a regression task: one output (STS-B) or a vector of ``num_labels`` (``multi_output``)."""
        return self.num_labels == 1 or self.multi_output


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), 2, ("matthews_correlation",), "matthews_correlation"),
        GlueTask("sst2", "SST-2", ("sentence",), 2, ("accuracy",), "accuracy"),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), "pearson"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy"),
    )
}


@dataclass(frozen=True)
class _FileFormat:
    """Layout of a task's original TSV: header (None: headerless), source column of each field, labels."""

    header: tuple[str, ...] | None
    columns: dict[str, str | int]  # output column -> header name (or column index when headerless)
    label_map: dict[str, int] | None = None  # None: labels are written as numbers


_FORMATS: dict[str, _FileFormat] = {
    "cola": _FileFormat(None, {"sentence": 3, "label": 1}),
    "sst2": _FileFormat(("sentence", "label"), {"sentence": "sentence", "label": "label"}),
    "mrpc": _FileFormat(
        ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    ),
    "rte": _FileFormat(
        ("index", "sentence1", "sentence2", "label"),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        {"entailment": 0, "not_entailment": 1},  # same ids as nyu-mll/glue
    ),
    "stsb": _FileFormat(
        ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
         "score"),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    ),
    "wnli": _FileFormat(
        ("index", "sentence1", "sentence2", "label"),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    ),
}
_COLA_COLUMNS = ("source", "label", "original-label", "sentence")


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str | GlueTask) -> GlueTask:
    """Return the task for a name, case-insensitively; "SST-2", "sst_2", "STS-B" spellings are accepted."""
    if isinstance(name, GlueTask):
        return name
    task = GLUE_TASKS.get(_norm(str(name)))
    if task is None:
        raise ValueError(f"unknown GLUE task {name!r}; valid names: {', '.join(GLUE_TASKS)}")
    return task


def default_glue_dir() -> Path:
    """$DIFFORA_GLUE_DIR if set, else <repo root>/../shared/data/glue."""
    env = os.environ.get("DIFFORA_GLUE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def _parse_label(raw: str, task: GlueTask, fmt: _FileFormat, where: str) -> int | float:
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number") from None
        if not 0.0 <= value <= 5.0:
            raise ValueError(f"{where}: score {value} is outside [0, 5]")
        return value
    if fmt.label_map is not None:
        if raw not in fmt.label_map:
            raise ValueError(f"{where}: label {raw!r} not in {sorted(fmt.label_map)}")
        return fmt.label_map[raw]
    if raw not in {str(i) for i in range(task.num_labels)}:
        raise ValueError(f"{where}: label {raw!r} not in {list(range(task.num_labels))}")
    return int(raw)


def read_glue_tsv(path: str | Path, task: GlueTask | str) -> dict[str, list]:
    """Read one original GLUE TSV into columns ``text_fields + ("label",)``.

    Parsed with QUOTE_NONE (stray quotes are text), a leading BOM is dropped; RTE labels become
    entailment=0 / not_entailment=1; STS-B labels are float scores.
    """
    task, path = get_task(task), Path(path)
    fmt = _FORMATS[task.name]
    out: dict[str, list] = {c: [] for c in (*task.text_fields, "label")}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if fmt.header is None:
            n_cols, index = len(_COLA_COLUMNS), {c: int(i) for c, i in fmt.columns.items()}
        else:
            found = next(reader, [])
            missing = [h for h in fmt.columns.values() if h not in found]
            if missing:
                raise ValueError(
                    f"{path}: not a {task.folder} file: expected a header with columns "
                    f"{list(fmt.header)}, found {found} (missing {missing})"
                )
            n_cols, index = len(found), {c: found.index(str(h)) for c, h in fmt.columns.items()}
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != n_cols:
                expected = list(_COLA_COLUMNS) if fmt.header is None else f"{n_cols} columns as in the header"
                raise ValueError(
                    f"{where}: expected {n_cols} tab-separated columns ({expected}), found {len(row)}: "
                    f"{row[:n_cols + 1]}"
                )
            try:
                label = _parse_label(row[index["label"]], task, fmt, where)
            except ValueError as err:
                if fmt.header is None and reader.line_num == 1:
                    raise ValueError(
                        f"{where}: {task.folder} files have no header and columns {list(_COLA_COLUMNS)}; "
                        f"found first row {row}"
                    ) from err
                raise
            for field in task.text_fields:
                out[field].append(row[index[field]])
            out["label"].append(label)
    return out


def _features(task: GlueTask, label_name: str = "label") -> datasets.Features:
    feats = {f: datasets.Value("string") for f in task.text_fields}
    feats[label_name] = datasets.Value("float32" if task.is_regression else "int64")
    return datasets.Features(feats)


def glue_files(task: GlueTask | str, data_dir: str | Path) -> dict[str, Path]:
    """The files :func:`load_glue` reads from ``data_dir``: split → ``data_dir/<task.folder>/{train,dev}.tsv``."""
    folder = Path(data_dir).expanduser() / get_task(task).folder
    return {split: folder / filename for split, filename in SPLIT_FILES.items()}


def load_glue(task: GlueTask | str, data_dir: str | Path | None) -> datasets.DatasetDict:
    """Splits "train" and "validation" with columns ``text_fields + ("label",)``.

    From ``data_dir/<task.folder>/{train,dev}.tsv`` when data_dir is given, else from the hub (nyu-mll/glue).
    """
    task = get_task(task)
    if data_dir is None:
        hub = datasets.load_dataset(HUB_DATASET, task.name)
        cols = [*task.text_fields, "label"]
        return datasets.DatasetDict(
            {s: hub[s].select_columns(cols).cast(_features(task)) for s in SPLIT_FILES}
        )
    splits = {}
    for split, path in glue_files(task, data_dir).items():
        if not path.is_file():
            raise FileNotFoundError(
                f"GLUE file not found: {path}. Set task.data_dir / env DIFFORA_GLUE_DIR to the folder "
                f"holding CoLA/, SST-2/, MRPC/, RTE/, STS-B/, WNLI/, or task.data_dir=null to read "
                f"{HUB_DATASET} from the hub."
            )
        splits[split] = datasets.Dataset.from_dict(read_glue_tsv(path, task), features=_features(task))
    return datasets.DatasetDict(splits)


_TOKENIZED: dict[str, datasets.DatasetDict] = {}


def clear_tokenized_cache() -> None:
    """Forget the in-process tokenization cache (the on-disk cache is kept)."""
    _TOKENIZED.clear()


def _content_hash(data: datasets.DatasetDict, task: GlueTask) -> str:
    """sha256 over the split names and the text/label values of every split."""
    h = hashlib.sha256()
    for split in sorted(data):
        h.update(split.encode())
        for col in (*task.text_fields, "label"):
            h.update(json.dumps(data[split].data.column(col).to_pylist()).encode())
    return h.hexdigest()


def tokenized_cache_key(data: datasets.DatasetDict, task: GlueTask, tokenizer: Any, max_length: int) -> str:
    """Short sha of (task, tokenizer name/class/size, max_length, raw data content)."""
    parts = [_CACHE_FORMAT, task.name, str(getattr(tokenizer, "name_or_path", "")),
             type(tokenizer).__name__, len(tokenizer), int(max_length), _content_hash(data, task)]
    return f"{task.name}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]}"


def _tokenize(data: datasets.DatasetDict, task: GlueTask, tokenizer: Any, max_length: int,
              key: str) -> datasets.DatasetDict:
    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(*(batch[f] for f in task.text_fields), truncation=True, max_length=max_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = batch["label"]
        return out

    result = {}
    for split, ds in data.items():
        mapped = ds.map(encode, batched=True, remove_columns=ds.column_names,
                        new_fingerprint=f"{key}-{split}", desc=f"tokenize {task.name}/{split}")
        label_type = "float32" if task.is_regression else "int64"
        result[split] = mapped.cast_column("labels", datasets.Value(label_type))
    return datasets.DatasetDict(result)


def tokenize_glue(data: datasets.DatasetDict, task: GlueTask | str, tokenizer: Any, max_length: int,
                  cache_dir: str | Path | None = None) -> datasets.DatasetDict:
    """Tokenize every split (truncate to max_length, no padding) into input_ids, attention_mask,
    [token_type_ids,] labels (int64, float32 for regression).

    Results are cached in-process and, when cache_dir is given, on disk under cache_dir/<key>
    (written to a temporary folder first and renamed, so an interrupted run leaves no partial cache).
    """
    task = get_task(task)
    key = tokenized_cache_key(data, task, tokenizer, max_length)
    if key in _TOKENIZED:
        return _TOKENIZED[key]
    target = Path(cache_dir).expanduser() / key if cache_dir is not None else None
    if target is not None and (target / "dataset_dict.json").is_file():
        result = datasets.load_from_disk(str(target))
    else:
        result = _tokenize(data, task, tokenizer, max_length, key)
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                result.save_to_disk(str(tmp))
                if target.exists():  # a leftover without dataset_dict.json: not a finished cache
                    shutil.rmtree(target, ignore_errors=True)
                try:
                    os.replace(tmp, target)
                except OSError:  # another process finished the same cache first: use theirs
                    if not (target / "dataset_dict.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            result = datasets.load_from_disk(str(target))
    _TOKENIZED[key] = result
    return result
