"""What exactness costs off the per-step path, on VGG-16-sized weights.

    python benchmarks/bench_exactness.py [--threads 1]

Times, on VGG-16's trunk (138 M weights, random init) in the middle of task 2:
- a phase call's verification of every frozen value by bits (fingerprints: mask
  mode holds no copy of the weights), against comparing with a stored copy;
- recording the fingerprints (every phase call does, after it verifies);
- entering a view when nothing was written since the last check (version
  counters only), and when training wrote the weights (fingerprints again).
Prints seconds, and bytes held per packed weight in each mode.
"""
import argparse
import time

import torch
import torchvision

from packnet_edu import PackNet
from packnet_edu.bits import fingerprint, same_bits


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trunk = torchvision.models.vgg16().features
    trunk = torch.nn.Sequential(trunk, torch.nn.Flatten(), *list(torchvision.models.vgg16().classifier)[:-1])
    engine = PackNet(trunk)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    engine.start_task()
    n = sum(w.numel() for w in engine.weights.values())
    print(f"VGG-16 trunk: {n / 1e6:.1f} M packed weights, {args.threads} thread(s)")
    verify = best_of(lambda: engine._verify(full=True))
    prints = best_of(lambda: [fingerprint(w, skip=engine._trainable[k]) for k, w in engine.weights.items()])
    copies = {k: w.detach().clone() for k, w in engine.weights.items()}
    compare = best_of(lambda: all(same_bits(torch.where(engine._trainable[k], copies[k], w), copies[k])
                                  for k, w in engine.weights.items()))
    view_clean = best_of(lambda: engine.task_view(1).__enter__() and None, repeat=5)
    with torch.no_grad():                   # an in-place write, as a training step does: versions move
        for w in engine.weights.values():
            w.mul_(1)
    view_written = best_of(lambda: engine.task_view(1).__enter__() and None, repeat=1)
    mask_bytes = 1 + 1      # owner map + trainable mask; fingerprints are two 64-bit sums per layer
    print(f"phase-call verification by fingerprints : {verify:7.3f} s")
    print(f"  (fingerprints alone                   : {prints:7.3f} s)")
    print(f"  the same against a stored copy        : {compare:7.3f} s (restore mode has one)")
    print(f"entering a view, nothing written        : {view_clean * 1e3:7.3f} ms")
    print(f"entering a view after weights were written: {view_written:7.3f} s")
    print(f"bytes held per packed weight: mask mode {mask_bytes}, restore mode {mask_bytes + 4} (float32 copy)")


if __name__ == "__main__":
    main()
