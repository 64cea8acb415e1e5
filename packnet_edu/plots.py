"""Every figure of the notebooks: pure functions that take data and return a
matplotlib `Figure` (no pyplot state, nothing shown, nothing saved).

One style for all of them, made for a projector (1280x720, JupyterLab at its
default zoom, file browser open: an output column of 848 CSS px and about
600 px of visible notebook):

- every figure is at most `MAX_WIDTH_PX` wide and `MAX_HEIGHT_PX` high at
  its `DPI`, so it is shown 1:1 (never scaled down), title and legend on
  screen with the plot; no text is smaller than `MIN_FONT_PT` (15 px);
- HiDPI: `use_notebook_style()` makes the notebook send retina PNGs, the
  widgets render at twice the resolution, `save_figure` at 200 dpi + SVG;
- task k always has the colour `task_color(k)`, from Paul Tol's and
  Okabe & Ito's colour-blind-safe sets, ordered so that the first tasks stay
  apart under deuteranopia and protanopia (tests/test_plots.py simulates
  both); free weights are light grey *and* hatched; task numbers are written
  where colour alone would carry the meaning;
- legends sit outside the axes, never over data; shares are written by
  `percent`, the same rounding as the ownership tables (12.5%, 9.4%).

The figures are derived from the engine's single source of truth, the uint8
owner map of each weight (0 = free, k = task k). The two figures the widgets
redraw on every move (`PruningPanel`, `FilterEvolution`) are classes that
update their artists in place; `pruning_panel` and `filter_evolution` are
their one-shot function forms.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import matplotlib
import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .engine import prune_count, smallest_magnitude
from .fileio import atomic_write

# Tol's and Okabe & Ito's colour-blind-safe colours, in the order that keeps the
# first four (and six) furthest apart under deuteranopia and protanopia
# (CIEDE2000 after Machado et al. 2009's simulation; see tests/test_plots.py).
TASK_COLORS = ["#0077BB", "#E69F00", "#882255", "#CC6677", "#33BBEE", "#CC3311", "#44AA99", "#332288"]
FREE_COLOR = "#d9d9d9"
FREE_HATCH = "///"
HATCH_COLOR = "#8c8c8c"
PRUNED_COLOR = FREE_COLOR   # pruned weights are free weights
TEXT_COLOR = "#222222"
REFERENCE_COLOR = "#555555"

# The projector budget (see the module docstring): 848 x ~600 CSS px visible.
DPI = 100
MAX_WIDTH_PX, MAX_HEIGHT_PX = 840, 540
WIDTH = MAX_WIDTH_PX / DPI - 0.2           # inches: the full column, less the tight-bbox padding
MIN_FONT_PT = 11                           # 11 pt at 100 dpi = 15.3 px on screen
MIN_SHADE = 0.4                            # palest magnitude shade: never near the free grey

STYLE = {
    "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "figure.titlesize": 14,
    "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT, "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT, "axes.titleweight": "normal",
    "axes.spines.top": False, "axes.spines.right": False, "hatch.color": HATCH_COLOR,
    "figure.dpi": DPI, "savefig.dpi": 2 * DPI, "savefig.bbox": "tight", "svg.fonttype": "none",
}

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


def use_notebook_style() -> None:
    """Call once at the top of a notebook: figures are sent as retina PNGs
    (twice the pixels, shown at the same size), sharp on HiDPI screens and
    projectors. Same as `%config InlineBackend.figure_formats = ['retina']`."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats
    set_matplotlib_formats("retina")


def task_color(k: int) -> str:
    """The colour of task `k` (1-based); 0 is free (grey)."""
    if k == 0:
        return FREE_COLOR
    return TASK_COLORS[(k - 1) % len(TASK_COLORS)]


def task_label(k: int, task_names: Optional[Sequence[str]] = None) -> str:
    if k == 0:
        return "free"
    if task_names and k <= len(task_names):
        return f"{k}: {task_names[k - 1]}"
    return f"task {k}"


def percent(share: float) -> str:
    """A share (0..1) as the ownership tables write it (report.ownership_table):
    one decimal, so the paper's 12.5% and 9.375% read 12.5% and 9.4% everywhere."""
    return f"{100 * share:.1f}%"


def text_color_on(color) -> str:
    """Dark or white text, whichever contrasts more with `color` (WCAG luminance)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "white" if 1.05 / (lum + 0.05) >= (lum + 0.05) / 0.05 else TEXT_COLOR


def _figure(width: float, height: float, **kwargs) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(min(width, WIDTH), height), dpi=DPI, layout="constrained", **kwargs)


def _styled(fn):
    """Run a drawing function inside the package style."""
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapper


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _matrix(R) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in R], dtype=float)


def _patch(k: int, label: str) -> Patch:
    """A legend/bar patch in task k's colour; free (k = 0) is hatched."""
    return Patch(facecolor=task_color(k), edgecolor=HATCH_COLOR if k == 0 else "none",
                 hatch=FREE_HATCH if k == 0 else None, lw=0, label=label)


