"""Count-limited TURN nonces, one per client socket (reference ``auth.rs`` ``Nonces``).

A nonce is a UUID handed out in 401/438 responses and valid for a fixed number
of authenticated requests from the same client socket.  The relay remembers at
most one nonce per socket, and at most ``capacity`` sockets (oldest forgotten
first), so spoofed sources cannot grow this table without bound; a forgotten
client simply gets a 438 and a fresh nonce.
"""

from __future__ import annotations

import enum
import random
import uuid

__all__ = ["NONCE_USES", "NonceCheck", "Nonces"]

#: How many requests one nonce authorizes.
NONCE_USES = 10_000

Address = tuple[str, int]


class NonceCheck(enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"
    USED_UP = "used_up"


class _Entry:
    __slots__ = ("remaining", "value")

    def __init__(self, value: uuid.UUID, remaining: int) -> None:
        self.value = value
        self.remaining = remaining


class Nonces:
    """The nonce table of one relay."""

    __slots__ = ("_capacity", "_entries", "_rng", "_uses")

    def __init__(
        self, rng: random.Random, *, uses: int = NONCE_USES, capacity: int = 100_000
    ) -> None:
        self._rng = rng
        self._uses = uses
        self._capacity = capacity
        # Dict order is issue order, which drives eviction.
        self._entries: dict[Address, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, client: Address) -> str:
        """The client's current nonce if it has uses left, else a fresh one."""
        entry = self._entries.get(client)
        if entry is not None and entry.remaining > 0:
            return str(entry.value)
        value = uuid.UUID(int=self._rng.getrandbits(128))
        self._entries.pop(client, None)
        self._entries[client] = _Entry(value, self._uses)
        while len(self._entries) > self._capacity:
            del self._entries[next(iter(self._entries))]
        return str(value)

    def use(self, client: Address, nonce: uuid.UUID) -> NonceCheck:
        """Spend one use of ``nonce`` for ``client``."""
        entry = self._entries.get(client)
        if entry is None or entry.value != nonce:
            return NonceCheck.UNKNOWN
        if entry.remaining <= 0:
            del self._entries[client]
            return NonceCheck.USED_UP
        entry.remaining -= 1
        return NonceCheck.OK
