"""The portal channel as a Twisted service: Autobahn does the WebSocket, the machine decides.

:class:`PortalChannelService` owns a :class:`~firezone.control.channel.PhoenixChannel`
and performs its effects: it dials (``HostnameEndpoint``, TLS for ``wss``), writes
frames, closes connections, keeps one timer at the machine's next deadline and
hands joins, pushes, disconnects and fatal errors to the role's observer.

Autobahn reports a refused upgrade only as an unclean close with the status in
a log string, so :class:`PortalClientProtocol` reads a non-101 response itself
(status, headers and the problem-details body) before letting Autobahn fail
the handshake.  Autobahn's own timers are switched off: they run on the global
reactor, and the machine already owns every timeout (connect 15 s, join 5 s,
heartbeats).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import parseHttpHeader
from autobahn.websocket.types import ConnectingRequest
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from firezone.control.backoff import BackoffPolicy
from firezone.control.channel import (
    ChannelFatal,
    ChannelObserver,
    ChannelState,
    CloseConnection,
    ConnectFailure,
    Disconnected,
    Effect,
    Fatal,
    Joined,
    MessageReceived,
    Notice,
    OpenConnection,
    PhoenixChannel,
    SendFrame,
)
from firezone.control.login import PortalAddress, authorization_header, portal_address
from firezone.control.rejection import failure_from_response
from firezone.wire.phoenix import MAX_FRAME_BYTES

__all__ = [
    "TCP_CONNECT_TIMEOUT",
    "EndpointFactory",
    "PortalChannelService",
    "PortalClientProtocol",
    "default_endpoint",
]

_log = Logger()

#: connlib's TCP connect budget; the whole dial (TCP+TLS+upgrade) has 15 s in the machine.
TCP_CONNECT_TIMEOUT = 5.0
#: How long a graceful close may take before the TCP connection is dropped.
CLOSE_GRACE = 1.0
_MAX_REJECTION_BODY = 64 * 1024

Params = Mapping[str, str | int | None]
EndpointFactory = Callable[[Any, PortalAddress], IStreamClientEndpoint]


def default_endpoint(reactor: Any, address: PortalAddress) -> IStreamClientEndpoint:
    """TCP to ``host:port`` (any resolved address), wrapped in TLS for ``wss``.

    The certificate is checked against the host name with the platform's trust
    store (``SSL_CERT_FILE`` points it elsewhere).
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=TCP_CONNECT_TIMEOUT
    )
    if address.secure:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


@dataclass
class _Rejection:
    status: int
    reason_phrase: str
    headers: dict[str, str]
    body_start: int


