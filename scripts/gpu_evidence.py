"""Every GPU figure of the VGG-16 pipeline in one folder, in one command.

    python scripts/gpu_evidence.py OUT            # on a CUDA machine: about 6-9 minutes
    python scripts/gpu_evidence.py OUT --smoke    # every step on the CPU at tiny sizes (the tests run it)

Made for a GPU machine lent for minutes, with no internet and no datasets:
it uses the Python it is started with and the torch that Python imports
(installs nothing from the network), imports packnet_edu from this checkout
(no install needed), and writes into OUT:

  env.json           GPU, driver, torch, CUDA, cuDNN, torchvision, cores, missing packages
  bench32.json/.txt  protected vs plain VGG-16 step at the paper preset's batch (32, SGD,
                     weight decay 0): images/s, ratio, TFLOP/s, protection mode and bytes per step
  bench64.json/.txt  the same at batch 64
  bench32_restore    the same at batch 32 with weight decay 5e-4 (the general restore mode)
  loader.json/.txt   loader images/s with the default workers on synthetic 500x375 JPEGs,
                     for the "pil" (reference), "cpu" and "gpu" (nvJPEG) decode paths
  loop.json/.txt     the real training loop (train_one_epoch, protected) fed by the real
                     loader from those JPEGs, CPU and GPU decoding
  probe.json/.txt    old tasks' probe logits compared across two processes (--resume)
  tests.txt          the CUDA cases of the tests (pytest -k cuda tests/test_vgg16.py)
  offline/           the offline four-task sequence on VGG-16 (32x32, bf16, channels_last):
                     results.json, checkpoint.pt; its accuracy table in offline.txt
  summary.md         one line per step: status, seconds, the figures

Each step runs in its own process with a time limit, so one failure or hang
costs only that step; the whole run stops within --budget seconds.

What the machine needs besides a CUDA torch and torchvision (carry what is missing):
- pure-Python packages: tqdm, scikit-learn, mlxtend, pytest; give a folder of
  wheels with --wheels DIR (made where there is internet: `pip download
  --no-deps -d DIR tqdm mlxtend pytest pytest-timeout`); they are installed
  from it with --no-index into OUT/.site, nothing else is touched;
- Fashion-MNIST (task 1 of the offline sequence): the four *-ubyte.gz files
  in data/FashionMNIST/raw/ of this checkout, or a folder named by
  PACKNET_FASHION_MNIST (on Debian: apt-get install dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEEDED = ("torch", "torchvision", "numpy", "PIL", "tqdm", "sklearn", "mlxtend", "pytest")
PIP_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn"}


# ------------------------------------------------------------------ steps (run in a child process)
def _write(out: Path, name: str, result, text: str = "") -> None:
    from packnet_edu.fileio import atomic_write
    atomic_write(out / f"{name}.json", json.dumps(result, indent=1, default=str))
    if text:
        atomic_write(out / f"{name}.txt", text)


def step_env(out: Path, smoke: bool) -> dict:
    import importlib.util
    import torch
    import torchvision
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
           "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "missing_packages": [m for m in NEEDED if importlib.util.find_spec(m) is None], "smoke": smoke}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        p = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
        env["capability"] = f"{p.major}.{p.minor}"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["driver"] = f"unknown ({type(err).__name__})"
    try:
        env["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    _write(out, "env", env)
    return env


def _bench_kwargs(smoke: bool) -> dict:
    if smoke:
        return dict(model_name="tiny_vgg16", device="cpu", image_size=32, steps=1, trials=1,
                    amp=False, channels_last=True)
    return dict(model_name="vgg16", device="cuda", image_size=224, steps=20, trials=5, amp=True,
                channels_last=True)


def _bench(out: Path, smoke: bool, name: str, batch: int, weight_decay: float = 0.0) -> dict:
    import contextlib
    import io
    from packnet_edu import bench
    r = bench.bench_step(batch_size=4 if smoke else batch, weight_decay=weight_decay, **_bench_kwargs(smoke))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench.print_result(r)
    _write(out, name, r, buf.getvalue())
    return r


def step_bench32(out, smoke):
    return _bench(out, smoke, "bench32", 32)


def step_bench64(out, smoke):
    return _bench(out, smoke, "bench64", 64)


def step_bench32_restore(out, smoke):
    return _bench(out, smoke, "bench32_restore", 32, weight_decay=5e-4)


def _jpegs(tmp: str, smoke: bool) -> Path:
    from packnet_edu import bench
    return bench.make_jpegs(Path(tmp), 12, size=(100, 75)) if smoke else bench.make_jpegs(Path(tmp), 2048)


def step_loader(out, smoke):
    import torch
    from packnet_edu import bench
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    runs = []
    with tempfile.TemporaryDirectory(prefix="packnet-evidence-") as tmp:
        folder = _jpegs(tmp, smoke)
        for decode in ("pil", "cpu", "gpu"):     # "gpu" on a CPU device: the same code path, decoded by libjpeg
            runs.append(bench.bench_loader(folder, decode, workers=0 if smoke else None,
                                           batch_size=4 if smoke else 32, device=device,
                                           image_size=32 if smoke else 224))
    text = "".join(f"loader {r['decode']:4s} on {r['device']}: {r['workers']} worker(s), {r['images_per_s']:.1f} "
                   f"images/s, {r['images_per_s_per_worker']:.1f} per worker\n" for r in runs)
    _write(out, "loader", {"runs": runs}, text)
    return {"runs": runs}


def step_loop(out, smoke):
    from packnet_edu import bench
    runs = []
    # channels_last on the CPU: a tiny network's backward is many times slower in it
    kw = dict(model_name="tiny_vgg16", device="cpu", image_size=32, amp=False, batch_size=4, workers=0,
              channels_last=False) if smoke else \
        dict(model_name="vgg16", device="cuda", image_size=224, amp=True, batch_size=32, channels_last=True)
    with tempfile.TemporaryDirectory(prefix="packnet-evidence-") as tmp:
        folder = _jpegs(tmp, smoke)
        for decode in ("cpu", "gpu"):
            runs.append(bench.bench_loop(folder, decode=decode, **kw))
    text = "".join(f"training loop {r['model']} on {r['device']}, decode {r['decode']}, {r['workers']} worker(s), "
                   f"batch {r['batch_size']}: {r['images_per_s']:.1f} images/s (protection {r['protection_mode']})\n"
                   for r in runs)
    _write(out, "loop", {"runs": runs}, text)
    return {"runs": runs}


def step_probe(out, smoke):
    from packnet_edu import bench
    kw = dict(device="cpu", model="small_vgg", max_train=32, tasks=("digits", "digits")) if smoke else \
        dict(device="cuda", model="vgg16", amp=True, channels_last=True, max_train=2048)
    with tempfile.TemporaryDirectory(prefix="packnet-probe-") as tmp:
        r = bench.probe_check(Path(tmp) / "run", **kw)
    _write(out, "probe", r, f"task 1 probe logits bit-identical after --resume in a second process: "
                            f"{r['task1_probe_identical_across_processes']} ({r['model']} on {r['device']})\n")
    if not all(r["outputs_identical"]):
        raise SystemExit("probe logits differ across processes")
    return r


STEPS = {"env": step_env, "bench32": step_bench32, "bench64": step_bench64,
         "bench32_restore": step_bench32_restore, "loader": step_loader, "loop": step_loop, "probe": step_probe}
# steps a child runs together (one import of torch); each has its own limit (seconds: GPU, smoke)
GROUPS = [("measure", ["env", "bench32", "bench64", "bench32_restore"], 200, 150),
          ("data", ["loader", "loop"], 200, 150),
          ("probe", ["probe"], 150, 200)]


def run_group(names, out: Path, smoke: bool) -> int:
    failed = 0
    for name in names:
        t0 = time.time()
        try:
            STEPS[name](out, smoke)
            status = "ok"
        except BaseException as err:          # record and go on: the other figures still count
            status = f"failed: {type(err).__name__}: {str(err)[-500:]}"
            failed += 1
        with open(out / "steps.jsonl", "a") as f:
            f.write(json.dumps({"step": name, "status": status, "seconds": round(time.time() - t0, 1)}) + "\n")
        print(f"{name}: {status} ({time.time() - t0:.0f}s)", flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------ the parent
def _child_env(site) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    paths = [str(REPO)] + ([str(site)] if site else []) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _install_wheels(wheels: Path, out: Path) -> Path:
    """Packages missing from this Python, from a folder of wheels (never the network), into OUT/.site."""
    import importlib.util
    missing = [PIP_NAMES.get(m, m) for m in NEEDED[2:] if importlib.util.find_spec(m) is None]
    site = out / ".site"
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
                        str(wheels), "--target", str(site), *missing], check=False, timeout=120)
    return site


def _run(cmd, log: Path, env: dict, limit: float) -> str:
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                timeout=max(limit, 1)).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {limit:.0f}s"
    return "ok" if rc == 0 else f"failed (exit {rc}, see {log.name})"


def _fmt(out: Path, name: str) -> str:
    try:
        r = json.loads((out / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    if name.startswith("bench"):
        return (f"batch {r['batch_size']}, plain {r['images_per_s']['plain']:.0f} / protected "
                f"{r['images_per_s']['protected']:.0f} images/s, ratio {r['ratio_images_per_s_protected_over_plain']:.3f}, "
                f"{r['tflops']['plain']:.1f} TFLOP/s, {r['protection_mode']} {r['protection_bytes_per_step'] / 1e6:.0f} MB/step")
    if name in ("loader", "loop"):
        return ", ".join(f"{x['decode']} {x['images_per_s']:.0f} images/s" for x in r["runs"])
    if name == "probe":
        return f"identical across processes: {r['task1_probe_identical_across_processes']}"
    if name == "env":
        return f"{r.get('gpus', ['no GPU'])[0]}, driver {r.get('driver', '-')}, torch {r['torch']}, cuDNN {r['cudnn']}"
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for the evidence (created; must not hold an earlier run)")
    p.add_argument("--smoke", action="store_true", help="every step on the CPU at tiny sizes")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 510; smoke 290)")
    p.add_argument("--wheels", type=Path, help="a folder of wheels for missing pure-Python packages")
    p.add_argument("--step-group", nargs="+", help=argparse.SUPPRESS)   # internal: a child's steps
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.step_group:
        return run_group(args.step_group, args.out, args.smoke)

    out = args.out
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty: give a new folder (nothing in it is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU visible to this Python's torch; use --smoke for a CPU run")
    budget = args.budget or (290 if args.smoke else 510)
    deadline = time.time() + budget
    site = _install_wheels(args.wheels, out) if args.wheels else None
    env = _child_env(site)
    status = {}
    me = [sys.executable, str(Path(__file__).resolve()), str(out)] + (["--smoke"] if args.smoke else [])

    def left(limit):
        return min(limit, deadline - time.time())

    t_start = time.time()
    for group, names, gpu_limit, smoke_limit in GROUPS:
        t0 = time.time()
        s = _run(me + ["--step-group", *names], out / f"{group}.log", env, left(smoke_limit if args.smoke else gpu_limit))
        status[group] = (s, time.time() - t0)
    # the CUDA cases of the tests (on a CPU they are collected and skipped)
    t0 = time.time()
    status["tests"] = (_run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                             "tests/test_vgg16.py"],
                            out / "tests.txt", env, left(90 if args.smoke else 150)), time.time() - t0)
    # the offline four-task sequence on VGG-16 (32x32 RGB), bf16, channels_last
    t0 = time.time()
    run = ["--model", "small_vgg", "--device", "cpu", "--tasks", "digits", "digits", "--max-train", "64",
           "--epochs", "1"] if args.smoke else \
        ["--model", "vgg16", "--device", "cuda", "--amp", "true", "--channels-last", "true", "--max-train", "none",
         "--workers", "0"]
    status["offline"] = (_run([sys.executable, "-m", "packnet_edu", "run", *run, "--out", str(out / "offline")],
                              out / "offline.txt", env, left(90 if args.smoke else 260)), time.time() - t0)

    steps = {}
    if (out / "steps.jsonl").exists():
        for line in (out / "steps.jsonl").read_text().splitlines():
            s = json.loads(line)
            steps[s["step"]] = s
    rows = [f"# GPU evidence{' (smoke: CPU, tiny sizes)' if args.smoke else ''}", "",
            f"{time.time() - t_start:.0f} s in all (budget {budget:.0f} s); written by scripts/gpu_evidence.py", "",
            "| step | status | seconds | figures |", "|---|---|---|---|"]
    for group, names, *_ in GROUPS:
        for n in names:
            s = steps.get(n, {"status": f"not run (group {group}: {status[group][0]})", "seconds": 0})
            rows.append(f"| {n} | {s['status']} | {s['seconds']} | {_fmt(out, n)} |")
    for n in ("tests", "offline"):
        rows.append(f"| {n} | {status[n][0]} | {status[n][1]:.0f} | see {n}.txt |")
    from packnet_edu.fileio import atomic_write
    atomic_write(out / "summary.md", "\n".join(rows) + "\n")
    print("\n".join(rows))
    ok = all(s[0] == "ok" for s in status.values()) and all(s["status"] == "ok" for s in steps.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
