"""The portal channel as a transport-free state machine (connlib's ``PhoenixChannel``).

One instance lives as long as the component: it dials, joins one topic, keeps
the connection alive with heartbeats, reconnects on every transient failure
and gives up only where connlib does (a 401, a refused join, ``disconnect``
``token_expired``, or a spent backoff budget).  Inputs carry ``now`` and, for
connection events, the attempt number the machine handed out, so a late event
from a connection already given up is ignored instead of corrupting state.
Outputs are effect values collected with :meth:`PhoenixChannel.take_effects`;
the Twisted adapter (:mod:`firezone.control.client`) performs them.

Behaviour, with the connlib source it follows (``phoenix-channel/src/lib.rs``):

- ``ref`` counts from 0 on every connection; the join takes 0, heartbeats and
  pushes share the counter (REFERENCE 1.2).
- Heartbeats go out 10 s after the last join/push was sent (connlib resets its
  interval on every outbound request); more than 3 unanswered ones reconnect.
- A join unanswered after 5 s reconnects; an error reply to it is fatal.
- Pushes wait in a queue (at most 32, exact duplicates dropped) until joined.
- Before the first successful connect the backoff is 1 s for at most 15 s;
  afterwards the role's exponential policy.  ``Retry-After`` replaces the
  backoff delay for that one retry without consuming the schedule.
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from firezone.control.backoff import INITIAL_CONNECT, Backoff, BackoffPolicy, reconnect_policy
from firezone.wire import phoenix
from firezone.wire.phoenix import PhoenixDecodeError, PhoenixMessage

__all__ = [
    "AUTHENTICATION_FAILED",
    "CONNECT_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "INVALID_TOKEN",
    "JOIN_TIMEOUT",
    "LOGIN_FAILED",
    "MAX_BUFFERED_MESSAGES",
    "MAX_RETRIES_REACHED",
    "MAX_UNANSWERED_HEARTBEATS",
    "ChannelFatal",
    "ChannelObserver",
    "ChannelState",
    "CloseConnection",
    "ConnectFailure",
    "Disconnected",
    "Effect",
    "Fatal",
    "Joined",
    "MessageReceived",
    "Notice",
    "OpenConnection",
    "PhoenixChannel",
    "SendFrame",
]

HEARTBEAT_INTERVAL = 10.0
JOIN_TIMEOUT = 5.0
#: TCP + TLS + WebSocket upgrade, as one budget.
CONNECT_TIMEOUT = 15.0
MAX_UNANSWERED_HEARTBEATS = 3
MAX_BUFFERED_MESSAGES = 32
#: Pushes whose reply we still wait for, remembered to name them in error logs.
_MAX_TRACKED_PUSHES = 1024

UNMATCHED_TOPIC = "unmatched topic"
TOKEN_EXPIRED = "token_expired"
_TOKEN_CODES = ("invalid_token", "missing_token")

# ChannelFatal.kind values
INVALID_TOKEN = "invalid_token"
AUTHENTICATION_FAILED = "authentication_failed"
LOGIN_FAILED = "login_failed"
MAX_RETRIES_REACHED = "max_retries_reached"


class ChannelState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    CONNECTING = "connecting"
    JOINING = "joining"
    JOINED = "joined"
    FATAL = "fatal"
    STOPPED = "stopped"


_CONNECTED = (ChannelState.JOINING, ChannelState.JOINED)
_HAS_CONNECTION = (ChannelState.CONNECTING, *_CONNECTED)


@dataclass(frozen=True)
class ChannelFatal:
    """Why the channel gave up for good; ``kind`` is one of the module constants."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ConnectFailure:
    """A failed dial or a lost connection, as the adapter saw it.

    ``status`` is set only for a refused WebSocket upgrade (non-101 response);
    ``code`` and ``detail`` come from its problem-details body.
    """

    description: str
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class OpenConnection:
    """Dial the portal; report back with ``attempt``."""

    attempt: int


@dataclass(frozen=True)
class SendFrame:
    """Write one text frame on the connection of ``attempt``."""

    attempt: int
    text: str


@dataclass(frozen=True)
class CloseConnection:
    """Give up the connection (or the dial) of ``attempt``.

    ``graceful``: send a WebSocket Close first (stop, fatal); otherwise drop
    the TCP connection at once, as connlib drops a stream on a hiccup.
    """

    attempt: int
    graceful: bool


@dataclass(frozen=True)
class Joined:
    response: Mapping[str, Any]


