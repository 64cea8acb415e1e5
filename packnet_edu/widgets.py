"""The notebooks' interactive views.

Each view is two parts:

- a *callback*, a plain module-level function `on_..._change(state, value)`
  that returns a matplotlib Figure (tests call it directly, no browser);
- a *builder* (`pruning_explorer`, ...) that wires ipywidgets controls to
  the callback and shows its figure in an `Output`, redrawn on every change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from . import plots


# ------------------------------------------------------------ notebook 3: pruning
@dataclass
class PruningState:
    """What the pruning view needs: each layer's trained weights, and the
    precomputed accuracy curve [{"ratio", "before", "after"}, ...]."""
    weights: Dict[str, torch.Tensor]
    curve: List[dict]
    layer: str = ""

    def __post_init__(self):
        if not self.layer:
            self.layer = next(iter(self.weights))

    @property
    def ratios(self) -> List[float]:
        return [p["ratio"] for p in self.curve]


def pruning_state(model_or_trunk, curve: Sequence[dict], layer: str = "") -> PruningState:
    """A PruningState from a trained network: every Conv/Linear weight of its trunk."""
    from .engine import PRUNABLE
    trunk = getattr(model_or_trunk, "trunk", model_or_trunk)
    weights = {f"{n}.weight": m.weight.detach().cpu().clone()
               for n, m in trunk.named_modules() if isinstance(m, PRUNABLE)}
    return PruningState(weights, list(curve), layer)


def on_ratio_change(state: PruningState, ratio: float, layer: Optional[str] = None):
    """Pruning view for `ratio` (and `layer`, default the state's): histogram
    with threshold, kept/pruned mask, accuracy curve with this ratio circled."""
    if layer is not None:
        state.layer = layer
    return plots.pruning_panel(state.weights[state.layer], float(ratio), state.curve,
                               layer=state.layer.removesuffix(".weight"))


def _live(controls, draw, header):
    """`header` above an Output showing `draw()`, redrawn whenever one of
    `controls` changes value."""
    import ipywidgets as W
    from IPython.display import display
    out = W.Output()

    def redraw(_=None):
        out.clear_output(wait=True)
        with out:
            display(draw())
    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([header, out])


def pruning_explorer(state: PruningState):
    """A ratio slider (over the precomputed ratios) and a layer dropdown above
    the pruning view; moving either redraws it."""
    import ipywidgets as W
    slider = W.SelectionSlider(options=[(f"{r:.2f}", r) for r in state.ratios],
                               value=min(state.ratios, key=lambda r: abs(r - 0.5)),
                               description="prune ratio", continuous_update=False,
                               layout=W.Layout(width="520px"), style={"description_width": "90px"})
    layer = W.Dropdown(options=list(state.weights), value=state.layer, description="layer",
                       style={"description_width": "50px"})
    return _live([slider, layer], lambda: on_ratio_change(state, slider.value, layer.value),
                 W.HBox([slider, layer]))


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
    return _live(sliders, lambda: on_schedule_change([s.value for s in sliders], task_names),
                 W.VBox([W.HBox(sliders[:2]), W.HBox(sliders[2:])]))


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
    return plots.filter_evolution(snapshots, int(filter_index), task_names)


def filter_explorer(snapshots: Sequence[Mapping], task_names: Optional[Sequence[str]] = None,
                    filter_index: Optional[int] = None):
    """A dropdown of the first layer's filters above the filter-evolution figure."""
    import ipywidgets as W
    n = plots._np(snapshots[0]["weight"]).shape[0]
    pick = W.Dropdown(options=list(range(n)),
                      value=default_filter(snapshots) if filter_index is None else filter_index,
                      description="filter")
    return _live([pick], lambda: on_filter_change(snapshots, pick.value, task_names), pick)


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
    return _live([pick, sort], lambda: on_layer_change(owner_maps, pick.value, task_names, sort.value),
                 W.HBox([pick, sort]))
