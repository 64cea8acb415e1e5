"""The notebooks' cache: keyed by config, version and source; never stale silently."""
import json

import pytest
import torch

from packnet_edu import cache
from packnet_edu import checkpoint as ck
from packnet_edu.engine import PackNet
from packnet_edu.models import small_vgg
from packnet_edu.train import Config


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


def test_tampered_entry_is_not_used(tmp_cache, capsys):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    meta = next(tmp_cache.glob("m-*/meta.json"))
    data = json.loads(meta.read_text())
    data["key"]["config"]["epochs"] = 99
    meta.write_text(json.dumps(data))
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2
    assert "unusable" in capsys.readouterr().out


def test_refresh(monkeypatch):
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn)
    monkeypatch.setenv("PACKNET_REFRESH", "1")
    cache.load_or_run("m", Config(), fn)
    assert len(calls) == 2


def test_extra_is_part_of_the_key():
    fn, calls = counter()
    cache.load_or_run("m", Config(), fn, extra={"ratios": [0.5]})
    cache.load_or_run("m", Config(), fn, extra={"ratios": [0.5, 0.9]})
    assert len(calls) == 2


def test_checkpoint_and_tensors_round_trip(tmp_cache):
    model = small_vgg([10, 3])
    engine = PackNet(model.trunk)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    snap = {"label": "x", "weight": torch.randn(2, 2), "owner": torch.ones(2, 2, dtype=torch.uint8)}

    def fn():
        return {"checkpoint": ck.make_checkpoint(model, engine, Config().to_dict(), ["a", "b"]),
                "snapshots": [snap], "matrix": [[1.0]]}
    first = cache.load_or_run("p", Config(), fn)
    again = cache.load_or_run("p", Config(), lambda: pytest.fail("should load"))
    for res in (first, again):
        m, e = cache.restore(res)
        assert torch.equal(e.owner["conv1.weight"], engine.owner["conv1.weight"])
        assert torch.equal(res["snapshots"][0]["weight"], snap["weight"])
        assert res["checkpoint_path"].endswith("checkpoint.pt")
    folder = next(tmp_cache.glob("p-*"))
    assert (folder / "checkpoint.pt").is_file() and (folder / "result.pt").is_file()


def test_json_for_plain_results(tmp_cache):
    cache.load_or_run("j", Config(), lambda: {"matrix": [[1.0]]})
    assert next(tmp_cache.glob("j-*/result.json")).is_file()


def test_fast_mode_config(monkeypatch):
    monkeypatch.setenv("PACKNET_FAST", "1")
    fast = cache.notebook_config()
    assert cache.fast_mode() and fast.epochs == 1 and fast.max_train <= 2000
    assert cache.eval_cap() is not None
    k_fast = cache.cache_key("m", fast)
    monkeypatch.setenv("PACKNET_FAST", "0")
    full = cache.notebook_config()
    assert not cache.fast_mode() and full == Config()
    assert cache.cache_key("m", full) != k_fast
    assert cache.notebook_config(width=8).width == 8
    with pytest.raises(TypeError):
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


def test_pruning_study_reference_and_grid(monkeypatch):
    """The curve holds 0.75, and its reference is the dense network given the same
    retraining phase: exactly the ratio-0 point after retraining."""
    monkeypatch.setenv("PACKNET_FAST", "1")
    assert 0.75 in cache.pruning_ratios()
    monkeypatch.setenv("PACKNET_FAST", "0")
    assert 0.75 in cache.pruning_ratios()
    cfg = Config(tasks=("digits",), epochs=1, retrain_epochs=1, max_train=300, width=4)
    study = cache.pruning_study(cfg, [0.0, 0.75])
    zero, r75 = study["curve"]
    assert zero["before"] == study["dense"]
    assert zero["after"] == study["dense_same_epochs"] == r75["dense_same_epochs"]
    assert set(r75) == {"ratio", "before", "after", "dense_same_epochs"} and r75["ratio"] == 0.75


@pytest.mark.parametrize("value, fast", [("1", True), ("true", True), ("YES", True), ("on", True),
                                         ("", False), ("0", False), ("false", False), ("No", False)])
def test_fast_mode_values(monkeypatch, value, fast):
    monkeypatch.setenv("PACKNET_FAST", value)
    assert cache.fast_mode() is fast


def test_thread_count_is_part_of_the_key():
    """CPU results differ in their last bits between thread counts: a result made
    with another count is recomputed (notebook 4 compares two runs exactly)."""
    import torch
    n = torch.get_num_threads()
    k = cache.cache_key("m", Config())
    try:
        torch.set_num_threads(n + 1)
        assert cache.cache_key("m", Config()) != k
        assert "threads: %d -> %d" % (n, n + 1) in "; ".join(cache._differences(k, cache.cache_key("m", Config())))
    finally:
        torch.set_num_threads(n)
    assert cache.cache_key("m", Config()) == k
