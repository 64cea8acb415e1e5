"""ResNet-50 and DenseNet-121, the original code's other two networks, as
packable trunks: layout, weights from a local file, old tasks bit-identical
after later ones, per-layer shares exact, export equal to the task view.

Small inputs (32x32, batch 4) keep the full-width networks quick on a CPU."""
import pytest
import torch
import torchvision

from packnet_edu import checkpoint as ck
from packnet_edu.config import Config
from packnet_edu.engine import PackNet, prune_count
from packnet_edu.models import build_model, densenet121, resnet50
from packnet_edu.presets import preset

NETS = {"resnet50": (resnet50, torchvision.models.resnet50, "fc", 2048),
        "densenet121": (densenet121, torchvision.models.densenet121, "classifier", 1024)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Random torchvision state dicts saved as files (the offline stand-in for the ImageNet weights)."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    out = {}
    for name, (_, builder, _, _) in NETS.items():
        state = builder().state_dict()
        out[name] = (d / f"{name}.pth", state)
        torch.save(state, out[name][0])
    return out


@pytest.mark.parametrize("name", NETS)
def test_layout_and_local_weights(name, saved):
    build, _, fc, features = NETS[name]
    path, state = saved[name]
    model = build([1000, 10], weights=path)
    engine = PackNet(model.trunk)
    # every convolution of the trunk is packed; the classifier is not in it
    convs = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(engine.weights) == len(convs) == (53 if name == "resnet50" else 120)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.trunk.modules())
    # with ImageNet-shaped weights task 1's head is the pretrained classifier
    assert torch.equal(model.heads[0].weight, state[f"{fc}.weight"])
    assert model.heads[1].in_features == features and model.num_classes == [1000, 10]
    first = "conv1.weight" if name == "resnet50" else "features.conv0.weight"
    assert torch.equal(dict(model.trunk.named_parameters())[first], state[first])
    # BatchNorm belongs to task 1: its affine parameters are shared, the engine hooks every layer
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(len(m._forward_pre_hooks) == 1 for m in bns)
    assert all(n in engine.shared for n, p in model.trunk.named_parameters() if n.endswith("bias"))
    # the trunk computes what torchvision's network computes, up to the classifier
    net = getattr(torchvision.models, name)()
    net.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x, 1), net.eval()(x), atol=1e-5)
    assert build([10]).heads[0].out_features == 10           # random start: a fresh head


def test_wrong_weights_file_is_a_clear_error(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="ResNet-50 weights file .* not found: pass a state dict"):
        resnet50([10], weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="is not a torchvision DenseNet-121 state dict"):
        densenet121([10], weights=saved["resnet50"][0])
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        build_model("resnet18", [10])


def test_presets_pack_the_other_networks():
    for name, model in (("paper-resnet50", "resnet50"), ("paper-densenet121", "densenet121")):
        cfg = preset(name)
        assert cfg.model == model and cfg.weights == "imagenet"
        assert {k: v for k, v in cfg.to_dict().items() if k != "model"} == \
            {k: v for k, v in preset("paper-vgg16").to_dict().items() if k != "model"}


def _steps(model, engine, task, x, y, n, **opt):
    params = list(model.trunk.parameters()) + list(model.heads[task - 1].parameters())
    # a small lr: at 32x32 the last stage's BatchNorm sees 4 values per channel and
    # gradients reach 1e3; the weights still move (checked), so protection is exercised
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, **opt)
    engine.protect(optimizer)
    model.train()
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(model(x, task), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", NETS)
def test_packnet_sequence_keeps_old_tasks_bit_identical(name, tmp_path):
    """Task 1 trains, is pruned 50% and retrained; task 2 trains in train mode
    with momentum and weight decay: task 1's outputs, weights and BatchNorm
    statistics do not change; each layer's shares are exactly the engine's
    rounding; the export of each task computes what its task view computes
    (for DenseNet-121 also through checkpoint and export files). Two tasks,
    one step per phase: pruning and protecting 25M weights takes the time."""
    torch.manual_seed(0)
    model = build_model(name, [5, 3])
    engine = PackNet(model.trunk)
    x = torch.randn(4, 3, 32, 32)
    ys = [torch.randint(0, n, (4,)) for n in (5, 3)]
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    outputs, weights = {}, {}
    for t, ratio in enumerate([0.5, 0.0], start=1):
        engine.start_task()
        start2 = {n: w.detach().clone() for n, w in engine.weights.items()}
        _steps(model, engine, t, x, ys[t - 1], 1, weight_decay=5e-4)
        if ratio:
            engine.prune(ratio)
            _steps(model, engine, t, x, ys[t - 1], 1)
        engine.end_task()
        model.eval()
        with torch.no_grad(), engine.task_view(t):
            outputs[t] = model(x, t)
        weights[t] = {n: w.detach()[engine.owner[n] == t].clone() for n, w in engine.weights.items()}
        if t == 1:
            stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    assert all(torch.isfinite(o).all() for o in outputs.values())     # equal, and not by being NaN
    assert any(not torch.equal(w.detach()[engine.owner[n] == 2], start2[n][engine.owner[n] == 2])
               for n, w in engine.weights.items())                      # task 2 did train
    with torch.no_grad(), engine.task_view(1):
        assert torch.equal(model(x, 1), outputs[1])
    assert all(torch.equal(w.detach()[engine.owner[n] == 1], weights[1][n]) for n, w in engine.weights.items())
    assert all(torch.equal(a, m.running_mean) and torch.equal(v, m.running_var) for (a, v), m in zip(stats, bns))
    for n, counts in engine.owned_counts().items():
        size = engine.owner[n].numel()
        assert counts == {1: size - prune_count(0.5, size), 2: prune_count(0.5, size)}, n
    for t in (1, 2):
        with torch.no_grad():
            assert torch.equal(ck.export_task(model, engine, t)(x), outputs[t]), t
    if name == "densenet121":      # through files (the smaller network): a checkpoint names its model
        path = ck.save(ck.make_checkpoint(model, engine, Config(model=name).to_dict(), ["a", "b"]),
                       tmp_path / "ckpt.pt")
        ck.export_task_file(path, 1, tmp_path / "task1.pt")
        with torch.no_grad():
            assert torch.equal(ck.load_exported(tmp_path / "task1.pt")(x), outputs[1])
