"""A run's identity and its folder (nas/engine/identity.py, nas/engine/run_folder.py): a finished run is never reused
for another configuration, replaced by accident, or mistaken for another; every stop leaves a true record."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import compose_run

from nas.engine import identity, run_folder
from nas.engine.checkpoint import Checkpointer
from nas.engine.run_folder import RunRefused
from nas.errors import ConfigError

GLUE_FILES = ("train.tsv", "dev.tsv")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_data(root: Path, task_folder: str = "MRPC", marker: str = "") -> Path:
    """A GLUE data folder whose task files are copies (``marker`` appended to change their content)."""
    from objectives import default_glue_dir

    source = default_glue_dir() / task_folder
    (root / task_folder).mkdir(parents=True)
    for name in GLUE_FILES:
        (root / task_folder / name).write_text((source / name).read_text() + marker)
    return root


def finished(folder: Path, fingerprint: dict | None, score: float = 0.7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"task": "mrpc", "method": "diffora", "seed": 0, "score": score}))
    if fingerprint is not None:
        identity.write(folder / identity.FILENAME, fingerprint)
    return folder


# ---------------------------------------------------------------- the fingerprint


def test_the_fingerprint_is_the_config_without_volatile_keys_plus_the_inputs_content(tmp_path: Path) -> None:
    data = fake_data(tmp_path / "a")
    moved = fake_data(tmp_path / "b")
    other = fake_data(tmp_path / "c", marker="\n")
    base = identity.run_fingerprint(compose_run(["task=mrpc", f"task.data_dir={data}"]))
    same = identity.run_fingerprint(compose_run(["task=mrpc", f"task.data_dir={moved}", "threads=1", "device=cuda",
                                                 "logger=none", "checkpoint.every=5", "skip_finished=true"]))
    assert same == base  # where the files lie and how the run runs are not what it computes
    changed = identity.run_fingerprint(compose_run(["task=mrpc", f"task.data_dir={other}"]))
    assert identity.diff(base, changed) == [
        f"data file {name}: {base['files']['data'][name][:8]} → {changed['files']['data'][name][:8]}"
        for name in sorted(GLUE_FILES)]
    dropout = identity.run_fingerprint(compose_run(["task=mrpc", f"task.data_dir={data}", "bilevel.dropout=0.1"]))
    assert identity.diff(base, dropout) == ["bilevel.dropout: 0.0 → 0.1"]
    assert dropout["digest"] != base["digest"] and "model.safetensors" in base["files"]["model"]


def test_another_model_folder_with_other_weights_changes_the_fingerprint(tmp_path: Path) -> None:
    from nas.engine.backbone import resolve_model_path

    cfg = compose_run(["task=mrpc"])
    source = Path(resolve_model_path(cfg.model.name_or_path))
    copy = tmp_path / "model"
    shutil.copytree(source, copy)
    assert identity.run_fingerprint(compose_run(["task=mrpc", f"model.name_or_path={copy}"])) == \
        identity.run_fingerprint(cfg)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "extra": 1}', 1))
    differ = identity.diff(identity.run_fingerprint(cfg),
                           identity.run_fingerprint(compose_run(["task=mrpc", f"model.name_or_path={copy}"])))
    assert len(differ) == 1 and differ[0].startswith("model file config.json: ")


def test_data_read_from_the_hub_is_named_not_hashed() -> None:
    files = identity.data_files(compose_run(["task=rte", "task.data_dir=null"]).task)
    assert files == {"glue": "hub:nyu-mll/glue/rte"}
    planted = identity.data_files(compose_run(["task=planted"]).task)
    assert sorted(planted) == sorted(GLUE_FILES) and all(Path(p).parent.name == "SST-2" for p in planted.values())


# ---------------------------------------------------------------- the folder's guard


FP = {"config": {"seed": 0, "bilevel.dropout": 0.0}, "files": {"model": {}, "data": {}}, "digest": "a"}
OTHER = {"config": {"seed": 0, "bilevel.dropout": 0.1}, "files": {"model": {}, "data": {}}, "digest": "b"}


@pytest.mark.parametrize(("flags", "saved", "expected"), [
    ({}, FP, "holds a finished run (metrics.json); pass overwrite=true"),
    ({"skip_finished": True}, OTHER, "is of another configuration: bilevel.dropout: 0.1 → 0.0; nothing was reused"),
    ({"skip_finished": True}, None, "has no fingerprint.json"),
])
def test_a_finished_run_is_refused_and_left_untouched(tmp_path: Path, flags: dict, saved: dict | None,
                                                      expected: str) -> None:
    folder = finished(tmp_path / "run", saved)
    before = snapshot(folder)
    options = {"resume": False, "skip_finished": False, "overwrite": False, **flags}
    with pytest.raises(RunRefused, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_folder.claim(folder, FP, **options)
    assert snapshot(folder) == before


def test_skip_finished_reuses_only_the_same_fingerprint_and_overwrite_replaces(tmp_path: Path) -> None:
    folder = finished(tmp_path / "run", FP, score=0.75)
    claim = run_folder.claim(folder, FP, resume=False, skip_finished=True, overwrite=False)
    assert claim.reuse is not None and claim.reuse["score"] == 0.75
    for skip in (False, True):
        claim = run_folder.claim(folder, OTHER, resume=False, skip_finished=skip, overwrite=True)
        assert claim.reuse is None and not claim.resume
    assert run_folder.claim(tmp_path / "new", OTHER, resume=False, skip_finished=True, overwrite=False).reuse is None
    (folder / "checkpoint").mkdir()
    (folder / "notes.txt").write_text("the user's own file")  # e.g. hydra.run.dir=. in a project folder
    run_folder.clear(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # only a run's own outputs are removed


def test_resume_checks_the_checkpoints_fingerprint_and_names_what_differs(tmp_path: Path) -> None:
    Checkpointer(tmp_path, every=2).start(FP)
    Checkpointer(tmp_path, every=2).save("search", {"step": 1})
    Checkpointer(tmp_path, every=2, resume=True).start(FP)  # the same run: accepted
    changed = {**FP, "files": {"model": {}, "data": {"train.tsv": "1" * 64}}}
    with pytest.raises(ConfigError, match="from another configuration: data file train.tsv: <unset> → 11111111"):
        Checkpointer(tmp_path, every=2, resume=True).start(changed)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        Checkpointer(tmp_path / "empty", resume=True).start(FP)


def test_a_new_run_removes_an_older_runs_checkpoints(tmp_path: Path) -> None:
    Checkpointer(tmp_path, every=2).start(OTHER)
    Checkpointer(tmp_path, every=2).save("train", {"step": 1})
    Checkpointer(tmp_path, every=2).start(FP)
    assert not (tmp_path / "checkpoint" / "train.pt").exists()
    assert identity.read(tmp_path / "checkpoint" / "fingerprint.json") == FP


def test_mark_failed_keeps_one_line(tmp_path: Path) -> None:
    run_folder.mark_failed(tmp_path / "run", ValueError("bad value\nsecond line"))
    assert (tmp_path / "run" / "FAILED").read_text() == "ValueError: bad value\n"


def test_run_log_holds_what_the_run_printed_with_progress_bars_at_their_last_state(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    with run_folder.capture_output(tmp_path) as log:
        print("selected 3/36 modules")
        sys.stderr.write("train:  50%|#    | 1/2\rtrain: 100%|##| 2/2\n")
        print("warning: no newline at the end", end="")
        log.write("Traceback (only in the log)\n")
    assert (tmp_path / "run.log").read_text() == ("selected 3/36 modules\ntrain: 100%|##| 2/2\n"
                                                  "warning: no newline at the endTraceback (only in the log)\n")
    captured = capsys.readouterr()
    assert "selected 3/36" in captured.out and "Traceback" not in captured.out + captured.err
    with run_folder.capture_output(tmp_path, append=True):
        print("resumed")
    assert (tmp_path / "run.log").read_text().endswith("(only in the log)\nresumed\n")


def test_the_code_version_is_the_one_the_process_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's jobs run in one process: a commit made while they run must not be recorded as theirs."""
    import subprocess

    import nas.app  # noqa: F401  (reads the version at import)

    before = identity.code_version()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("git read again")))
    assert identity.code_version() == before and before != ""
