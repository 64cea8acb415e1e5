"""VGG-16 training throughput with PackNet's protection against plain training,
on one GPU, side by side in one run (the measurement itself is
`packnet_edu.bench`; this script fixes the GPU settings and the output file).

    python benchmarks/bench_gpu.py                  # CUDA, 224x224, bf16, channels_last, batch 32 and 64
    python benchmarks/bench_gpu.py --batch-size 32  # one batch size
    python benchmarks/bench_gpu.py --device cpu --model tiny_vgg16 --image-size 32 --steps 1 --trials 1

Batch 32 with SGD (momentum 0.9, weight decay 0) is what the paper preset
trains with; 64 is shown beside it (the protection's cost per step is fixed,
so its share shrinks as the batch grows). Target on one H100: images/s
protected/plain >= 0.97 at batch 32. Writes benchmarks/results/bench_<device>_b<batch>.json.
For every GPU figure at once (loader, training loop, tests, probes, the
offline sequence) run scripts/gpu_evidence.py instead.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from packnet_edu.cli import main  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    batches = [argv[argv.index("--batch-size") + 1]] if "--batch-size" in argv else ["32", "64"]
    rc = 0
    for batch in batches:
        defaults = ["--model", "vgg16", "--device", "cuda", "--image-size", "224", "--batch-size", batch,
                    "--steps", "20", "--trials", "5",
                    "--json", str(RESULTS / f"bench_{device.split(':')[0]}_b{batch}.json")]
        if device.startswith("cuda"):
            defaults += ["--amp", "--channels-last"]
        rc |= main(["bench", "step", *defaults, *argv])     # later flags override earlier ones
    sys.exit(rc)
