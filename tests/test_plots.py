"""Every plotting function, with the Agg backend: it returns a Figure that
renders, and that Figure meets the projector style (tests/test_plots.py is
where the style's promises are checked):

- it fits JupyterLab's output column at 1280x720 without being scaled down
  and is no taller than the visible notebook (plots.MAX_WIDTH_PX/HEIGHT_PX);
- no text is smaller than 14 px on screen;
- no legend lies over an axes (so never over data);
- task colours stay apart under simulated deuteranopia and protanopia, and
  free is unmistakable (grey and hatched);
- shares are written exactly as the ownership table writes them.
"""
import io
import itertools

import matplotlib
matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text

from packnet_edu import plots
from packnet_edu.report import ownership_table

NAMES = ["fashion", "mnist", "animals", "digits"]
R = [[90.0, None, None, None], [80.0, 95.0, None, None], [60.0, 70.0, 85.0, None], [50.0, 40.0, 60.0, 97.0]]
CURVE = [{"ratio": r, "before": 90 - 60 * r ** 3, "after": 90 - 20 * r ** 4, "dense_same_epochs": 88.5}
         for r in (0, .25, .5, .7, .75, .9)]
MIN_TEXT_PX = 14


def render(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    return buf.getvalue()


def check_projector(fig) -> None:
    """The style's promises for one figure, as the notebook shows it (inline
    backend: tight bbox at the figure's dpi, 1 px = 1 CSS px)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    render(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.get_tightbbox(renderer).padded(0.1)        # the inline backend's pad_inches
    w, h = box.width * fig.dpi, box.height * fig.dpi
    assert w <= plots.MAX_WIDTH_PX and h <= plots.MAX_HEIGHT_PX, f"{w:.0f}x{h:.0f} px"
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    smallest = min(t.get_fontsize() * fig.dpi / 72 for t in texts)
    assert smallest >= MIN_TEXT_PX, f"text of {smallest:.1f} px"
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for legend in legends:
        lb = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not lb.overlaps(ax.bbox), f"legend over the axes {ax.get_title()!r}"


def owners(shape=(16, 1, 5, 5), seed=0):
    return plots.synthetic_owner_maps({"conv1.weight": shape}, [0.5, 0.75, 0.75, 0.0], seed)["conv1.weight"]


# ------------------------------------------------------------ colour vision
# Machado, Oliveira & Fernandes (2009), severity 1.0, applied in linear RGB.
CVD = {"normal": np.eye(3),
       "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                                 [-0.011820, 0.042940, 0.968881]]),
       "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                               [-0.003882, -0.048116, 1.051998]])}


def _linear(c):
    c = np.asarray(c, float)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def simulate(rgb, vision):
    lin = np.clip(CVD[vision] @ _linear(rgb), 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def lab(rgb):
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ _linear(rgb) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def de2000(lab1, lab2) -> float:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) of two CIELAB colours."""
    (L1, a1, b1), (L2, a2, b2) = lab1, lab2
    Cb = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    G = 0.5 * (1 - np.sqrt(Cb ** 7 / (Cb ** 7 + 25 ** 7)))
    a1, a2 = (1 + G) * a1, (1 + G) * a2
    C1, C2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if C1 * C2 == 0 else (h2 - h1 + 180) % 360 - 180
    dL, dC, dH = L2 - L1, C2 - C1, 2 * np.sqrt(C1 * C2) * np.sin(np.radians(dh / 2))
    Lb, Cp = (L1 + L2) / 2, (C1 + C2) / 2
    hb = h1 + h2 if C1 * C2 == 0 else ((h1 + h2) / 2 if abs(h1 - h2) <= 180 else (h1 + h2 + 360 * (1 if h1 + h2 < 360 else -1)) / 2)
    T = (1 - 0.17 * np.cos(np.radians(hb - 30)) + 0.24 * np.cos(np.radians(2 * hb))
         + 0.32 * np.cos(np.radians(3 * hb + 6)) - 0.20 * np.cos(np.radians(4 * hb - 63)))
    SL = 1 + 0.015 * (Lb - 50) ** 2 / np.sqrt(20 + (Lb - 50) ** 2)
    SC, SH = 1 + 0.045 * Cp, 1 + 0.015 * Cp * T
    RT = -np.sin(np.radians(60 * np.exp(-((hb - 275) / 25) ** 2))) * 2 * np.sqrt(Cp ** 7 / (Cp ** 7 + 25 ** 7))
    return float(np.sqrt((dL / SL) ** 2 + (dC / SC) ** 2 + (dH / SH) ** 2 + RT * (dC / SC) * (dH / SH)))


def ciede2000(c1, c2) -> float:
    """CIEDE2000 colour difference of two sRGB colours."""
    return de2000(lab(c1), lab(c2))


# Sharma, Wu & Dalal, "The CIEDE2000 color-difference formula: implementation
# notes, supplementary test data, and mathematical observations", Color Res.
# Appl. 30(1), 2005, Table 1: all 34 pairs (L1, a1, b1, L2, a2, b2, dE00). They
# were chosen to exercise every branch: the hue mean across 0/360 degrees, the
# zero-chroma cases, the G, T and rotation (R_T, blue region) terms.
SHARMA_2005 = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


@pytest.mark.parametrize("pair", SHARMA_2005, ids=[f"pair{i}" for i in range(1, 35)])
def test_ciede2000_sharma_table(pair):
    """Published to 4 decimals: 1e-4 allows the rounding, not a wrong term."""
    assert de2000(pair[:3], pair[3:6]) == pytest.approx(pair[6], abs=1e-4)
    assert de2000(pair[3:6], pair[:3]) == pytest.approx(pair[6], abs=1e-4)      # symmetric


@pytest.mark.parametrize("rgb, want", [((1, 0, 0), (53.2408, 80.0925, 67.2032)),
                                       ((0, 1, 0), (87.7347, -86.1827, 83.1793)),
                                       ((0, 0, 1), (32.2970, 79.1875, -107.8602)),
                                       ((1, 1, 1), (100.0, 0.0, 0.0))], ids=["red", "green", "blue", "white"])
def test_srgb_to_lab_reference_values(rgb, want):
    """The sRGB side (D65): the primaries' published CIELAB values."""
    assert lab(rgb) == pytest.approx(want, abs=2e-3)


def min_difference(colours, vision) -> float:
    sim = [simulate(to_rgb(c), vision) for c in colours]
    return min(ciede2000(a, b) for a, b in itertools.combinations(sim, 2))


@pytest.mark.parametrize("vision", list(CVD))
def test_task_colours_stay_apart_under_colour_blindness(vision):
    assert min_difference(plots.TASK_COLORS[:4], vision) >= 20     # the four tasks of every notebook
    assert min_difference(plots.TASK_COLORS[:6], vision) >= 15
    free = simulate(to_rgb(plots.FREE_COLOR), vision)
    for c in plots.TASK_COLORS:                                   # free never reads as a task
        assert ciede2000(simulate(to_rgb(c), vision), free) >= 15, c
    for s in np.linspace(plots.MIN_SHADE, 1, 7):                  # nor does the palest kept weight of a mask
        assert ciede2000(simulate(plots.shade(plots.task_color(1), s), vision), free) >= 12


def test_the_old_palette_failed_the_same_check():
    # seaborn's colour-blind palette, used before: tasks 2 and 4 too close under deuteranopia
    old = ["#0173b2", "#de8f05", "#029e73", "#d55e00"]
    assert min_difference(old, "deuteranopia") < 10


def test_colours_fixed_free_grey_and_hatched():
    assert plots.task_color(1) == plots.TASK_COLORS[0]
    assert plots.task_color(0) == plots.FREE_COLOR
    assert plots.task_color(len(plots.TASK_COLORS) + 1) == plots.TASK_COLORS[0]
    assert len(set(plots.TASK_COLORS)) == len(plots.TASK_COLORS)
    assert plots._patch(0, "free").get_hatch() == plots.FREE_HATCH
    assert plots._patch(1, "a").get_hatch() is None
    fig = plots.capacity_plan([0.5, 0.5], ["a", "b"])               # 25% left free: a hatched bar
    assert any(p.get_hatch() == plots.FREE_HATCH for p in fig.axes[0].patches)


def test_text_colour_contrasts():
    assert plots.text_color_on("#000000") == "white"
    assert plots.text_color_on("#ffffff") == plots.TEXT_COLOR
    assert plots.text_color_on(plots.FREE_COLOR) == plots.TEXT_COLOR


# ------------------------------------------------------------ shares as the tables write them
def test_percent_is_the_tables_rounding():
    assert [plots.percent(s) for s in plots.planned_shares([0.5, 0.75, 0.75, 0.0])] == \
        ["50.0%", "12.5%", "9.4%", "28.1%", "0.0%"]


def test_capacity_bars_say_what_the_ownership_table_says():
    maps = plots.synthetic_owner_maps({"conv1.weight": (16, 1, 5, 5), "fc.weight": (128, 576)},
                                      [0.5, 0.75, 0.75, 0.0])
    fig = plots.capacity_bars(maps, NAMES)
    table = ownership_table(maps, NAMES)
    labels = [t.get_text() for t in fig.axes[0].texts]
    shares = [lab.split()[-1] for lab in labels]
    assert "12.5%" in shares and "9.4%" in shares and "9.5%" in shares    # conv1's 38 of 400: 9.5%
    for s in shares:
        assert f"({s})" in table, s
    check_projector(fig)


# ------------------------------------------------------------ every figure
def test_accuracy_matrix_heatmap():
    check_projector(plots.accuracy_matrix_heatmap(R, NAMES, "Fine-tuning: accuracy (%) after each task"))
    check_projector(plots.accuracy_matrix_heatmap([[90.0, 80.0, 70.0, 60.0]], NAMES))   # joint: one row


def test_accuracy_matrices():
    check_projector(plots.accuracy_matrices({"fine-tuning": R, "PackNet": R}, NAMES, "two"))


def test_forgetting_curves():
    fig = plots.forgetting_curves(R, NAMES, "forgets", reference=[90, 95, 85, 97])
    check_projector(fig)
    markers = {line.get_marker() for line in fig.axes[0].lines if line.get_label() in
               [plots.task_label(k, NAMES) for k in range(1, 5)]}
    assert len(markers) == 4              # tasks told apart by marker as well as colour


def test_accuracy_bars():
    fig = plots.accuracy_bars({"alone": [90, 95, 85, 97], "fine-tuning": [50, 40, 60, 97],
                               "PackNet": [89.3, 94.8, None, 98.3]}, NAMES, "accuracy at the end")
    check_projector(fig)
    assert "89.3" in [t.get_text() for t in fig.axes[0].texts]


def test_task_samples_one_image_per_class_full_names():
    from packnet_edu.data import Task
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot"]
    y = torch.arange(10).repeat_interleave(4)               # sorted by class, as the splits are
    ds = torch.utils.data.TensorDataset(torch.rand(40, 1, 28, 28), y)
    tasks = [Task(n, classes, ds, ds, ds) for n in NAMES]
    fig = plots.task_samples(tasks)
    check_projector(fig)
    titles = [ax.get_title().replace("/\n", "/").replace("\n", " ") for ax in fig.axes[:8]]
    assert titles == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]


