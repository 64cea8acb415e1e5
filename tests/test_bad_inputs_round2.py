"""Nothing lost, every error one line: the second round (issue 16 items 1-4, 6,
9-11, 13-15, 17; issue 15 item 11). One test per numbered case, each failing
on main 1efed2f. They run the command line in this process (`cli.main`) with
data loading and model building replaced by tripwires, so a check that comes
too late fails the test instead of taking minutes.
`scripts/try_bad_inputs.py` runs the same cases in fresh processes."""
import errno
import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_safety import CFG, FakeRun

from packnet_edu import checkpoint as ck
from packnet_edu import cli, data, fileio, small_vgg
from packnet_edu import experiments as ex
from packnet_edu import train as T
from packnet_edu import vgg_data as vd
from packnet_edu.config import Config
from packnet_edu.engine import PackNet


def fails(argv, *words) -> str:
    """`python -m packnet_edu ARGV` ends in one `error: ...` line holding `words`."""
    with pytest.raises(SystemExit) as err:
        cli.main([str(a) for a in argv])
    msg = str(err.value.code)
    assert msg.startswith("error:") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def set_tripwires(monkeypatch):
    """Loading any data or building the network fails the test."""
    def tripped(*a, **k):
        raise AssertionError("data loaded or the network built before the check")
    for mod, name in ((T, "offline_sequence"), (vd, "load_image_tasks"), (data, "load_task"),
                      (T, "make_model")):
        monkeypatch.setattr(mod, name, tripped)


@pytest.fixture
def tripwires(monkeypatch):
    set_tripwires(monkeypatch)


def _checkpoint(path: Path, progress=None, config=None) -> Path:
    """A small_vgg checkpoint whose task 1 is finished (no data, no training)."""
    torch.manual_seed(0)
    model = small_vgg([10, 10], width=4)
    engine = PackNet(model.trunk, heads=model.heads)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    return ck.save(ck.make_checkpoint(model, engine, config or CFG.to_dict(), ["digits", "digits"], progress),
                   path)


def _comparison(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config": CFG.to_dict(), "task_names": ["digits", "digits"],
                                                  "methods": {"finetune": {"matrix": [[50.0, None], [40.0, 60.0]]}},
                                                  "sweep": []}))
    return out / "results.json"


# ------------------------------------------------------------------ data loss
def test_1_export_never_replaces_its_checkpoint_or_an_existing_file(tmp_path):
    run = _checkpoint(tmp_path / "a" / "checkpoint.pt")
    other = _checkpoint(tmp_path / "b" / "checkpoint.pt")
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's")
    before = {p: p.read_bytes() for p in (run, other, mine)}
    fails(["export", run, "--task", 1, "--out", run], "is the checkpoint being exported")
    fails(["export", run, "--task", 1, "--out", run, "--overwrite"], "is the checkpoint being exported")
    fails(["export", run, "--task", 1, "--out", other], "already exists (a packnet_edu checkpoint)", "--overwrite")
    fails(["export", run, "--task", 1, "--out", mine], "already exists", "--overwrite")
    assert {p: p.read_bytes() for p in before} == before
    assert ck.load(run)["format"] == ck.FORMAT                # `info` still reads it
    assert cli.main(["export", str(run), "--task", "1", "--out", str(mine), "--overwrite"]) == 0
    assert isinstance(ck.load_exported(mine), torch.nn.Sequential)


def test_2_run_never_replaces_a_comparison_nor_compare_a_run(tmp_path, tripwires):
    results = _comparison(tmp_path / "c")
    before = results.read_bytes()
    msg = fails(["run", "--out", tmp_path / "c"], "holds a comparison", "choose another --out")
    assert "finished run" not in msg
    fails(["run", "--out", tmp_path / "c", "--overwrite"], "holds a comparison")
    fails(["run", "--out", tmp_path / "c", "--resume"], "holds a comparison")
    assert results.read_bytes() == before                     # `report` can still rebuild it
    run = _checkpoint(tmp_path / "r" / "checkpoint.pt")
    (tmp_path / "r" / "results.json").write_text(json.dumps({"matrix": [[50.0]]}))
    kept = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    fails(["compare", "--out", tmp_path / "r", "--overwrite"], "holds a run of `run`")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == kept and run.exists()


# ------------------------------------------------------------------ one line, before any data loads
def _foreign_files(tmp: Path) -> dict:
    files = {"another network's state dict": tmp / "small.pt", "a whole pickled model": tmp / "model.pt",
             "a zip that is not a torch file": tmp / "plain.zip", "a list": tmp / "list.pt"}
    torch.save(small_vgg([10], width=2).state_dict(), files["another network's state dict"])
    torch.save(torch.nn.Linear(2, 2), files["a whole pickled model"])
    with zipfile.ZipFile(files["a zip that is not a torch file"], "w") as z:
        z.writestr("readme.txt", "hello")
    torch.save([1, 2], files["a list"])
    return files


