"""Learning without Forgetting (baselines.run_lwf) and the memory column of
the comparison, on a tiny synthetic sequence (random 28x28 images, so every
test takes seconds; what LwF achieves on real tasks is in docs/compare)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from packnet_edu import baselines
from packnet_edu.baselines import (distillation_loss, lwf_loss, lwf_phases, network_memory,
                                   record_old_outputs, run_method, task_phases)
from packnet_edu.checkpoint import bits_for
from packnet_edu.data import Task
from packnet_edu.report import comparison_markdown, comparison_table
from packnet_edu.train import Config, make_model

CFG = Config(tasks=("mnist", "animals", "digits"), width=4, epochs=4, retrain_epochs=1, batch_size=16)


def synthetic(n_classes, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    split = lambda m: TensorDataset(torch.rand(m, 1, 28, 28, generator=g), torch.randint(0, n_classes, (m,), generator=g))
    return Task(f"t{seed}", [str(c) for c in range(n_classes)], split(n), split(16), split(16))


@pytest.fixture(scope="module")
def tasks():
    return [synthetic(5, seed=1), synthetic(3, seed=2), synthetic(4, seed=3)]


def test_distillation_loss_is_soft_cross_entropy_minus_its_entropy():
    torch.manual_seed(0)
    logits, recorded = torch.randn(6, 5), torch.randn(6, 5)
    p = F.softmax(recorded / 2, 1)
    cross = -(p * F.log_softmax(logits / 2, 1)).sum(1).mean()
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(distillation_loss(logits, recorded, 2.0), cross - entropy, atol=1e-6)
    assert distillation_loss(recorded, recorded, 2.0).abs() < 1e-6      # nothing to learn at the target
    assert distillation_loss(logits, recorded, 2.0) > 0


def test_recorded_outputs_are_the_old_heads_on_each_training_image(tasks):
    model = make_model(CFG, [t.num_classes for t in tasks])
    model.heads[0].weight.data.normal_()            # distinct heads
    data = record_old_outputs(model, 2, tasks[2], CFG)
    x, y, recorded = data.train.tensors
    assert x is tasks[2].train.tensors[0] and y is tasks[2].train.tensors[1]     # same images, same order
    assert recorded.shape == (len(x), 5 + 3)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x, 1), model(x, 2)], 1)
    assert torch.allclose(recorded, expected, atol=1e-5)
    assert data.val is tasks[2].val and data.test is tasks[2].test


def test_recorded_targets_and_a_frozen_teacher_give_the_same_loss(tasks):
    """The two ways of getting LwF's targets (recorded before training for
    in-memory data; a frozen copy of the network for image folders) agree,
    and before any update the loss is the new task's cross-entropy alone."""
    model = make_model(CFG, [t.num_classes for t in tasks])
    data = record_old_outputs(model, 2, tasks[2], CFG)
    x, y, recorded = (t[:16] for t in data.train.tensors)
    teacher = copy.deepcopy(model).eval()
    model.eval()
    recorded_loss = lwf_loss([5, 3])(model, 3, x, y, recorded)
    online_loss = lwf_loss([5, 3], teacher=teacher)(model, 3, x, y)
    assert torch.allclose(recorded_loss, online_loss, atol=1e-6)
    assert torch.allclose(recorded_loss, F.cross_entropy(model(x, 3), y), atol=1e-5)
    # once the trunk moves, the old heads' outputs drift and the distillation term is positive
    with torch.no_grad():
        model.trunk.fc.weight.add_(0.5 * torch.randn_like(model.trunk.fc.weight))
    assert lwf_loss([5, 3])(model, 3, x, y, recorded) > F.cross_entropy(model(x, 3), y) + 1e-4


@pytest.mark.parametrize("epochs,retrain", [(3, 1), (1, 1), (20, 10), (4, 0)])
def test_lwf_has_the_other_methods_epoch_budget(epochs, retrain):
    cfg = Config(epochs=epochs, retrain_epochs=retrain)
    for t in (1, 2, 3, 4):
        phases = lwf_phases(cfg, t, 4)
        assert sum(e for e, _, _ in phases) == sum(e for e, _ in task_phases(cfg, t, 4))
        head_only = [e for e, _, h in phases if h]
        assert head_only == ([] if t == 1 or round(epochs / 4) == 0 else [round(epochs / 4)])
        assert not phases[-1][2]                       # the trunk always trains in the end
    # the original code's schedule: 20 epochs, the first 5 head only
    assert lwf_phases(Config(epochs=20, retrain_epochs=10, lr=1e-3, retrain_lr=1e-4), 2, 4) == \
        [(5, 1e-3, True), (15, 1e-3, False), (10, 1e-4, False)]