def test_keep_mask_and_threshold_match_the_engine():
    from packnet_edu import PackNet
    torch.manual_seed(0)
    layer = torch.nn.Linear(30, 20)
    engine = PackNet(torch.nn.Sequential(layer))
    w = layer.weight.detach().clone()
    engine.start_task()
    engine.prune(0.6)
    keep = plots.keep_mask(w, 0.6)
    assert np.array_equal(keep, (engine.owner["0.weight"] != 0).numpy())
    thr = plots.magnitude_threshold(w, 0.6)
    assert np.array_equal(keep, np.abs(w.numpy()) > thr)
    assert plots.magnitude_threshold(w, 0.0) == 0.0


def test_weight_histogram_and_mask():
    w = torch.randn(32, 16, 3, 3)
    check_projector(plots.weight_histogram(w, plots.magnitude_threshold(w, 0.5), "conv2"))
    check_projector(plots.prune_mask_image(w, plots.keep_mask(w, 0.75)))


def test_accuracy_vs_ratio_draws_the_fair_dense_reference():
    fig = plots.accuracy_vs_ratio(CURVE, highlight=0.75)
    check_projector(fig)
    ax = fig.axes[0]
    flat = [line for line in ax.lines if len(set(line.get_ydata())) == 1 and line.get_label().startswith("dense")]
    assert flat and flat[0].get_ydata()[0] == 88.5
    assert "0.75" in ax.get_title()
    check_projector(plots.accuracy_vs_ratio([{k: v for k, v in p.items() if k != "dense_same_epochs"}
                                             for p in CURVE]))


