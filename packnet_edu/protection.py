"""How `PackNet.protect(optimizer)` keeps every optimizer step exact.

Two ways to keep the entries the current task does not own where they are:

"mask":    zero their gradients just before the step. Exact only when a zero
           gradient provably leaves a weight's bits alone: plain `torch.optim.SGD`,
           no weight decay, not `maximize` (p + lr * -0.0 turns -0.0 into +0.0),
           momentum buffers empty when the current ownership began and written
           since only by this optimizer's own protected steps, and no step
           pre-hook that runs after the masking (it could write the gradients
           again). No copy of the weights is needed.
    "restore": write the stored values back just after the step. Exact for any
           optimizer; holds a copy of every weight with frozen entries.

The mode is decided at the first step after each change of ownership, and
decided again whenever what "mask" relies on may have changed: the optimizer
state replaced or written outside a step (`load_state_dict`), a step
pre-hook registered after `protect`, weight decay or `maximize` switched on.
A step where masking cannot be proven exact restores.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


class Protection:
    """The handle `PackNet.protect` returns: `.mode`, `.remove()`. (`engine` is
    the PackNet that made it; this module does not import the engine's.)"""

    def __init__(self, engine, optimizer: torch.optim.Optimizer):
        self.engine, self.optimizer = engine, optimizer
        self.mode: Optional[str] = None
        self._generation = None
        self._state_seen: Optional[Tuple] = None     # optimizer state as our last step left it
        self._pre = optimizer.register_step_pre_hook(self._before)
        self._post = optimizer.register_step_post_hook(self._after)

    # ------------------------------------------------------------ the decision
    def _sgd_without_side_effects(self) -> bool:
        opt = self.optimizer
        return type(opt) is torch.optim.SGD and all(
            g["weight_decay"] == 0 and not g.get("maximize", False) for g in opt.param_groups)

    def _hooks_run_after_masking(self) -> bool:
        """A step pre-hook registered after ours would see (and could change)
        the masked gradients."""
        return next(reversed(self.optimizer._optimizer_step_pre_hooks)) != self._pre.id

    def _state_signature(self) -> Tuple:
        """Which momentum buffers the frozen-entry weights have, and their
        version counters: any write outside our steps changes it."""
        state = self.optimizer.state
        bufs = []
        for name in self.engine.frozen_names():
            buf = state.get(self.engine.parameter(name), {}).get("momentum_buffer")
            bufs.append(None if buf is None else (id(buf), buf._version))
        return (id(state), tuple(bufs))

    def _decide(self) -> str:
        if not self._sgd_without_side_effects() or self._hooks_run_after_masking():
            return "restore"
        if self._generation != self.engine.generation:       # new ownership: buffers must be empty
            state = self.optimizer.state
            empty = all(state.get(self.engine.parameter(n), {}).get("momentum_buffer") is None
                        for n in self.engine.frozen_names())
            return "mask" if empty else "restore"
        if self.mode == "mask" and self._state_signature() == self._state_seen:
            return "mask"
        return "restore"                                     # state loaded or written since our last step

    # ------------------------------------------------------------ the hooks
    def _before(self, *_) -> None:
        self.engine.check_module(quick=True)   # weights replaced, moved or cast since the snapshot?
        if self._generation != self.engine.generation:
            self.engine._verify()              # once per phase: anything written since it began?
        mode = self._decide()
        if mode == "restore":
            self.engine.keep_copies()          # once per phase: verified against the fingerprints, then copied
        self.mode, self._generation = mode, self.engine.generation
        if next(reversed(self.optimizer._optimizer_step_post_hooks)) != self._post.id:
            self._post.remove()                # our restore must be the last word on the weights
            self._post = self.optimizer.register_step_post_hook(self._after)
        if mode == "mask":
            self.engine.mask_frozen_gradients()

    def _after(self, *_) -> None:
        if self.mode == "restore":
            self.engine.restore_frozen()
        else:
            self._state_seen = self._state_signature()

    def bytes_per_step(self) -> int:
        """Memory traffic of the protection per step in its current mode
        (the minimum each kernel must read and write; launches not counted)."""
        e, total = self.engine, 0
        for name in e.frozen_names():
            p = e.parameter(name)
            n, size = p.numel(), p.element_size()
            if name in e._trainable:
                if p.device.type != "cpu":     # 1-byte mask; grad r+w, or weight r+w and copy r
                    total += n * (1 + (2 if self.mode == "mask" else 3) * size)
                else:                          # the CPU kernels (engine.py): a 0/-1 mask of the element size;
                    total += n * size * (3 if self.mode == "mask" else 10)   # and; or xor, and, xor
            elif self.mode != "mask":      # frozen bias/BatchNorm copied back (mask mode: no gradient)
                total += 2 * n * size
        return total

    def remove(self) -> None:
        self._pre.remove()
        self._post.remove()
