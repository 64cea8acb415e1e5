"""What README.md says about `make demo` is what the code does.

The ownership table is checked exactly (it depends only on the layer sizes and
the prune schedule). The accuracy table is checked by rerunning the demo's
config (a minute on 2 cores): within 1 point per task, because another CPU may
round float32 sums differently; on the machine that wrote the README it
matches to the printed digit.
"""
import re
from pathlib import Path

import pytest

from packnet_edu import PackNet
from packnet_edu.report import ownership_table
from packnet_edu.train import Config, make_model, prune_schedule, run_packnet

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
NUM_CLASSES = [10, 10, 10, 10]          # fashion, mnist, animals, digits


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
                      readme_block("Test accuracy (%) of each task, PackNet:"), re.M)
    assert len(rows) == 4, "README's demo table not found"
    result = run_packnet(Config(), verbose=False)
    assert result["task_names"] == [r[1] for r in rows]
    assert all(result["outputs_identical"])
    for j, (_, name, own, final, forgetting, same) in enumerate(rows):
        assert abs(result["matrix"][j][j] - float(own)) <= 1.0, name
        assert abs(result["matrix"][-1][j] - float(final)) <= 1.0, name
        assert float(forgetting) == 0.0 and same == "yes"
        assert result["matrix"][-1][j] == result["matrix"][j][j]     # PackNet: exactly no forgetting


def test_readme_comparison_is_the_recorded_run():
    """The README's comparison table is the recorded `compare` run in
    docs/compare/, exactly as the report renders it (error per task, average,
    backward transfer, memory), and the numbers in the prose under it are that run's."""
    import json
    from packnet_edu.metrics import average_accuracy, backward_transfer
    from packnet_edu.report import comparison_table
    results = json.loads((Path(__file__).resolve().parent.parent / "docs/compare/results.json").read_text())
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
