"""Type wrong flags and broken files at the command line, as a user would, and
count how each ends: a clear error (non-zero exit, the last line an error
message, no traceback), a traceback, or a silent success.

    .venv/bin/python scripts/try_bad_inputs.py        # about 5 minutes on 2 cores

Every case runs `python -m packnet_edu ...` in a fresh process with a
60-second limit: a case that starts training instead of refusing runs out of
time and counts as "not refused up front".
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fixtures(tmp: Path) -> dict:
    """Broken files and folders the cases point at."""
    (tmp / "garbage.pt").write_bytes(os.urandom(4096))
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.json").write_text("{not json")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "badkey.json").write_text('{"epochz": 3}')
    (tmp / "badval.json").write_text('{"channels_last": "false"}')
    (tmp / "results.json").write_text('{"config": {}, "matrix": []}')
    (tmp / "a_file").write_text("x")
    (tmp / "dir").mkdir()
    (tmp / "empty_run").mkdir()
    return {"T": str(tmp)}


CASES = [
    # run: flags
    "run --lr nan", "run --lr -1", "run --lr abc", "run --batch-size 0", "run --batch-size x",
    "run --width -2", "run --max-train -5", "run --max-train lots", "run --momentum 2",
    "run --weight-decay -1", "run --seed -1", "run --seed 1.5", "run --epochs -1", "run --epochs 0",
    "run --lr-step 0", "run --amp ture", "run --channels-last maybe", "run --prune 0,0.5,0.5,0",
    "run --prune 1.2", "run --prune x", "run --prune 0.5,0.5", "run --device gpu", "run --device cuda",
    "run --tasks fashion cifar", "run --tasks", "run --retrain-lr inf", "run --workers -1",
    "run --model resnet9000", "run --data-root {T}/dir --tasks cubs",
    "run --weights {T}/garbage.pt --model vgg16",
    # run: config files and folders
    "run --config no-such-preset", "run --config {T}/text.json", "run --config {T}/list.json",
    "run --config {T}/badkey.json", "run --config {T}/badval.json", "run --config {T}/dir",
    "run --out {T}/a_file", "run --out /proc/no_such_dir/run",
    "run --resume --out {T}/empty_run", "run --resume --out {T}/nothing_here",
    # compare
    "compare --sweep 1.0", "compare --sweep abc", "compare --methods bogus", "compare --lr nan",
    # export / info / report
    "export {T}/garbage.pt --task 1 --out {T}/x.pt", "export {T}/empty.pt --task 1 --out {T}/x.pt",
    "export {T}/missing.pt --task 1 --out {T}/x.pt", "export {T}/garbage.pt --task abc --out {T}/x.pt",
    "info {T}/garbage.pt", "info {T}/missing.pt", "info {T}/dir", "info {T}/text.json",
    "report {T}/missing.json", "report {T}/text.json", "report {T}/results.json", "report {T}/dir",
    # bench
    "bench --device cuda", "bench --batch 0", "bench --steps -1", "bench --model nope",
    # data
    "data prepare bogus --src {T}/dir --dst {T}/out", "data prepare cubs --src {T}/missing --dst {T}/out",
    "data prepare cubs --src {T}/dir --dst {T}/dir/inner", "data check --root {T}/missing",
    "data check --root {T}/dir", "data prepare flowers --src {T}/a_file --dst {T}/out2",
    # the parser itself
    "frobnicate", "run --no-such-flag",
]


def classify(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stdout + proc.stderr).strip()
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if proc.returncode == 0:
        return "exit 0"
    last = text.splitlines()[-1] if text else ""
    return "clear error" if "error" in last.lower() else "unclear"


def main() -> int:
    counts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        subst = fixtures(Path(tmp))
        for case in CASES:
            args = [a.format(**subst) for a in case.split()]
            if args[0] in ("run", "compare") and "--out" not in args:
                args += ["--out", f"{tmp}/out-{len(counts)}-{abs(hash(case))}"]
            try:
                proc = subprocess.run([sys.executable, "-m", "packnet_edu", *args], cwd=ROOT, env=env,
                                      capture_output=True, text=True, timeout=60)
                kind = classify(proc)
                last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
            except subprocess.TimeoutExpired:
                kind, last = "not refused up front", ["(still running after 60 s)"]
            counts[kind] = counts.get(kind, 0) + 1
            print(f"{kind:>20}  {case.replace(tmp, 'T')}\n{'':>22}{last[0].replace(tmp, 'T')[:150]}")
    print(f"\n{len(CASES)} bad inputs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0 if set(counts) == {"clear error"} else 1


if __name__ == "__main__":
    sys.exit(main())
