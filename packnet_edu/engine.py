"""The PackNet engine: one ownership map, and the four moves of the algorithm.

PackNet (Mallya & Lazebnik, CVPR 2018) packs tasks into one network:

    engine = PackNet(trunk)
    for each task:
        engine.start_task()          # the task takes every free weight
        ... train (engine.protect(optimizer) keeps older tasks exact) ...
        engine.prune(0.75)           # release the smallest 75% it owns, per layer
        ... retrain what it kept ...
        engine.end_task()            # frozen for good
    with engine.task_view(k):        # compute as task k: tasks 1..k only
        trunk(x)

`engine.owner[name]` (a uint8 tensor shaped like the weight; 0 = free, k =
task k) is the single source of truth: every mask, plot and statistic in the
package is derived from it.

Why old tasks stay *bit-identical* whatever the optimizer: masking gradients
is not enough (weight decay, momentum and Adam's state still move a weight
whose gradient is zero), so after every `optimizer.step()` the engine writes
back the stored value of every weight the current task does not own.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

MAX_TASKS = 255  # owner ids live in a uint8; 0 means free
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
STATE_VERSION = 1


class PackNetError(RuntimeError):
    """An illegal call sequence or argument; the message says what to do."""


def prune_count(ratio: float, n: int) -> int:
    """How many of `n` weights `prune(ratio)` releases in one layer.

    Python's `round` (halves to even), the rule `torch.nn.utils.prune` uses, so
    that the first task's mask can be checked against it.
    """
    return int(round(ratio * n))


def smallest_magnitude(values: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the `k` entries of smallest |value|.

    A stable sort: among equal magnitudes the lower flat index goes first,
    so pruning is deterministic even with ties (torch.topk gives no such promise).
    """
    order = torch.sort(values.detach().abs().flatten(), stable=True).indices
    return order[:k]


def _weight_name(layer_name: str) -> str:
    """The parameter name of a layer's weight, as module.named_parameters() says it."""
    return f"{layer_name}.weight" if layer_name else "weight"


def ownership_counts(owner: Dict[str, torch.Tensor]) -> Dict[str, Dict[int, int]]:
    """Per layer: {owner id: number of weights} (0 = free), from owner maps."""
    out = {}
    for name, o in owner.items():
        ids, counts = torch.unique(o, return_counts=True)
        out[name] = {int(i): int(c) for i, c in zip(ids, counts)}
    return out


