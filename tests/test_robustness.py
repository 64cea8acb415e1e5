"""Nothing silently wrong: every bad input a clear error, every old task exact.

Each test here is a case that once gave a raw traceback or a silently wrong
result (issue 10): later tasks holding NaN, norm layers other than BatchNorm,
weights replaced or cast behind the engine's back, nested task views, corrupt
engine states, old heads under weight decay, unpacked layer types, numbers
from other libraries, and every Config field.
"""
import ast
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from packnet_edu import PackNet, PackNetError, small_vgg
from packnet_edu.config import Config, ConfigError, prune_schedule
from packnet_edu.engine import prune_count

ROOT = Path(__file__).resolve().parents[1]


def tiny(seed=0, tasks=3):
    torch.manual_seed(seed)
    return small_vgg([3] * tasks, width=4)


def steps(model, task, optimizer, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(n):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x, task), y).backward()
        optimizer.step()


PROBE = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def task1_done(model, engine, ratio=0.5):
    """Task 1 trained, pruned, retrained, ended; returns its logits on PROBE."""
    engine.start_task()
    opt = torch.optim.SGD(list(model.trunk.parameters()) + list(model.heads[0].parameters()), lr=0.05)
    engine.protect(opt)
    steps(model, 1, opt)
    engine.prune(ratio)
    steps(model, 1, opt, seed=1)
    engine.end_task()
    model.eval()
    with torch.no_grad(), engine.task_view(1):
        return model(PROBE, 1)


def task1_logits(model, engine):
    model.eval()
    with torch.no_grad(), engine.task_view(1):
        return model(PROBE, 1)


# ------------------------------------------------------------------ item 4
def test_nan_in_a_later_task_never_reaches_an_earlier_one():
    from packnet_edu.checkpoint import export_task
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    engine.start_task()
    with torch.no_grad():
        for name, w in engine.weights.items():
            w[engine.owner[name].to(w.device) == 2] = float("nan")
        conv1 = engine.weights["conv1.weight"]
        conv1[tuple((engine.owner["conv1.weight"] == 2).nonzero()[0])] = float("inf")
    assert torch.isinf(engine.weights["conv1.weight"]).sum() == 1      # injected, not written into a copy
    assert torch.equal(task1_logits(model, engine), before)
    exported = export_task(model, engine, 1)
    with torch.no_grad():
        assert torch.equal(exported(PROBE), before)


# ------------------------------------------------------------------ item 5
@pytest.mark.parametrize("norm", ["instance", "sync"])
def test_every_norm_layer_with_running_statistics_is_frozen_after_task1(norm):
    layer = nn.InstanceNorm2d(4, affine=True, track_running_stats=True) if norm == "instance" \
        else nn.SyncBatchNorm(4)
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    engine = PackNet(trunk)
    engine.start_task()
    if norm == "instance":          # SyncBatchNorm trains only in a process group; task 1 skips it
        trunk.train()
        trunk(torch.randn(4, 1, 28, 28))
    engine.prune(0.5)
    engine.end_task()
    stats = {k: v.clone() for k, v in layer.state_dict().items()}
    engine.start_task()
    trunk.train()
    trunk(torch.randn(4, 1, 28, 28) * 3 + 1)       # train mode: would update the statistics
    assert all(torch.equal(stats[k], v) for k, v in layer.state_dict().items())


# ------------------------------------------------------------------ item 6
def test_weights_replaced_with_the_same_values_are_adopted_and_protected():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    engine.start_task()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(fresh, assign=True)             # new Parameter objects, same values
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    engine.protect(opt)
    steps(model, 2, opt)
    assert torch.equal(task1_logits(model, engine), before)


