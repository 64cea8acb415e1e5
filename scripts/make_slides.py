"""`make slides`: every notebook executed in full mode, exported twice:

    build/slides/<name>.slides.html   a reveal.js deck (nbconvert's slides export; each
                                      cell's slide type is set in the notebook by hand)
    build/html/<name>.html            a static page a student reads in any browser

    .venv/bin/python scripts/make_slides.py                 # every notebook
    .venv/bin/python scripts/make_slides.py 03_pruning      # some of them

Runs come from the notebooks' cache (cache/), so a second build only executes.
The notebooks in notebooks/ are not modified; the executed copies live in memory.
Input cells that only set up (slide type "skip") are left out of the deck.
"""
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from nbrun import execute  # noqa: E402  (one way to run a notebook: the tests' client)


def export(nb, name: str, out: Path) -> list:
    from nbconvert import HTMLExporter, SlidesExporter
    written = []
    for exporter, folder, suffix in ((SlidesExporter(), "slides", ".slides.html"), (HTMLExporter(), "html", ".html")):
        body, _ = exporter.from_notebook_node(nb)
        path = out / folder / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, path)                      # atomic: a reader never sees half a file
        written.append(path)
    return written


def main(argv) -> int:
    from packnet_edu.cache import fast_mode       # the one definition of fast mode
    if fast_mode():
        print("make slides exports full-mode notebooks: unset PACKNET_FAST", file=sys.stderr)
        return 2
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if argv:
        notebooks = [p for p in notebooks if p.stem in argv or p.name in argv]
        if not notebooks:
            print(f"no notebook named {' '.join(argv)} in notebooks/", file=sys.stderr)
            return 2
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = ROOT / "build"
    total = time.perf_counter()
    for path in notebooks:
        nb, seconds = execute(path, timeout=3600)
        files = export(nb, path.stem, out)
        print(f"{path.name}: executed in {seconds:.0f} s -> {', '.join(str(f.relative_to(ROOT)) for f in files)}",
              flush=True)
    print(f"all: {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
