"""Every figure of the notebooks: pure functions that take data and return a
matplotlib `Figure` (no pyplot state, nothing shown, nothing saved).

One style for all of them, chosen to read well on a projector:

- task k always has the colour `task_color(k)` (seaborn's colour-blind
  palette, grey removed), free weights are `FREE_COLOR` (light grey);
- large fonts (`STYLE`), no chart junk.

The figures are derived from the engine's single source of truth, the uint8
owner map of each weight (0 = free, k = task k). `save_figure(fig, stem)`
writes a PNG and an SVG for slides in one call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import matplotlib
import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .engine import prune_count, smallest_magnitude

# seaborn "colorblind" without its grey (index 7), which would read as "free".
TASK_COLORS = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc",
               "#ca9161", "#fbafe4", "#ece133", "#56b4e9"]
FREE_COLOR = "#d4d4d4"
PRUNED_COLOR = FREE_COLOR   # pruned weights are free weights
TEXT_COLOR = "#222222"

STYLE = {
    "font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13,
    "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 11,
    "axes.spines.top": False, "axes.spines.right": False,
    "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
    "svg.fonttype": "none",
}

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


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


def _figure(width: float, height: float, **kwargs) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained", **kwargs)


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


def _task_legend(fig_or_ax, ids: Sequence[int], task_names, **kwargs):
    handles = [Patch(facecolor=task_color(k), edgecolor="none", label=task_label(k, task_names)) for k in ids]
    return fig_or_ax.legend(handles=handles, frameon=False, **kwargs)


def shade(color: str, strength: float) -> np.ndarray:
    """`color` blended towards white: strength 1 is the full colour, 0 white."""
    c = np.array(to_rgb(color))
    s = float(np.clip(strength, 0.0, 1.0))
    return 1.0 - s * (1.0 - c)


# ---------------------------------------------------------------- accuracy
def _draw_accuracy_matrix(ax, R, task_names, title, vmin=0.0, vmax=100.0):
    M = _matrix(R)
    rows, cols = M.shape
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    for i in range(rows):
        for j in range(cols):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.0f}", ha="center", va="center", fontsize=14,
                        color="white" if M[i, j] < 0.6 * vmax else "black", fontweight="bold")
    names = [task_label(k, task_names) for k in range(1, cols + 1)]
    ax.set_xticks(range(cols), names, rotation=30, ha="right")
    row_names = names[:rows] if rows == cols else [f"after all ({rows})"] if rows == 1 else \
        [f"after {k}" for k in range(1, rows + 1)]
    ax.set_yticks(range(rows), [f"after {n}" for n in row_names] if rows == cols else row_names)
    for label, k in zip(ax.get_xticklabels(), range(1, cols + 1)):
        label.set_color(task_color(k))
    ax.set_xlabel("accuracy (%) on task")
    ax.set_ylabel("trained up to")
    ax.set_title(title)
    for s in ax.spines.values():
        s.set_visible(False)
    return im


@_styled
def accuracy_matrix_heatmap(R, task_names: Optional[Sequence[str]] = None, title: str = "") -> Figure:
    """The accuracy matrix R[i][j] (test accuracy % on task j+1 after training
    task i+1; None above the diagonal) as an annotated heatmap."""
    n = len(R[0])
    fig = _figure(1.3 * n + 2.6, 1.1 * len(R) + 1.8)
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
    fig = _figure((1.3 * n + 2.2) * len(matrices) + 0.8, 1.1 * n + 2.0)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (name, R) in zip(axes, matrices.items()):
        im = _draw_accuracy_matrix(ax, R, task_names, name)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="accuracy (%)")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def forgetting_curves(R, task_names: Optional[Sequence[str]] = None, title: str = "",
                      reference: Optional[Sequence[float]] = None) -> Figure:
    """Each task's accuracy as more tasks are learned (one line per task, in
    its colour); `reference` (e.g. the individual networks' accuracies) as
    dotted lines."""
    M = _matrix(R)
    n = M.shape[1]
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    x = np.arange(1, M.shape[0] + 1)
    for j in range(n):
        c = task_color(j + 1)
        ax.plot(x, M[:, j], "-o", color=c, lw=2.5, ms=8, label=task_label(j + 1, task_names))
        if reference is not None and reference[j] is not None:
            ax.axhline(reference[j], color=c, ls=":", lw=1.5)
    ax.set_xticks(x, [f"after {task_label(k, task_names)}" for k in x], rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(frameon=False, loc="lower left", ncol=2)
    if reference is not None:
        ax.text(1.0, 1.01, "dotted: trained alone", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=10, color="#555555")
    return fig


@_styled
def accuracy_bars(results: Mapping[str, Sequence[float]], task_names: Optional[Sequence[str]] = None,
                  title: str = "") -> Figure:
    """Grouped bars: one group per task, one bar per method
    (e.g. {"individual": [...], "PackNet": [...]})."""
    methods = list(results)
    n = len(next(iter(results.values())))
    fig = _figure(max(6.0, 1.6 * n + 2.0), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    hatches = ["", "//", "..", "xx", "\\\\"]
    for m, name in enumerate(methods):
        for j, v in enumerate(results[name]):
            if v is None:
                continue
            x = j + (m - (len(methods) - 1) / 2) * width
            ax.bar(x, v, width * 0.95, color=task_color(j + 1), hatch=hatches[m % len(hatches)],
                   edgecolor="white", lw=0)
            ax.text(x, v + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=10)
    ax.set_xticks(range(n), [task_label(k, task_names) for k in range(1, n + 1)])
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    if len(methods) > 1:
        handles = [Patch(facecolor="#888888", hatch=hatches[m % len(hatches)], edgecolor="white", label=name)
                   for m, name in enumerate(methods)]
        ax.legend(handles=handles, frameon=False, loc="upper right", ncol=len(methods))
    ax.set_title(title)
    return fig


@_styled
def task_samples(tasks, per_task: int = 8, title: str = "") -> Figure:
    """A few training images of each task, one row per task, its name in its colour."""
    fig = _figure(1.1 * per_task + 1.6, 1.25 * len(tasks) + 0.6)
    axes = fig.subplots(len(tasks), per_task, squeeze=False)
    for k, (task, row) in enumerate(zip(tasks, axes), start=1):
        x, y = task.train.tensors
        for i, ax in enumerate(row):
            ax.imshow(_np(x[i, 0]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_color(task_color(k))
                s.set_visible(True)
                s.set_linewidth(2)
            ax.set_title(str(task.classes[int(y[i])])[:10], fontsize=9)
        row[0].set_ylabel(task_label(k, [t.name for t in tasks]), color=task_color(k), rotation=0,
                          ha="right", va="center", fontsize=13)
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


def _draw_histogram(ax, weights, threshold, ratio=None, title=""):
    w = _np(weights).ravel()
    lim = float(np.abs(w).max()) or 1.0
    bins = np.linspace(-lim, lim, 81)
    kept = np.abs(w) > threshold
    ax.hist(w[kept], bins=bins, color=task_color(1), label=f"kept ({kept.mean():.0%})")
    ax.hist(w[~kept], bins=bins, color=PRUNED_COLOR, label=f"pruned ({(~kept).mean():.0%})")
    if threshold > 0:
        for s in (-1, 1):
            ax.axvline(s * threshold, color=TEXT_COLOR, ls="--", lw=1.5)
        ax.text(threshold, 1.0, f" |w| = {threshold:.3g}", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=10)
    ax.set_xlabel("weight value")
    ax.set_ylabel("number of weights")
    ax.legend(frameon=False, loc="upper left")
    ax.set_title(title or (f"pruning {ratio:.0%}" if ratio is not None else "weights"))


@_styled
def weight_histogram(weights: ArrayLike, threshold: float = 0.0, title: str = "") -> Figure:
    """Histogram of a layer's weights; those with |w| <= threshold (pruned) in
    grey, the kept ones in task 1's colour, the threshold as dashed lines."""
    fig = _figure(6.5, 4.0)
    _draw_histogram(fig.add_subplot(), weights, threshold, title=title)
    return fig


def _as_rows(x: np.ndarray) -> np.ndarray:
    """A weight-shaped array as a 2-D image: one row per output unit/filter."""
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def _draw_mask(ax, weights, keep, title="", color=None):
    w = _as_rows(np.abs(_np(weights)))
    k = _as_rows(_np(keep).astype(bool))
    scale = float(w.max()) or 1.0
    base = np.array(to_rgb(color or task_color(1)))
    strength = 0.25 + 0.75 * (w / scale)
    img = 1.0 - strength[..., None] * (1.0 - base)
    img[~k] = to_rgb(PRUNED_COLOR)
    ax.imshow(img, aspect="auto", interpolation="nearest")
    ax.set_xlabel("inputs x kernel positions")
    ax.set_ylabel("filter")
    ax.set_title(title or f"kept {k.mean():.0%} (shade = |w|), pruned grey")
    for s in ax.spines.values():
        s.set_visible(False)


@_styled
def prune_mask_image(weights: ArrayLike, keep: ArrayLike, title: str = "") -> Figure:
    """A layer's kept/pruned mask: one row per filter (its weights flattened),
    kept weights in task 1's colour shaded by magnitude, pruned ones grey."""
    fig = _figure(6.5, 4.0)
    _draw_mask(fig.add_subplot(), weights, keep, title)
    return fig


def _draw_curve(ax, curve, highlight=None, title=""):
    r = np.array([p["ratio"] for p in curve])
    before = np.array([p["before"] for p in curve])
    after = np.array([p["after"] for p in curve])
    ax.plot(r, before, "-o", color="#777777", lw=2, ms=6, label="pruned, before retraining")
    ax.plot(r, after, "-o", color=task_color(1), lw=2.5, ms=6, label="after retraining")
    if highlight is not None:
        i = int(np.argmin(np.abs(r - highlight)))
        ax.plot([r[i]], [before[i]], "o", ms=15, mfc="none", mec="#444444", mew=2.5)
        ax.plot([r[i]], [after[i]], "o", ms=15, mfc="none", mec=TEXT_COLOR, mew=2.5)
        ax.axvline(r[i], color="#999999", lw=1, zorder=0)
        ax.text(r[i], after[i] + 3, f"{after[i]:.1f}%", ha="center", va="bottom", fontsize=12,
                fontweight="bold", color=task_color(1))
    ax.set_xlabel("prune ratio (share of each layer's weights released)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.02, 1.0)
    ax.legend(frameon=False, loc="lower left")
    ax.set_title(title or "accuracy against prune ratio")


@_styled
def accuracy_vs_ratio(curve: Sequence[Mapping[str, float]], highlight: Optional[float] = None,
                      title: str = "") -> Figure:
    """Accuracy before and after retraining against the prune ratio; `curve`
    is a list of {"ratio", "before", "after"}; the point nearest `highlight`
    is circled."""
    fig = _figure(6.5, 4.2)
    _draw_curve(fig.add_subplot(), curve, highlight, title)
    return fig


@_styled
def pruning_panel(weights: ArrayLike, ratio: float, curve: Sequence[Mapping[str, float]],
                  layer: str = "") -> Figure:
    """The pruning notebook's three views for one ratio: the layer's weight
    histogram with the threshold, its kept/pruned mask, accuracy against ratio."""
    w = _np(weights)
    thr = magnitude_threshold(w, ratio)
    keep = keep_mask(w, ratio)
    fig = _figure(17.0, 4.6)
    a, b, c = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.1])
    _draw_histogram(a, w, thr, ratio, title=f"{layer}: weights, pruning {ratio:.0%}")
    _draw_mask(b, w, keep, title=f"{layer}: kept (colour) / pruned (grey)")
    _draw_curve(c, curve, ratio)
    return fig


