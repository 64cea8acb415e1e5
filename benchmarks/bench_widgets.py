"""Each notebook widget's response time in a real browser: from the input
event to the new image painted.

    .venv/bin/python benchmarks/bench_widgets.py                 # fast mode
    .venv/bin/python benchmarks/bench_widgets.py --full          # the lecture's full mode
    .venv/bin/python benchmarks/bench_widgets.py --screenshots /tmp/shots

JupyterLab on 127.0.0.1 and Debian's chromium at 1280x720 (tests/labdriver.py,
the same driver as tests/test_browser.py). Each notebook that has widgets is
run top to bottom (results come from the notebooks' cache, `cache/` or
PACKNET_CACHE: a warm cache makes this quick), then every control of every
view is moved `--moves` times as a user would. A move that shows a state of
the view not shown before is a *first visit*; one that comes back to a state
is a *revisit* (the view's kept PNG). Between two moves the benchmark waits
`--pause` seconds, as a lecturer does (the views use that time to draw ahead
the states one move away; `--pause 0` measures a move that finds nothing
drawn ahead). The time is
measured in the page: the first input event on the view (captured before any
widget code sees it) to the second animation frame after the new image is
decoded. Printed per control: median and worst of each kind, beside the
0.5 s target; the exit status is 1 when a control's median (first visits or
revisits) misses it.

`--screenshots DIR` also saves a 1280x720 screenshot of every figure of
those notebooks, scrolled to the top of the screen, and prints its size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from labdriver import (
    chromium,
    close_notebook,
    control_kind,
    controls,
    errors,
    jupyter_lab,
    open_notebook,
    run_all,
    shown,
    timed_move,
    views,
)
from test_browser import WITH_WIDGETS

TARGET_MS = 500


def state(page, i: int) -> tuple:
    """View i's state as its controls display it: ((description, value), ...)."""
    return tuple(map(tuple, shown(page, i)["controls"]))


def bench_notebook(browser, base, token, name, moves, shots, pause):
    page = open_notebook(browser, base, token, name)
    rows = []
    try:
        t = time.time()
        run_all(page, timeout_s=1800)
        ran = time.time() - t
        if errors(page):
            raise RuntimeError(f"{name}: {errors(page)}")
        if shots:
            screenshots(page, name, shots)
        for i in range(views(page).count()):
            view = views(page).nth(i)
            view.scroll_into_view_if_needed()
            seen = {state(page, i)}
            for j in range(controls(view).count()):
                control = controls(view).nth(j)
                first, again = [], []
                for _ in range(moves):
                    page.wait_for_timeout(pause * 1000)
                    ms = timed_move(page, i, control)["ms"]
                    now = state(page, i)
                    (again if now in seen else first).append(ms)
                    seen.add(now)
                rows.append((name, f"view {i + 1}: {control_kind(control)} '{now[j][0]}'", first, again))
    finally:
        close_notebook(page)
    return ran, rows


def screenshots(page, name, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = page.locator(".jp-OutputArea-output img")
    for k in range(images.count()):
        img = images.nth(k)
        img.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        box = img.bounding_box()
        path = folder / f"{Path(name).stem}-{k + 1:02d}.png"
        page.screenshot(path=str(path))
        print(f"  {path.name}: figure {box['width']:.0f}x{box['height']:.0f} CSS px "
              f"at ({box['x']:.0f}, {box['y']:.0f})", flush=True)


def fmt(values) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {0:>3}"
    return f"{statistics.median(values):7.0f} {max(values):7.0f} {len(values):3d}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=8, help="moves per control (default 8)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between moves (default 1)")
    ap.add_argument("--full", action="store_true", help="full mode (default: PACKNET_FAST=1)")
    ap.add_argument("--notebooks", nargs="*", default=WITH_WIDGETS, help="which (default: all with widgets)")
    ap.add_argument("--screenshots", type=Path, help="save a screenshot of every figure here")
    args = ap.parse_args(argv)
    names = [n if n.endswith(".ipynb") else n + ".ipynb" for n in args.notebooks]
    env = {"PACKNET_FAST": "0" if args.full else "1"}
    if os.environ.get("PACKNET_CACHE"):
        env["PACKNET_CACHE"] = os.environ["PACKNET_CACHE"]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {'full' if args.full else 'fast'} mode; "
          f"{args.moves} moves per control, {args.pause:g} s apart; chromium 1280x720", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lab"
        root.mkdir()
        for n in names:
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes((ROOT / "notebooks" / n).read_bytes())
        with jupyter_lab(root, env, Path(tmp) / "lab.log") as (base, token):
            with chromium() as browser:
                for n in names:
                    ran, rows = bench_notebook(browser, base, token, n, args.moves, args.screenshots, args.pause)
                    print(f"{n}: ran in {ran:.0f} s", flush=True)
                    results += rows
    return report(results)


def report(results) -> int:
    """Print the table of `results` ([(notebook, control, first-visit ms, revisit ms)]);
    0 when every control's median, first visits and revisits apart, is within
    TARGET_MS, else 1 (the misses are named)."""
    print(f"\nresponse time (ms), input event to new image painted; target {TARGET_MS} ms (median)")
    print(f"{'notebook':18s} {'control':44s} {'first visits: median max n':>28s}   {'revisits: median max n':>24s}  within")
    misses, worst = [], 0.0
    for name, what, first, again in results:
        late = [f"{kind} median {statistics.median(v):.0f} ms" for kind, v in (("first visits", first), ("revisits", again))
                if v and statistics.median(v) > TARGET_MS]
        misses += [f"{name} {what}: {m}" for m in late]
        worst = max([worst] + first + again)
        print(f"{name:18s} {what[:44]:44s} {fmt(first):>28s}   {fmt(again):>24s}  {'NO' if late else 'yes'}")
    print(f"worst move: {worst:.0f} ms; load average now {os.getloadavg()[0]:.1f}")
    for m in misses:
        print(f"MISSED the {TARGET_MS} ms target: {m}")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
