"""What training costs, measured side by side in one run. Three parts:

    python -m packnet_edu bench step     # PackNet-protected training step against a plain one
    python -m packnet_edu bench loader   # images/s of the image loaders, per decode path
    python -m packnet_edu bench loop     # the real training loop fed by the real loader, from JPEGs

`step` (the default) runs the configuration the paper preset trains with:
SGD, momentum 0.9, weight decay 0, batch 32 (flags change each). The model
is in the state PackNet trains every task after the first: task 1 owns half
of each layer (pruned 50%, frozen), task 2 trains the rest. One model, two
SGD optimizers over the same parameters: a plain one and one under
`engine.protect`. Timed trials of the two are interleaved, alternating which
goes first, and medians compared, so drifting clocks and noisy neighbours hit
both alike; every trial starts from the same weights. Prints step times,
images/s, their ratio, TFLOP/s, the protection's mode and the bytes it moves
per step (judged against the device's memory bandwidth, its cost is known
without a GPU), and checks task 1's weights are bit-identical afterwards.

`loader` times `vgg_data.image_loader` over synthetic 500x375 JPEGs (the size
of a typical ImageNet photo) for the "pil" (reference), "cpu" and "gpu"
decode paths; `loop` times `train.train_one_epoch` with a protected optimizer
on the same files: what a user of `run --config paper-vgg16` gets.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import config
from .config import at_least
from .engine import PackNet
from .models import build_model

# The paper preset's optimizer and batch (presets.PAPER_VGG16): what `step` times by default.
PRESET_BATCH, PRESET_WEIGHT_DECAY, PRESET_MOMENTUM = 32, 0.0, 0.9


def forward_flops(model, x: torch.Tensor, task: int) -> float:
    """FLOPs (2 x multiply-adds) of one image's forward pass through the
    convolutions and linear layers (VGG-16 at 224x224: about 31 GFLOPs)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            macs.append(out[0].numel() * m.weight[0].numel())    # outputs x (in/groups * kh * kw)
        else:
            macs.append(m.in_features * m.out_features)
    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()
            model(x[:1], task)
    finally:
        for h in hooks:
            h.remove()
    return 2.0 * sum(macs)


def _model(model_name: str, num_classes, device: str, channels_last: bool):
    torch.manual_seed(0)
    if model_name == "tiny_vgg16":
        from .replicas import tiny_vgg16
        model = tiny_vgg16(num_classes)
    else:
        model = build_model(model_name, num_classes)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def setup(model_name: str, device: str, channels_last: bool, weight_decay: float = PRESET_WEIGHT_DECAY,
          optimizer: str = "sgd"):
    """A model in the middle of task 2, and a plain and a protected optimizer over it."""
    model = _model(model_name, [10, 10], device, channels_last)
    engine = PackNet(model.trunk)
    engine.start_task(); engine.prune(0.5); engine.end_task(); engine.start_task()
    params = list(model.trunk.parameters()) + list(model.heads[1].parameters())

    def make():
        if optimizer == "adamw":
            return torch.optim.AdamW(params, lr=1e-4, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=1e-3, momentum=PRESET_MOMENTUM, weight_decay=weight_decay)
    opts = {"plain": make(), "protected": make()}
    handle = engine.protect(opts["protected"])
    return model, engine, opts, handle


