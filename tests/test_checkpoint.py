"""Checkpoint and resume (nas/engine/checkpoint.py): a run killed with SIGKILL in the search or in training and resumed
ends exactly as an uninterrupted run with the same seed; a resume that cannot be honest is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nas.config import PROJECT_ROOT
from nas.engine.checkpoint import Checkpointer
from nas.engine.identity import config_identity, diff
from nas.errors import ConfigError

pytestmark = pytest.mark.slow  # whole runs in subprocesses: the full suite only (-m "not slow" leaves them out)

ARGS = ["task=mrpc", "debug=smoke", "logger=none", "retrain.export_adapter=false", "checkpoint.every=3",
        "bilevel.steps=9", "retrain.steps=9", "criterion.record=[dam,gate_saliency]",  # gate statistics resume too
        "bilevel.prune_stages=2",  # pruned after steps 3 and 6: the search's first checkpoint (step 3) holds one stage
        "bilevel.alpha_shrink=0.5", "bilevel.alpha_shrink_fraction=0.5",  # each α-step's random draw resumes too
        "bilevel.w_average=0.9"]  # and the average of w that the α-steps read
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}


Command = Callable[..., list[str]]


@pytest.fixture(scope="module")
def command(tiny_encoder: Path) -> Command:
    """``command(run_dir, *extra)``: the run's command line, on the tiny encoder (what is checked here, that a resumed
    run ends bit for bit as the uninterrupted one and that refusals touch nothing, does not depend on the backbone)."""
    def build(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), *ARGS,
                f"model.name_or_path={tiny_encoder}", f"hydra.run.dir={run_dir}", *extra]
    return build


def outputs(run_dir: Path) -> tuple[dict, dict]:
    return (json.loads((run_dir / "metrics.json").read_text()), json.loads((run_dir / "selection.json").read_text()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, command: Command) -> Path:
    """One uninterrupted run with checkpoints on."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=300, env=ENV, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def kill_when_saved(command: Command, run_dir: Path, stage: str) -> int:
    """Start the run, SIGKILL it as soon as ``stage``'s first checkpoint exists; the saved step."""
    process = subprocess.Popen(command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                               cwd=PROJECT_ROOT)
    path = run_dir / "checkpoint" / f"{stage}.pt"
    deadline = time.monotonic() + 300
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert path.exists(), f"no {stage} checkpoint was written"
    return int(torch.load(path, weights_only=False)["step"])


@pytest.mark.parametrize("stage", ["search", "train"])
def test_a_run_killed_and_resumed_ends_as_the_uninterrupted_run(reference: Path, tmp_path: Path, stage: str,
                                                                command: Command) -> None:
    step = kill_when_saved(command, tmp_path, stage)
    assert step < 8 and not (tmp_path / "metrics.json").exists()  # killed before the stage's end
    result = subprocess.run(command(tmp_path, "resume=true"), capture_output=True, text=True, timeout=300, env=ENV,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics, selection), (expected, expected_selection) = outputs(tmp_path), outputs(reference)
    assert selection["selected"] == expected_selection["selected"]
    assert max(abs(selection["dam"][k] - v) for k, v in expected_selection["dam"].items()) < 1e-6
    assert metrics["metrics"] == expected["metrics"] and metrics["train_steps"] == expected["train_steps"]


def test_resume_without_a_checkpoint_is_refused_and_writes_nothing(tmp_path: Path, command: Command) -> None:
    result = subprocess.run(command(tmp_path / "empty", "resume=true"), capture_output=True, text=True,
                            timeout=120, env=ENV, cwd=PROJECT_ROOT)
    assert result.returncode != 0
    assert "resume=true but" in result.stderr and "holds no checkpoint" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "empty" / "selection.json").exists()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(command: Command, run_dir: Path, *extra: str) -> str:
    """Run into ``run_dir`` with ``extra``; assert it is refused and changes nothing there; its error line."""
    before = snapshot(run_dir)
    result = subprocess.run(command(run_dir, *extra), capture_output=True, text=True, timeout=120, env=ENV,
                            cwd=PROJECT_ROOT)
    assert result.returncode != 0, result.stdout[-2000:]
    assert snapshot(run_dir) == before  # .hydra/, run.log and fingerprint.json included
    return result.stderr.strip().splitlines()[-1]


def test_resume_with_another_configuration_names_what_differs_and_keeps_the_run(reference: Path,
                                                                              command: Command) -> None:
    last = refused(command, reference, "resume=true", "seed=1", "discretizer.rho=0.25")
    assert "from another configuration" in last and "seed: 0 → 1" in last and "discretizer.rho: 0.5 → 0.25" in last


def test_resume_with_other_data_is_refused_naming_the_file(reference: Path, tmp_path: Path, command: Command) -> None:
    from test_run_folder import fake_data

    last = refused(command, reference, "resume=true", f"task.data_dir={fake_data(tmp_path, marker=chr(10))}")
    assert "from another configuration" in last and "data file train.tsv" in last and "data file dev.tsv" in last


def test_a_finished_run_is_replaced_only_with_overwrite(reference: Path, command: Command) -> None:
    last = refused(command, reference)
    assert "holds a finished run" in last and "overwrite=true" in last


def test_skip_finished_reuses_nothing_of_another_configuration(reference: Path, command: Command) -> None:
    last = refused(command, reference, "skip_finished=true", "relaxation=softmax")
    assert "of another configuration" in last and "relaxation.name: 'sigmoid' → 'softmax'" in last
    assert "nothing was reused" in last


def test_skip_finished_reuses_the_same_run(reference: Path, command: Command) -> None:
    before = snapshot(reference)
    result = subprocess.run(command(reference, "skip_finished=true", "threads=1"), capture_output=True, text=True,
                            timeout=120, env=ENV, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "with the same fingerprint, skipped" in result.stdout and snapshot(reference) == before


def test_resume_refused_on_a_finished_run_without_checkpoints_rewrites_nothing(reference: Path, tmp_path: Path,
                                                                             command: Command) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("checkpoint"))
    last = refused(command, run_dir, "resume=true", "seed=1")
    assert "holds no checkpoint" in last


def test_identity_ignores_where_a_run_runs_but_not_what_it_computes() -> None:
    from conftest import compose_run

    base = config_identity(compose_run([]))
    assert config_identity(compose_run(["device=cuda", "threads=1", "checkpoint.every=5", "logger=none",
                                        "overwrite=true", "paths.log_dir=/elsewhere"])) == base
    assert diff(base, config_identity(compose_run(["space.rank=4"]))) == ["space.rank: 8 → 4"]


def test_checkpoints_are_due_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, every=4)
    assert [s for s in range(10) if checkpointer.due(s, last=9)] == [3, 7, 9]
    assert not any(Checkpointer(tmp_path).due(s, last=9) for s in range(10))
    checkpointer.save("search", {"step": 3})
    assert Checkpointer(tmp_path, resume=True).load("search") == {"step": 3}
    assert checkpointer.load("search") is None  # only a resuming run loads
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        Checkpointer(tmp_path / "other", resume=True).start({})
