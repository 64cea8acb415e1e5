"""What every test session shares.

- A fresh, temporary notebook cache: PACKNET_CACHE points to a new folder
  for the session, set in os.environ before any test module is imported, so
  notebook kernels and other processes started by tests inherit it. No test
  reads a result that an earlier session, or a reader of the notebooks, left
  in the repository's cache/. (tests/test_cache.py gives each of its tests
  its own folder on top of this.)
- Under CI=true a missing test tool (Playwright, chromium, nbclient,
  nbformat, Jupyter) fails the run: a skip for that reason becomes a failure,
  whether it is raised in a test, a fixture or at import. Elsewhere such a
  test is skipped with its reason, as before. Skips for other reasons (no
  CUDA device) stay skips.
"""
import os
import shutil
import tempfile

import pytest

pytest_plugins = ["pytester"]      # tests/test_packaging.py runs small pytest sessions with this file

CACHE_PREFIX = "packnet-test-cache-"
TOOL_WORDS = ("could not import", "playwright", "chromium", "nbclient", "nbformat", "jupyter", "ipykernel")
_saved = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    _saved["PACKNET_CACHE"] = os.environ.get("PACKNET_CACHE")
    _saved["folder"] = tempfile.mkdtemp(prefix=CACHE_PREFIX)
    os.environ["PACKNET_CACHE"] = _saved["folder"]


def pytest_unconfigure(config):
    shutil.rmtree(_saved.pop("folder", ""), ignore_errors=True)
    old = _saved.pop("PACKNET_CACHE", None)
    if old is None:
        os.environ.pop("PACKNET_CACHE", None)
    else:
        os.environ["PACKNET_CACHE"] = old


def _skip_reason(longrepr) -> str:
    """The message of a skip report (a (path, line, message) tuple)."""
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


def _fail_if_tool_missing(report) -> None:
    if not (in_ci() and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = _skip_reason(report.longrepr)
    if any(word in reason.lower() for word in TOOL_WORDS):
        report.outcome = "failed"
        report.longrepr = (f"CI=true and a test tool is missing, so this fails instead of skipping: {reason} "
                           "(`make env-dev` installs the Python tools and chromium)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_tool_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield            # a module-level pytest.importorskip skips the whole file here
    _fail_if_tool_missing(outcome.get_result())
