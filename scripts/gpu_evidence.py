"""Every GPU figure of the VGG-16 pipeline, in one command, within a lent GPU machine's limits.

    python3 scripts/gpu_evidence.py OUT --commit HASH     # on the GPU machine (benchmarks/results/README.md)
    python3 scripts/gpu_evidence.py OUT --smoke           # every step on the CPU at tiny sizes (CI runs it)

Made for the device tool's H200 machine: its own `python3` (torch, torchvision,
numpy, pillow, scikit-learn, tqdm, pytest), no network, no `.git`, no
datasets, and only four files come back. It installs nothing, imports
packnet_edu from this checkout, uses only data the repository ships (the
animal silhouettes) or scikit-learn holds (its digits), and writes into OUT:

  results.json    every figure with its parameters, per step, as soon as it is measured
  summary.md      one row per figure: status, seconds, the numbers
  log.txt         everything the steps printed
  bundle.tar.gz   the longer outputs (the CUDA tests' report, the offline run's table)

Figures, most important first (the letters of issue 18):
  priority  (g) env: GPU, driver, torch, the commit, /dev/shm, cores, workers
            (a) step32: protected/plain VGG-16 step, batch 32, bf16, channels_last, CUDA events,
                pairs until the 95% interval is within +-0.5%; (d) task 1 bit-identical (masking)
            (a) loop: plain and protected training images/s fed by the real loader from
                224 px JPEGs, at batch 32 and 128
            (c) decode: nvJPEG against libjpeg while the GPU is busy (and the decoder's stream race)
            (d) restore32: the same as step32 with weight decay (the restore mode)
            (a) step128: protected/plain at batch 128
  rest      (b) loader: loader images/s per worker, CPU and nvJPEG decoding
            (e) distributed: two gloo ranks on the one GPU, a BatchNorm trunk
            (f) offline: the shipped offline tasks on VGG-16, outputs bit-identical
            (f) probe: old tasks' probe logits bit-identical in a second process (--resume)
  tests     the CUDA cases of tests/test_vgg16.py

Each group runs in its own process group with the time left passed down
(--deadline); on a timeout the whole group is killed (DataLoader workers,
ranks and pytest included) and the next group starts. With --smoke every
figure is labelled a smoke value, not a measurement.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE_LABEL = "smoke value, not a measurement (CPU, tiny sizes)"
MAX_WORKERS = 8          # loader processes: the preset's 8 (more only where the loader step measures it better)

# (step, figure, group); the order is the order they run in
STEPS = [("env", "g", "priority"), ("step32", "a, d", "priority"), ("loop", "a", "priority"),
         ("decode", "c", "priority"), ("restore32", "d", "priority"), ("step128", "a", "priority"),
         ("loader", "b", "rest"), ("distributed", "e", "rest"), ("offline", "f", "rest"), ("probe", "f", "rest"),
         ("tests", "-", "tests")]
# group -> its share of the budget; a group gets its share of the time left,
# so what one group leaves unused flows to the next (540 s: priority 297 s)
GROUPS = {"priority": 0.55, "rest": 0.30, "tests": 0.15}
BUDGET = 540            # seconds for everything on the GPU: 9 minutes of the run's 600 s timeout
SMOKE_BUDGET = 600     # a shared CPU: the 2-core one here took 3-4 minutes under a load average of 10


def code_hash():
    """The hash of the code that ran (the working tree may differ from --commit).
    PROVENANCE: the single place where packnet_edu.provenance's code hash goes
    in; until that module is on main this records None."""
    try:
        from packnet_edu import provenance
    except ImportError:
        return None
    return provenance.code_hash()


# ------------------------------------------------------------------ recording (child and parent)
def _load(out: Path) -> dict:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"steps": {}}


def record(out: Path, step: str, **fields) -> None:
    """Update one step in OUT/results.json and rewrite OUT/summary.md from it
    (both atomically): a run killed later keeps every figure recorded so far."""
    from packnet_edu.fileio import atomic_write
    res = _load(out)
    res["steps"].setdefault(step, {}).update(fields)
    atomic_write(out / "results.json", json.dumps(res, indent=1, default=str))
    atomic_write(out / "summary.md", summary(res))


def summary(res: dict) -> str:
    meta = res.get("meta", {})
    kind = meta.get("kind", "")
    rows = [f"# GPU evidence: {kind}", "",
            (f"commit {meta.get('commit')}, code hash {meta.get('code_hash')}; budget {meta.get('budget_s')} s; "
             "written by scripts/gpu_evidence.py"), ""]
    if meta.get("smoke"):
        rows += [f"**Every figure below is a {SMOKE_LABEL}.**", ""]
    rows += ["| figure | step | status | seconds | figures |", "|---|---|---|---|---|"]
    for name, figure, _ in STEPS:
        s = res["steps"].get(name, {"status": "not run yet"})
        text = s.get("figures", "")
        if meta.get("smoke") and text:
            text = "smoke value: " + text
        rows.append(f"| ({figure}) | {name} | {s['status']} | {s.get('seconds', '')} | {text} |")
    return "\n".join(rows) + "\n"


def bundle(out: Path, work: Path) -> None:
    """OUT/bundle.tar.gz from the work folder's bundle/ (flat, small text files)."""
    from packnet_edu.fileio import atomic_write
    files = sorted((work / "bundle").glob("*")) if (work / "bundle").is_dir() else []
    if not files:
        return
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    atomic_write(out / "bundle.tar.gz", buf.getvalue())