@pytest.mark.parametrize("model, title", [("resnet50", "ResNet-50"), ("densenet121", "DenseNet-121"),
                                          ("vgg16", "VGG-16")])
def test_3_foreign_weights_files_are_refused_before_data_loads(tmp_path, tripwires, model, title):
    for path in _foreign_files(tmp_path).values():
        fails(["run", "--model", model, "--weights", path, "--tasks", "digits", "--out", tmp_path / "o"],
              f"is not a {title} state dict", "pass --weights FILE")



def test_3_foreign_weights_files_are_a_value_error_in_the_library(tmp_path):
    """Not a raw UnpicklingError, TypeError or RuntimeError (the smallest of the networks)."""
    from packnet_edu.models import densenet121
    for path in _foreign_files(tmp_path).values():
        with pytest.raises(ValueError, match="not a torchvision DenseNet-121 state dict"):
            densenet121([10], weights=path)


def test_4_small_vgg_on_the_image_datasets_is_refused_before_data_loads(tmp_path, tripwires):
    fails(["run", "--data-root", tmp_path, "--tasks", "flowers", "--out", tmp_path / "o"],
          "28x28 grayscale", "--model vgg16")
    with pytest.raises(Exception, match="28x28 grayscale"):
        T.load_tasks(Config(tasks=("flowers",), data_root=str(tmp_path)))


def _idx(array: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
                         + array.astype(np.uint8).tobytes())


def _fashion(folder: Path, test_size: int = 28, skip: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(20) % 10
    for split, size in (("train", 28), ("t10k", test_size)):
        if split + "-images" != skip:
            (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(np.zeros((20, size, size))))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    return folder


def test_6_a_fashion_test_split_of_another_size_is_refused_before_data_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(_fashion(tmp_path / "f", test_size=32)))
    with pytest.raises(data.DataFileError, match="t10k-images.*images are 32x32, the offline tasks are 28x28"):
        data.load_task("fashion")
    set_tripwires(monkeypatch)      # on the command line: from the files' headers, before any task loads
    fails(["run", "--tasks", "mnist", "fashion", "--out", tmp_path / "o"],
          "t10k-images-idx3-ubyte.gz: images are 32x32, the offline tasks are 28x28", "reinstall")


# ------------------------------------------------------------------ silent wrong results
def test_9_a_named_fashion_folder_is_the_only_one_tried(tmp_path, monkeypatch, tripwires):
    monkeypatch.setattr(data, "FASHION_DIRS", [_fashion(tmp_path / "installed")])    # a good copy elsewhere
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(tmp_path / "missing"))
    fails(["run", "--tasks", "fashion", "--out", tmp_path / "o"], "PACKNET_FASHION_MNIST", "is not a folder")
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(_fashion(tmp_path / "partial", skip="t10k-images")))
    fails(["run", "--tasks", "mnist", "fashion", "--out", tmp_path / "o"], "lacks t10k-images")
    with pytest.raises(data.DataMissingError, match="lacks t10k-images"):
        data.load_fashion_mnist()
    monkeypatch.delenv("PACKNET_FASHION_MNIST")
    assert data.fashion_folder() == tmp_path / "installed"       # unset: the installed copy


def test_10_animals_stored_as_floats_are_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "animal_silhouettes.npz", images=np.random.default_rng(0).random((20, 28, 28)),
             labels=np.arange(20) % 10)
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(data.DataFileError, match="images are float64; expected uint8"):
        data.load_animals()


def test_11_a_sweep_with_one_task_is_refused_and_not_the_default(tmp_path, monkeypatch, tripwires):
    fails(["compare", "--tasks", "digits", "--sweep", "0.5", "--out", tmp_path / "c"], "one task", "--sweep none")
    assert not (tmp_path / "c" / "results.json").exists()
    # without --sweep, one task runs no sweep (it would vary nothing); two tasks run the default one
    import packnet_edu.baselines as B
    calls = []
    monkeypatch.setattr(T, "load_tasks", lambda cfg: [data.Task(n, ["a"], None, None, None) for n in cfg.tasks])
    monkeypatch.setattr(B, "run_method", lambda m, cfg, tasks: calls.append(cfg.prune) or
                        {"matrix": [[50.0] * len(tasks)] * len(tasks), "memory": 1})
    monkeypatch.setattr(ex, "write_report", lambda results, out: None)
    one = ex.compare(Config(tasks=("digits",)), tmp_path / "one", methods=["finetune"], verbose=False)
    assert one["sweep"] == [] and len(calls) == 1
    two = ex.compare(Config(tasks=("digits", "mnist")), tmp_path / "two", methods=["finetune"], verbose=False)
    assert [r for r, _ in two["sweep"]] == list(ex.DEFAULT_SWEEP)


