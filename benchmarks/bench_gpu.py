"""VGG-16 training throughput with PackNet's protection against plain training,
on one GPU, side by side in one run (the measurement itself is
`packnet_edu.bench`; this script fixes the GPU settings and the output file).

    python benchmarks/bench_gpu.py                 # CUDA, 224x224, bf16, channels_last, batch 64
    python benchmarks/bench_gpu.py --device cpu --model tiny_vgg16 --image-size 32 --steps 1 --trials 1

Targets on one H100: images/s protected/plain >= 0.97, plain >= 2,000 images/s.
Writes benchmarks/results/bench_<device>.json.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from packnet_edu.cli import main  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    defaults = ["--model", "vgg16", "--device", "cuda", "--image-size", "224", "--batch-size", "64",
                "--steps", "20", "--trials", "5", "--json", str(RESULTS / f"bench_{device.split(':')[0]}.json")]
    if device.startswith("cuda"):
        defaults += ["--amp", "--channels-last"]
    sys.exit(main(["bench", *defaults, *argv]))     # later flags override earlier ones
