"""The ``relay`` channel (REFERENCE 1.5; reference ``relay/channel.ex``).

A relay joins with ``{"stamp_secret": "<hex>"}``, the secret its TURN
credentials are derived from; the portal answers ``init`` ``{}`` and keeps the
relay in presence, under an id derived from that secret, for as long as the
socket stays up.  Relays exist nowhere else: no row, no state after they go.
Everything else a relay sends is ``unknown_message``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from firezone.portal.api.context import ConnectContext
from firezone.portal.api.node import ApiNode
from firezone.portal.api.socket import UNKNOWN_MESSAGE, JoinRefused, PhoenixSocket, Reply, error
from firezone.portal.presence import RelayEntry, relay_id

__all__ = ["MAX_STAMP_SECRET", "RelayChannel"]

_log = Logger()

MAX_STAMP_SECRET = 256


class RelayChannel:
    def __init__(self, node: ApiNode, ctx: ConnectContext, socket: PhoenixSocket) -> None:
        assert ctx.relay is not None
        self.node = node
        self.ctx = ctx
        self.socket = socket
        self.token = ctx.token
        self.entry: RelayEntry | None = None
        self._left = False

    @property
    def key(self) -> str:
        assert self.entry is not None
        return self.entry.id

    @property
    def account_id(self) -> str | None:
        return None

    @property
    def token_id(self) -> str:
        return self.token.id

    def join(self, payload: Any) -> Deferred[None]:
        secret = payload.get("stamp_secret") if isinstance(payload, dict) else None
        if not isinstance(secret, str) or not 0 < len(secret) <= MAX_STAMP_SECRET:
            # The reference's join clause does not match: the channel crashes.
            return defer.fail(JoinRefused("join crashed"))
        params = self.ctx.relay
        assert params is not None
        location = self.node.locate(params.ipv4 or params.ipv6)
        self.entry = RelayEntry(
            id=relay_id(secret), stamp_secret=secret, ipv4=params.ipv4, ipv6=params.ipv6,
            port=params.port, lat=location.lat, lon=location.lon,
        )
        return defer.succeed(None)

    def after_join(self) -> None:
        assert self.entry is not None
        self.node.register(self)
        self.node.online(self.entry)
        self.socket.push("init", {})

    def leave(self) -> None:
        if self._left:
            return
        self._left = True
        if self.entry is None:
            return
        if self.node.local(self.entry.id) is self:
            self.node.offline(self.entry)
        self.node.unregister(self)

    def shutdown(self) -> None:
        self.socket.stop()

    def handle_in(self, event: str, payload: Any) -> Reply | None:
        _log.warn("unknown relay message {event!r} from {peer}", event=event,
                  peer=self.socket.peer)
        return error(UNKNOWN_MESSAGE)

    def receive(self, msg: dict[str, Any]) -> None:
        pass

    def on_change(self, op: str, table: str, ident: str) -> None:
        pass

    def on_token_deleted(self) -> None:
        self.socket.close()

    def relays_changed(self) -> None:
        pass

    def tick(self) -> None:
        pass
