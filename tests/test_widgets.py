"""Widget callbacks are plain functions: called here directly, no browser
(tests/test_browser.py moves the real widgets in JupyterLab)."""
import io

import matplotlib
matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from packnet_edu import plots, widgets
from packnet_edu.models import small_vgg

CURVE = [{"ratio": r, "before": 90 - 60 * r ** 3, "after": 90 - 20 * r ** 4, "dense_same_epochs": 88.0}
         for r in (0, .5, .7, .75, .9)]


def png(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def circled_ratio(fig) -> float:
    big = [line for ax in fig.axes for line in ax.lines if line.get_markersize() >= 15 and len(line.get_xdata())]
    return float(big[-1].get_xdata()[0])


def test_on_ratio_change_redraws():
    state = widgets.pruning_state(small_vgg([10, 10]), CURVE)
    assert list(state.weights) == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    a = png(widgets.on_ratio_change(state, 0.5))
    b = png(widgets.on_ratio_change(state, 0.75))
    c = png(widgets.on_ratio_change(state, 0.75, "fc.weight"))
    assert state.layer == "fc.weight"
    assert len({a, b, c}) == 3
    with pytest.raises(ValueError, match="choose one of conv1.weight"):
        widgets.on_ratio_change(state, 0.5, "fc")


@pytest.mark.parametrize("asked, shown", [(0.75, 0.75), (0.7, 0.7), (0.72, 0.7), (0.74, 0.75), (1.0, 0.9)])
def test_the_circled_point_is_the_ratio_shown(asked, shown):
    state = widgets.pruning_state(small_vgg([10]), CURVE)
    fig = widgets.on_ratio_change(state, asked, "fc.weight")
    assert circled_ratio(fig) == shown
    assert f"ratio {shown:.2f}" in fig.get_suptitle()
    kept = plots.keep_mask(state.weights["fc.weight"], shown).mean()
    assert fig.axes[0].get_title() == f"kept {plots.percent(kept)}"      # histogram at the same ratio


def test_pruning_explorer_slider_is_the_curve_grid():
    state = widgets.pruning_state(small_vgg([10]), CURVE, layer="conv2.weight")
    box = widgets.pruning_explorer(state)
    assert widgets.VIEW_CLASS in box._dom_classes
    (slider, dropdown), image = box.children[0].children, box.children[1]
    assert [v for _, v in slider.options] == [p["ratio"] for p in CURVE]
    first = image.value
    assert first[:4] == b"\x89PNG"
    assert widgets.png_state(image.value) == "layer = conv2.weight; prune ratio = 0.50"
    slider.value = 0.75
    assert image.value != first
    assert widgets.png_state(image.value) == "layer = conv2.weight; prune ratio = 0.75"
    at_75 = image.value
    dropdown.value = "conv1.weight"
    assert state.layer == "conv1.weight" and image.value != at_75
    assert widgets.png_state(image.value) == "layer = conv1.weight; prune ratio = 0.75"
    dropdown.value = "conv2.weight"                # back: the kept PNG, identical
    assert image.value == at_75 and state.layer == "conv2.weight"
    # the view shows what the callback draws for that state: the same weights, a
    # fresh figure, drawn in the same order (the layout is solved on a layer's first draw)
    fresh = widgets.PruningState(state.weights, CURVE)
    widgets.render_png(widgets.on_ratio_change(fresh, 0.5, "conv2.weight"))
    same = widgets.render_png(widgets.on_ratio_change(fresh, 0.75, "conv2.weight"),
                              state="layer = conv2.weight; prune ratio = 0.75")
    assert same == at_75


def test_views_draw_ahead_what_one_move_reaches():
    import time
    maps = plots.synthetic_owner_maps({"conv1.weight": (16, 1, 5, 5), "conv2.weight": (32, 16, 3, 3)},
                                      [0.5, 0.75, 0.0])
    box = widgets.mask_explorer(maps, ["a", "b", "c"])
    image = box.children[1]
    pick, sort = box.children[0].children
    deadline = time.time() + 60
    prefetcher = next(t for t in __import__("threading").enumerate() if t.name == "packnet-prefetch" and t.pngs
                      and ("conv1.weight", True) in t.pngs)
    one_move = {("conv1.weight", True), ("conv1.weight", False), ("conv2.weight", True)}
    while len(prefetcher.pngs) < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert set(prefetcher.pngs) == one_move       # (conv2, unsorted) is two moves away: not yet
    ahead = prefetcher.pngs[("conv2.weight", True)][0]
    pick.value = "conv2.weight"
    assert image.value == ahead                   # shown from the PNG drawn ahead


def test_render_png_is_retina_and_keeps_the_figure():
    from PIL import Image
    fig = plots.capacity_plan([0.5, 0.0], ["a", "b"])
    data = widgets.render_png(fig)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (round(2 * fig.get_figwidth() * fig.dpi), round(2 * fig.get_figheight() * fig.dpi))
    assert fig.dpi == plots.DPI                    # the figure still displays at its own size


def test_on_schedule_change():
    a = png(widgets.on_schedule_change([0.5, 0.75, 0.75, 0.0], ["a", "b", "c", "d"]))
    b = png(widgets.on_schedule_change([0.25, 0.5, 0.75, 0.0], ["a", "b", "c", "d"]))
    assert a != b
    box = widgets.schedule_explorer(["a", "b", "c", "d"], [0.5, 0.75, 0.75, 0.0])
    image = box.children[1]
    before = image.value
    slider = box.children[0].children[0].children[0]       # header VBox > first row > task 1's slider
    assert widgets.png_state(image.value) == "1: a = 0.50; 2: b = 0.75; 3: c = 0.75; 4: d = 0.00"
    slider.value = 0.3
    assert slider.description == "1: a" and image.value != before
    assert widgets.png_state(image.value) == "1: a = 0.30; 2: b = 0.75; 3: c = 0.75; 4: d = 0.00"


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
    box = widgets.filter_explorer(snaps, ["a", "b", "c"], filter_index=0)
    pick, image = box.children
    before = image.value
    assert widgets.png_state(image.value) == "filter = 0"
    pick.value = 3
    assert image.value != before and widgets.png_state(image.value) == "filter = 3"
    pick.value = 0
    assert image.value == before and widgets.png_state(image.value) == "filter = 0"


def test_on_layer_change():
    maps = plots.synthetic_owner_maps({"conv1.weight": (16, 1, 5, 5), "conv2.weight": (32, 16, 3, 3)},
                                      [0.5, 0.75, 0.0])
    a = png(widgets.on_layer_change(maps, "conv1.weight", ["a", "b", "c"]))
    b = png(widgets.on_layer_change(maps, "conv2.weight", ["a", "b", "c"]))
    assert a != b
    box = widgets.mask_explorer(maps, ["a", "b", "c"])
    image = box.children[1]
    seen = {image.value}
    assert widgets.png_state(image.value) == "layer = conv1.weight; sort filters by share = on"
    box.children[0].children[0].value = "conv2.weight"
    seen.add(image.value)
    box.children[0].children[1].value = False
    seen.add(image.value)
    assert len(seen) == 3
    assert widgets.png_state(image.value) == "layer = conv2.weight; sort filters by share = off"


def test_drawing_ahead_follows_the_direction_of_travel():
    assert widgets._by_distance([0, 1, 2, 3, 4], 2) == [1, 3, 0, 4]
    assert widgets._by_distance([0, 1, 2, 3, 4], 2, previous=1) == [3, 1, 4, 0]     # moving right
    assert widgets._by_distance([0, 1, 2, 3, 4], 2, previous=3) == [1, 3, 0, 4]     # moving left
