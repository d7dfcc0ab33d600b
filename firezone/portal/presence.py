"""Who is online: gateways and relays, on this portal node and on the others.

The reference keeps gateways and relays in Phoenix Presence, a CRDT shared by
the Erlang cluster (REFERENCE 1.3-1.6).  Here each node owns its *local*
entries and learns the other nodes' entries from their announcements (sent
over the store's NOTIFY channel by :mod:`firezone.portal.api.node`).  A remote
entry lives until its node says it left, says goodbye, or stops re-announcing
it for ``expiry`` seconds -- so a node that dies without a word takes its
gateways and relays with it shortly after.

Pure: ``now`` is passed in; methods report which kinds changed so the caller
can wake the channels that care (relay changes feed ``relays_presence``).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GATEWAY",
    "RELAY",
    "Entry",
    "GatewayEntry",
    "Presence",
    "PresenceError",
    "RelayEntry",
    "entry_from_json",
    "relay_id",
]

GATEWAY = "gateway"
RELAY = "relay"

#: A remote entry not re-announced for this long is gone.
DEFAULT_EXPIRY = 15.0


class PresenceError(ValueError):
    """A presence entry received from another node is malformed."""


def relay_id(stamp_secret: str) -> str:
    """The relay's id, a UUIDv4 made from ``sha256(stamp_secret)`` (``Portal.Relay.generate_id``).

    The hash's first 128 bits are read as ``a:32, b:16, _:4, c:12, _:2, d:62``
    and reassembled with version nibble 4 and variant bits ``10``; the same
    relay process therefore keeps its id across reconnects.
    """
    bits = int.from_bytes(hashlib.sha256(stamp_secret.encode("utf-8")).digest()[:16], "big")
    a = bits >> 96
    b = (bits >> 80) & 0xFFFF
    c = (bits >> 64) & 0xFFF
    d = bits & ((1 << 62) - 1)
    value = (a << 96) | (b << 80) | (4 << 76) | (c << 64) | (2 << 62) | d
    return str(uuid.UUID(int=value))


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise PresenceError(f"{key} must be a string")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PresenceError(f"{key} must be a non-empty string")
    return value


def _opt_float(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PresenceError(f"{key} must be a number")
    return float(value)


@dataclass(frozen=True)
class GatewayEntry:
    """An online gateway, as gateway selection needs it (REFERENCE 2.3)."""

    id: str
    account_id: str
    site_id: str | None
    version: str | None = None
    lat: float | None = None
    lon: float | None = None

    kind = GATEWAY

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": GATEWAY, "id": self.id, "account_id": self.account_id,
            "site_id": self.site_id, "version": self.version, "lat": self.lat, "lon": self.lon,
        }


@dataclass(frozen=True)
class RelayEntry:
    """An online relay: where it listens and the secret its TURN credentials derive from."""

    id: str
    stamp_secret: str
    ipv4: str | None
    ipv6: str | None
    port: int
    lat: float | None = None
    lon: float | None = None

    kind = RELAY

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": RELAY, "id": self.id, "stamp_secret": self.stamp_secret, "ipv4": self.ipv4,
            "ipv6": self.ipv6, "port": self.port, "lat": self.lat, "lon": self.lon,
        }


Entry = GatewayEntry | RelayEntry


def entry_from_json(obj: Any) -> Entry:
    if not isinstance(obj, dict):
        raise PresenceError("a presence entry must be an object")
    kind = obj.get("kind")
    if kind == GATEWAY:
        return GatewayEntry(
            id=_str(obj, "id"), account_id=_str(obj, "account_id"),
            site_id=_opt_str(obj, "site_id"), version=_opt_str(obj, "version"),
            lat=_opt_float(obj, "lat"), lon=_opt_float(obj, "lon"),
        )
    if kind == RELAY:
        port = obj.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise PresenceError("port must be a port number")
        return RelayEntry(
            id=_str(obj, "id"), stamp_secret=_str(obj, "stamp_secret"),
            ipv4=_opt_str(obj, "ipv4"), ipv6=_opt_str(obj, "ipv6"), port=port,
            lat=_opt_float(obj, "lat"), lon=_opt_float(obj, "lon"),
        )
    raise PresenceError(f"unknown presence kind {kind!r}")


@dataclass
class _Remote:
    entry: Entry
    node_id: str
    seen: float


class Presence:
    """Local and remote entries by kind and id; local entries win over remote ones."""

    def __init__(self, node_id: str, expiry: float = DEFAULT_EXPIRY) -> None:
        self.node_id = node_id
        self.expiry = expiry
        self._local: dict[str, dict[str, Entry]] = {GATEWAY: {}, RELAY: {}}
        self._remote: dict[str, dict[str, _Remote]] = {GATEWAY: {}, RELAY: {}}

    # -- this node's entries ---------------------------------------------------------
    def add_local(self, entry: Entry) -> None:
        self._local[entry.kind][entry.id] = entry

    def remove_local(self, kind: str, ident: str, entry: Entry | None = None) -> bool:
        """Forget a local entry (only if it still is ``entry`` when given)."""
        current = self._local[kind].get(ident)
        if current is None or (entry is not None and current != entry):
            return False
        del self._local[kind][ident]
        return True

    def local_entries(self) -> list[Entry]:
        return [*self._local[GATEWAY].values(), *self._local[RELAY].values()]

    # -- what other nodes tell us --------------------------------------------------------
    def announce(self, node_id: str, entries: list[Entry], now: float) -> set[str]:
        """Add or refresh ``node_id``'s entries; returns the kinds whose membership changed."""
        changed: set[str] = set()
        if node_id == self.node_id:
            return changed
        for entry in entries:
            table = self._remote[entry.kind]
            previous = table.get(entry.id)
            if previous is None or previous.entry != entry:
                changed.add(entry.kind)
            table[entry.id] = _Remote(entry, node_id, now)
        return changed

    def leave(self, node_id: str, kind: str, ident: str) -> bool:
        table = self._remote.get(kind, {})
        remote = table.get(ident)
        if remote is None or remote.node_id != node_id:
            return False
        del table[ident]
        return True

    def forget_node(self, node_id: str) -> set[str]:
        changed: set[str] = set()
        for kind, table in self._remote.items():
            for ident in [i for i, r in table.items() if r.node_id == node_id]:
                del table[ident]
                changed.add(kind)
        return changed

    def expire(self, now: float) -> set[str]:
        changed: set[str] = set()
        for kind, table in self._remote.items():
            for ident in [i for i, r in table.items() if now - r.seen > self.expiry]:
                del table[ident]
                changed.add(kind)
        return changed

    # -- queries ---------------------------------------------------------------------------
    def _all(self, kind: str) -> dict[str, Entry]:
        merged: dict[str, Entry] = {i: r.entry for i, r in self._remote[kind].items()}
        merged.update(self._local[kind])
        return merged

    def is_online(self, kind: str, ident: str) -> bool:
        return ident in self._local[kind] or ident in self._remote[kind]

    def is_local(self, kind: str, ident: str) -> bool:
        return ident in self._local[kind]

    def gateways(self, account_id: str) -> list[GatewayEntry]:
        found = [e for e in self._all(GATEWAY).values() if isinstance(e, GatewayEntry)]
        return sorted((e for e in found if e.account_id == account_id), key=lambda e: e.id)

    def relays(self) -> list[RelayEntry]:
        found = [e for e in self._all(RELAY).values() if isinstance(e, RelayEntry)]
        return sorted(found, key=lambda e: e.id)
