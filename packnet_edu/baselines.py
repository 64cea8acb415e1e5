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
- packnet         train.run_packnet

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
import itertools
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Task
from .train import (Config, accuracy_row, autocast, evaluate, fit, load_tasks, loader_for,
                    make_model, prune_schedule, run_packnet, trainable_parameters)

METHODS = ("individual", "finetune", "classifier_only", "joint", "packnet")


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
    finals = []
    for t, data in enumerate(tasks, start=1):
        model = make_model(cfg, [x.num_classes for x in tasks])   # same start for every task
        fit_task(model, t, data, cfg, trainable_parameters(model, t), len(tasks), f"individual {t}:{data.name}")
        finals.append(evaluate(model, t, loader_for(data.test, cfg, train=False), cfg.device, cfg.amp))
    return {"matrix": [[a if j <= i else None for j, a in enumerate(finals)] for i in range(len(tasks))]}


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
    return {"matrix": matrix}


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
    return {"matrix": [accuracy_row(model, None, tasks, len(tasks), cfg)]}


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
    elif name == "packnet":
        out = run_packnet(cfg, tasks, verbose=False)
    else:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    out.update(method=name, seconds=time.time() - t0)
    return out
