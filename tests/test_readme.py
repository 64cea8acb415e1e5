"""What README.md says about `make demo` and `compare` is what the code does.

The ownership table is checked exactly (it depends only on the layer sizes and
the prune schedule). The accuracy table is checked by rerunning the demo's
config (a minute on 2 cores): within 1 point per task, because another CPU may
round float32 sums differently; on the machine that wrote the README it
matches to the printed digit.

The comparison is a recorded run (docs/compare, 4 minutes to redo): its
results.json names the code, torch, torchvision and data files that produced
it (packnet_edu.provenance), and a test fails as soon as any of them differs
from what is here, so the README can never show numbers that the current code
would not compute. Its memory and mask-bit rows are recomputed here from the
networks' shapes.
"""
import json
import math
import re
from pathlib import Path

import pytest

from packnet_edu import PackNet, cache, provenance
from packnet_edu.report import ownership_table
from packnet_edu.train import Config, make_model, prune_schedule, run_packnet

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NUM_CLASSES = [10, 10, 10, 10]          # fashion, mnist, animals, digits
RECORD = ROOT / "docs" / "compare" / "results.json"
REGENERATE = "python scripts/make_figures.py --compare (4 minutes on 2 cores)"


def readme_block(title: str) -> str:
    """The lines of the demo output block that follow `title`, up to a blank line."""
    start = README.index(title) + len(title) + 1
    return README[start:].split("\n\n")[0].split("\n```")[0].rstrip()


def test_readme_ownership_table_is_the_schedule():
    cfg = Config()
    model = make_model(cfg, NUM_CLASSES)
    engine = PackNet(model.trunk)
    for ratio in prune_schedule(cfg.prune, len(cfg.tasks)):
        engine.start_task()
        if ratio:
            engine.prune(ratio)
        engine.end_task()
    ours = ownership_table(engine.owner, list(cfg.tasks))
    theirs = readme_block("Weights each task owns, per layer (count and share):")
    assert [l.rstrip() for l in ours.splitlines()] == [l.rstrip() for l in theirs.splitlines()]


@pytest.mark.slow
def test_readme_accuracy_table_is_the_demo():
    rows = re.findall(r"^(\d):(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(yes|NO)\s*$",
                      readme_block("Test accuracy (%) of each task, PackNet:"), re.MULTILINE)
    assert len(rows) == 4, "README's demo table not found"
    result = run_packnet(Config(), verbose=False)
    assert result["task_names"] == [r[1] for r in rows]
    assert all(result["outputs_identical"])
    for j, (_, name, own, final, forgetting, same) in enumerate(rows):
        assert abs(result["matrix"][j][j] - float(own)) <= 1.0, name
        assert abs(result["matrix"][-1][j] - float(final)) <= 1.0, name
        assert float(forgetting) == 0.0 and same == "yes"
        assert result["matrix"][-1][j] == result["matrix"][j][j]     # PackNet: exactly no forgetting


def recorded() -> dict:
    return json.loads(RECORD.read_text())


def record_data_files(results: dict) -> list:
    return [p for paths in cache.data_files(Config(**results["config"])).values() for p in paths]


def test_the_recorded_comparison_is_what_the_current_code_computes():
    """docs/compare/results.json carries the provenance of the run that wrote it;
    any change since (a module `compare` runs, torch, torchvision, the data) fails here."""
    results = recorded()
    why = provenance.stale(results.get("provenance"), data_files=record_data_files(results))
    assert not why, (f"docs/compare was made by other code or data ({'; '.join(why)}): record it again with "
                     f"{REGENERATE}, then check the numbers in README.md's prose under the table")
    assert results["provenance"]["entry"] == "experiments"
    assert f"<!-- recorded by code {results['provenance']['code']} -->" in README, \
        "README.md's comparison must name the code of the run it shows (the HTML comment under its table)"


def test_a_stale_record_is_caught(tmp_path, monkeypatch):
    """The check above can fail: a changed computing module, torch version or data file is named."""
    files = record_data_files(recorded())
    rec = provenance.record("experiments", files)
    assert provenance.stale(rec, data_files=files) == []
    assert provenance.stale(rec, data_files=files) == provenance.stale(json.loads(json.dumps(rec)), data_files=files)
    edited = dict(rec, modules={**rec["modules"], "engine.py": "0" * 16})
    assert "engine.py changed" in provenance.stale(edited)
    assert any(w.startswith("torch ") for w in provenance.stale(dict(rec, torch="0.1")))
    missing = dict(rec, modules={k: v for k, v in rec["modules"].items() if k != "train.py"})
    assert "train.py is new in what it runs" in provenance.stale(missing)
    other = tmp_path / files[0].name
    other.write_bytes(b"other data")
    assert any("data files differ" in w for w in provenance.stale(rec, data_files=[other] + files[1:]))
    assert provenance.stale({"config": {}}) == ["it carries no provenance (the code that produced it is unknown)"]


