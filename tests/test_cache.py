"""The notebooks' cache: keyed by everything that decides a result, checked
when loaded, giving back what was stored, never stale silently."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from packnet_edu import cache, provenance
from packnet_edu import checkpoint as ck
from packnet_edu.config import ConfigError
from packnet_edu.engine import PackNet
from packnet_edu.models import small_vgg
from packnet_edu.train import Config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PACKNET_REFRESH", raising=False)
    return tmp_path / "cache"


def counter():
    calls = []

    def fn():
        calls.append(1)
        return {"matrix": [[1.0, None], [0.5, 2.0]], "n": len(calls)}
    return fn, calls


def test_computes_once_then_loads(capsys):
    fn, calls = counter()
    cfg = Config(epochs=1)
    a = cache.load_or_run("m", cfg, fn)
    b = cache.load_or_run("m", cfg, fn)
    assert calls == [1] and a == b
    out = capsys.readouterr().out
    assert "computing 'm'" in out and "loaded 'm'" in out


def test_other_config_recomputes_and_says_why(capsys):
    fn, calls = counter()
    cache.load_or_run("m", Config(epochs=1), fn)
    capsys.readouterr()
    cache.load_or_run("m", Config(epochs=2), fn)
    assert len(calls) == 2
    out = capsys.readouterr().out
    assert "different key" in out and "epochs: 1 -> 2" in out


def test_source_or_version_change_invalidates(monkeypatch, capsys):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    monkeypatch.setattr(cache, "source_hash", lambda: "something-else")
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2
    assert "source code changed" in capsys.readouterr().out
    monkeypatch.setattr(cache, "__version__", "9.9")
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 3


# ------------------------------------------------------------ 1. the key covers every computing module
@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's sources that provenance hashes instead of the real one."""
    copy = tmp_path / "pkg"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: update this test"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("module, old, new", [
    ("config.py", "[0.5] + [0.75] * (num_tasks - 2)", "[0.5] + [0.7] * (num_tasks - 2)"),   # the prune schedule
    ("cache.py", "_, same_epochs = retrained(None)", "_, same_epochs = retrained(0.0)"),      # pruning_study
    ("analysis.py", None, "\nEDITED = 1\n"),                                              # its helpers
    ("engine.py", None, "\nEDITED = 1\n"),
])
def test_a_code_change_in_any_computing_module_changes_the_key(package_copy, module, old, new, capsys):
    cfg = Config()
    path = package_copy / module
    original = path.read_text()
    before = cache.cache_key("m", cfg)
    if old is None:
        path.write_text(original + new)
    else:
        edit(path, old, new)
    after = cache.cache_key("m", cfg)
    assert after != before and cache.key_hash(after) != cache.key_hash(before)
    fn, calls = counter()
    cache.load_or_run("m", cfg, fn)
    path.write_text(original)
    capsys.readouterr()
    cache.load_or_run("m", cfg, fn)
    assert len(calls) == 2
    assert f"source code changed: {module}" in capsys.readouterr().out


def test_a_new_module_is_covered_by_default(package_copy):
    before = cache.cache_key("m", Config())
    (package_copy / "newly_added.py").write_text("SCALE = 2\n")
    assert "newly_added.py" in provenance.computing_modules()
    assert cache.cache_key("m", Config()) != before


def test_comments_docstrings_and_presentation_modules_do_not_change_the_key(package_copy):
    before = cache.cache_key("m", Config())
    edit(package_copy / "engine.py", "\nimport ", "\n# a new comment\nimport ")
    edit(package_copy / "engine.py", '"""', '"""Reworded. ')
    for name in provenance.NOT_COMPUTING:
        (package_copy / name).write_text((package_copy / name).read_text() + "\nCHANGED = 1\n")
    assert cache.cache_key("m", Config()) == before


def test_the_presentation_only_list_names_real_modules():
    assert set(provenance.NOT_COMPUTING) <= set(provenance.package_modules())
    computing = provenance.computing_modules()
    assert {"engine.py", "config.py", "train.py", "cache.py", "analysis.py", "baselines.py", "data.py"} <= set(computing)
    assert not set(computing) & set(provenance.NOT_COMPUTING)


