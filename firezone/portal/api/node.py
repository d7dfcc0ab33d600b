"""One portal node's control-plane hub: registry, delivery, presence, change fan-out.

This is the Python counterpart of ``Portal.PG`` + Phoenix Presence + the
change consumer (REFERENCE 1.6):

* channels register under their device id (clients, gateways) or relay id and
  under their token id; :meth:`ApiNode.deliver` hands a message to the channel
  of a device, here or -- through the store's NOTIFY, see
  :mod:`firezone.portal.api.cluster` -- on whichever node holds it;
* gateways and relays are tracked in :class:`~firezone.portal.presence.Presence`
  and announced to the other nodes on every change and every heartbeat;
* the store's ``changes`` and ``token_deleted`` notifications are handed to the
  channels of the affected account or token, which recompute what they must
  (every node hears every change, so each only serves its own channels);
  clients' resources are recomputed per account by :attr:`ApiNode.fanout`
  (:mod:`firezone.portal.api.fanout`), reading the account once per change.

Time comes from the injected clock; the heartbeat and the minute tick are
driven by ``TimerService`` s of :mod:`firezone.portal.api.service` (or by tests).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from firezone.policy.geo import GeoResolver, Location
from firezone.policy.selection import select_relays
from firezone.portal.api import cluster
from firezone.portal.api.fanout import ClientFanout
from firezone.portal.api.refs import RefSigner
from firezone.portal.api.views import FlowLogsConfig
from firezone.portal.presence import GATEWAY, RELAY, Entry, GatewayEntry, Presence, RelayEntry
from firezone.portal.store.interface import IPortalStore
from firezone.portal.store.program import CHANGES, TOKEN_DELETED
from firezone.portal.tokens import Tokens

__all__ = ["ApiNode", "NodeConfig", "Registered"]

_log = Logger()


@dataclass(frozen=True)
class NodeConfig:
    """Timers and settings of the control-plane API (defaults are the reference's)."""

    flow_logs: FlowLogsConfig
    authorization_timeout: float = 15.0
    relay_presence_debounce: float = 1.0
    heartbeat_interval: float = 5.0
    presence_expiry: float = 15.0
    recompute_interval: float = 60.0
    #: The reference's per-account ``iceless`` feature flag; off, as there by default.
    iceless_enabled: bool = False


class Registered(Protocol):
    """What the node asks of a joined channel."""

    @property
    def key(self) -> str:
        """Device id (clients, gateways) or relay id."""

    @property
    def account_id(self) -> str | None: ...

    @property
    def token_id(self) -> str: ...

    def receive(self, msg: dict[str, Any]) -> None:
        """A delivered message (see the channel modules for the types)."""

    def on_change(self, op: str, table: str, ident: str) -> None:
        """A store change in the channel's account."""

    def on_token_deleted(self) -> None:
        """The channel's token is gone."""

    def relays_changed(self) -> None:
        """Relay presence changed somewhere."""

    def tick(self) -> None:
        """The minute timer."""


class ApiNode:
    def __init__(
        self,
        store: IPortalStore,
        tokens: Tokens,
        secret_key: bytes,
        clock: IReactorTime,
        config: NodeConfig,
        *,
        rng: random.Random | None = None,
        geo: GeoResolver | None = None,
        node_id: str | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.secret_key = secret_key
        self.clock = clock
        self.config = config
        self.rng = rng if rng is not None else random.SystemRandom()
        self.geo = geo if geo is not None else GeoResolver(country_headers=(), city_header=None,
                                                           coordinates_header=None)
        self.node_id = node_id or str(uuid.uuid4())
        self.refs = RefSigner(secret_key)
        self.presence = Presence(self.node_id, config.presence_expiry)
        self._channels: dict[str, Registered] = {}
        self._by_token: dict[str, set[Registered]] = defaultdict(set)
        self._by_account: dict[str, set[Registered]] = defaultdict(set)
        self._claims: dict[str, object] = {}
        self._listening = False
        self._notify_lock = DeferredLock()
        #: Clients' resource recomputes, one store read per account and change.
        self.fanout = ClientFanout(store, clock)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.listen(CHANGES, self._on_change)
        await self.store.listen(TOKEN_DELETED, self._on_token_deleted)
        await self.store.listen(cluster.CHANNEL, self._on_cluster)
        self._listening = True
        self.heartbeat()

    async def stop(self) -> None:
        for channel in list(self._channels.values()):
            closer = getattr(channel, "shutdown", None)
            if closer is not None:
                closer()
        if self._listening:
            self._listening = False
            self._notify(cluster.Bye(self.node_id).encode())
            # Let queued notifications (the goodbye last) leave before the store closes.
            await self._notify_lock.run(succeed, None)
            await self.store.unlisten(CHANGES, self._on_change)
            await self.store.unlisten(TOKEN_DELETED, self._on_token_deleted)
            await self.store.unlisten(cluster.CHANNEL, self._on_cluster)

    def now(self) -> float:
        return self.clock.seconds()

    def locate(self, ip: str | None) -> Location:
        if ip is None:
            return Location()
        try:
            return self.geo.locate(ip)
        except ValueError:
            return Location()

    # -- registry --------------------------------------------------------------------------
    def register(self, channel: Registered) -> None:
        previous = self._channels.get(channel.key)
        if previous is not None and previous is not channel:
            self._forget(previous)
        self._channels[channel.key] = channel
        self._by_token[channel.token_id].add(channel)
        if channel.account_id is not None:
            self._by_account[channel.account_id].add(channel)

    def unregister(self, channel: Registered) -> None:
        if self._channels.get(channel.key) is channel:
            del self._channels[channel.key]
        self._forget(channel)

    def _forget(self, channel: Registered) -> None:
        tokens = self._by_token.get(channel.token_id)
        if tokens is not None:
            tokens.discard(channel)
            if not tokens:
                del self._by_token[channel.token_id]
        if channel.account_id is not None:
            accounts = self._by_account.get(channel.account_id)
            if accounts is not None:
                accounts.discard(channel)
                if not accounts:
                    del self._by_account[channel.account_id]

    def local(self, key: str) -> Registered | None:
        return self._channels.get(key)

    def channels(self) -> list[Registered]:
        return list(self._channels.values())

    # -- gateway claims (409 "first wins") -------------------------------------------------
    def gateway_taken(self, gateway_id: str) -> bool:
        return gateway_id in self._claims or self.presence.is_online(GATEWAY, gateway_id)

    def claim_gateway(self, gateway_id: str, owner: object) -> bool:
        if self.gateway_taken(gateway_id):
            return False
        self._claims[gateway_id] = owner
        return True

    def release_gateway(self, gateway_id: str, owner: object) -> None:
        if self._claims.get(gateway_id) is owner:
            del self._claims[gateway_id]

    # -- presence -------------------------------------------------------------------------
    def online(self, entry: Entry) -> None:
        self.presence.add_local(entry)
        self._notify(cluster.Announce(self.node_id, (entry,)).encode())
        if entry.kind == RELAY:
            self._relays_changed()

    def offline(self, entry: Entry) -> None:
        if self.presence.remove_local(entry.kind, entry.id, entry):
            self._notify(cluster.Leave(self.node_id, entry.kind, entry.id).encode())
            if entry.kind == RELAY:
                self._relays_changed()

    def online_gateways(self, account_id: str) -> list[GatewayEntry]:
        return self.presence.gateways(account_id)

    def select_relays(self, location: Location) -> list[RelayEntry]:
        """Two relays: the nearest to ``location``, or two at random (REFERENCE 2.4)."""
        point = location.coordinates
        return select_relays(self.presence.relays(), rng=self.rng, location=point, count=2)

    def heartbeat(self) -> None:
        """Expire silent nodes' entries and re-announce ours (``TimerService`` callable)."""
        try:
            if RELAY in self.presence.expire(self.now()):
                self._relays_changed()
            for announce in cluster.chunk_announce(self.node_id, self.presence.local_entries()):
                self._notify(announce.encode())
        except Exception:
            _log.failure("presence heartbeat failed")

    def tick(self) -> None:
        """The minute timer: time-window policies, cache pruning (``TimerService`` callable)."""
        for channel in self.channels():
            try:
                channel.tick()
            except Exception:
                _log.failure("minute tick of {key} failed", key=channel.key)

    def _relays_changed(self) -> None:
        for channel in self.channels():
            channel.relays_changed()

    # -- delivery ----------------------------------------------------------------------------
    def deliver(self, device_id: str, msg: dict[str, Any]) -> None:
        """Hand ``msg`` to the channel of ``device_id``, here or on another node."""
        channel = self._channels.get(device_id)
        if channel is not None:
            channel.receive(msg)
            return
        payload = cluster.Deliver(self.node_id, device_id, msg).encode()
        if len(payload.encode("utf-8")) > cluster.MAX_PAYLOAD:
            _log.warn("dropping a {type} for {to}: too large for NOTIFY",
                      type=msg.get("type"), to=device_id)
            return
        self._notify(payload)

    def _notify(self, payload: str) -> None:
        """Send on the cluster channel, strictly in order: a gateway's
        ``authorization_created`` must reach the client's node before the ICE candidates
        that follow it, and the store's pool would otherwise race them."""
        d: Deferred[None] = self._notify_lock.run(self.store.notify, cluster.CHANNEL, payload)
        d.addErrback(lambda f: _log.failure("cluster notification failed", f))

    def _on_cluster(self, payload: str) -> None:
        try:
            message = cluster.decode(payload)
        except cluster.ClusterMessageError as e:
            _log.warn("ignoring a malformed cluster message: {error}", error=e)
            return
        if message.sender == self.node_id:
            return
        if isinstance(message, cluster.Deliver):
            channel = self._channels.get(message.to)
            if channel is not None:
                channel.receive(message.msg)
            return
        if isinstance(message, cluster.Announce):
            changed = self.presence.announce(message.sender, list(message.entries), self.now())
        elif isinstance(message, cluster.Leave):
            gone = self.presence.leave(message.sender, message.entry_kind, message.id)
            changed = {message.entry_kind} if gone else set()
        else:
            changed = self.presence.forget_node(message.sender)
        if RELAY in changed:
            self._relays_changed()

    # -- store notifications ------------------------------------------------------------------
    def _on_change(self, payload: str) -> None:
        try:
            change = json.loads(payload)
            op, table, account_id, ident = (
                change["op"], change["table"], change["account_id"], change["id"]
            )
        except (ValueError, KeyError, TypeError):
            _log.warn("ignoring a malformed change notification {payload!r}", payload=payload)
            return
        for channel in list(self._by_account.get(account_id, ())):
            channel.on_change(op, table, ident)

    def _on_token_deleted(self, payload: str) -> None:
        # (The store also announces the deletion on ``changes``, table ``tokens``, which
        # is how gateways learn that authorization rows granted under it are gone.)
        for channel in list(self._by_token.get(payload.strip(), ())):
            channel.on_token_deleted()
