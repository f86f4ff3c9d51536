"""The walkthrough notebook executes top to bottom (so it cannot rot)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from nas.config import PROJECT_ROOT


@pytest.mark.integration
def test_walkthrough_executes(tmp_path) -> None:
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "of 36 kept" in outputs and "accuracy" in outputs
