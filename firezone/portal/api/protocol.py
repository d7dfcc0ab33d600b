"""Autobahn adapter: one WebSocket connection carrying one :class:`PhoenixSocket`.

The upgrade was already checked by :mod:`firezone.portal.api.gate`; the
factory hands the admitted :class:`ConnectContext` to the protocol it builds
for that request.  The protocol only translates: text frames in, text frames
out, a server-side idle timeout (37 s, 41 s for relays: any frame resets it)
and close.  Frames above 1 MiB are refused by Autobahn itself (close 1009).
Autobahn's own timers run on the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from firezone.portal.api.client import ClientChannel
from firezone.portal.api.connect import ROLE_CLIENT, ROLE_GATEWAY
from firezone.portal.api.context import ConnectContext
from firezone.portal.api.gateway import GatewayChannel
from firezone.portal.api.node import ApiNode
from firezone.portal.api.relay import RelayChannel
from firezone.portal.api.socket import Channel, PhoenixSocket
from firezone.wire.phoenix import MAX_FRAME_BYTES

__all__ = ["ApiServerFactory", "ApiServerProtocol", "make_channel"]

_log = Logger()


def make_channel(node: ApiNode, ctx: ConnectContext) -> Callable[[PhoenixSocket], Channel]:
    def build(socket: PhoenixSocket) -> Channel:
        if ctx.endpoint.role == ROLE_CLIENT:
            return ClientChannel(node, ctx, socket)
        if ctx.endpoint.role == ROLE_GATEWAY:
            return GatewayChannel(node, ctx, socket)
        return RelayChannel(node, ctx, socket)

    return build


class _ClockTimer:
    """Autobahn's batched-timer interface on an injected clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._clock.callLater(delay, func, *args, **kw)


class ApiServerProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    factory: ApiServerFactory
    context: ConnectContext | None = None
    phoenix: PhoenixSocket | None = None
    _idle: IDelayedCall | None = None
    _released = False

    def onConnect(self, request: ConnectionRequest) -> None:
        if self.context is None:
            # Only the gate hands connections over; anything else is a wiring bug.
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "not admitted")
        return None

    def onOpen(self) -> None:
        ctx = self.context
        assert ctx is not None
        self.phoenix = PhoenixSocket(
            ctx.endpoint,
            make_channel(self.factory.node, ctx),
            send=self._send_text,
            close=self._close,
            peer=ctx.remote_ip,
        )
        self._arm_idle()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._arm_idle()
        if self.phoenix is None:
            return
        if isBinary:
            _log.warn("ignoring a binary frame from {peer}", peer=self.phoenix.peer)
            return
        self.phoenix.text_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._disarm()
        if self.phoenix is not None:
            self.phoenix.connection_lost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self._disarm()
            if self.phoenix is not None:
                self.phoenix.connection_lost()
            self._release()

    def _release(self) -> None:
        ctx = self.context
        if ctx is not None and ctx.device is not None and not self._released:
            self._released = True
            self.factory.node.release_gateway(ctx.device.id, ctx)

    def _send_text(self, text: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def _close(self) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code=1000)
        elif self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.dropConnection(abort=True)

    def _arm_idle(self) -> None:
        self._disarm()
        ctx = self.context
        if ctx is not None:
            self._idle = self.factory.node.clock.callLater(
                ctx.endpoint.idle_timeout, self._idle_timeout
            )

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_timeout(self) -> None:
        self._idle = None
        peer = self.phoenix.peer if self.phoenix is not None else "?"
        _log.info("closing the idle socket of {peer}", peer=peer)
        self._close()


class ApiServerFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = ApiServerProtocol  # type: ignore[assignment]

    def __init__(self, node: ApiNode, reactor: Any) -> None:
        super().__init__(reactor=reactor, server="firezone-portal")
        self.node = node
        self._batched_timer = _ClockTimer(node.clock)
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME_BYTES,
            maxMessagePayloadSize=MAX_FRAME_BYTES,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=1,
            autoPingInterval=0,
            # Send a close frame (1009 for oversized frames) before dropping.
            failByDrop=False,
        )
        #: The context of the connection being handed over right now (see ``gate``).
        self.incoming: ConnectContext | None = None

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = super().buildProtocol(addr)
        protocol.context, self.incoming = self.incoming, None
        return protocol