@dataclass(frozen=True)
class MessageReceived:
    event: str
    payload: Any


@dataclass(frozen=True)
class Disconnected:
    """The connection is gone (or the dial failed); the next attempt is in ``retry_in`` s."""

    reason: str
    retry_in: float


@dataclass(frozen=True)
class Fatal:
    error: ChannelFatal


@dataclass(frozen=True)
class Notice:
    """Something worth a warning in the log that changes nothing (bad frame, dropped push)."""

    text: str


Effect = (
    OpenConnection
    | SendFrame
    | CloseConnection
    | Joined
    | MessageReceived
    | Disconnected
    | Fatal
    | Notice
)


class ChannelObserver(Protocol):
    """What a role learns from its portal channel."""

    def on_joined(self, reply: Mapping[str, Any]) -> None:
        """The join was accepted (again after every reconnect or re-join)."""

    def on_message(self, event: str, payload: Any) -> None:
        """A server push on the joined topic (``init``, ``relays_presence``, ...)."""

    def on_disconnected(self, reason: str) -> None:
        """The connection is gone or could not be made; the channel retries by itself."""

    def on_fatal(self, reason: ChannelFatal) -> None:
        """The channel gave up for good; the role decides what that means."""


def _push_key(event: str, payload: Any) -> str:
    # Exact duplicates are compared as canonical JSON: what would go on the wire.
    return json.dumps([event, payload], sort_keys=True, separators=(",", ":"), allow_nan=False)