def _legend_columns(ids: Sequence[int], task_names) -> int:
    """As many legend entries per row as fit the figure's width (an entry:
    its patch, its label, the gap to the next)."""
    longest = max(len(task_label(k, task_names)) for k in ids)
    entry_px = longest * 0.62 * MIN_FONT_PT * DPI / 72 + 60
    return max(1, min(len(ids), int((WIDTH * DPI - 40) // entry_px)))


def _legend_rows(ids: Sequence[int], task_names) -> int:
    return -(-len(ids) // _legend_columns(ids, task_names))


def _task_legend(fig: Figure, ids: Sequence[int], task_names, **kwargs):
    """The task legend, below the axes (never over data)."""
    handles = [_patch(k, task_label(k, task_names)) for k in ids]
    kwargs.setdefault("loc", "outside lower center")
    kwargs.setdefault("ncol", _legend_columns(ids, task_names))
    return fig.legend(handles=handles, frameon=False, **kwargs)


def _fits(text: str, width_px: float, fontsize: float) -> bool:
    """Whether `text` at `fontsize` pt fits in `width_px` pixels (a conservative
    estimate: 0.62 em per character)."""
    return len(text) * 0.62 * fontsize * DPI / 72 <= width_px


def shade(color: str, strength: float) -> np.ndarray:
    """`color` blended towards white: strength 1 is the full colour, 0 white."""
    c = np.array(to_rgb(color))
    s = float(np.clip(strength, 0.0, 1.0))
    return 1.0 - s * (1.0 - c)


# ---------------------------------------------------------------- accuracy
def _draw_accuracy_matrix(ax, R, task_names, title, vmin=0.0, vmax=100.0, row_labels=True):
    M = _matrix(R)
    rows, cols = M.shape
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    for i in range(rows):
        for j in range(cols):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.1f}", ha="center", va="center", fontsize=MIN_FONT_PT,
                        color=text_color_on(cmap((M[i, j] - vmin) / (vmax - vmin))))
    ax.set_xticks(range(cols), [task_label(k, task_names) for k in range(1, cols + 1)], rotation=30, ha="right")
    if rows == cols:
        ylabels = [f"after {k}" for k in range(1, rows + 1)]
    else:
        ylabels = ["after all"] if rows == 1 else [f"after {k}" for k in range(1, rows + 1)]
    ax.set_yticks(range(rows), ylabels if row_labels else [""] * rows)
    ax.set_xlabel("accuracy (%) on task")
    if row_labels:
        ax.set_ylabel("trained up to task")
    ax.set_title(title)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(length=0)
    return im


@_styled
def accuracy_matrix_heatmap(R, task_names: Optional[Sequence[str]] = None, title: str = "") -> Figure:
    """The accuracy matrix R[i][j] (test accuracy % on task j+1 after training
    task i+1; None above the diagonal) as an annotated heatmap."""
    n = len(R[0])
    fig = _figure(0.85 * n + 3.4, 0.7 * len(R) + 2.4)
    ax = fig.add_subplot()
    im = _draw_accuracy_matrix(ax, R, task_names, title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy (%)")
    return fig


@_styled
def accuracy_matrices(matrices: Mapping[str, list], task_names: Optional[Sequence[str]] = None,
                      title: str = "") -> Figure:
    """Several accuracy matrices side by side on one colour scale
    (e.g. {"fine-tuning": R1, "PackNet": R2})."""
    n = len(next(iter(matrices.values()))[0])
    fig = _figure(WIDTH, 0.62 * n + 2.5)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for i, (ax, (name, R)) in enumerate(zip(axes, matrices.items())):
        im = _draw_accuracy_matrix(ax, R, task_names, name, row_labels=i == 0)
        if i:
            ax.set_xlabel("")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="accuracy (%)")
    if title:
        fig.suptitle(title)
    return fig


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@_styled
def forgetting_curves(R, task_names: Optional[Sequence[str]] = None, title: str = "",
                      reference: Optional[Sequence[float]] = None) -> Figure:
    """Each task's accuracy as more tasks are learned (one line per task, in
    its colour and with its own marker); `reference` (e.g. the individual
    networks' accuracies) as dotted lines. The legend is outside, right."""
    M = _matrix(R)
    n = M.shape[1]
    fig = _figure(WIDTH, 4.2)
    ax = fig.add_subplot()
    x = np.arange(1, M.shape[0] + 1)
    for j in range(n):
        c = task_color(j + 1)
        ax.plot(x, M[:, j], "-", marker=MARKERS[j % len(MARKERS)], color=c, lw=2.5, ms=9,
                label=task_label(j + 1, task_names))
        if reference is not None and reference[j] is not None:
            ax.axhline(reference[j], color=c, ls=":", lw=1.8)
    ax.set_xticks(x, [f"after {k}" for k in x])
    ax.set_xlabel("trained up to task")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if reference is not None:
        handles.append(matplotlib.lines.Line2D([], [], color=REFERENCE_COLOR, ls=":", lw=1.8))
        labels.append("trained alone")
    fig.legend(handles, labels, frameon=False, loc="outside right upper")
    return fig


@_styled
def accuracy_bars(results: Mapping[str, Sequence[float]], task_names: Optional[Sequence[str]] = None,
                  title: str = "") -> Figure:
    """Grouped bars: one group per task (its colour), one bar per method (its
    hatching), the value on each bar; the method legend below the axes
    (e.g. {"individual": [...], "PackNet": [...]})."""
    methods = list(results)
    n = len(next(iter(results.values())))
    fig = _figure(WIDTH, 4.4)
    ax = fig.add_subplot()
    width = 0.84 / len(methods)
    hatches = ["", "//", "..", "xx", "\\\\"]
    bar_px = width * 0.95 * (WIDTH - 1.0) * DPI / n
    labels = [f"{v:.1f}" for vs in results.values() for v in vs if v is not None]
    rotate = not all(_fits(t, bar_px, MIN_FONT_PT) for t in labels)
    for m, name in enumerate(methods):
        for j, v in enumerate(results[name]):
            if v is None:
                continue
            x = j + (m - (len(methods) - 1) / 2) * width
            ax.bar(x, v, width * 0.95, color=task_color(j + 1), hatch=hatches[m % len(hatches)],
                   edgecolor="white", lw=0)
            ax.text(x, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=MIN_FONT_PT,
                    rotation=90 if rotate else 0)
    ax.set_xticks(range(n), [task_label(k, task_names) for k in range(1, n + 1)])
    ax.set_ylim(0, 118 if rotate else 108)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("test accuracy (%)")
    if len(methods) > 1:
        handles = [Patch(facecolor="white", hatch=hatches[m % len(hatches)], edgecolor=TEXT_COLOR, label=name)
                   for m, name in enumerate(methods)]     # the method's hatching, visible on white
        fig.legend(handles=handles, frameon=False, loc="outside lower center", ncol=len(methods))
    ax.set_title(title)
    return fig


def _class_examples(y: torch.Tensor, count: int) -> List[int]:
    """Index of the first example of each of the first `count` classes present
    (the splits are sorted by class: the first `count` images would all be
    of one class)."""
    seen: Dict[int, int] = {}
    for i, c in enumerate(_np(y).tolist()):
        if c not in seen:
            seen[c] = i
            if len(seen) == count:
                break
    return [seen[c] for c in sorted(seen)]


@_styled
def task_samples(tasks, per_task: int = 8, title: str = "") -> Figure:
    """One training image per class (up to `per_task` classes) of each task,
    one row per task, each image with its full class name."""
    fig = _figure(WIDTH, 1.15 * len(tasks) + (0.5 if title else 0.1))
    axes = fig.subplots(len(tasks), per_task, squeeze=False)
    label_px = (WIDTH - 1.3) * DPI / per_task
    for k, (task, row) in enumerate(zip(tasks, axes), start=1):
        x, y = task.train.tensors
        picks = _class_examples(y, per_task)
        for ax, i in zip(row, picks + [None] * (per_task - len(picks))):
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(i is not None)
                s.set_color(task_color(k))
                s.set_linewidth(2.5)
            if i is None:
                continue
            ax.imshow(_np(x[i, 0]), cmap="gray_r", vmin=0, vmax=1)
            name = str(task.classes[int(y[i])])
            if not _fits(name, label_px, MIN_FONT_PT):
                name = "\n".join(textwrap.wrap(name.replace("/", "/ "), 9))
            ax.set_title(name, fontsize=MIN_FONT_PT, pad=2)
        row[0].set_ylabel(task_label(k, [t.name for t in tasks]), rotation=0, ha="right", va="center",
                          fontsize=12)
    if title:
        fig.suptitle(title)
    return fig


def synthetic_owner_maps(shapes: Mapping[str, Sequence[int]], ratios: Sequence[float],
                         seed: int = 0) -> Dict[str, torch.Tensor]:
    """Owner maps as PackNet would make them, for showing figures at a scale
    (e.g. VGG-16's) no CPU run reaches: each task takes the free weights,
    draws magnitudes |N(0, s_f)| with a random scale s_f per filter (so filters
    differ), and releases the smallest `ratios[t-1]` per layer.
    NOT a trained network: for figures and tests only."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        owner = torch.zeros(shape, dtype=torch.uint8)
        flat = owner.view(shape[0], -1)
        for t, r in enumerate(ratios, start=1):
            flat[flat == 0] = t
            scale = torch.exp(0.6 * torch.randn(shape[0], 1, generator=g))
            mag = torch.randn(flat.shape, generator=g).abs() * scale
            mine = (flat == t).flatten().nonzero().squeeze(1)
            drop = mine[smallest_magnitude(mag.flatten()[mine], prune_count(r, mine.numel()))]   # the engine's rule
            flat.view(-1)[drop] = 0
        out[name] = owner
    return out


# ---------------------------------------------------------------- pruning
def _released(weights: ArrayLike, ratio: float) -> torch.Tensor:
    """Flat indices `PackNet.prune(ratio)` releases in this layer (the engine's
    own rule: prune_count smallest |w|, ties by position)."""
    w = torch.as_tensor(_np(weights)).flatten()
    return smallest_magnitude(w, prune_count(ratio, w.numel()))


def magnitude_threshold(weights: ArrayLike, ratio: float) -> float:
    """The magnitude below which `prune(ratio)` releases weights: |w| of the
    last released weight (0.0 when nothing is released)."""
    w = torch.as_tensor(_np(weights)).flatten()
    drop = _released(w, ratio)
    return float(w[drop].abs().max()) if drop.numel() else 0.0


def keep_mask(weights: ArrayLike, ratio: float) -> np.ndarray:
    """True for the weights magnitude pruning at `ratio` keeps (the engine's rule)."""
    shape = _np(weights).shape
    keep = np.ones(int(np.prod(shape)), dtype=bool)
    keep[_released(weights, ratio).numpy()] = False
    return keep.reshape(shape)


def _as_rows(x: np.ndarray) -> np.ndarray:
    """A weight-shaped array as a 2-D image: one row per output unit/filter."""
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def _mask_rgb(weights, keep, color=None) -> np.ndarray:
    """Kept weights in `color` shaded by |w| (never paler than MIN_SHADE), the
    others in the free grey; one row per filter."""
    w = _as_rows(np.abs(_np(weights)))
    k = _as_rows(_np(keep).astype(bool))
    scale = float(w.max()) or 1.0
    base = np.array(to_rgb(color or task_color(1)))
    strength = MIN_SHADE + (1 - MIN_SHADE) * (w / scale)
    img = 1.0 - strength[..., None] * (1.0 - base)
    img[~k] = to_rgb(PRUNED_COLOR)
    return img


def _hist_counts(w: np.ndarray, threshold: float, bins: np.ndarray):
    kept = np.abs(w) > threshold
    return np.histogram(w[kept], bins)[0], np.histogram(w[~kept], bins)[0], kept.mean()


def _draw_histogram(ax, weights, threshold, ratio=None, title=""):
    w = _np(weights).ravel()
    lim = float(np.abs(w).max()) or 1.0
    bins = np.linspace(-lim, lim, 61)
    k, p, share = _hist_counts(w, threshold, bins)
    ax.stairs(k, bins, fill=True, color=task_color(1), label=f"kept ({share:.0%})")
    ax.stairs(p, bins, fill=True, facecolor=PRUNED_COLOR, hatch=FREE_HATCH, edgecolor=HATCH_COLOR, lw=0,
              label=f"pruned ({1 - share:.0%})")
    if threshold > 0:
        for s in (-1, 1):
            ax.axvline(s * threshold, color=TEXT_COLOR, ls="--", lw=1.5)
    ax.set_xlabel("weight value")
    ax.set_ylabel("number of weights")
    ax.set_ylim(0, max(k.max(initial=0), p.max(initial=0)) * 1.08 or 1)
    ax.figure.legend(frameon=False, loc="outside lower center", ncol=2)
    thr = f": |w| <= {threshold:.3g} released" if threshold > 0 else ""
    ax.set_title(title or (f"pruning {ratio:.0%}{thr}" if ratio is not None else "weights"))


@_styled
def weight_histogram(weights: ArrayLike, threshold: float = 0.0, title: str = "") -> Figure:
    """Histogram of a layer's weights; those with |w| <= threshold (pruned) in
    hatched grey, the kept ones in task 1's colour, the threshold dashed."""
    fig = _figure(7.0, 4.0)
    _draw_histogram(fig.add_subplot(), weights, threshold, title=title)
    return fig


def _draw_mask(ax, weights, keep, title="", color=None):
    ax.imshow(_mask_rgb(weights, keep, color), aspect="auto", interpolation="nearest")
    k = _np(keep).astype(bool)
    ax.set_xlabel("inputs x kernel positions")
    ax.set_ylabel("filter")
    ax.set_title(title or f"kept {k.mean():.0%} (shade = |w|), pruned grey")
    for s in ax.spines.values():
        s.set_visible(False)


@_styled
def prune_mask_image(weights: ArrayLike, keep: ArrayLike, title: str = "") -> Figure:
    """A layer's kept/pruned mask: one row per filter (its weights flattened),
    kept weights in task 1's colour shaded by magnitude, pruned ones grey."""
    fig = _figure(7.0, 4.0)
    _draw_mask(fig.add_subplot(), weights, keep, title)
    return fig


def curve_index(curve: Sequence[Mapping[str, float]], ratio: float) -> int:
    """Index of the curve's point nearest `ratio`: views snap to the grid the
    accuracies were measured on, so what is drawn is always a measured point."""
    r = np.array([p["ratio"] for p in curve], dtype=float)
    return int(np.argmin(np.abs(r - float(ratio))))


def _dense_reference(curve) -> Optional[float]:
    vals = [p["dense_same_epochs"] for p in curve if p.get("dense_same_epochs") is not None]
    return float(np.mean(vals)) if vals else None


def _draw_curve(ax, curve, legend: bool = True):
    """Accuracy against ratio, without the highlight (see _CurveMarker); its
    legend below the figure."""
    r = np.array([p["ratio"] for p in curve])
    ax.plot(r, [p["before"] for p in curve], "--s", color=REFERENCE_COLOR, lw=2, ms=6,
            label="pruned, before retraining")
    ax.plot(r, [p["after"] for p in curve], "-o", color=task_color(1), lw=2.5, ms=7, label="after retraining")
    dense = _dense_reference(curve)
    if dense is not None:
        ax.axhline(dense, color=task_color(2), ls=":", lw=2.5, label="dense, same extra epoch")
    ax.set_xlabel("prune ratio")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.04, 1.0)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"])
    if legend:
        ax.figure.legend(*ax.get_legend_handles_labels(), frameon=False, loc="outside lower center", ncol=3)


class _CurveMarker:
    """The circled point on an accuracy-vs-ratio axes, movable; its accuracy
    goes in the axes title (a label next to the point would sit on the
    curves or the reference line)."""

    def __init__(self, ax, curve):
        self.ax, self.curve = ax, curve
        self.before, = ax.plot([], [], "o", ms=16, mfc="none", mec=REFERENCE_COLOR, mew=2.5)
        self.after, = ax.plot([], [], "o", ms=16, mfc="none", mec=TEXT_COLOR, mew=2.5)
        self.line = ax.axvline(0, color="#999999", lw=1, zorder=0)

    def move(self, i: int) -> None:
        p = self.curve[i]
        self.before.set_data([p["ratio"]], [p["before"]])
        self.after.set_data([p["ratio"]], [p["after"]])
        self.line.set_xdata([p["ratio"]])
        self.ax.set_title(f"retrained: {p['after']:.1f}%")


@_styled
def accuracy_vs_ratio(curve: Sequence[Mapping[str, float]], highlight: Optional[float] = None,
                      title: str = "") -> Figure:
    """Accuracy before and after retraining against the prune ratio; `curve`
    is a list of {"ratio", "before", "after"} (and optionally
    "dense_same_epochs", drawn as a dotted reference line); the measured
    point nearest `highlight` is circled and the title names its ratio."""
    fig = _figure(7.0, 4.4)
    ax = fig.add_subplot()
    _draw_curve(ax, curve)
    shown = ""
    if highlight is not None:
        i = curve_index(curve, highlight)
        _CurveMarker(ax, curve).move(i)
        shown = f": ratio {curve[i]['ratio']:.2f} circled, {curve[i]['after']:.1f}% retrained"
    ax.set_title(title or f"accuracy against prune ratio{shown}")
    return fig


class PruningPanel:
    """The pruning notebook's three views for one layer and ratio: the
    layer's weight histogram with the threshold, its kept/pruned mask,
    accuracy against ratio with the ratio circled. `show(weights, ratio,
    layer)` redraws it by updating the artists in place (what the slider
    does on every move); the ratio snaps to the curve's grid, and the title
    says the ratio actually shown."""

    def __init__(self, curve: Sequence[Mapping[str, float]]):
        self.curve = list(curve)
        with matplotlib.rc_context(STYLE):
            self.fig = _figure(WIDTH, 3.7)
            self.ax_hist, self.ax_mask, self.ax_curve = self.fig.subplots(1, 3, width_ratios=[1.15, 1.0, 1.15])
            a = self.ax_hist
            self.kept = a.stairs([0], [0, 1], fill=True, color=task_color(1), label="kept")
            self.pruned = a.stairs([0], [0, 1], fill=True, facecolor=PRUNED_COLOR, hatch=FREE_HATCH,
                                   edgecolor=HATCH_COLOR, lw=0, label="pruned (free)")
            self.thr = [a.axvline(0, color=TEXT_COLOR, ls="--", lw=1.5) for _ in (-1, 1)]
            a.set_xlabel("weight value")
            a.set_ylabel("weights")
            self.image = self.ax_mask.imshow(np.ones((2, 2, 3)), aspect="auto", interpolation="nearest")
            self.ax_mask.set_xlabel("inputs x kernel")
            self.ax_mask.set_ylabel("filter")
            for s in self.ax_mask.spines.values():
                s.set_visible(False)
            _draw_curve(self.ax_curve, self.curve, legend=False)
            self.marker = _CurveMarker(self.ax_curve, self.curve)
            h1, l1 = a.get_legend_handles_labels()
            h2, l2 = self.ax_curve.get_legend_handles_labels()
            self.fig.legend(h1 + h2, l1 + l2, frameon=False, loc="outside lower center", ncol=3,
                            columnspacing=1.2, handlelength=1.8)
        self._layer_key = None

    def show(self, weights: ArrayLike, ratio: float, layer: str = "") -> Figure:
        with matplotlib.rc_context(STYLE):
            return self._show(weights, ratio, layer)

    def _show(self, weights, ratio, layer):
        i = curve_index(self.curve, ratio)
        r = float(self.curve[i]["ratio"])
        w = _np(weights)
        flat = w.ravel()
        key = (layer, id(weights))
        if key != self._layer_key:          # a new layer: new bins, limits, image shape, layout
            self._layer_key = key
            self.fig.set_layout_engine("constrained")
            lim = float(np.abs(flat).max()) or 1.0
            self._bins = np.linspace(-lim, lim, 61)
            self.ax_hist.set_xlim(-lim, lim)
            top = np.histogram(flat, self._bins)[0].max()
            self.ax_hist.set_ylim(0, top * 1.08)
            rows = _as_rows(w)
            self.image.set_extent((-0.5, rows.shape[1] - 0.5, rows.shape[0] - 0.5, -0.5))
            self.ax_mask.set_xlim(-0.5, rows.shape[1] - 0.5)
            self.ax_mask.set_ylim(rows.shape[0] - 0.5, -0.5)
        thr = magnitude_threshold(w, r)
        keep = keep_mask(w, r)
        k, p, share = _hist_counts(flat, thr, self._bins)
        self.kept.set_data(k, self._bins)
        self.pruned.set_data(p, self._bins)
        for s, line in zip((-1, 1), self.thr):
            line.set_xdata([s * thr])
            line.set_visible(thr > 0)
        self.ax_hist.set_title(f"kept {percent(share)}")
        self.image.set_data(_mask_rgb(w, keep))
        self.ax_mask.set_title("mask (grey: pruned)")
        self.marker.move(i)
        name = layer.removesuffix(".weight") or "layer"
        cut = f", |w| <= {thr:.3g} released" if thr > 0 else ""
        self.fig.suptitle(f"{name}: pruning ratio {r:.2f}{cut}")
        return self.fig


@_styled
def pruning_panel(weights: ArrayLike, ratio: float, curve: Sequence[Mapping[str, float]],
                  layer: str = "") -> Figure:
    """The pruning notebook's three views for one ratio (see PruningPanel);
    the ratio snaps to the nearest point of `curve`."""
    return PruningPanel(curve).show(weights, ratio, layer)


# ---------------------------------------------------------------- capacity
def planned_shares(ratios: Sequence[float]) -> List[float]:
    """Each task's share of every layer when task t releases `ratios[t-1]` of
    what it was given, and the share left free at the end (last entry):
    task 1 takes everything and keeps 1 - r1; task 2 takes the r1 released, ..."""
    remaining, shares = 1.0, []
    for r in ratios:
        shares.append(remaining * (1.0 - r))
        remaining *= r
    return shares + [remaining]


def _share_bar(ax, y: float, ids: Sequence[int], shares: Sequence[float], height: float,
               px_per_unit: float, two_lines: bool = False):
    """One horizontal bar of stacked shares, each labelled with its task number
    and `percent(share)` where the text fits (on two lines if `two_lines` and
    one does not fit); free is hatched."""
    left = 0.0
    for k, s in zip(ids, shares):
        ax.barh(y, s, left=left, color=task_color(k), height=height, edgecolor="white", lw=1.2,
                hatch=FREE_HATCH if k == 0 else None)
        name, pct = (str(k) if k else "free"), percent(s)
        candidates = [f"{name}: {pct}"] + ([f"{name}\n{pct}"] if two_lines else []) + [pct]
        width_px = s * px_per_unit - 6
        for text in candidates:
            if s > 0 and all(_fits(line, width_px, MIN_FONT_PT) for line in text.split("\n")):
                ax.text(left + s / 2, y, text, ha="center", va="center", fontsize=MIN_FONT_PT,
                        color=text_color_on(task_color(k)), linespacing=1.1,
                        bbox=dict(facecolor=FREE_COLOR, edgecolor="none", pad=1) if k == 0 else None)
                break
        left += s


@_styled
def capacity_plan(ratios: Sequence[float], task_names: Optional[Sequence[str]] = None,
                  title: str = "") -> Figure:
    """One bar, split into each task's share of the network (and free) that
    the prune ratios imply, before anything is trained."""
    shares = planned_shares(ratios)
    ids = list(range(1, len(ratios) + 1)) + [0]
    fig = _figure(WIDTH, 2.2 + 0.3 * _legend_rows(ids, task_names))
    ax = fig.add_subplot()
    _share_bar(ax, 0, ids, shares, 0.7, (WIDTH - 0.4) * DPI, two_lines=True)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.45, 0.45)
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the weights of every layer")
    sched = f"prune ratios {', '.join(f'{r:.3g}' for r in ratios)}" if len(ratios) <= 6 else f"{len(ratios)} tasks"
    ax.set_title(title or f"capacity planned ({sched})")
    ax.spines["left"].set_visible(False)
    _task_legend(fig, ids, task_names)
    return fig


def owner_shares(owner: ArrayLike, num_tasks: int) -> np.ndarray:
    """Per output filter (first dimension): share of its weights owned by task
    1..num_tasks (columns 0..T-1) and free (last column). Rows sum to 1."""
    o = _as_rows(_np(owner).astype(np.int64))
    counts = np.stack([(o == k).sum(1) for k in list(range(1, num_tasks + 1)) + [0]], axis=1)
    return counts / o.shape[1]


def _num_tasks(owner_maps: Mapping[str, ArrayLike], task_names) -> int:
    top = max(int(_np(o).max()) for o in owner_maps.values()) if owner_maps else 0
    return max(top, len(task_names or []))


@_styled
def capacity_bars(owner_maps: Mapping[str, ArrayLike], task_names: Optional[Sequence[str]] = None,
                  title: str = "") -> Figure:
    """For every layer, one horizontal bar split into the share of its weights
    each task owns and the free share (layers top to bottom, as in the net),
    labelled as the ownership table writes them."""
    T = _num_tasks(owner_maps, task_names)
    names = list(owner_maps)
    ids = list(range(1, T + 1)) + [0]
    row = min(0.55, 3.4 / max(len(names), 1))
    fig = _figure(WIDTH, 1.3 + 0.3 * _legend_rows(ids, task_names) + row * len(names))
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        o = _np(owner_maps[name])
        _share_bar(ax, i, ids, [float((o == k).mean()) for k in ids], 0.8, (WIDTH - 2.0) * DPI)
    ax.set_yticks(range(len(names)), [f"{n.removesuffix('.weight')} ({_np(owner_maps[n]).size:,})" for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the layer's weights")
    ax.set_title(title or "who owns each layer")
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    _task_legend(fig, ids, task_names)
    return fig


def _share_image(shares: np.ndarray, width: int = 200) -> np.ndarray:
    """Rows of stacked shares as an RGB image `width` pixels wide."""
    T = shares.shape[1] - 1
    colours = np.array([to_rgb(task_color(k)) for k in list(range(1, T + 1)) + [0]])
    edges = np.cumsum(shares, axis=1)                      # (rows, T+1)
    centres = (np.arange(width) + 0.5) / width             # (width,)
    idx = (centres[None, :, None] > edges[:, None, :]).sum(-1).clip(0, T)
    return colours[idx]


def _label_bands(ax, shares: np.ndarray, min_share: float = 0.1) -> None:
    """Each task's number written inside its band, so the heatmap does not
    depend on telling colours apart: at the middle filter if the band is wide
    enough there, else at the quartiles, eighths..., never on another label."""
    n, T = len(shares), shares.shape[1] - 1
    edges = np.concatenate([np.zeros((n, 1)), np.cumsum(shares, axis=1)], axis=1)
    rows = list(dict.fromkeys(int(n * f) for f in (1 / 2, 1 / 4, 3 / 4, 1 / 8, 3 / 8, 5 / 8, 7 / 8, 0)))
    placed = []
    for k in range(T):
        for i in rows:
            x = (edges[i, k] + edges[i, k + 1]) / 2
            if shares[i, k] >= min_share and all(abs(x - px) > 0.08 or abs(i - pi) > 0.12 * n for px, pi in placed):
                placed.append((x, i))
                ax.text(x, i, str(k + 1), ha="center", va="center", fontsize=12,
                        color=text_color_on(task_color(k + 1)))
                break


@_styled
def ownership_heatmap(owner: ArrayLike, task_names: Optional[Sequence[str]] = None,
                      layer: str = "", sort: bool = True, num_tasks: Optional[int] = None,
                      title: str = "") -> Figure:
    """Task ownership per filter of one layer: one row per filter (output
    channel), filled left to right with the share of its weights each task
    owns (its number written in its band), then the free share, grey and
    hatched.

    With `sort`, filters are ordered by their shares (task 1's first), so that
    a layer of 512 filters reads as a few smooth bands; the rows are drawn as
    one image, so the figure stays the same size (one screen) however many
    filters."""
    o = _np(owner)
    T = num_tasks or max(int(o.max()) if o.size else 0, len(task_names or []))
    shares = owner_shares(o, T)
    order = np.lexsort(tuple(-shares[:, k] for k in reversed(range(T + 1)))) if sort else np.arange(len(shares))
    shares = shares[order]
    n = len(shares)
    fig = _figure(WIDTH, 2.0 + min(2.9, 0.2 * n))
    ax_img, ax_tot = fig.subplots(1, 2, width_ratios=[6, 1], sharey=True)
    ax_img.imshow(_share_image(shares), aspect="auto", interpolation="nearest", extent=(0, 1, n - 0.5, -0.5))
    free_left = 1.0 - shares[:, -1]
    y = np.arange(n)
    ax_img.fill_betweenx(np.repeat(y, 2) + np.tile([-0.5, 0.5], n), np.repeat(free_left, 2), 1.0,
                         facecolor="none", hatch=FREE_HATCH, edgecolor=HATCH_COLOR, lw=0)
    _label_bands(ax_img, shares)
    ax_img.set_xlim(0, 1)
    ax_img.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax_img.set_xlabel("share of the filter's weights")
    if n <= 12:
        ax_img.set_yticks(range(n), [str(i) for i in order])
        ax_img.set_ylabel("filter" + (" (sorted)" if sort else ""))
    else:
        ax_img.set_yticks([])
        ax_img.set_ylabel(f"{n} filters" + (", sorted by share" if sort else ", in order"))
    for s in ax_img.spines.values():
        s.set_visible(False)
    # the layer as a whole, for comparison
    ids = list(range(1, T + 1)) + [0]
    left = 0.0
    for k, s in zip(ids, shares.mean(0)):
        ax_tot.barh(0, s, left=left, color=task_color(k), height=1e9, hatch=FREE_HATCH if k == 0 else None, lw=0)
        left += s
    ax_tot.set_xlim(0, 1)
    ax_tot.set_ylim(n - 0.5, -0.5)
    ax_tot.set_xticks([0, 1], ["0", "100%"])
    ax_tot.set_title("layer", fontsize=12)
    ax_tot.tick_params(left=False)
    for s in ax_tot.spines.values():
        s.set_visible(False)
    shape = "x".join(map(str, o.shape))
    ax_img.set_title(title or f"{layer.removesuffix('.weight') or 'layer'} ({shape}): ownership per filter")
    _task_legend(fig, ids, task_names)
    return fig


# ---------------------------------------------------------------- one filter
class FilterEvolution:
    """One first-layer filter through every phase of a PackNet run, as in the
    paper's illustration: a grid of its kernel (e.g. 5x5) per phase. In each
    cell a square in the colour of the task that owns the weight, its side
    growing with |w| (0.5 to 1 cell; one scale for all phases), and the
    owner's number in it;
    free cells grey and hatched, without a number. (|w| is drawn as size,
    not as a paler shade: pale shades of different tasks look alike under
    colour-blindness.)

    `snapshots`: [{"label": str, "weight": (out, in, kh, kw), "owner": same shape}, ...],
    as `cache.packnet_run` records them. `show(filter_index)` redraws for
    another filter by updating the artists in place (the filter picker).
    All phases are drawn in one axes (one image, one hatch collection): a
    redraw costs a fraction of one axes per phase."""

    GAP, TITLE, S = 0.6, 1.1, 20     # in cells: between grids, room for a title; pixels per cell
    OWNED_BACKGROUND = "#f4f4f4"

    def __init__(self, snapshots: Sequence[Mapping], task_names: Optional[Sequence[str]] = None,
                 in_channel: int = 0, per_row: Optional[int] = None, title: str = ""):
        from matplotlib.collections import PatchCollection
        self.weights = [np.abs(_np(s["weight"])[:, in_channel]) for s in snapshots]   # (out, kh, kw)
        self.owners = [_np(s["owner"])[:, in_channel].astype(int) for s in snapshots]
        self.title = title
        n = len(snapshots)
        per_row = per_row or (n if n <= 4 else int(np.ceil(n / 2)))
        rows = int(np.ceil(n / per_row))
        kh, kw = self.kernel = self.weights[0].shape[1:]
        step_x, step_y = kw + self.GAP, kh + self.TITLE + self.GAP
        width, height = per_row * step_x - self.GAP, rows * step_y - self.GAP
        # cell (r, c) of phase i is centred on (x0 + c, y0 + r)
        self.origins = [((i % per_row) * step_x, (i // per_row) * step_y + self.TITLE) for i in range(n)]
        self.pixels = (int(round(height * self.S)), int(round(width * self.S)))
        with matplotlib.rc_context(STYLE):
            self.fig = _figure(min(WIDTH, 2.05 * per_row), 2.1 * rows + 1.0)
            ax = self.fig.add_subplot()
            ax.set_axis_off()
            extent = (-0.5, width - 0.5, height - 0.5, -0.5)
            self.image = ax.imshow(np.ones(self.pixels + (3,)), interpolation="nearest", extent=extent)
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
            for (x0, y0), snap in zip(self.origins, snapshots):
                ax.text(x0 + (kw - 1) / 2, y0 - 0.6, snap["label"], ha="center", va="bottom", fontsize=MIN_FONT_PT)
            self.texts = [[[ax.text(x0 + c, y0 + r, "", ha="center", va="center", fontsize=MIN_FONT_PT)
                            for c in range(kw)] for r in range(kh)] for x0, y0 in self.origins]
            self.free = ax.add_collection(PatchCollection([], facecolor="none", edgecolor=HATCH_COLOR,
                                                          hatch=FREE_HATCH, lw=0))
            ids = sorted(set(np.unique(np.concatenate([o.ravel() for o in self.owners]))) - {0}) + [0]
            _task_legend(self.fig, ids, task_names)

    def show(self, filter_index: int) -> Figure:
        with matplotlib.rc_context(STYLE):
            return self._show(int(filter_index))

    def _show(self, f: int) -> Figure:
        kh, kw = self.kernel
        S = self.S
        scale = max(float(w[f].max()) for w in self.weights) or 1.0
        canvas = np.ones(self.pixels + (3,))          # white: the gaps and grid lines
        free = []
        back = to_rgb(self.OWNED_BACKGROUND)
        for (x0, y0), texts, w, o in zip(self.origins, self.texts, self.weights, self.owners):
            w, o = w[f] / scale, o[f]
            for r in range(kh):
                for c in range(kw):
                    k = int(o[r, c])
                    top, left = int(round((y0 + r) * S)), int(round((x0 + c) * S))
                    cell = canvas[top + 1:top + S - 1, left + 1:left + S - 1]     # white grid lines
                    if k == 0:
                        cell[:] = to_rgb(FREE_COLOR)
                        free.append(Rectangle((x0 + c - 0.45, y0 + r - 0.45), 0.9, 0.9))
                        texts[r][c].set_text("")
                        continue
                    cell[:] = back
                    side = 0.5 + 0.5 * np.sqrt(w[r, c])    # grows with |w|; never too small for the digit
                    m = int(round((S - 2) * (1 - side) / 2))
                    cell[m:S - 2 - m, m:S - 2 - m] = to_rgb(task_color(k))
                    texts[r][c].set_text(str(k))
                    texts[r][c].set_color(text_color_on(task_color(k)))
        self.image.set_data(canvas)
        self.free.set_paths(free)
        self.fig.suptitle(self.title or f"conv1 filter {f}: owner (colour, number), |w| (square size) per phase")
        return self.fig


@_styled
def filter_evolution(snapshots: Sequence[Mapping], filter_index: int = 0,
                     task_names: Optional[Sequence[str]] = None, in_channel: int = 0,
                     title: str = "", per_row: Optional[int] = None) -> Figure:
    """One first-layer filter through every phase of a PackNet run (see FilterEvolution)."""
    return FilterEvolution(snapshots, task_names, in_channel, per_row, title).show(filter_index)


# ---------------------------------------------------------------- output
def png_bytes(fig: Figure, scale: float = 2.0) -> bytes:
    """`fig` as a PNG at `scale` times its dpi (2: retina, shown at the
    figure's own size in CSS px). The canvas as laid out, no tight bbox: one
    draw, not two (the widgets call this on every move)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi * scale, facecolor="white", bbox_inches=None)
    return buf.getvalue()


def save_figure(fig: Figure, path_stem: Union[str, Path], formats: Sequence[str] = ("png", "svg")) -> List[Path]:
    """Save `fig` as path_stem.png (200 dpi) and path_stem.svg (for slides),
    each written atomically; returns the paths."""
    stem = Path(path_stem)
    if stem.suffix.lower() in {".png", ".svg", ".pdf"}:
        stem = stem.with_suffix("")
    out = []
    with matplotlib.rc_context(STYLE):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, facecolor="white"))
            out.append(path)
    return out
