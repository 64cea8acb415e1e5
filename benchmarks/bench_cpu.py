"""What this CPU says about the GPU pipeline, side by side (small sizes: a
2-core machine shared with other work; prefix with `nice`):

    python benchmarks/bench_cpu.py [--images 96] [--workers 1] [--json FILE]

1. loader images/s per worker, the reference transform path ("pil": PIL
   decode, Resize 256, RandomCrop 224, flip, ToTensor, Normalize) against the
   default one ("cpu": torchvision.io decode, v2 transforms on uint8,
   normalised on the device), on synthetic 500x375 JPEGs: one worker's work
   timed in this process (interleaved trials), then through the DataLoader;
2. the protection's bytes per step for VGG-16 at the preset's state (task 2
   training, task 1 frozen) in both modes, and the protected/plain ratio that
   traffic implies for a plain step of --plain-step-ms at 3 TB/s (an estimate);
3. the measured protected/plain ratio at the preset's batch (32) and
   optimizer (SGD, momentum 0.9, weight decay 0) on a small network here.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from packnet_edu import bench  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96, help="synthetic 500x375 JPEGs for the loader")
    p.add_argument("--workers", type=int, default=None, help="default: one per core but one")
    p.add_argument("--plain-step-ms", type=float, default=16.0,
                   help="plain VGG-16 step at batch 32 on the GPU the estimate is for (16 ms: the "
                        "issue's H100 estimate; replace with bench_gpu.py's measurement)")
    p.add_argument("--model", default="tiny_vgg16", help="network of the measured step ratio")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory(prefix="packnet-bench-") as tmp:
        folder = bench.make_jpegs(Path(tmp), args.images)
        w = out["per_worker"] = bench.bench_per_worker(folder)
        out["loader"] = [bench.bench_loader(folder, d, args.workers, batch_size=8) for d in ("pil", "cpu")]
    print("1. loader, 500x375 JPEGs -> 224x224 training images")
    print(f"   per worker (one thread, {w['images']} images, median of {w['trials']} interleaved trials):")
    for d in ("pil", "cpu"):
        print(f"   {d:4s} path: {w['ms_per_image'][d]:6.2f} ms per image = "
              f"{w['images_per_s_per_worker'][d]:7.1f} images/s per worker")
    print(f"   new/old per worker: {w['images_per_s_per_worker']['cpu'] / w['images_per_s_per_worker']['pil']:.2f}x")
    for r in out["loader"]:
        print(f"   through DataLoader, {r['decode']:4s} path, {r['workers']} worker(s), batch 8: "
              f"{r['images_per_s']:7.1f} images/s ({r['images']} images timed)")
    cost = out["protection"] = bench.protection_cost("vgg16", args.plain_step_ms)
    print(f"2. protection of VGG-16 ({cost['packed_weights']:,} packed weights), task 2 training, batch 32:")
    for mode in ("mask", "restore"):
        c = cost[mode]
        print(f"   {mode:7s} {c['bytes_per_step'] / 1e9:.3f} GB per step = {c['ms']:.3f} ms at 3 TB/s -> "
              f"estimated ratio {c['estimated_ratio']:.3f} for a {args.plain_step_ms:g} ms plain step")
    r = out["step"] = bench.bench_step(args.model, "cpu", batch_size=bench.PRESET_BATCH,
                                       image_size=32 if args.model != "small_vgg" else None, steps=3, trials=5)
    print(f"3. measured here: {args.model}, batch {r['batch_size']}, {r['image_size']}px, SGD weight decay 0: "
          f"plain {1000 * r['step_s']['plain']:.1f} ms, protected {1000 * r['step_s']['protected']:.1f} ms, "
          f"ratio images/s {r['ratio_images_per_s_protected_over_plain']:.3f} (mode {r['protection_mode']}, "
          f"{r['protection_bytes_per_step'] / 1e6:.2f} MB per step), task 1 exact: "
          f"{r['task1_weights_exact_after_protected_step']}")
    if args.json:
        from packnet_edu.fileio import atomic_write
        atomic_write(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