def circled(fig):
    """(ratio, accuracy) of the circled 'after retraining' point of a pruning figure."""
    big = [line for ax in fig.axes for line in ax.lines if line.get_markersize() >= 15 and len(line.get_xdata())]
    return big[-1].get_xdata()[0], big[-1].get_ydata()[0]


def test_pruning_panel_snaps_to_the_grid_and_says_so():
    w = torch.randn(32, 16, 3, 3)
    fig = plots.pruning_panel(w, 0.74, CURVE, "conv2.weight")
    check_projector(fig)
    assert circled(fig) == (0.75, CURVE[4]["after"])
    assert "ratio 0.75" in fig.get_suptitle()
    fig = plots.pruning_panel(w, 0.7, CURVE, "conv2.weight")
    assert circled(fig) == (0.7, CURVE[3]["after"]) and "ratio 0.70" in fig.get_suptitle()
    assert plots.curve_index(CURVE, 0.73) == 4 and plots.curve_index(CURVE, 0.0) == 0


def test_pruning_panel_updates_in_place_like_a_new_one():
    w1, w2 = torch.randn(32, 16, 3, 3), torch.randn(64, 32)
    panel = plots.PruningPanel(CURVE)
    a = render(panel.show(w1, 0.25, "conv2.weight"))
    b = render(panel.show(w1, 0.75, "conv2.weight"))
    c = render(panel.show(w2, 0.75, "fc.weight"))
    assert len({a, b, c}) == 3
    kept = panel.kept.get_data().values.sum()
    assert kept == int(plots.keep_mask(w2, 0.75).sum())       # the histogram is the new layer's
    assert panel.ax_hist.get_title() == f"kept {plots.percent(plots.keep_mask(w2, 0.75).mean())}"


