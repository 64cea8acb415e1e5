"""The engine's contract: exact freezing, exact pruning, a read-only task view."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from packnet_edu import PackNet, PackNetError, prune_count, small_vgg


def tiny_model(seed=0, tasks=3):
    torch.manual_seed(seed)
    return small_vgg([3] * tasks, width=4)


def train_steps(model, engine, task, optimizer, steps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x, task), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def params_for(model, task):
    return list(model.trunk.parameters()) + list(model.heads[task - 1].parameters())


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS) + ["carried_over"])
def test_task1_outputs_bit_identical_after_tasks_2_and_3(name):
    model = tiny_model()
    engine = PackNet(model.trunk)
    probe = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    make = OPTIMIZERS.get(name, OPTIMIZERS["adam"])
    carried = make(list(model.parameters())) if name == "carried_over" else None

    outputs = {}
    for t in (1, 2, 3):
        engine.start_task()
        opt = carried or make(params_for(model, t))
        handle = engine.protect(opt)
        train_steps(model, engine, t, opt, seed=t)
        engine.prune(0.5)
        train_steps(model, engine, t, opt, seed=10 + t)
        engine.end_task()
        handle.remove()
        model.eval()
        with torch.no_grad(), engine.task_view(t):
            outputs[t] = model(probe, t).clone()
        frozen_t1 = {n: w.detach().clone() for n, w in engine.weights.items()} if t == 1 else frozen_t1

    model.eval()
    for t in (1, 2):
        with torch.no_grad(), engine.task_view(t):
            assert torch.equal(model(probe, t), outputs[t]), f"task {t} changed ({name})"
    for n, w in engine.weights.items():
        mine = engine.owner[n] == 1
        assert torch.equal(w[mine], frozen_t1[n][mine])


def test_without_protection_the_weights_do_move():
    """The test above is not vacuous: without protect(), SGD with weight decay moves task 1."""
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task(); engine.prune(0.5); engine.end_task()
    before = {n: w.detach().clone() for n, w in engine.weights.items()}
    engine.start_task()
    opt = OPTIMIZERS["sgd_momentum_wd"](params_for(model, 2))
    train_steps(model, engine, 2, opt)
    moved = any(not torch.equal(w[engine.owner[n] == 1], before[n][engine.owner[n] == 1])
                for n, w in engine.weights.items())
    assert moved


def test_prune_counts_and_first_task_mask_match_torch_prune():
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task()
    with torch.no_grad():
        for w in engine.weights.values():
            w.copy_(torch.randn_like(w))        # distinct magnitudes: no ties
    originals = {n: w.detach().clone() for n, w in engine.weights.items()}
    released = engine.prune(0.6)
    for name, layer in engine.layers.items():
        key = f"{name}.weight"
        n = originals[key].numel()
        assert released[key] == round(0.6 * n)
        assert int((engine.owner[key] == 0).sum()) == round(0.6 * n)
        oracle = nn.Linear(1, 1) if isinstance(layer, nn.Linear) else nn.Conv2d(1, 1, 1)
        oracle.weight = nn.Parameter(originals[key].clone())
        torch_prune.l1_unstructured(oracle, "weight", amount=0.6)
        assert torch.equal(oracle.weight_mask.bool(), engine.owner[key] == 1)
        assert torch.all(engine.weights[key][engine.owner[key] == 0] == 0)


def test_prune_on_channels_last_weights_matches_contiguous():
    """The GPU path converts the model to channels_last: pruning must pick the
    same weights by logical position, whatever the memory layout."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    assert not cl[0].weight.is_contiguous()
    engines = [PackNet(dense), PackNet(cl)]
    for e in engines:
        e.start_task()
        e.prune(0.6)
        e.end_task()
        e.start_task()
        e.prune(0.5)
    for name in engines[0].owner:
        assert torch.equal(engines[0].owner[name], engines[1].owner[name])
        assert torch.equal(engines[0].weights[name], engines[1].weights[name])


