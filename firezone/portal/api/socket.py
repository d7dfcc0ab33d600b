"""One Phoenix socket as the portal serves it: framing, join, heartbeat, replies (REFERENCE 1.2).

Transport-free: text in (:meth:`PhoenixSocket.text_received`), text out through
the ``send`` callable, ``close`` to drop the transport.  The socket owns at most
one channel (topic ``client``, ``gateway`` or ``relay``, fixed by the URL) and
answers like Phoenix does:

* ``heartbeat`` on topic ``phoenix`` -> ``phx_reply`` ok;
* ``phx_join`` on the socket's topic -> the channel's join, then ``phx_reply``
  ok and whatever the channel pushes after joining (``init``); frames for the
  topic that arrive while the join is under way wait for it;
* ``phx_join`` on any other topic, or anything on a topic not joined ->
  ``phx_reply`` error ``unmatched topic`` (connlib rejoins on that);
* ``phx_leave`` -> ``phx_reply`` ok and ``phx_close``;
* an event the channel does not know -> error ``unknown_message``;
* a frame that is not a Phoenix frame is logged and dropped (it has no ref to
  answer); a channel that fails unexpectedly drains the whole socket, so the
  component reconnects from scratch, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from firezone.portal.api.connect import Endpoint
from firezone.wire import phoenix
from firezone.wire.phoenix import PhoenixDecodeError, PhoenixMessage

__all__ = [
    "ERROR",
    "OK",
    "UNKNOWN_MESSAGE",
    "Channel",
    "JoinRefused",
    "PhoenixSocket",
    "Reply",
    "error",
    "ok",
]

_log = Logger()

Reply = tuple[str, Mapping[str, Any]]
OK = phoenix.STATUS_OK
ERROR = phoenix.STATUS_ERROR
UNMATCHED_TOPIC = "unmatched topic"
UNKNOWN_MESSAGE = "unknown_message"


def ok(response: Mapping[str, Any] | None = None) -> Reply:
    return (OK, dict(response or {}))


def error(reason: str) -> Reply:
    return (ERROR, {"reason": reason})


class JoinRefused(Exception):
    """The channel refuses the join; ``reason`` goes into the error reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel(Protocol):
    """What the socket needs of a channel (client, gateway or relay)."""

    def join(self, payload: Any) -> Deferred[None]:
        """Load what the channel needs; fail with :class:`JoinRefused` to refuse."""

    def after_join(self) -> None:
        """Joined and acknowledged: register and push ``init``."""

    def handle_in(self, event: str, payload: Any) -> Reply | Deferred[Reply | None] | None:
        """A pushed event; the result (if any) becomes the ``phx_reply``."""

    def leave(self) -> None:
        """The channel ends (left, closed, or the transport went away)."""


class PhoenixSocket:
    def __init__(
        self,
        endpoint: Endpoint,
        make_channel: Callable[[PhoenixSocket], Channel],
        send: Callable[[str], None],
        close: Callable[[], None],
        peer: str = "?",
    ) -> None:
        self.endpoint = endpoint
        self._make_channel = make_channel
        self._send = send
        self._close = close
        self.peer = peer
        self.channel: Channel | None = None
        self._joining: Channel | None = None
        self._waiting: list[PhoenixMessage] = []
        self.closed = False

    # -- output ----------------------------------------------------------------------
    def send(self, message: PhoenixMessage) -> None:
        if not self.closed:
            self._send(message.encode())

    def push(self, event: str, payload: Any) -> None:
        """A server push on the channel's topic (``ref`` null)."""
        self.send(phoenix.push(self.endpoint.topic, event, payload))

    def reply(self, topic: str, ref: phoenix.Ref | None, reply: Reply) -> None:
        status, response = reply
        self.send(phoenix.phx_reply(topic, ref, status, response))

    def close(self) -> None:
        """Drop the transport (the channel is told through :meth:`connection_lost`)."""
        if not self.closed:
            self._close()

    def stop(self) -> None:
        """End the channel from the server side: ``phx_close``, then drain the socket."""
        if self.channel is not None:
            self.send(phoenix.phx_close(self.endpoint.topic))
        self.close()

    def disconnect(self, reason: str) -> None:
        """Firezone's ``disconnect`` push (``token_expired``), then drain the socket."""
        self.send(phoenix.disconnect(self.endpoint.topic, reason))
        self.close()

    # -- input -------------------------------------------------------------------------
    def text_received(self, text: str | bytes) -> None:
        try:
            message = PhoenixMessage.decode(text)
        except PhoenixDecodeError as e:
            _log.warn("dropping a malformed frame from {peer}: {error}", peer=self.peer, error=e)
            return
        if self._joining is not None and message.topic == self.endpoint.topic:
            self._waiting.append(message)
            return
        self._dispatch(message)

    def connection_lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._waiting.clear()
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.leave()

    def _dispatch(self, message: PhoenixMessage) -> None:
        topic, event, ref = message.topic, message.event, message.ref
        if topic == phoenix.PHOENIX_TOPIC:
            if event == phoenix.HEARTBEAT:
                self.reply(topic, ref, ok())
            else:
                self.reply(topic, ref, error(UNMATCHED_TOPIC))
            return
        if event == phoenix.PHX_JOIN:
            if topic != self.endpoint.topic:
                self.reply(topic, ref, error(UNMATCHED_TOPIC))
                return
            self._join(message)
            return
        if self.channel is None or topic != self.endpoint.topic:
            self.reply(topic, ref, error(UNMATCHED_TOPIC))
            return
        if event == phoenix.PHX_LEAVE:
            self.reply(topic, ref, ok())
            self.send(phoenix.phx_close(topic))
            self._leave()
            return
        self._handle_in(message)

    def _leave(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.leave()

    def _join(self, message: PhoenixMessage) -> None:
        # A join on a joined topic replaces the channel, as Phoenix does.
        self._leave()
        channel = self._make_channel(self)
        self._joining = channel
        d = defer.maybeDeferred(channel.join, message.payload)

        def joined(_: object) -> None:
            self._joining = None
            if self.closed:
                channel.leave()
                return
            self.channel = channel
            self.reply(message.topic, message.ref, ok())
            channel.after_join()
            self._flush_waiting()

        def refused(failure: Failure) -> None:
            self._joining = None
            if failure.check(JoinRefused):
                reason = failure.value.reason  # type: ignore[union-attr]
                _log.warn("join refused for {peer}: {reason}", peer=self.peer, reason=reason)
                self.reply(message.topic, message.ref, error(reason))
                channel.leave()
                self._flush_waiting()
                return
            _log.failure("join failed for {peer}", failure, peer=self.peer)
            channel.leave()
            self.close()

        d.addCallbacks(joined, refused)

    def _flush_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for message in waiting:
            if self.closed:
                return
            self._dispatch(message)

    def _handle_in(self, message: PhoenixMessage) -> None:
        channel = self.channel
        assert channel is not None
        d = defer.maybeDeferred(channel.handle_in, message.event, message.payload)

        def answered(result: Reply | None) -> None:
            if result is not None:
                self.reply(message.topic, message.ref, result)

        def crashed(failure: Failure) -> None:
            _log.failure(
                "handling {event!r} from {peer} failed; draining the socket", failure,
                event=message.event, peer=self.peer,
            )
            self.close()

        d.addCallbacks(answered, crashed)
