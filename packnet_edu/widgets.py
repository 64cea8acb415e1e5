"""The notebooks' interactive views.

Each view is two parts:

- a *callback*, a plain module-level function `on_..._change(state, value)`
  that returns a matplotlib Figure (tests call it directly, no browser);
- a *builder* (`pruning_explorer`, ...) that wires ipywidgets controls to
  the callback and shows its figure as an `ipywidgets.Image`.

Every move must answer within half a second on a 2-core laptop, in a real
browser (benchmarks/bench_widgets.py measures it). So the builders never
redraw through the notebook's display machinery: the two heavy figures
(`plots.PruningPanel`, `plots.FilterEvolution`) are built once and updated
in place, the layout is solved once and then frozen, each figure is
rendered straight to a fast-compressed retina PNG, and every value's PNG is
kept, so going back to a value costs nothing.

The image carries the state it shows: each PNG holds a text chunk
(STATE_KEY) naming each control's value as the control displays it, e.g.
"layer = conv2.weight; prune ratio = 0.75", written when the figure is
rendered for that state. It cannot arrive apart from the picture, so
tests/test_browser.py reads it from the image on screen and checks it
against the controls. (ipywidgets' tooltip would do, but an Image with a
tooltip fails to render in JupyterLab: its view reads a `description` that
Image does not have.)
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from . import plots

VIEW_CLASS = "packnet-view"     # the CSS class of every view (the browser test finds them by it)
STATE_KEY = "packnet-state"     # the PNG text chunk naming the state a view's image shows


# ------------------------------------------------------------ rendering
def render_png(fig, state: str = "") -> bytes:
    """`fig` as a retina PNG (twice its dpi), fast: one draw on an Agg
    canvas, zlib level 1 (a third of the default's time, the file a little
    larger). The layout is solved in this draw if the figure has a layout
    engine, then frozen (later draws skip it; a view that needs a new layout,
    e.g. PruningPanel on a new layer, switches it back on). The figure keeps
    its own dpi for normal display. `state`, if given, is stored in the PNG
    as text (STATE_KEY; `png_state` reads it back)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    dpi = fig.dpi
    fig.set_dpi(2 * dpi)
    try:
        canvas.draw()
        rgba = canvas.buffer_rgba()
        size = canvas.get_width_height(physical=True)
    finally:
        fig.set_dpi(dpi)
        fig.set_layout_engine("none")         # positions stay as solved
    info = PngInfo()
    if state:
        info.add_text(STATE_KEY, state)
    buf = io.BytesIO()
    Image.frombuffer("RGBA", size, rgba, "raw", "RGBA", 0, 1).convert("RGB").save(buf, "png", compress_level=1,
                                                                                   pnginfo=info)
    return buf.getvalue()


def png_state(data) -> str | None:
    """The state a view's PNG was drawn for (render_png's `state`), or None."""
    from PIL import Image
    with Image.open(io.BytesIO(bytes(data))) as im:
        return im.text.get(STATE_KEY)


class _Prefetcher(threading.Thread):
    """Renders, while the kernel is idle, the PNGs of the states one move away
    from the current one (nearest first, at most PREFETCH), so that the next
    move only swaps an image. One lock serialises every render of a view:
    its figure is drawn by one thread at a time, and a move waits for at
    most the one render in progress."""

    PREFETCH = 12

    def __init__(self, pngs: Dict[tuple, tuple], lock, render: Callable[[tuple], tuple],
                 nearby: Callable[[tuple], Sequence[tuple]]):
        super().__init__(daemon=True, name="packnet-prefetch")
        self.pngs, self.lock, self.render, self.nearby = pngs, lock, render, nearby
        self.wake, self.current, self.previous = threading.Event(), None, None

    def moved(self, key: tuple) -> None:
        if key != self.current:
            self.previous, self.current = self.current, key
        self.wake.set()

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            for k in list(self.nearby(self.current, self.previous))[:self.PREFETCH]:
                if self.wake.is_set():          # the user moved: start again from the new state
                    break
                time.sleep(0.02)                # let the kernel answer its messages first
                with self.lock:
                    if k not in self.pngs:
                        try:
                            self.pngs[k] = self.render(k)
                        except Exception:       # a state that cannot be drawn is drawn (and fails) on demand
                            pass


def shown_value(control, value) -> str:
    """`value` as `control` displays it: a selection's label, a slider's
    readout, a checkbox as on/off."""
    if hasattr(control, "_options_values"):          # Dropdown, SelectionSlider
        return str(control._options_labels[list(control._options_values).index(value)])
    if isinstance(value, bool):
        return "on" if value else "off"
    fmt = getattr(control, "readout_format", "")
    return format(value, fmt) if fmt else str(value)


def state_label(controls, k: tuple) -> str:
    """The state `k` (the controls' values, in their order) as the view's PNG
    names it: "description = shown value" per control, joined by "; "."""
    return "; ".join(f"{c.description} = {shown_value(c, v)}" for c, v in zip(controls, k))


