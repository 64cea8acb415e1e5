"""Nothing lost, no traceback (issue 10): output folders (one writer, finished
runs kept, resume always possible), atomic writes, checkpoints that detect
corruption and a full disk, and bad data files. The run-folder tests replace
the training by a stub (`fake_run`) so that they take milliseconds; the real
training is covered by test_checkpoint.py's kill-and-resume test."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from packnet_edu import checkpoint as ck
from packnet_edu import experiments as ex
from packnet_edu import fileio, small_vgg
from packnet_edu.engine import PackNet
from packnet_edu.train import Config

ROOT = Path(__file__).resolve().parent.parent
CFG = Config(tasks=("digits", "digits"), width=4, epochs=1, retrain_epochs=1, max_train=100)


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "packnet_edu", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TQDM_DISABLE="1"), timeout=timeout)


def one_line_error(r, *words):
    """A failed command whose stderr is one `error: ...` line holding `words`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------ a training stub
class FakeRun:
    """Stands in for train.run_packnet: two tasks, a checkpoint after each phase,
    no data, no training. `die_after` phases it raises KeyboardInterrupt (a kill)."""

    def __init__(self, die_after=None):
        self.calls, self.die_after, self.resumed_from = 0, die_after, None

    def __call__(self, cfg, on_phase_end=None, resume_from=None, verbose=True, runtime=None):
        self.calls += 1
        self.resumed_from = resume_from
        torch.manual_seed(0)
        model = small_vgg([10, 10], width=4)
        engine = PackNet(model.trunk)
        state = {"phase": None, "task": 0, "matrix": [], "val": [], "probes": []}
        if resume_from is not None:
            model.load_state_dict(resume_from["model"])
            engine.load_state_dict(resume_from["engine"])
            state.update({k: resume_from[k] for k in state})
        phases = 0
        for t in (1, 2):
            if t <= state["task"] and state["phase"] == "end":
                continue
            engine.start_task()
            if t == 1:
                engine.prune(0.5)
            engine.end_task()
            state.update(phase="end", task=t)
            state["matrix"].append([50.0] * t + [None] * (2 - t))
            if on_phase_end:
                on_phase_end(dict(state), model, engine, ["digits", "digits"])
            phases += 1
            if self.die_after is not None and phases >= self.die_after:
                raise KeyboardInterrupt
        return {"config": cfg.to_dict(), "task_names": ["digits", "digits"], "ratios": [0.5, 0.0],
                "matrix": state["matrix"], "val": [], "outputs_identical": [True, True],
                "owned": engine.owned_counts(), "seconds": 0.0, "model": model, "engine": engine}