class PortalClientProtocol(WebSocketClientProtocol):
    """One connection attempt; every event goes to the service tagged with ``attempt``."""

    attempt: int
    channel: PortalChannelService

    def __init__(self) -> None:
        super().__init__()
        self.opened = False
        #: Fires once the TCP connection is gone.
        self.lost: Deferred[None] = Deferred()
        self._rejection: _Rejection | None = None
        self._reported = False

    # Autobahn hooks

    def onConnecting(self, transport_details: Any) -> ConnectingRequest | None:
        host = self.factory.host
        if ":" not in host:
            return None
        # An IPv6 literal needs brackets in the Host header; Autobahn writes host:port.
        return ConnectingRequest(
            host=f"[{host}]",
            port=self.factory.port,
            resource=self.factory.resource,
            headers=self.factory.headers,
            useragent=self.factory.useragent,
        )

    def processHandshake(self) -> None:
        if self._rejection is None:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return super().processHandshake()
            status_line, headers, _count = parseHttpHeader(self.data[: end + 4])
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) == 101:
                return super().processHandshake()
            reason_phrase = parts[2] if len(parts) > 2 else ""
            self._rejection = _Rejection(int(parts[1]), reason_phrase, headers, end + 4)
        rejection = self._rejection
        body = self.data[rejection.body_start :]
        complete = _complete_body(rejection.headers, body)
        if complete is None and len(body) < _MAX_REJECTION_BODY:
            return None  # the rest of the body is still on its way
        self._report_rejection(complete if complete is not None else body)
        self.failHandshake(f"WebSocket connection upgrade failed [{rejection.status}]")
        return None

    def onOpen(self) -> None:
        self.opened = True
        try:
            self.channel._opened(self)
        except Exception:
            _log.failure("portal channel: handling the open connection failed")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self.channel._frame_received(self, payload, isBinary)
        except Exception:
            _log.failure("portal channel: handling a frame failed")

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        result = super().onCloseFrame(code, reasonRaw)
        reason = reasonRaw.decode("utf-8", "replace") if reasonRaw else ""
        self._report(f"the portal closed the WebSocket (code {code}{', ' if reason else ''}"
                     f"{reason})")
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        what = "connection to the portal closed" if wasClean else "connection to the portal lost"
        self._report(f"{what}: {reason}" if reason else what)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._rejection is not None and not self._reported:
            # No length announced: the body ends with the connection.
            body = self.data[self._rejection.body_start :]
            complete = _complete_body(self._rejection.headers, body)
            self._report_rejection(complete if complete is not None else body)
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    # helpers

    def abort(self) -> None:
        """Drop the TCP connection now (no-op if already closed)."""
        self.dropConnection(abort=True)

    def _report_rejection(self, body: bytes) -> None:
        if self._reported or self._rejection is None:
            return
        self._reported = True
        rejection = self._rejection
        try:
            self.channel._rejected(
                self,
                rejection.status,
                rejection.reason_phrase,
                rejection.headers,
                body[:_MAX_REJECTION_BODY],
            )
        except Exception:
            _log.failure("portal channel: handling the refused upgrade failed")

    def _report(self, description: str) -> None:
        if self._reported:
            return
        self._reported = True
        try:
            self.channel._lost(self, ConnectFailure(description))
        except Exception:
            _log.failure("portal channel: handling the lost connection failed")


