"""Node-to-node messages on one NOTIFY channel (PostgreSQL ``pg_notify``, 8000-byte payloads).

Several portal nodes share a database; each hears every notification on
:data:`CHANNEL`, including its own (which it ignores by ``from``).  Four kinds,
all JSON objects with ``v`` (format version) and ``from`` (the sender's node id):

``announce``  ``{"entries": [presence entry, ...]}`` -- the sender's gateways and
              relays; sent on every join and re-sent every heartbeat (chunked to
              fit), so a node that stops heartbeating has its entries expire.
``leave``     ``{"entry_kind": "gateway"|"relay", "id": ...}`` -- one entry is gone.
``bye``       the sender is shutting down; drop all its entries now.
``deliver``   ``{"to": device_id, "msg": {...}}`` -- a message for the channel of a
              device connected to some node (create_authorization, ICE
              candidates, authorization_created, ...).  Every node hears it; the
              one holding the device hands it over, the others drop it.

Pure: encode/decode and chunking; malformed input raises :class:`ClusterMessageError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from firezone.portal.presence import Entry, PresenceError, entry_from_json

__all__ = [
    "CHANNEL",
    "MAX_PAYLOAD",
    "Announce",
    "Bye",
    "ClusterMessage",
    "ClusterMessageError",
    "Deliver",
    "Leave",
    "chunk_announce",
    "decode",
]

CHANNEL = "firezone_api"
FORMAT_VERSION = 1
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7900


class ClusterMessageError(ValueError):
    """A notification on the cluster channel that is not one of our messages."""


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Announce:
    sender: str
    entries: tuple[Entry, ...]

    def encode(self) -> str:
        return _dumps({
            "v": FORMAT_VERSION, "from": self.sender, "kind": "announce",
            "entries": [e.to_json() for e in self.entries],
        })


@dataclass(frozen=True)
class Leave:
    sender: str
    entry_kind: str
    id: str

    def encode(self) -> str:
        return _dumps({
            "v": FORMAT_VERSION, "from": self.sender, "kind": "leave",
            "entry_kind": self.entry_kind, "id": self.id,
        })


@dataclass(frozen=True)
class Bye:
    sender: str

    def encode(self) -> str:
        return _dumps({"v": FORMAT_VERSION, "from": self.sender, "kind": "bye"})


@dataclass(frozen=True)
class Deliver:
    sender: str
    to: str
    msg: dict[str, Any]

    def encode(self) -> str:
        return _dumps({
            "v": FORMAT_VERSION, "from": self.sender, "kind": "deliver", "to": self.to,
            "msg": self.msg,
        })


ClusterMessage = Announce | Leave | Bye | Deliver


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ClusterMessageError(f"{key!r} must be a non-empty string")
    return value


def decode(payload: str) -> ClusterMessage:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise ClusterMessageError("not JSON") from None
    if not isinstance(obj, dict):
        raise ClusterMessageError("not a JSON object")
    if obj.get("v") != FORMAT_VERSION:
        raise ClusterMessageError(f"unknown format version {obj.get('v')!r}")
    sender = _text(obj, "from")
    kind = obj.get("kind")
    if kind == "announce":
        entries = obj.get("entries")
        if not isinstance(entries, list):
            raise ClusterMessageError("'entries' must be a list")
        try:
            return Announce(sender, tuple(entry_from_json(e) for e in entries))
        except PresenceError as e:
            raise ClusterMessageError(str(e)) from None
    if kind == "leave":
        return Leave(sender, _text(obj, "entry_kind"), _text(obj, "id"))
    if kind == "bye":
        return Bye(sender)
    if kind == "deliver":
        msg = obj.get("msg")
        if not isinstance(msg, dict):
            raise ClusterMessageError("'msg' must be an object")
        return Deliver(sender, _text(obj, "to"), msg)
    raise ClusterMessageError(f"unknown kind {kind!r}")


def chunk_announce(
    sender: str, entries: Iterable[Entry], limit: int = MAX_PAYLOAD
) -> list[Announce]:
    """Announcements that each encode to at most ``limit`` bytes; always at least one
    (an empty announcement is the heartbeat of a node with nothing online)."""
    empty = len(Announce(sender, ()).encode().encode("utf-8"))
    chunks: list[Announce] = []
    current: list[Entry] = []
    size = empty
    for entry in entries:
        # Each entry adds its own JSON and one separating comma.
        cost = len(_dumps(entry.to_json()).encode("utf-8")) + 1
        if current and size + cost > limit:
            chunks.append(Announce(sender, tuple(current)))
            current, size = [], empty
        current.append(entry)
        size += cost
    chunks.append(Announce(sender, tuple(current)))
    return chunks
