"""The comparison command end to end on a tiny sequence, and the baselines'
schedule. (The metrics are checked on hand-made matrices in test_metrics.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packnet_edu.baselines import task_phases
from packnet_edu.train import Config

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "1", "--retrain-epochs", "1", "--max-train", "400", "--width", "4",
        "--tasks", "mnist", "animals", "digits"]


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "packnet_edu", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TQDM_DISABLE="1"), timeout=timeout)


def test_baselines_get_packnets_schedule_without_the_pruning():
    cfg = Config(epochs=3, retrain_epochs=1, lr=0.01, retrain_lr=0.001)     # paper schedule, 4 tasks
    assert task_phases(cfg, 1, 4) == [(3, 0.01), (1, 0.001)]
    assert task_phases(cfg, 3, 4) == [(3, 0.01), (1, 0.001)]
    assert task_phases(cfg, 4, 4) == [(4, 0.01)]                          # not pruned: all at lr
    first = Config(epochs=3, retrain_epochs=2, first_task_epochs=0)
    assert task_phases(first, 1, 4) == [(0, first.lr), (2, first.retrain_lr)]


@pytest.mark.slow
def test_compare_writes_a_report_that_checks_forgetting(tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", *TINY, "--sweep", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("report.md", "results.json", "matrices.csv", "matrix_packnet.png", "matrix_packnet.svg",
                 "accuracy_vs_ratio.png", "packnet/checkpoint.pt"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    R = {m: v["matrix"] for m, v in res["methods"].items()}
    assert set(R) == {"individual", "finetune", "classifier_only", "joint", "lwf", "packnet"}
    # methods that cannot forget have constant columns; PackNet's is a bit-for-bit check
    for m in ("individual", "classifier_only", "packnet"):
        for j in range(3):
            assert len({row[j] for row in R[m][j:]}) == 1, (m, j)
    assert res["methods"]["packnet"]["outputs_identical"] == [True, True, True]
    assert len(R["joint"]) == 1 and None not in R["joint"][0]
    assert res["methods"]["packnet"]["mask_bits"] == 2                    # 3 tasks: ceil(log2 4)
    assert [r for r, _ in res["sweep"]] == [0.5]
    report = (out / "report.md").read_text()
    assert "bit-identical (torch.equal)" in report and "(3/3 tasks)" in report
    assert "2 bit(s) per weight = 0.250 bytes per weight" in report
    lines = (out / "matrices.csv").read_text().splitlines()
    assert lines[0] == "method,after_task,on_task,accuracy"
    assert len(lines) == 1 + 5 * 6 + 3      # 5 sequential methods x 6 cells (j <= i), joint 3

    # `report` rewrites the same report from results.json alone
    (out / "report.md").unlink()
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "report.md").read_text() == report

    r = cli("info", str(out / "packnet" / "checkpoint.pt"))
    assert r.returncode == 0 and "mnist" in r.stdout and "2 bit(s) per weight" in r.stdout


def test_report_of_a_missing_file_says_what_to_pass(tmp_path):
    r = cli("report", str(tmp_path / "nothing.json"), timeout=60)
    assert r.returncode != 0 and "results.json that `compare` wrote" in r.stderr
    assert "Traceback" not in r.stderr