def test_13_decode_gpu_without_a_cuda_device_is_refused(tmp_path, tripwires):
    fails(["run", "--decode", "gpu", "--tasks", "digits", "--out", tmp_path / "o"], "--decode gpu", "--device cuda")


# ------------------------------------------------------------------ messages that say the right thing
def test_14_compare_after_a_kill_names_overwrite_not_resume(tmp_path, tripwires, capsys):
    _checkpoint(tmp_path / "c" / "packnet" / "checkpoint.pt",
                progress={"phase": "end", "task": 1, "matrix": [], "val": [], "probes": []})
    msg = fails(["compare", "--tasks", "digits", "digits", "--out", tmp_path / "c"],
                "stopped before it finished", "pass --overwrite")
    assert "continue it with --resume" not in msg
    with pytest.raises(SystemExit):                # and indeed compare has no --resume to advise
        cli.main(["compare", "--resume"])
    assert "unrecognized arguments: --resume" in capsys.readouterr().err


def test_15_resume_names_the_fields_a_checkpoint_lacks(tmp_path, tripwires):
    old = {k: v for k, v in CFG.to_dict().items() if k != "decode"}    # written before `decode` existed
    _checkpoint(tmp_path / "r" / "checkpoint.pt", config=old,
                progress={"phase": "end", "task": 1, "matrix": [], "val": [], "probes": []})
    with pytest.raises(ex.RunFolderError, match=r"decode: \(not recorded\) -> 'cpu'.*--overwrite"):
        ex.run_packnet_to(CFG, tmp_path / "r", resume=True, verbose=False)


def test_17_a_write_error_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    """A read-only disk (EROFS): the kernel refuses even to unlink a missing file there."""
    run = _checkpoint(tmp_path / "checkpoint.pt")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open, real_unlink = fileio.os.open, Path.unlink

    def ro_open(path, *a, **k):
        if Path(path).parent == ro:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    def ro_unlink(self, missing_ok=False):
        if self.parent == ro:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)
    monkeypatch.setattr(fileio.os, "open", ro_open)
    monkeypatch.setattr(Path, "unlink", ro_unlink)
    msg = fails(["export", run, "--task", 1, "--out", ro / "task1.pt"], f"cannot write {ro / 'task1.pt'}",
                "writable disk")
    assert ".tmp" not in msg


# ------------------------------------------------------------------ issue 15, item 11
def test_resume_rewrites_lost_results_from_the_final_checkpoint_without_training(tmp_path, monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(ex, "run_packnet", fake)
    out = tmp_path / "run"
    real_write = ex._write_json

    def die_at_results(path, obj):                 # killed after the final checkpoint, before results.json
        if path.name == "results.json":
            raise KeyboardInterrupt
        real_write(path, obj)
    monkeypatch.setattr(ex, "_write_json", die_at_results)
    with pytest.raises(KeyboardInterrupt):
        ex.run_packnet_to(CFG, out, verbose=False)
    monkeypatch.setattr(ex, "_write_json", real_write)
    assert not (out / "results.json").exists() and ck.load(out / "checkpoint.pt")["progress"] is None
    ckpt_bytes = (out / "checkpoint.pt").read_bytes()
    r = ex.run_packnet_to(CFG, out, resume=True, verbose=False)
    assert fake.calls == 1                                    # nothing trained again
    written = json.loads((out / "results.json").read_text())
    assert written["matrix"] == [[50.0, None], [50.0, 50.0]] and written["outputs_identical"] == [True, True]
    assert r["matrix"] == written["matrix"] and r["engine"].num_tasks == 2
    assert (out / "checkpoint.pt").read_bytes() == ckpt_bytes
    for damage in (lambda p: p.unlink(), lambda p: p.write_text(p.read_text()[:40])):   # lost, or cut off
        damage(out / "results.json")
        ex.run_packnet_to(CFG, out, resume=True, verbose=False)
        assert json.loads((out / "results.json").read_text()) == written and fake.calls == 1
    with pytest.raises(ex.RunFolderError, match="nothing to resume"):       # intact: nothing to do
        ex.run_packnet_to(CFG, out, resume=True, verbose=False)
