"""A real JupyterLab on 127.0.0.1 driven by Debian's chromium through
Playwright: shared by tests/test_browser.py and benchmarks/bench_widgets.py.

    with jupyter_lab(folder, env) as (base, token):
        with chromium() as browser:
            page = open_notebook(browser, base, token, "03_pruning.ipynb")
            run_all(page)

The viewport is a projector's 1280x720, JupyterLab at its default zoom and
layout (file browser open), as a lecturer would have it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("PACKNET_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1280, "height": 720}
KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " const k = w && w.sessionContext && w.sessionContext.session"
               " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }")
# Run All has finished: the kernel is idle and every code cell has run, or
# one failed (Run All stops there).
RUN_ALL_DONE = (
    "() => { const w = window.jupyterapp.shell.currentWidget;"
    " const cells = w.content.widgets.filter(c => c.model.type === 'code');"
    " const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));"
    " return w.sessionContext.session.kernel.status === 'idle'"
    " && (failed || cells.every(c => c.model.executionCount !== null)); }")
ERRORS = ("() => window.jupyterapp.shell.currentWidget.content.widgets"
          ".filter(c => c.model.type === 'code')"
          ".flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')"
          ".map(o => o.ename + ': ' + o.evalue)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout}s")


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict, log_path: Path):
    """JupyterLab serving `root`, with its settings kept under log_path's
    folder (a fresh profile: default layout and zoom); yields (base_url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    home = log_path.parent
    env = dict(os.environ, **env, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield f"http://127.0.0.1:{port}", token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def open_notebook(browser, base: str, token: str, name: str):
    """A 1280x720 page with notebook `name` open and its kernel idle."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab/tree/{name}?token={token}", wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    return page


def run_all(page, timeout_s: float = 600) -> None:
    """Run > Run All Cells, and wait until every code cell has run and the
    kernel is idle again."""
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(RUN_ALL_DONE, timeout=timeout_s * 1000, polling=500)


def errors(page) -> list:
    """'ename: evalue' of every error output in the open notebook."""
    return page.evaluate(ERRORS)