def _complete_body(headers: Mapping[str, str], body: bytes) -> bytes | None:
    """The whole body if it has arrived, per Content-Length or chunked coding; else ``None``."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(body)
    length = headers.get("content-length")
    if length is None:
        return None
    try:
        n = int(length)
    except ValueError:
        return body
    return body[:n] if len(body) >= n else None


def _dechunk(body: bytes) -> bytes | None:
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(body[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return body  # not chunked after all; hand over what there is
        if size == 0:
            return bytes(out)
        start = eol + 2
        if len(body) < start + size + 2:
            return None
        out += body[start : start + size]
        pos = start + size + 2


class _PortalClientFactory(WebSocketClientFactory):
    protocol = PortalClientProtocol
    noisy = False

    def __init__(
        self,
        channel: PortalChannelService,
        attempt: int,
        address: PortalAddress,
        headers: dict[str, str],
        useragent: str,
        reactor: Any,
        max_message_size: int,
    ) -> None:
        super().__init__(url=address.url, useragent=useragent, headers=headers, reactor=reactor)
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
        )
        self._channel = channel
        self._attempt = attempt

    def buildProtocol(self, addr: Any) -> PortalClientProtocol:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, PortalClientProtocol)
        proto.attempt = self._attempt
        proto.channel = self._channel
        self._channel._built(proto)
        return proto


class PortalChannelService(Service):
    """Join the portal as one role and stay joined while the service runs.

    :param url: the portal's ``ws://``/``wss://`` (or ``http(s)://``) base URL.
    :param path_kind: ``relay``, ``gateway`` or ``client``: which socket to dial.
    :param token: sent as ``X-Authorization: Bearer <token>``, whitespace removed.
    :param params: the query parameters (``None`` values left out), or a callable
        returning them, evaluated at every dial (a client's ``public_key`` may change).
    :param user_agent: see :func:`firezone.control.login.user_agent`.
    :param topic: the topic to join (``relay``, ``gateway``, ``client``).
    :param join_payload: the ``phx_join`` payload (``None`` for clients and gateways).
    :param observer: a :class:`~firezone.control.channel.ChannelObserver`.
    :param reconnect_backoff: the policy after the first successful connect.
    :param rng: ``() -> float`` in [0, 1) for the backoff jitter.
    :param endpoint_factory: ``(reactor, PortalAddress) -> IStreamClientEndpoint``;
        tests pass an in-memory one.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        path_kind: str,
        token: str,
        *,
        topic: str,
        join_payload: Any,
        observer: ChannelObserver,
        user_agent: str,
        params: Params | Callable[[], Params] | None = None,
        reconnect_backoff: BackoffPolicy | None = None,
        rng: Callable[[], float] | None = None,
        endpoint_factory: EndpointFactory = default_endpoint,
        max_message_size: int = MAX_FRAME_BYTES,
    ) -> None:
        self._reactor = reactor
        self._url = url
        self._path_kind = path_kind
        self._params = params if params is not None else {}
        portal_address(url, path_kind, {})  # refuse a bad URL or path kind now, not at dial time
        self._headers = {"X-Authorization": authorization_header(token)}
        self._user_agent = user_agent
        #: ``(reactor, PortalAddress) -> IStreamClientEndpoint``, used at every dial.
        self.endpoint_factory = endpoint_factory
        self._max_message_size = max_message_size
        self.observer = observer
        self.machine = PhoenixChannel(
            topic,
            join_payload,
            rng=rng if rng is not None else random.SystemRandom().random,
            reconnect_backoff=reconnect_backoff,
        )
        self._protocol: PortalClientProtocol | None = None
        self._dialing: tuple[int, Deferred[Any]] | None = None
        self._timer: IDelayedCall | None = None
        self._timer_deadline = 0.0
        self._pumping = False

    # -- public ----------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        return self.machine.state

    @property
    def joined(self) -> bool:
        return self.machine.joined

    @property
    def fatal(self) -> ChannelFatal | None:
        """Why the channel gave up, once it has."""
        return self.machine.fatal

    @property
    def address(self) -> PortalAddress:
        """Where the next dial goes (URL with the current query parameters)."""
        return portal_address(self._url, self._path_kind, self._current_params())

    def send(self, event: str, payload: Any) -> bool:
        """Push on the joined topic, or queue until joined; ``False`` if refused."""
        accepted = self.machine.send(event, payload, self._now())
        self._pump()
        return accepted

    def startService(self) -> None:
        super().startService()
        self.machine.start(self._now())
        self._pump()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        proto = self._protocol
        self.machine.stop()
        self._pump()
        if proto is not None and not proto.lost.called:
            return proto.lost
        return None

    # -- machine effects -------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._reactor.seconds())

    def _pump(self) -> None:
        """Perform the machine's effects; re-entrant calls leave the work to the outer loop."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while effects := self.machine.take_effects():
                for effect in effects:
                    self._perform(effect)
        finally:
            self._pumping = False
        self._reschedule()

    def _perform(self, effect: Effect) -> None:
        if isinstance(effect, SendFrame):
            proto = self._protocol
            if proto is not None and proto.attempt == effect.attempt and proto.opened:
                proto.sendMessage(effect.text.encode("utf-8"), isBinary=False)
        elif isinstance(effect, OpenConnection):
            self._dial(effect.attempt)
        elif isinstance(effect, CloseConnection):
            self._close(effect.attempt, effect.graceful)
        elif isinstance(effect, Joined):
            _log.info("joined {topic!r} on the portal", topic=self.machine.topic)
            self._notify("on_joined", effect.response)
        elif isinstance(effect, MessageReceived):
            self._notify("on_message", effect.event, effect.payload)
        elif isinstance(effect, Disconnected):
            _log.warn(
                "portal connection: {reason}; retrying in {delay:.1f} s",
                reason=effect.reason,
                delay=effect.retry_in,
            )
            self._notify("on_disconnected", effect.reason)
        elif isinstance(effect, Fatal):
            self._notify("on_fatal", effect.error)
        elif isinstance(effect, Notice):
            _log.warn("portal channel: {text}", text=effect.text)

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self.observer, method)(*args)
        except Exception:
            _log.failure("portal channel observer {method} failed", method=method)

    def _reschedule(self) -> None:
        deadline = self.machine.next_deadline()
        timer = self._timer
        if timer is not None and timer.active() and deadline == self._timer_deadline:
            return
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer_deadline = deadline
            self._timer = self._reactor.callLater(
                max(0.0, deadline - self._now()), self._timer_fired
            )

    def _timer_fired(self) -> None:
        self._timer = None
        # callLater may land a hair before the deadline in floating point.
        self.machine.timer_fired(max(self._now(), self._timer_deadline))
        self._pump()

    def _current_params(self) -> Params:
        params = self._params
        return params() if callable(params) else params

    def _dial(self, attempt: int) -> None:
        try:
            address = self.address
            factory = _PortalClientFactory(
                self,
                attempt,
                address,
                self._headers,
                self._user_agent,
                self._reactor,
                self._max_message_size,
            )
            d = self.endpoint_factory(self._reactor, address).connect(factory)
        except Exception as e:
            _log.failure("portal channel: could not start a connection")
            failure = ConnectFailure(f"cannot dial: {e}")
            self.machine.connection_failed(attempt, failure, self._now())
            return
        self._dialing = (attempt, d)
        d.addCallbacks(
            self._dialed, self._dial_failed, callbackArgs=(attempt,), errbackArgs=(attempt,)
        )

    def _dialed(self, proto: Any, attempt: int) -> None:
        if self._dialing is not None and self._dialing[0] == attempt:
            self._dialing = None
        if isinstance(proto, PortalClientProtocol) and proto is not self._protocol:
            proto.abort()  # the attempt was given up while the TCP connection was being made

    def _dial_failed(self, failure: Failure, attempt: int) -> None:
        if self._dialing is not None and self._dialing[0] == attempt:
            self._dialing = None
        if failure.check(CancelledError):
            return  # we gave up on it ourselves
        self.machine.connection_failed(
            attempt,
            ConnectFailure(f"cannot connect to the portal: {failure.getErrorMessage()}"),
            self._now(),
        )
        self._pump()

    def _close(self, attempt: int, graceful: bool) -> None:
        proto = self._protocol
        if proto is not None and proto.attempt == attempt:
            self._protocol = None
            if graceful and proto.opened:
                proto.sendClose(code=1000)
                timeout = self._reactor.callLater(CLOSE_GRACE, proto.abort)
                proto.lost.addBoth(lambda _: timeout.cancel() if timeout.active() else None)
            else:
                proto.abort()
        if self._dialing is not None and self._dialing[0] == attempt:
            _attempt, d = self._dialing
            self._dialing = None
            d.cancel()

    # -- protocol callbacks ----------------------------------------------------------------

    def _built(self, proto: PortalClientProtocol) -> None:
        if proto.attempt == self.machine.attempt and self.machine.state is ChannelState.CONNECTING:
            self._protocol = proto

    def _opened(self, proto: PortalClientProtocol) -> None:
        if proto is not self._protocol:
            proto.abort()
            return
        self.machine.connected(proto.attempt, self._now())
        self._pump()

    def _frame_received(self, proto: PortalClientProtocol, payload: bytes, binary: bool) -> None:
        if proto is not self._protocol:
            return
        if binary:
            _log.warn("portal channel: ignoring a binary frame")
            return
        self.machine.text_received(proto.attempt, payload, self._now())
        self._pump()

    def _rejected(
        self,
        proto: PortalClientProtocol,
        status: int,
        reason_phrase: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        failure = failure_from_response(status, reason_phrase, headers, body, self._now())
        self._lost(proto, failure)

    def _lost(self, proto: PortalClientProtocol, failure: ConnectFailure) -> None:
        # The machine answers with CloseConnection, which drops what is left of the TCP
        # connection (after a Close frame from the portal it may still be open).
        self.machine.connection_failed(proto.attempt, failure, self._now())
        self._pump()
        if proto is self._protocol:
            self._protocol = None