def test_warm_up_trains_the_new_head_alone_then_everything(tasks, monkeypatch):
    """The head-only phase optimises task t's head alone and leaves the trunk
    (weights and BatchNorm statistics, though it runs in train mode) and the
    old heads bit-identical; the phases after it train the trunk and heads 1..t."""
    calls = []
    real_fit = baselines.fit

    def spy(model, t, data, cfg, epochs, lr, params, **kw):
        before = copy.deepcopy(model.state_dict())
        out = real_fit(model, t, data, cfg, epochs, lr, params, **kw)
        moved = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
        names = {id(p): n for n, p in model.named_parameters()}
        calls.append((t, kw["desc"].endswith("warm-up"), {names[id(p)] for p in params}, moved))
        return out
    monkeypatch.setattr(baselines, "fit", spy)
    cfg = Config(**dict(CFG.to_dict(), retrain_epochs=0))        # 4 epochs: 1 warm-up + 3
    run_method("lwf", cfg, tasks[:2])
    model = make_model(cfg, [5, 3])
    trunk = {f"trunk.{n}" for n, _ in model.trunk.named_parameters()}
    head = lambda k: {f"heads.{k - 1}.{n}" for n, _ in model.heads[k - 1].named_parameters()}
    assert [(t, warm, params) for t, warm, params, _ in calls] == [
        (1, False, trunk | head(1)), (2, True, head(2)), (2, False, trunk | head(1) | head(2))]
    assert calls[1][3] <= head(2)                # the warm-up moved nothing else (BatchNorm included)


def _counted(model, heads):
    """Values and bytes of the trunk and some heads, counted from parameters and buffers."""
    mods = [model.trunk] + [model.heads[k - 1] for k in heads]
    tensors = [t for m in mods for t in list(m.parameters()) + list(m.buffers())]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def test_memory_of_each_method(tasks):
    """One network with T heads (fine-tuning, LwF, ...), T networks with one
    head each (individual), one network plus owner maps of ceil(log2(T + 1))
    bits per packed weight, each layer padded to whole bytes (PackNet)."""
    cfg = Config(**dict(CFG.to_dict(), epochs=1))
    model = make_model(cfg, [t.num_classes for t in tasks])
    values, size = _counted(model, [1, 2, 3])
    for m in ("finetune", "lwf", "classifier_only", "joint"):
        assert run_method(m, cfg, tasks)["memory"] == {"values": values, "bytes": size, "mask_bytes": 0}, m
    alone = [_counted(model, [k]) for k in (1, 2, 3)]          # network k: a trunk and head k
    assert run_method("individual", cfg, tasks)["memory"] == {
        "values": sum(v for v, _ in alone), "bytes": sum(b for _, b in alone), "mask_bytes": 0}
    trunk_values = _counted(model, [])[0]
    assert sum(v for v, _ in alone) == 3 * trunk_values + (values - trunk_values)   # T trunks, T heads
    packnet = run_method("packnet", cfg, tasks)["memory"]
    masks = sum(bits_for(3) * math.ceil(w.numel() / 8) for w in (m.weight for m in model.trunk.modules()
                                                              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))))
    assert packnet == {"values": values, "bytes": size + masks, "mask_bytes": masks}
    assert network_memory(model, heads=[2])["values"] == alone[1][0]


def test_report_has_lwf_backward_transfer_and_memory():
    R = [[90.0, None], [80.0, 70.0]]
    mem = {"values": 1000, "bytes": 4_000_000, "mask_bytes": 0}
    results = {"task_names": ["a", "b"], "config": {}, "sweep": [], "methods": {
        "joint": {"matrix": [[85.0, 75.0]], "seconds": 1.0, "memory": mem},
        "lwf": {"matrix": R, "seconds": 2.0, "memory": dict(mem, bytes=4_250_000)},
        "packnet": {"matrix": [[90.0, None], [90.0, 70.0]], "seconds": 3.0, "ratios": [0.5, 0.0],
                    "outputs_identical": [True, True], "shares": [50.0, 50.0], "mask_bits": 2}}}
    table = comparison_table(results).splitlines()
    assert table[0] == "| task | Joint (all tasks at once) | LwF | PackNet |"
    assert table[2] == "| 1. a | 15.00 | 20.00 | 10.00 |"
    assert table[4] == "| **average** | **20.00** | **25.00** | **20.00** |"
    assert table[5] == "| backward transfer (points) | n/a | -10.00 | 0.00 |"
    assert table[6] == "| memory for 2 tasks (MB) | 4.00 | 4.25 | - |"     # a results.json without memory: -
    report = comparison_markdown(results)
    assert "| LwF | 75.00 | -10.00 | 1,000 | 4,250,000 | 2 |" in report
