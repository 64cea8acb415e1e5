"""What PackNet's protection costs: a protected training step against a plain
one, same model, same batch, measured side by side (interleaved trials,
median), so machine noise hits both alike.

    python -m packnet_edu bench                      # small_vgg on the CPU
    python -m packnet_edu bench --model vgg16 --device cuda --image-size 224 --batch-size 64 --amp
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .engine import PackNet
from .models import build_model


@dataclass
class BenchResult:
    model: str
    device: str
    device_name: str
    batch_size: int
    image_size: int
    plain_step_s: float
    protected_step_s: float

    @property
    def ratio(self) -> float:
        """protected time / plain time (1.10 = protection costs 10%)."""
        return self.protected_step_s / self.plain_step_s

    def to_dict(self) -> dict:
        return dict(self.__dict__, ratio=self.ratio, torch=torch.__version__,
                    images_per_s_plain=self.batch_size / self.plain_step_s,
                    images_per_s_protected=self.batch_size / self.protected_step_s,
                    python=platform.python_version())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_setup(model_name: str, device: str, protected: bool, channels_last: bool):
    """A model in the middle of task 2 (task 1 trained, pruned 50%, frozen), as
    PackNet trains every task after the first; `protected` adds the engine's hook."""
    torch.manual_seed(0)
    in_ch = 1 if model_name == "small_vgg" else 3
    model = build_model(model_name, [10, 10]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.trunk.parameters()) + list(model.heads[1].parameters())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    if protected:
        engine = PackNet(model.trunk)
        engine.start_task(); engine.prune(0.5); engine.end_task(); engine.start_task()
        engine.protect(opt)
    return model, opt, in_ch


def bench_step(model_name: str = "small_vgg", device: str = "cpu", batch_size: int = 64,
               image_size: Optional[int] = None, steps: int = 10, trials: int = 7,
               amp: bool = False, channels_last: bool = False) -> BenchResult:
    image_size = image_size or (28 if model_name == "small_vgg" else 224)
    setups = {p: make_setup(model_name, device, p, channels_last) for p in (False, True)}
    in_ch = setups[False][2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_ch, image_size, image_size, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)

    def run(protected: bool, n: int) -> float:
        model, opt, _ = setups[protected]
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda")):
                loss = F.cross_entropy(model(x, 2), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return (time.perf_counter() - t0) / n

    run(False, 2); run(True, 2)                      # warm-up (allocator, cudnn autotune)
    times = {False: [], True: []}
    for i in range(trials):                          # interleaved, alternating first
        for p in ((False, True) if i % 2 == 0 else (True, False)):
            times[p].append(run(p, steps))
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    return BenchResult(model_name, device, name, batch_size, image_size,
                       statistics.median(times[False]), statistics.median(times[True]))


def main_bench(args) -> int:
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
        torch.backends.cudnn.benchmark = True
    r = bench_step(args.model, args.device, args.batch_size, args.image_size, args.steps, args.trials,
                   args.amp, args.channels_last)
    print(f"model {r.model} on {r.device} ({r.device_name}), batch {r.batch_size}, "
          f"{r.image_size}x{r.image_size}, median of {args.trials} interleaved trials of {args.steps} steps")
    print(f"  plain step      {1000 * r.plain_step_s:8.2f} ms  ({r.batch_size / r.plain_step_s:8.1f} images/s)")
    print(f"  protected step  {1000 * r.protected_step_s:8.2f} ms  ({r.batch_size / r.protected_step_s:8.1f} images/s)")
    print(f"  ratio protected/plain = {r.ratio:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0


def add_bench_command(sub) -> None:
    from pathlib import Path
    p = sub.add_parser("bench", help="time a PackNet-protected training step against a plain one")
    p.add_argument("--model", default="small_vgg", choices=["small_vgg", "vgg16", "vgg16_bn"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="steps per timed trial")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=main_bench)
