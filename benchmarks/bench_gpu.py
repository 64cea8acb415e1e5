"""Training throughput of VGG-16 with PackNet's protection against plain
training, measured side by side in one run (issue: "Speed on one GPU").

    python benchmarks/bench_gpu.py                       # CUDA: 224x224, bf16, channels_last
    python benchmarks/bench_gpu.py --device cpu --image-size 64 --steps 3   # smoke test

One VGG-16 in the state PackNet trains every task after the first: task 1
owns half of each layer (pruned 50%, frozen), task 2 trains the rest. Its
training step (forward, backward, SGD with momentum) is timed two ways on the
same model and the same batch: plain, and with `engine.protect(optimizer)`
(which writes back task 1's weights after every step). Timed trials of the
two are interleaved, alternating which goes first, and medians are compared,
so drifting clocks and noisy neighbours hit both alike.

Prints images/s for each, their ratio (target on one H100: >= 0.97, plain
>= 2,000 images/s), the achieved TFLOP/s (3 x the forward FLOPs, counted from
the model's layers), the device and torch version; writes the same as JSON
to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from packnet_edu.engine import PackNet  # noqa: E402
from packnet_edu.models import vgg16  # noqa: E402
from packnet_edu.replicas import tiny_vgg16  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def forward_flops(model, x: torch.Tensor, task: int) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass of one image through the
    convolutions and linear layers (VGG-16 at 224x224: about 31 GFLOPs, 15.5 G MACs)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            k = m.weight[0].numel()                      # in/groups * kh * kw
            macs.append(out[0].numel() * k)
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


def setup(args):
    torch.manual_seed(0)
    build = tiny_vgg16 if args.model == "tiny" else (lambda n: vgg16(n, batch_norm=args.model == "vgg16_bn"))
    model = build([1000, 200]).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = PackNet(model.trunk)
    engine.start_task()
    # Task 1 keeps a random half of each layer (the timing does not depend on
    # which half; engine.prune sorts 100M magnitudes on the CPU, a minute for VGG-16).
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, owner in engine.owner.items():
            drop = torch.rand(owner.shape, generator=g).to(owner.device) < 0.5
            owner[drop] = 0
            engine.weights[name][drop.to(engine.weights[name].device)] = 0.0
    engine.end_task()
    engine.start_task()
    params = list(model.trunk.parameters()) + list(model.heads[1].parameters())
    plain = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    protected = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    engine.protect(protected)
    return model, engine, {"plain": plain, "protected": protected}


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="vgg16", choices=["vgg16", "vgg16_bn", "tiny"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="training steps per timed trial")
    p.add_argument("--trials", type=int, default=5, help="timed trials of each kind, interleaved")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/bench_<device>.json")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible; run with --device cpu for a smoke test")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, engine, opts = setup(args)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device).to(memory_format=fmt)
    y = torch.randint(0, 200, (args.batch_size,), device=args.device)
    flops = 3 * forward_flops(model, x, 2)           # forward + backward (2x) per image
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run(kind: str, steps: int) -> float:
        opt = opts[kind]
        model.train()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and args.amp):
                loss = F.cross_entropy(model(x, 2), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return (time.perf_counter() - t0) / steps

    frozen = {n: w.detach().clone() for n, w in engine.weights.items()}
    run("plain", args.warmup)
    run("protected", args.warmup)
    times = {"plain": [], "protected": []}
    for i in range(args.trials):
        for kind in (("plain", "protected") if i % 2 == 0 else ("protected", "plain")):
            times[kind].append(run(kind, args.steps))
    step = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch_size / s for k, s in step.items()}
    # Plain steps moved task 1's weights (they are unprotected); the last
    # protected step wrote them back: a protected step restores them exactly.
    run("protected", 1)
    exact = all(torch.equal(w[o == 1], frozen[n][o == 1]) for n, o, w in
                ((n, engine.owner[n].to(w.device), w.detach()) for n, w in engine.weights.items()))
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine() or "cpu")
    result = {
        "device": args.device, "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "model": args.model, "image_size": args.image_size,
        "batch_size": args.batch_size, "amp_bf16": cuda and args.amp, "channels_last": args.channels_last,
        "cudnn_benchmark": cuda, "steps_per_trial": args.steps, "trials": args.trials,
        "step_s": step, "step_s_trials": times, "images_per_s": ips,
        "ratio_protected_over_plain": ips["protected"] / ips["plain"],
        "tflops": {k: flops * v / 1e12 for k, v in ips.items()},
        "gflops_per_image_train": flops / 1e9, "task1_weights_exact_after_protected_step": exact,
        "targets": {"ratio_min": 0.97, "plain_images_per_s_min": 2000},
    }
    print(f"{args.model} on {args.device} ({name}), torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, bf16 {result['amp_bf16']}, channels_last {args.channels_last}")
    print(f"median of {args.trials} interleaved trials x {args.steps} steps; "
          f"{flops / 1e9:.1f} GFLOP per training image")
    for k in ("plain", "protected"):
        print(f"  {k:9s} {1000 * step[k]:9.2f} ms/step  {ips[k]:9.1f} images/s  {result['tflops'][k]:7.2f} TFLOP/s")
    print(f"  ratio protected/plain = {result['ratio_protected_over_plain']:.4f} (target >= 0.97)")
    print(f"  task 1 weights bit-identical after a protected step: {exact}")
    out = args.json or RESULTS / f"bench_{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