def test_frozen_weights_replaced_with_other_values_are_refused():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    other = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(other, assign=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine.protect(opt)
    with pytest.raises(PackNetError, match="changed since the engine recorded them"):
        steps(model, 2, opt, n=1)


def test_layers_added_or_wrapped_after_packnet_are_refused():
    model = tiny()
    engine = PackNet(model.trunk)
    engine.start_task()
    model.trunk.add_module("extra", nn.Linear(3, 3))
    with pytest.raises(PackNetError, match="added .*extra.weight"):
        engine.prune(0.5)
    model = tiny()
    engine = PackNet(model.trunk)
    engine.start_task()
    nn.utils.spectral_norm(model.trunk.conv1)
    with pytest.raises(PackNetError, match="spectral_norm"):
        engine.prune(0.5)
    model = tiny()
    nn.utils.parametrizations.weight_norm(model.trunk.conv1)
    with pytest.raises(PackNetError, match="weight_norm"):
        PackNet(model.trunk)


def test_casting_mid_task_is_refused_and_between_tasks_works():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    model.double()                              # between tasks: recorded again
    engine.start_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    engine.protect(opt)
    w1 = {n: w.detach().clone() for n, w in engine.weights.items()}
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64), 2),
                                    torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    for n, w in engine.weights.items():
        old = engine.owner[n] == 1
        assert torch.equal(w.detach()[old], w1[n][old])
    model.float()
    with pytest.raises(PackNetError, match="cast .* in the middle of task 2"):
        opt.step()


# ------------------------------------------------------------------ item 7
def test_task_views_nest_and_leave_the_module_as_it_was():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine.protect(opt)
    steps(model, 2, opt)
    engine.prune(0.5)
    engine.end_task()
    model.eval()

    def out(task):
        with torch.no_grad():
            return model.trunk(PROBE)
    plain = out(0)
    with engine.task_view(2):
        as2 = out(2)
    with engine.task_view(1):
        as1 = out(1)
    assert not torch.equal(as1, as2)
    keys = set(model.state_dict())
    with engine.task_view(2):
        with engine.task_view(1):
            assert torch.equal(out(1), as1)                  # the inner view decides
            assert set(model.state_dict()) == keys           # no parametrization keys
            inside = copy.deepcopy(model)
        assert torch.equal(out(2), as2)                      # the outer one again
    assert torch.equal(out(0), plain)                        # no view left behind
    with torch.no_grad():
        assert torch.equal(inside.trunk(PROBE), plain)       # a copy computes as stored
    model.load_state_dict(inside.state_dict())               # and its state loads


# ------------------------------------------------------------------ item 8
def _state(engine, **changes):
    s = engine.state_dict()
    s.update(changes)
    return s


def test_corrupt_engine_states_are_refused_and_nothing_is_half_loaded():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    good = engine.state_dict()
    name = next(iter(good["owner"]))
    bad_owner = lambda t: dict(good["owner"], **{name: t})                    # noqa: E731
    cases = [
        (_state(engine, num_tasks=1000), "num_tasks"),
        (_state(engine, num_tasks=-1), "num_tasks"),
        (_state(engine, training_task=5), "training_task"),
        (_state(engine, owner=bad_owner(good["owner"][name].to(torch.int16) + 2)), "task ids"),
        (_state(engine, owner=bad_owner(good["owner"][name].to(torch.int16) - 1)), "task ids"),
        (_state(engine, owner=bad_owner(good["owner"][name].to(torch.int32) + 300)), "task ids"),
        (_state(engine, owner=bad_owner(good["owner"][name].float())), "integer tensor"),
        ("not a dict", "dict"),
    ]
    fresh = PackNet(tiny().trunk)
    for state, message in cases:
        with pytest.raises(PackNetError, match=message):
            fresh.load_state_dict(state)
        assert fresh.num_tasks == 0 and all(int(o.sum()) == 0 for o in fresh.owner.values())


def test_engine_state_loaded_before_the_weights_is_caught_at_the_first_step():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    saved_model, saved_engine = copy.deepcopy(model.state_dict()), engine.state_dict()

    other = tiny(seed=5)
    other_engine = PackNet(other.trunk, heads=other.heads)
    other_engine.load_state_dict(saved_engine)             # wrong order: engine first ...
    other.load_state_dict(saved_model)                     # ... then the weights
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    other_engine.protect(opt)
    with pytest.raises(PackNetError, match="engine state after"):
        steps(other, 2, opt, n=1)