def _sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _check_cuda(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")


class _Timer:
    """Seconds from construction to `seconds()`: CUDA events on a CUDA device
    (the GPU's own clock, its idle gaps included), the host clock otherwise."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            self.start, self.end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000
        return time.perf_counter() - self.t0


def ci95(values) -> float:
    """Half-width of the 95% confidence interval of the mean of `values`
    (Student's t, approximated as 1.96 + 2.4/(n-1): within 2% of it for n >= 5)."""
    n = len(values)
    if n < 2:
        return float("inf")
    return (1.96 + 2.4 / (n - 1)) * statistics.stdev(values) / math.sqrt(n)


def bench_step(model_name: str = "small_vgg", device: str = "cpu", batch_size: int = PRESET_BATCH,
               image_size: int | None = None, steps: int = 10, trials: int = 7,
               amp: bool = False, channels_last: bool = False,
               weight_decay: float = PRESET_WEIGHT_DECAY, optimizer: str = "sgd",
               until_ci: float | None = None, max_seconds: float | None = None) -> dict:
    """Protected against plain training steps, `trials` interleaved pairs of
    `steps` steps each (on CUDA timed with CUDA events). With `until_ci`, pairs
    are added until the 95% confidence interval of the protected/plain ratio
    is within +-until_ci of it (e.g. 0.005), or `max_seconds` have passed."""
    _check_cuda(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    image_size = image_size or (28 if model_name == "small_vgg" else 224)
    model, engine, opts, handle = setup(model_name, device, channels_last, weight_decay, optimizer)
    in_ch = model.trunk[0].in_channels if model_name == "small_vgg" else 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_ch, image_size, image_size, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    flops = 3 * forward_flops(model, x, 2)            # forward + backward (2x) per image
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def task1_logits():                               # task 1 as inference sees it, as training computes
        from .train import deterministic_kernels
        model.eval()
        with torch.no_grad(), deterministic_kernels(), engine.task_view(1), \
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and amp):
            return model(x, 1).float().cpu()
    logits_before = task1_logits()

    def reset():                                      # every trial from the same weights (untimed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])

    def run(kind: str, n: int) -> float:
        opt = opts[kind]
        model.train()
        clock = _Timer(device)
        for _ in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and amp):
                loss = F.cross_entropy(model(x, 2), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return clock.seconds() / n

    run("plain", 2); reset(); run("protected", 2)     # warm-up (allocator, cudnn autotuning)
    times = {"plain": [], "protected": []}
    t_start, i = time.perf_counter(), 0
    while True:
        for kind in (("plain", "protected") if i % 2 == 0 else ("protected", "plain")):
            reset()
            times[kind].append(run(kind, steps))
        i += 1
        pairs = [a / b for a, b in zip(times["plain"], times["protected"])]   # images/s protected/plain
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and i >= 2:
            break
        if i >= trials and (until_ci is None or (i >= 3 and ci95(pairs) <= until_ci * statistics.mean(pairs))):
            break
    # a protected trial leaves task 1's weights, and so its outputs, as they started, bit for bit
    reset(); run("protected", steps)
    exact = all(torch.equal(w.detach()[engine.owner[n].to(w.device) == 1],
                            start[f"trunk.{n}"][engine.owner[n].to(w.device) == 1])
                for n, w in engine.weights.items())
    outputs_exact = torch.equal(logits_before, task1_logits())
    step = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch_size / s for k, s in step.items()}
    moved = handle.bytes_per_step()
    return {
        "part": "step", "model": model_name, "device": device, "device_name": _device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "batch_size": batch_size,
        "image_size": image_size, "amp_bf16": cuda and amp, "channels_last": channels_last,
        "optimizer": optimizer, "weight_decay": weight_decay, "momentum": PRESET_MOMENTUM,
        "steps_per_trial": steps, "trials": len(pairs),
        "step_s": step, "step_s_trials": times, "images_per_s": ips,
        "ratio_time_protected_over_plain": step["protected"] / step["plain"],
        "ratio_images_per_s_protected_over_plain": ips["protected"] / ips["plain"],
        "ratio_pairs_mean": statistics.mean(pairs), "ratio_pairs_ci95": ci95(pairs),
        "ratio_target_ci": until_ci, "timer": "CUDA events" if cuda else "host clock",
        "tflops": {k: flops * v / 1e12 for k, v in ips.items()}, "gflops_per_training_image": flops / 1e9,
        "protection_mode": handle.mode, "protection_bytes_per_step": moved,
        "protection_ms_at_3tb_per_s": 1000 * moved / 3e12,
        "packed_weights": sum(w.numel() for w in engine.weights.values()),
        "task1_weights_exact_after_protected_step": exact, "task1_outputs_exact_after_protected_steps": outputs_exact,
    }


def print_result(r: dict) -> None:
    print(f"{r['model']} on {r['device']} ({r['device_name']}), torch {r['torch']}, batch {r['batch_size']}, "
          f"{r['image_size']}x{r['image_size']}, bf16 {r['amp_bf16']}, channels_last {r['channels_last']}, "
          f"{r['optimizer']} weight decay {r['weight_decay']}")
    print(f"median of {r['trials']} interleaved trials x {r['steps_per_trial']} steps ({r['timer']}); "
          f"{r['gflops_per_training_image']:.2f} GFLOP per training image")
    for k in ("plain", "protected"):
        print(f"  {k:9s} {1000 * r['step_s'][k]:9.2f} ms/step  {r['images_per_s'][k]:9.1f} images/s  "
              f"{r['tflops'][k]:7.3f} TFLOP/s")
    print(f"  ratio protected/plain: step time {r['ratio_time_protected_over_plain']:.3f}, "
          f"images/s {r['ratio_images_per_s_protected_over_plain']:.3f}; mean over pairs "
          f"{r['ratio_pairs_mean']:.4f} +- {r['ratio_pairs_ci95']:.4f} (95%)")
    print(f"  protection: mode {r['protection_mode']}, {r['protection_bytes_per_step'] / 1e6:.1f} MB moved per step "
          f"over {r['packed_weights']:,} packed weights (= {r['protection_ms_at_3tb_per_s']:.3f} ms at 3 TB/s)")
    print(f"  task 1 bit-identical after {r['steps_per_trial']} protected steps: weights "
          f"{r['task1_weights_exact_after_protected_step']}, outputs {r['task1_outputs_exact_after_protected_steps']}")


def protection_cost(model_name: str = "vgg16", plain_step_ms: float | None = None,
                    bandwidth: float = 3e12) -> dict:
    """Bytes the protection moves per step in each mode for `model_name` in
    the benchmark's state (task 2 training, task 1 frozen), without running a
    step; with `plain_step_ms`, the protected/plain ratio that traffic implies
    at `bandwidth` bytes/s (an estimate: kernel launches and caches ignored)."""
    _model, engine, _opts, handle = setup(model_name, "cpu", False)
    out = {"model": model_name, "packed_weights": sum(w.numel() for w in engine.weights.values()),
           "bandwidth_bytes_per_s": bandwidth}
    for mode in ("mask", "restore"):
        handle.mode = mode
        b = handle.bytes_per_step()
        out[mode] = {"bytes_per_step": b, "ms": 1000 * b / bandwidth}
        if plain_step_ms:
            out[mode]["estimated_ratio"] = plain_step_ms / (plain_step_ms + out[mode]["ms"])
    out["plain_step_ms_assumed"] = plain_step_ms
    return out


# ------------------------------------------------------------------ data path
def make_jpegs(root: Path, n: int, classes: int = 4, size=(500, 375), seed: int = 0, unique: int = 128) -> Path:
    """`n` JPEGs of `size` (width, height) in `classes` class folders under
    root/train: smooth colour fields with grain, about as compressible as
    photos (noise alone would make files, and decoding, several times slower).
    Only `unique` are encoded; the rest are copies (decoding costs the same)."""
    import shutil

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    made = []
    for i in range(n):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{i:05d}.jpg"
        if i >= unique:
            shutil.copyfile(made[i % unique], f)
            continue
        coarse = Image.fromarray(rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(f, quality=90)
        made.append(f)
    return root / "train"


class _SteadyClock:
    """Wraps a loader: counts images and times from the `skip`-th batch on
    (skip = the workers: their first, simultaneous round), so worker start-up,
    paid once per epoch and negligible over ImageNet's 40,000 batches, does not
    count against a benchmark of a few dozen batches."""

    def __init__(self, loader, skip: int = 1):
        self.loader, self.skip, self.t_first, self.images = loader, max(skip, 1), None, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.skip - 1:
                self.t_first = time.perf_counter()
            elif i >= self.skip:
                self.images += len(batch[1])
            yield batch

    def rate(self, t_end: float) -> float:
        if self.t_first is None or not self.images:
            raise ValueError(f"too few batches to time: give more images than {self.skip} batches")
        return self.images / max(t_end - self.t_first, 1e-9)


def _loader(folder: Path, decode: str, batch_size: int, workers: int, device: str, image_size: int):
    from . import vgg_data
    ds = vgg_data._image_folder(folder, cropped=False, train=True, size=image_size, decode=decode)
    return vgg_data.image_loader(ds, batch_size, shuffle=True, workers=workers, device=device)


def bench_loader(folder: Path, decode: str = "cpu", workers: int | None = None, batch_size: int = PRESET_BATCH,
                 device: str = "cpu", image_size: int = 224, epochs: int = 2) -> dict:
    """Images/s of the training loader (decode path `decode`) over the images
    in `folder`, from the first batch on (_SteadyClock); the first epoch warms
    up (file cache). Batches are moved to `device` and normalised, as training does."""
    from .train import device_batches
    from .vgg_data import resolve_workers
    _check_cuda(device)
    sync = _sync(device)
    n_workers = resolve_workers(workers)
    rates = []
    for epoch in range(epochs):
        clock = _SteadyClock(_loader(folder, decode, batch_size, n_workers, device, image_size), n_workers)
        for x, _ in device_batches(clock, device):
            pass
        sync()
        rates.append(clock.rate(time.perf_counter()))
    ips = statistics.median(rates[1:] or rates)      # the first epoch warms up (file cache)
    return {"part": "loader", "decode": decode, "workers": n_workers, "images": clock.images,
            "batch_size": batch_size,
            "image_size": image_size, "device": device, "images_per_s": ips,
            "images_per_s_per_worker": ips / max(n_workers, 1)}


def bench_per_worker(folder: Path, decodes=("pil", "cpu"), trials: int = 4, image_size: int = 224) -> dict:
    """What one loader worker does per image (read, decode, training
    transforms; the "cpu" path's normalisation included, though training does
    it on the device), timed in this process on one thread, the decode paths
    interleaved trial by trial: images/s per worker, free of worker start-up
    and of the noise of a few batches."""
    from .vgg_data import _image_folder, normalize
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # a worker runs on one thread
    try:
        sets = {d: _image_folder(folder, cropped=False, train=True, size=image_size, decode=d) for d in decodes}
        ms = {d: [] for d in decodes}
        for trial in range(trials):
            for d in (decodes if trial % 2 == 0 else decodes[::-1]):
                t0 = time.perf_counter()
                for i in range(len(sets[d])):
                    x, _ = sets[d][i]
                    if x.dtype == torch.uint8:
                        normalize(x[None])
                ms[d].append(1000 * (time.perf_counter() - t0) / len(sets[d]))
    finally:
        torch.set_num_threads(threads)
    med = {d: statistics.median(v) for d, v in ms.items()}
    return {"part": "per_worker", "images": len(next(iter(sets.values()))), "trials": trials,
            "ms_per_image": med, "ms_per_image_trials": ms, "images_per_s_per_worker": {d: 1000 / v for d, v in med.items()}}


def bench_loop(folder: Path, model_name: str = "vgg16", device: str = "cuda", decode: str = "cpu",
               workers: int | None = None, batch_size: int = PRESET_BATCH, image_size: int = 224,
               amp: bool = True, channels_last: bool = True, epochs: int = 2, protect: bool = True) -> dict:
    """Images/s of `train.train_one_epoch` (SGD, the preset's optimizer;
    protected, or plain with `protect=False`) fed by the training loader over
    `folder`: the data path and the step together. The first epoch warms up;
    the others are timed."""
    from .train import train_one_epoch
    from .vgg_data import resolve_workers
    _check_cuda(device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    model, _engine, opts, handle = setup(model_name, device, channels_last)
    sync = _sync(device)
    n_workers = resolve_workers(workers)
    rates = []
    for epoch in range(epochs):
        clock = _SteadyClock(_loader(folder, decode, batch_size, n_workers, device, image_size), n_workers)
        train_one_epoch(model, 2, opts["protected" if protect else "plain"], clock, device, desc="bench loop",
                        amp=amp)
        sync()
        rates.append(clock.rate(time.perf_counter()))
    n = clock.images
    return {"part": "loop", "model": model_name, "device": device, "device_name": _device_name(device),
            "decode": decode, "workers": n_workers, "images": n, "batch_size": batch_size,
            "image_size": image_size, "amp_bf16": amp and device.startswith("cuda"),
            "channels_last": channels_last, "protected": protect, "protection_mode": handle.mode if protect else None,
            "images_per_s": statistics.median(rates[1:] or rates)}   # the first epoch warms up (autotuning)


def decode_check(folder: Path, device: str, images: int = 32, rounds: int = 4, tolerance: float = 2.0) -> dict:
    """Does the GPU decode path (vgg_data.GpuDecode: nvJPEG through
    torchvision's decode_jpeg) give what the CPU decoder (libjpeg, read_rgb)
    gives, while the GPU is busy? Each round queues a long computation, then
    reductions of "guard" tensors (known values, one decoded image's size),
    frees the guards while their reductions still wait, and decodes: a
    decoder that writes before the caller's queued work has run is handed the
    guards' memory and changes their sums (the stream race of torchvision's
    CUDA decoder). Pass: every guard sum exact, and each image's mean absolute
    difference from libjpeg's at most `tolerance` grey levels (the decoders
    round their IDCT and chroma upsampling differently)."""
    from .vgg_data import GpuDecode, read_bytes, read_rgb
    files = sorted(Path(folder).rglob("*.jpg"))[:images]
    reference = torch.stack([read_rgb(str(f)) for f in files]).int()
    encoded = [read_bytes(str(f)) for f in files]
    decode = GpuDecode(lambda im: im)               # no transform: the decoded pixels themselves
    cuda = device.startswith("cuda")
    worst, bad_sums = 0.0, 0
    for _ in range(rounds):
        sums, expected = [], []
        if cuda:                                     # busy: about 20 ms of matrix products first
            guards = [torch.full(reference.shape[1:], 1 + k % 200, dtype=torch.uint8, device=device)
                      for k in range(len(files))]
            torch.cuda.synchronize(device)
            a = torch.randn(4096, 4096, device=device)
            for _ in range(10):
                a = torch.nn.functional.normalize(a @ a, dim=1)
            sums = [g.sum(dtype=torch.int64) for g in guards]
            expected = [(1 + k % 200) * reference[0].numel() for k in range(len(files))]
            del guards, a                            # freed while their reductions wait in the queue
        out = decode(encoded, device)
        bad_sums += sum(int(s) != e for s, e in zip(sums, expected))   # int() waits for the queue
        diff = (out.cpu().int() - reference).abs().float().mean(dim=(1, 2, 3))
        worst = max(worst, float(diff.max()))
    return {"part": "decode_check", "device": device, "images": len(files), "rounds": rounds,
            "busy_gpu": cuda, "worst_mean_abs_diff": worst, "tolerance_mean_abs_diff": tolerance,
            "guard_sums_wrong": bad_sums, "equal_within_tolerance": worst <= tolerance and bad_sums == 0}


def _rank_main(rank: int, world: int, store: str, config: str, out: str) -> None:
    """One rank of distributed_check: join a gloo group, run PackNet through
    distributed.run_packnet_distributed with a BatchNorm trunk, then report
    checksums of every task's outputs on a fixed batch and of the BatchNorm
    buffers, gathered on rank 0."""
    import functools

    import torch.distributed as dist

    from . import distributed
    from .config import Config
    from .fileio import atomic_write
    from .replicas import tiny_vgg16
    from .train import probe_outputs
    cfg = Config(**json.loads(config))
    if cfg.device.startswith("cuda"):
        torch.cuda.set_device(cfg.device)
    # gloo, set up here: two ranks on one GPU (NCCL refuses that; torchrun's env would ask for it)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        r = distributed.run_packnet_distributed(cfg, build_model=functools.partial(tiny_vgg16, batch_norm=True),
                                                verbose=False)
        model, engine = r["model"], r["engine"]
        mine = {"rank": rank, "outputs_identical": r["outputs_identical"], "matrix": r["matrix"],
                "task_outputs": [distributed.checksum({"logits": probe_outputs(model, engine, k, t, cfg)})
                                 for k, t in enumerate(r["tasks"], start=1)],
                "batchnorm_buffers": distributed.checksum(dict(model.trunk.named_buffers())),
                "weights": distributed.checksum(dict(model.named_parameters()))}
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            atomic_write(out, json.dumps(everyone))
    finally:
        dist.destroy_process_group()


def distributed_check(work: Path, device: str = "cpu", max_train: int = 256, epochs: int = 1,
                      timeout: float = 600, tasks=("digits", "animals")) -> dict:
    """Figure (e): two ranks (gloo, on one device) train PackNet on `tasks` with
    a BatchNorm trunk (replicas.tiny_vgg16, batch_norm=True); are every task's
    outputs, the BatchNorm buffers and the weights identical on both ranks?"""
    import torch.multiprocessing as mp

    from .config import Config
    work.mkdir(parents=True, exist_ok=True)
    cfg = Config(tasks=tasks, model="vgg16_bn", device=device, epochs=epochs, retrain_epochs=1,
                 max_train=max_train, batch_size=32, lr=0.01)
    out = work / "ranks.json"
    ctx = mp.start_processes(_rank_main, args=(2, str(work / "store"), json.dumps(cfg.to_dict()), str(out)),
                             nprocs=2, join=False, start_method="spawn")
    t_end = time.time() + timeout
    while not ctx.join(timeout=1):
        if time.time() > t_end:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"the two ranks did not finish within {timeout:.0f}s")
    ranks = json.loads(out.read_text())
    same = {k: len({json.dumps(r[k]) for r in ranks}) == 1 for k in ("task_outputs", "batchnorm_buffers", "weights")}
    return {"part": "distributed_check", "device": device, "backend": "gloo", "ranks": len(ranks),
            "model": "tiny_vgg16 (batch_norm=True)", "tasks": list(tasks), "max_train": max_train,
            "ranks_detail": ranks, "identical_across_ranks": same,
            "outputs_identical_within_each_rank": [all(r["outputs_identical"]) for r in ranks],
            "old_task_outputs_identical_on_both_ranks": same["task_outputs"] and all(
                all(r["outputs_identical"]) for r in ranks)}


# ------------------------------------------------------------------ probes across processes
class _StopAfterTask1(Exception):
    pass


def _probe_stage(stage: int, out: str, config: str) -> None:
    """Stage 1: train task 1 of `config` and stop once it is frozen and
    checkpointed (as a killed run would); stage 2: `--resume` it in this new
    process, which recomputes task 1's probe logits and compares them."""
    from . import checkpoint as ck
    from .config import Config
    from .experiments import run_packnet_to
    from .train import run_packnet
    cfg = Config(**json.loads(config))
    path = Path(out) / "checkpoint.pt"
    if stage == 1:
        def save_and_stop(progress, model, engine, names):
            ck.save(ck.make_checkpoint(model, engine, cfg.to_dict(), names, progress), path)
            if progress["phase"] == "end" and progress["task"] == 1:
                raise _StopAfterTask1
        try:
            run_packnet(cfg, on_phase_end=save_and_stop, verbose=False)
        except _StopAfterTask1:
            return
        raise SystemExit("error: stage 1 ran past task 1")
    r = run_packnet_to(cfg, Path(out), resume=True, verbose=False)
    print(json.dumps({"outputs_identical": r["outputs_identical"], "matrix": r["matrix"]}))


def probe_check(out: Path, device: str = "cpu", model: str = "small_vgg", amp: bool = False,
                channels_last: bool = False, max_train: int | None = 256, timeout: float = 600,
                tasks=("digits", "animals")) -> dict:
    """Are old tasks' probe logits bit-identical when computed in another
    process? Two offline tasks (`tasks`: quick to load); process 1 trains and freezes
    task 1 (its checkpoint holds task 1's probe), process 2 resumes, trains
    task 2 and recomputes the probe. With cudnn.benchmark on, process 2 may
    pick other convolution algorithms: probes are computed with deterministic
    kernels (train.deterministic_kernels), so equal weights give equal bits."""
    import subprocess
    import sys

    from .config import Config
    cfg = Config(tasks=tasks, model=model, device=device, amp=amp, channels_last=channels_last,
                 epochs=1, retrain_epochs=1, max_train=max_train, batch_size=64, lr=0.01)
    config = json.dumps(cfg.to_dict())
    code = "import sys; from packnet_edu.bench import _probe_stage; _probe_stage(int(sys.argv[1]), sys.argv[2], sys.argv[3])"
    procs = []
    for stage in (1, 2):
        p = subprocess.run([sys.executable, "-c", code, str(stage), str(out), config],
                           check=False, capture_output=True, text=True, timeout=timeout)
        procs.append(p)
        if p.returncode != 0:
            raise RuntimeError(f"probe check stage {stage} failed:\n{p.stderr[-3000:]}")
    result = json.loads(procs[1].stdout.strip().splitlines()[-1])
    return {"part": "probe_check", "device": device, "model": model, "amp_bf16": amp,
            "channels_last": channels_last, "processes": 2, **result,
            "task1_probe_identical_across_processes": result["outputs_identical"][0]}


# ------------------------------------------------------------------ command line
MAX_IMAGE_SIZE = 1024        # 4.6x the paper's 224: beyond it a batch's activations outgrow any GPU


def device_arg(text: str) -> str:
    """An argparse type: "cpu", "cuda" or "cuda:N" (what bench can time)."""
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: bench runs on cpu or cuda (cuda:N for the N-th GPU)")


def _shape_check(model_name: str):
    """A function size -> does one image of `size` x `size` pass through
    `model_name`? (Shapes only: the model lives on the meta device, so no
    memory and no arithmetic.)"""
    with torch.device("meta"):
        model = _model(model_name, [10], "meta", False).eval()
    channels = model.trunk[0].in_channels if model_name == "small_vgg" else 3

    def fits(size: int) -> bool:
        try:
            model(torch.empty(1, channels, size, size, device="meta"), 1)
        except (RuntimeError, ValueError):
            return False
        return True
    return fits


def check_image_size(model_name: str, size: int) -> None:
    """Stop with one line if `model_name` cannot take `size` x `size` images."""
    if size > MAX_IMAGE_SIZE:
        raise SystemExit(f"error: --image-size {size}: at most {MAX_IMAGE_SIZE} (the paper trains at 224)")
    fits = _shape_check(model_name)
    if fits(size):
        return
    if model_name == "small_vgg":            # its flattening layer takes one size class only
        ok = [s for s in range(1, 65) if fits(s)]
        span = f"{ok[0]} to {ok[-1]}"
    else:                                    # pooling by halving: every size from the smallest one on works
        lo, hi = 1, 224
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        span = f"{lo} or more"
    raise SystemExit(f"error: --image-size {size} does not fit {model_name} (its pooling layers shrink the "
                     f"image to nothing or to the wrong size): give {span}")


def check_bench_args(args) -> None:
    """Every check of `bench`'s flags, before any model, file or image is made."""
    config.check_device(config.Config(device=args.device))   # a GPU this machine lacks: ConfigError, one line
    if args.part == "step" or args.image_size is not None:
        check_image_size(args.model if args.part != "loader" else "vgg16",
                         args.image_size or (28 if args.model == "small_vgg" and args.part == "step" else 224))
    if args.part != "step":
        from .vgg_data import resolve_workers
        skip = max(resolve_workers(args.workers), 1)
        need = args.batch_size * skip + 1
        if args.images < need:
            raise SystemExit(f"error: --images {args.images}: the loader is timed after its first {skip} "
                             f"batch(es) of {args.batch_size} (one per worker), so give at least {need}")


def main_bench(args) -> int:
    check_bench_args(args)
    if args.part == "step":
        r = bench_step(args.model, args.device, args.batch_size, args.image_size, args.steps, args.trials,
                       args.amp, args.channels_last, args.weight_decay, args.optimizer)
        print_result(r)
    else:
        with tempfile.TemporaryDirectory(prefix="packnet-bench-") as tmp:
            folder = make_jpegs(Path(tmp), args.images)
            if args.part == "loader":
                r = {"runs": [bench_loader(folder, d, args.workers, args.batch_size, args.device,
                                           args.image_size or 224) for d in args.decode]}
                for x in r["runs"]:
                    print(f"loader {x['decode']:4s} {x['workers']} worker(s): {x['images_per_s']:8.1f} images/s, "
                          f"{x['images_per_s_per_worker']:7.1f} per worker ({x['image_size']}px, batch {x['batch_size']})")
            else:
                r = bench_loop(folder, args.model, args.device, args.decode[0], args.workers, args.batch_size,
                               args.image_size or 224, args.amp, args.channels_last)
                print(f"training loop {r['model']} on {r['device']} ({r['device_name']}), decode {r['decode']}, "
                      f"{r['workers']} worker(s): {r['images_per_s']:.1f} images/s")
    if args.json:
        from .fileio import atomic_write
        atomic_write(args.json, json.dumps(r, indent=1))
        print(f"wrote {args.json}")
    return 0


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="time training: a protected step against a plain one, the image "
                                     "loaders, the real training loop")
    p.add_argument("part", nargs="?", default="step", choices=["step", "loader", "loop"])
    p.add_argument("--model", default="small_vgg",
                   choices=["small_vgg", "vgg16", "vgg16_bn", "tiny_vgg16", "resnet50", "densenet121"])
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=at_least(1), default=PRESET_BATCH, help="default: the paper preset's 32")
    p.add_argument("--image-size", type=at_least(8), default=None, help="default: 28 (small_vgg), 224 (the others)")
    p.add_argument("--steps", type=at_least(1), default=10, help="step: steps per timed trial")
    p.add_argument("--trials", type=at_least(1), default=7, help="step: timed trials of each kind, interleaved")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--weight-decay", type=at_least(0.0, float), default=PRESET_WEIGHT_DECAY,
                   help="step: default 0, the preset's (non-zero: the protection restores after each step)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="step: the optimizer timed")
    p.add_argument("--decode", nargs="+", default=["pil", "cpu"], choices=["pil", "cpu", "gpu"],
                   help="loader/loop: decode paths (loop uses the first)")
    p.add_argument("--workers", type=at_least(0), default=None, help="loader/loop: default one per core but one")
    p.add_argument("--images", type=at_least(1), default=256, help="loader/loop: synthetic 500x375 JPEGs")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=main_bench)
