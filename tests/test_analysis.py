"""The drawbacks measurements (notebook 8): checked against the engine and evaluate."""
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from packnet_edu import analysis
from packnet_edu.data import Task
from packnet_edu.engine import PackNet, PackNetError
from packnet_edu.models import small_vgg
from packnet_edu.train import Config, evaluate_task, loader_for, prune_schedule

CFG = Config(batch_size=16)


def fake_task(name: str, seed: int, n: int = 40, classes: int = 10) -> Task:
    g = torch.Generator().manual_seed(seed)
    split = lambda: TensorDataset(torch.rand(n, 1, 28, 28, generator=g),  # noqa: E731
                                  torch.randint(0, classes, (n,), generator=g))
    return Task(name, [str(c) for c in range(classes)], split(), split(), split())


def packed(ratios, classes=(10, 10)):
    """A model whose engine went through len(ratios) tasks (random weights moved
    a little per task, so pruning picks different weights each time)."""
    torch.manual_seed(0)
    model = small_vgg(list(classes))
    engine = PackNet(model.trunk)
    for r in ratios:
        engine.start_task()
        engine.keep_copies()                     # what restore_frozen writes back
        with torch.no_grad():
            for w in engine.weights.values():
                w.add_(torch.randn_like(w))
        engine.restore_frozen()                  # only the new task's weights moved
        if r:
            engine.prune(r)
        engine.end_task()
    return model, engine


@pytest.mark.parametrize("ratios", [[0.5, 0.75, 0.75, 0.0], prune_schedule("equal", 5), [0.9, 0.9, 0.5]])
def test_planned_counts_are_the_engines(ratios):
    _, engine = packed(ratios, classes=[10] * len(ratios))
    for name, owner in engine.owner.items():
        counts = analysis.planned_counts(ratios, owner.numel())
        assert counts == [int((owner == k).sum()) for k in range(1, len(ratios) + 1)] + [int((owner == 0).sum())], name
        assert sum(counts) == owner.numel()


def test_planned_counts_run_out():
    # 16 tasks under the paper's schedule in a 400-weight layer: the later tasks get almost nothing
    counts = analysis.planned_counts(prune_schedule("paper", 16), 400)
    assert counts[0] == 200 and counts[-1] == 0 and min(counts[:-1]) <= 2


def test_no_free_weight_left_is_refused():
    _, engine = packed([0.5, 0.0])
    with pytest.raises(PackNetError, match="no free weight"):
        engine.start_task()


def test_inferred_task_accuracy():
    model, engine = packed([0.5, 0.0])
    tasks = [fake_task("a", 1), fake_task("b", 2)]
    res = analysis.inferred_task_accuracy(model, engine, tasks, CFG)
    for k, t in enumerate(tasks, start=1):      # "known" is exactly what evaluate_task reports
        assert res["known"][k - 1] == evaluate_task(model, engine, k, loader_for(t.test, CFG, train=False))
        assert res["inferred"][k - 1] <= min(res["known"][k - 1], res["identified"][k - 1])
    # a head that is sure of everything takes every image: task 1 is never identified
    with torch.no_grad():
        model.heads[0].weight.mul_(1e-6)
        model.heads[0].bias.zero_()
        model.heads[1].weight.mul_(1e4)
    res = analysis.inferred_task_accuracy(model, engine, tasks, CFG)
    assert res["identified"] == [0.0, 100.0] and res["inferred"][0] == 0.0
    assert res["inferred"][1] == res["known"][1]


def test_head_only_leaves_the_trunk_alone():
    model, engine = packed([0.5, 0.0])
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    task = fake_task("c", 3)
    a = analysis.head_only_accuracy(model, engine, task, CFG, epochs=2)
    b = analysis.head_only_accuracy(model, engine, task, CFG, epochs=2)
    assert a == b and 0.0 <= a <= 100.0
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_storage_counts():
    model, engine = packed([0.5, 0.75, 0.0], classes=[10, 5, 7])
    s = analysis.storage(model, engine)
    weights = sum(m.weight.numel() for m in model.trunk.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    trunk = sum(p.numel() for p in model.trunk.parameters())
    heads = (128 + 1) * (10 + 5 + 7)
    assert s["owned"] == weights < trunk and s["heads"] == heads and s["bits"] == 2 == math.ceil(math.log2(4))
    assert s["separate"] == 4 * (3 * trunk + heads)
    assert s["packnet"] == 4 * (trunk + heads) + math.ceil(weights * 2 / 8)
