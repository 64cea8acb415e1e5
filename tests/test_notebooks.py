"""The notebook sequence and its solutions: committed stripped of outputs, and
each one runs top to bottom (fast mode, PACKNET_FAST=1) without an error.

Choice enforced here: notebooks are committed *without outputs* (every code
cell has no outputs and execution_count None); running them is the reader's
(or `make lab`'s, or `make slides`') job. Strip a notebook after editing it with
`jupyter nbconvert --clear-output --inplace notebooks/*.ipynb notebooks/solutions/*.ipynb`.
"""
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbrun import execute  # noqa: E402  (pytest puts tests/ on sys.path)

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((FOLDER / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))
SEQUENCE = ["01_baseline", "02_forgetting", "03_pruning", "04_packnet", "05_filter", "06_masks",
            "07_vgg16_paper", "08_drawbacks"]
SLIDE_TYPES = {"slide", "subslide", "fragment", "skip", "notes", "-"}


def markdown(path):
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def exercise_numbers(path) -> list:
    """The numbers of the exercises listed in a notebook's "## Exercises" cell."""
    cell = next(s for s in markdown(path) if s.lstrip().startswith("## Exercises"))
    return [int(n) for n in re.findall(r"^(\d+)\.", cell, flags=re.M)]


def test_the_sequence_is_there():
    names = [p.stem for p in NOTEBOOKS]
    for name in SEQUENCE:
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs; strip them with "
                       f"`jupyter nbconvert --clear-output --inplace {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_learning_goals_summary_and_exercises(path):
    md = markdown(path)
    assert md and "Learning goals" in md[0], f"{path.name} must open with its learning goals"
    assert any(s.lstrip().startswith("## Exercises") for s in md[-2:]), f"{path.name} must end with exercises"
    assert any(s.lstrip().startswith("## Summary") for s in md[-3:]), f"{path.name} must end with a summary"
    assert exercise_numbers(path) == list(range(1, len(exercise_numbers(path)) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_solution(path):
    solution = FOLDER / "solutions" / f"{path.stem}_solutions.ipynb"
    assert solution.is_file(), f"{path.name}: no solutions notebook {solution.name}"
    solved = [int(m) for s in markdown(solution) for m in re.findall(r"^### Exercise (\d+)", s, flags=re.M)]
    assert solved == exercise_numbers(path), f"{solution.name} solves {solved}, {path.name} asks {exercise_numbers(path)}"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_slides_chosen_per_cell(path):
    """`make slides` exports with reveal.js: every cell says where it goes, and
    every second-level heading starts a slide."""
    nb = nbformat.read(path, as_version=4)
    kinds = [c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells]
    assert set(kinds) <= SLIDE_TYPES, f"{path.name}: cells without a slide type: " \
        f"{[i for i, k in enumerate(kinds) if k not in SLIDE_TYPES]}"
    for c, k in zip(nb.cells, kinds):
        if c.cell_type == "markdown" and c.source.startswith("## "):
            assert k == "slide", f"{path.name}: '{c.source.splitlines()[0]}' should start a slide"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_one_definition_of_fast_mode(path):
    """Notebooks ask `cache.fast_mode()`; none reads PACKNET_FAST itself (notebook 7
    once tested `== "1"`, so PACKNET_FAST=true ran it in full mode)."""
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert not any(re.search(r"[\"']PACKNET_FAST[\"']", s) for s in code)


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.stem)
def test_runs_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("PACKNET_FAST", "1")          # the kernel inherits this environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb, seconds = execute(path)                       # raises CellExecutionError on any error
    print(f"{path.name}: {seconds:.0f}s in fast mode")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def prose(name: str) -> str:
    """All markdown of notebook `name`, whitespace collapsed."""
    return " ".join(" ".join(markdown(FOLDER / f"{name}.ipynb")).split())


def test_the_paper_numbers_the_notebooks_quote():
    """Notebooks 4 and 7 quote the paper's Table 2 and its capacity arithmetic;
    these are constants, so they are checked here, against the library's copy of
    the table and its schedule, and not in a notebook cell."""
    from packnet_edu import checkpoint
    from packnet_edu.plots import planned_shares
    from packnet_edu.report import PAPER_VGG16 as paper
    from packnet_edu.train import prune_schedule
    gap = [p - i for p, i in zip(paper["packnet"], paper["individual"])]
    quoted = f"{min(gap):.1f} to {max(gap):.1f} points above one network per task"
    for name in ("04_packnet", "07_vgg16_paper"):
        assert quoted in prose(name), f"{name} should say '{quoted}'"
    ratios = prune_schedule("paper", 4)
    assert " / ".join(f"{r:g}" for r in ratios) + ":" in prose("07_vgg16_paper")          # 0.5 / 0.75 / 0.75 / 0
    shares = ", ".join(f"{100 * s:g}%" for s in planned_shares(ratios)[:-1])          # 50%, 12.5%, 9.375%, 28.125%
    assert f"({shares})" in prose("07_vgg16_paper")
    assert f"an owner map of {checkpoint.bits_for(4)} bits per weight for four tasks" in prose("07_vgg16_paper")


def load_make_slides():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_slides", FOLDER.parent / "scripts" / "make_slides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slides_export(tmp_path, monkeypatch):
    """`make slides`: one reveal.js deck (a section per slide, setup cells left out)
    and one static page per notebook; it refuses fast mode (decks show full-mode runs)."""
    make_slides = load_make_slides()
    nb = nbformat.v4.new_notebook()
    for source, kind in [("# One", "slide"), ("print('setup')", "skip"), ("## Two", "slide"), ("more", "fragment")]:
        cell = (nbformat.v4.new_code_cell if source.startswith("print") else nbformat.v4.new_markdown_cell)(source)
        cell.metadata["slideshow"] = {"slide_type": kind}
        nb.cells.append(cell)
    deck, page = make_slides.export(nb, "demo", tmp_path)
    assert deck == tmp_path / "slides" / "demo.slides.html" and page == tmp_path / "html" / "demo.html"
    deck, page = deck.read_text(), page.read_text()
    assert "reveal" in deck and deck.count("<h1") + deck.count("<h2") >= 2 and "fragment" in deck
    assert "print" not in deck.split("<body")[-1] and "print" in page.split("<body")[-1]
    monkeypatch.setenv("PACKNET_FAST", "1")
    assert make_slides.main([]) == 2
