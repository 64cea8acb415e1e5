"""Exact at every edge (issue 15): the cases where an advanced user once broke
PackNet's promise silently, or got a false alarm.

The rule under test: after any sequence of public calls and any optimizer,
hook or schedule, older tasks' weights, biases, norm buffers, heads and
outputs are bit-identical, or a PackNetError is raised no later than the next
phase call or view. Every comparison is by bit pattern (`bits`), so NaN and
-0.0 count as values.
"""
import threading

import numpy as np
import pytest
import torch
from test_robustness import steps  # a few SGD steps on random batches

from packnet_edu import PackNet, PackNetError, small_vgg
from packnet_edu.bits import fingerprint, int_view, same_bits

PROBE = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def tiny(seed=0, tasks=3, batch_norm=True):
    torch.manual_seed(seed)
    return small_vgg([3] * tasks, width=4, batch_norm=batch_norm)


def params(model, task):
    return list(model.trunk.parameters()) + list(model.heads[task - 1].parameters())


def task1_done(model, engine, before_end=None):
    """Task 1 trained, pruned, retrained and ended; `before_end(engine)` runs
    just before end_task. Returns task 1's logits on PROBE."""
    engine.start_task()
    opt = torch.optim.SGD(params(model, 1), lr=0.05)
    engine.protect(opt)
    steps(model, 1, opt)
    engine.prune(0.5)
    steps(model, 1, opt, seed=1)
    if before_end:
        before_end(engine)
    engine.end_task()
    return logits(model, engine, 1)


def logits(model, engine, task):
    model.eval()
    with torch.no_grad(), engine.task_view(task):
        return model(PROBE, task)


def state(model):
    """Every tensor of the model (trunk, heads, norm buffers), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_task1_bits_kept(model, engine, saved, before):
    """Task 1's weights (its entries), biases, norm buffers, head and outputs are bit-identical."""
    now = model.state_dict()
    for k, v in saved.items():
        if k.startswith("heads.") and not k.startswith("heads.0."):
            continue
        name = k.removeprefix("trunk.")
        if name in engine.owner:
            mine = (engine.owner[name] == 1).to(v.device)
            assert same_bits(now[k][mine], v[mine]), k
        else:
            assert same_bits(now[k], v), k
    assert same_bits(logits(model, engine, 1), before)


def two_tasks_done(end=True):
    """A model without BatchNorm after task 1 and (end=True) a trained task 2;
    returns it, its engine and task 1's logits."""
    model = tiny(batch_norm=False)
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    engine.start_task()
    if end:
        opt = torch.optim.SGD(params(model, 2), lr=0.05)
        engine.protect(opt)
        steps(model, 2, opt)
        engine.end_task()
    return model, engine, before


def restores_and_keeps_task1(model, engine, handle, opt, saved, before, seed=0):
    """Steps of task 2 that masking cannot keep exact: restored, and task 1 kept."""
    steps(model, 2, opt, seed=seed)
    assert handle.mode == "restore"
    engine.end_task()
    assert_task1_bits_kept(model, engine, saved, before)


def test_bits_see_what_torch_equal_cannot():
    a = torch.tensor([float("nan"), -0.0, 1.0])
    assert not torch.equal(a, a.clone()) and same_bits(a, a.clone())           # NaN == NaN by bits
    assert torch.equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))


def test_fingerprint_catches_every_single_bit_and_ignores_skipped_entries():
    w = torch.randn(7, 5, 3, 3)
    base = fingerprint(w)
    for i in range(0, w.numel(), 17):
        for bit in (0, 13, 31):
            changed = w.clone()
            int_view(changed).view(-1)[i] ^= (1 << bit) if bit < 31 else -(1 << 31)
            assert fingerprint(changed) != base, (i, bit)
    swapped = w.clone().view(-1)
    swapped[[3, 4]] = swapped[[4, 3]]
    assert fingerprint(swapped.view_as(w)) != base                 # order matters, not just the multiset
    skip = torch.zeros_like(w, dtype=torch.bool)
    skip[0] = True
    moved = w.clone()
    moved[0] += 1
    assert fingerprint(moved, skip=skip) == fingerprint(w, skip=skip)
    assert fingerprint(w.to(memory_format=torch.channels_last)) == base   # logical order, any layout


