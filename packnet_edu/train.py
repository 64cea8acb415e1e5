"""Training: plain functions in the style of torchvision's references.

`train_one_epoch` and `evaluate` know nothing about PackNet; `fit` trains one
phase and keeps the epoch with the best *validation* accuracy;
`run_packnet` trains, prunes, retrains and freezes each task in turn.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import Config, PruneSpec, prune_schedule  # noqa: F401 (re-exported)
from .data import Task, as_rgb, make_loader, offline_sequence
from .engine import PackNet
from .models import MultiHeadNet, build_model


# ------------------------------------------------------------ the loop
def autocast(device: str, amp: bool):
    """bf16 autocast on CUDA when `amp`, otherwise a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda"))


def train_one_epoch(model: MultiHeadNet, task: int, optimizer: torch.optim.Optimizer,
                    loader, device: str = "cpu", desc: str = "train", amp: bool = False) -> float:
    """One pass over `loader` for head `task`. Returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, mininterval=1.0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x, task), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def count_correct(model: MultiHeadNet, task: int, loader, device: str = "cpu", amp: bool = False) -> Tuple[int, int]:
    """(correct top-1 predictions of head `task`, images) over `loader`."""
    model.eval()
    correct, count = 0, 0
    for x, y in loader:
        with autocast(device, amp):
            pred = model(x.to(device, non_blocking=True), task).argmax(1)
        correct += int((pred.cpu() == y).sum())
        count += len(y)
    return correct, count


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
    processes with pinned memory so decoding stays off the training loop."""
    batch = cfg.batch_size if train else max(cfg.batch_size, 256)
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return make_loader(dataset, batch, shuffle=train, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=train, num_workers=cfg.workers,
        generator=torch.Generator().manual_seed(seed) if train else None,
        pin_memory=cfg.device.startswith("cuda"), persistent_workers=cfg.workers > 0,
        drop_last=False)


def trainable_parameters(model: MultiHeadNet, task: int) -> List[nn.Parameter]:
    """The trunk (the engine decides what in it may move) and this task's head.
    Other heads are left out: they belong to their own tasks."""
    return list(model.trunk.parameters()) + list(model.heads[task - 1].parameters())


def fit(model: MultiHeadNet, task: int, data: Task, cfg: Config, epochs: int, lr: float,
        params: List[nn.Parameter], engine: Optional[PackNet] = None, desc: str = "",
        rt: Optional["Runtime"] = None) -> Dict:
    """Train one phase with a fresh SGD optimizer; keep the epoch with the best
    validation accuracy. Returns {"val": best accuracy, "epoch": its index, "loss": [...]}."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if engine is not None:
        engine.protect(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step or max(epochs, 1), 0.1)
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
    if cfg.data_root is not None:
        from .vgg_data import load_image_tasks
        return load_image_tasks(cfg.tasks, cfg.data_root)
    tasks = offline_sequence(cfg.tasks, seed=cfg.seed, max_train=cfg.max_train)
    if cfg.model.startswith("vgg16"):          # the offline sequence on VGG-16 (a GPU run)
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


def probe_outputs(model, engine, task: int, data: Task, cfg: Config,
                  rt: Optional["Runtime"] = None) -> torch.Tensor:
    """Task `task`'s logits on a fixed batch of its validation images: compared
    with torch.equal after later tasks to *check* that nothing was forgotten."""
    x = next(iter((rt or LOCAL).loader_for(data.val, cfg, train=False)))[0][:256].to(cfg.device)
    model.eval()
    with torch.no_grad(), engine.task_view(task):
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
    engine = rt.engine_class(model.trunk)
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
                           desc=f"{name} retrain", rt=rt)
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
