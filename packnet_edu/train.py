"""Training: plain functions in the style of torchvision's references.

`train_one_epoch` and `evaluate` know nothing about PackNet; `fit` trains one
phase and keeps the epoch with the best *validation* accuracy;
`run_packnet` trains, prunes, retrains and freezes each task in turn.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import Config, PruneSpec, check_task_names, prune_schedule  # noqa: F401 (re-exported)
from .data import Task, as_rgb, make_loader, offline_sequence
from .engine import PackNet
from .models import MultiHeadNet, build_model


# ------------------------------------------------------------ the loop
def autocast(device: str, amp: bool):
    """bf16 autocast on CUDA when `amp`, otherwise a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda"))


def device_batches(loader, device: str):
    """`loader`'s batches on `device`, one batch ahead: on CUDA the next batch
    is copied on a side stream while the current one computes. uint8 images
    (vgg_data's loaders) travel as uint8, 4x fewer bytes than float32, and are
    normalised on the device."""
    cuda = torch.device(device).type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None

    def send(batch):
        if batch is None:
            return None
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            return [t.to(device, non_blocking=True) for t in batch]

    def ready(batch):
        if cuda:      # the compute stream waits for this batch's copy, then owns its memory
            torch.cuda.current_stream(device).wait_stream(stream)
            for t in batch:
                t.record_stream(torch.cuda.current_stream(device))
        if batch[0].dtype == torch.uint8:
            from .vgg_data import normalize
            batch[0] = normalize(batch[0])
        return batch

    it = iter(loader)
    pending = send(next(it, None))
    while pending is not None:
        batch = ready(pending)
        pending = send(next(it, None))      # copies while `batch` computes
        yield batch


def train_one_epoch(model: MultiHeadNet, task: int, optimizer: torch.optim.Optimizer,
                    loader, device: str = "cpu", desc: str = "train", amp: bool = False,
                    loss_fn: Optional[Callable] = None) -> float:
    """One pass over `loader` for head `task`. Returns the mean training loss.
    `loss_fn(model, task, x, y, *extra)` replaces cross-entropy, `extra` being
    any further tensors of the batch (LwF's recorded old-head outputs).
    The loss is summed on the device: one host sync per epoch, not per step."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    for x, y, *extra in tqdm(device_batches(loader, device), total=getattr(loader, "__len__", lambda: None)(), desc=desc, leave=False,
                             mininterval=1.0):
        with autocast(device, amp):
            loss = F.cross_entropy(model(x, task), y) if loss_fn is None else loss_fn(model, task, x, y, *extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().float() * len(y)
        count += len(y)
    return float(total) / max(count, 1)


@torch.no_grad()
def count_correct(model: MultiHeadNet, task: int, loader, device: str = "cpu", amp: bool = False) -> Tuple[int, int]:
    """(correct top-1 predictions of head `task`, images) over `loader`."""
    model.eval()
    correct, count = torch.zeros((), dtype=torch.int64, device=device), 0
    for x, y, *_ in device_batches(loader, device):
        with autocast(device, amp):
            pred = model(x, task).argmax(1)
        correct += (pred == y).sum()
        count += len(y)
    return int(correct), count


def evaluate(model: MultiHeadNet, task: int, loader, device: str = "cpu", amp: bool = False) -> float:
    """Top-1 accuracy (%) of head `task` on `loader`."""
    correct, count = count_correct(model, task, loader, device, amp)
    return 100.0 * correct / max(count, 1)


def evaluate_task(model: MultiHeadNet, engine: Optional[PackNet], task: int, loader,
                  device: str = "cpu", amp: bool = False, rt: Optional["Runtime"] = None) -> float:
    """Accuracy of task `task` as PackNet infers it: weights of tasks 1..task only."""
    ev = (rt or LOCAL).evaluate
    if engine is None:
        return ev(model, task, loader, device, amp)
    with engine.task_view(task):
        return ev(model, task, loader, device, amp)


def loader_for(dataset, cfg: "Config", train: bool, seed: int = 0):
    """Training (shuffled, seeded) or evaluation batches for any dataset:
    in-memory tensors are sliced directly; image folders go through worker
    processes (vgg_data.image_loader: sized to the cores, pinned memory, uint8
    batches) so decoding stays off the training loop. The training loader is
    rebuilt every epoch, so its workers are not kept between epochs."""
    batch = cfg.batch_size if train else max(cfg.batch_size, 256)
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return make_loader(dataset, batch, shuffle=train, seed=seed)
    from .vgg_data import image_loader
    return image_loader(dataset, batch, shuffle=train, workers=cfg.workers, seed=seed, device=cfg.device)


def trainable_parameters(model: MultiHeadNet, task: int) -> List[nn.Parameter]:
    """The trunk (the engine decides what in it may move) and this task's head.
    Other heads are left out: they belong to their own tasks."""
    return list(model.trunk.parameters()) + list(model.heads[task - 1].parameters())


def retrain_lr_step(cfg: Config, task: int) -> Optional[int]:
    """The lr step of task `task`'s post-prune retraining. A pretrained first
    task that is only pruned and retrained (`first_task_epochs=0`: ImageNet in
    the paper) decays its lr x0.1 after half of its retraining epochs, as the
    released scripts do (5 of 10, run_imagenet_pruning.sh); every other
    retraining uses `cfg.lr_step` (the paper's 10 leaves its 10 epochs constant)."""
    if task == 1 and cfg.first_task_epochs == 0 and cfg.retrain_epochs >= 2:
        return cfg.retrain_epochs // 2
    return cfg.lr_step


def fit(model: MultiHeadNet, task: int, data: Task, cfg: Config, epochs: int, lr: float,
        params: List[nn.Parameter], engine: Optional[PackNet] = None, desc: str = "",
        rt: Optional["Runtime"] = None, lr_step: Optional[int] = None) -> Dict:
    """Train one phase with a fresh SGD optimizer; keep the epoch with the best
    validation accuracy. The lr is multiplied by 0.1 every `lr_step` epochs
    (default `cfg.lr_step`; None: constant).
    Returns {"val": best accuracy, "epoch": its index, "loss": [...]}."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if engine is not None:
        engine.protect(optimizer)
    step = lr_step or cfg.lr_step
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step or max(epochs, 1), 0.1)
    rt = rt or LOCAL
    val_loader = rt.loader_for(data.val, cfg, train=False)
    best = {"val": evaluate_task(model, engine, task, val_loader, cfg.device, cfg.amp, rt), "epoch": 0,
            "state": copy.deepcopy(model.state_dict()), "loss": []}
    for epoch in range(1, epochs + 1):
        loader = rt.loader_for(data.train, cfg, train=True, seed=cfg.seed * 1000 + task * 10 + epoch)
        best["loss"].append(rt.train_one_epoch(model, task, optimizer, loader, cfg.device,
                                            desc=f"{desc} epoch {epoch}/{epochs}", amp=cfg.amp))
        scheduler.step()
        acc = evaluate_task(model, engine, task, val_loader, cfg.device, cfg.amp, rt)
        if acc > best["val"]:
            best.update(val=acc, epoch=epoch, state=copy.deepcopy(model.state_dict()))
    model.load_state_dict(best.pop("state"))
    return best


# ------------------------------------------------------------ PackNet
def load_tasks(cfg: Config) -> List[Task]:
    """The tasks `cfg.tasks` names: the offline sequence's (as 3x32x32 images
    for VGG-16), or (with `cfg.data_root`) the paper's image datasets from vgg_data."""
    from .vgg_data import check_inputs, load_image_tasks
    check_task_names(cfg)
    check_inputs(cfg.tasks, cfg.data_root, cfg.model, cfg.weights)   # seconds, before any data loads
    if cfg.data_root is not None:
        return load_image_tasks(cfg.tasks, cfg.data_root, decode=cfg.decode)
    tasks = offline_sequence(cfg.tasks, seed=cfg.seed, max_train=cfg.max_train)
    if cfg.model != "small_vgg":               # the offline sequence on an ImageNet network (a GPU run)
        tasks = [as_rgb(t) for t in tasks]
    return tasks


