"""The notebook sequence: committed stripped of outputs, and each one runs
top to bottom (fast mode, PACKNET_FAST=1) without an error.

Choice enforced here: notebooks are committed *without outputs* (every code
cell has no outputs and execution_count None); running them is the reader's
(or `make lab`'s) job. Strip a notebook after editing it with
`jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`.
"""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbrun import execute  # noqa: E402  (pytest puts tests/ on sys.path)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SEQUENCE = ["01_baseline", "02_forgetting", "03_pruning", "04_packnet", "05_filter", "06_masks"]


def test_the_sequence_is_there():
    names = [p.stem for p in NOTEBOOKS]
    for name in SEQUENCE:
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs; strip them with "
                       f"`jupyter nbconvert --clear-output --inplace {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_learning_goals_and_exercises(path):
    nb = nbformat.read(path, as_version=4)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert md and "Learning goals" in md[0], f"{path.name} must open with its learning goals"
    assert any(s.lstrip().startswith("## Exercises") for s in md[-2:]), f"{path.name} must end with exercises"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("PACKNET_FAST", "1")          # the kernel inherits this environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb, seconds = execute(path)                       # raises CellExecutionError on any error
    print(f"{path.name}: {seconds:.0f}s in fast mode")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
