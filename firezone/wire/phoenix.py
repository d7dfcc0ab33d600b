"""Phoenix V1 JSON frames and the problem-details body of a refused upgrade (REFERENCE 1.1, 1.2).

Every WebSocket text frame between a Firezone component and the portal is one
JSON object ``{"topic", "event", "payload", "ref"}``.  connlib sends no
``join_ref`` and no ``vsn``, so the portal answers with the V1 object
serializer; this module speaks exactly that, in both directions, so the channel
client and the portal's socket share one codec.

Decoding is lenient where real peers differ and strict everywhere else:
``payload`` and ``ref`` may be absent (the Rust test server sends both shapes),
``ref`` may be a string (Phoenix JS clients send ``"12"``) although we only
send integers, and ``join_ref`` is kept if present.  Which optional keys were
absent is remembered, so ``decode(x).encode()`` has the same keys and values
as ``x``.  Anything else malformed raises :class:`PhoenixDecodeError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = [
    "EVENT_DISCONNECT",
    "HEARTBEAT",
    "MAX_FRAME_BYTES",
    "MAX_PROBLEM_BYTES",
    "PHOENIX_TOPIC",
    "PHX_CLOSE",
    "PHX_ERROR",
    "PHX_JOIN",
    "PHX_LEAVE",
    "PHX_REPLY",
    "PROBLEM_JSON",
    "STATUS_ERROR",
    "STATUS_OK",
    "PhoenixDecodeError",
    "PhoenixMessage",
    "ProblemDetails",
    "Ref",
    "Reply",
    "disconnect",
    "heartbeat",
    "is_problem_json",
    "phx_close",
    "phx_error",
    "phx_join",
    "phx_reply",
    "push",
]

Ref = int | str

#: Largest frame :meth:`PhoenixMessage.decode` accepts by default, in UTF-8 bytes.
MAX_FRAME_BYTES = 1 << 20
#: Largest problem-details body :meth:`ProblemDetails.decode` accepts.
MAX_PROBLEM_BYTES = 64 * 1024

PHOENIX_TOPIC = "phoenix"
PHX_JOIN = "phx_join"
PHX_REPLY = "phx_reply"
PHX_CLOSE = "phx_close"
PHX_ERROR = "phx_error"
PHX_LEAVE = "phx_leave"
HEARTBEAT = "heartbeat"
#: Firezone's server push that ends a session (``{"reason": "token_expired"}``).
EVENT_DISCONNECT = "disconnect"

STATUS_OK = "ok"
STATUS_ERROR = "error"

PROBLEM_JSON = "application/problem+json"

_OPTIONAL_KEYS = frozenset({"payload", "ref", "join_ref"})
_DEFAULT_ABSENT = frozenset({"join_ref"})


class PhoenixDecodeError(ValueError):
    """The text is not a well-formed Phoenix V1 frame, reply or problem-details body."""


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and which no peer sends.
    raise PhoenixDecodeError(f"not JSON: {name}")


def _load_json(data: str | bytes | bytearray | memoryview, max_size: int, what: str) -> Any:
    if isinstance(data, str):
        if len(data) > max_size:
            raise PhoenixDecodeError(f"{what} longer than {max_size} bytes")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise PhoenixDecodeError(f"{what} is not valid Unicode") from None
        if size > max_size:
            raise PhoenixDecodeError(f"{what} longer than {max_size} bytes")
        text = data
    else:
        raw = bytes(data)
        if len(raw) > max_size:
            raise PhoenixDecodeError(f"{what} longer than {max_size} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PhoenixDecodeError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except PhoenixDecodeError:
        raise
    except (ValueError, RecursionError) as e:
        raise PhoenixDecodeError(f"{what} is not JSON: {e}") from None


def _check_ref(value: Any, key: str) -> Ref | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise PhoenixDecodeError(f"{key!r} must be a non-negative integer, a string or null")


@dataclass(frozen=True)
class PhoenixMessage:
    """One frame.  ``absent`` names the optional keys left out on the wire."""

    topic: str
    event: str
    payload: Any = None
    ref: Ref | None = None
    join_ref: Ref | None = None
    absent: frozenset[str] = field(default=_DEFAULT_ABSENT)

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not isinstance(self.event, str):
            raise TypeError("topic and event must be strings")
        if not self.absent <= _OPTIONAL_KEYS:
            raise ValueError(f"only {sorted(_OPTIONAL_KEYS)} may be absent")
        for key in self.absent:
            if getattr(self, key) is not None:
                raise ValueError(f"{key!r} is marked absent but has a value")
        for key in ("ref", "join_ref"):
            try:
                _check_ref(getattr(self, key), key)
            except PhoenixDecodeError as e:
                raise ValueError(str(e)) from None

    def to_json(self) -> dict[str, Any]:
        """The frame as a JSON object, keys in connlib's order (topic, event, payload, ref)."""
        obj: dict[str, Any] = {"topic": self.topic, "event": self.event}
        for key in ("payload", "ref", "join_ref"):
            if key not in self.absent:
                obj[key] = getattr(self, key)
        return obj

    def encode(self) -> str:
        """Compact JSON text; raises ``TypeError``/``ValueError`` for a non-JSON payload."""
        return json.dumps(
            self.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )

    @classmethod
    def from_json(cls, obj: Any) -> PhoenixMessage:
        """Validate an already parsed JSON value as a frame."""
        if not isinstance(obj, dict):
            raise PhoenixDecodeError("a frame must be a JSON object")
        for key in ("topic", "event"):
            if key not in obj:
                raise PhoenixDecodeError(f"frame has no {key!r}")
            if not isinstance(obj[key], str):
                raise PhoenixDecodeError(f"{key!r} must be a string")
        absent = frozenset(key for key in _OPTIONAL_KEYS if key not in obj)
        return cls(
            topic=obj["topic"],
            event=obj["event"],
            payload=obj.get("payload"),
            ref=_check_ref(obj.get("ref"), "ref"),
            join_ref=_check_ref(obj.get("join_ref"), "join_ref"),
            absent=absent,
        )

    @classmethod
    def decode(
        cls, data: str | bytes | bytearray | memoryview, max_size: int = MAX_FRAME_BYTES
    ) -> PhoenixMessage:
        """Parse one text frame; anything malformed or over ``max_size`` bytes is refused."""
        return cls.from_json(_load_json(data, max_size, "frame"))

    def reply(self) -> Reply:
        """This frame's payload read as a ``phx_reply``; raises :class:`PhoenixDecodeError`."""
        if self.event != PHX_REPLY:
            raise PhoenixDecodeError(f"{self.event!r} is not {PHX_REPLY!r}")
        return Reply.from_payload(self.payload)


