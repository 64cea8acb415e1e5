"""PackNet's comparisons, on the same tasks, starting point and epoch budget.

Every method returns the accuracy matrix R, R[i][j] = test accuracy (%) on
task j+1 after training task i+1 (None where j > i):

- individual      one network per task, each from the same initialisation
- finetune        one network, every weight trained on each task in turn
                  (heads kept): catastrophic forgetting
- classifier_only trunk trained on task 1, then frozen; later tasks train heads only
- joint           all tasks at once (not continual learning; the usual reference
                  point, though not always above individual networks);
                  its matrix has one row
- lwf             Learning without Forgetting (Li & Hoiem, ECCV 2016): one
                  network trained on each task in turn, while a distillation
                  loss keeps the old heads' outputs on the new task's images
- packnet         train.run_packnet

Each method also reports the memory its T tasks need at inference
(`memory`: values stored and bytes): T networks for individual networks,
one network with T heads for the others, plus PackNet's packed owner maps.

Budget and schedule: every method trains each task as PackNet does, minus the
pruning (`task_phases`): `epochs` at `lr`, then `retrain_epochs` at
`retrain_lr`; a task PackNet does not prune (the last) trains
`epochs + retrain_epochs` at `lr`. Giving the baselines PackNet's lower-lr
phase matters: without it, the retraining phase alone (an lr decay) puts
PackNet ahead of individual networks, which is not what the comparison is
about.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ck
from .data import Task
from .engine import PackNet
from .train import (LOCAL, Config, accuracy_row, autocast, evaluate, fit, load_tasks, loader_for,
                    make_model, prune_schedule, run_packnet, train_one_epoch, trainable_parameters)

METHODS = ("individual", "finetune", "classifier_only", "joint", "lwf", "packnet")

# LwF as the original PackNet code runs it (src/lwf.py): logits softened with
# temperature 2, and the new head trained alone for the first quarter of the
# first phase (5 of 20 epochs there) before the trunk and old heads join.
LWF_TEMPERATURE = 2.0
LWF_WARMUP = 0.25


# ------------------------------------------------------------ memory
def stored(tensors: Iterable[torch.Tensor]) -> dict:
    """{"values": how many numbers, "bytes": their size} of some stored tensors."""
    tensors = list(tensors)
    return {"values": sum(t.numel() for t in tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors)}


def network_memory(model, heads: Optional[Sequence[int]] = None, engine: Optional[PackNet] = None) -> dict:
    """What one network needs at inference: its trunk's state (parameters and
    BatchNorm statistics), the heads of tasks `heads` (default all) and, for
    PackNet, its owner maps packed at ceil(log2(T + 1)) bits per weight (as
    checkpoint.py stores them). Returns {"values", "bytes", "mask_bytes"}."""
    heads = range(1, len(model.heads) + 1) if heads is None else heads
    tensors = list(model.trunk.state_dict().values())
    tensors += [v for t in heads for v in model.heads[t - 1].state_dict().values()]
    out = dict(stored(tensors), mask_bytes=0)
    if engine is not None:
        bits = ck.bits_for(engine.num_tasks)
        out["mask_bytes"] = stored(ck.pack_owner(o, bits) for o in engine.owner.values())["bytes"]
        out["bytes"] += out["mask_bytes"]
    return out


def add_memory(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def task_phases(cfg: Config, t: int, num_tasks: int) -> List[Tuple[int, float]]:
    """[(epochs, lr), ...] for task t: run_packnet's schedule without the pruning."""
    first = cfg.epochs if t > 1 or cfg.first_task_epochs is None else cfg.first_task_epochs
    if prune_schedule(cfg.prune, num_tasks)[t - 1] == 0:
        return [(first + cfg.retrain_epochs, cfg.lr)]
    return [(first, cfg.lr), (cfg.retrain_epochs, cfg.retrain_lr)]


def fit_task(model, t: int, data: Task, cfg: Config, params, num_tasks: int, desc: str) -> None:
    for i, (epochs, lr) in enumerate(task_phases(cfg, t, num_tasks)):
        fit(model, t, data, cfg, epochs, lr, params, desc=desc if i == 0 else f"{desc} lr {lr:g}")


