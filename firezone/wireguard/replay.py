"""The anti-replay sliding window for transport counters (RFC 6479).

Same layout as wireguard-go's ``replay`` package: a ring of 128 blocks of 64
bits (8192 bits), of which 127 blocks are the usable window, so a counter is
accepted when it was not seen before and is at most WINDOW_SIZE = 8128 below
the highest counter seen.  Counters at or above REJECT_AFTER_MESSAGES are
always refused.  Call :meth:`ReplayWindow.accept` only after the packet
authenticated, or forged packets could move the window.
"""

from __future__ import annotations

from firezone.wireguard.constants import REJECT_AFTER_MESSAGES

_BLOCK_BIT_LOG = 6
_BLOCK_BITS = 1 << _BLOCK_BIT_LOG
_RING_BLOCKS = 1 << 7
_BLOCK_MASK = _RING_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1
WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK_BITS


class ReplayWindow:
    """Remembers which recent counters arrived."""

    __slots__ = ("_last", "_limit", "_ring")

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._last = 0
        self._limit = limit
        self._ring = [0] * _RING_BLOCKS

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (0 before any)."""
        return self._last

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` as received; False if it is a replay, too old or over the limit."""
        if counter >= self._limit:
            return False
        ring = self._ring
        index_block = counter >> _BLOCK_BIT_LOG
        last = self._last
        if counter > last:
            current = last >> _BLOCK_BIT_LOG
            diff = index_block - current
            if diff:
                if diff > _RING_BLOCKS:
                    diff = _RING_BLOCKS
                for i in range(current + 1, current + diff + 1):
                    ring[i & _BLOCK_MASK] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        slot = index_block & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[slot]
        if old & bit:
            return False
        ring[slot] = old | bit
        return True