# ------------------------------------------------------------ 2. versions and data in the key
def test_torch_and_torchvision_versions_are_part_of_the_key(monkeypatch, capsys):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    real = provenance.library_versions()
    assert real["torch"] and real["torchvision"]
    monkeypatch.setattr(provenance, "library_versions", lambda: {**real, "torchvision": "0.0.1"})
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2
    assert f"torchvision: {real['torchvision']!r} -> '0.0.1'" in capsys.readouterr().out


def test_every_task_has_its_data_files_in_the_key():
    files = cache.data_files(Config())
    assert list(files) == list(Config().tasks)
    for task, paths in files.items():
        assert paths and all(p.is_file() for p in paths), (task, paths)
    fingerprint = cache.cache_key("m", Config())["data"]
    assert all(h != "missing" for task in fingerprint.values() for h in task.values())


def test_changed_data_files_recompute(tmp_path, monkeypatch, capsys):
    data = tmp_path / "animal_silhouettes.npz"
    data.write_bytes(b"version 1")
    monkeypatch.setattr(cache, "data_files", lambda cfg: {"animals": [data]})
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    cache.load_or_run("m", Config(), fn)
    data.write_bytes(b"version 2")
    os.utime(data, ns=(1, 1))                  # a new mtime whatever the clock's resolution
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2
    assert "data.animals.animal_silhouettes.npz" in capsys.readouterr().out


# ------------------------------------------------------------ 3. checksums
def test_an_edited_result_is_recomputed_with_the_reason(tmp_cache, capsys):
    calls = []

    def fn():
        calls.append(1)
        return {"accuracy": 87.33}
    cache.load_or_run("m", Config(), fn)
    result = next(tmp_cache.glob("m-*/result.json"))
    result.write_text(result.read_text().replace("87.33", "97.33"))
    capsys.readouterr()
    assert cache.load_or_run("m", Config(), fn) == {"accuracy": 87.33}
    assert len(calls) == 2
    out = capsys.readouterr().out
    assert "damaged (result.json does not match its checksum" in out
    assert "different key" not in out                      # 8: no "made with a different key ()"


@pytest.mark.parametrize("victim", ["tensors.pt", "checkpoint.pt", "meta.json"])
def test_a_damaged_file_is_recomputed(tmp_cache, victim, capsys):
    fn = checkpoint_result()
    cache.load_or_run("p", Config(), fn)
    path = next(tmp_cache.glob(f"p-*/{victim}"))
    path.write_bytes(path.read_bytes()[:-7])                # truncated
    capsys.readouterr()
    again = cache.load_or_run("p", Config(), fn)
    out = capsys.readouterr().out
    assert "damaged (" in out and "different key" not in out and "stored 'p'" in out
    assert torch.equal(again["snapshots"][0]["weight"], fn()["snapshots"][0]["weight"])
    assert cache.load_or_run("p", Config(), lambda: pytest.fail("the repaired entry should load"))


def test_tampered_key_is_not_used(tmp_cache, capsys):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    meta = next(tmp_cache.glob("m-*/meta.json"))
    data = json.loads(meta.read_text())
    data["key"]["config"]["epochs"] = 99
    meta.write_text(json.dumps(data))
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2
    out = capsys.readouterr().out
    assert "damaged (its stored key is not the key" in out and "different key" not in out


