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

from packnet_edu.widgets import STATE_KEY

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
          ".flatMap((c, i) => c.model.outputs.toJSON().filter(o => o.output_type === 'error')"
          ".map(o => `code cell ${i + 1}: ${o.ename}: ${o.evalue} | `"
          " + c.model.sharedModel.source.split('\\n').slice(0, 3).join(' / ')))")


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
    quiet_settings(home / "settings")
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
    """A 1280x720 page with notebook `name` open (alone: `reset` drops the
    workspace, which would reopen the previous notebooks) as the current
    widget, and its kernel idle."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}", wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path === name; }", arg=name, timeout=120_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    return page


def close_notebook(page) -> None:
    """Shut the notebook's kernel down (it would keep its memory and any
    thread busy) and close the page."""
    try:
        page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    finally:
        page.close()


def run_all(page, timeout_s: float = 600) -> None:
    """Run > Run All Cells, and wait until every code cell has run and the
    kernel is idle again."""
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(RUN_ALL_DONE, timeout=timeout_s * 1000, polling=500)


def errors(page) -> list:
    """'ename: evalue' of every error output in the open notebook."""
    return page.evaluate(ERRORS)


# ------------------------------------------------------------ the notebooks' views
# A view (packnet_edu.widgets) is a VBox of class packnet-view: its controls,
# then an <img> (ipywidgets.Image) whose src changes when the figure does.
CONTROLS = ("input[type=checkbox], select, .noUi-handle")
NOTEBOOK_CONTROLS = ".jp-OutputArea-output .jupyter-widgets :is(input[type=checkbox], select, .noUi-handle)"

# Response time of one move, measured in the page: from the first input event
# on the view (captured before any widget code sees it) to the frame after the
# new image is decoded (two animation frames: the one that paints it).
ARM = """(i) => {
  const view = document.querySelectorAll('.packnet-view')[i];
  const img = view.querySelector('img');
  const old = img.src;
  let t0 = null;
  const first = () => { if (t0 === null) t0 = performance.now(); };
  const kinds = ['keydown', 'mousedown', 'pointerdown', 'change', 'input', 'click'];
  kinds.forEach(k => view.addEventListener(k, first, true));
  window.__move = new Promise((resolve, reject) => {
    const timer = setTimeout(() => { obs.disconnect(); reject(new Error('no new image within 120 s')); }, 120000);
    const obs = new MutationObserver(async () => {
      if (img.src === old || !img.src) return;
      obs.disconnect();
      clearTimeout(timer);
      try { await img.decode(); } catch (e) {}
      requestAnimationFrame(() => requestAnimationFrame(() => {
        kinds.forEach(k => view.removeEventListener(k, first, true));
        resolve({ms: t0 === null ? null : performance.now() - t0, src: img.src});
      }));
    });
    obs.observe(img, {attributes: true, attributeFilter: ['src']});
  });
}"""


# What view i shows, read from the page: the state its image was drawn for (the
# PNG's text chunk packnet_edu.widgets.STATE_KEY, read from the very image on
# screen) and each control's description and value as the control displays it
# (a dropdown's option, a slider's readout, a checkbox as on/off), in the
# state's words: "description = value".
SHOWN = """async (i) => {
  const clean = s => (s || '').replace(/[\\u200b\\s]+/g, ' ').trim();
  const view = document.querySelectorAll('.packnet-view')[i];
  const controls = Array.from(view.querySelectorAll('input[type=checkbox], select, .noUi-handle')).map(e => {
    const box = e.closest('.widget-inline-hbox');
    const described = box.querySelector('.widget-label');
    if (e.tagName === 'SELECT') return [clean(described.textContent), clean(e.options[e.selectedIndex].text)];
    if (e.type === 'checkbox') {
      const text = clean(described.textContent) || clean(e.closest('label').textContent);
      return [text, e.checked ? 'on' : 'off'];
    }
    return [clean(described.textContent), clean(box.querySelector('.widget-readout').textContent)];
  });
  const bytes = new Uint8Array(await (await fetch(view.querySelector('img').src)).arrayBuffer());
  const data = new DataView(bytes.buffer);
  let state = null;
  for (let at = 8; at + 8 <= bytes.length; ) {           // PNG chunks: length, type, data, CRC
    const length = data.getUint32(at), type = String.fromCharCode(...bytes.slice(at + 4, at + 8));
    if (type === 'tEXt') {
      const [key, value] = new TextDecoder('latin1').decode(bytes.slice(at + 8, at + 8 + length)).split('\\0');
      if (key === 'STATE_KEY') state = value;
    }
    if (type === 'IEND') break;
    at += 12 + length;
  }
  return {state: state, controls: controls};
}""".replace("STATE_KEY", STATE_KEY)
MOVED = "data-packnet-moved"        # set on every control a test has moved


def views(page):
    return page.locator(".packnet-view")


def shown(page, view_index: int) -> dict:
    """{"state": the state its image names, "controls": [[description, shown value], ...]} of view `view_index`."""
    return page.evaluate(SHOWN, view_index)


def parse_state(state: str) -> dict:
    """The state "a = 1; b = x" as {"a": "1", "b": "x"}."""
    return dict(part.rsplit(" = ", 1) for part in (state or "").split("; ") if " = " in part)


def controls(view):
    return view.locator(CONTROLS)


def control_kind(control) -> str:
    return control.evaluate("e => e.tagName === 'SELECT' ? 'dropdown' : e.type === 'checkbox' ? 'checkbox' : 'slider'")


def move(control) -> str:
    """Move one control to another value as a user would (keyboard for a
    slider, a click for a checkbox, another option for a dropdown); returns
    a description of the move."""
    kind = control_kind(control)
    if kind == "dropdown":
        options = control.evaluate("e => Array.from(e.options).map(o => o.value)")
        current = control.evaluate("e => e.value")
        new = options[(options.index(current) + 1) % len(options)]
        control.select_option(new)
        return f"dropdown -> option {options.index(new)}"
    if kind == "checkbox":
        control.click()
        return "checkbox toggled"
    at_max = control.evaluate("e => e.getAttribute('aria-valuenow') === e.getAttribute('aria-valuemax')")
    key = "ArrowLeft" if at_max else "ArrowRight"
    control.focus()
    control.press(key)
    return f"slider {key}"


def timed_move(page, view_index: int, control) -> dict:
    """Move `control` of view `view_index` and wait for the new image:
    {"ms": input event to new image painted, "src": the new image, "move": ...}."""
    page.evaluate(ARM, view_index)
    what = move(control)
    control.evaluate(f"e => e.setAttribute('{MOVED}', '1')")
    out = page.evaluate("window.__move")
    out["move"] = what
    return out


def output_images(page) -> list:
    """Every image in the notebook's outputs: its shown width and height in CSS
    px, the width it asks for (retina PNGs ask for half their pixels), and the
    output column's width."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea-output img')).map(i => {
      const r = i.getBoundingClientRect();
      const col = i.closest('.jp-OutputArea-output').getBoundingClientRect().width;
      return {shown: r.width, height: r.height, wanted: +(i.getAttribute('width') || i.naturalWidth),
              natural: i.naturalWidth, column: col, widget: !!i.closest('.packnet-view')};
    })""")


def quiet_settings(settings_dir: Path) -> None:
    """No 'get notified about Jupyter news?' toast over the notebook."""
    folder = settings_dir / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