class _TaskMask(nn.Module):
    """A parametrization: the weight as task k sees it (read-only view)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.keep


class PackNet:
    """Ownership bookkeeping and exact freezing for every Conv/Linear weight of `module`.

    `module` is the shared trunk; per-task classifier heads live outside it.
    Biases and BatchNorm (affine parameters and running statistics) belong
    to the first task: trained with it, then frozen, as in the paper.
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"PackNet wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.layers: Dict[str, nn.Module] = {
            name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE)
        }
        if not self.layers:
            raise PackNetError(
                "PackNet found no Conv or Linear layer in the module: pass the network "
                "trunk whose weights should be shared between tasks")
        params = dict(module.named_parameters())
        self.weights: Dict[str, nn.Parameter] = {_weight_name(n): m.weight for n, m in self.layers.items()}
        # Everything else (biases, BatchNorm affine) is trained by task 1 only.
        self.shared: Dict[str, nn.Parameter] = {n: p for n, p in params.items() if n not in self.weights}
        # Owner maps live on the CPU whatever the model's device (they are small,
        # and one copy is easy to save, compare and plot).
        self.owner: Dict[str, torch.Tensor] = {
            n: torch.zeros(w.shape, dtype=torch.uint8) for n, w in self.weights.items()}
        self.num_tasks = 0        # tasks started so far; the current one is the last
        self.training_task = 0    # id of the task being trained, 0 between tasks
        self._reference: Dict[str, torch.Tensor] = {}
        self._trainable: Dict[str, torch.Tensor] = {}
        for m in module.modules():
            if isinstance(m, BATCHNORM):
                m.register_forward_pre_hook(self._batchnorm_hook)

    # ----------------------------------------------------------------- phases
    def start_task(self) -> int:
        """Begin the next task; it takes every free weight. Returns its id (1, 2, ...)."""
        if self.training_task:
            raise PackNetError(f"task {self.training_task} is still being trained: "
                               "call end_task() before start_task()")
        if self.num_tasks >= MAX_TASKS:
            raise PackNetError(f"PackNet stores owners in uint8 and holds at most {MAX_TASKS} tasks")
        free = sum(int((o == 0).sum()) for o in self.owner.values())
        if free == 0:
            raise PackNetError(
                f"no free weight is left for task {self.num_tasks + 1}: prune the previous "
                "task (prune(ratio) before end_task()) to release weights for the next one")
        self.num_tasks += 1
        self.training_task = self.num_tasks
        for owner in self.owner.values():
            # Free weights are zero (pruning zeroed them) except before task 1,
            # which starts from the module's initialisation.
            owner[owner == 0] = self.training_task
        self._snapshot()
        return self.training_task

    def prune(self, ratio: float) -> Dict[str, int]:
        """Release, in each layer, `round(ratio * n)` of the n weights the current
        task owns, those of smallest magnitude. They become free and zero.

        Returns the number released per layer."""
        if not self.training_task:
            raise PackNetError("prune() needs a task in training: call start_task() first "
                               "(and prune before end_task())")
        if not (isinstance(ratio, (int, float)) and 0.0 <= float(ratio) < 1.0):
            raise PackNetError(f"prune ratio must be a number in [0, 1), got {ratio!r}: "
                               "0.75 releases 75% of the task's weights in each layer")
        released = {}
        with torch.no_grad():
            for name, owner in self.owner.items():
                weight = self.weights[name]
                mine = (owner == self.training_task).flatten().nonzero().squeeze(1).to(weight.device)
                k = prune_count(float(ratio), mine.numel())
                drop = mine[smallest_magnitude(weight.flatten()[mine], k)]   # sorted where the weight is
                freed = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
                freed[drop] = True
                # masked_fill_ by logical position: also right for channels_last weights,
                # where weight.view(-1) would fail (its memory is not in NCHW order)
                weight.masked_fill_(freed.view(weight.shape), 0.0)
                owner.view(-1)[drop.cpu()] = 0
                released[name] = k
        self._snapshot()
        return released

    def end_task(self) -> int:
        """Freeze the current task's weights for good. Returns its id."""
        if not self.training_task:
            raise PackNetError("end_task() without a task in training: call start_task() first")
        done, self.training_task = self.training_task, 0
        self._snapshot()
        return done

    # -------------------------------------------------------------- freezing
    def _snapshot(self) -> None:
        """Record the values that must not move, and which entries may."""
        self._reference.clear()
        self._trainable.clear()
        for name, weight in self.weights.items():
            trainable = (self.owner[name] == self.training_task).to(weight.device) if self.training_task \
                else torch.zeros_like(weight, dtype=torch.bool)
            if not bool(trainable.all()):
                self._trainable[name] = trainable
                self._reference[name] = weight.detach().clone()
        if self.training_task != 1:
            for name, p in self.shared.items():
                self._reference[name] = p.detach().clone()

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Write back every value the current task may not change (bit for bit)."""
        for name, ref in self._reference.items():
            param = self.weights.get(name)
            if param is None:
                self.shared[name].copy_(ref)
            else:
                torch.where(self._trainable[name], param, ref, out=param)   # in place: one pass

    def protect(self, optimizer: torch.optim.Optimizer):
        """Hook `optimizer` so that after each step older tasks' weights, the
        frozen biases/BatchNorm and pruned (free) weights are exactly as stored.
        Works for any torch optimizer. Returns the hook handle (`.remove()`)."""
        return optimizer.register_step_post_hook(lambda *_: self.restore_frozen())

    def _batchnorm_hook(self, module: nn.Module, _inputs) -> None:
        # After the first task BatchNorm runs on its stored statistics, even in
        # train mode: updating them would change what earlier tasks compute.
        if self.num_tasks and self.training_task != 1:
            module.training = False

    # ------------------------------------------------------------- inference
    def task_masks(self, task: int) -> Dict[str, torch.Tensor]:
        """For each weight, True where task `task` computes with it (owners 1..task)."""
        self._check_task(task)
        return {n: (o != 0) & (o <= task) for n, o in self.owner.items()}

    @contextlib.contextmanager
    def task_view(self, task: int) -> Iterator[nn.Module]:
        """Inside, the module computes as task `task`: weights of tasks 1..task,
        the rest counted as zero. No stored tensor is modified (the masks act
        through a parametrization, removed on exit)."""
        masks = self.task_masks(task)
        registered = []
        try:
            for name, layer in self.layers.items():
                keep = masks[_weight_name(name)].to(layer.weight.device, layer.weight.dtype)
                parametrize.register_parametrization(layer, "weight", _TaskMask(keep), unsafe=True)
                registered.append(layer)
            yield self.module
        finally:
            for layer in registered:
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)

    def _check_task(self, task: int) -> None:
        if not isinstance(task, int) or not 1 <= task <= self.num_tasks:
            have = f"tasks 1..{self.num_tasks}" if self.num_tasks else "no task yet"
            raise PackNetError(f"task {task!r} does not exist (the engine has {have})")

    # ------------------------------------------------------------- reporting
    def owned_counts(self) -> Dict[str, Dict[int, int]]:
        """Per layer: {task id: number of weights it owns}, 0 for free."""
        return ownership_counts(self.owner)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "num_tasks": self.num_tasks,
                "training_task": self.training_task,
                "owner": {n: o.clone() for n, o in self.owner.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ownership; the module's own state_dict restores the weights
        (load the module first, so the frozen values are recorded correctly)."""
        version = state.get("version")
        if version != STATE_VERSION:
            raise PackNetError(f"engine state version {version!r} is not supported "
                               f"(this packnet_edu reads version {STATE_VERSION})")
        owner = state["owner"]
        if set(owner) != set(self.owner):
            missing, extra = set(self.owner) - set(owner), set(owner) - set(self.owner)
            raise PackNetError("the saved owner maps do not match this module's layers "
                               f"(missing {sorted(missing)}, unexpected {sorted(extra)}): "
                               "load it into the architecture it was saved from")
        for name, saved in owner.items():
            if saved.shape != self.owner[name].shape:
                raise PackNetError(f"owner map {name} has shape {tuple(saved.shape)}, the layer "
                                   f"{tuple(self.owner[name].shape)}: wrong architecture")
            self.owner[name] = saved.to(torch.uint8).clone()
        self.num_tasks = int(state["num_tasks"])
        self.training_task = int(state["training_task"])
        self._snapshot()
