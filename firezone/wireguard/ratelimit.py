"""Handshake flood controls, driven by ``now`` alone.

:class:`LoadMonitor` decides when the responder is "under load" (then it wants
mac2 cookies).  wireguard-go infers load from its handshake queue depth;
Firezone's boringtun counts handshake messages per second against a limit of
100.  A pure machine has no queue, so we count like boringtun (messages with a
valid mac1, per one-second window) and, like wireguard-go, stay under load for
a second after the limit was exceeded.

:class:`RateLimiter` is wireguard-go's ``ratelimiter.go``: a token bucket per
source IP, 20 packets/s with a burst of 5, applied to handshakes under load.
"""

from __future__ import annotations

from collections.abc import Hashable

from firezone.wireguard.constants import (
    FIREZONE_HANDSHAKE_RATE_LIMIT,
    RATELIMIT_BURST,
    RATELIMIT_PACKETS_PER_SECOND,
    UNDER_LOAD_AFTER_TIME,
)

_NS = 1_000_000_000
_GC_AFTER_NS = _NS


class LoadMonitor:
    """Counts handshake messages per second; over ``threshold`` means under load."""

    def __init__(
        self,
        threshold: int = FIREZONE_HANDSHAKE_RATE_LIMIT,
        hold: float = UNDER_LOAD_AFTER_TIME,
    ) -> None:
        if threshold < 0:
            raise ValueError("threshold must not be negative")
        self.threshold = threshold
        self.hold = hold
        self._window_start = float("-inf")
        self._count = 0
        self._under_load_until = float("-inf")

    def record(self, now: float) -> bool:
        """Count one handshake message; returns whether we are now under load."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._under_load_until = now + self.hold
        return now < self._under_load_until

    def under_load(self, now: float) -> bool:
        return now < self._under_load_until


class RateLimiter:
    """Token bucket per key (a source IP); ``allow`` spends one packet's cost."""

    def __init__(
        self,
        packets_per_second: float = RATELIMIT_PACKETS_PER_SECOND,
        burst: int = RATELIMIT_BURST,
    ) -> None:
        if packets_per_second <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self._cost = int(_NS / packets_per_second)
        self._max_tokens = self._cost * burst
        # key -> [last_time_ns, tokens_ns]
        self._table: dict[Hashable, list[int]] = {}
        self._last_gc = 0

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, key: Hashable, now: float) -> bool:
        """May one more packet from ``key`` pass at ``now``?"""
        now_ns = round(now * _NS)
        if now_ns - self._last_gc > _GC_AFTER_NS:
            self.collect(now)
        entry = self._table.get(key)
        if entry is None:
            self._table[key] = [now_ns, self._max_tokens - self._cost]
            return True
        tokens = min(entry[1] + max(now_ns - entry[0], 0), self._max_tokens)
        entry[0] = now_ns
        if tokens > self._cost:
            entry[1] = tokens - self._cost
            return True
        entry[1] = tokens
        return False

    def collect(self, now: float) -> None:
        """Forget keys idle for more than a second (their buckets would be full anyway)."""
        now_ns = round(now * _NS)
        self._last_gc = now_ns
        stale = [k for k, e in self._table.items() if now_ns - e[0] > _GC_AFTER_NS]
        for k in stale:
            del self._table[k]
