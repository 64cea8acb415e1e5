"""A real browser: JupyterLab on 127.0.0.1, Debian's chromium driven by
Playwright (tests/labdriver.py), at a projector's 1280x720.

Every notebook that has widgets is opened and run (fast mode, one shared
cache), then every control of every view is moved as a user would (arrow
key on a slider, another option in a dropdown, a click on a checkbox) and
its figure must change. Every control in the notebook must belong to a view
(so none is left unmoved), and every image in the outputs must be shown at
the size it asks for, inside the output column (not scaled down).
benchmarks/bench_widgets.py times the same moves.

Skipped (with the reason) only where /usr/bin/chromium is missing and not in
CI; with CI=true it fails instead. Install chromium with
`sudo apt-get install chromium` (`make env-dev` does); `playwright install`
is not needed.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from labdriver import (CHROMIUM, NOTEBOOK_CONTROLS, chromium, close_notebook, controls, errors, jupyter_lab,
                       open_notebook, output_images, run_all, timed_move, views)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.browser


def has_widgets(path: Path) -> bool:
    """Whether a notebook's code opens a widget (a view of packnet_edu.widgets, or ipywidgets)."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "_explorer(" in code or "ipywidgets" in code


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "notebooks").glob("solutions/*.ipynb"))
WITH_WIDGETS = [p.relative_to(ROOT / "notebooks").as_posix() for p in NOTEBOOKS if has_widgets(p)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        if IN_CI:
            pytest.fail(msg + " -- the browser test must run in CI")
        pytest.skip(msg)
    pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "lab"
    root.mkdir()
    for name in WITH_WIDGETS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "notebooks" / name, root / name)
    env = {"PACKNET_FAST": "1", "PACKNET_CACHE": str(tmp / "cache")}
    with jupyter_lab(root, env, tmp / "lab.log") as (base, token):
        with chromium() as browser:
            yield browser, base, token
    if os.environ.get("PACKNET_BROWSER_LOG"):
        print((tmp / "lab.log").read_text(errors="replace")[-5000:])


def test_the_notebooks_with_widgets_are_found():
    assert {"03_pruning.ipynb", "04_packnet.ipynb", "05_filter.ipynb", "06_masks.ipynb"} <= set(WITH_WIDGETS)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", WITH_WIDGETS)
def test_every_widget_redraws_its_figure(lab, name):
    browser, base, token = lab
    page = open_notebook(browser, base, token, name)
    try:
        run_all(page)
        assert not errors(page), errors(page)
        n = views(page).count()
        assert n >= 1, "no packnet-view in a notebook that opens widgets"
        inside = sum(controls(views(page).nth(i)).count() for i in range(n))
        assert page.locator(NOTEBOOK_CONTROLS).count() == inside, "a control outside every view"
        moved = 0
        for i in range(n):
            view = views(page).nth(i)
            view.scroll_into_view_if_needed()
            for j in range(controls(view).count()):
                before = view.locator("img").get_attribute("src")
                result = timed_move(page, i, controls(view).nth(j))
                assert result["src"] != before, f"view {i}, control {j}: {result['move']} left the figure"
                moved += 1
        assert moved == inside
        assert not errors(page), errors(page)
        for im in output_images(page):
            assert im["shown"] >= im["wanted"] - 1, f"an image scaled down: {im}"
            assert im["shown"] <= im["column"] + 1, f"an image wider than the column: {im}"
    finally:
        close_notebook(page)
