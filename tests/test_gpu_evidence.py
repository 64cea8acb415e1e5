"""scripts/gpu_evidence.py, the one command a GPU machine runs: its --smoke
mode runs every step on the CPU at tiny sizes and must leave every file, with
the protection exact and the probe logits bit-identical across two processes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_evidence.py"

pytestmark = pytest.mark.timeout(420)


def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "evidence"
    # --budget: the script's own 290 s assume a CPU to itself; CI may share it
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--smoke", "--budget", "380"],
                          capture_output=True, text=True, timeout=400)
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    for name in ("env", "bench32", "bench64", "bench32_restore", "loader", "loop", "probe", "tests", "offline"):
        assert f"| {name} | ok |" in summary, name
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["smoke"] is True and "cudnn" in env
    b32, b64, restore = (json.loads((out / f"{n}.json").read_text()) for n in ("bench32", "bench64", "bench32_restore"))
    assert b32["weight_decay"] == 0 and b32["protection_mode"] == "mask" and restore["protection_mode"] == "restore"
    assert all(b["task1_weights_exact_after_protected_step"] for b in (b32, b64, restore))
    assert restore["protection_bytes_per_step"] > b32["protection_bytes_per_step"] > 0
    loader = json.loads((out / "loader.json").read_text())["runs"]
    assert [r["decode"] for r in loader] == ["pil", "cpu", "gpu"] and all(r["images_per_s"] > 0 for r in loader)
    loop = json.loads((out / "loop.json").read_text())["runs"]
    assert [r["decode"] for r in loop] == ["cpu", "gpu"] and all(r["images_per_s"] > 0 for r in loop)
    probe = json.loads((out / "probe.json").read_text())
    assert probe["processes"] == 2 and probe["outputs_identical"] == [True, True]
    assert "skipped" in (out / "tests.txt").read_text() or torch.cuda.is_available()
    results = json.loads((out / "offline" / "results.json").read_text())
    assert all(results["outputs_identical"]) and "Test accuracy" in (out / "offline.txt").read_text()


def test_refuses_a_folder_holding_something(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--smoke"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "not empty" in proc.stderr and (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_says_to_use_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr and "--smoke" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