# ------------------------------------------------------------ 4. what comes back is what went in
def same(a, b) -> bool:
    """Equal values of exactly the same types, all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k1, k2) and same(a[k1], b[k2]) for k1, k2 in zip(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


EVERY_KIND = {
    "owned": {1: 200, 2: 50},                               # int keys stayed ints
    "pairs": [(0.5, 93.1), (0.75, 92.0)],                    # tuples stayed tuples
    "by_ratio": {(1, 0.5): "a", None: [True, False]},
    "floats": [1e-300, -0.0, math.inf, math.nan, 0.1 + 0.2],
    "big": 2 ** 70,
    "np": [np.float64(0.1), np.float32(2.5), np.int64(-3), np.bool_(True), np.uint8(255)],
    "arrays": [np.arange(6, dtype=np.int16).reshape(2, 3), np.array([0.1, np.nan], dtype=">f8"),
               np.array(["ab", "c"]), np.zeros((0, 2))],
    "tensor": torch.arange(4, dtype=torch.uint8), "half": torch.tensor([1.5], dtype=torch.bfloat16),
    "tag_lookalike": {"__tuple__": [1]},                    # a user's key that looks like a tag
    "nested": {"a": [{"b": ({"c": 1},)}]},
    "text": "ünïcode",
}


def test_every_value_comes_back_as_the_type_that_went_in():
    first = cache.load_or_run("kinds", Config(), lambda: dict(EVERY_KIND))
    again = cache.load_or_run("kinds", Config(), lambda: pytest.fail("should load"))
    assert same(first, EVERY_KIND)
    assert same(again, EVERY_KIND)
    assert again["owned"][1] == 200 and again["pairs"][0][1] == 93.1


@pytest.mark.parametrize("bad", [{1, 2}, torch.nn.Parameter(torch.ones(2)), np.array([object()]),
                                 Path("x"), range(3)], ids=["set", "parameter", "object-array", "path", "range"])
def test_a_value_that_would_not_come_back_is_refused_when_stored(tmp_cache, bad):
    with pytest.raises(cache.CacheError, match=r"result\['rows'\]\[1\] is a "):
        cache.load_or_run("bad", Config(), lambda: {"rows": [1, bad]})
    assert not list(tmp_cache.glob("bad-*")) and not list(tmp_cache.glob(".*"))


def test_refused_alike_where_the_cache_cannot_be_written(tmp_path, monkeypatch):
    """The refusal does not depend on the cache folder: a cell fails on its first run everywhere."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("PACKNET_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.warns(cache.CacheWarning), pytest.raises(cache.CacheError, match=r"result\['s'\] is a builtins.set"):
        cache.load_or_run("bad", Config(), lambda: {"s": {1}})


def test_numpy_values_and_tuples_in_extra_load_instead_of_recomputing():
    fn, calls = counter()
    extra = {"ratios": (np.float64(0.5), 0.75), "task": np.int64(1), "grid": np.linspace(0, 1, 3)}
    cache.load_or_run("m", Config(), fn, extra=extra)
    cache.load_or_run("m", Config(), fn, extra=dict(extra))
    assert len(calls) == 1
    cache.load_or_run("m", Config(), fn, extra={**extra, "ratios": [0.5, 0.75]})   # a list is another key
    assert len(calls) == 2
    with pytest.raises(cache.CacheError, match="extra holds a tensor"):
        cache.load_or_run("m", Config(), fn, extra={"w": torch.ones(1)})


# ------------------------------------------------------------ 5. overrides are validated like Config
@pytest.mark.parametrize("fast", ["0", "1"])
@pytest.mark.parametrize("field, value", [("epochs", 0), ("channels_last", "false"), ("prune", 0),
                                          ("lr", -1.0), ("tasks", "fashion"), ("width", 2.5),
                                          ("max_train", 0), ("device", "gpu")])
def test_overrides_are_validated_exactly_as_config_does(monkeypatch, fast, field, value):
    monkeypatch.setenv("PACKNET_FAST", fast)
    with pytest.raises(ConfigError) as direct:
        Config(**{field: value})
    with pytest.raises(ConfigError) as override:
        cache.notebook_config(**{field: value})
    assert str(override.value) == str(direct.value)


def test_overrides_are_normalised_like_config():
    cfg = cache.notebook_config(tasks=["mnist", "digits"], lr=1, prune=[0.5, 0])
    assert cfg == Config(tasks=["mnist", "digits"], lr=1, prune=[0.5, 0])
    assert cfg.tasks == ("mnist", "digits") and type(cfg.lr) is float


# ------------------------------------------------------------ 6. an unwritable cache costs a warning
def checkpoint_result():
    model = small_vgg([10, 3])
    engine = PackNet(model.trunk)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    snap = {"label": "x", "weight": torch.arange(4.0).reshape(2, 2), "owner": torch.ones(2, 2, dtype=torch.uint8)}
    ckpt = ck.make_checkpoint(model, engine, Config().to_dict(), ["a", "b"])
    return lambda: {"checkpoint": ckpt, "snapshots": [snap], "matrix": [[1.0]]}