def run_individual(cfg: Config, tasks: Sequence[Task]) -> dict:
    finals, memory = [], None
    for t, data in enumerate(tasks, start=1):
        model = make_model(cfg, [x.num_classes for x in tasks])   # same start for every task
        fit_task(model, t, data, cfg, trainable_parameters(model, t), len(tasks), f"individual {t}:{data.name}")
        finals.append(evaluate(model, t, loader_for(data.test, cfg, train=False), cfg.device, cfg.amp))
        mine = network_memory(model, heads=[t])                  # network t keeps only its own head
        memory = mine if memory is None else add_memory(memory, mine)
    return {"matrix": [[a if j <= i else None for j, a in enumerate(finals)] for i in range(len(tasks))],
            "memory": memory}


@contextlib.contextmanager
def frozen_batchnorm(module: torch.nn.Module):
    """BatchNorm layers of `module` use their stored statistics, even in train mode."""
    hooks = [m.register_forward_pre_hook(lambda mod, _: setattr(mod, "training", False))
             for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def run_sequential(cfg: Config, tasks: Sequence[Task], train_trunk_after_first: bool) -> dict:
    """finetune (trunk trained on every task) or classifier_only (trunk on task 1 only)."""
    model = make_model(cfg, [x.num_classes for x in tasks])
    label = "finetune" if train_trunk_after_first else "classifier_only"
    matrix = []
    for t, data in enumerate(tasks, start=1):
        frozen = t > 1 and not train_trunk_after_first
        params = list(model.heads[t - 1].parameters()) if frozen else trainable_parameters(model, t)
        with frozen_batchnorm(model.trunk) if frozen else contextlib.nullcontext():
            fit_task(model, t, data, cfg, params, len(tasks), f"{label} {t}:{data.name}")
        matrix.append(accuracy_row(model, None, tasks, t, cfg))
    return {"matrix": matrix, "memory": network_memory(model)}


def run_joint(cfg: Config, tasks: Sequence[Task]) -> dict:
    """Multi-task training: each step one batch of every task, losses summed;
    the longest task schedule of `task_phases`, its epochs in order."""
    model = make_model(cfg, [x.num_classes for x in tasks])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    phases = max((task_phases(cfg, t, len(tasks)) for t in range(1, len(tasks) + 1)),
                 key=lambda ph: sum(e for e, _ in ph))
    lrs = [lr for epochs, lr in phases for _ in range(epochs)]
    epochs = len(lrs)
    for epoch, lr in enumerate(lrs, start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loaders = [loader_for(d.train, cfg, train=True, seed=cfg.seed * 1000 + 7 * epoch + i)
                   for i, d in enumerate(tasks)]
        steps = max(len(l) for l in loaders)
        # Smaller tasks cycle so every step sees every task.
        iters = [itertools.cycle(l) if len(l) < steps else iter(l) for l in loaders]
        for _ in tqdm(range(steps), desc=f"joint epoch {epoch}/{epochs}", leave=False, mininterval=1.0):
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for t, it in enumerate(iters, start=1):
                x, y = next(it)
                with autocast(cfg.device, cfg.amp):
                    loss = loss + F.cross_entropy(model(x.to(cfg.device), t), y.to(cfg.device))
            loss.backward()
            optimizer.step()
    return {"matrix": [accuracy_row(model, None, tasks, len(tasks), cfg)], "memory": network_memory(model)}


# ------------------------------------------------------------ Learning without Forgetting
def distillation_loss(logits: torch.Tensor, recorded: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between the softened recorded and current outputs, up to a
    constant (the recorded outputs' entropy): KL divergence summed over
    classes, averaged over the batch, as the original code computes it."""
    return F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(recorded / temperature, 1),
                    reduction="batchmean")


@torch.no_grad()
def old_outputs(model, old_tasks: int, x: torch.Tensor) -> torch.Tensor:
    """Heads 1..old_tasks on images `x`, concatenated: LwF's targets."""
    features = model.trunk(x)
    return torch.cat([model.heads[k](features) for k in range(old_tasks)], 1).float()


@torch.no_grad()
def record_old_outputs(model, old_tasks: int, data: Task, cfg: Config) -> Task:
    """LwF's first step: the old heads' outputs on the new task's training
    images, recorded before training (the network in eval mode) and stored
    beside the images, so every batch carries its targets. Image folders
    (random crops and flips: a recorded output would belong to another
    crop) are returned unchanged; the loss then asks a frozen copy of the
    network, as the original code does."""
    if not isinstance(data.train, torch.utils.data.TensorDataset):
        return data
    model.eval()
    outs = []
    for x, _ in loader_for(data.train, cfg, train=False):          # in order: row i is image i
        with autocast(cfg.device, cfg.amp):
            outs.append(old_outputs(model, old_tasks, x.to(cfg.device)).cpu())
    return dataclasses.replace(data, train=torch.utils.data.TensorDataset(*data.train.tensors, torch.cat(outs)))


def lwf_loss(old_classes: Sequence[int], temperature: float = LWF_TEMPERATURE, teacher=None) -> Callable:
    """train_one_epoch's `loss_fn` for LwF: cross-entropy on the new head plus,
    for each old head, the distillation loss to its recorded outputs (weight 1,
    as in Li & Hoiem and the original code). Without recorded outputs in the
    batch, `teacher` (the network before this task) computes them."""
    def loss(model, task, x, y, *recorded):
        features = model.trunk(x)
        targets = recorded[0] if recorded else old_outputs(teacher, len(old_classes), x)
        total = F.cross_entropy(model.heads[task - 1](features), y)
        for k, target in enumerate(targets.split(list(old_classes), 1)):
            total = total + distillation_loss(model.heads[k](features).float(), target, temperature)
        return total
    return loss


def lwf_phases(cfg: Config, t: int, num_tasks: int) -> List[Tuple[int, float, bool]]:
    """[(epochs, lr, head only), ...]: `task_phases`, whose first
    round(LWF_WARMUP * epochs) epochs train the new head alone (the same
    epoch budget; the unpruned last task's extra epochs do not lengthen it)."""
    phases = task_phases(cfg, t, num_tasks)
    (first, lr), rest = phases[0], phases[1:]
    warmup = round(LWF_WARMUP * cfg.epochs) if t > 1 else 0
    out = [(warmup, lr, True), (first - warmup, lr, False)] + [(e, l, False) for e, l in rest]
    return [p for p in out if p[0] > 0]


def run_lwf(cfg: Config, tasks: Sequence[Task]) -> dict:
    """Learning without Forgetting (Li & Hoiem 2016). For each task t > 1:
    record the old heads' outputs on t's training images, train t's head alone
    (warm-up), then the trunk and every head on cross-entropy plus the
    distillation loss. Task 1 trains as fine-tuning's does."""
    model = make_model(cfg, [x.num_classes for x in tasks])
    matrix = []
    for t, data in enumerate(tasks, start=1):
        old_classes = [x.num_classes for x in tasks[:t - 1]]
        teacher = None
        if t > 1:
            data = record_old_outputs(model, t - 1, data, cfg)
            if not isinstance(data.train, torch.utils.data.TensorDataset):
                teacher = copy.deepcopy(model).eval()
        distil = dataclasses.replace(LOCAL, train_one_epoch=functools.partial(
            train_one_epoch, loss_fn=lwf_loss(old_classes, teacher=teacher)))
        for i, (epochs, lr, head_only) in enumerate(lwf_phases(cfg, t, len(tasks))):
            # Warm-up: the distillation term cannot move the new head (only the
            # trunk and old heads, frozen here), so plain cross-entropy is the same step.
            params = list(model.heads[t - 1].parameters()) if head_only else \
                list(model.trunk.parameters()) + [p for h in model.heads[:t] for p in h.parameters()]
            desc = f"lwf {t}:{data.name}" + (" warm-up" if head_only else "" if i == 0 else f" lr {lr:g}")
            with frozen_batchnorm(model.trunk) if head_only else contextlib.nullcontext():
                fit(model, t, data, cfg, epochs, lr, params, desc=desc,
                    rt=LOCAL if head_only or t == 1 else distil)
        matrix.append(accuracy_row(model, None, tasks, t, cfg))
    return {"matrix": matrix, "memory": network_memory(model)}


def run_method(name: str, cfg: Config, tasks: Optional[Sequence[Task]] = None) -> dict:
    """Run one method; returns {"method", "matrix", "seconds", ...}."""
    tasks = list(tasks) if tasks is not None else load_tasks(cfg)
    t0 = time.time()
    if name == "individual":
        out = run_individual(cfg, tasks)
    elif name == "finetune":
        out = run_sequential(cfg, tasks, train_trunk_after_first=True)
    elif name == "classifier_only":
        out = run_sequential(cfg, tasks, train_trunk_after_first=False)
    elif name == "joint":
        out = run_joint(cfg, tasks)
    elif name == "lwf":
        out = run_lwf(cfg, tasks)
    elif name == "packnet":
        out = run_packnet(cfg, tasks, verbose=False)
        out["memory"] = network_memory(out["model"], engine=out["engine"])
    else:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    out.update(method=name, seconds=time.time() - t0)
    return out
