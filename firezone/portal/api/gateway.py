"""The ``gateway`` channel (REFERENCE 1.4; reference ``gateway/channel/shared.ex``).

After the join the gateway gets ``init`` (interface, two relays whose
credentials expire 2038-01-01, both masquerade flags, and the authorizations
it still holds) and appears in presence, so clients' requests can choose it.
Then:

* ``create_authorization`` (v1: ``authorize_flow``) is pushed for every
  authorization a client's channel delivers; its ``ref`` is signed here and
  carries what the client needs, so the gateway's ``authorization_created``
  (v1: ``flow_authorized``) can be verified and forwarded (reply ok, or error
  ``invalid_ref``);
* ``broadcast_ice_candidates`` / ``broadcast_invalidated_ice_candidates`` go to
  the named clients; clients' candidates arrive as ``ice_candidates`` /
  ``invalidate_ice_candidates``;
* ``reject_access`` revokes a (client, resource) pair: when its authorization
  row is deleted, when the resource's address, type or ip_stack changes or it
  leaves the site, and when a store change means the row is no longer backed
  by an enabled policy whose conditions pass for that client (the row is then
  deleted too); ``resource_updated`` when only the filters changed;
* a deleted token gets ``disconnect`` ``token_expired``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from firezone.policy.engine import Allowed, authorize
from firezone.policy.model import Resource as ResourceModel
from firezone.policy.versions import adapt_resource_for_version
from firezone.portal.api.access import policy_model, resource_model, subject_for
from firezone.portal.api.base import Coalesced, RelayFeed, read_candidates, read_uuid_list
from firezone.portal.api.context import ConnectContext
from firezone.portal.api.node import ApiNode
from firezone.portal.api.refs import InvalidRef
from firezone.portal.api.socket import UNKNOWN_MESSAGE, PhoenixSocket, Reply, error, ok
from firezone.portal.api.views import (
    GATEWAY_RELAY_EXPIRES_AT,
    gateway_interface,
    gateway_resource_view,
)
from firezone.portal.presence import GatewayEntry
from firezone.portal.store.errors import NotFound
from firezone.portal.store.records import Account, PolicyAuthorization, PolicyGrant

__all__ = ["GatewayChannel"]

_log = Logger()

#: Store tables whose changes can withdraw an authorization the gateway holds.
REVALIDATE_TABLES = frozenset(
    {"policies", "memberships", "groups", "actors", "sites", "auth_providers", "resources"}
)


@dataclass(frozen=True)
class _Names:
    create: str
    created: str


_V1 = _Names("authorize_flow", "flow_authorized")
_V2 = _Names("create_authorization", "authorization_created")


@dataclass(frozen=True)
class _Authorization:
    client_id: str
    resource_id: str
    expires_at: float | None
    token_id: str | None = None


class GatewayChannel:
    def __init__(self, node: ApiNode, ctx: ConnectContext, socket: PhoenixSocket) -> None:
        assert ctx.device is not None and ctx.account is not None
        self.node = node
        self.ctx = ctx
        self.socket = socket
        self.device = ctx.device
        self.account: Account = ctx.account
        self.token = ctx.token
        self.version = ctx.user_agent.version
        self.names = _V1 if ctx.endpoint.version == 1 else _V2
        self.entry = GatewayEntry(
            id=self.device.id, account_id=self.device.account_id, site_id=self.device.site_id,
            version=self.version, lat=ctx.location.lat, lon=ctx.location.lon,
        )
        self.authorizations: dict[str, _Authorization] = {}
        self.site_resources: dict[str, ResourceModel] = {}
        self.iceless_capable = False
        self._left = False
        self._changed_resources: set[str] = set()
        self._resources_job = Coalesced(node.clock, self._check_resources, "resource check")
        self._revalidate_job = Coalesced(node.clock, self._revalidate, "authorization check")
        self.relays = RelayFeed(
            clock=node.clock,
            debounce=node.config.relay_presence_debounce,
            relays=node.presence.relays,
            select=node.select_relays,
            location=ctx.location,
            public_key=self.device.public_key,
            expires_at=lambda: GATEWAY_RELAY_EXPIRES_AT,
            push=socket.push,
        )

    # -- identity -----------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.device.id

    @property
    def account_id(self) -> str:
        return self.device.account_id

    @property
    def token_id(self) -> str:
        return self.token.id

    # -- lifecycle -------------------------------------------------------------------------------
    def join(self, payload: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(self._join())

    async def _join(self) -> None:
        store = self.node.store
        self.account = await store.get_account(self.account_id)
        now = self.node.now()
        for row in await store.list_policy_authorizations(self.account_id, self.device.id):
            if row.receiving_device_id != self.device.id:
                continue
            if row.expires_at is not None and row.expires_at <= now:
                continue
            self.authorizations[row.id] = _Authorization(
                row.initiating_device_id, row.resource_id, row.expires_at, row.token_id
            )
        if self.device.site_id is not None:
            for resource in await store.list_resources(self.account_id, self.device.site_id):
                model = resource_model(resource)
                if model is not None:
                    self.site_resources[model.id] = model

    def after_join(self) -> None:
        self.node.register(self)
        self.node.online(self.entry)
        self._push_init()

    def _push_init(self) -> None:
        self.socket.push("init", {
            "flow_logs": self.node.config.flow_logs.to_json(),
            "authorizations": [
                {
                    "client_id": a.client_id,
                    "resource_id": a.resource_id,
                    "expires_at": int(a.expires_at) if a.expires_at is not None else None,
                }
                for a in self.authorizations.values()
            ],
            "account_slug": self.account.slug,
            "interface": gateway_interface(self.device.ipv4, self.device.ipv6),
            "relays": self.relays.initial(),
            # Unused by gateways, but required by their parser.
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
        })

    def leave(self) -> None:
        if self._left:
            return
        self._left = True
        if self.node.local(self.key) is self:
            self.node.offline(self.entry)
        self.node.unregister(self)
        self._resources_job.cancel()
        self._revalidate_job.cancel()
        self.relays.cancel()

    def shutdown(self) -> None:
        self.socket.stop()

    # -- from the node ----------------------------------------------------------------------------
    def relays_changed(self) -> None:
        self.relays.changed()

    def tick(self) -> None:
        now = self.node.now()
        for auth_id, auth in list(self.authorizations.items()):
            if auth.expires_at is not None and auth.expires_at <= now:
                del self.authorizations[auth_id]

    def on_token_deleted(self) -> None:
        self.socket.disconnect("token_expired")

    def on_change(self, op: str, table: str, ident: str) -> None:
        if self._left:
            return
        if table == "devices":
            if ident == self.device.id:
                if op == "delete":
                    self.socket.stop()
            elif any(a.client_id == ident for a in self.authorizations.values()):
                self._revalidate_job.request()
            return
        if table == "tokens":
            if op == "delete" and any(a.token_id == ident for a in self.authorizations.values()):
                self._revalidate_job.request()
            return
        if table == "policy_authorizations":
            if op == "delete" and ident in self.authorizations:
                self._reject(ident)
            return
        if table == "accounts" and ident == self.account_id:
            Deferred.fromCoroutine(self._account_changed()).addErrback(
                lambda f: _log.failure("reloading the account failed", f)
            )
            return
        if table == "resources":
            self._changed_resources.add(ident)
            self._resources_job.request()
        if table in REVALIDATE_TABLES and self.authorizations:
            self._revalidate_job.request()

    def receive(self, msg: dict[str, Any]) -> None:
        if msg.get("account_id") != self.account_id or self._left:
            return
        kind = msg.get("type")
        if kind in ("ice_candidates", "invalidate_ice_candidates"):
            self.socket.push(kind, {
                "client_id": msg.get("from"), "candidates": msg.get("candidates"),
            })
        elif kind == "create_authorization":
            self._create_authorization(msg)

    def _create_authorization(self, msg: dict[str, Any]) -> None:
        ice = list(msg.get("ice") or ["", "", "", ""])
        use_iceless = bool(
            self.node.config.iceless_enabled
            and self.iceless_capable
            and msg.get("initiator_iceless")
        )
        resource = msg.get("resource") or {}
        ref = self.node.refs.sign({
            "a": self.account_id,
            "gw": self.device.id,
            "c": msg.get("client_id"),
            "n": msg.get("conn"),
            "g": msg.get("generation"),
            "r": resource.get("id"),
            "psk": msg.get("psk"),
            "ice": ice,
            "il": use_iceless,
        })
        self.socket.push(self.names.create, {
            "ref": ref,
            "resource": resource,
            "gateway_ice_credentials": {"username": ice[2], "password": ice[3]},
            "client": msg.get("client"),
            "client_ice_credentials": {"username": ice[0], "password": ice[1]},
            "expires_at": msg.get("expires_at"),
            "subject": msg.get("subject"),
            "use_iceless": use_iceless,
            "flow_logs_ingest_token": msg.get("flow_logs_ingest_token"),
        })
        auth_id = msg.get("authorization_id")
        client_id = msg.get("client_id")
        resource_id = resource.get("id")
        expires = msg.get("expires_at")
        token_id = msg.get("token_id")
        if isinstance(auth_id, str) and isinstance(client_id, str) and isinstance(resource_id, str):
            self.authorizations[auth_id] = _Authorization(
                client_id, resource_id, float(expires) if isinstance(expires, int) else None,
                token_id if isinstance(token_id, str) else None,
            )

    # -- from the gateway --------------------------------------------------------------------------
    def handle_in(self, event: str, payload: Any) -> Reply | Deferred[Reply | None] | None:
        body = payload if isinstance(payload, dict) else None
        if event == self.names.created and body is not None and "ref" in body:
            return self._authorization_created(body["ref"])
        if event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
            client_ids = read_uuid_list(body.get("client_ids")) if body else None
            candidates = read_candidates(body.get("candidates")) if body else None
            if client_ids is None or candidates is None:
                return error(UNKNOWN_MESSAGE)
            kind = ("ice_candidates" if event == "broadcast_ice_candidates"
                    else "invalidate_ice_candidates")
            for client_id in client_ids:
                self.node.deliver(client_id, {
                    "type": kind, "account_id": self.account_id, "from": self.device.id,
                    "candidates": candidates,
                })
            return None
        if event == "set_snownet_capabilities" and body is not None:
            self.iceless_capable = body.get("iceless") is True
            return None
        if event == "no_relays":
            self.relays.reselect()
            return None
        _log.warn("unknown gateway message {event!r} from {peer}", event=event,
                  peer=self.socket.peer)
        return error(UNKNOWN_MESSAGE)

    def _authorization_created(self, signed: object) -> Reply:
        try:
            facts = self.node.refs.verify(signed)
        except InvalidRef:
            _log.warn("gateway {gateway} replied with an invalid ref", gateway=self.device.id)
            return error("invalid_ref")
        client_id = facts.get("c")
        if facts.get("gw") != self.device.id or facts.get("a") != self.account_id \
                or not isinstance(client_id, str):
            _log.warn("gateway {gateway} replied with another gateway's ref",
                      gateway=self.device.id)
            return error("invalid_ref")
        self.node.deliver(client_id, {
            "type": "authorization_created",
            "account_id": self.account_id,
            "conn": facts.get("n"),
            "generation": facts.get("g"),
            "resource_id": facts.get("r"),
            "site_id": self.device.site_id,
            "gateway_id": self.device.id,
            "gateway_public_key": self.device.public_key,
            "gateway_ipv4": self.device.ipv4,
            "gateway_ipv6": self.device.ipv6,
            "psk": facts.get("psk"),
            "ice": facts.get("ice"),
            "use_iceless": facts.get("il") is True,
        })
        return ok()

    # -- revocation --------------------------------------------------------------------------------
    def _reject(self, auth_id: str) -> None:
        """Drop a held authorization; tell the gateway unless it has expired anyway."""
        auth = self.authorizations.pop(auth_id, None)
        if auth is None:
            return
        if auth.expires_at is None or auth.expires_at > self.node.now():
            self.socket.push("reject_access", {
                "client_id": auth.client_id, "resource_id": auth.resource_id,
            })

    async def _delete_row(self, auth_id: str) -> None:
        try:
            await self.node.store.delete_policy_authorization(self.account_id, auth_id)
        except NotFound:
            pass

    async def _withdraw(self, auth_id: str) -> None:
        self._reject(auth_id)
        await self._delete_row(auth_id)

    async def _account_changed(self) -> None:
        account = await self.node.store.get_account(self.account_id)
        old_slug, self.account = self.account.slug, account
        if account.slug != old_slug and not self._left:
            self._push_init()

    def _check_resources(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check_resources_async())

    async def _check_resources_async(self) -> None:
        changed, self._changed_resources = self._changed_resources, set()
        for resource_id in sorted(changed):
            try:
                row = await self.node.store.get_resource(self.account_id, resource_id)
                model = resource_model(row)
            except NotFound:
                model = None
            if self._left:
                return
            old = self.site_resources.get(resource_id)
            if model is None or model.site_id != self.device.site_id:
                if old is not None:
                    del self.site_resources[resource_id]
                    await self._withdraw_resource(resource_id)
                continue
            self.site_resources[resource_id] = model
            if old is None:
                continue
            if (old.type, old.address, old.ip_stack) != (model.type, model.address, model.ip_stack):
                # The gateway cannot re-address a resource: clients must authorize again.
                await self._withdraw_resource(resource_id)
            elif old.filters != model.filters:
                adapted = adapt_resource_for_version(model, self.version)
                if adapted is not None:
                    self.socket.push("resource_updated", gateway_resource_view(adapted))

    async def _withdraw_resource(self, resource_id: str) -> None:
        for auth_id in [i for i, a in self.authorizations.items() if a.resource_id == resource_id]:
            await self._withdraw(auth_id)

    def _revalidate(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._revalidate_async())

    async def _revalidate_async(self) -> None:
        """Withdraw every held authorization the store no longer backs."""
        if self._left or not self.authorizations:
            return
        store = self.node.store
        rows = {
            row.id: row
            for row in await store.list_policy_authorizations(self.account_id, self.device.id)
            if row.receiving_device_id == self.device.id
        }
        grants: dict[str, list[PolicyGrant]] = {}
        for auth_id in list(self.authorizations):
            if self._left:
                return
            row = rows.get(auth_id)
            if row is None:
                self._reject(auth_id)
            elif not await self._justified(row, grants):
                await self._withdraw(auth_id)

    async def _justified(
        self, row: PolicyAuthorization, grants: dict[str, list[PolicyGrant]]
    ) -> bool:
        store, account_id = self.node.store, self.account_id
        resource = self.site_resources.get(row.resource_id)
        if resource is None:
            return False
        try:
            policy = await store.get_policy(account_id, row.policy_id)
            client = await store.get_device(account_id, row.initiating_device_id)
            token = await store.get_token(account_id, row.token_id)
            if client.actor_id is None:
                return False
            actor = await store.get_actor(account_id, client.actor_id)
        except NotFound:
            return False
        if policy.disabled:
            return False
        if actor.id not in grants:
            grants[actor.id] = await store.list_policies_for_actor(account_id, actor.id)
        actor_grants = grants[actor.id]
        if not any(g.policy.id == policy.id for g in actor_grants):
            return False
        model = policy_model(policy)
        if model is None:
            return False
        country = self.node.locate(client.last_seen_remote_ip).country
        subject = subject_for(actor, actor_grants, client, token, country)
        decision = authorize(subject, row.resource_id, [model], self.node.now())
        return isinstance(decision, Allowed)
