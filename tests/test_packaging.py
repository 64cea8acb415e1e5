"""environment.yml (conda) and pyproject.toml (pip) name the same dependencies;
the test session is set up as tests/conftest.py says."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_name(r) for r in reqs}


def environment_names():
    names, in_deps = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        m = re.match(r"\s*-\s+([^\s#]+)", line)
        if in_deps and m and not m.group(1).endswith(":") and m.group(1) not in ("-e", "."):
            names.add(_name(m.group(1).split("=")[0] if "==" not in m.group(1) else m.group(1)))
    return names - {"python", "pip", "-e"}


def test_environment_yml_and_pyproject_agree():
    assert pyproject_names() == environment_names()


def test_the_test_helper_sees_real_names():
    assert {"torch", "torchvision", "jupyterlab", "ipywidgets", "matplotlib", "seaborn"} <= pyproject_names()


# ------------------------------------------------------------ the test session itself (tests/conftest.py)
def test_tests_use_a_fresh_temporary_cache():
    """Not the repository's cache/: a folder made for this session, which
    processes started by tests (notebook kernels) inherit."""
    path = Path(os.environ["PACKNET_CACHE"])
    assert path.name.startswith("packnet-test-cache-") and path.parent == Path(tempfile.gettempdir())
    from packnet_edu import cache
    assert cache.cache_dir() == path != ROOT / "cache"
    seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ['PACKNET_CACHE'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(seen) == path


TOOL_TESTS = {
    "test_notebooks_like": """
        import pytest
        nbclient = pytest.importorskip("no_such_notebook_runner")
        def test_runs(): pass
    """,
    "test_browser_like": """
        import pytest
        @pytest.fixture
        def lab():
            pytest.skip("/usr/bin/chromium not found: install Debian's chromium")
        def test_moves(lab): pass
        def test_playwright():
            pytest.importorskip("no_such_playwright_module")
        def test_cuda():
            pytest.skip("no CUDA device")
    """,
}


@pytest.mark.parametrize("ci, outcomes", [
    ("true", {"failed": 1, "errors": 2, "skipped": 1}),   # import and fixture: errors; the CUDA skip stays
    ("", {"skipped": 4}),
])
def test_a_missing_test_tool_fails_under_ci(pytester, monkeypatch, ci, outcomes):
    """Under CI=true a skip because Playwright, chromium or nbclient is
    missing (in a test, a fixture or at import) fails the run; a CUDA skip stays a skip."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(**TOOL_TESTS)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(**outcomes)
    if ci:
        result.stdout.fnmatch_lines(["*CI=true and a test tool is missing*no_such_notebook_runner*",
                                     "*CI=true and a test tool is missing*chromium not found*"], consecutive=False)
        assert result.ret != 0