# ------------------------------------------------------------------ item 1
def test_a_step_pre_hook_added_after_protect_cannot_move_old_weights():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    saved = state(model)
    engine.start_task()
    opt = torch.optim.SGD(params(model, 2), lr=0.05)      # plain SGD: masking would do
    handle = engine.protect(opt)

    def gradient_noise(optimizer, *_):                    # runs after the engine's masking
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(0.01)
    opt.register_step_pre_hook(gradient_noise)
    steps(model, 2, opt)
    assert handle.mode == "restore"
    engine.prune(0.5)
    engine.end_task()
    assert_task1_bits_kept(model, engine, saved, before)


# ------------------------------------------------------------------ item 2
def test_optimizer_state_loaded_mid_phase_cannot_move_old_weights():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    saved = state(model)
    engine.start_task()
    opt = torch.optim.SGD(params(model, 2), lr=0.05, momentum=0.9)
    # momentum filled by a step that nobody protected (on a copy of the model)
    import copy
    other = copy.deepcopy(model)
    other_opt = torch.optim.SGD(params(other, 2), lr=0.05, momentum=0.9)
    steps(other, 2, other_opt, n=1, seed=5)
    handle = engine.protect(opt)
    steps(model, 2, opt, n=1)
    assert handle.mode == "mask"
    opt.load_state_dict(other_opt.state_dict())           # momentum buffers with frozen entries != 0
    restores_and_keeps_task1(model, engine, handle, opt, saved, before, seed=3)


# ------------------------------------------------------------------ item 3
def test_maximize_keeps_a_frozen_negative_zero():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)

    def plant_negative_zero(e):
        w = e.weights["conv2.weight"]
        with torch.no_grad():
            w[tuple((e.owner["conv2.weight"] == 1).nonzero()[0])] = -0.0
    before = task1_done(model, engine, before_end=plant_negative_zero)
    saved = state(model)
    assert (int_view(saved["trunk.conv2.weight"]) == -(1 << 31)).sum() >= 1
    engine.start_task()
    opt = torch.optim.SGD(params(model, 2), lr=0.05, maximize=True)
    restores_and_keeps_task1(model, engine, engine.protect(opt), opt, saved, before)


# ------------------------------------------------------------------ item 4
def test_a_task_that_diverged_to_nan_does_not_jam_the_engine():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)

    def diverge(e):
        with torch.no_grad():
            for name, w in e.weights.items():
                w[(e.owner[name] == 1).to(w.device)] = float("nan")
    task1_done(model, engine, before_end=diverge)
    saved = state(model)
    before = logits(model, engine, 1)
    engine.start_task()
    opt = torch.optim.SGD(params(model, 2), lr=0.05, momentum=0.9)
    engine.protect(opt)
    steps(model, 2, opt)
    engine.prune(0.5)                                      # no false "values changed"
    steps(model, 2, opt, seed=2)
    engine.end_task()
    logits(model, engine, 2)
    assert_task1_bits_kept(model, engine, saved, before)


# ------------------------------------------------------------------ item 5
@pytest.mark.parametrize("how", ["after_a_view", "after_remove"])
@pytest.mark.parametrize("phase", ["prune", "end_task"])
def test_unprotected_steps_between_phases_are_caught_at_the_next_phase_call(how, phase):
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    opt = torch.optim.SGD(params(model, 2), lr=0.05, weight_decay=1e-2)
    handle = engine.protect(opt)
    steps(model, 2, opt)
    if how == "after_a_view":
        logits(model, engine, 2)                            # evaluation, as fit does
        rogue = torch.optim.SGD(params(model, 2), lr=0.05, weight_decay=1e-2)
    else:
        handle.remove()
        rogue = opt
    steps(model, 2, rogue, n=1)
    with pytest.raises(PackNetError, match="changed since the engine recorded them"):
        engine.prune(0.5) if phase == "prune" else engine.end_task()


def test_unprotected_steps_are_caught_at_the_next_view():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    steps(model, 2, torch.optim.SGD(params(model, 2), lr=0.05, weight_decay=1e-2), n=1)
    with pytest.raises(PackNetError, match="changed since the engine recorded them"):
        logits(model, engine, 1)


# ------------------------------------------------------------------ item 6
def test_a_view_under_torch_compile_is_exact_or_refused():
    model, engine, before = two_tasks_done()
    compiled = torch.compile(model.trunk, backend="eager")
    model.eval()
    with torch.no_grad():
        compiled(PROBE)                                    # compiled outside any view first
        with engine.task_view(1):
            try:
                out = model.heads[0](compiled(PROBE))
            except PackNetError as e:
                assert "torch.compile" in str(e) and "\n" not in str(e)
            else:
                assert same_bits(out, before)


