"""Bit patterns of float tensors: the engine's notion of "unchanged".

`torch.equal` says NaN != NaN and -0.0 == +0.0; PackNet promises bit-identical
old tasks, so every check here compares the integers behind the floats.

`fingerprint` lets the engine check that frozen weights did not move without
keeping a copy of them (mask mode holds 2 bytes per packed weight, not 6).
Each of two lanes multiplies every 32-bit word of the bit patterns by an odd
per-position weight (mod 2**32, a bijection: a changed word always changes
its product) and sums the products exactly; the sums of successive chunks are
combined with odd 64-bit multipliers mod 2**64, so one changed word always
changes both lanes. A cancelling change of several words at once is a 2**-64
accident. Integer sums do not depend on their order: the same bits give the
same fingerprint whatever the memory format, device or thread count.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 20          # words per pass: a few MB of temporaries, not GBs
_MULT = (0x9E3779B1, 0x85EBCA77)                       # odd 32-bit constants, one per lane
_CHUNK_MULT = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)  # odd 64-bit constants
_WEIGHTS: dict = {}       # (device, lane): the odd per-position weights of one chunk


def int_view(t: torch.Tensor) -> torch.Tensor:
    """`t` reinterpreted as the integer type of its element size (no copy)."""
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.dtype.is_floating_point else t


def bit_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`keep` as integers of `like`'s element size, all ones where True and 0
    where False, in `like`'s memory format: `int_view(x).bitwise_and_(m)`
    then zeroes the other entries of x exactly (+0.0, whatever they held,
    NaN included), as torch.where(keep, x, 0) does."""
    return torch.empty_like(like, dtype=int_view(like).dtype).copy_(keep).neg_()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True iff `a` and `b` hold the same shape, dtype and bit patterns."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(int_view(a), int_view(b))


def _weights(lane: int, device) -> torch.Tensor:
    key = (str(device), lane)
    if key not in _WEIGHTS:
        j = torch.arange(_CHUNK, dtype=torch.int64, device=device)
        w = (j * _MULT[lane] + (j >> 7) * _MULT[1 - lane]) % (1 << 32) | 1    # odd, and distinct per position
        _WEIGHTS[key] = (w - ((w >= (1 << 31)).long() << 32)).to(torch.int32)  # as signed 32-bit words
    return _WEIGHTS[key]


def _words(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of `t` as a flat int32 tensor, in logical order
    (a float64 entry gives two words, a 16-bit one is widened)."""
    flat = int_view(t.detach()).reshape(-1)
    if flat.element_size() == 8:
        return flat.view(torch.int32)
    return flat if flat.dtype == torch.int32 else flat.to(torch.int32)


@torch.no_grad()
def fingerprint(t: torch.Tensor, skip: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """Two 64-bit fingerprints of the bit patterns of `t`'s entries; entries
    where `skip` is True count as 0, so they may change freely."""
    words = _words(t)
    per_entry = words.numel() // max(t.numel(), 1)
    mask = None if skip is None else skip.reshape(-1)
    if mask is not None and per_entry > 1:
        mask = mask.repeat_interleave(per_entry)
    sums = [0, 0]
    for c, start in enumerate(range(0, words.numel(), _CHUNK)):
        chunk = words[start:start + _CHUNK]
        if mask is not None:
            chunk = chunk.masked_fill(mask[start:start + _CHUNK], 0)
        for lane in (0, 1):
            s = int((chunk * _weights(lane, chunk.device)[:chunk.numel()]).sum(dtype=torch.int64))
            sums[lane] += s * (_CHUNK_MULT[lane] + 2 * c * _CHUNK_MULT[1 - lane])
    return tuple(s % (1 << 64) for s in sums)