def make_model(cfg: Config, num_classes: Sequence[int]) -> MultiHeadNet:
    """The model `cfg` names, seeded by `cfg.seed`, on `cfg.device`."""
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width} if cfg.model == "small_vgg" else {"weights": cfg.weights}
    model = build_model(cfg.model, num_classes, **kwargs).to(cfg.device)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True    # autotune conv algorithms: input sizes are fixed
    if cfg.channels_last:                        # inputs follow: a conv runs NHWC if its weight is
        model = model.to(memory_format=torch.channels_last)
    return model


def accuracy_row(model, engine, tasks: Sequence[Task], upto: int, cfg: Config,
                 rt: Optional["Runtime"] = None) -> List[Optional[float]]:
    """Test accuracy on tasks 1..upto (None for tasks not yet seen)."""
    rt = rt or LOCAL
    return [evaluate_task(model, engine, j, rt.loader_for(t.test, cfg, train=False), cfg.device, cfg.amp, rt)
            if j <= upto else None for j, t in enumerate(tasks, start=1)]


@contextlib.contextmanager
def deterministic_kernels():
    """Inside, CUDA computes the same bits in any process: cuDNN's
    deterministic algorithms, no autotuning (cudnn.benchmark may pick another
    convolution algorithm in a resumed process) and no TF32. No-op on the CPU."""
    b = torch.backends
    saved = (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved


def probe_outputs(model, engine, task: int, data: Task, cfg: Config,
                  rt: Optional["Runtime"] = None) -> torch.Tensor:
    """Task `task`'s logits on a fixed batch of its validation images: compared
    with torch.equal after later tasks (possibly in another process, after
    --resume) to *check* that nothing was forgotten. Computed in float32 with
    deterministic kernels, so equal weights give equal bits."""
    x = next(device_batches((rt or LOCAL).loader_for(data.val, cfg, train=False), cfg.device))[0][:256]
    model.eval()
    with torch.no_grad(), deterministic_kernels(), engine.task_view(task):
        return model(x, task).cpu()


@dataclass(frozen=True)
class Runtime:
    """The building blocks run_packnet trains with. The default runs in one
    process; distributed.py supplies data-parallel versions (sharded loaders,
    DDP training, evaluation summed over ranks, owner maps checked across ranks)."""
    loader_for: Callable = loader_for
    train_one_epoch: Callable = train_one_epoch
    evaluate: Callable = evaluate
    engine_class: type = PackNet
    make_model: Callable = make_model


LOCAL = Runtime()


def run_packnet(cfg: Config, tasks: Optional[Sequence[Task]] = None,
                on_phase_end: Optional[Callable[[dict], None]] = None,
                resume_from: Optional[dict] = None, verbose: bool = True,
                runtime: Runtime = LOCAL) -> dict:
    """Train PackNet on `tasks` (default: the offline sequence of `cfg.tasks`).

    For each task t: start_task, train `epochs`, prune(ratio_t) and retrain
    `retrain_epochs` (a task with ratio 0 is not pruned and trains
    `epochs + retrain_epochs` instead: the same budget), end_task, then measure the
    test accuracy of every task so far (row t of the accuracy matrix).

    `on_phase_end(progress, model, engine, task_names)` is called after each
    completed phase with everything needed to resume (experiments.py saves it
    as a checkpoint); `resume_from` is that progress dict plus "model" (a state
    dict) and "engine" (an engine state dict).
    Returns a dict with the model, engine, accuracy matrix and per-layer ownership.
    """
    t0 = time.time()
    tasks = list(tasks) if tasks is not None else load_tasks(cfg)
    ratios = prune_schedule(cfg.prune, len(tasks))
    rt = runtime
    model = rt.make_model(cfg, [t.num_classes for t in tasks])
    engine = rt.engine_class(model.trunk, heads=model.heads)
    state = {"phase": None, "task": 0, "matrix": [], "val": [], "probes": []}
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        engine.load_state_dict(resume_from["engine"])
        state.update({k: resume_from[k] for k in ("phase", "task", "matrix", "val", "probes")})

    def phase_done(phase: str, t: int) -> None:
        state.update(phase=phase, task=t)
        if on_phase_end is not None:
            on_phase_end(dict(state), model, engine, [x.name for x in tasks])

    for t, data in enumerate(tasks, start=1):
        if t < state["task"] or (t == state["task"] and state["phase"] == "end"):
            continue                       # finished before the resume point
        name = f"task {t}/{len(tasks)} {data.name}"
        params = trainable_parameters(model, t)
        if not (t == state["task"] and state["phase"] == "train"):
            torch.manual_seed(cfg.seed * 1000 + t)
            engine.start_task()
            epochs = cfg.epochs if t > 1 or cfg.first_task_epochs is None else cfg.first_task_epochs
            if ratios[t - 1] == 0:       # not pruned: the retraining epochs go to training
                epochs += cfg.retrain_epochs
            fit_info = fit(model, t, data, cfg, epochs, cfg.lr, params, engine, desc=f"{name} train", rt=rt)
            state["val"].append({"train": fit_info["val"]})
            phase_done("train", t)
        torch.manual_seed(cfg.seed * 1000 + t + 500)
        if ratios[t - 1] > 0:
            engine.prune(ratios[t - 1])
            pruned_val = evaluate_task(model, engine, t, rt.loader_for(data.val, cfg, train=False),
                                       cfg.device, cfg.amp, rt)
            fit_info = fit(model, t, data, cfg, cfg.retrain_epochs, cfg.retrain_lr, params, engine,
                           desc=f"{name} retrain", rt=rt, lr_step=retrain_lr_step(cfg, t))
            state["val"][-1].update(pruned=pruned_val, retrained=fit_info["val"])
        engine.end_task()
        state["probes"].append(probe_outputs(model, engine, t, data, cfg, rt))
        state["matrix"].append(accuracy_row(model, engine, tasks, t, cfg, rt))
        if verbose:
            accs = ", ".join(f"{x.name} {a:.2f}" for x, a in zip(tasks, state["matrix"][-1]) if a is not None)
            tqdm.write(f"[{time.time() - t0:6.1f}s] {name} done (prune {ratios[t - 1]:.3g}): test accuracy {accs}")
        phase_done("end", t)

    identical = [torch.equal(p, probe_outputs(model, engine, k, tasks[k - 1], cfg, rt))
                 for k, p in enumerate(state["probes"], start=1)]
    return {"config": cfg.to_dict(), "task_names": [t.name for t in tasks], "ratios": ratios,
            "matrix": state["matrix"], "val": state["val"], "outputs_identical": identical,
            "owned": engine.owned_counts(), "model": model, "engine": engine, "tasks": tasks,
            "seconds": time.time() - t0}
