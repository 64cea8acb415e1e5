"""VGG-16 as the paper packs it: layout, weights from a local file, BatchNorm
frozen after task 1, and old tasks bit-identical after a PackNet sequence."""
import pytest
import torch
import torchvision

from packnet_edu.engine import PackNet
from packnet_edu.models import build_model, vgg16

from replicas import tiny_vgg16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Random torchvision VGG-16 and VGG-16-BN state dicts saved as files (the
    offline stand-in for the ImageNet weights)."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    out = {}
    for name, builder in (("vgg16", torchvision.models.vgg16), ("vgg16_bn", torchvision.models.vgg16_bn)):
        state = builder().state_dict()
        out[name] = (d / f"{name}.pth", state)
        torch.save(state, out[name][0])
    return out


def test_layout_and_local_weights(saved):
    path, state = saved["vgg16"]
    model = vgg16([1000, 200, 196, 102], weights=path)
    assert list(dict(model.trunk.named_children())) == ["features", "avgpool", "flatten", "fc"]
    engine = PackNet(model.trunk)
    convs = [n for n in engine.weights if n.startswith("features.")]
    assert len(convs) == 13 and [n for n in engine.weights if n.startswith("fc.")] == ["fc.0.weight", "fc.3.weight"]
    assert engine.weights["fc.0.weight"].shape == (4096, 25088)           # fc6 and fc7 are packed
    assert not any(h.weight is w for h in model.heads for w in engine.weights.values())   # heads are not
    assert model.num_classes == [1000, 200, 196, 102]
    # the loaded weights, and fc8 as task 1's head (task 1 is ImageNet)
    assert torch.equal(model.trunk.features[0].weight, state["features.0.weight"])
    assert torch.equal(model.trunk.fc[3].weight, state["classifier.3.weight"])
    assert torch.equal(model.heads[0].weight, state["classifier.6.weight"])
    with torch.no_grad():     # any input size: avgpool is adaptive; 32x32 keeps the CPU test cheap
        assert model(torch.randn(2, 3, 32, 32), 3).shape == (2, 196)
    assert isinstance(build_model("vgg16", [5], weights=path).heads[0], torch.nn.Linear)


def test_batchnorm_weights_file(saved):
    path, state = saved["vgg16_bn"]
    model = vgg16([1000, 10], weights=path, batch_norm=True)
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 13
    assert torch.equal(bns[0].running_mean, state["features.1.running_mean"])
    engine = PackNet(model.trunk)
    assert sum(len(m._forward_pre_hooks) for m in bns) == 13            # the engine freezes them after task 1
    assert "features.1.weight" in engine.shared                         # BN affine belongs to task 1


def test_wrong_weights_file_is_a_clear_error(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: pass a state dict"):
        vgg16([10], weights=tmp_path / "missing.pth")
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="is not a torchvision VGG-16 state dict"):
        vgg16([10], weights=bad)
    with pytest.raises(ValueError, match="is not a torchvision VGG-16-BN state dict"):
        vgg16([10], weights=saved["vgg16"][0], batch_norm=True)


