"""Checkpoints: packed owner maps, atomic writes, resume, bad files, export."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from packnet_edu import checkpoint as ck
from packnet_edu import small_vgg
from packnet_edu.engine import PackNet

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "1", "--retrain-epochs", "1", "--max-train", "600", "--width", "4",
        "--tasks", "mnist", "animals", "digits"]


@settings(max_examples=60, deadline=None)
@given(num_tasks=st.integers(0, 255), shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       seed=st.integers(0, 1000))
def test_pack_unpack_round_trip(num_tasks, shape, seed):
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, num_tasks + 1, shape, generator=g).to(torch.uint8)
    bits = ck.bits_for(num_tasks)
    packed = ck.pack_owner(owner, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == bits * -(-owner.numel() // 8)        # ceil(n / 8) bytes per bit plane
    assert torch.equal(ck.unpack_owner(packed, shape, bits), owner)


def test_bits_per_weight():
    assert [ck.bits_for(t) for t in (0, 1, 2, 3, 4, 7, 8, 15, 255)] == [1, 1, 2, 2, 3, 3, 4, 4, 8]
    with pytest.raises(ValueError, match="do not fit"):
        ck.pack_owner(torch.tensor([0, 4], dtype=torch.uint8), 2)


def trained_pair(tasks=3):
    torch.manual_seed(0)
    model = small_vgg([3] * tasks, width=4)
    engine = PackNet(model.trunk)
    for _ in range(tasks):
        engine.start_task()
        with torch.no_grad():
            for n, w in engine.weights.items():
                w.add_(torch.randn_like(w) * (engine.owner[n] == engine.training_task))
        engine.prune(0.5)
        engine.end_task()
    return model, engine


def test_save_load_restore_and_export(tmp_path):
    model, engine = trained_pair()
    path = ck.save(ck.make_checkpoint(model, engine, {"model": "small_vgg", "width": 4},
                                      ["a", "b", "c"]), tmp_path / "c.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]   # temp file renamed away
    ckpt = ck.load(path)
    assert all(e["bits"] == 2 for e in ckpt["owner"].values())
    model2, engine2 = ck.restore(ckpt)
    assert all(torch.equal(engine2.owner[n], o) for n, o in engine.owner.items())
    x = torch.randn(4, 1, 28, 28)
    model.eval(); model2.eval()
    for k in (1, 2, 3):
        with torch.no_grad(), engine.task_view(k), engine2.task_view(k):
            expected = model(x, k)
            assert torch.equal(model2(x, k), expected)
        ck.export_task_file(path, k, tmp_path / f"task{k}.pt")
        standalone = ck.load_exported(tmp_path / f"task{k}.pt")
        with torch.no_grad():
            assert torch.allclose(standalone(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        ck.export_task_file(path, 4, tmp_path / "t4.pt")
    with pytest.raises(ck.CheckpointError, match="not a packnet_edu exported task model"):
        ck.load_exported(path)                       # a training checkpoint, not an export
    with pytest.raises(ck.CheckpointError, match="not a packnet_edu checkpoint"):
        ck.load(tmp_path / "task1.pt")               # and the other way round


def test_bad_checkpoints(tmp_path):
    model, engine = trained_pair()
    good = ck.save(ck.make_checkpoint(model, engine, {"model": "small_vgg", "width": 4}, list("abc")),
                   tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load(truncated)
    newer = ck.load(good)
    newer["version"] = ck.FORMAT_VERSION + 1
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(ck.CheckpointError, match="newer"):
        ck.load(tmp_path / "newer.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ck.CheckpointError, match="not a packnet_edu checkpoint"):
        ck.load(tmp_path / "foreign.pt")
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.load(tmp_path / "missing.pt")
    wide = small_vgg([3] * 3, width=8)            # wrong architecture
    with pytest.raises(ck.CheckpointError, match="wrong architecture"):
        ck.restore_into(ck.load(good), wide, PackNet(wide.trunk))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, engine = trained_pair()
    path = ck.save(ck.make_checkpoint(model, engine, {"model": "small_vgg", "width": 4}, list("abc")),
                   tmp_path / "c.pt")
    before = path.read_bytes()

    def dies(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        ck.save({"format": "x"}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "packnet_edu", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TQDM_DISABLE="1"), **kw)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    full = cli("run", *TINY, "--out", str(tmp_path / "full"), timeout=300)
    assert full.returncode == 0, full.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "packnet_edu", "run", *TINY, "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TQDM_DISABLE="1"))
    deadline = time.time() + 240
    progress = None
    while time.time() < deadline and proc.poll() is None:     # kill once task 2 has checkpointed
        if (out / "checkpoint.pt").exists():
            try:
                progress = ck.load(out / "checkpoint.pt")["progress"]
            except ck.CheckpointError:
                progress = None
            if progress and progress["task"] >= 2:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress is not None and progress["task"] >= 2, "the run ended before it could be killed"
    assert not (out / "results.json").exists()

    resumed = cli("run", *TINY, "--out", str(out), "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["matrix"] == b["matrix"] and a["owned"] == b["owned"] and all(b["outputs_identical"])
    sa, sb = ck.load(tmp_path / "full" / "checkpoint.pt"), ck.load(out / "checkpoint.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])

    again = cli("run", *TINY, "--out", str(out), "--resume", timeout=60)   # finished: nothing to resume
    assert again.returncode != 0 and "nothing to resume" in again.stderr
    final = (out / "checkpoint.pt").read_bytes()
    (out / "results.json").unlink()          # lost: rewritten from the final checkpoint (issue 15, item 11)
    rewritten = cli("run", *TINY, "--out", str(out), "--resume", timeout=60)
    assert rewritten.returncode == 0 and "rewritten from it (nothing trained)" in rewritten.stdout, rewritten.stderr
    assert json.loads((out / "results.json").read_text()) == b and (out / "checkpoint.pt").read_bytes() == final
    other = cli("run", *TINY, "--epochs", "2", "--out", str(tmp_path / "full"), "--resume", timeout=60)
    assert other.returncode != 0


def test_cli_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli("info", str(bad), timeout=60)
    assert r.returncode != 0 and "truncated or not a packnet_edu checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("run", "--prune", "lots", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "use 'paper', 'equal'" in r.stderr
    r = cli("run", "--config", str(tmp_path / "nope.json"), timeout=60)
    assert r.returncode != 0 and "neither a preset" in r.stderr
