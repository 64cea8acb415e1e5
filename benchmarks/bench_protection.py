"""What protection and views cost, side by side in one process (issue 20).

    python benchmarks/bench_protection.py [--rounds 5] [--threads 1] [--skip-vgg]

Every workload is timed against its plain counterpart in interleaved rounds
(plain, then each variant, repeated), and the ratio of medians is printed:
- training, task 2: packnet_edu's protection in mask mode (fresh SGD, no
  weight decay) and restore mode (weight decay: plain has it too), and a
  faithful port of the original code's rule (zero the frozen gradients by
  boolean indexing before the step, zero the pruned weights after it);
- inference as task 1: under task_view (entered once, and once per batch),
  and through the export of task 1 (a dense copy), against plain inference.
Workloads: the small CNN (batch 128, 28 px) and VGG-16 (batch 8, 64 px).
CPU times of a shared machine are noisy: read the ratios, not the seconds.
"""
import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from packnet_edu import PackNet, small_vgg
from packnet_edu.checkpoint import export_task
from packnet_edu.models import MultiHeadNet


def vgg16_net(classes=(10, 10)):
    v = torchvision.models.vgg16()
    trunk = nn.Sequential(v.features, nn.Flatten(), *list(v.classifier)[:-1])
    return MultiHeadNet(trunk, 4096, list(classes))


def packed(build, shape):
    """A model in the middle of task 2: task 1 pruned 50% and frozen."""
    torch.manual_seed(0)
    model = build()
    engine = PackNet(model.trunk, heads=model.heads)
    engine.start_task()
    engine.prune(0.5)
    engine.end_task()
    engine.start_task()
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (shape[0],))
    return model, engine, x, y


def original_rule(engine):
    """The released code's per-step rule, ported: returns (before_step, after_step)."""
    frozen = {n: engine.owner[n].ne(engine.training_task) for n in engine.weights}
    pruned = {n: engine.owner[n].eq(0) for n in engine.weights}

    def before():
        for n, w in engine.weights.items():
            w.grad[frozen[n]] = 0

    def after():
        with torch.no_grad():
            for n, w in engine.weights.items():
                w[pruned[n]] = 0
    return before, after


def training_step(model, x, y, opt, before=None, after=None):
    opt.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(model(x, 2), y).backward()
    if before:
        before()
    opt.step()
    if after:
        after()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(variants: dict, rounds: int) -> dict:
    times = {k: [] for k in variants}
    for fn in variants.values():          # warm-up (allocations, first-touch)
        fn()
    for _ in range(rounds):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def training(build, shape, rounds):
    """One model per variant (same initialisation): an unprotected step on a
    shared model would move task 1, which the protected ones then refuse."""
    def setup(weight_decay, protect):
        model, engine, x, y = packed(build, shape)
        params = list(model.trunk.parameters()) + list(model.heads[1].parameters())
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=weight_decay)
        handle = engine.protect(opt) if protect else None
        model.train()
        return model, engine, x, y, opt, handle
    plain, plain_wd = setup(0, False), setup(5e-4, False)
    mask, restore, orig = setup(0, True), setup(5e-4, True), setup(0, False)
    before, after = original_rule(orig[1])
    step = lambda v, *hooks: (lambda: training_step(v[0], v[2], v[3], v[4], *hooks))   # noqa: E731
    m = interleave({"plain": step(plain), "mask": step(mask), "plain+wd": step(plain_wd),
                    "restore": step(restore), "original": step(orig, before, after)}, rounds)
    assert mask[5].mode == "mask" and restore[5].mode == "restore"
    return {"mask": m["mask"] / m["plain"], "restore": m["restore"] / m["plain+wd"],
            "original": m["original"] / m["plain"], "plain_s": m["plain"]}


def inference(build, shape, rounds, batches=4):
    model, engine, x, _ = packed(build, shape)
    engine.end_task()
    model.eval()
    exported = export_task(model, engine, 1).eval()
    trunk, head = model.trunk, model.heads[0]

    def plain():
        for _ in range(batches):
            head(trunk(x))

    def view_once():
        with engine.task_view(1):
            for _ in range(batches):
                head(trunk(x))

    def view_per_batch():
        for _ in range(batches):
            with engine.task_view(1):
                head(trunk(x))

    def export():
        for _ in range(batches):
            exported(x)
    with torch.no_grad():
        m = interleave({"plain": plain, "view_once": view_once, "view_per_batch": view_per_batch,
                        "export": export}, rounds)
    return {k: m[k] / m["plain"] for k in ("view_once", "view_per_batch", "export")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-vgg", action="store_true", help="the small CNN only (a quick run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds, "
          "ratios of medians (variant / plain)")
    workloads = [("small CNN, batch 128, 28 px", lambda: small_vgg([10, 10]), (128, 1, 28, 28))]
    if not args.skip_vgg:
        workloads.append(("VGG-16, batch 8, 64 px", vgg16_net, (8, 3, 64, 64)))
    for name, build, shape in workloads:
        t = training(build, shape, args.rounds)
        print(f"{name}: training step {t['plain_s'] * 1e3:.1f} ms plain; protected/plain: "
              f"mask {t['mask']:.3f}, restore {t['restore']:.3f} (vs plain with weight decay), "
              f"original rule {t['original']:.3f}")
        i = inference(build, shape, args.rounds)
        print(f"{name}: task-1 inference / plain: view entered once {i['view_once']:.3f}, "
              f"per batch {i['view_per_batch']:.3f}, export {i['export']:.3f}")


if __name__ == "__main__":
    main()