def test_recorded_memory_and_mask_bits_are_recomputed():
    """The memory row and the owner-map bits do not depend on training: they are
    recomputed here from the networks' shapes (their state as stored: float32
    values, int64 BatchNorm counters; for PackNet ceil(log2(T + 1)) bits per
    trunk weight) and must equal the record's."""
    results = recorded()
    cfg = Config(**results["config"])
    num_tasks = len(results["task_names"])
    model = make_model(cfg, NUM_CLASSES)

    def size(module):
        state = module.state_dict().values()
        return sum(t.numel() for t in state), sum(t.numel() * t.element_size() for t in state)
    trunk = size(model.trunk)
    heads = [size(h) for h in model.heads]
    values, nbytes = trunk[0] + sum(h[0] for h in heads), trunk[1] + sum(h[1] for h in heads)
    bits = math.ceil(math.log2(num_tasks + 1))
    mask_bytes = sum(bits * math.ceil(o.numel() / 8) for o in PackNet(model.trunk).owner.values())
    one = {"values": values, "bytes": nbytes, "mask_bytes": 0}
    want = {"individual": {"values": values + (num_tasks - 1) * trunk[0],
                           "bytes": nbytes + (num_tasks - 1) * trunk[1], "mask_bytes": 0},
            "finetune": one, "classifier_only": one, "joint": one, "lwf": one,
            "packnet": {"values": values, "bytes": nbytes + mask_bytes, "mask_bytes": mask_bytes}}
    got = {m: results["methods"][m]["memory"] for m in want}
    assert got == want
    assert results["methods"]["packnet"]["mask_bits"] == bits == 3


def test_readme_comparison_is_the_recorded_run():
    """The README's comparison table is the recorded `compare` run in
    docs/compare/, exactly as the report renders it (error per task, average,
    backward transfer, memory), and the numbers in the prose under it are that run's."""
    from packnet_edu.metrics import average_accuracy, backward_transfer
    from packnet_edu.report import comparison_table
    results = recorded()
    methods = ["individual", "finetune", "classifier_only", "joint", "lwf", "packnet"]
    assert list(results["methods"]) == methods
    assert all(results["methods"][m]["memory"]["bytes"] > 0 for m in methods)
    assert comparison_table(results) in README
    avg = {m: average_accuracy(results["methods"][m]["matrix"]) for m in methods}
    bwt = {m: backward_transfer(results["methods"][m]["matrix"]) for m in methods}
    mem = {m: results["methods"][m]["memory"] for m in methods}
    text = " ".join(README.split())
    assert f"Fine-tuning forgets (backward transfer {bwt['finetune']:.2f} points)" in text
    word = "less" if bwt["lwf"] > bwt["finetune"] else "more"
    assert f"forgets {word} ({bwt['lwf']:.2f} points) at the same memory" in text
    assert mem["lwf"]["bytes"] == mem["finetune"]["bytes"]
    assert f"ends {avg['individual'] - avg['packnet']:.2f} points below four separate networks" in text
    assert f"{mem['individual']['bytes'] / mem['packnet']['bytes']:.2f} times the memory" in text
    assert f"{results['methods']['packnet']['mask_bits']} bits of owner map per weight" in text
    sweep = ", ".join(f"{r:g}: {a:.2f}" for r, a in results["sweep"])
    assert f"(same ratio for every task but the last): {sweep}." in text


def test_make_figures_records_the_comparison_with_its_provenance(tmp_path, monkeypatch):
    """`scripts/make_figures.py --compare` (here with a stand-in for the 4-minute
    run) stores the provenance of the code that ran, copies the report, and puts
    the new table and code hash in the README; a change during the run is refused."""
    import importlib.util

    from packnet_edu import experiments
    from packnet_edu.report import comparison_table
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    old = {k: v for k, v in recorded().items() if k != "provenance"}
    new = json.loads(json.dumps(old))
    new["methods"]["packnet"]["matrix"][-1][0] -= 1.0                     # another run's numbers
    dest = tmp_path / "compare"
    dest.mkdir()
    (dest / "results.json").write_text(json.dumps(old))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{comparison_table(old)}\n<!-- recorded by code 0123abcd -->\n\nprose\n")

    def stand_in(cfg, out, overwrite):
        assert cfg == Config() and overwrite
        results = json.loads(json.dumps(new))
        experiments.write_report(results, out)
        return results
    monkeypatch.setattr(experiments, "compare", stand_in)
    make_figures.record_compare(dest, tmp_path / "scratch", readme)
    written = json.loads((dest / "results.json").read_text())
    rec = written.pop("provenance")
    assert rec == provenance.record("experiments", record_data_files(written)) and not provenance.stale(rec)
    assert written["methods"] == new["methods"] and (dest / "report.md").is_file()
    assert all((dest / f).is_file() for f in written["figures"])
    assert readme.read_text() == (f"intro\n\n{comparison_table(new)}\n<!-- recorded by code {rec['code']} -->"
                                  "\n\nprose\n")
    records = iter([rec, dict(rec, code="changed")])
    monkeypatch.setattr(provenance, "record", lambda *a: next(records))
    with pytest.raises(SystemExit, match="changed while `compare` ran"):
        make_figures.record_compare(dest, tmp_path / "scratch2", readme)
