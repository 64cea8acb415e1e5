"""Bit patterns of float tensors: the engine's notion of "unchanged".

`torch.equal` says NaN != NaN and -0.0 == +0.0; PackNet promises bit-identical
old tasks, so every check here compares the integers behind the floats.

`fingerprint` lets the engine check that frozen weights did not move without
keeping a copy of them (mask mode holds 2 bytes per packed weight, not 6):
a weighted sum of the bit patterns modulo 2**64, with an odd weight per
position. A change of one entry changes the sum by (weight * difference),
which is never 0 mod 2**64 for an odd weight and a difference below 2**63:
every single-entry change is caught, and two lanes with unrelated weights
make a cancelling change of several entries a 2**-128 accident.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 20          # elements per fingerprint pass: a few MB of temporaries, not GBs
_LANES = (0x9E3779B97F4A7C15 - (1 << 64), 0x632BE59BD9B4E019)   # odd 64-bit multipliers


def int_view(t: torch.Tensor) -> torch.Tensor:
    """`t` reinterpreted as the integer type of its element size (no copy)."""
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.dtype.is_floating_point else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True iff `a` and `b` hold the same shape, dtype and bit patterns."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(int_view(a), int_view(b))


def _position_weights(start: int, n: int, lane: int, device) -> torch.Tensor:
    # splitmix-style mixing of the position, forced odd; int64 arithmetic wraps
    x = torch.arange(start, start + n, dtype=torch.int64, device=device) * _LANES[lane]
    x = x ^ (x >> 31)
    return x * _LANES[1 - lane] | 1


@torch.no_grad()
def fingerprint(t: torch.Tensor, skip: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """Two 64-bit sums over the bit patterns of `t`'s entries in logical
    (row-major) order; entries where `skip` is True count as 0, so they may
    change freely. Equal for equal bits whatever the memory format, device or
    thread count (integer sums do not depend on their order)."""
    flat = int_view(t.detach()).reshape(-1)
    mask = None if skip is None else skip.reshape(-1)
    sums = [0, 0]
    for start in range(0, flat.numel(), _CHUNK):
        bits = flat[start:start + _CHUNK].to(torch.int64)
        if mask is not None:
            bits = bits.masked_fill(mask[start:start + _CHUNK], 0)
        for lane in (0, 1):
            w = _position_weights(start, bits.numel(), lane, bits.device)
            sums[lane] += int((bits * w).sum())
    return tuple(s % (1 << 64) for s in sums)
