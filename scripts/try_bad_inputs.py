"""Type wrong flags and broken files at the command line, as a user would, and
sort how each case ends:

  correct      a command that should succeed did what it should
  clear error  refused: non-zero exit, the last line an error message, no
               traceback, and (where the case says what the message must
               name) the right advice
  misleading   refused with a one-line error that gives the wrong advice,
               or refused a command that should have succeeded
  traceback    a Python traceback
  silent       exit 0 where it should have refused, or still running after
               the time limit (it loaded data or trained instead of refusing)
  lost         a file the case protects was changed or deleted

    .venv/bin/python scripts/try_bad_inputs.py          # 20 minutes on a busy 2-core CPU
    .venv/bin/python scripts/try_bad_inputs.py --new    # only issue 15's and 16's cases (6 minutes)

Every case runs `python -m packnet_edu ...` in a fresh process with a
60-second limit; a case that needs a module attribute changed (the animals
file's folder) runs the same `main` through a small `python -c` runner. The
first 68 cases are issue 10's; the rest are issue 16's (each tagged with its
item number) and issue 15's item 11. The exit status is 0 only if every case
ended as expected.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = "--epochs 1 --retrain-epochs 0 --width 4 --max-train 200"   # where an old bug would train
CATEGORIES = ("correct", "clear error", "misleading", "traceback", "silent", "lost")
# `python -c` runner: set module attributes to paths (json {"module:attr": path}), then the CLI
RUNNER = ("import importlib, json, sys; from pathlib import Path\n"
          "for k, v in json.loads(sys.argv[1]).items():\n"
          "    m, a = k.split(':'); setattr(importlib.import_module(m), a, Path(v))\n"
          "from packnet_edu.cli import main; sys.exit(main(sys.argv[2:]))")


@dataclass
class Case:
    args: str
    says: str = ""                  # regex the error line must match (the right advice)
    ok: Optional[Callable[[Path], bool]] = None   # should succeed; checks the effect
    env: Dict[str, str] = field(default_factory=dict)
    patch: Dict[str, str] = field(default_factory=dict)      # module attributes set to paths (RUNNER)
    keep: Tuple[str, ...] = ()      # files that must come through unchanged
    setup: Optional[Callable[[Path], None]] = None
    tag: str = ""

    @property
    def expected(self) -> str:
        return "correct" if self.ok else "clear error"


OLD_CASES = [
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


def _is_export(path: Path) -> bool:
    from packnet_edu import checkpoint as ck
    try:
        ck.load_exported(path)
        return True
    except (ck.CheckpointError, RuntimeError, KeyError):
        return False


def _results_rewritten(run: Path) -> bool:
    """results.json is back, equal to the original, and the checkpoint untouched (nothing trained)."""
    return (run / "results.json").is_file() and \
        (run / "results.json").read_bytes() == (run.parent / "finished.results.json").read_bytes() and \
        (run / "checkpoint.pt").read_bytes() == (run.parent / "finished.checkpoint.pt").read_bytes()


def new_cases() -> list:
    ro_out = "{T}/ro/task1.pt"
    return [
        # 1: export never replaces its input, another run's checkpoint or a user's file
        Case("export {T}/run/checkpoint.pt --task 1 --out {T}/run/checkpoint.pt",
             says="checkpoint being exported", keep=("run/checkpoint.pt",), tag="16.1"),
        Case("export {T}/run/checkpoint.pt --task 1 --out {T}/run2/checkpoint.pt",
             says="already exists.*--overwrite", keep=("run2/checkpoint.pt",), tag="16.1"),
        Case("export {T}/run/checkpoint.pt --task 1 --out {T}/notes.txt",
             says="already exists.*--overwrite", keep=("notes.txt",), tag="16.1"),
        Case("export {T}/run/checkpoint.pt --task 1 --out {T}/run/checkpoint.pt --overwrite",
             says="checkpoint being exported", keep=("run/checkpoint.pt",), tag="16.1"),
        Case("export {T}/run/checkpoint.pt --task 1 --out {T}/task1.pt", ok=lambda t: _is_export(t / "task1.pt"),
             keep=("run/checkpoint.pt",), tag="16.1"),
        # 2: run and compare never replace each other's folders
        Case(f"run --out {{T}}/cmp --overwrite {TINY}", says="holds a comparison", keep=("cmp/results.json",),
             tag="16.2"),
        Case(f"run --out {{T}}/cmp {TINY}", says="holds a comparison", keep=("cmp/results.json",), tag="16.2"),
        Case(f"compare --out {{T}}/run --overwrite --tasks digits digits --methods finetune {TINY}",
             says="holds a run", keep=("run/checkpoint.pt", "run/results.json"), tag="16.2"),
        # 3: weights that are not the network's state dict
        *[Case(f"run --model {m} --weights {{T}}/weights/{f} --tasks digits {TINY}", says="not a .* state dict",
               tag="16.3") for m, f in (("resnet50", "small.pt"), ("resnet50", "model.pt"),
                                        ("resnet50", "plain.zip"), ("resnet50", "list.pt"),
                                        ("densenet121", "small.pt"))],
        # 4: the grayscale network on the image datasets
        Case("run --data-root {T}/paper --tasks flowers", says="grayscale.*--model vgg16", tag="16.4"),
        # 6: a Fashion-MNIST test split of another size
        Case(f"run --tasks fashion {TINY}", env={"PACKNET_FASHION_MNIST": "{T}/fashion32"}, says="32x32",
             tag="16.6"),
        # 9: a named Fashion-MNIST folder that is missing or incomplete
        Case(f"run --tasks fashion {TINY}", env={"PACKNET_FASHION_MNIST": "{T}/missing"},
             says="PACKNET_FASHION_MNIST", tag="16.9"),
        Case(f"run --tasks fashion {TINY}", env={"PACKNET_FASHION_MNIST": "{T}/fashion_partial"},
             says="lacks t10k-images", tag="16.9"),
        # 10: animals stored as floats in [0, 1]
        Case(f"run --tasks animals {TINY}", patch={"packnet_edu.data:DATA_DIR": "{T}/animals"},
             says="float.*uint8", tag="16.10"),
        # 11: a prune sweep with one task
        Case(f"compare --tasks digits --sweep 0.5 --methods packnet {TINY}", says="one task", tag="16.11"),
        # 13: GPU decoding without a GPU
        Case(f"run --decode gpu --tasks digits {TINY}", says="--decode gpu.*--device cuda", tag="16.13"),
        # 14: a comparison killed mid-way: the advice names a flag compare has
        Case(f"compare --tasks digits digits --out {{T}}/killed_cmp {TINY}", says="no --resume.*--overwrite",
             keep=("killed_cmp/packnet/checkpoint.pt",), tag="16.14"),
        # 15: --resume of a checkpoint whose config lacks a field
        Case(f"run --resume --out {{T}}/oldcfg --tasks digits digits {TINY}", says="decode",
             keep=("oldcfg/checkpoint.pt",), tag="16.15"),
        # 17: a read-only disk (a read-only tmpfs where this process may mount one)
        Case(f"export {{T}}/run/checkpoint.pt --task 1 --out {ro_out}", says=r"cannot write \S*/ro/task1\.pt\b",
             tag="16.17"),
        # 5: bench flags that once failed deep inside torch
        *[Case(f"bench {a}", tag="16.5") for a in ("--device foo", "--device mps", "--image-size 8",
                                                   "--image-size 100000", "loader --images 1")],
        # issue 15, 11: a finished run whose results.json was lost or cut off
        Case(f"run --resume --out {{T}}/finished --tasks digits digits {TINY}",
             setup=lambda t: (t / "finished" / "results.json").unlink(),
             ok=lambda t: _results_rewritten(t / "finished"), keep=("finished/checkpoint.pt",), tag="15.11"),
        Case(f"run --resume --out {{T}}/finished --tasks digits digits {TINY}",
             setup=lambda t: (t / "finished" / "results.json").write_text('{"config": {"tas'),
             ok=lambda t: _results_rewritten(t / "finished"), keep=("finished/checkpoint.pt",), tag="15.11"),
    ]


# ------------------------------------------------------------------ fixtures
# Files a case may damage on a faulty version: put back before every case.
RESET = ("run/checkpoint.pt", "run/results.json", "run2/checkpoint.pt", "notes.txt", "cmp/results.json",
         "killed_cmp/packnet/checkpoint.pt", "oldcfg/checkpoint.pt")


def _idx(array) -> bytes:
    import numpy as np
    return gzip.compress(bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
                         + np.asarray(array, dtype=np.uint8).tobytes())


def _fashion(folder: Path, test_size: int = 28, skip: str = "") -> None:
    import numpy as np
    folder.mkdir(parents=True)
    for split, size in (("train", 28), ("t10k", test_size)):
        if f"{split}-images" != skip:
            (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(np.zeros((200, size, size))))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(200) % 10))


def _checkpoint(path: Path, config: dict, progress=None) -> None:
    """A small_vgg checkpoint with task 1 finished (made here: no data, no training)."""
    import torch

    from packnet_edu import checkpoint as ck
    from packnet_edu import small_vgg
    from packnet_edu.engine import PackNet
    torch.manual_seed(0)
    model = small_vgg([10, 10], width=config["width"])
    engine = PackNet(model.trunk, heads=model.heads)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    ck.save(ck.make_checkpoint(model, engine, config, ["digits", "digits"], progress), path)


def _mount_read_only(folder: Path) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True, check=False).returncode == 0


def fixtures(tmp: Path, env: dict) -> Tuple[dict, bool]:
    """Broken files and folders the cases point at. Returns the substitutions
    and whether a read-only folder could be mounted."""
    import numpy as np
    import torch

    from packnet_edu import small_vgg
    from packnet_edu.config import Config
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
    # issue 16
    tiny = Config(tasks=("digits", "digits"), epochs=1, retrain_epochs=0, width=4, max_train=200).to_dict()
    for run in ("run", "run2"):
        (tmp / run).mkdir()
        _checkpoint(tmp / run / "checkpoint.pt", tiny)
    (tmp / "run" / "results.json").write_text(json.dumps({"matrix": [[50.0]]}))
    (tmp / "notes.txt").write_text("the user's notes")
    (tmp / "cmp").mkdir()
    (tmp / "cmp" / "results.json").write_text(json.dumps(
        {"config": tiny, "task_names": ["digits", "digits"], "sweep": [],
         "methods": {"finetune": {"matrix": [[50.0, None], [40.0, 60.0]], "memory": 1}}}))
    (tmp / "weights").mkdir()
    torch.save(small_vgg([10], width=2).state_dict(), tmp / "weights" / "small.pt")
    torch.save(torch.nn.Linear(2, 2), tmp / "weights" / "model.pt")
    with zipfile.ZipFile(tmp / "weights" / "plain.zip", "w") as z:
        z.writestr("readme.txt", "not a torch file")
    torch.save([1, 2], tmp / "weights" / "list.pt")
    from packnet_edu import replicas, vgg_data
    vgg_data.prepare_flowers(replicas.make_flowers_replica(tmp / "src", num_classes=2), tmp / "paper", workers=1)
    _fashion(tmp / "fashion32", test_size=32)
    _fashion(tmp / "fashion_partial", skip="t10k-images")
    (tmp / "animals").mkdir()
    np.savez(tmp / "animals" / "animal_silhouettes.npz", images=np.random.default_rng(0).random((200, 28, 28)),
             labels=np.arange(200) % 10)
    (tmp / "killed_cmp" / "packnet").mkdir(parents=True)
    _checkpoint(tmp / "killed_cmp" / "packnet" / "checkpoint.pt", tiny,
                {"phase": "end", "task": 1, "matrix": [], "val": [], "probes": []})
    (tmp / "oldcfg").mkdir()
    _checkpoint(tmp / "oldcfg" / "checkpoint.pt", {k: v for k, v in tiny.items() if k != "decode"},
                {"phase": "end", "task": 1, "matrix": [], "val": [], "probes": []})
    # a finished run of the code under test (a few seconds), kept to compare with what --resume rewrites
    done = subprocess.run([sys.executable, "-m", "packnet_edu", "run", "--tasks", "digits", "digits",
                           *TINY.split(), "--out", str(tmp / "finished")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the finished-run fixture failed:\n{done.stderr}")
    for name in ("results.json", "checkpoint.pt"):
        shutil.copy(tmp / "finished" / name, tmp / f"finished.{name}")
    for name in RESET:
        (tmp / "pristine" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / name, tmp / "pristine" / name)
    return {"T": str(tmp)}, _mount_read_only(tmp / "ro")


# ------------------------------------------------------------------ running and sorting
def _digest(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def outcome(case: Case, proc: Optional[subprocess.CompletedProcess], lost: bool, tmp: Path) -> str:
    if lost:
        return "lost"
    if proc is None:
        return "silent"               # still running: it went on to load data or train
    text = (proc.stdout + proc.stderr).strip()
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if proc.returncode == 0:
        return "correct" if case.ok and case.ok(tmp) else "silent"
    last = text.splitlines()[-1] if text else ""
    if case.ok or "error" not in last.lower() or (case.says and not re.search(case.says, last)):
        return "misleading"
    return "clear error"


def run_case(number: int, case: Case, tmp: Path, subst: dict, env: dict) -> Tuple[str, str]:
    args = [a.format(**subst) for a in case.args.split()]
    if args[0] in ("run", "compare") and "--out" not in args:
        args += ["--out", f"{tmp}/out-{number}"]           # a new folder for each case
    for name in RESET:                  # each case starts from the same files, whatever the last one did
        shutil.copy(tmp / "pristine" / name, tmp / name)
    if case.setup:
        case.setup(tmp)
    kept = {p: _digest(tmp / p) for p in case.keep}
    cmd = [sys.executable, "-m", "packnet_edu", *args] if not case.patch else \
        [sys.executable, "-c", RUNNER, json.dumps({k: v.format(**subst) for k, v in case.patch.items()}), *args]
    env = dict(env, **{k: v.format(**subst) for k, v in case.env.items()})
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        last = ((proc.stdout + proc.stderr).strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        proc, last = None, "(still running after 60 s)"
    lost = any(_digest(tmp / p) != d for p, d in kept.items())
    return outcome(case, proc, lost, tmp), last.replace(str(tmp), "T")


def main() -> int:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    counts = {c: 0 for c in CATEGORIES}
    wrong = []
    tmp = Path(tempfile.mkdtemp(prefix="try_bad_inputs-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))     # still unmount and clean up
    try:
        subst, read_only = fixtures(tmp, env)
        cases = ([] if "--new" in sys.argv else [Case(c, tag="10") for c in OLD_CASES]) + new_cases()
        if not read_only:       # no tmpfs to mount here (not root): that case cannot be set up
            cases = [c for c in cases if "/ro/" not in c.args]
            print("(skipped the read-only disk case: cannot mount a read-only tmpfs here)")
        for number, case in enumerate(cases):
            got, last = run_case(number, case, tmp, subst, env)
            counts[got] += 1
            if got != case.expected:
                wrong.append(case)
            mark = "" if got == case.expected else f"  <- expected {case.expected}"
            extra = " ".join(f"{k}={v}" for k, v in {**case.env, **case.patch}.items())
            print(f"{got:>12}  [{case.tag:>5}] {case.args.replace('{T}', 'T')} {extra.replace('{T}', 'T')}"
                  f"{mark}\n{'':>22}{last[:160]}", flush=True)
    finally:
        if os.path.ismount(tmp / "ro"):
            subprocess.run(["umount", str(tmp / "ro")], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'outcome':<12} {'cases':>5}")
    for c in CATEGORIES:
        print(f"{c:<12} {counts[c]:>5}")
    print(f"{'all':<12} {len(cases):>5}   ({len(cases) - len(wrong)} as expected: a clear error for each bad "
          f"input, success for each good one)")
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