@dataclass(frozen=True)
class Reply:
    """The payload of ``phx_reply``: ``{"status": "ok"|"error", "response": {...}}``."""

    status: str
    response: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def reason(self) -> str | None:
        """``response.reason`` of an error reply (``"unmatched topic"``, ``"unknown_message"``)."""
        reason = self.response.get("reason")
        return reason if isinstance(reason, str) else None

    def to_payload(self) -> dict[str, Any]:
        return {"status": self.status, "response": dict(self.response)}

    @classmethod
    def from_payload(cls, payload: Any) -> Reply:
        if not isinstance(payload, dict):
            raise PhoenixDecodeError("a reply payload must be a JSON object")
        status = payload.get("status")
        if status not in (STATUS_OK, STATUS_ERROR):
            raise PhoenixDecodeError(f"reply status must be 'ok' or 'error', not {status!r}")
        if "response" not in payload:
            raise PhoenixDecodeError("reply has no 'response'")
        response = payload["response"]
        if not isinstance(response, dict):
            raise PhoenixDecodeError("reply 'response' must be a JSON object")
        return cls(status, response)


def phx_join(topic: str, payload: Any, ref: Ref) -> PhoenixMessage:
    """Join ``topic``; clients and gateways send payload ``None``, the relay its stamp secret."""
    return PhoenixMessage(topic, PHX_JOIN, payload, ref)


def phx_reply(
    topic: str, ref: Ref | None, status: str, response: Mapping[str, Any] | None = None
) -> PhoenixMessage:
    """The server's answer to the request with ``ref``."""
    return PhoenixMessage(topic, PHX_REPLY, Reply(status, dict(response or {})).to_payload(), ref)


def heartbeat(ref: Ref) -> PhoenixMessage:
    """``{"topic":"phoenix","event":"heartbeat","payload":{},"ref":N}``."""
    return PhoenixMessage(PHOENIX_TOPIC, HEARTBEAT, {}, ref)


def phx_close(topic: str, ref: Ref | None = None) -> PhoenixMessage:
    """The server closed the channel (the client reconnects)."""
    return PhoenixMessage(topic, PHX_CLOSE, {}, ref)


def phx_error(topic: str, ref: Ref | None = None) -> PhoenixMessage:
    """The channel process crashed."""
    return PhoenixMessage(topic, PHX_ERROR, {}, ref)


def push(topic: str, event: str, payload: Any, ref: Ref | None = None) -> PhoenixMessage:
    """An application message; server pushes carry ``ref`` null."""
    return PhoenixMessage(topic, event, payload, ref)


def disconnect(topic: str, reason: str) -> PhoenixMessage:
    """Firezone's session end, e.g. reason ``token_expired`` (fatal for the component)."""
    return PhoenixMessage(topic, EVENT_DISCONNECT, {"reason": reason}, None)


def is_problem_json(content_type: str | None) -> bool:
    """``Content-Type`` announces problem details; case-insensitive, parameters ignored."""
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0]
    return media_type.strip().lower() == PROBLEM_JSON


_PROBLEM_STRINGS = ("type", "title", "detail", "code")


@dataclass(frozen=True)
class ProblemDetails:
    """RFC 9457 body the portal sends with a refused upgrade (REFERENCE 1.1).

    Every member is optional on the wire (older portals send no ``code``);
    members left ``None`` are omitted by :meth:`encode`.
    """

    type: str | None = None
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    code: str | None = None

    CONTENT_TYPE = "application/problem+json; charset=utf-8"

    @classmethod
    def for_status(cls, status: int, code: str | None, detail: str | None) -> ProblemDetails:
        """The portal's shape: ``type`` ``about:blank`` and the status phrase as ``title``."""
        try:
            title: str | None = HTTPStatus(status).phrase
        except ValueError:
            title = None
        return cls("about:blank", title, status, detail, code)

    def to_json(self) -> dict[str, Any]:
        members = ("type", "title", "status", "detail", "code")
        return {k: getattr(self, k) for k in members if getattr(self, k) is not None}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, body: str | bytes | bytearray | memoryview) -> ProblemDetails:
        """Parse a body; unknown extension members are ignored, as RFC 9457 3.2 allows."""
        obj = _load_json(body, MAX_PROBLEM_BYTES, "problem details")
        if not isinstance(obj, dict):
            raise PhoenixDecodeError("problem details must be a JSON object")
        values: dict[str, Any] = {}
        for key in _PROBLEM_STRINGS:
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise PhoenixDecodeError(f"problem details {key!r} must be a string")
            values[key] = value
        status = obj.get("status")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
        ):
            raise PhoenixDecodeError("problem details 'status' must be an HTTP status code")
        return cls(status=status, **values)