# ------------------------------------------------------------------ item 7
def test_views_from_two_threads_never_see_each_others_task():
    model, engine, _ = two_tasks_done()
    model.eval()
    expected = {t: logits(model, engine, t) for t in (1, 2)}
    with torch.no_grad():
        plain = model.heads[0](model.trunk(PROBE))          # no view: the stored weights
    wrong, errors = [], []

    def worker(task, n=150):
        try:
            for i in range(n):
                with torch.no_grad():
                    if task:
                        with engine.task_view(task, cache=bool(i % 2)):
                            out = model(PROBE, task)
                        ok = same_bits(out, expected[task])
                    else:
                        ok = same_bits(model.heads[0](model.trunk(PROBE)), plain)
                if not ok:
                    wrong.append(task)
        except Exception as e:                      # noqa: BLE001 -- reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=(t,)) for t in (1, 2, 0)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not wrong, (errors[:3], len(wrong))


# ------------------------------------------------------------------ item 8
def test_a_second_engine_on_the_same_trunk_starts_clean():
    model = tiny()
    first = PackNet(model.trunk, heads=model.heads)
    task1_done(model, first)
    second = PackNet(model.trunk, heads=model.heads)      # the notebook cell, run again
    second.start_task()
    bn = model.trunk.bn1
    stats = bn.running_mean.clone()
    model.train()
    model(PROBE * 3 + 1, 1)
    assert not torch.equal(bn.running_mean, stats), "task 1 of the new engine trains BatchNorm"
    with pytest.raises(PackNetError, match="newer PackNet"):
        first.start_task()


# ------------------------------------------------------------------ item 10
def test_task_ids_of_any_integer_type_are_accepted():
    model = tiny()
    engine = PackNet(model.trunk, heads=model.heads)
    before = task1_done(model, engine)
    for task in (1, np.int64(1), torch.tensor(1), torch.tensor([1], dtype=torch.int32)):
        with torch.no_grad(), engine.task_view(task):
            assert same_bits(model(PROBE, 1), before)
    for bad in (True, 1.0, torch.tensor(1.0), torch.tensor(True), torch.tensor([1, 1]), 2, 0):
        with pytest.raises(PackNetError, match="does not exist"):
            engine.task_view(bad).__enter__()


# ------------------------------------------------------------------ views: cache and nesting
def test_cached_views_follow_weight_changes_and_cost_one_copy():
    model, engine, _ = two_tasks_done(end=False)
    opt = engine.protect(torch.optim.SGD(params(model, 2), lr=0.05)).optimizer
    model.eval()
    with torch.no_grad(), engine.task_view(2):
        first = model(PROBE, 2)
        again = model(PROBE, 2)
    assert same_bits(first, again)
    steps(model, 2, opt)                                    # the weights change: the cache must not be stale
    model.eval()
    with torch.no_grad(), engine.task_view(2):
        cached = model(PROBE, 2)
    with torch.no_grad(), engine.task_view(2, cache=False):
        fresh = model(PROBE, 2)
    assert same_bits(cached, fresh) and not same_bits(cached, first)
    engine.clear_view_cache()
    assert not engine._view_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_cpu_mask_kernel_matches_torch_where_bit_for_bit(dtype, channels_last):
    from packnet_edu.bits import bit_mask
    g = torch.randn(6, 4, 3, 3).to(dtype)
    g.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")]).to(dtype)
    if channels_last:
        g = g.to(memory_format=torch.channels_last)
    keep = torch.rand(6, 4, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    keep.view(-1)[:2] = False
    keep = torch.empty_like(g, dtype=torch.bool).copy_(keep)
    expected = torch.where(keep, g, g.new_zeros(()))
    got = g.clone()
    int_view(got).bitwise_and_(bit_mask(keep, got))
    assert same_bits(got, expected) and got.stride() == g.stride()


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_cpu_restore_kernel_writes_back_exactly_the_frozen_bits(channels_last):
    model = tiny(batch_norm=False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = PackNet(model.trunk, heads=model.heads)
    task1_done(model, engine)
    engine.start_task()
    engine.keep_copies()
    w = engine.weights["conv2.weight"]
    frozen = ~engine._trainable["conv2.weight"]
    stored = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
        w[tuple(frozen.nonzero()[0])] = float("nan")
    moved = w.detach().clone()
    engine.restore_frozen()
    assert same_bits(w[frozen], stored[frozen]) and same_bits(w[~frozen], moved[~frozen])
    assert w.stride() == stored.stride()