# ------------------------------------------------------------------ item 10
def test_old_heads_survive_an_optimizer_over_every_parameter_with_weight_decay():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    head1 = copy.deepcopy(model.heads[0].state_dict())
    engine.start_task()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5)
    engine.protect(opt)
    steps(model, 2, opt)
    assert all(torch.equal(head1[k], v) for k, v in model.heads[0].state_dict().items())
    assert torch.equal(task1_logits(model, engine), before)


def test_wrapping_a_whole_multi_head_model_warns():
    with pytest.warns(UserWarning, match="model.trunk"):
        PackNet(tiny())


# ------------------------------------------------------------------ item 11
def test_layers_it_does_not_pack_are_named_in_a_warning():
    trunk = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, 3), nn.Flatten(), nn.Linear(2 * 28 * 28, 4))
    with pytest.warns(UserWarning, match=r"\['1.weight'\]"):
        PackNet(trunk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PackNet(tiny().trunk)                 # an ordinary trunk: no warning


# ------------------------------------------------------------------ item 12
def test_a_ratio_below_one_never_releases_a_whole_layer():
    assert prune_count(0.9999999, 400) == 399
    assert prune_count(0.9, 1) == 0 and prune_count(0.5, 0) == 0
    model = tiny()
    engine = PackNet(model.trunk)
    engine.start_task()
    engine.prune(0.9999999)
    assert all(int((o == 1).sum()) == 1 for o in engine.owner.values())


@pytest.mark.parametrize("ratio", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), 1 / 2])
def test_numbers_of_any_library_are_accepted(ratio):
    ref, model = PackNet(tiny().trunk), tiny()
    engine = PackNet(model.trunk)
    for e, r in ((ref, 0.5), (engine, ratio)):
        e.start_task()
        e.prune(r)
        e.end_task()
    assert all(torch.equal(ref.owner[n], engine.owner[n]) for n in ref.owner)
    with engine.task_view(np.int64(1)), engine.task_view(torch.tensor(1).item()):
        pass


def test_info_and_export_know_a_task_still_in_training(tmp_path, capsys):
    from packnet_edu import checkpoint as ck
    from packnet_edu.cli import main
    cfg = Config(tasks=["digits", "mnist"], epochs=1, retrain_epochs=1, max_train=64, width=4)
    model = tiny(tasks=2)
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    path = tmp_path / "checkpoint.pt"
    ck.save(ck.make_checkpoint(model, engine, dict(cfg.to_dict(), model="small_vgg"), ["digits", "mnist"],
                               {"phase": "train", "task": 2, "matrix": [], "val": [], "probes": []}), path)
    assert main(["info", str(path)]) == 0
    assert "1 trained of 2; task 2 mnist was in training" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="still in training"):
        main(["export", str(path), "--task", "2", "--out", str(tmp_path / "t2.pt")])