# ------------------------------------------------------------------ the steps (in a group's process)
class Ctx:
    def __init__(self, out: Path, work: Path, smoke: bool, deadline: float):
        self.out, self.work, self.smoke, self.deadline = out, work, smoke, deadline
        self.device = "cpu" if smoke else "cuda"

    def left(self) -> float:
        return self.deadline - time.time()

    def jpegs(self) -> Path:
        """4096 synthetic 500x375 JPEGs (smoke: 8 of 64x48), made once per group."""
        from packnet_edu import bench
        folder = self.work / "jpegs" / "train"
        if not folder.is_dir():
            n, size = (8, (64, 48)) if self.smoke else (4096, (500, 375))
            bench.make_jpegs(self.work / "jpegs", n, size=size)
        return folder

    def workers(self, batch: int, image_size: int) -> int:
        """Loader workers: at most MAX_WORKERS, at most one per core but one, and
        no more than /dev/shm can hold batches for (4 ready per worker)."""
        from packnet_edu.vgg_data import resolve_workers
        n = min(resolve_workers(None), MAX_WORKERS)
        free = _shm()["free_bytes"]
        if free:
            n = min(n, max(int(free * 0.8) // (4 * batch * 3 * image_size ** 2), 1))
        return n


def _shm() -> dict:
    try:
        st = os.statvfs("/dev/shm")
        return {"total_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}
    except OSError:
        return {"total_bytes": None, "free_bytes": None}


def step_env(ctx: Ctx):
    import torch
    import torchvision

    from packnet_edu.vgg_data import resolve_workers, usable_cores
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
           "loader_workers": min(resolve_workers(None), MAX_WORKERS), "dev_shm": _shm()}
    if torch.cuda.is_available() and not ctx.smoke:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                   multiprocessors=p.multi_processor_count)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["driver"] = f"unknown ({type(err).__name__})"
    shm = env["dev_shm"]["total_bytes"]
    text = (f"{env.get('gpu', 'no GPU used')}, driver {env.get('driver', '-')}, torch {env['torch']}, "
            f"CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['usable_cores']} cores, {env['loader_workers']} workers, "
            f"/dev/shm {shm / 2 ** 30 if shm else 0:.1f} GiB")
    return env, text


def _step_bench(ctx: Ctx, batch: int, weight_decay: float):
    from packnet_edu import bench
    if ctx.smoke:
        kw = {"model_name": "tiny_vgg16", "device": "cpu", "image_size": 32, "batch_size": 2, "steps": 1,
              "trials": 2, "amp": False, "channels_last": False}
    else:
        kw = {"model_name": "vgg16", "device": "cuda", "image_size": 224, "batch_size": batch, "steps": 20,
              "trials": 10, "amp": True, "channels_last": True, "until_ci": 0.005,
              "max_seconds": min(40.0, ctx.left() / 3)}
    r = bench.bench_step(weight_decay=weight_decay, **kw)
    text = (f"{r['model']} batch {r['batch_size']}, {r['image_size']} px: plain {r['images_per_s']['plain']:.0f}, "
            f"protected {r['images_per_s']['protected']:.0f} images/s; protected/plain {r['ratio_pairs_mean']:.4f} "
            f"+- {r['ratio_pairs_ci95']:.4f} (95%, {r['trials']} pairs, {r['timer']}); {r['protection_mode']} "
            f"{r['protection_bytes_per_step'] / 1e6:.0f} MB/step; task 1 bit-identical: weights "
            f"{r['task1_weights_exact_after_protected_step']}, "
            f"outputs {r['task1_outputs_exact_after_protected_steps']}")
    if not (r["task1_weights_exact_after_protected_step"] and r["task1_outputs_exact_after_protected_steps"]):
        raise AssertionError("task 1 changed under protection: " + text)
    return r, text


def step_step32(ctx):
    return _step_bench(ctx, 32, 0.0)


def step_restore32(ctx):
    return _step_bench(ctx, 32, 5e-4)


def step_step128(ctx):
    return _step_bench(ctx, 128, 0.0)


def step_loop(ctx: Ctx):
    from packnet_edu import bench
    folder = ctx.jpegs()
    runs = []
    for batch in ((2, 4) if ctx.smoke else (32, 128)):
        for protect in (False, True):
            kw = {"model_name": "tiny_vgg16", "device": "cpu", "image_size": 32, "amp": False, "workers": 0,
                  "channels_last": False} if ctx.smoke else \
                {"model_name": "vgg16", "device": "cuda", "image_size": 224, "amp": True, "channels_last": True,
                 "workers": ctx.workers(batch, 224)}
            runs.append(bench.bench_loop(folder, decode="cpu", batch_size=batch, protect=protect, **kw))
    text = "; ".join(f"batch {r['batch_size']} {'protected' if r['protected'] else 'plain'} "
                     f"{r['images_per_s']:.0f}" for r in runs) + f" images/s ({runs[0]['workers']} workers, " \
        f"{runs[0]['image_size']} px, {runs[0]['model']})"
    return {"runs": runs}, text


def step_decode(ctx: Ctx):
    from packnet_edu import bench
    r = bench.decode_check(ctx.jpegs(), ctx.device, images=4 if ctx.smoke else 32, rounds=1 if ctx.smoke else 4)
    text = (f"{'nvJPEG' if r['busy_gpu'] else 'the gpu decode path on the CPU (libjpeg)'} against libjpeg, "
            f"{r['images']} images x {r['rounds']} rounds: worst mean |diff| {r['worst_mean_abs_diff']:.2f} "
            f"(tolerance {r['tolerance_mean_abs_diff']}), guard sums wrong {r['guard_sums_wrong']}")
    if not r["equal_within_tolerance"]:
        raise AssertionError("GPU decoding differs from CPU decoding: " + text)
    return r, text


def step_loader(ctx: Ctx):
    from packnet_edu import bench
    folder = ctx.jpegs()
    plan = [("cpu", 1), ("gpu", 1)] if ctx.smoke else \
        [("cpu", 4), ("cpu", ctx.workers(32, 224)), ("cpu", 12), ("gpu", ctx.workers(32, 224))]
    runs = [bench.bench_loader(folder, decode, workers=w, batch_size=2 if ctx.smoke else 32, device=ctx.device,
                               image_size=32 if ctx.smoke else 224) for decode, w in plan]
    text = "; ".join(f"{r['decode']}{' (libjpeg on the CPU)' if r['device'] == 'cpu' and r['decode'] == 'gpu' else ''}"
                     f" {r['workers']} workers {r['images_per_s']:.0f} images/s = "
                     f"{r['images_per_s_per_worker']:.0f} per worker" for r in runs)
    return {"runs": runs}, text


def step_distributed(ctx: Ctx):
    from packnet_edu import bench
    r = bench.distributed_check(ctx.work / "ranks", device="cpu" if ctx.smoke else "cuda:0",
                                max_train=32 if ctx.smoke else 512, timeout=max(ctx.left() - 5, 1),
                                tasks=("digits", "digits") if ctx.smoke else ("digits", "animals"))
    text = (f"2 gloo ranks on {r['device']}, {r['model']}: identical across ranks {r['identical_across_ranks']}; "
            f"each rank's old outputs bit-identical {r['outputs_identical_within_each_rank']}")
    if not r["old_task_outputs_identical_on_both_ranks"]:
        raise AssertionError("ranks differ: " + text)
    return r, text


def step_offline(ctx: Ctx):
    """(f) The shipped offline tasks (animals, then scikit-learn's digits) on VGG-16
    at 32x32, bf16, channels_last, the paper's schedule; every task's outputs
    compared bit for bit after the last task."""
    from packnet_edu.config import Config
    from packnet_edu.report import accuracy_table
    from packnet_edu.train import LOCAL, Runtime, run_packnet
    if ctx.smoke:   # the same code path with a narrow VGG-16 and a few images
        from packnet_edu.replicas import tiny_vgg16
        cfg = Config(tasks=("animals", "digits"), model="vgg16", device="cpu", epochs=1, max_train=32)
        rt = Runtime(make_model=lambda c, nc: tiny_vgg16(nc).to(c.device))
    else:
        cfg = Config(tasks=("animals", "digits"), model="vgg16", device="cuda", amp=True, channels_last=True,
                     max_train=None)
        rt = LOCAL
    r = run_packnet(cfg, runtime=rt, verbose=True)
    table = accuracy_table(r["task_names"], r["matrix"], r["outputs_identical"])
    (ctx.work / "bundle").mkdir(exist_ok=True)
    (ctx.work / "bundle" / "offline.txt").write_text(table + "\n")
    keep = {k: r[k] for k in ("config", "task_names", "ratios", "matrix", "val", "outputs_identical", "seconds")}
    text = (f"{' -> '.join(r['task_names'])} on {'tiny_vgg16' if ctx.smoke else 'VGG-16'}: test accuracy "
            f"{[round(a, 2) for a in r['matrix'][-1]]}, outputs bit-identical {r['outputs_identical']}, "
            f"{r['seconds']:.0f} s")
    if not all(r["outputs_identical"]):
        raise AssertionError("an old task's outputs changed: " + text)
    return keep, text


def step_probe(ctx: Ctx):
    """Old tasks' probe logits bit-identical when computed in another process
    (bench.probe_check: process 1 trains task 1, process 2 resumes from its checkpoint)."""
    from packnet_edu import bench
    kw = {"device": "cpu", "model": "small_vgg", "max_train": 32, "tasks": ("digits", "digits")} if ctx.smoke else \
        {"device": "cuda", "model": "vgg16", "amp": True, "channels_last": True, "max_train": 2048}
    r = bench.probe_check(ctx.work / "probe", timeout=max(ctx.left() - 5, 1), **kw)   # per stage: the group ends both
    text = (f"{r['model']} on {r['device']}: task 1's probe logits bit-identical after --resume in a second "
            f"process: {r['task1_probe_identical_across_processes']}")
    if not all(r["outputs_identical"]):
        raise AssertionError("probe logits differ across processes: " + text)
    return r, text


def step_tests(ctx: Ctx):
    (ctx.work / "bundle").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                           str(REPO / "tests" / "test_vgg16.py")], check=False, capture_output=True, text=True,
                          cwd=REPO,
                          timeout=max(ctx.left() - 5, 1))
    (ctx.work / "bundle" / "tests.txt").write_text(proc.stdout + proc.stderr)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    if proc.returncode not in (0, 5):       # 5: nothing collected
        raise AssertionError(f"the CUDA tests failed: {last}")
    return {"returncode": proc.returncode, "last_line": last}, last


