"""PackNet under DistributedDataParallel: two CPU processes (gloo) against one.

`batch_size` is per rank and the learning rates scale with the ranks: two
ranks of 16 images at lr x2 take the steps one process takes with batches of
32 at lr x2 (every global batch of the single-process shuffle split between
the ranks), so they must reach the same owner maps (ownership is decided by
weight magnitudes, which agree to rounding), with identical maps and weights
on both ranks, and leave old tasks' weights bit-identical.
"""
import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from packnet_edu import distributed as D
from packnet_edu.data import Task
from packnet_edu.replicas import tiny_vgg16
from packnet_edu.train import Config

pytestmark = pytest.mark.timeout(180)


def tiny_tasks(seed=0, n_train=64, n_eval=32, classes=(4, 3, 5)):
    """Random 3x32x32 images whose class shifts the mean of one colour channel."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t, k in enumerate(classes):
        def split(n):
            y = torch.randint(0, k, (n,), generator=g)
            x = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64) * 0.5
            x[torch.arange(n), t % 3] += y.double().view(n, 1, 1)
            return torch.utils.data.TensorDataset(x, y)
        tasks.append(Task(f"t{t + 1}", [str(c) for c in range(k)], split(n_train), split(n_eval), split(n_eval)))
    return tasks


CFG = Config(tasks=("t1", "t2", "t3"), model="tiny_vgg16", epochs=2, retrain_epochs=1, lr=0.05,
             retrain_lr=0.01, batch_size=16, prune="paper", seed=0, device="cpu")


def build(num_classes):
    # float64: two ranks sum each batch's gradient in two halves, one process in
    # one go; in float32 that rounding difference, amplified by training, can
    # flip a weight at the pruning threshold. In float64 it stays ~1e-12, so the
    # masks must agree exactly.
    return tiny_vgg16(num_classes, div=16).double()


def as_rank(rank, world, port):
    """The environment torchrun gives rank `rank` of `world` (a local gloo group)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank), TQDM_DISABLE="1")


def _worker(rank, world, port, out):
    as_rank(rank, world, port)
    torch.set_num_threads(1)
    snap = {}

    def on_phase_end(progress, model, engine, names):
        if progress["phase"] == "end" and progress["task"] == 1:
            snap.update({k: w.detach().clone() for k, w in engine.weights.items()})
            snap["owner1"] = {k: o.clone() for k, o in engine.owner.items()}
    res = D.run_packnet_distributed(CFG, tiny_tasks(), build_model=build, on_phase_end=on_phase_end)
    eng = res["engine"]
    torch.save({"owner": eng.owner, "weights": {k: w.detach() for k, w in eng.weights.items()},
                "snap": snap, "identical": res["outputs_identical"], "matrix": res["matrix"],
                "world": D.world_size(), "ddp": D.active()}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == 2 and r0["ddp"]
    # identical on every rank, bit for bit
    for k in r0["owner"]:
        assert torch.equal(r0["owner"][k], r1["owner"][k])
        assert torch.equal(r0["weights"][k], r1["weights"][k])
    assert r0["matrix"] == r1["matrix"]
    # old tasks untouched: task 1's weights after task 3 are those it froze with
    for r in (r0, r1):
        assert all(r["identical"])
        for k, o1 in r["snap"]["owner1"].items():
            mine = o1 == 1
            assert mine.any()
            assert torch.equal(r["weights"][k][mine], r["snap"][k][mine])
            assert torch.equal(r["owner"][k][mine], o1[mine])
    # the same masks as a single process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # as each rank; spare the shared CPU
    try:
        one = dataclasses.replace(CFG, batch_size=2 * CFG.batch_size, lr=2 * CFG.lr, retrain_lr=2 * CFG.retrain_lr)
        single = D.run_packnet_distributed(one, tiny_tasks(), build_model=build, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert not D.active()
    for k, o in single["engine"].owner.items():
        assert torch.equal(o, r0["owner"][k]), k
        torch.testing.assert_close(single["engine"].weights[k].detach(), r0["weights"][k], atol=1e-9, rtol=1e-7)
    counts = {k: {int(t): int((o == t).sum()) for t in o.unique()} for k, o in r0["owner"].items()}
    assert all(set(c) == {1, 2, 3} for c in counts.values())   # three tasks own weights in every layer


def test_sharded_batches_partition_the_single_process_batches():
    ds = torch.utils.data.TensorDataset(torch.arange(37))
    order = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(3))
    batches = list(torch.utils.data.BatchSampler(order, 8, drop_last=False))
    for world in (2, 3):
        shards = [D.ShardedBatchSampler(torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(3)), 8, False), r, world)
            for r in range(world)]
        got = [list(s) for s in shards]
        assert all(len(g) == len(s) for g, s in zip(got, shards))
        for i, b in enumerate(batches):
            if len(b) < world:
                continue
            assert sorted(sum((g[i] for g in got), [])) == sorted(b)


