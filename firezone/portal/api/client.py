"""The ``client`` channel (REFERENCE 1.3; reference ``client/channel/shared.ex``).

After the join the client gets ``init``: the resources it may connect to now,
two relays with TURN credentials, its interface and the flow-log settings.
Then:

* ``request_authorization`` (v1: ``create_flow``) runs the policy engine,
  picks a gateway, stores a ``policy_authorizations`` row and delivers
  ``create_authorization`` to the gateway's channel (on any node); the gateway's
  signed ``authorization_created`` comes back as ``authorization_created``
  (v1: ``flow_created``), or after 15 s ``authorization_creation_failed``
  (v1: ``flow_creation_failed``) with reason ``offline``.  Denials carry
  ``not_found``, ``forbidden`` (+ ``violated_properties``), ``offline`` or
  ``version_mismatch``;
* ICE candidates are forwarded to gateways (``new_gateway_ice_candidates``,
  ``invalidate_gateway_ice_candidates`` and the older ``broadcast_*`` forms)
  and from them (``ice_candidates``, ``invalidate_ice_candidates``);
* store changes and the minute timer recompute the resource list and push
  ``resource_deleted`` (a bare id, always first) and
  ``resource_created_or_updated``; account DNS changes push ``config_changed``;
* a deleted token gets ``disconnect`` ``token_expired``, as does the token's expiry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from firezone.credentials import ice_credentials, wireguard_psk
from firezone.policy.engine import Allowed, Denied
from firezone.policy.model import Resource as ResourceModel
from firezone.policy.selection import GatewayCandidate, NoGateway, select_gateway
from firezone.policy.versions import adapt_resource_for_version
from firezone.portal.api import ingest
from firezone.portal.api.access import AccountSnapshot, ClientAccess, load_client_access
from firezone.portal.api.base import (
    RelayFeed,
    read_candidates,
    read_uuid,
    read_uuid_list,
)
from firezone.portal.api.context import ConnectContext
from firezone.portal.api.node import ApiNode
from firezone.portal.api.socket import UNKNOWN_MESSAGE, PhoenixSocket, Reply, error, ok
from firezone.portal.api.views import (
    GATEWAY_RELAY_EXPIRES_AT,
    client_interface,
    client_resource_view,
    gateway_client_view,
    gateway_resource_view,
    subject_view,
)
from firezone.portal.store.errors import NotFound
from firezone.portal.store.records import Device

__all__ = ["ClientChannel"]

_log = Logger()

#: Store tables whose changes can change what a client may reach.
RECOMPUTE_TABLES = frozenset(
    {"resources", "policies", "memberships", "groups", "sites", "actors", "accounts",
     "auth_providers"}
)


@dataclass(frozen=True)
class _Names:
    request: str
    created: str
    failed: str


_V1 = _Names("create_flow", "flow_created", "flow_creation_failed")
_V2 = _Names("request_authorization", "authorization_created", "authorization_creation_failed")


@dataclass(frozen=True)
class _Refused:
    reason: str
    violated_properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Chosen:
    decision: Allowed
    resource: ResourceModel
    gateway: GatewayCandidate


@dataclass
class _Pending:
    generation: str
    timer: IDelayedCall
    initiator_token: str


class ClientChannel:
    def __init__(self, node: ApiNode, ctx: ConnectContext, socket: PhoenixSocket) -> None:
        assert ctx.device is not None and ctx.actor is not None
        self.actor_id = ctx.actor.id
        self.node = node
        self.ctx = ctx
        self.socket = socket
        self.device = ctx.device
        self.token = ctx.token
        self.names = _V1 if ctx.endpoint.version == 1 else _V2
        #: Identifies this connection in refs, so replies meant for a predecessor are ignored.
        self.conn = uuid.uuid4().hex
        self.access: ClientAccess | None = None
        self.resources: dict[str, dict[str, Any]] = {}
        self.interface: dict[str, Any] = {}
        self.pending: dict[str, _Pending] = {}
        self.iceless_capable = False
        self._left = False
        self._expiry: IDelayedCall | None = None
        self.relays = RelayFeed(
            clock=node.clock,
            debounce=node.config.relay_presence_debounce,
            relays=node.presence.relays,
            select=node.select_relays,
            location=ctx.location,
            public_key=self.device.public_key,
            expires_at=self._relay_expiry,
            push=socket.push,
        )

    # -- identity (for the node's registry) ---------------------------------------------
    @property
    def key(self) -> str:
        return self.device.id

    @property
    def account_id(self) -> str:
        return self.device.account_id

    @property
    def token_id(self) -> str:
        return self.token.id

    @property
    def _sites_key(self) -> str:
        return "sites" if self.ctx.user_agent.supports_sites_payload else "gateway_groups"

    def _relay_expiry(self) -> int:
        expires = self.token.expires_at
        return int(expires) if expires is not None else GATEWAY_RELAY_EXPIRES_AT

    # -- lifecycle ---------------------------------------------------------------------------
    def join(self, payload: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(self._join())

    async def _join(self) -> None:
        access = await self._load()
        self._adopt(access, self.node.now())

    def after_join(self) -> None:
        assert self.access is not None
        self.node.register(self)
        self.node.fanout.subscribe(self)
        self.socket.push("init", {
            "flow_logs": self.node.config.flow_logs.to_json(),
            "account_slug": self.access.account.slug,
            "actor_name": self.access.actor.name,
            "resources": list(self.resources.values()),
            "authorizations": [],
            "relays": self.relays.initial(),
            "interface": self.interface,
        })
        expires = self.token.expires_at
        if expires is not None:
            delay = max(0.0, expires - self.node.now())
            self._expiry = self.node.clock.callLater(delay, self._token_expired)

    def leave(self) -> None:
        if self._left:
            return
        self._left = True
        self.node.unregister(self)
        self.node.fanout.unsubscribe(self)
        self.relays.cancel()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        for pending in self.pending.values():
            if pending.timer.active():
                pending.timer.cancel()
        self.pending.clear()

    def shutdown(self) -> None:
        self.socket.stop()

    def _token_expired(self) -> None:
        self._expiry = None
        self.socket.disconnect("token_expired")

    # -- access --------------------------------------------------------------------------------
    async def _load(self) -> ClientAccess:
        return await load_client_access(
            self.node.store, self.account_id, self.actor_id, self.device.id, self.token,
            self.ctx.location.country, self.ctx.user_agent.version,
        )

    def _adopt(
        self, access: ClientAccess, now: float, views: dict[Any, dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Take a fresh snapshot; returns the previously rendered resources.

        ``views`` shares rendered resources between the clients of one recompute."""
        self.access = access
        self.device = access.device
        previous = self.resources
        site_key = self._sites_key
        version = self.ctx.user_agent.version
        resources = {}
        for r in access.connectable(now):
            key = (r.id, version, site_key)
            view = views.get(key) if views is not None else None
            if view is None:
                view = client_resource_view(
                    r, access.site_names.get(r.site_id or ""), sites_key=site_key
                )
                if views is not None:
                    views[key] = view
            resources[r.id] = view
        self.resources = resources
        self.interface = client_interface(
            self.device.ipv4, self.device.ipv6, access.account.config
        )
        return previous

    # -- account-level recompute (see :mod:`firezone.portal.api.fanout`) -------------------------
    def refresh(
        self, snapshot: AccountSnapshot, device: Device | None, now: float,
        views: dict[Any, dict[str, Any]],
    ) -> None:
        if self._left:
            return
        access = snapshot.client_access(
            self.actor_id, device if device is not None else self.device, self.token,
            self.ctx.location.country, self.ctx.user_agent.version,
        )
        if access is None:
            # The actor went away under us: make the client reconnect.
            self.socket.stop()
            return
        old_interface = self.interface
        previous = self._adopt(access, now, views)
        site = self._sites_key
        # connlib cannot move a resource between sites: such a move is a delete and a create.
        deleted = sorted(
            rid for rid, view in previous.items()
            if rid not in self.resources
            or view.get(site) != self.resources[rid].get(site)
        )
        for rid in deleted:
            self.socket.push("resource_deleted", rid)
        for rid in sorted(self.resources):
            if rid in deleted or previous.get(rid) != self.resources[rid]:
                self.socket.push("resource_created_or_updated", self.resources[rid])
        if old_interface != self.interface:
            self.socket.push("config_changed", {"interface": self.interface})

    def lost(self) -> None:
        """The device, actor or account went away: make the client reconnect."""
        if not self._left:
            self.socket.stop()

    # -- from the node ---------------------------------------------------------------------------
    def on_change(self, op: str, table: str, ident: str) -> None:
        if table == "devices":
            if ident != self.device.id:
                return
            if op == "delete":
                self.socket.stop()
                return
            self.node.fanout.request(self.account_id, self.device.id)
            return
        if table in RECOMPUTE_TABLES:
            self.node.fanout.request(self.account_id)

    def on_token_deleted(self) -> None:
        self.socket.disconnect("token_expired")

    def relays_changed(self) -> None:
        self.relays.changed()

    def tick(self) -> None:
        self.node.fanout.request(self.account_id)

    def receive(self, msg: dict[str, Any]) -> None:
        if msg.get("account_id") != self.account_id or self._left:
            return
        kind = msg.get("type")
        if kind in ("ice_candidates", "invalidate_ice_candidates"):
            self.socket.push(kind, {
                "gateway_id": msg.get("from"), "candidates": msg.get("candidates"),
            })
        elif kind in ("client_ice_candidates", "invalidate_client_ice_candidates"):
            self.socket.push(kind, {
                "client_id": msg.get("from"), "candidates": msg.get("candidates"),
            })
        elif kind == "authorization_created":
            self._authorization_created(msg)

    # -- from the client ---------------------------------------------------------------------------
    def handle_in(self, event: str, payload: Any) -> Reply | Deferred[Reply | None] | None:
        body = payload if isinstance(payload, dict) else None
        if event == self.names.request and body is not None and "resource_id" in body:
            return Deferred.fromCoroutine(self._request_authorization(body))
        if event in ("new_gateway_ice_candidates", "invalidate_gateway_ice_candidates"):
            gateway_id = read_uuid(body.get("gateway_id")) if body else None
            candidates = read_candidates(body.get("candidates")) if body else None
            if gateway_id is None or candidates is None:
                return error(UNKNOWN_MESSAGE)
            kind = "ice_candidates" if event.startswith("new_") else "invalidate_ice_candidates"
            self._to_gateways(kind, [gateway_id], candidates)
            return None
        if event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
            gateway_ids = read_uuid_list(body.get("gateway_ids")) if body else None
            candidates = read_candidates(body.get("candidates")) if body else None
            if gateway_ids is None or candidates is None:
                return error(UNKNOWN_MESSAGE)
            kind = ("ice_candidates" if event == "broadcast_ice_candidates"
                    else "invalidate_ice_candidates")
            self._to_gateways(kind, gateway_ids, candidates)
            return None
        if event in ("new_client_ice_candidates", "invalidate_client_ice_candidates"):
            client_id = read_uuid(body.get("client_id")) if body else None
            candidates = read_candidates(body.get("candidates")) if body else None
            if client_id is None or candidates is None:
                return error(UNKNOWN_MESSAGE)
            kind = ("client_ice_candidates" if event.startswith("new_")
                    else "invalidate_client_ice_candidates")
            self.node.deliver(client_id, {
                "type": kind, "account_id": self.account_id, "from": self.device.id,
                "candidates": candidates,
            })
            return None
        if event == "resolve_device_pool_domain":
            if body is None or not isinstance(body.get("resource_id"), str) \
                    or not isinstance(body.get("domain"), str):
                return error(UNKNOWN_MESSAGE)
            # This portal has no device-pool resources, so no name resolves.
            self.socket.push("device_pool_domain_resolution_failed", {
                "resource_id": body["resource_id"], "domain": body["domain"],
                "reason": "not_found",
            })
            return None
        if event == "set_snownet_capabilities" and body is not None:
            self.iceless_capable = body.get("iceless") is True
            return None
        if event == "no_relays":
            self.relays.reselect()
            return None
        if event == "prepare_connection" and body is not None and "resource_id" in body:
            return Deferred.fromCoroutine(self._prepare_connection(body))
        if event == "request_device_access":
            return None
        _log.warn("unknown client message {event!r} from {peer}", event=event,
                  peer=self.socket.peer)
        return error(UNKNOWN_MESSAGE)

    def _to_gateways(self, kind: str, gateway_ids: list[str], candidates: list[str]) -> None:
        for gateway_id in gateway_ids:
            self.node.deliver(gateway_id, {
                "type": kind, "account_id": self.account_id, "from": self.device.id,
                "candidates": candidates,
            })

    def _fail(self, resource_id: str, reason: str, violated: tuple[str, ...] = ()) -> None:
        payload: dict[str, Any] = {"resource_id": resource_id, "reason": reason}
        if reason == "forbidden":
            payload["violated_properties"] = list(violated)
        self.socket.push(self.names.failed, payload)

    async def _decide(
        self, resource_id: str, connected_gateway_ids: list[str]
    ) -> _Refused | _Chosen:
        """The policy decision and the gateway, or why there is none."""
        self.access = access = await self._load()
        now = self.node.now()
        decision = access.decide(resource_id, now)
        if isinstance(decision, Denied):
            return _Refused(decision.reason, decision.violated_properties)
        resource = access.resource(resource_id)
        assert resource is not None
        candidates = [
            GatewayCandidate(g.id, g.site_id, g.version, g.lat, g.lon)
            for g in self.node.online_gateways(self.account_id)
        ]
        choice = select_gateway(
            resource,
            candidates,
            rng=self.node.rng,
            client_version=self.ctx.user_agent.version,
            client_location=self.ctx.location.coordinates,
            connected_gateway_ids=connected_gateway_ids,
        )
        if isinstance(choice, NoGateway):
            return _Refused(choice.reason)
        return _Chosen(decision, resource, choice)

    async def _request_authorization(self, body: dict[str, Any]) -> None:
        raw_id = body.get("resource_id")
        resource_id = read_uuid(raw_id)
        if resource_id is None:
            self._fail(raw_id if isinstance(raw_id, str) else "", "not_found")
            return
        connected = read_uuid_list(body.get("connected_gateway_ids", [])) or []
        try:
            await self._authorize(resource_id, connected)
        except Exception:
            _log.failure("authorizing {resource} for {client} failed",
                         resource=resource_id, client=self.device.id)
            if not self._left:
                self._fail(resource_id, "offline")

    async def _authorize(self, resource_id: str, connected: list[str]) -> None:
        decided = await self._decide(resource_id, connected)
        if self._left:
            return
        if isinstance(decided, _Refused):
            self._fail(resource_id, decided.reason, decided.violated_properties)
            return
        decision, resource, choice = decided.decision, decided.resource, decided.gateway
        access = self.access
        assert access is not None
        store, account_id = self.node.store, self.account_id
        try:
            gateway = await store.get_device(account_id, choice.id)
        except NotFound:
            self._fail(resource_id, "offline")
            return
        client = self.device
        psk = wireguard_psk(
            client.psk_base, gateway.psk_base, client.id, gateway.id,
            client.public_key, gateway.public_key,
        )
        ice = ice_credentials(client.id, client.public_key, gateway.id, gateway.public_key)
        expires_at = decision.expires_at
        row = await store.create_policy_authorization(
            account_id,
            token_id=self.token.id,
            policy_id=decision.policy_id,
            initiating_device_id=client.id,
            receiving_device_id=gateway.id,
            resource_id=resource_id,
            membership_id=access.membership_by_policy.get(decision.policy_id),
            initiator_remote_ip=self.ctx.remote_ip,
            initiator_user_agent=self.ctx.user_agent.raw or None,
            receiver_remote_ip=gateway.last_seen_remote_ip,
            expires_at=expires_at,
        )
        if self._left:
            return
        now = self.node.now()
        ua = self.ctx.user_agent
        attribution = ingest.IngestAttribution(
            account_id=account_id,
            policy_authorization_id=row.id,
            policy_id=decision.policy_id,
            initiator_device_id=client.id,
            responder_device_id=gateway.id,
            uploads_enabled=self.node.config.flow_logs.uploads_enabled,
            resource_id=resource_id,
            resource_name=resource.name or resource.address or resource_id,
            resource_address=resource.address,
            initiator_actor_id=access.actor.id,
            initiator_actor_name=access.actor.name,
            initiator_actor_email=access.actor.email,
            initiator_auth_provider_id=self.token.auth_provider_id,
            initiator_client_version=ua.version,
            initiator_device_os_name=ua.os_name,
            initiator_device_os_version=ua.os_version,
        )
        key = ingest.ingest_signing_key(self.node.secret_key, account_id)
        initiator_token, responder_token = ingest.mint_pair(key, attribution, now, expires_at)
        generation = uuid.uuid4().hex
        previous = self.pending.pop(resource_id, None)
        if previous is not None and previous.timer.active():
            previous.timer.cancel()
        timer = self.node.clock.callLater(
            self.node.config.authorization_timeout, self._timed_out, resource_id, generation
        )
        self.pending[resource_id] = _Pending(generation, timer, initiator_token)
        for_gateway = adapt_resource_for_version(resource, choice.version) or resource
        self.node.deliver(gateway.id, {
            "type": "create_authorization",
            "account_id": account_id,
            "client_id": client.id,
            "conn": self.conn,
            "generation": generation,
            "authorization_id": row.id,
            "token_id": self.token.id,
            "resource": gateway_resource_view(for_gateway),
            "expires_at": int(expires_at) if expires_at is not None else None,
            "client": gateway_client_view(
                client_id=client.id, public_key=client.public_key, preshared_key=psk,
                ipv4=client.ipv4, ipv6=client.ipv6, version=ua.version,
                os_name=ua.os_name, os_version=ua.os_version,
                device_serial=self.ctx.params.device_serial if self.ctx.params else None,
                device_uuid=self.ctx.params.device_uuid if self.ctx.params else None,
                firebase_installation_id=(
                    self.ctx.params.firebase_installation_id if self.ctx.params else None),
                identifier_for_vendor=(
                    self.ctx.params.identifier_for_vendor if self.ctx.params else None),
            ),
            "subject": subject_view(
                actor_id=access.actor.id, actor_name=access.actor.name,
                actor_email=access.actor.email, auth_provider_id=self.token.auth_provider_id,
            ),
            "psk": psk,
            "ice": [ice.initiator_username, ice.initiator_password,
                    ice.receiver_username, ice.receiver_password],
            "initiator_iceless": self.iceless_capable,
            "flow_logs_ingest_token": responder_token,
        })

    def _timed_out(self, resource_id: str, generation: str) -> None:
        pending = self.pending.get(resource_id)
        if pending is None or pending.generation != generation:
            return
        del self.pending[resource_id]
        self._fail(resource_id, "offline")

    def _authorization_created(self, msg: dict[str, Any]) -> None:
        resource_id = msg.get("resource_id")
        if msg.get("conn") != self.conn or not isinstance(resource_id, str):
            return
        pending = self.pending.get(resource_id)
        if pending is None or pending.generation != msg.get("generation"):
            return
        del self.pending[resource_id]
        if pending.timer.active():
            pending.timer.cancel()
        ice = msg.get("ice") or ["", "", "", ""]
        site_key = "site_id" if self.ctx.user_agent.supports_sites_payload else "gateway_group_id"
        self.socket.push(self.names.created, {
            "resource_id": resource_id,
            site_key: msg.get("site_id"),
            "gateway_id": msg.get("gateway_id"),
            "gateway_public_key": msg.get("gateway_public_key"),
            "gateway_ipv4": msg.get("gateway_ipv4"),
            "gateway_ipv6": msg.get("gateway_ipv6"),
            "preshared_key": msg.get("psk"),
            "client_ice_credentials": {"username": ice[0], "password": ice[1]},
            "gateway_ice_credentials": {"username": ice[2], "password": ice[3]},
            "use_iceless": msg.get("use_iceless") is True,
            "flow_logs_ingest_token": pending.initiator_token,
        })

    async def _prepare_connection(self, body: dict[str, Any]) -> Reply:
        """DEPRECATED IN 1.4 (pre-1.4 clients): the gateway choice as a reply."""
        resource_id = read_uuid(body.get("resource_id"))
        if resource_id is None:
            return error("not_found")
        connected = read_uuid_list(body.get("connected_gateway_ids", [])) or []
        decided = await self._decide(resource_id, connected)
        if isinstance(decided, _Refused):
            response: dict[str, Any] = {"reason": decided.reason}
            if decided.reason == "forbidden":
                response["violated_properties"] = list(decided.violated_properties)
            return ("error", response)
        try:
            gateway = await self.node.store.get_device(self.account_id, decided.gateway.id)
        except NotFound:
            return error("offline")
        return ok({
            "resource_id": resource_id,
            "site_id": gateway.site_id,
            "gateway_id": gateway.id,
            "gateway_remote_ip": gateway.last_seen_remote_ip,
        })