def test_prune_counts_for_a_later_task_are_a_fraction_of_its_own_weights():
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task(); engine.prune(0.5); engine.end_task()
    engine.start_task()
    owned = {n: int((o == 2).sum()) for n, o in engine.owner.items()}
    released = engine.prune(0.75)
    for n, o in engine.owner.items():
        assert released[n] == round(0.75 * owned[n])
        assert int((o == 2).sum()) == owned[n] - released[n]
        assert int((o == 1).sum()) == owned[n]          # task 1 kept half, task 2 took the rest


def test_rounding_is_half_to_even_like_torch_prune():
    assert prune_count(0.5, 5) == 2 and prune_count(0.5, 7) == 4 and prune_count(0.25, 10) == 2


def test_ties_are_broken_by_position():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 2.0]]))
    engine = PackNet(layer)
    engine.start_task()
    engine.prune(0.5)
    assert engine.owner["weight"].tolist() == [[0, 0, 1, 1]]


def test_task_view_changes_no_stored_tensor():
    model = tiny_model()
    engine = PackNet(model.trunk)
    for _ in range(3):
        engine.start_task()
        with torch.no_grad():
            for n, w in engine.weights.items():
                w[engine.owner[n] == engine.training_task] = torch.randn(())
        engine.prune(0.5)
        engine.end_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    for k in (1, 2, 3):
        with engine.task_view(k):
            model(x, k)
            for n, p in engine.weights.items():
                assert torch.equal(p, before["trunk." + n])
        assert {n: p for n, p in model.named_parameters()} == params   # same Parameter objects
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_task_view_hides_later_tasks():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    engine = PackNet(layer)
    engine.start_task(); engine.prune(0.5); engine.end_task()   # task 1 keeps 3, 4
    engine.start_task()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[10.0, 20.0, 3.0, 4.0]]))
    engine.end_task()
    x = torch.ones(1, 4)
    with engine.task_view(1):
        assert layer(x).item() == 7.0
    with engine.task_view(2):
        assert layer(x).item() == 37.0


def test_batchnorm_and_biases_frozen_after_first_task_even_in_train_mode():
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task()
    opt = torch.optim.SGD(params_for(model, 1), lr=0.1, momentum=0.9)
    engine.protect(opt)
    bn = model.trunk.bn1
    stats0 = bn.running_mean.clone()
    train_steps(model, engine, 1, opt)
    assert not torch.equal(bn.running_mean, stats0)        # task 1 trains BatchNorm
    engine.prune(0.5); engine.end_task()
    shared = {n: p.detach().clone() for n, p in engine.shared.items()}
    buffers = {n: b.clone() for n, b in model.trunk.named_buffers()}
    engine.start_task()
    opt = torch.optim.SGD(params_for(model, 2), lr=0.1, momentum=0.9, weight_decay=1e-3)
    engine.protect(opt)
    train_steps(model, engine, 2, opt)
    assert model.trunk.training and bn.training is False    # forced by the engine's hook
    for n, p in engine.shared.items():
        assert torch.equal(p, shared[n]), n
    for n, b in model.trunk.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_pruned_weights_stay_zero_during_retraining():
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task()
    opt = torch.optim.Adam(params_for(model, 1), lr=1e-2)
    engine.protect(opt)
    train_steps(model, engine, 1, opt)
    engine.prune(0.75)
    train_steps(model, engine, 1, opt)
    for n, w in engine.weights.items():
        assert torch.all(w[engine.owner[n] == 0] == 0)


def test_state_dict_round_trip():
    model = tiny_model()
    engine = PackNet(model.trunk)
    engine.start_task(); engine.prune(0.5); engine.end_task(); engine.start_task()
    clone = tiny_model(seed=5)
    clone.load_state_dict(model.state_dict())
    other = PackNet(clone.trunk)
    other.load_state_dict(engine.state_dict())
    assert other.num_tasks == 2 and other.training_task == 2
    assert all(torch.equal(other.owner[n], o) for n, o in engine.owner.items())