def test_learning_rates_scale_with_the_ranks():
    assert D.scaled_for_world(CFG, 1) is CFG
    four = D.scaled_for_world(CFG, 4)
    assert (four.lr, four.retrain_lr, four.batch_size) == (4 * CFG.lr, 4 * CFG.retrain_lr, CFG.batch_size)


def test_checksum_and_single_process_helpers():
    a = {"x": torch.zeros(3, dtype=torch.uint8)}
    b = {"x": torch.tensor([0, 1, 0], dtype=torch.uint8)}
    assert D.checksum(a) != D.checksum(b) and D.checksum(a) == D.checksum({"x": torch.zeros(3, dtype=torch.uint8)})
    assert D.all_checksums(a) == [D.checksum(a)]
    assert D.world_size() == 1 and D.rank() == 0 and not D.active()
    assert D.init_from_env("cpu") == "cpu"


# ------------------------------------------------------------------ BatchNorm across ranks (issue 15, item 9)
def bn_tasks(seed=1, n=48):
    """Two tasks of 1x28x28 images; each rank trains on its own shard of them."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t, k in enumerate((3, 3)):
        def split(m):
            y = torch.randint(0, k, (m,), generator=g)
            x = torch.randn(m, 1, 28, 28, generator=g, dtype=torch.float64) + y.double().view(m, 1, 1, 1) * (t + 1)
            return torch.utils.data.TensorDataset(x, y)
        tasks.append(Task(f"b{t + 1}", [str(c) for c in range(k)], split(n), split(16), split(16)))
    return tasks


BN_CFG = dataclasses.replace(CFG, tasks=("b1", "b2"), model="small_vgg", epochs=1, retrain_epochs=1, batch_size=8)


def build_bn(num_classes):
    from packnet_edu import small_vgg
    return small_vgg(num_classes, width=4, batch_norm=True).double()


def _bn_worker(rank, world, port, out):
    as_rank(rank, world, port)
    torch.set_num_threads(1)
    snap = {}

    def on_phase_end(progress, model, engine, names):
        if progress["phase"] == "end" and progress["task"] == 1:
            snap.update({k: b.clone() for k, b in model.trunk.named_buffers()})
    res = D.run_packnet_distributed(BN_CFG, bn_tasks(), build_model=build_bn, on_phase_end=on_phase_end)
    torch.save({"buffers": {k: b.clone() for k, b in res["model"].trunk.named_buffers()}, "snap": snap,
                "identical": res["outputs_identical"]}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_batchnorm_statistics_agree_on_every_rank_and_stay_frozen(tmp_path):
    mp.spawn(_bn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["snap"] and set(r0["snap"]) == set(r1["snap"])
    for k in r0["snap"]:
        assert torch.equal(r0["snap"][k], r1["snap"][k]), k              # averaged at task 1's end
        for r in (r0, r1):
            assert torch.equal(r["buffers"][k], r["snap"][k]), k         # then frozen on every rank
    assert all(r0["identical"]) and all(r1["identical"])                 # task 1 outputs on both ranks


def test_the_cross_rank_check_covers_every_buffer_and_parameter():
    from packnet_edu import PackNet, small_vgg
    model = small_vgg([3], width=4)
    engine = PackNet(model.trunk, heads=model.heads)
    state = D.replicated_state(engine)
    assert {f"buffer/{k}" for k, _ in model.trunk.named_buffers()} <= set(state)
    assert {f"param/{k}" for k, _ in model.trunk.named_parameters()} <= set(state)
    assert "param/heads.0.weight" in state and all(f"owner/{k}" in state for k in engine.owner)
    before = D.checksum(state)
    model.trunk.bn1.running_mean[0] += 1
    assert D.checksum(D.replicated_state(engine)) != before


# ------------------------------------------------------------------ errors under torchrun (issue 16, item 8)
def _refusing_worker(rank, world, port, out, codes):
    as_rank(rank, world, port)
    code = D.main(["--tasks", "digits", "--epochs", "1", "--out", out])
    with open(os.path.join(codes, f"rank{rank}"), "w") as f:
        f.write(str(code))


def test_a_folder_refused_by_rank_0_stops_every_rank_with_one_line(tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")            # a finished run: refused without --overwrite
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_refusing_worker, args=(r, 2, port, str(out), str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not any(alive), "a rank still waits"
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["2", "2"]
    err = capfd.readouterr().err
    assert "error:" in err and "already holds" in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == ["results.json"]
