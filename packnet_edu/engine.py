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
import numbers
import warnings
from typing import Dict, Iterator, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.modules.batchnorm import _NormBase

MAX_TASKS = 255  # owner ids live in a uint8; 0 means free
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Every norm layer that can hold running statistics: BatchNorm1d/2d/3d,
# SyncBatchNorm, InstanceNorm with track_running_stats. Frozen after task 1.
NORMS = (_NormBase,)
STATE_VERSION = 1


class PackNetError(RuntimeError):
    """An illegal call sequence or argument; the message says what to do."""


def prune_count(ratio: float, n: int) -> int:
    """How many of `n` weights `prune(ratio)` releases in one layer.

    Python's `round` (halves to even), the rule `torch.nn.utils.prune` uses, so
    that the first task's mask can be checked against it. A ratio below 1
    never releases a whole layer: at least one weight stays (prune(0.9999999)
    of 400 weights would otherwise round to all 400).
    """
    return min(int(round(ratio * n)), max(n - 1, 0))


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


def _as_number(x) -> Optional[float]:
    """x as a float if it is a real number of any library (Python, NumPy, a
    0-d tensor), else None."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.dtype.is_complex and x.dtype != torch.bool:
        x = x.item()
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        x = float(x)
        return x if x == x else None       # NaN is no ratio
    return None


def _prunable_layers(module: nn.Module) -> Dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE)}


def ownership_counts(owner: Dict[str, torch.Tensor]) -> Dict[str, Dict[int, int]]:
    """Per layer: {owner id: number of weights} (0 = free), from owner maps."""
    out = {}
    for name, o in owner.items():
        ids, counts = torch.unique(o, return_counts=True)
        out[name] = {int(i): int(c) for i, c in zip(ids, counts)}
    return out


class Protection:
    """How `PackNet.protect` keeps an optimizer's steps exact, one of two ways:

    "mask":    zero the frozen entries' gradients before the step. Exact only
               for SGD without weight decay whose momentum buffers were empty
               when the current ownership began (a fresh optimizer per phase,
               as the released code and train.fit use): a zero gradient keeps
               a zero buffer, and p - lr * 0 == p bit for bit. 9 bytes per
               weight of a layer with frozen entries (mask, gradient read and
               written), and nothing after the step.
    "restore": write the stored values back after the step (torch.where).
               Exact for any optimizer; 13 bytes per weight (mask, weight,
               stored copy read, weight written).
    The mode is decided at the first step after each change of ownership."""

    def __init__(self, engine: "PackNet", optimizer: torch.optim.Optimizer):
        self.engine, self.optimizer = engine, optimizer
        self.mode, self._generation = None, None
        self._hooks = [optimizer.register_step_pre_hook(self._before),
                       optimizer.register_step_post_hook(self._after)]

    def _masking_is_exact(self) -> bool:
        opt = self.optimizer
        if type(opt) is not torch.optim.SGD or any(g["weight_decay"] != 0 for g in opt.param_groups):
            return False
        frozen = [self.engine.parameter(n) for n in self.engine._reference]
        return all(opt.state.get(p, {}).get("momentum_buffer") is None for p in frozen)

    def _before(self, *_) -> None:
        self.engine.check_module(quick=True)   # weights replaced, moved or cast since the snapshot?
        if self._generation != self.engine.generation:
            self.mode = "mask" if self._masking_is_exact() else "restore"
            self._generation = self.engine.generation
        elif self.mode == "mask" and any(g["weight_decay"] != 0 for g in self.optimizer.param_groups):
            self.mode = "restore"          # weight decay switched on mid-phase (momentum is not empty now)
        if self.mode == "mask":
            self.engine.mask_frozen_gradients()

    def _after(self, *_) -> None:
        if self.mode == "restore":
            self.engine.restore_frozen()

    def bytes_per_step(self) -> int:
        """Memory traffic of the protection per step in its current mode
        (the minimum each kernel must read and write; launches not counted)."""
        e, total = self.engine, 0
        for name, ref in e._reference.items():
            n, size = ref.numel(), ref.element_size()
            if name in e._trainable:       # mask 1 byte; grad r+w, or weight r+w and copy r
                total += n * (1 + (2 if self.mode == "mask" else 3) * size)
            elif self.mode != "mask":      # frozen bias/BatchNorm copied back (mask mode: no gradient)
                total += 2 * n * size
        return total

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


class PackNet:
    """Ownership bookkeeping and exact freezing for every Conv/Linear weight of `module`.

    `module` is the shared trunk; per-task classifier heads live outside it.
    Biases and BatchNorm (affine parameters and running statistics) belong
    to the first task: trained with it, then frozen, as in the paper.
    """

    def __init__(self, module: nn.Module, heads: Optional[Sequence[nn.Module]] = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"PackNet wraps an nn.Module, got {type(module).__name__}")
        if heads is None and isinstance(getattr(module, "heads", None), nn.ModuleList):
            warnings.warn(f"PackNet({type(module).__name__}) wraps a module with per-task `heads`: "
                          "they would be packed like the shared layers. Wrap the shared part instead: "
                          "PackNet(model.trunk, heads=model.heads)", stacklevel=2)
        self.module = module
        self.layers: Dict[str, nn.Module] = _prunable_layers(module)
        if not self.layers:
            raise PackNetError(
                "PackNet found no Conv or Linear layer in the module: pass the network "
                "trunk whose weights should be shared between tasks")
        computed = [n for n, m in self.layers.items() if "weight" not in m._parameters
                    or parametrize.is_parametrized(m, "weight")]
        if computed:
            raise PackNetError(
                f"the weights of {computed} are computed (weight_norm, spectral_norm or a "
                "parametrization), not stored: PackNet packs plain Conv/Linear weights; remove "
                "those wrappers from the trunk")
        self.weights: Dict[str, nn.Parameter] = {_weight_name(n): m.weight for n, m in self.layers.items()}
        # Everything else (biases, BatchNorm affine) is trained by task 1 only.
        self.shared: Dict[str, nn.Parameter] = {
            n: p for n, p in module.named_parameters() if n not in self.weights}
        unpacked = [n for n, p in self.shared.items() if p.dim() >= 2]
        if unpacked:
            warnings.warn(f"PackNet packs Conv1d/2d/3d and Linear weights only; {unpacked} "
                          "(ConvTranspose, Embedding, RNN, attention projections, ...) are trained "
                          "with task 1 and frozen afterwards, like biases", stacklevel=2)
        # Head k is task k's: frozen while any other task trains (an optimizer
        # over every parameter with weight decay would otherwise move old heads).
        self.heads = list(heads) if heads is not None else []
        self.head_params: Dict[str, nn.Parameter] = {
            f"heads.{k}.{n}": p for k, h in enumerate(self.heads) for n, p in h.named_parameters()}
        # Owner maps live on the CPU whatever the model's device (they are small,
        # and one copy is easy to save, compare and plot).
        self.owner: Dict[str, torch.Tensor] = {
            n: torch.zeros(w.shape, dtype=torch.uint8) for n, w in self.weights.items()}
        self.num_tasks = 0        # tasks started so far; the current one is the last
        self.training_task = 0    # id of the task being trained, 0 between tasks
        self.generation = 0       # bumped by every _snapshot
        self._reference: Dict[str, torch.Tensor] = {}
        self._trainable: Dict[str, torch.Tensor] = {}
        self._verified = True     # frozen values checked against _reference since the snapshot
        self._views: List[Dict[str, torch.Tensor]] = []   # active task_view masks, innermost last
        self._view_hooks: list = []
        self._slots: list = []    # (module, attribute, parameter, device, dtype) at the last full check
        for m in module.modules():
            if isinstance(m, NORMS):
                m.register_forward_pre_hook(self._norm_hook)
        self.check_module()       # records what the module holds now

    def parameter(self, name: str) -> nn.Parameter:
        """A parameter the engine tracks, by name: a packed weight, a shared
        (bias/norm) parameter, or `heads.k.<name>` of head k (0-based)."""
        for table in (self.weights, self.shared, self.head_params):
            if name in table:
                return table[name]
        raise KeyError(name)

    # ----------------------------------------------------------------- phases
    def start_task(self) -> int:
        """Begin the next task; it takes every free weight. Returns its id (1, 2, ...)."""
        self.check_module()
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
        ratio = _as_number(ratio)
        if ratio is None or not 0.0 <= ratio < 1.0:
            raise PackNetError(f"prune ratio must be a number in [0, 1), got {ratio!r}: "
                               "0.75 releases 75% of the task's weights in each layer")
        self.check_module()
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
        self.check_module()
        done, self.training_task = self.training_task, 0
        self._snapshot()
        return done

    # -------------------------------------------------------------- freezing
    def _snapshot(self) -> None:
        """Record the values that must not move, and which entries may."""
        self._reference.clear()
        self._trainable.clear()
        self.generation += 1      # protect() re-decides how to freeze when ownership changes
        for name, weight in self.weights.items():
            # the mask in the weight's memory format (channels_last too): torch.where
            # over tensors of one layout is one streaming pass
            trainable = torch.empty_like(weight, dtype=torch.bool).copy_(self.owner[name] == self.training_task)
            if not bool(trainable.all()):
                self._trainable[name] = trainable
                self._reference[name] = weight.detach().clone()
        if self.training_task != 1:
            for name, p in self.shared.items():
                self._reference[name] = p.detach().clone()
        for name, p in self.head_params.items():
            if int(name.split(".")[1]) + 1 != self.training_task:
                self._reference[name] = p.detach().clone()
        self._verified = False    # checked against the module at the first check_module()

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Write back every value the current task may not change (bit for bit)."""
        for name, ref in self._reference.items():
            param = self.weights.get(name)
            if param is None:
                self.parameter(name).copy_(ref)
            else:
                torch.where(self._trainable[name], param, ref, out=param)   # in place: one pass

    @torch.no_grad()
    def mask_frozen_gradients(self) -> None:
        """Zero the gradient of every value the current task may not change
        (torch.where, not a product: a NaN gradient times 0 is NaN); frozen
        biases/BatchNorm get no gradient, so the optimizer skips them."""
        for name, trainable in self._trainable.items():
            g = self.weights[name].grad
            if g is not None:
                torch.where(trainable, g, g.new_zeros(()), out=g)
        for name in self._reference:
            if name not in self._trainable:
                self.parameter(name).grad = None

    def protect(self, optimizer: torch.optim.Optimizer) -> "Protection":
        """Hook `optimizer` so that after each step older tasks' weights, the
        frozen biases/BatchNorm and pruned (free) weights are exactly as stored.
        Works for any torch optimizer. Returns the handle (`.remove()`, `.mode`)."""
        return Protection(self, optimizer)

    def _norm_hook(self, module: nn.Module, _inputs) -> None:
        # After the first task norm layers run on their stored statistics, even
        # in train mode: updating them would change what earlier tasks compute.
        if self.num_tasks and self.training_task != 1:
            module.training = False

    # ----------------------------------------------------------- consistency
    def check_module(self, quick: bool = False) -> None:
        """Make sure the engine still guards what the module holds; called by
        every phase, every task_view and (quick=True) every protected step.

        A weight moved to another device is followed (its stored copy moves
        with it, exactly); a parameter object replaced by one holding the same
        frozen values (load_state_dict(assign=True), a .to() that creates new
        parameters) is adopted. What would make the protection silently wrong
        raises PackNetError: layers or parameters added or removed, a cast to
        another dtype in the middle of a task, frozen values changed outside
        training (e.g. the engine state loaded before the model's weights).

        quick: the per-step test, a few microseconds: every tracked parameter
        is still the object, device and dtype seen last time (the full walk
        over the module runs only when one is not, and at every phase)."""
        if quick and all(m._parameters.get(a) is p and p.device == d and p.dtype == t
                         for m, a, p, d, t in self._slots):
            if not self._verified:
                self._verify_frozen()
            return
        params = dict(self.module.named_parameters())
        tracked = {**self.weights, **self.shared}
        if params.keys() != tracked.keys():
            added, removed = sorted(set(params) - set(tracked)), sorted(set(tracked) - set(params))
            raise PackNetError(
                f"the module's parameters changed after PackNet() was built (added {added}, removed "
                f"{removed}): weight_norm, spectral_norm, parametrizations and layers added later are not "
                "packed; build the whole network first, then wrap it with PackNet")
        current = dict(params, **{f"heads.{k}.{n}": p for k, h in enumerate(self.heads)
                                 for n, p in h.named_parameters()})
        recast = False
        for table in (self.weights, self.shared, self.head_params):
            for name, held in table.items():
                p, ref = current.get(name), self._reference.get(name)
                if p is None:
                    raise PackNetError(f"parameter {name} is gone from the module: rebuild PackNet")
                if ref is not None and p.dtype != ref.dtype:
                    if self.training_task:
                        raise PackNetError(
                            f"{name} was cast from {ref.dtype} to {p.dtype} in the middle of task "
                            f"{self.training_task}: cast the model between tasks (after end_task(), "
                            "before start_task()), or not at all")
                    recast = True
                elif ref is not None and p.device != ref.device:   # .to(device): follow, exactly
                    self._reference[name] = ref.to(p.device)
                    if name in self._trainable:
                        self._trainable[name] = self._trainable[name].to(p.device)
                if p is not held:
                    table[name] = p
                    self._verified = False
        self.layers = _prunable_layers(self.module)
        self._slots = [(m, a, p, p.device, p.dtype) for root in (self.module, *self.heads)
                       for m in root.modules() for a, p in m._parameters.items() if p is not None]
        if recast:                   # between tasks: record the cast values
            self._snapshot()
        if not self._verified:
            self._verify_frozen()

    @torch.no_grad()
    def _verify_frozen(self) -> None:
        """Raise if a value the current phase must keep differs from the one recorded."""
        for name, ref in self._reference.items():
            p = self.parameter(name)
            same = torch.equal(torch.where(self._trainable[name], ref, p), ref) if name in self._trainable \
                else torch.equal(p, ref)
            if not same:
                raise PackNetError(
                    f"{name}: values that belong to earlier tasks (or are frozen) changed since the engine "
                    "recorded them, outside any protected step; a protected step would silently undo that. "
                    "Load the model's weights first and the engine state after them "
                    "(model.load_state_dict, then engine.load_state_dict), and change weights only by training")
        self._verified = True

    # ------------------------------------------------------------- inference
    def task_masks(self, task: int) -> Dict[str, torch.Tensor]:
        """For each weight, True where task `task` computes with it (owners 1..task)."""
        task = self._check_task(task)
        return {n: (o != 0) & (o <= task) for n, o in self.owner.items()}

    @contextlib.contextmanager
    def task_view(self, task: int) -> Iterator[nn.Module]:
        """Inside, the module computes as task `task`: weights of tasks 1..task,
        the rest counted as zero (torch.where, so whatever a later task's
        weights hold, NaN included, cannot reach task `task`).

        No stored tensor is modified: each packed layer gets the masked weight
        for the duration of its forward call only, so state_dict(), deepcopy
        and the optimizer see the stored weights inside a view as well.
        Views nest: the innermost one decides, and leaving it restores the
        outer one."""
        self.check_module()
        masks = {n: torch.empty_like(self.weights[n], dtype=torch.bool).copy_(m)
                 for n, m in self.task_masks(task).items()}
        if not self._views:
            self._view_hooks = [h for name, layer in self.layers.items()
                                for h in self._masking_hooks(_weight_name(name), layer)]
        self._views.append(masks)
        try:
            yield self.module
        finally:
            self._views.pop()
            if not self._views:
                for h in self._view_hooks:
                    h.remove()
                self._view_hooks = []

    def _masking_hooks(self, name: str, layer: nn.Module):
        """Hooks that give `layer` the innermost view's masked weight for one
        forward call and put the stored one back after it (even if it raises)."""
        views, held = self._views, []

        def swap_in(module, _inputs):
            # `module is layer`: a deepcopy made inside a view shares these
            # closures (functions are not copied) but computes as stored
            if module is layer and views:
                held.append(module._parameters["weight"])
                module._parameters["weight"] = torch.where(views[-1][name], held[-1], 0.0)

        def swap_out(module, _inputs, _output):
            if module is layer and held:
                module._parameters["weight"] = held.pop()

        return (layer.register_forward_pre_hook(swap_in),
                layer.register_forward_hook(swap_out, always_call=True))

    def _check_task(self, task) -> int:
        if isinstance(task, numbers.Integral) and not isinstance(task, bool) and 1 <= task <= self.num_tasks:
            return int(task)
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
        """Restore ownership; the module's own state_dict restores the weights.
        Load the module first: the first protected step checks that the frozen
        values it recorded here are still the module's, and raises otherwise.
        Everything is validated before anything changes (all or nothing)."""
        if not isinstance(state, dict):
            raise PackNetError(f"engine state must be the dict PackNet.state_dict() returns, "
                               f"got {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION:
            raise PackNetError(f"engine state version {version!r} is not supported "
                               f"(this packnet_edu reads version {STATE_VERSION})")
        missing_keys = [k for k in ("num_tasks", "training_task", "owner") if k not in state]
        if missing_keys:
            raise PackNetError(f"engine state lacks {missing_keys}: save it with PackNet.state_dict()")
        num_tasks, training = state["num_tasks"], state["training_task"]
        if not (isinstance(num_tasks, numbers.Integral) and not isinstance(num_tasks, bool)
                and 0 <= num_tasks <= MAX_TASKS):
            raise PackNetError(f"engine state: num_tasks {num_tasks!r} is not a task count in 0..{MAX_TASKS}")
        if not (isinstance(training, numbers.Integral) and not isinstance(training, bool)
                and training in (0, num_tasks)):
            raise PackNetError(f"engine state: training_task {training!r} must be 0 (between tasks) "
                               f"or the last task, {num_tasks}")
        owner = state["owner"]
        if not isinstance(owner, dict) or set(owner) != set(self.owner):
            names = set(owner) if isinstance(owner, dict) else set()
            missing, extra = set(self.owner) - names, names - set(self.owner)
            raise PackNetError("the saved owner maps do not match this module's layers "
                               f"(missing {sorted(missing)}, unexpected {sorted(extra)}): "
                               "load it into the architecture it was saved from")
        loaded = {}
        for name, saved in owner.items():
            if not isinstance(saved, torch.Tensor) or saved.dtype.is_floating_point \
                    or saved.dtype.is_complex or saved.dtype == torch.bool:
                raise PackNetError(f"owner map {name} must be an integer tensor of task ids, "
                                   f"got {getattr(saved, 'dtype', type(saved).__name__)}")
            if saved.shape != self.owner[name].shape:
                raise PackNetError(f"owner map {name} has shape {tuple(saved.shape)}, the layer "
                                   f"{tuple(self.owner[name].shape)}: wrong architecture")
            if saved.numel() and (int(saved.min()) < 0 or int(saved.max()) > num_tasks):
                raise PackNetError(f"owner map {name} holds task ids {int(saved.min())}..{int(saved.max())}, "
                                   f"outside 0..{num_tasks} (0 = free): the state is corrupt")
            loaded[name] = saved.to(torch.uint8, copy=True)
        self.owner.update(loaded)
        self.num_tasks, self.training_task = int(num_tasks), int(training)
        self._snapshot()