@pytest.mark.parametrize("call, message", [
    (lambda e: e.prune(0.5), "start_task"),
    (lambda e: e.end_task(), "start_task"),
    (lambda e: e.task_view(1).__enter__(), "does not exist"),
])
def test_illegal_calls_before_any_task(call, message):
    engine = PackNet(tiny_model().trunk)
    with pytest.raises(PackNetError, match=message):
        call(engine)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), "0.5", None])
def test_bad_ratio(ratio):
    engine = PackNet(tiny_model().trunk)
    engine.start_task()
    with pytest.raises(PackNetError, match=r"\[0, 1\)"):
        engine.prune(ratio)


def test_other_illegal_sequences():
    engine = PackNet(tiny_model().trunk)
    engine.start_task()
    with pytest.raises(PackNetError, match="end_task"):
        engine.start_task()
    for bad in (0, 2, -1, 1.0):
        with pytest.raises(PackNetError, match="does not exist"):
            engine.task_view(bad).__enter__()
    engine.end_task()                     # not pruned: nothing left for a next task
    with pytest.raises(PackNetError, match="no free weight"):
        engine.start_task()
    with pytest.raises(PackNetError, match="no Conv or Linear"):
        PackNet(nn.ReLU())


def test_at_most_255_tasks():
    layer = nn.Linear(1, 257, bias=False)
    engine = PackNet(layer)
    for t in range(1, 256):
        engine.start_task()
        n = int((engine.owner["weight"] == t).sum())
        engine.prune((n - 1) / n)           # keep exactly one weight per task
        engine.end_task()
    assert engine.num_tasks == 255
    assert int((engine.owner["weight"] == 0).sum()) == 2
    with pytest.raises(PackNetError, match="255"):
        engine.start_task()


# ---------------------------------------------------------------- properties
layer_st = st.one_of(
    st.tuples(st.just("linear"), st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.just("conv"), st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 3, 5])),
)


def build(spec):
    return nn.Linear(spec[1], spec[2]) if spec[0] == "linear" else nn.Conv2d(spec[1], spec[2], spec[3])


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(layer_st, min_size=1, max_size=3),
       ratios=st.lists(st.floats(0.0, 0.95), min_size=1, max_size=5),
       opt_name=st.sampled_from(sorted(OPTIMIZERS)), seed=st.integers(0, 2 ** 16))
def test_invariants_over_random_layers_ratios_and_task_counts(layers, ratios, opt_name, seed):
    torch.manual_seed(seed)
    module = nn.ModuleList([build(s) for s in layers])
    engine = PackNet(module)
    snapshots = []
    for t, ratio in enumerate(ratios, start=1):
        if not any(bool((o == 0).any()) for o in engine.owner.values()) and t > 1:
            with pytest.raises(PackNetError):
                engine.start_task()
            break
        engine.start_task()
        owned = {n: int((o == t).sum()) for n, o in engine.owner.items()}
        opt = OPTIMIZERS[opt_name](list(module.parameters()))
        engine.protect(opt)
        for _ in range(2):   # a "training" step that pushes every weight
            opt.zero_grad()
            sum((p * torch.randn_like(p)).sum() for p in module.parameters()).backward()
            opt.step()
        released = engine.prune(ratio)
        opt.zero_grad()
        sum((p * torch.randn_like(p)).sum() for p in module.parameters()).backward()
        opt.step()
        engine.end_task()
        for n, o in engine.owner.items():
            assert released[n] == prune_count(ratio, owned[n])
            assert int((o == t).sum()) == owned[n] - released[n]
            assert int(o.max()) <= t
            assert torch.all(engine.weights[n][o == 0] == 0)      # free weights are zero
        snapshots.append({n: w.detach().clone() for n, w in engine.weights.items()})
    final = {n: w.detach() for n, w in engine.weights.items()}
    for k, snap in enumerate(snapshots, start=1):   # every finished task's weights untouched
        for n, o in engine.owner.items():
            assert torch.equal(final[n][o == k], snap[n][o == k])
        masks = engine.task_masks(k)
        for n, o in engine.owner.items():
            assert torch.equal(masks[n], (o >= 1) & (o <= k))