@pytest.fixture
def fake_run(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(ex, "run_packnet", fake)
    return fake


def test_a_finished_run_is_refused_and_kept(tmp_path, fake_run):
    out = tmp_path / "run"
    ex.run_packnet_to(CFG, out, verbose=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["checkpoint.pt", "results.json"]          # no lock or temp file left
    with pytest.raises(ex.RunFolderError, match="already holds a finished run.*--overwrite"):
        ex.run_packnet_to(CFG, out, verbose=False)
    assert fake_run.calls == 1                                           # refused before training
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ex.RunFolderError, match="finished run; nothing to resume"):
        ex.run_packnet_to(CFG, out, resume=True, verbose=False)
    (out / "mine.txt").write_text("the user's")                        # --overwrite replaces only its files
    ex.run_packnet_to(CFG, out, verbose=False, overwrite=True)
    assert fake_run.calls == 2 and (out / "mine.txt").read_text() == "the user's"


def test_overwrite_killed_early_leaves_no_old_results(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(ex, "run_packnet", FakeRun())
    ex.run_packnet_to(CFG, out, verbose=False)
    monkeypatch.setattr(ex, "run_packnet", FakeRun(die_after=1))
    with pytest.raises(KeyboardInterrupt):
        ex.run_packnet_to(CFG, out, verbose=False, overwrite=True)
    assert not (out / "results.json").exists()                        # no old results beside a new checkpoint
    assert ck.load(out / "checkpoint.pt")["progress"]["task"] == 1
    with pytest.raises(ex.RunFolderError, match="interrupted run.*--resume"):
        ex.run_packnet_to(CFG, out, verbose=False)


def test_killed_while_writing_the_final_checkpoint_resume_finishes(tmp_path, fake_run, monkeypatch):
    """The final checkpoint comes before results.json (the other order:
    test_bad_inputs_round2's resume test)."""
    out = tmp_path / "run"
    real_save, saves = ck.save, []

    def save_then_die(ckpt, path):
        if ckpt["progress"] is None:                                   # the final checkpoint
            raise KeyboardInterrupt
        saves.append(ckpt["progress"]["task"])
        return real_save(ckpt, path)
    monkeypatch.setattr(ck, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ex.run_packnet_to(CFG, out, verbose=False)
    monkeypatch.setattr(ck, "save", real_save)
    assert saves == [1, 2] and not (out / "results.json").exists()
    ex.run_packnet_to(CFG, out, resume=True, verbose=False)            # not "nothing to resume"
    assert fake_run.resumed_from["task"] == 2 and ck.load(out / "checkpoint.pt")["progress"] is None


def test_one_writer_per_folder_and_stale_locks(tmp_path, fake_run):
    out = tmp_path / "run"
    with fileio.FolderLock(out, "test holder"):
        with pytest.raises(fileio.FolderBusyError, match="in use by test holder"):
            ex.run_packnet_to(CFG, out, verbose=False)
    assert fake_run.calls == 0 and not (out / ".lock").exists()
    # a killed process leaves .lock behind, unlocked: recognised as stale and taken over
    (out / ".lock").write_text("packnet_edu run (pid 999999)")
    ex.run_packnet_to(CFG, out, verbose=False)
    assert fake_run.calls == 1 and not (out / ".lock").exists()


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with fileio.FolderLock(out, "packnet_edu run"):
        r = cli("run", "--tasks", "digits", "--out", str(out))
    one_line_error(r, "in use by packnet_edu run (pid", "another output folder")


def test_leftover_temp_files_are_removed_and_modes_usual(tmp_path, fake_run):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.dead1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    old_mask = os.umask(0o022)
    try:
        ex.run_packnet_to(CFG, out, verbose=False)
    finally:
        os.umask(old_mask)
    assert not stale.exists()
    for name in ("checkpoint.pt", "results.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name        # not mkstemp's 0600


def test_unwritable_out_is_found_before_training(tmp_path, fake_run, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(fileio.WriteError, match="file, not a folder|cannot"):
        ex.run_packnet_to(CFG, tmp_path / "file", verbose=False)
    with pytest.raises(fileio.WriteError, match="choose"):
        ex.run_packnet_to(CFG, tmp_path / "file" / "run", verbose=False)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(fileio.os, "open", denied)                      # as root, chmod cannot deny
    with pytest.raises(fileio.WriteError, match="cannot write to .*choose a folder you can write to"):
        ex.run_packnet_to(CFG, tmp_path / "ro", verbose=False)
    assert fake_run.calls == 0


def test_unwritable_out_on_the_command_line(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(cli("run", "--tasks", "digits", "--out", str(tmp_path / "file" / "run")), "choose")


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, fake_run, monkeypatch):
    out = tmp_path / "run"
    real = torch.save
    count = {"n": 0}

    def fills_the_disk(obj, f, *a, **k):
        count["n"] += 1
        if count["n"] == 2:                 # the second phase's checkpoint: disk full part-way
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(fileio.WriteError, match="No space left.*previous version is intact.*free some disk"):
        ex.run_packnet_to(CFG, out, verbose=False)
    assert ck.load(out / "checkpoint.pt")["progress"]["task"] == 1     # phase 1's checkpoint survives
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]   # no temp file, no lock


def test_torch_reports_a_full_disk_as_unexpected_pos(tmp_path, monkeypatch):
    model, engine = small_vgg([3], width=4), None
    path = tmp_path / "c.bin"
    fileio.atomic_write(path, b"old")

    def torch_full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(fileio.WriteError, match="No space left"):
        ck.save({"x": 1}, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["c.bin"]


def test_resume_without_or_with_a_corrupt_checkpoint(tmp_path, fake_run):
    with pytest.raises(ex.RunFolderError, match="no checkpoint in .*run without --resume"):
        ex.run_packnet_to(CFG, tmp_path / "none", resume=True, verbose=False)
    assert not (tmp_path / "none").exists()                          # nothing created for nothing
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ck.CheckpointError, match="truncated or not a packnet_edu checkpoint"):
        ex.run_packnet_to(CFG, bad, resume=True, verbose=False)
    with pytest.raises(ex.RunFolderError, match="unreadable checkpoint.pt.*--overwrite"):
        ex.run_packnet_to(CFG, bad, verbose=False)
    assert fake_run.calls == 0


def test_resume_errors_on_the_command_line(tmp_path):
    one_line_error(cli("run", "--out", str(tmp_path / "none"), "--resume"), "nothing to resume")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off")
    one_line_error(cli("run", "--out", str(tmp_path / "bad"), "--resume"), "truncated or not a packnet_edu")


def test_resume_warns_when_the_thread_count_changed(tmp_path, fake_run, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(ex, "run_packnet", FakeRun(die_after=1))
    with pytest.raises(KeyboardInterrupt):
        ex.run_packnet_to(CFG, out, verbose=False)
    assert ck.load(out / "checkpoint.pt")["threads"] == torch.get_num_threads()
    monkeypatch.setattr(ex, "run_packnet", FakeRun())
    other = torch.get_num_threads() + 5
    monkeypatch.setattr(torch, "get_num_threads", lambda: other)
    with pytest.warns(ex.ThreadCountWarning, match=f"checkpointed with .* CPU threads and resumes with {other}"):
        ex.run_packnet_to(CFG, out, resume=True, verbose=False)


# ------------------------------------------------------------------ checkpoints
def _pair():
    torch.manual_seed(0)
    model = small_vgg([3, 3], width=4)
    engine = PackNet(model.trunk)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    return model, engine


def test_checksum_reports_a_changed_tensor_and_a_flipped_bit(tmp_path):
    model, engine = _pair()
    path = ck.save(ck.make_checkpoint(model, engine, {"model": "small_vgg", "width": 4}, ["a", "b"]),
                   tmp_path / "c.pt")
    ckpt = ck.load(path)
    assert ckpt["checksum"] == ck.checksum(ckpt)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name].view(-1)[0] += 1e-3           # a changed weight, the file otherwise well-formed
    torch.save(ckpt, tmp_path / "changed.pt")
    with pytest.raises(ck.CheckpointError, match="corrupt.*checksum"):
        ck.load(tmp_path / "changed.pt")
    # one flipped bit in the stored bytes of a weight
    raw = bytearray(path.read_bytes())
    w = ckpt["model"][name]
    w.view(-1)[0] -= 1e-3
    needle = w.contiguous().view(torch.uint8).numpy().tobytes()[:16]
    at = bytes(raw).index(needle)
    raw[at] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    assert not torch.equal(torch.load(tmp_path / "flipped.pt", weights_only=True)["model"][name], w)  # torch loads it
    with pytest.raises(ck.CheckpointError, match="corrupt.*checksum"):
        ck.load(tmp_path / "flipped.pt")


def test_export_to_a_folder_is_refused(tmp_path):
    model, engine = _pair()
    path = ck.save(ck.make_checkpoint(model, engine, {"model": "small_vgg", "width": 4}, ["a", "b"]),
                   tmp_path / "c.pt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ck.CheckpointError, match="is a folder: give a file name"):
        ck.export_task_file(path, 1, tmp_path / "dir")
    one_line_error(cli("export", str(path), "--task", "1", "--out", str(tmp_path / "dir")), "is a folder")


# ------------------------------------------------------------------ compare and report
def test_compare_checks_its_arguments_before_training(tmp_path, monkeypatch):
    import packnet_edu.train as T

    def no_training(cfg):
        raise AssertionError("training started")
    monkeypatch.setattr(T, "load_tasks", no_training)
    for bad in ("1.0", "0.5,2", "x", "-0.1"):
        with pytest.raises(ex.RunFolderError, match="--sweep"):
            ex.parse_sweep(bad)
    assert ex.parse_sweep("none") == [] and ex.parse_sweep("0.25,0.5") == [0.25, 0.5]
    with pytest.raises(ValueError, match="prune"):
        ex.compare(CFG, tmp_path / "c", sweep=[1.0], verbose=False)
    with pytest.raises(ex.RunFolderError, match="unknown method"):
        ex.compare(CFG, tmp_path / "c", methods=["packnet", "magic"], verbose=False)
    (tmp_path / "c").mkdir(exist_ok=True)
    (tmp_path / "c" / "results.json").write_text("{}")
    with pytest.raises(ex.RunFolderError, match="already holds a comparison.*--overwrite"):
        ex.compare(CFG, tmp_path / "c", sweep=[], verbose=False)
    assert (tmp_path / "c" / "results.json").read_text() == "{}"


def test_compare_sweep_error_on_the_command_line(tmp_path):
    r = cli("compare", "--sweep", "1.0", "--tasks", "digits", "--out", str(tmp_path / "c"))
    one_line_error(r, "--sweep '1.0'")
    assert not (tmp_path / "c").exists()


def test_report_on_a_runs_results_says_what_to_pass(tmp_path, fake_run):
    ex.run_packnet_to(CFG, tmp_path / "run", verbose=False)
    with pytest.raises(ex.RunFolderError, match="results of `run`.*pass the results.json that `compare` wrote"):
        ex.read_comparison(tmp_path / "run" / "results.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ex.RunFolderError, match="not a comparison's results.json"):
        ex.read_comparison(tmp_path / "x.json")
    one_line_error(cli("report", str(tmp_path / "run")), "results of `run`")
    assert not (tmp_path / "run" / "report.md").exists()


def test_atomic_write_refuses_a_folder_and_cleans_up(tmp_path):
    with pytest.raises(fileio.WriteError, match="is a folder"):
        fileio.atomic_write(tmp_path, "x")

    def fails(f):
        f.write(b"half")
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        fileio.atomic_write(tmp_path / "a.txt", fails)
    assert list(tmp_path.iterdir()) == []