# ------------------------------------------------------------------ item 9: Config
BAD_FIELDS = [
    ("channels_last", "false"), ("amp", "ture"), ("amp", 1), ("tasks", "fashion"), ("tasks", []),
    ("tasks", ["fashion", ""]), ("epochs", -1), ("epochs", 0), ("epochs", 2.5), ("epochs", True),
    ("lr", float("nan")), ("lr", 0), ("lr", "0.1"), ("retrain_lr", float("inf")), ("lr_step", 0),
    ("momentum", 1.0), ("momentum", -0.1), ("weight_decay", -1e-4), ("batch_size", 0), ("width", 0),
    ("max_train", 0), ("seed", -1), ("workers", -1), ("device", "gpu"), ("device", "cuda:x"),
    ("prune", "halves"), ("prune", 1.0), ("prune", [0.5, 0.5]), ("prune", [0.5, 0.0, 0.5, 0.0]),
    ("first_task_epochs", -1), ("model", ""), ("data_root", ""), ("weights", 5), ("decode", "nvjpeg"),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_every_config_field_is_checked_when_the_config_is_made(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        Config(**{field: value})


def test_valid_configs_are_normalised():
    cfg = Config(tasks=["mnist", "digits"], lr=1, prune=np.float64(0.5), seed=np.int64(3))
    assert cfg.tasks == ("mnist", "digits") and isinstance(cfg.lr, float) and cfg.prune == 0.5
    assert type(cfg.seed) is int and Config(**cfg.to_dict()) == cfg
    assert Config(tasks=["cubs", "flowers"], data_root="data/paper").tasks == ("cubs", "flowers")
    assert len(Config(tasks=["mnist"] * 255).tasks) == 255
    with pytest.raises(ConfigError, match="255"):
        Config(tasks=["mnist"] * 256)
    assert prune_schedule("equal", 4) == [0.75, 1 - 1 / 3, 0.5, 0.0]


CLI_BAD = [
    ["--tasks", "fashion", "cifar"], ["--lr", "nan"], ["--lr", "abc"], ["--batch-size", "0"],
    ["--batch-size", "x"], ["--width", "-2"], ["--max-train", "-5"], ["--max-train", "lots"],
    ["--momentum", "2"], ["--weight-decay", "-1"], ["--seed", "-1"], ["--seed", "1.5"], ["--epochs", "-1"],
    ["--lr-step", "0"], ["--amp", "ture"], ["--channels-last", "maybe"], ["--prune", "0,0.5,0.5,0"],
    ["--prune", "1.2"], ["--prune", "x"], ["--device", "gpu"], ["--config", "no-such-preset"],
    ["--tasks"] + ["mnist"] * 256, ["--model", "resnet9000"],
]


@pytest.mark.parametrize("flags", CLI_BAD, ids=[" ".join(f[:3]) for f in CLI_BAD])
def test_bad_flags_fail_with_one_line_before_any_training(flags, tmp_path, capsys):
    from packnet_edu.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(tmp_path / "run"), *flags])
    message = str(exc.value.code) if exc.value.code not in (None, 2) else capsys.readouterr().err.strip()
    last = message.splitlines()[-1]
    assert "error" in last and "Traceback" not in message
    assert not (tmp_path / "run").exists()          # nothing started


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--steps", "-1"], ["--weight-decay", "nan"],
                                   ["--images", "0"], ["--trials", "x"]])
def test_bad_bench_flags_fail_with_one_line(flags, capsys):
    from packnet_edu.cli import main
    with pytest.raises(SystemExit):
        main(["bench", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: argument" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_weights_file_that_is_not_one_is_refused_before_any_data(tmp_path):
    from packnet_edu.cli import main
    bad = tmp_path / "vgg16.pt"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SystemExit, match="not a file torch.save wrote"):
        main(["run", "--model", "vgg16", "--weights", str(bad), "--out", str(tmp_path / "run")])


def test_json_config_values_are_checked(tmp_path):
    from packnet_edu.cli import main
    for content, field in [({"channels_last": "false"}, "channels_last"), ({"tasks": "mnist"}, "tasks"),
                           ([1, 2], "object"), ({"epochs": -1}, "epochs")]:
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(content))
        with pytest.raises(SystemExit, match=field):
            main(["run", "--config", str(path), "--out", str(tmp_path / "run")])


def test_device_that_is_not_there_is_refused_before_training(tmp_path):
    from packnet_edu.cli import main
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="CUDA"):
        main(["run", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ structure
def import_graph():
    pkg = ROOT / "packnet_edu"
    modules = {f.stem for f in pkg.glob("*.py")}
    graph = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):      # lazy imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[f.stem] = deps & modules - {"__init__"}
    return graph


def test_the_command_line_is_the_top_of_an_acyclic_import_graph():
    graph = import_graph()
    assert [m for m, deps in graph.items() if "cli" in deps] == ["__main__"]
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])