def test_planned_shares_and_capacity_plan():
    shares = plots.planned_shares([0.5, 0.75, 0.75, 0.0])
    assert shares == pytest.approx([0.5, 0.125, 0.09375, 0.28125, 0.0])   # the paper's capacities
    assert sum(plots.planned_shares([0.3, 0.6, 0.2])) == pytest.approx(1.0)
    fig = plots.capacity_plan([0.5, 0.75, 0.75, 0.0], NAMES)
    check_projector(fig)
    assert {"1: 50.0%", "2: 12.5%", "3: 9.4%", "4: 28.1%"} <= {t.get_text() for t in fig.axes[0].texts}
    for T in (8, 16):                      # the drawbacks notebook's schedules: still one column wide
        equal = [1 - 1 / (T - t) for t in range(T)]
        fig = plots.capacity_plan(equal, [f"t{k}" for k in range(1, T + 1)])
        check_projector(fig)
        assert f"{T}\n6.2%" in {t.get_text() for t in fig.axes[0].texts} or T == 8


def test_capacity_bars_vgg16_sized():
    shapes = {f"features.{i}.weight": (8, 8, 3, 3) for i in range(13)}          # 15 layers, as VGG-16
    shapes.update({"classifier.0.weight": (16, 64), "classifier.3.weight": (16, 16)})
    check_projector(plots.capacity_bars(plots.synthetic_owner_maps(shapes, [0.5, 0.75, 0.75, 0.0]), NAMES))