def keep_mask(weights: ArrayLike, ratio: float) -> np.ndarray:
    """True for the weights magnitude pruning at `ratio` keeps (the engine's rule)."""
    shape = _np(weights).shape
    keep = np.ones(int(np.prod(shape)), dtype=bool)
    keep[_released(weights, ratio).numpy()] = False
    return keep.reshape(shape)


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


@_styled
def capacity_plan(ratios: Sequence[float], task_names: Optional[Sequence[str]] = None,
                  title: str = "") -> Figure:
    """One bar, split into each task's share of the network (and free) that
    the prune ratios imply, before anything is trained."""
    shares = planned_shares(ratios)
    fig = _figure(11.0, 2.6)
    ax = fig.add_subplot()
    left = 0.0
    ids = list(range(1, len(ratios) + 1)) + [0]
    for k, s in zip(ids, shares):
        ax.barh(0, s, left=left, color=task_color(k), height=0.6, edgecolor="white", lw=1.5)
        if s >= 0.04:
            ax.text(left + s / 2, 0, f"{s:.1%}", ha="center", va="center", fontsize=13,
                    color="white" if k else TEXT_COLOR, fontweight="bold")
        left += s
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the weights of every layer")
    sched = ", ".join(f"{r:.3g}" for r in ratios)
    ax.set_title(title or f"capacity planned by prune ratios ({sched})")
    ax.spines["left"].set_visible(False)
    _task_legend(ax, ids, task_names, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=len(ids))
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
    each task owns and the free share (layers top to bottom, as in the net)."""
    T = _num_tasks(owner_maps, task_names)
    names = list(owner_maps)
    fig = _figure(11.0, 1.2 + 0.45 * len(names) + 0.8)
    ax = fig.add_subplot()
    ids = list(range(1, T + 1)) + [0]
    for i, name in enumerate(names):
        o = _np(owner_maps[name])
        left = 0.0
        for k in ids:
            s = float((o == k).mean())
            ax.barh(i, s, left=left, color=task_color(k), height=0.75, edgecolor="white", lw=0.8)
            if s >= 0.07:
                ax.text(left + s / 2, i, f"{s:.0%}", ha="center", va="center", fontsize=10,
                        color="white" if k else TEXT_COLOR)
            left += s
    ax.set_yticks(range(len(names)), [f"{n.removesuffix('.weight')} ({_np(owner_maps[n]).size:,})" for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the layer's weights")
    ax.set_title(title or "who owns each layer")
    ax.spines["left"].set_visible(False)
    _task_legend(fig, ids, task_names, loc="outside lower center", ncol=len(ids))
    return fig


def _share_image(shares: np.ndarray, width: int = 200) -> np.ndarray:
    """Rows of stacked shares as an RGB image `width` pixels wide."""
    T = shares.shape[1] - 1
    colours = np.array([to_rgb(task_color(k)) for k in list(range(1, T + 1)) + [0]])
    edges = np.cumsum(shares, axis=1)                      # (rows, T+1)
    centres = (np.arange(width) + 0.5) / width             # (width,)
    idx = (centres[None, :, None] > edges[:, None, :]).sum(-1).clip(0, T)
    return colours[idx]


@_styled
def ownership_heatmap(owner: ArrayLike, task_names: Optional[Sequence[str]] = None,
                      layer: str = "", sort: bool = True, num_tasks: Optional[int] = None,
                      title: str = "") -> Figure:
    """Task ownership per filter of one layer: one row per filter (output
    channel), filled left to right with the share of its weights each task
    owns, then the free share in grey.

    With `sort`, filters are ordered by their shares (task 1's first), so that
    a layer of 512 filters reads as a few smooth bands; the rows are drawn as
    one image, so the figure stays the same size however many filters."""
    o = _np(owner)
    T = num_tasks or max(int(o.max()) if o.size else 0, len(task_names or []))
    shares = owner_shares(o, T)
    order = np.lexsort(tuple(-shares[:, k] for k in reversed(range(T + 1)))) if sort else np.arange(len(shares))
    n = len(shares)
    fig = _figure(9.0, 2.2 + min(5.0, 0.22 * n))
    ax_img, ax_tot = fig.subplots(1, 2, width_ratios=[5, 1], sharey=True)
    ax_img.imshow(_share_image(shares[order]), aspect="auto", interpolation="nearest",
                  extent=(0, 1, n - 0.5, -0.5))
    ax_img.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax_img.set_xlabel("share of the filter's weights")
    if n <= 40:
        ax_img.set_yticks(range(n), [str(i) for i in order], fontsize=9 if n > 20 else 11)
        ax_img.set_ylabel("filter" + (" (sorted by share)" if sort else ""))
    else:
        ax_img.set_ylabel(f"{n} filters" + (", sorted by share" if sort else ""))
    for s in ax_img.spines.values():
        s.set_visible(False)
    # the layer as a whole, for comparison
    total = shares.mean(0)
    left = 0.0
    for k, s in zip(list(range(1, T + 1)) + [0], total):
        ax_tot.barh(0, s, left=left, color=task_color(k), height=1e9)
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
    _task_legend(fig, list(range(1, T + 1)) + [0], task_names, loc="outside lower center", ncol=T + 1)
    return fig


# ---------------------------------------------------------------- one filter
@_styled
def filter_evolution(snapshots: Sequence[Mapping], filter_index: int = 0,
                     task_names: Optional[Sequence[str]] = None, in_channel: int = 0,
                     title: str = "", per_row: Optional[int] = None) -> Figure:
    """One first-layer filter through every phase of a PackNet run, as in the
    paper's illustration: a grid of its kernel (e.g. 5x5) per phase, each cell
    coloured by the task that owns the weight (grey: free) and shaded by |w|
    (one scale for all phases), with the owner's number written in it.

    `snapshots`: [{"label": str, "weight": (out, in, kh, kw), "owner": same shape}, ...],
    as `cache.packnet_run` records them."""
    n = len(snapshots)
    per_row = per_row or (n if n <= 5 else int(np.ceil(n / 2)))
    rows = int(np.ceil(n / per_row))
    ws = [np.abs(_np(s["weight"])[filter_index, in_channel]) for s in snapshots]
    os_ = [_np(s["owner"])[filter_index, in_channel].astype(int) for s in snapshots]
    scale = max(float(w.max()) for w in ws) or 1.0
    kh, kw = ws[0].shape
    fig = _figure(2.35 * per_row, 2.75 * rows + 1.0)
    axes = fig.subplots(rows, per_row, squeeze=False)
    seen = set()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        w, o = ws[i], os_[i]
        img = np.zeros((kh, kw, 3))
        for r in range(kh):
            for c in range(kw):
                k = int(o[r, c])
                seen.add(k)
                img[r, c] = to_rgb(FREE_COLOR) if k == 0 else shade(task_color(k), 0.2 + 0.8 * w[r, c] / scale)
        ax.imshow(img, interpolation="nearest")
        for r in range(kh):
            for c in range(kw):
                k = int(o[r, c])
                light = k == 0 or w[r, c] / scale < 0.45
                ax.text(c, r, str(k) if k else "", ha="center", va="center", fontsize=10,
                        color=TEXT_COLOR if light else "white")
        ax.set_xticks(np.arange(-0.5, kw, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, kh, 1), minor=True)
        ax.grid(which="minor", color="white", lw=2)
        ax.axis("on")
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(snapshots[i]["label"], fontsize=12)
    ids = sorted(k for k in seen if k) + [0]
    _task_legend(fig, ids, task_names, loc="outside lower center", ncol=len(ids))
    fig.suptitle(title or f"conv1 filter {filter_index}: owner (colour, number) and |w| (shade) after each phase",
                 fontsize=14)
    return fig


# ---------------------------------------------------------------- saving
def save_figure(fig: Figure, path_stem: Union[str, Path], formats: Sequence[str] = ("png", "svg")) -> List[Path]:
    """Save `fig` as path_stem.png and path_stem.svg (for slides); returns the paths."""
    stem = Path(path_stem)
    if stem.suffix.lower() in {".png", ".svg", ".pdf"}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context(STYLE):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, format=fmt, facecolor="white")
            out.append(path)
    return out