def test_an_unwritable_cache_warns_before_computing_and_returns_the_result(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PACKNET_CACHE", str(blocker / "cache"))     # under a file: unwritable, even for root
    warned_before = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def fn():
            warned_before.append(len(caught))
            return checkpoint_result()()
        res = cache.load_or_run("p", Config(), fn)
    assert warned_before == [1] and len(caught) == 1
    assert caught[0].category is cache.CacheWarning
    assert re.search("cannot write to .* will be computed but not kept", str(caught[0].message))
    assert res["matrix"] == [[1.0]] and Path(res["checkpoint_path"]).is_file()
    _, engine = cache.restore(res)
    assert engine.num_tasks == 1


def test_a_failed_store_warns_and_returns_the_result(tmp_cache, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache, "_write_entry", full_disk)
    with pytest.warns(cache.CacheWarning, match="could not store 'm' .*No space left"):
        assert cache.load_or_run("m", Config(), lambda: {"x": 1}) == {"x": 1}
    assert not [p for p in tmp_cache.iterdir()]              # nothing half-written left behind


# ------------------------------------------------------------ 7. two writers, one valid entry
RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from packnet_edu import cache
    from packnet_edu.train import Config
    sync, rounds, me = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    out = []
    for r in range(rounds):
        def fn():
            (sync / f"{r}-{me}").touch()          # both processes are computing this key now,
            while len(list(sync.glob(f"{r}-*"))) < 2:   # so both will store it
                time.sleep(0.002)
            return {"writer": me, "round": r}
        out.append(cache.load_or_run("race", Config(tasks=["digits"]), fn, extra={"round": r}, verbose=False)["writer"])
    print(",".join(out))
""")


def test_two_processes_storing_one_key_end_with_the_same_valid_entry(tmp_cache, tmp_path):
    sync = tmp_path / "sync"
    sync.mkdir()
    rounds = 8
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(sync), str(rounds), me], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in "AB"]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    a, b = (out.strip().split(",") for out, _ in outs)
    assert a == b, "the two processes ended with different results for the same key"
    entries = sorted(tmp_cache.glob("race-*"))
    assert len(entries) == rounds
    assert not [p.name for p in tmp_cache.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    for r in range(rounds):
        res = cache.load_or_run("race", Config(tasks=["digits"]), lambda: pytest.fail("should load"),
                               extra={"round": r})
        assert res == {"writer": a[r], "round": r}


# ------------------------------------------------------------ 8. PACKNET_REFRESH's values
@pytest.mark.parametrize("value, recompute", [("1", True), ("true", True), ("YES", True), ("", False),
                                              ("0", False), ("false", False), ("no", False), ("No", False)])
def test_refresh_values(monkeypatch, value, recompute):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    monkeypatch.setenv("PACKNET_REFRESH", value)
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 1 + recompute


def test_refresh_replaces_the_entry(monkeypatch):
    cache.load_or_run("m", Config(), lambda: {"v": 1})
    monkeypatch.setenv("PACKNET_REFRESH", "1")
    assert cache.load_or_run("m", Config(), lambda: {"v": 2}) == {"v": 2}
    monkeypatch.delenv("PACKNET_REFRESH")
    assert cache.load_or_run("m", Config(), lambda: pytest.fail("should load")) == {"v": 2}


# ------------------------------------------------------------ the rest of the contract
def test_extra_is_part_of_the_key():
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn, extra={"ratios": [0.5]})
    cache.load_or_run("m", Config(), fn, extra={"ratios": [0.5, 0.9]})
    assert len(calls) == 2


def test_checkpoint_and_tensors_round_trip(tmp_cache):
    fn = checkpoint_result()
    made = fn()
    first = cache.load_or_run("p", Config(), fn)
    again = cache.load_or_run("p", Config(), lambda: pytest.fail("should load"))
    _, engine = ck.restore(made["checkpoint"])
    for res in (first, again):
        _, e = cache.restore(res)
        assert torch.equal(e.owner["conv1.weight"], engine.owner["conv1.weight"])
        assert same(res["snapshots"], made["snapshots"])
        assert res["checkpoint_path"].endswith("checkpoint.pt")
    folder = next(tmp_cache.glob("p-*"))
    assert {p.name for p in folder.iterdir()} == {"checkpoint.pt", "tensors.pt", "result.json", "meta.json"}


def test_json_for_plain_results(tmp_cache):
    cache.load_or_run("j", Config(), lambda: {"matrix": [[1.0]]})
    folder = next(tmp_cache.glob("j-*"))
    assert json.loads((folder / "result.json").read_text()) == {"matrix": [[1.0]]}
    assert not (folder / "tensors.pt").exists()


def test_fast_mode_config(monkeypatch):
    monkeypatch.setenv("PACKNET_FAST", "1")
    fast = cache.notebook_config()
    assert cache.fast_mode() and fast.epochs == 1 and fast.max_train <= 2000
    assert cache.eval_cap() is not None
    k_fast = cache.cache_key("m", fast)
    assert cache.notebook_config(width=8) == Config(epochs=1, retrain_epochs=1, max_train=1000, width=8)
    monkeypatch.setenv("PACKNET_FAST", "0")
    full = cache.notebook_config()
    assert not cache.fast_mode() and full == Config()
    assert cache.cache_key("m", full) != k_fast
    assert cache.notebook_config(width=8).width == 8
    with pytest.raises(TypeError, match="Config has no field 'nonsense'"):
        cache.notebook_config(nonsense=1)


def test_a_notebooks_code_is_part_of_the_key(capsys):
    """A loop written in a notebook (passed as `code`) recomputes when it is edited."""
    calls = []

    def loop_a():
        calls.append("a")
        return {"x": 1}

    def loop_b():
        calls.append("b")
        return {"x": 2}
    assert cache.code_hash(loop_a) != cache.code_hash(loop_b)
    assert cache.load_or_run("loop", Config(), loop_a, code=loop_a) == {"x": 1}
    assert cache.load_or_run("loop", Config(), loop_a, code=loop_a) == {"x": 1}
    assert cache.load_or_run("loop", Config(), loop_b, code=loop_b) == {"x": 2}
    assert calls == ["a", "b"]
    assert "the cell's code changed" in capsys.readouterr().out


# ------------------------------------------------------------ 14. pruning_study's reference, computed independently
def test_pruning_study_reference_and_grid(monkeypatch):
    """The curve holds 0.75, and its reference is the dense network given the same
    retraining phase (retrain_epochs at retrain_lr, nothing pruned), recomputed
    here from the study's own checkpoint; ratio 0 prunes nothing, so its point
    after retraining is that reference too."""
    from packnet_edu.train import evaluate_task, fit, loader_for, trainable_parameters
    monkeypatch.setenv("PACKNET_FAST", "1")
    assert 0.75 in cache.pruning_ratios()
    monkeypatch.setenv("PACKNET_FAST", "0")
    assert 0.75 in cache.pruning_ratios()
    cfg = Config(tasks=("digits",), epochs=1, retrain_epochs=1, max_train=300, width=4, lr=0.05, retrain_lr=0.01)
    study = cache.pruning_study(cfg, [0.0, 0.75])
    zero, r75 = study["curve"]
    data = cache.tasks_for(cfg)[0]
    test_loader = loader_for(data.test, cfg, train=False)
    model, engine = ck.restore(study["checkpoint"])
    assert evaluate_task(model, engine, 1, test_loader, cfg.device) == study["dense"] == zero["before"]
    fit(model, 1, data, cfg, cfg.retrain_epochs, cfg.retrain_lr, trainable_parameters(model, 1), engine, desc="ref")
    reference = evaluate_task(model, engine, 1, test_loader, cfg.device)
    assert reference != study["dense"], "the retraining phase changed nothing: the check below would be empty"
    assert study["dense_same_epochs"] == reference == zero["after"]
    assert r75["dense_same_epochs"] == reference and r75["before"] < study["dense"]
    assert set(r75) == {"ratio", "before", "after", "dense_same_epochs"} and r75["ratio"] == 0.75


@pytest.mark.parametrize("value, fast", [("1", True), ("true", True), ("YES", True), ("on", True),
                                         ("", False), ("0", False), ("false", False), ("No", False)])
def test_fast_mode_values(monkeypatch, value, fast):
    monkeypatch.setenv("PACKNET_FAST", value)
    assert cache.fast_mode() is fast


def test_thread_count_is_part_of_the_key():
    """CPU results differ in their last bits between thread counts: a result made
    with another count is recomputed (notebook 4 compares two runs exactly)."""
    n = torch.get_num_threads()
    k = cache.cache_key("m", Config())
    try:
        torch.set_num_threads(n + 1)
        assert cache.cache_key("m", Config()) != k
        assert f"threads: {n} -> {n + 1}" in "; ".join(cache._differences(k, cache.cache_key("m", Config())))
    finally:
        torch.set_num_threads(n)
    assert cache.cache_key("m", Config()) == k