def _view(controls, key: Callable[[], tuple], draw: Callable[[tuple], object], header,
          nearby: Optional[Callable[[tuple, Optional[tuple]], Sequence[tuple]]] = None, lock=None):
    """`header` above an Image showing draw(key())'s figure, redrawn whenever
    one of `controls` changes; key() is the controls' values, in the order
    of `controls`. Each key's PNG is kept, naming its state inside
    (`state_label`, `png_state`), and the keys `nearby(key, previous key)` lists (one move
    away, nearest first) are rendered ahead while the kernel is idle. `lock`
    (an RLock) serialises the renders with anything else that draws the same
    figure. Returns the VBox (CSS class VIEW_CLASS)."""
    import ipywidgets as W
    pngs: Dict[tuple, tuple] = {}
    lock = lock or threading.RLock()
    image = W.Image(format="png")

    def render(k: tuple) -> tuple:
        fig = draw(k)
        width = str(int(round(fig.get_figwidth() * fig.dpi)))       # CSS px: shown 1:1
        return render_png(fig, state_label(controls, k)), width

    prefetch = _Prefetcher(pngs, lock, render, nearby) if nearby else None

    def redraw(_=None):
        k = key()
        with lock:
            if k not in pngs:
                pngs[k] = render(k)
        with image.hold_sync():                 # one message: the picture and its width
            image.value, image.width = pngs[k]  # widget traits: set from the kernel's thread only
        if prefetch:
            prefetch.moved(k)
    redraw()
    for control in controls:
        control.observe(redraw, names="value")
    if prefetch:
        prefetch.start()
        prefetch.moved(key())
    box = W.VBox([header, image])
    box.add_class(VIEW_CLASS)
    return box


def _by_distance(options: Sequence, current, previous=None) -> list:
    """`options` other than `current`, nearest (in list position) first; at
    equal distance, the one further in the direction of the last move (from
    `previous`): a lecturer walking a slider keeps walking."""
    options = list(options)
    i = options.index(current)
    step = 0 if previous not in options else (1 if options.index(previous) < i else -1)
    return sorted((o for j, o in enumerate(options) if j != i),
                  key=lambda o: (abs(options.index(o) - i), (options.index(o) - i) * step < 0))


# ------------------------------------------------------------ notebook 3: pruning
@dataclass
class PruningState:
    """What the pruning view needs: each layer's trained weights, and the
    precomputed accuracy curve [{"ratio", "before", "after"} and optionally
    "dense_same_epochs"]. The view snaps any ratio to this grid."""
    weights: Dict[str, torch.Tensor]
    curve: List[dict]
    layer: str = ""
    panel: Optional[plots.PruningPanel] = field(default=None, repr=False)

    def __post_init__(self):
        if not self.layer:
            self.layer = next(iter(self.weights))

    @property
    def ratios(self) -> List[float]:
        return [p["ratio"] for p in self.curve]

    def snap(self, ratio: float) -> float:
        """The grid ratio the view shows for `ratio` (the nearest measured one)."""
        return float(self.curve[plots.curve_index(self.curve, ratio)]["ratio"])


def pruning_state(model_or_trunk, curve: Sequence[dict], layer: str = "") -> PruningState:
    """A PruningState from a trained network: every Conv/Linear weight of its trunk."""
    from .engine import PRUNABLE
    trunk = getattr(model_or_trunk, "trunk", model_or_trunk)
    weights = {f"{n}.weight": m.weight.detach().cpu().clone()
               for n, m in trunk.named_modules() if isinstance(m, PRUNABLE)}
    return PruningState(weights, list(curve), layer)


def on_ratio_change(state: PruningState, ratio: float, layer: Optional[str] = None):
    """Pruning view for `ratio` snapped to the curve's grid (and `layer`,
    default the state's): histogram with threshold, kept/pruned mask,
    accuracy curve with this ratio circled; the title names the grid ratio
    shown. Updates the state's one figure in place and returns it."""
    if layer is not None:
        if layer not in state.weights:
            raise ValueError(f"no layer {layer!r}: choose one of {', '.join(state.weights)}")
        state.layer = layer
    if state.panel is None:
        state.panel = plots.PruningPanel(state.curve)
    return state.panel.show(state.weights[state.layer], state.snap(ratio), state.layer)


def pruning_explorer(state: PruningState):
    """A ratio slider over the curve's own grid and a layer dropdown above
    the pruning view (the figure on_ratio_change draws); moving either
    redraws it."""
    import ipywidgets as W
    slider = W.SelectionSlider(options=[(f"{r:.2f}", r) for r in state.ratios],
                               value=state.snap(0.5), description="prune ratio", continuous_update=False,
                               layout=W.Layout(width="480px"), style={"description_width": "90px"})
    layer = W.Dropdown(options=list(state.weights), value=state.layer, description="layer",
                       layout=W.Layout(width="240px"), style={"description_width": "50px"})

    layers = list(state.weights)
    panel = plots.PruningPanel(state.curve)     # its own figure: it is drawn ahead in the background

    def draw(k):
        return panel.show(state.weights[k[0]], state.snap(k[1]), k[0])

    layer.observe(lambda change: setattr(state, "layer", change["new"]), names="value")    # the state follows

    def nearby(k, prev):     # the other ratios of this layer, then this ratio in the other layers
        last = prev[1] if prev and prev[0] == k[0] else None
        return ([(k[0], r) for r in _by_distance(state.ratios, k[1], last)]
                + [(name, k[1]) for name in _by_distance(layers, k[0])])
    return _view([layer, slider], lambda: (layer.value, slider.value), draw, W.HBox([slider, layer]), nearby)


