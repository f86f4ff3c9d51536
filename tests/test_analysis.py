"""The analysis scripts in experiments/analysis/ run on the committed results in experiments/results/ and print the
figures docs/results.md quotes (so a moved folder or a changed statistic cannot leave them broken unnoticed)."""

from __future__ import annotations

import py_compile
import subprocess
import sys

import pytest

from nas.config import PROJECT_ROOT

ANALYSIS = PROJECT_ROOT / "experiments" / "analysis"
RESULTS = PROJECT_ROOT / "experiments" / "results"

# script -> lines its output must contain: the table header and a row docs/results.md quotes
EXPECTED = {
    "planted_prune_cpu_analyze.py": [
        "| variant | pattern | seeds | dam | perturbation | gate_saliency | fisher |",
        "| E05 | random | 3 | 0.74 / 0.91 | 1.00 / 1.00 | 0.89 / 0.98 | 0.85 / 0.97 |",
        "| variant − reference | criterion | pairs | mean d | 95% CI | sign-flip p | d per pair |",
    ],
    "planted_size_h100_analyze.py": [
        "| DAM precision: variant − reference | pairs | mean d | 95% CI | sign-flip p | d per pair (grid, random) |",
        "| E1000 − C | 6 | +0.167 | [+0.07, +0.26] | 0.062 |",
        "| C − E05 | 6 | +0.093 | [+0.04, +0.14] | 0.062 |",
    ],
    "planted_size_h100_early_gates.py": [
        "| variant | pattern | γ step 0 | 30 | 60 | 90 | γ at the end | 9th γ | rank |",
        "| C | random | 0.047 | 0.034 |",
    ],
}
# Rebuilds the planted teacher from the real MiniLM and GLUE SST-2 (calibration by forward passes): minutes on 2 CPU
# cores, so it is compiled and its inputs checked here, not run.
SLOW = {"planted_size_h100_gate_vs_size.py": RESULTS / "planted_size_h100" / "cpu"}


def test_every_analysis_script_is_checked() -> None:
    assert sorted(p.name for p in ANALYSIS.glob("*.py")) == sorted({*EXPECTED, *SLOW})


def test_result_folders_hold_no_scripts_or_logs() -> None:
    stray = [p for p in RESULTS.rglob("*") if p.suffix in {".py", ".sh", ".log", ".out"} or p.name == "wandb"]
    assert not stray, f"move scripts to experiments/analysis/ and delete logs: {stray[:5]}"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_analysis_script_prints_its_tables(script: str) -> None:
    result = subprocess.run([sys.executable, str(ANALYSIS / script)], capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in EXPECTED[script]:
        assert line in result.stdout, f"{script} no longer prints: {line}"


def test_analysis_script_runs_from_another_folder(tmp_path) -> None:
    """The scripts find the results from their own location, not from the working directory."""
    script = "planted_size_h100_early_gates.py"
    result = subprocess.run([sys.executable, str(ANALYSIS / script)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED[script][1] in result.stdout


@pytest.mark.parametrize("script", sorted(SLOW))
def test_slow_analysis_script_compiles_and_finds_its_runs(script: str, tmp_path) -> None:
    py_compile.compile(str(ANALYSIS / script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    for pattern in ("grid", "random"):
        assert len(list(SLOW[script].glob(f"L300_{pattern}_s*/selection.json"))) == 3
