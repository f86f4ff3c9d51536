"""The walkthrough notebook executes top to bottom (so it cannot rot)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from nas.config import PROJECT_ROOT

pytestmark = pytest.mark.slow  # real MiniLM runs: the full suite only (-m "not slow" leaves them out)


@pytest.mark.integration
def test_walkthrough_executes(tmp_path) -> None:
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "of 36 kept" in outputs and "accuracy" in outputs


@pytest.mark.integration
def test_analysis_notebook_executes_on_a_tiny_real_sweep(tmp_path, monkeypatch, tiny_encoder) -> None:
    """A real two-seed DiffoRA sweep plus a random-selection run (smoke budget, on the tiny encoder: the notebook
    reads the runs' records, whatever the backbone), then the notebook over it."""
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py")]
    result = subprocess.run([*run, "-m", "method=diffora,random",
                             "seed=0,1", "task=mrpc", "debug=smoke", "logger=none", "bilevel.steps=3",
                             "retrain.steps=2", "retrain.export_adapter=false", f"model.name_or_path={tiny_encoder}",
                             f"hydra.sweep.dir={sweep}"],
                            capture_output=True, text=True, timeout=400, env=env, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("DIFFORA_SWEEP", str(sweep))
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                      for cell in notebook.cells for o in cell.get("outputs", []))
    assert "4 runs in" in outputs and "4 finished" in outputs
    assert "| diffora " in outputs and "| random " in outputs