# ------------------------------------------------------------ notebook 4: capacity plan
def on_schedule_change(ratios: Sequence[float], task_names: Optional[Sequence[str]] = None):
    """Each task's planned share of the network for these prune ratios."""
    return plots.capacity_plan([float(r) for r in ratios], task_names)


def schedule_explorer(task_names: Sequence[str], ratios: Sequence[float]):
    """One slider per task's prune ratio; the capacity bar redraws."""
    import ipywidgets as W
    sliders = [W.FloatSlider(value=float(r), min=0.0, max=0.95, step=0.05, readout_format=".2f",
                             description=f"{k}: {n}", continuous_update=False,
                             style={"description_width": "90px"})
               for k, (n, r) in enumerate(zip(task_names, ratios), start=1)]
    values = lambda: tuple(round(s.value, 4) for s in sliders)

    def nearby(k, prev):     # each slider one step up or down; the one just moved, onward, first
        moved = [i for i in range(len(k)) if prev and prev[i] != k[i]]
        out = []
        for i in moved + [i for i in range(len(k)) if i not in moved]:
            onward = 0.05 if not (i in moved and prev[i] > k[i]) else -0.05
            for step in (onward, -onward):
                v = round(k[i] + step, 4)
                if 0.0 <= v <= 0.95:
                    out.append(k[:i] + (v,) + k[i + 1:])
        return out
    return _view(sliders, values, lambda k: on_schedule_change(k, task_names),
                 W.VBox([W.HBox(sliders[i:i + 2]) for i in range(0, len(sliders), 2)]), nearby)


# ------------------------------------------------------------ notebook 5: one filter
def default_filter(snapshots: Sequence[Mapping]) -> int:
    """The first-layer filter that ends up shared by the most tasks (ties: the
    lowest index): the most instructive one to follow."""
    owner = plots._np(snapshots[-1]["owner"])
    flat = owner.reshape(owner.shape[0], -1)
    scores = [len(set(np.unique(row)) - {0}) + 0.01 * (row == 0).mean() for row in flat]
    return int(np.argmax(scores))


def on_filter_change(snapshots: Sequence[Mapping], filter_index: int,
                     task_names: Optional[Sequence[str]] = None):
    """The filter-evolution figure of one first-layer filter."""
    return plots.filter_evolution(snapshots, int(filter_index), task_names)


def filter_explorer(snapshots: Sequence[Mapping], task_names: Optional[Sequence[str]] = None,
                    filter_index: Optional[int] = None):
    """A dropdown of the first layer's filters above the filter-evolution
    figure (built once; a new filter updates its cells in place)."""
    import ipywidgets as W
    n = plots._np(snapshots[0]["weight"]).shape[0]
    pick = W.Dropdown(options=list(range(n)),
                      value=default_filter(snapshots) if filter_index is None else filter_index,
                      description="filter")
    view = plots.FilterEvolution(snapshots, task_names)
    return _view([pick], lambda: (pick.value,), lambda k: view.show(k[0]), pick,
                 lambda k, prev: [(f,) for f in _by_distance(range(n), k[0], prev and prev[0])])


# ------------------------------------------------------------ notebook 6: masks
def on_layer_change(owner_maps: Mapping[str, torch.Tensor], layer: str,
                    task_names: Optional[Sequence[str]] = None, sort: bool = True):
    """The ownership heatmap of one layer."""
    T = plots._num_tasks(owner_maps, task_names)
    return plots.ownership_heatmap(owner_maps[layer], task_names, layer=layer, sort=sort, num_tasks=T)


def mask_explorer(owner_maps: Mapping[str, torch.Tensor], task_names: Optional[Sequence[str]] = None,
                  layer: Optional[str] = None):
    """A layer dropdown and a 'sort filters' toggle above the ownership heatmap."""
    import ipywidgets as W
    pick = W.Dropdown(options=list(owner_maps), value=layer or next(iter(owner_maps)), description="layer")
    sort = W.Checkbox(value=True, description="sort filters by share")
    layers = list(owner_maps)

    def nearby(k, prev):     # the other order of this layer, then the neighbouring layers
        return [(k[0], not k[1])] + [(name, k[1]) for name in _by_distance(layers, k[0], prev and prev[0])]
    return _view([pick, sort], lambda: (pick.value, sort.value),
                 lambda k: on_layer_change(owner_maps, k[0], task_names, k[1]), W.HBox([pick, sort]), nearby)
