"""`python -m packnet_edu bench` with a flag it cannot honour ends in one
line saying what to give instead, before any model, file or image is made
(issue 16, item 5)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

CASES = {
    "--device foo": "bench runs on cpu or cuda",
    "--device mps": "bench runs on cpu or cuda",
    "--image-size 8": "give 24 to 31",                          # small_vgg, the default model
    "--image-size 100000": "at most 1024",
    "--model vgg16 --image-size 31": "give 32 or more",        # five halvings: 31 -> 0
    "loader --images 1": "so give at least",
    "loop --images 1": "so give at least",
}
if not torch.cuda.is_available():
    CASES["--device cuda"] = "no CUDA GPU is visible"
    CASES["--device cuda:0"] = "no CUDA GPU is visible"


def _refusal(flags, capsys) -> str:
    """The last line `bench FLAGS` ends with, run in this process (a subprocess
    per case would cost an import of torch each): it must stop with SystemExit
    before anything is timed or printed."""
    from packnet_edu import bench
    from packnet_edu.cli import main
    made = []
    real = bench.make_jpegs
    bench.make_jpegs = lambda *a, **k: made.append(a) or real(*a, **k)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["bench", *flags.split(), "--steps", "1", "--trials", "1"])
    finally:
        bench.make_jpegs = real
    err = capsys.readouterr()
    assert exc.value.code != 0 and not err.out and not made, (err.out, made)
    text = err.err.strip() if exc.value.code == 2 else str(exc.value.code)   # 2: argparse printed it
    return text.splitlines()[-1]


@pytest.mark.parametrize("flags", sorted(CASES))
def test_bad_bench_flag_is_one_line_before_any_work(flags, capsys):
    last = _refusal(flags, capsys)
    assert "error" in last and CASES[flags] in last, last


def test_bad_bench_flag_at_the_command_line():
    """The same through a real command line: no traceback, the last line the error."""
    proc = subprocess.run([sys.executable, "-m", "packnet_edu", "bench", "--image-size", "100000"],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not proc.stdout
    assert proc.stderr.strip().splitlines() == ["error: --image-size 100000: at most 1024 (the paper trains at 224)"]


def test_image_size_limits_are_the_models_own():
    """The sizes the check names are the ones the network takes: the smallest
    fits, one less does not (shapes only, on the meta device)."""
    from packnet_edu.bench import _shape_check
    for model, lo in (("vgg16", 32), ("tiny_vgg16", 32)):
        fits = _shape_check(model)
        assert fits(lo) and fits(224) and not fits(lo - 1), model
    fits = _shape_check("small_vgg")
    assert [s for s in range(16, 40) if fits(s)] == list(range(24, 32))