class PhoenixChannel:
    """Join one topic and stay joined; see the module docstring for the rules."""

    def __init__(
        self,
        topic: str,
        join_payload: Any,
        *,
        rng: Callable[[], float],
        reconnect_backoff: BackoffPolicy | None = None,
        initial_backoff: BackoffPolicy = INITIAL_CONNECT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        join_timeout: float = JOIN_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_buffered: int = MAX_BUFFERED_MESSAGES,
        max_unanswered_heartbeats: int = MAX_UNANSWERED_HEARTBEATS,
    ) -> None:
        self.topic = topic
        self.join_payload = join_payload
        self._rng = rng
        self._reconnect_policy = (
            reconnect_backoff if reconnect_backoff is not None else reconnect_policy(None)
        )
        self._initial_policy = initial_backoff
        self._heartbeat_interval = heartbeat_interval
        self._join_timeout = join_timeout
        self._connect_timeout = connect_timeout
        self._max_buffered = max_buffered
        self._max_unanswered = max_unanswered_heartbeats

        self.state = ChannelState.IDLE
        #: Number of the current (or last) connection attempt; 0 before the first.
        self.attempt = 0
        self.fatal: ChannelFatal | None = None
        self._effects: list[Effect] = []
        self._queue: deque[tuple[str, Any, str]] = deque()
        self._backoff: Backoff | None = None
        self._was_connected = False
        self._reconnect_at: float | None = None
        self._connect_deadline: float | None = None
        # Per connection:
        self._next_ref = 0
        self._join_ref: int | None = None
        self._join_deadline: float | None = None
        self._next_heartbeat: float | None = None
        self._heartbeats: set[int] = set()
        self._pushes: OrderedDict[int, str] = OrderedDict()

    # -- outputs ---------------------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        """Everything the inputs so far asked for, in order; the list is then emptied."""
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float | None:
        """When :meth:`timer_fired` must next be called, or ``None``."""
        if self.state is ChannelState.WAITING:
            return self._reconnect_at
        if self.state is ChannelState.CONNECTING:
            return self._connect_deadline
        if self.state is ChannelState.JOINING:
            assert self._join_deadline is not None and self._next_heartbeat is not None
            return min(self._join_deadline, self._next_heartbeat)
        if self.state is ChannelState.JOINED:
            return self._next_heartbeat
        return None

    @property
    def joined(self) -> bool:
        return self.state is ChannelState.JOINED

    @property
    def queued(self) -> int:
        """Pushes waiting for the join."""
        return len(self._queue)

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Dial at once (a stopped channel may be started again)."""
        if self.state in (ChannelState.IDLE, ChannelState.STOPPED):
            self._open(now)

    def stop(self) -> None:
        """Close any connection and stay closed; queued pushes are discarded."""
        if self.state in (ChannelState.FATAL, ChannelState.STOPPED):
            return
        self._drop_connection(graceful=True)
        self.state = ChannelState.STOPPED
        self._queue.clear()
        self._backoff = None

    def connected(self, attempt: int, now: float) -> None:
        """The WebSocket upgrade of ``attempt`` succeeded: join."""
        if attempt != self.attempt or self.state is not ChannelState.CONNECTING:
            return
        self._backoff = None
        self._was_connected = True
        self._connect_deadline = None
        self._next_ref = 0
        self._heartbeats.clear()
        self._pushes.clear()
        self._join(now)

    def connection_failed(self, attempt: int, failure: ConnectFailure, now: float) -> None:
        """The dial of ``attempt`` failed, or its connection was lost."""
        if attempt != self.attempt or self.state not in _HAS_CONNECTION:
            return
        if failure.status == 401:
            detail = f": {failure.detail}" if failure.detail else ""
            if failure.code in _TOKEN_CODES:
                self._fail(
                    INVALID_TOKEN,
                    f"the portal rejected the token (401 {failure.code}{detail}); "
                    "a new token is needed",
                )
            else:
                self._fail(
                    AUTHENTICATION_FAILED,
                    f"the portal refused authentication (401{detail})",
                )
            return
        self._hiccup(failure.description, now, failure.retry_after)

    def text_received(self, attempt: int, text: str | bytes, now: float) -> None:
        """One text frame arrived on the connection of ``attempt``."""
        if attempt != self.attempt or self.state not in _CONNECTED:
            return
        try:
            msg = PhoenixMessage.decode(text)
        except PhoenixDecodeError as e:
            self._notice(f"ignoring a malformed frame from the portal: {e}")
            return
        event = msg.event
        if event == phoenix.PHX_REPLY:
            self._on_reply(msg, now)
        elif event == phoenix.PHX_CLOSE:
            self._hiccup(f"the portal closed the {msg.topic!r} channel", now)
        elif event == phoenix.PHX_ERROR:
            # connlib ignores it: the portal drains the socket on an abnormal exit anyway.
            self._notice(f"the portal reported an error on the {msg.topic!r} channel")
        elif msg.topic != self.topic:
            self._notice(f"ignoring {event!r} on topic {msg.topic!r} (joined {self.topic!r})")
        elif event == phoenix.EVENT_DISCONNECT and _reason(msg.payload) == TOKEN_EXPIRED:
            self._fail(INVALID_TOKEN, "the portal ended the session: token expired")
        else:
            self._effects.append(MessageReceived(event, msg.payload))

    def timer_fired(self, now: float) -> None:
        """Time has reached (or passed) :meth:`next_deadline`."""
        state = self.state
        if state is ChannelState.WAITING:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._open(now)
        elif state is ChannelState.CONNECTING:
            if self._connect_deadline is not None and now >= self._connect_deadline:
                self._hiccup(
                    f"connecting to the portal timed out after {self._connect_timeout:g} s",
                    now,
                )
        elif state in _CONNECTED:
            if (
                state is ChannelState.JOINING
                and self._join_deadline is not None
                and now >= self._join_deadline
            ):
                self._hiccup(f"joining {self.topic!r} timed out", now)
                return
            if self._next_heartbeat is not None and now >= self._next_heartbeat:
                self._send_heartbeat(now)

    def send(self, event: str, payload: Any, now: float) -> bool:
        """Push ``event`` on the joined topic now, or queue it until joined.

        Returns ``False`` if the push was refused (queue full, channel stopped
        or fatal).  An exact duplicate of a queued push is dropped, and counts
        as accepted (#11440).  A payload that is not JSON raises ``TypeError``
        or ``ValueError``: that is a bug in the caller.
        """
        key = _push_key(event, payload)
        if self.state in (ChannelState.FATAL, ChannelState.STOPPED):
            return False
        if self.state is ChannelState.JOINED:
            self._send_push(event, payload, now)
            return True
        if any(queued_key == key for _e, _p, queued_key in self._queue):
            self._notice(f"not queueing an exact duplicate of {event!r}")
            return True
        if len(self._queue) >= self._max_buffered:
            self._notice(f"dropping {event!r}: {self._max_buffered} pushes already wait")
            return False
        self._queue.append((event, payload, key))
        return True

    # -- internals -------------------------------------------------------------------------

    def _notice(self, text: str) -> None:
        self._effects.append(Notice(text))

    def _take_ref(self) -> int:
        ref = self._next_ref
        self._next_ref += 1
        return ref

    def _frame(self, msg: PhoenixMessage) -> None:
        self._effects.append(SendFrame(self.attempt, msg.encode()))

    def _open(self, now: float) -> None:
        self.attempt += 1
        self.state = ChannelState.CONNECTING
        self._reconnect_at = None
        self._connect_deadline = now + self._connect_timeout
        self._effects.append(OpenConnection(self.attempt))

    def _join(self, now: float) -> None:
        self.state = ChannelState.JOINING
        self._join_ref = self._take_ref()
        self._frame(phoenix.phx_join(self.topic, self.join_payload, self._join_ref))
        self._join_deadline = now + self._join_timeout
        self._next_heartbeat = now + self._heartbeat_interval

    def _send_push(self, event: str, payload: Any, now: float) -> None:
        ref = self._take_ref()
        self._frame(phoenix.push(self.topic, event, payload, ref))
        self._pushes[ref] = event
        while len(self._pushes) > _MAX_TRACKED_PUSHES:
            self._pushes.popitem(last=False)
        self._next_heartbeat = now + self._heartbeat_interval

    def _send_heartbeat(self, now: float) -> None:
        ref = self._take_ref()
        self._heartbeats.add(ref)
        self._frame(phoenix.heartbeat(ref))
        self._next_heartbeat = now + self._heartbeat_interval
        if len(self._heartbeats) > self._max_unanswered:
            self._hiccup(f"{len(self._heartbeats)} heartbeats in a row went unanswered", now)

    def _on_reply(self, msg: PhoenixMessage, now: float) -> None:
        try:
            reply = msg.reply()
        except PhoenixDecodeError as e:
            self._notice(f"ignoring a malformed reply from the portal: {e}")
            return
        ref = msg.ref
        if ref is None:
            self._notice("discarding a reply without a ref")
            return
        if self.state is ChannelState.JOINING and ref == self._join_ref:
            if reply.ok:
                self._on_joined(reply, now)
            else:
                self._fail(
                    LOGIN_FAILED,
                    f"the portal refused to join {self.topic!r}: {reply.reason or 'no reason'}",
                )
            return
        if isinstance(ref, int) and ref in self._heartbeats:
            self._heartbeats.discard(ref)
            return
        event = self._pushes.pop(ref, None) if isinstance(ref, int) else None
        if event is None or reply.ok:
            return
        if reply.reason == UNMATCHED_TOPIC:
            # The portal lost our channel (e.g. after a node restart): join again.
            self._notice(f"the portal no longer knows {self.topic!r}; joining again")
            self._join(now)
        else:
            self._notice(f"the portal refused {event!r}: {reply.reason or 'no reason'}")

    def _on_joined(self, reply: phoenix.Reply, now: float) -> None:
        self.state = ChannelState.JOINED
        self._join_ref = None
        self._join_deadline = None
        self._effects.append(Joined(reply.response))
        queued, self._queue = self._queue, deque()
        for event, payload, _key in queued:
            self._send_push(event, payload, now)

    def _drop_connection(self, graceful: bool) -> None:
        if self.state in _HAS_CONNECTION:
            self._effects.append(CloseConnection(self.attempt, graceful))
        self.state = ChannelState.WAITING
        self._connect_deadline = None
        self._join_ref = None
        self._join_deadline = None
        self._next_heartbeat = None
        self._heartbeats.clear()
        self._pushes.clear()

    def _hiccup(self, reason: str, now: float, retry_after: float | None = None) -> None:
        self._drop_connection(graceful=False)
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            if self._backoff is None:
                policy = self._reconnect_policy if self._was_connected else self._initial_policy
                self._backoff = policy.start(now)
            next_delay = self._backoff.next_delay(now, self._rng)
            if next_delay is None:
                elapsed = now - self._backoff.started_at
                self._fail(
                    MAX_RETRIES_REACHED,
                    f"gave up reaching the portal after {elapsed:.0f} s; last error: {reason}",
                )
                return
            delay = next_delay
        self._reconnect_at = now + delay
        self._effects.append(Disconnected(reason, delay))

    def _fail(self, kind: str, message: str) -> None:
        self._drop_connection(graceful=True)
        self.state = ChannelState.FATAL
        self._reconnect_at = None
        self._queue.clear()
        self.fatal = ChannelFatal(kind, message)
        self._effects.append(Fatal(self.fatal))


def _reason(payload: Any) -> str | None:
    if isinstance(payload, dict):
        reason = payload.get("reason")
        if isinstance(reason, str):
            return reason
    return None