def run_group(group: str, ctx: Ctx) -> int:
    # Should the parent itself be killed (the device tool's own timeout), nobody would end this
    # process group: it ends itself 15 s after its deadline, loader workers and ranks with it.
    threading.Thread(target=lambda: (time.sleep(max(ctx.left() + 15, 0)), os.killpg(0, signal.SIGKILL)),
                     daemon=True).start()
    failed = 0
    for name, figure, g in STEPS:
        if g != group:
            continue
        t0 = time.time()
        record(ctx.out, name, status="running", figure=figure, group=group)
        try:
            result, text = globals()[f"step_{name}"](ctx)
            fields = {"status": "ok", "result": result, "figures": text}
        except BaseException as err:  # noqa: BLE001 -- record any end (SystemExit too) and go on: the others count
            fields = {"status": f"failed: {type(err).__name__}: {str(err)[-300:]}".replace("\n", " ")}
            failed += 1
            import traceback
            traceback.print_exc()
        record(ctx.out, name, seconds=round(time.time() - t0, 1),
               kind=SMOKE_LABEL if ctx.smoke else "measurement", **fields)
        bundle(ctx.out, ctx.work)
        print(f"[{name}] {fields['status']} ({time.time() - t0:.0f}s) {fields.get('figures', '')}", flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------ the parent
def run_child(cmd, log, env: dict, limit: float) -> str:
    """Run `cmd` in a new process group, at most `limit` seconds; on a timeout
    kill the whole group (its DataLoader workers, ranks and pytest too)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        return f"timed out after {time.time() - t0:.0f}s (limit {limit:.0f}s)"
    return "ok" if rc == 0 else f"exit {rc}"


def _cap(log, most: int = 15 * 2 ** 20) -> None:
    """Keep log.txt under the 16 MiB that comes back: its last `most` bytes."""
    log.flush()
    with open(log.name, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() <= most:
            return
        f.seek(-most, os.SEEK_END)
        tail = f.read()
    log.truncate(0)
    log.write(b"[... earlier output cut: log.txt is kept under 16 MiB ...]\n" + tail)
    log.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for the evidence (created; must be empty)")
    p.add_argument("--smoke", action="store_true", help="every step on the CPU at tiny sizes (labelled smoke values)")
    p.add_argument("--commit", help="the commit this checkout was made from (the GPU machine has no .git)")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 540; smoke 600)")
    p.add_argument("--only", nargs="+", choices=list(GROUPS), help="run only these groups (a rerun)")
    p.add_argument("--group", help=argparse.SUPPRESS)         # internal: the group a child runs
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}", args.commit):
        p.error(f"--commit {args.commit!r}: give the hexadecimal hash (git rev-parse HEAD)")
    if args.budget is not None and not 0 < args.budget < 1e6:
        p.error(f"--budget {args.budget:g}: give a positive number of seconds")
    return args


def main(argv=None) -> int:
    t_start = time.time()                            # the budget counts from here
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.group:                                   # a child: one group's steps
        return run_group(args.group, Ctx(args.out, args.work, args.smoke, args.deadline))

    out = args.out.resolve()                         # the caller's cwd, not the children's
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {args.out} is a file, not a folder: give a new or empty folder for the evidence")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {args.out} is not empty: give a new folder (nothing in it is overwritten)")
    from packnet_edu.fileio import WriteError, check_writable
    try:
        check_writable(out)
    except WriteError as err:
        raise SystemExit(f"error: {err}") from None
    if not args.smoke:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU visible to this Python's torch; use --smoke for a CPU run")
    budget = args.budget or (SMOKE_BUDGET if args.smoke else BUDGET)
    commit = args.commit or _git_commit()
    meta = {"kind": SMOKE_LABEL if args.smoke else "measurement", "smoke": args.smoke, "commit": commit,
            "commit_source": "--commit" if args.commit else ("git" if commit else None), "code_hash": code_hash(),
            "budget_s": budget, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": sys.argv[1:]}
    from packnet_edu.fileio import atomic_write
    res = {"meta": meta, "steps": {}}
    atomic_write(out / "results.json", json.dumps(res, indent=1))
    atomic_write(out / "summary.md", summary(res))

    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if args.smoke:      # one thread per process: on a shared CPU, OpenMP's spinning threads made a
        env["OMP_NUM_THREADS"] = "1"    # 40 ms smoke step take 1.2 s; smoke values are not measurements anyway
    status = {}
    with tempfile.TemporaryDirectory(prefix="packnet-evidence-") as work, open(out / "log.txt", "ab") as log:
        groups = [g for g in GROUPS if not args.only or g in args.only]
        for group, share in GROUPS.items():
            if group not in groups:
                status[group] = "not run (--only)"
                continue
            left = t_start + budget - time.time()
            limit = left * share / sum(GROUPS[g] for g in groups[groups.index(group):])
            if limit < 5:
                status[group] = f"not run: the budget of {budget:.0f}s was spent"
                continue
            log.write(f"\n===== group {group}, limit {limit:.0f}s =====\n".encode())
            log.flush()
            cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--group", group, "--work", work,
                   "--deadline", repr(time.time() + limit)] + (["--smoke"] if args.smoke else [])
            status[group] = run_child(cmd, log, env, limit)
            _cap(log)
    res = _load(out)
    for name, figure, group in STEPS:             # steps a killed or skipped group never reached
        s = res["steps"].get(name, {})
        if s.get("status") in (None, "running"):
            record(out, name, figure=figure, status=f"not run ({group}: {status[group]})" if "status" not in s
                   else f"interrupted ({group}: {status[group]})")
    res = _load(out)
    res["meta"]["groups"] = status
    res["meta"]["seconds"] = round(time.time() - t_start, 1)
    atomic_write(out / "results.json", json.dumps(res, indent=1, default=str))
    atomic_write(out / "summary.md", summary(res) + f"\n{res['meta']['seconds']:.0f} s in all; groups: "
                 + ", ".join(f"{g} {s}" for g, s in status.items()) + "\n")
    print(summary(res))
    return 0 if all(s["status"] == "ok" for s in res["steps"].values()) else 1


def _git_commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True,
                              text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
