"""What PackNet's protection costs: a protected training step against a plain
one, same model, same batch, measured side by side in one run.

    python -m packnet_edu bench                                   # small_vgg, CPU (target ratio <= 1.10)
    python -m packnet_edu bench --model vgg16 --device cuda --image-size 224 \\
        --batch-size 64 --amp --channels-last                     # one GPU (target >= 0.97 in images/s)

The model is in the state PackNet trains every task after the first: task 1
owns half of each layer (pruned 50%, frozen), task 2 trains the rest. One
model, two SGD optimizers over the same parameters: a plain one and one with
`engine.protect` (which writes back task 1's weights after each step). Timed
trials of the two are interleaved, alternating which goes first, and medians
compared, so drifting clocks and noisy neighbours hit both alike. Prints
step times, images/s, their ratio, the achieved TFLOP/s and the device.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .engine import PackNet
from .models import build_model


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


def setup(model_name: str, device: str, channels_last: bool):
    """A model in the middle of task 2 and the two optimizers."""
    torch.manual_seed(0)
    if model_name == "tiny_vgg16":
        from .replicas import tiny_vgg16
        model = tiny_vgg16([10, 10])
    else:
        model = build_model(model_name, [10, 10])
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = PackNet(model.trunk)
    engine.start_task(); engine.prune(0.5); engine.end_task(); engine.start_task()
    params = list(model.trunk.parameters()) + list(model.heads[1].parameters())
    plain = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    protected = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    engine.protect(protected)
    return model, engine, {"plain": plain, "protected": protected}


def bench_step(model_name: str = "small_vgg", device: str = "cpu", batch_size: int = 64,
               image_size: Optional[int] = None, steps: int = 10, trials: int = 7,
               amp: bool = False, channels_last: bool = False) -> Dict:
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    image_size = image_size or (28 if model_name == "small_vgg" else 224)
    model, engine, opts = setup(model_name, device, channels_last)
    in_ch = model.trunk[0].in_channels if model_name == "small_vgg" else 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_ch, image_size, image_size, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    flops = 3 * forward_flops(model, x, 2)            # forward + backward (2x) per image
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run(kind: str, n: int) -> float:
        opt = opts[kind]
        model.train()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and amp):
                loss = F.cross_entropy(model(x, 2), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return (time.perf_counter() - t0) / n

    frozen = {n: w.detach().clone() for n, w in engine.weights.items()}
    run("plain", 2); run("protected", 2)               # warm-up (allocator, cudnn autotuning)
    times = {"plain": [], "protected": []}
    for i in range(trials):
        for kind in (("plain", "protected") if i % 2 == 0 else ("protected", "plain")):
            times[kind].append(run(kind, steps))
    # Plain steps moved task 1's weights (nothing protects them); one protected
    # step must put every one of them back exactly.
    run("protected", 1)
    exact = all(torch.equal(w.detach()[engine.owner[n].to(w.device) == 1],
                            frozen[n][engine.owner[n].to(w.device) == 1]) for n, w in engine.weights.items())
    step = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch_size / s for k, s in step.items()}
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    return {
        "model": model_name, "device": device, "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "batch_size": batch_size, "image_size": image_size,
        "amp_bf16": cuda and amp, "channels_last": channels_last, "steps_per_trial": steps, "trials": trials,
        "step_s": step, "step_s_trials": times, "images_per_s": ips,
        "ratio_time_protected_over_plain": step["protected"] / step["plain"],
        "ratio_images_per_s_protected_over_plain": ips["protected"] / ips["plain"],
        "tflops": {k: flops * v / 1e12 for k, v in ips.items()}, "gflops_per_training_image": flops / 1e9,
        "task1_weights_exact_after_protected_step": exact,
    }


def print_result(r: Dict) -> None:
    print(f"{r['model']} on {r['device']} ({r['device_name']}), torch {r['torch']}, batch {r['batch_size']}, "
          f"{r['image_size']}x{r['image_size']}, bf16 {r['amp_bf16']}, channels_last {r['channels_last']}")
    print(f"median of {r['trials']} interleaved trials x {r['steps_per_trial']} steps; "
          f"{r['gflops_per_training_image']:.2f} GFLOP per training image")
    for k in ("plain", "protected"):
        print(f"  {k:9s} {1000 * r['step_s'][k]:9.2f} ms/step  {r['images_per_s'][k]:9.1f} images/s  "
              f"{r['tflops'][k]:7.3f} TFLOP/s")
    print(f"  ratio protected/plain: step time {r['ratio_time_protected_over_plain']:.3f}, "
          f"images/s {r['ratio_images_per_s_protected_over_plain']:.3f}")
    print(f"  task 1 weights bit-identical after a protected step: {r['task1_weights_exact_after_protected_step']}")


def main_bench(args) -> int:
    r = bench_step(args.model, args.device, args.batch_size, args.image_size, args.steps, args.trials,
                   args.amp, args.channels_last)
    print_result(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))
        print(f"wrote {args.json}")
    return 0


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="time a PackNet-protected training step against a plain one")
    p.add_argument("--model", default="small_vgg", choices=["small_vgg", "vgg16", "vgg16_bn", "tiny_vgg16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="default: 28 (small_vgg), 224 (VGG-16)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed trial")
    p.add_argument("--trials", type=int, default=7, help="timed trials of each kind, interleaved")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=main_bench)
