"""Widget callbacks are plain functions: called here directly, no browser."""
import io

import matplotlib
matplotlib.use("Agg")

import torch
from matplotlib.figure import Figure

from packnet_edu import plots, widgets
from packnet_edu.models import small_vgg

CURVE = [{"ratio": r, "before": 90 - 60 * r ** 3, "after": 90 - 20 * r ** 4} for r in (0, .5, .75, .9)]


def png(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_on_ratio_change_redraws():
    state = widgets.pruning_state(small_vgg([10, 10]), CURVE)
    assert list(state.weights) == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    a = png(widgets.on_ratio_change(state, 0.5))
    b = png(widgets.on_ratio_change(state, 0.75))
    c = png(widgets.on_ratio_change(state, 0.75, "fc.weight"))
    assert state.layer == "fc.weight"
    assert len({a, b, c}) == 3


def test_pruning_explorer_builds_and_reacts():
    state = widgets.pruning_state(small_vgg([10]), CURVE, layer="conv2.weight")
    box = widgets.pruning_explorer(state)
    slider, dropdown = box.children[0].children
    slider.value = 0.9
    dropdown.value = "conv1.weight"
    assert state.layer == "conv1.weight"


def test_on_schedule_change():
    a = png(widgets.on_schedule_change([0.5, 0.75, 0.75, 0.0], ["a", "b", "c", "d"]))
    b = png(widgets.on_schedule_change([0.25, 0.5, 0.75, 0.0], ["a", "b", "c", "d"]))
    assert a != b
    box = widgets.schedule_explorer(["a", "b", "c", "d"], [0.5, 0.75, 0.75, 0.0])
    slider = box.children[0].children[0].children[0]       # header VBox > first row > task 1's slider
    slider.value = 0.3                                      # redraws through the callback (raises if broken)
    assert slider.description == "1: a" and slider.value == 0.3


def snapshots():
    maps = [plots.synthetic_owner_maps({"w": (6, 1, 5, 5)}, r, seed=1)["w"]
            for r in ([0.5], [0.5, 0.75], [0.5, 0.75, 0.0])]
    return [{"label": f"phase {i}", "weight": torch.randn(6, 1, 5, 5) * (o > 0), "owner": o}
            for i, o in enumerate(maps)]


def test_on_filter_change_and_default_filter():
    snaps = snapshots()
    f = widgets.default_filter(snaps)
    assert 0 <= f < 6
    assert png(widgets.on_filter_change(snaps, 0, ["a", "b", "c"])) != png(widgets.on_filter_change(snaps, 1, ["a", "b", "c"]))
    box = widgets.filter_explorer(snaps, ["a", "b", "c"])
    box.children[0].value = 3


def test_on_layer_change():
    maps = plots.synthetic_owner_maps({"conv1.weight": (16, 1, 5, 5), "conv2.weight": (32, 16, 3, 3)},
                                      [0.5, 0.75, 0.0])
    a = png(widgets.on_layer_change(maps, "conv1.weight", ["a", "b", "c"]))
    b = png(widgets.on_layer_change(maps, "conv2.weight", ["a", "b", "c"]))
    assert a != b
    box = widgets.mask_explorer(maps, ["a", "b", "c"])
    box.children[0].children[0].value = "conv2.weight"
    box.children[0].children[1].value = False