def _step(model, opt, task, x, y):
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):   # as training runs on a GPU
        loss = torch.nn.functional.cross_entropy(model(x, task), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_packnet_sequence_keeps_task1_bit_identical(batch_norm, channels_last, device, monkeypatch):
    """VGG-16's layout (narrow, so the CPU runs it quickly): task 1 trains, is
    pruned 50% and retrained; task 2 trains with momentum and weight decay in
    train mode; task 1's weights, outputs and BatchNorm statistics do not
    change. Also with channels_last weights, and on a GPU with bf16 autocast
    (there cuDNN is made deterministic, so that equal weights give equal outputs)."""
    if device == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    model = tiny_vgg16([5, 3], batch_norm=batch_norm).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = PackNet(model.trunk)
    x, y1, y2 = (t.to(device) for t in (torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)),
                                          torch.randint(0, 3, (8,))))
    engine.start_task()
    opt = torch.optim.SGD(list(model.trunk.parameters()) + list(model.heads[0].parameters()), lr=0.05, momentum=0.9)
    engine.protect(opt)
    bn = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    _step(model, opt, 1, x, y1)
    assert all(not torch.equal(b, m.running_mean) for b, m in zip(before, bn))   # task 1 trains BN
    engine.prune(0.5)
    _step(model, opt, 1, x, y1)
    engine.end_task()
    model.eval()
    with torch.no_grad(), engine.task_view(1):
        ref = model(x, 1)
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    task1 = {n: w.detach().clone() for n, w in engine.weights.items()}
    engine.start_task()
    opt = torch.optim.SGD(list(model.trunk.parameters()) + list(model.heads[1].parameters()), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    engine.protect(opt)
    for _ in range(3):
        _step(model, opt, 2, x, y2)
    assert all(torch.equal(a, m.running_mean) and torch.equal(v, m.running_var) for (a, v), m in zip(stats, bn))
    model.eval()
    for n, w in engine.weights.items():
        mine = engine.owner[n].to(w.device) == 1
        assert torch.equal(w.detach()[mine], task1[n][mine]), n
    with torch.no_grad(), engine.task_view(1):
        assert torch.equal(model(x, 1), ref)
    counts = engine.owned_counts()
    assert all(set(c) == {1, 2} for c in counts.values())


def test_benchmark_smoke_on_cpu(tmp_path):
    """benchmarks/bench_gpu.py end to end on the CPU (tiny model and sizes):
    both kinds of step timed, the ratio, TFLOP/s and JSON written; task 1's
    weights exact after a protected step."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--model", "tiny_vgg16",
                           "--image-size", "32", "--batch-size", "4", "--steps", "1", "--trials", "2",
                           "--channels-last", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ratio protected/plain" in proc.stdout and "images/s" in proc.stdout
    r = json.loads(out.read_text())
    assert r["channels_last"] is True        # as on the GPU: the engine prunes channels_last weights
    assert r["task1_weights_exact_after_protected_step"] is True
    assert set(r["images_per_s"]) == {"plain", "protected"} and r["ratio_images_per_s_protected_over_plain"] > 0
    assert r["device_name"] and r["torch"] == torch.__version__ and r["gflops_per_training_image"] > 0
    # the preset's optimizer (SGD, weight decay 0, fresh): exact gradient masking; per packed weight
    # on a CPU a 4-byte 0/-1 mask and the gradient read and written (1-byte mask on a GPU)
    assert r["weight_decay"] == 0 and r["protection_mode"] == "mask"
    assert r["protection_bytes_per_step"] == 12 * r["packed_weights"]


def test_cpu_bench_command_runs():
    from packnet_edu.bench import bench_step
    r = bench_step("small_vgg", "cpu", batch_size=8, steps=1, trials=1)
    assert r["task1_weights_exact_after_protected_step"] is True
    # small_vgg at 28x28: conv1 28*28*16*25, conv2 14*14*32*16*9, conv3 7*7*64*32*9, fc 576*128 MACs
    macs = 28 * 28 * 16 * 25 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9 + 576 * 128 + 128 * 10
    assert r["gflops_per_training_image"] == pytest.approx(3 * 2 * macs / 1e9)


def test_make_model_honours_channels_last():
    from packnet_edu.presets import preset
    from packnet_edu.train import Config, make_model
    assert preset("paper-vgg16").channels_last
    conv = make_model(Config(channels_last=True), [10]).trunk[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert make_model(Config(), [10]).trunk[0].weight.is_contiguous()


def _task2_state(seed=0, channels_last=False):
    """tiny VGG-16 with task 1 trained, pruned 50% and frozen; task 2 started."""
    torch.manual_seed(seed)
    model = tiny_vgg16([5, 3], batch_norm=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = PackNet(model.trunk)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    engine.start_task()
    return model, engine, list(model.trunk.parameters()) + list(model.heads[1].parameters())


def _steps(model, opt, n=3):
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for _ in range(n):
        _step(model, opt, 2, x, y)


def _frozen(engine, model):
    return {n: (w.detach()[engine.owner[n] == 1].clone()) for n, w in engine.weights.items()} | \
        {n: p.detach().clone() for n, p in model.trunk.named_parameters() if n not in engine.weights}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_protection_masks_gradients_only_where_that_is_exact(channels_last):
    """A fresh SGD without weight decay (what train.fit builds every phase)
    is protected by masking gradients; weight decay, Adam, or an optimizer
    carrying momentum into a new ownership (here: across a prune) fall back to
    restoring after the step. Old tasks stay bit-identical in every case."""
    model, engine, params = _task2_state(channels_last=channels_last)
    masks = [engine._trainable[n] for n in engine._trainable]
    assert all(m.stride() == engine.weights[n].stride() for n, m in zip(engine._trainable, masks))   # same layout
    before = _frozen(engine, model)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    handle = engine.protect(opt)
    _steps(model, opt)
    assert handle.mode == "mask" and _same(before, _frozen(engine, model))
    packed = sum(engine._trainable[n].numel() for n in engine._trainable)
    assert handle.bytes_per_step() == 12 * packed     # CPU: 4-byte mask, gradient read and written
    # the same optimizer after a prune: its momentum is not zero on the freed weights -> restore
    engine.prune(0.5)
    freed = {n: (engine.owner[n] == 0) for n in engine.weights}
    _steps(model, opt)
    assert handle.mode == "restore"
    assert all(torch.equal(w.detach()[freed[n]], torch.zeros(int(freed[n].sum()))) for n, w in engine.weights.items())
    assert _same(before, _frozen(engine, model))
    handle.remove()
    for make, mode in ((lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4), "restore"),
                       (lambda: torch.optim.AdamW(params, lr=1e-2), "restore"),
                       (lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9), "mask")):
        opt = make()
        handle = engine.protect(opt)
        _steps(model, opt)
        assert handle.mode == mode and _same(before, _frozen(engine, model))
        handle.remove()


def test_masked_gradients_ignore_nan():
    """torch.where, not a product: NaN * 0 would be NaN and reach task 1."""
    model, engine, params = _task2_state()
    before = _frozen(engine, model)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    handle = engine.protect(opt)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x, 2), y)
    loss.backward()
    for p in model.trunk.parameters():
        p.grad.fill_(float("nan"))
    opt.step()
    assert handle.mode == "mask" and _same(before, _frozen(engine, model))


def test_retraining_lr_schedule():
    """ImageNet (a pretrained task 1: first_task_epochs=0) decays its post-prune
    lr x0.1 after 5 of 10 epochs, as the released run_imagenet_pruning.sh
    (--lr_decay_every 5); the later tasks' retraining keeps lr_step (10: constant)."""
    from packnet_edu.presets import preset
    from packnet_edu.train import retrain_lr_step
    cfg = preset("paper-vgg16")
    assert [retrain_lr_step(cfg, t) for t in (1, 2, 3, 4)] == [5, 10, 10, 10]
    from packnet_edu.config import Config
    assert retrain_lr_step(Config(first_task_epochs=None, lr_step=3), 1) == 3
