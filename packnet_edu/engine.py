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

Three phase calls (`start_task`, `prune`, `end_task`), `protect` for
training, `task_view` for inference.

The rule: after any sequence of public calls and any optimizer, hook or
schedule, older tasks' weights, biases, norm buffers, heads and outputs are
bit-identical (bit patterns, so NaN and -0.0 are values like any other), or
a `PackNetError` that says what to do is raised no later than the next phase
call or view. Silent drift is the only failure.

How: masking gradients is not enough (weight decay, momentum and Adam's
state still move a weight whose gradient is zero), so `protect` masks only
where that is provably exact and otherwise writes the stored values back
after every step (protection.py). Every phase call verifies, by bits, that
the frozen values are still those recorded (fingerprints for packed weights,
bits.py; copies for the small rest), so a step taken without protection is
caught there. A view verifies too, unless no tracked tensor was written
since the last check (their version counters; a write through `.data`
bypasses them and is caught at the next phase call).

Views: thread-safe (each thread has its own stack of views, and no module
state is changed). Under `torch.compile` (tested with the eager backend) a
view is exact: a view replaces each packed layer's `forward`, which dynamo
notices and traces again; should compiled code ever reach the view's masking
itself, the view is refused with a one-line error instead.
"""
from __future__ import annotations

import contextlib
import numbers
import operator
import threading
import types
import warnings
import weakref
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.modules.batchnorm import _NormBase

from .bits import bit_mask, fingerprint, int_view, same_bits
from .protection import Protection

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


def _as_task_id(x) -> Optional[int]:
    """x as an int if it is an integer of any library (Python, NumPy, a 0-d
    integer tensor), else None. Booleans are not task ids."""
    if isinstance(x, bool) or (isinstance(x, torch.Tensor) and (
            x.numel() != 1 or x.dtype == torch.bool or x.dtype.is_floating_point or x.dtype.is_complex)):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


# The newest engine of each trunk: an engine built again on the same trunk
# (a notebook cell run twice) switches the older one's hooks off.
_NEWEST: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()
_PLAIN_FORWARD = {nn.Linear.forward: lambda m, x, w: nn.functional.linear(x, w, m.bias),
                  **{c.forward: lambda m, x, w: m._conv_forward(x, w, m.bias)
                     for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)}}


def _prunable_layers(module: nn.Module) -> Dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE)}


def ownership_counts(owner: Dict[str, torch.Tensor]) -> Dict[str, Dict[int, int]]:
    """Per layer: {owner id: number of weights} (0 = free), from owner maps."""
    out = {}
    for name, o in owner.items():
        ids, counts = torch.unique(o, return_counts=True)
        out[name] = {int(i): int(c) for i, c in zip(ids, counts)}
    return out


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
        self._trainable: Dict[str, torch.Tensor] = {}   # packed weights with frozen entries: True = may move
        self._prints: Dict[str, tuple] = {}             # ... their frozen entries' fingerprints
        self._bit_masks: Dict[str, torch.Tensor] = {}  # ... as 0/-1 integers (the CPU kernels)
        self._copies: Dict[str, torch.Tensor] = {}      # stored values: small tensors; packed ones in restore mode
        self._clean: Dict[str, tuple] = {}              # (id, version) of each tensor when last verified
        self._slots: list = []    # (module, attribute, parameter, device, dtype) at the last full check
        self._placed: Dict[str, tuple] = {}             # name: (device, dtype) at the last full check
        self._local = threading.local()                 # this thread's stack of task views
        self._view_lock = threading.Lock()
        self._active_views = 0
        self._view_cache: Dict[str, dict] = {}          # per layer: the last view's mask and masked weight
        older = _NEWEST.get(module)
        if older is not None and older() is not None:
            older().superseded = True
        _NEWEST[module] = weakref.ref(self)
        self.superseded = False
        for m in module.modules():
            if isinstance(m, NORMS):
                m.register_forward_pre_hook(self._norm_hook())
        self.check_module()       # records what the module holds now

    def parameter(self, name: str) -> nn.Parameter:
        """A parameter the engine tracks, by name: a packed weight, a shared
        (bias/norm) parameter, or `heads.k.<name>` of head k (0-based)."""
        for table in (self.weights, self.shared, self.head_params):
            if name in table:
                return table[name]
        raise KeyError(name)

    def norm_buffers(self) -> Dict[str, torch.Tensor]:
        """Running statistics of every norm layer (task 1's, frozen afterwards)."""
        return {f"{n}.{b}" if n else b: t for n, m in self.module.named_modules() if isinstance(m, NORMS)
                for b, t in m._buffers.items() if t is not None}

    # ----------------------------------------------------------------- phases
    def start_task(self) -> int:
        """Begin the next task; it takes every free weight. Returns its id (1, 2, ...)."""
        self._check_phase_call()
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
        self._check_phase_call()
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
        self._check_phase_call()
        done, self.training_task = self.training_task, 0
        self._snapshot()
        return done

    # -------------------------------------------------------------- freezing
    def frozen_names(self) -> List[str]:
        """Parameters with values the current phase must keep."""
        return [*self._trainable, *(n for n in self._copies if n not in self.weights and n[:7] != "buffer:")]

    def _snapshot(self) -> None:
        """Record the values that must not move, and which entries may."""
        for table in (self._trainable, self._prints, self._bit_masks, self._copies, self._clean,
                      self._view_cache):
            table.clear()
        self.generation += 1      # protect() re-decides how to freeze when ownership changes
        for name, weight in self.weights.items():
            # the mask in the weight's memory format (channels_last too): torch.where
            # over tensors of one layout is one streaming pass
            trainable = torch.empty_like(weight, dtype=torch.bool).copy_(self.owner[name] == self.training_task)
            if not bool(trainable.all()):
                self._trainable[name] = trainable
                self._prints[name] = fingerprint(weight, skip=trainable)
        if self.training_task != 1:
            for name, p in self.shared.items():
                self._copies[name] = p.detach().clone()
            if self.num_tasks:
                for name, b in self.norm_buffers().items():
                    self._copies["buffer:" + name] = b.detach().clone()
        for name, p in self.head_params.items():
            if int(name.split(".")[1]) + 1 != self.training_task:
                self._copies[name] = p.detach().clone()
        self._mark_clean()

    def _mark_clean(self) -> None:
        buffers = self.norm_buffers()
        for name in (*self._trainable, *self._copies):
            t = buffers.get(name[7:]) if name.startswith("buffer:") else self.parameter(name)
            if t is not None:
                self._clean[name] = (id(t), t._version)

    @torch.no_grad()
    def keep_copies(self) -> None:
        """Copy the packed weights with frozen entries (restore mode writes them
        back after each step); first check that they are still as recorded."""
        missing = [n for n in self._trainable if n not in self._copies]
        if missing:
            self._verify(names=missing)
            for name in missing:
                self._copies[name] = self.weights[name].detach().clone()

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Write back every value the current task may not change (bit for bit):
        the values `keep_copies()` stored before the step."""
        for name, ref in self._copies.items():
            if name.startswith("buffer:"):
                continue                      # norm layers run in eval mode after task 1: nothing to undo
            param = self.parameter(name)
            if name not in self._trainable:
                param.copy_(ref)
            elif param.device.type != "cpu":
                torch.where(self._trainable[name], param, ref, out=param)   # in place: one pass
            else:           # CPUs: ref ^ ((param ^ ref) & keep) on the bits, 2x faster than torch.where
                p, r = int_view(param), int_view(ref)
                d = torch.bitwise_xor(p, r).bitwise_and_(self._bit_mask(name, param))
                torch.bitwise_xor(r, d, out=p)

    @torch.no_grad()
    def mask_frozen_gradients(self) -> None:
        """Zero the gradient of every value the current task may not change
        (a select, not a product: a NaN gradient times 0 is NaN); frozen
        biases/BatchNorm get no gradient, so the optimizer skips them."""
        for name, trainable in self._trainable.items():
            g = self.weights[name].grad
            if g is None:
                continue
            if g.device.type != "cpu":                # bandwidth-bound there: one pass, a 1-byte mask
                torch.where(trainable, g, g.new_zeros(()), out=g)
                continue
            # On CPUs torch.where with a scattered mask is kernel-bound (7x slower than
            # a bitwise and of the integer view with a 0/-1 mask: benchmarks/results)
            int_view(g).bitwise_and_(self._bit_mask(name, g))
        for name in self.frozen_names():
            if name not in self._trainable:
                self.parameter(name).grad = None

    def _bit_mask(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The trainable mask of `name` as 0/-1 integers shaped and laid out like `like` (CPU kernels)."""
        m = self._bit_masks.get(name)
        if m is None or m.dtype != int_view(like).dtype or m.stride() != like.stride() or m.device != like.device:
            m = self._bit_masks[name] = bit_mask(self._trainable[name], like)
        return m

    def protect(self, optimizer: torch.optim.Optimizer) -> Protection:
        """Hook `optimizer` so that after each step older tasks' weights, the
        frozen biases/BatchNorm and pruned (free) weights are exactly as stored.
        Works for any torch optimizer. Returns the handle (`.remove()`, `.mode`)."""
        self._check_live()
        return Protection(self, optimizer)

    def _norm_hook(self):
        # After the first task norm layers run on their stored statistics, even
        # in train mode: updating them would change what earlier tasks compute.
        # A closure, not a method: deepcopy(model) must not copy the engine.
        engine = weakref.ref(self)

        def hook(module, _inputs):
            e = engine()
            if e is not None and not e.superseded and e.num_tasks and e.training_task != 1:
                module.training = False
        return hook

    # ----------------------------------------------------------- consistency
    def _check_live(self) -> None:
        if self.superseded:
            raise PackNetError("this trunk was wrapped again by a newer PackNet(...), which now owns it "
                               "(this engine's hooks are off): use the newest engine")

    def _check_phase_call(self) -> None:
        self._check_live()
        self.check_module()
        self._verify(full=True)

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
        self._check_live()
        if quick and all(m._parameters.get(a) is p and p.device == d and p.dtype == t
                         for m, a, p, d, t in self._slots):
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
                p, ref = current.get(name), self._copies.get(name)
                if p is None:
                    raise PackNetError(f"parameter {name} is gone from the module: rebuild PackNet")
                device, dtype = self._placed.get(name, (p.device, p.dtype))   # where it was last seen
                if (ref is not None or name in self._trainable) and p.dtype != dtype:
                    if self.training_task:
                        raise PackNetError(
                            f"{name} was cast from {dtype} to {p.dtype} in the middle of task "
                            f"{self.training_task}: cast the model between tasks (after end_task(), "
                            "before start_task()), or not at all")
                    recast = True
                elif p.device != device:         # .to(device): follow, exactly
                    if ref is not None:
                        self._copies[name] = ref.to(p.device)
                    if name in self._trainable:
                        self._trainable[name] = self._trainable[name].to(p.device)
                    self._view_cache.pop(name, None)
                if p is not held:
                    table[name] = p
                self._placed[name] = (p.device, p.dtype)
        self.layers = _prunable_layers(self.module)
        self._slots = [(m, a, p, p.device, p.dtype) for root in (self.module, *self.heads)
                       for m in root.modules() for a, p in m._parameters.items() if p is not None]
        for name, b in self.norm_buffers().items():
            ref = self._copies.get("buffer:" + name)
            if ref is not None and ref.device != b.device:
                self._copies["buffer:" + name] = ref.to(b.device)
        if recast:                   # between tasks: record the cast values
            self._snapshot()

    @torch.no_grad()
    def _verify(self, full: bool = False, names: Optional[List[str]] = None) -> None:
        """Raise if a value the current phase must keep differs, by bits, from
        the one recorded. Not full: skip tensors that nothing wrote since they
        were last verified (same object, same version counter)."""
        buffers = self.norm_buffers()
        for name in names if names is not None else (*self._trainable, *self._copies):
            t = buffers.get(name[7:]) if name.startswith("buffer:") else self.parameter(name)
            if t is None:
                continue
            if not full and self._clean.get(name) == (id(t), t._version):
                continue
            ref, trainable = self._copies.get(name), self._trainable.get(name)
            if ref is not None:
                same = same_bits(t if trainable is None else torch.where(trainable, ref, t), ref)
            else:
                same = fingerprint(t, skip=trainable) == self._prints[name]
            if not same:
                what = "running statistics of a norm layer" if ref is not None and name.startswith("buffer:") \
                    else "values that belong to earlier tasks (or are frozen)"
                raise PackNetError(
                    f"{name.removeprefix('buffer:')}: {what} changed since the engine recorded them, outside "
                    "any protected step (an optimizer without engine.protect, a write to the weights, "
                    "or the engine state loaded before the model's weights). Load the model's weights "
                    "first and the engine state after them, and train only with engine.protect(optimizer)")
            self._clean[name] = (id(t), t._version)

    # ------------------------------------------------------------- inference
    def task_masks(self, task: int) -> Dict[str, torch.Tensor]:
        """For each weight, True where task `task` computes with it (owners 1..task)."""
        task = self._check_task(task)
        return {n: (o != 0) & (o <= task) for n, o in self.owner.items()}

    @contextlib.contextmanager
    def task_view(self, task: int, cache: bool = True) -> Iterator[nn.Module]:
        """Inside, the module computes as task `task`: weights of tasks 1..task,
        the rest counted as zero (torch.where, so whatever a later task's
        weights hold, NaN included, cannot reach task `task`).

        No stored tensor is modified (state_dict(), deepcopy and the optimizer
        see the stored weights inside a view too), and the view belongs to the
        thread that entered it. Views nest: the innermost one decides.

        cache: outside autograd (torch.no_grad, inference_mode), each layer's
        masked weight is computed once and kept until the weights, the task or
        the ownership change: one extra copy of every partly owned layer's
        weight (4 bytes per weight in float32), held after the view ends
        until `clear_view_cache()`. cache=False computes it at every forward
        call instead and holds nothing."""
        task = self._check_task(task)
        self.check_module(quick=True)
        self._verify()
        stack = self._local.__dict__.setdefault("views", [])
        with self._view_lock:
            if not self._active_views:
                self._install_view_forwards()
            self._active_views += 1
        stack.append((task, cache))
        try:
            yield self.module
        finally:
            stack.pop()
            with self._view_lock:
                self._active_views -= 1
                if not self._active_views:
                    self._remove_view_forwards()

    def clear_view_cache(self) -> None:
        """Free the masked weights kept by views (see task_view's `cache`)."""
        self._view_cache.clear()

    def _install_view_forwards(self) -> None:
        for name, layer in self.layers.items():
            layer.forward = types.MethodType(self._view_forward(_weight_name(name), layer), layer)

    def _remove_view_forwards(self) -> None:
        for layer in self.layers.values():
            if isinstance(layer.__dict__.get("forward"), types.MethodType):
                del layer.forward

    def _view_forward(self, name: str, layer: nn.Module):
        """`layer`'s forward while any thread is in a view: the stored weight
        for threads outside views (and for copies of the layer made by
        deepcopy), the view's masked weight inside one."""
        engine, cls_forward = self, type(layer).forward
        plain = _PLAIN_FORWARD.get(cls_forward)

        def forward(module, *args, **kwargs):
            views = getattr(engine._local, "views", None)
            if module is not layer or not views or engine.superseded:
                return cls_forward(module, *args, **kwargs)
            if torch.compiler.is_compiling():
                raise PackNetError("task_view does not work under torch.compile: compile the export of a "
                                   "task (python -m packnet_edu export), or run the view uncompiled")
            weight = engine._view_weight(name, module.weight, *views[-1])
            if plain is not None:
                return plain(module, args[0], weight)
            held = module._parameters["weight"]     # a subclass with its own forward: swap for the call
            module._parameters["weight"] = weight
            try:
                return cls_forward(module, *args, **kwargs)
            finally:
                module._parameters["weight"] = held
        return forward

    def _view_weight(self, name: str, weight: torch.Tensor, task: int, cache: bool) -> torch.Tensor:
        key = (task, self.generation, id(weight), weight._version, weight.device, weight.dtype)
        hit = self._view_cache.get(name)
        if hit is not None and hit["key"][:3] == key[:3] and hit["key"][4:] == key[4:]:
            if hit["full"]:
                return weight
            if hit["key"] == key and hit["masked"] is not None and not torch.is_grad_enabled():
                return hit["masked"]
            mask = hit["mask"]
        else:
            owned = self.task_masks(task)[name]
            if bool(owned.all()):                    # every entry is the task's: nothing to mask
                self._view_cache[name] = {"key": key, "full": True}
                return weight
            mask = torch.empty_like(weight, dtype=torch.bool).copy_(owned)
        # a view of an older task reads the stored copy (restore mode): exact even
        # while another thread's training step has the live weight in flux
        source = self._copies.get(name) if task < self.training_task else None
        masked = torch.where(mask, weight if source is None else source, 0.0)
        keep = masked if cache and not torch.is_grad_enabled() else None
        self._view_cache[name] = {"key": key, "full": False, "mask": mask, "masked": keep}
        return masked

    def _check_task(self, task) -> int:
        t = _as_task_id(task)
        if t is not None and 1 <= t <= self.num_tasks:
            return t
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
