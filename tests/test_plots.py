"""Every plotting function, with the Agg backend: it returns a Figure that renders."""
import io

import matplotlib
matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.colors import to_rgb

from packnet_edu import plots

NAMES = ["fashion", "mnist", "animals", "digits"]
R = [[90.0, None, None, None], [80.0, 95.0, None, None], [60.0, 70.0, 85.0, None], [50.0, 40.0, 60.0, 97.0]]


def render(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    return buf.getvalue()


def owners(shape=(16, 1, 5, 5), seed=0):
    return plots.synthetic_owner_maps({"conv1.weight": shape}, [0.5, 0.75, 0.75, 0.0], seed)["conv1.weight"]


def test_colours_fixed_and_free_grey():
    assert plots.task_color(1) == plots.TASK_COLORS[0]
    assert plots.task_color(0) == plots.FREE_COLOR
    assert len(set(plots.TASK_COLORS)) == len(plots.TASK_COLORS)
    assert plots.FREE_COLOR not in plots.TASK_COLORS
    for c in plots.TASK_COLORS:          # no task colour reads as grey
        r, g, b = to_rgb(c)
        assert max(r, g, b) - min(r, g, b) > 0.15


def test_accuracy_matrix_heatmap():
    render(plots.accuracy_matrix_heatmap(R, NAMES, "fine-tuning"))
    render(plots.accuracy_matrix_heatmap([[90.0, 80.0, 70.0, 60.0]], NAMES))   # joint: one row


def test_accuracy_matrices():
    render(plots.accuracy_matrices({"fine-tuning": R, "PackNet": R}, NAMES, "two"))


def test_forgetting_curves():
    render(plots.forgetting_curves(R, NAMES, "forgets", reference=[90, 95, 85, 97]))


def test_accuracy_bars():
    render(plots.accuracy_bars({"alone": [90, 95, 85, 97], "PackNet": [89, 94, None, 96]}, NAMES))


def test_task_samples():
    from packnet_edu.data import Task
    ds = torch.utils.data.TensorDataset(torch.rand(10, 1, 28, 28), torch.arange(10))
    tasks = [Task(n, [str(i) for i in range(10)], ds, ds, ds) for n in NAMES[:2]]
    render(plots.task_samples(tasks, per_task=4))


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


def test_weight_histogram():
    w = torch.randn(32, 16, 3, 3)
    render(plots.weight_histogram(w, plots.magnitude_threshold(w, 0.5), "conv2"))


def test_prune_mask_image():
    w = torch.randn(32, 16, 3, 3)
    render(plots.prune_mask_image(w, plots.keep_mask(w, 0.75)))


CURVE = [{"ratio": r, "before": 90 - 60 * r ** 3, "after": 90 - 20 * r ** 4} for r in (0, .25, .5, .75, .9)]


def test_accuracy_vs_ratio():
    render(plots.accuracy_vs_ratio(CURVE, highlight=0.5))
    render(plots.accuracy_vs_ratio(CURVE))


def test_pruning_panel_changes_with_ratio():
    w = torch.randn(32, 16, 3, 3)
    a = render(plots.pruning_panel(w, 0.25, CURVE, "conv2"))
    b = render(plots.pruning_panel(w, 0.75, CURVE, "conv2"))
    assert a != b


def test_planned_shares_and_capacity_plan():
    shares = plots.planned_shares([0.5, 0.75, 0.75, 0.0])
    assert shares == pytest.approx([0.5, 0.125, 0.09375, 0.28125, 0.0])   # the paper's capacities
    assert sum(plots.planned_shares([0.3, 0.6, 0.2])) == pytest.approx(1.0)
    render(plots.capacity_plan([0.5, 0.75, 0.75, 0.0], NAMES))


def test_capacity_bars():
    maps = plots.synthetic_owner_maps({"conv1.weight": (16, 1, 5, 5), "fc.weight": (128, 576)},
                                      [0.5, 0.75, 0.75, 0.0])
    render(plots.capacity_bars(maps, NAMES))


def test_owner_shares_sum_to_one():
    o = owners()
    s = plots.owner_shares(o, 4)
    assert s.shape == (16, 5)
    assert np.allclose(s.sum(1), 1.0)
    assert np.isclose(s[:, 0].mean(), float((o == 1).float().mean()))


def test_ownership_heatmap_small_and_vgg16_sized():
    small = render(plots.ownership_heatmap(owners(), NAMES, layer="conv1.weight"))
    big_owner = owners((512, 512, 3, 3))
    fig = plots.ownership_heatmap(big_owner, ["imagenet", "cubs", "cars", "flowers"], layer="features.28")
    w, h = fig.get_size_inches()
    assert w <= 12 and h <= 8        # 512 filters: still one slide-sized figure
    ax = fig.axes[0]
    assert len(ax.get_yticks()) < 20  # no 512 unreadable tick labels
    render(fig)
    render(plots.ownership_heatmap(owners(), NAMES, sort=False))
    assert small


def test_filter_evolution():
    o1 = torch.ones(4, 1, 5, 5, dtype=torch.uint8)
    o2 = o1.clone()
    o2[:, :, :2] = 0
    w = torch.randn(4, 1, 5, 5)
    snaps = [{"label": "1 a: trained", "weight": w, "owner": o1},
             {"label": "1 a: pruned", "weight": w * (o2 > 0), "owner": o2},
             {"label": "2 b: trained", "weight": w, "owner": torch.where(o2 == 0, 2, o2)}]
    render(plots.filter_evolution(snaps, 1, ["a", "b"]))


def test_save_figure_png_and_svg(tmp_path):
    fig = plots.capacity_plan([0.5, 0.0], ["a", "b"])
    paths = plots.save_figure(fig, tmp_path / "sub" / "plan")
    assert [p.name for p in paths] == ["plan.png", "plan.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in paths[1].read_bytes()[:500]
    assert [p.name for p in plots.save_figure(fig, tmp_path / "x.png")] == ["x.png", "x.svg"]