def test_owner_shares_sum_to_one():
    o = owners()
    s = plots.owner_shares(o, 4)
    assert s.shape == (16, 5)
    assert np.allclose(s.sum(1), 1.0)
    assert np.isclose(s[:, 0].mean(), float((o == 1).float().mean()))


def test_ownership_heatmap_small_and_vgg16_sized():
    check_projector(plots.ownership_heatmap(owners(), NAMES, layer="conv1.weight"))
    big_owner = plots.synthetic_owner_maps({"f": (512, 64, 3, 3)}, [0.5, 0.75, 0.75, 0.0])["f"]
    fig = plots.ownership_heatmap(big_owner, ["imagenet", "cubs", "cars", "flowers"], layer="features.28")
    check_projector(fig)                 # 512 filters: still one screen, title and legend included
    ax = fig.axes[0]
    assert len(ax.get_yticks()) < 20     # no 512 unreadable tick labels
    assert {"1", "2", "4"} <= {t.get_text() for t in ax.texts}    # bands numbered, not colour alone
    check_projector(plots.ownership_heatmap(owners(), NAMES, sort=False))


def test_ownership_heatmap_hatches_free():
    o = owners()
    o[:, :, :2] = 0
    fig = plots.ownership_heatmap(o, NAMES)
    hatched = [c for c in fig.axes[0].collections if c.get_hatch() == plots.FREE_HATCH]
    assert hatched


def snapshots():
    o1 = torch.ones(4, 1, 5, 5, dtype=torch.uint8)
    o2 = o1.clone()
    o2[:, :, :2] = 0
    w = torch.randn(4, 1, 5, 5)
    return [{"label": "1 a: trained", "weight": w, "owner": o1},
            {"label": "1 a: pruned", "weight": w * (o2 > 0), "owner": o2},
            {"label": "2 b: trained", "weight": w, "owner": torch.where(o2 == 0, 2, o2)}]


def test_filter_evolution_numbers_every_owned_cell_and_hatches_free():
    snaps = snapshots()
    view = plots.FilterEvolution(snaps, ["a", "b"])
    fig = view.show(1)
    check_projector(fig)
    numbers = [[t.get_text() for row in phase for t in row] for phase in view.texts]
    assert numbers[0] == ["1"] * 25
    assert numbers[1] == [""] * 10 + ["1"] * 15             # rows 0-1 pruned: free, no number
    assert numbers[2] == ["2"] * 10 + ["1"] * 15
    assert len(view.free.get_paths()) == 10                  # one hatch square per free cell
    a = render(fig)
    assert render(view.show(2)) != a
    assert "filter 2" in fig.get_suptitle()


def test_figures_are_hidpi_when_saved(tmp_path):
    fig = plots.capacity_plan([0.5, 0.0], ["a", "b"])
    paths = plots.save_figure(fig, tmp_path / "sub" / "plan")
    assert [p.name for p in paths] == ["plan.png", "plan.svg"]
    from PIL import Image
    with Image.open(paths[0]) as im:
        assert im.size[0] >= 1.9 * fig.get_figwidth() * fig.dpi     # 200 dpi: twice the screen size
    assert b"<svg" in paths[1].read_bytes()[:500]
    assert [p.name for p in plots.save_figure(fig, tmp_path / "x.png")] == ["x.png", "x.svg"]
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]   # atomic: no leftovers


def test_use_notebook_style_selects_retina():
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    plots.use_notebook_style()
    formatter = shell.display_formatter.formatters["image/png"]
    fig = plots.capacity_plan([0.5, 0.0], ["a", "b"])
    data, meta = formatter(fig)
    if isinstance(data, str):                   # base64, as sent to the frontend
        import base64
        data = base64.b64decode(data)
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        assert im.size[0] == pytest.approx(2 * meta["width"], abs=1)      # twice the pixels, same size
