"""What a connected client may reach, from the store's rows and the policy engine.

A client's channel calls :func:`load_client_access` for an authorization
request; a store change or the minute tick reads the whole account once
(:func:`load_account_snapshot`) and derives every connected client's snapshot
from it (:meth:`AccountSnapshot.client_access`).  Either way the channel asks the
snapshot pure questions: which resources are connectable now
(:meth:`ClientAccess.connectable`), may this one be authorized
(:meth:`ClientAccess.decide`).  Rows become the engine's values here:
store ``Policy``/``Resource`` records to :mod:`firezone.policy.model`, the actor
and device to a :class:`~firezone.policy.model.Subject`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from firezone.policy.conditions import InvalidCondition
from firezone.policy.engine import Decision, Denied, authorize, connectable_resources
from firezone.policy.errors import InvalidFilter
from firezone.policy.filters import parse_filters
from firezone.policy.model import ActorType, Condition, IpAddress, Subject
from firezone.policy.model import Policy as PolicyModel
from firezone.policy.model import Resource as ResourceModel
from firezone.policy.versions import adapt_resource_for_version
from firezone.portal.store.interface import IPortalStore
from firezone.portal.store.records import (
    Account,
    Actor,
    Device,
    Policy,
    PolicyGrant,
    Resource,
    Token,
)

__all__ = [
    "AccountSnapshot",
    "ClientAccess",
    "build_client_access",
    "load_account_snapshot",
    "load_client_access",
    "policy_model",
    "resource_model",
    "subject_for",
]

_ACTOR_TYPES: dict[str, ActorType] = {
    "account_user": "user",
    "account_admin_user": "admin",
    "service_account": "service_account",
}


def policy_model(grant_policy: Policy) -> PolicyModel | None:
    """A store policy as the engine's value; None if its stored conditions are unreadable."""
    try:
        conditions = tuple(
            Condition(c["property"], c["operator"], tuple(c.get("values") or ()))
            for c in grant_policy.conditions
        )
    except (KeyError, TypeError, InvalidCondition):
        return None
    return PolicyModel(
        id=grant_policy.id,
        group_id=grant_policy.group_id,
        resource_id=grant_policy.resource_id,
        conditions=conditions,
        disabled=grant_policy.disabled,
    )


def resource_model(resource: Resource) -> ResourceModel | None:
    """A store resource as the engine's value; None if its stored filters are unreadable."""
    try:
        filters = parse_filters(resource.filters or ())
    except (InvalidFilter, TypeError, ValueError):
        return None
    ip_stack = resource.ip_stack if resource.type == "dns" else None
    return ResourceModel(
        id=resource.id,
        type=resource.type,  # type: ignore[arg-type]
        address=resource.address,
        address_description=resource.address_description,
        ip_stack=ip_stack,  # type: ignore[arg-type]
        filters=filters,
        site_id=resource.site_id,
        name=resource.name,
    )


def _ip(text: str | None) -> IpAddress | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def subject_for(
    actor: Actor,
    grants: list[PolicyGrant],
    device: Device,
    token: Token,
    remote_country: str | None,
) -> Subject:
    """The engine's subject: the groups are those of the actor's applicable policies
    (``list_policies_for_actor`` already resolved Everyone and disabled actors)."""
    return Subject(
        actor_id=actor.id,
        actor_type=_ACTOR_TYPES.get(actor.type, "service_account"),
        group_ids=frozenset(g.policy.group_id for g in grants),
        remote_ip=_ip(device.last_seen_remote_ip),
        remote_country=remote_country,
        auth_provider_id=token.auth_provider_id,
        client_verified=device.verified,
        token_expires_at=token.expires_at,
    )


@dataclass
class ClientAccess:
    """One consistent read of everything that decides a client's access."""

    account: Account
    actor: Actor
    device: Device
    subject: Subject
    policies: list[PolicyModel]
    membership_by_policy: dict[str, str | None]
    resources: dict[str, ResourceModel]
    site_names: dict[str, str]
    client_version: str | None = None
    _usable: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._usable = {
            rid for rid, r in self.resources.items()
            if r.site_id is not None
            and adapt_resource_for_version(r, self.client_version) is not None
        }

    def connectable(self, now: float) -> list[ResourceModel]:
        """The resources to list in ``init`` now, adapted to the client's version, by id."""
        ids = connectable_resources(
            self.subject, self.policies, self.resources, now, client_version=self.client_version
        )
        out = []
        for rid in sorted(ids):
            adapted = adapt_resource_for_version(self.resources[rid], self.client_version)
            if adapted is not None:
                out.append(adapted)
        return out

    def decide(self, resource_id: str, now: float) -> Decision:
        """``not_found`` for ids this client cannot see at all (unknown, another account's,
        no site, unusable at its version); otherwise the engine's decision."""
        if resource_id not in self._usable:
            return Denied("not_found")
        return authorize(self.subject, resource_id, self.policies, now)

    def resource(self, resource_id: str) -> ResourceModel | None:
        return self.resources.get(resource_id)


def _models_of(resources: list[Resource]) -> dict[str, ResourceModel]:
    models = {}
    for r in resources:
        model = resource_model(r)
        if model is not None:
            models[r.id] = model
    return models


def build_client_access(
    account: Account,
    actor: Actor,
    device: Device,
    grants: list[PolicyGrant],
    resources: dict[str, ResourceModel],
    site_names: dict[str, str],
    token: Token,
    remote_country: str | None,
    client_version: str | None,
    policy_models: dict[str, PolicyModel | None] | None = None,
) -> ClientAccess:
    """The snapshot of one client from already-read rows (``policy_models`` caches
    :func:`policy_model` across the clients of one account)."""
    policies = []
    membership_by_policy: dict[str, str | None] = {}
    for grant in grants:
        if policy_models is None:
            model = policy_model(grant.policy)
        elif grant.policy.id in policy_models:
            model = policy_models[grant.policy.id]
        else:
            model = policy_models[grant.policy.id] = policy_model(grant.policy)
        if model is not None:
            policies.append(model)
            membership_by_policy[model.id] = grant.membership_id
    return ClientAccess(
        account=account,
        actor=actor,
        device=device,
        subject=subject_for(actor, grants, device, token, remote_country),
        policies=policies,
        membership_by_policy=membership_by_policy,
        resources=resources,
        site_names=site_names,
        client_version=client_version,
    )


async def load_client_access(
    store: IPortalStore,
    account_id: str,
    actor_id: str,
    device_id: str,
    token: Token,
    remote_country: str | None,
    client_version: str | None,
) -> ClientAccess:
    """Read the account, actor, device, applicable policies, resources and site names."""
    account = await store.get_account(account_id)
    actor = await store.get_actor(account_id, actor_id)
    device = await store.get_device(account_id, device_id)
    grants = await store.list_policies_for_actor(account_id, actor_id)
    resources = await store.list_resources(account_id)
    sites = await store.list_sites(account_id)
    return build_client_access(
        account, actor, device, grants, _models_of(resources),
        {s.id: s.name for s in sites}, token, remote_country, client_version,
    )


@dataclass
class AccountSnapshot:
    """One read of the rows that decide every client's access in an account.

    A change (or the minute tick) reads this once for the whole account instead
    of once per connected client; :meth:`grants` answers what
    ``list_policies_for_actor`` would, from the same rows.
    """

    account: Account
    actors: dict[str, Actor]
    #: actor id -> group id -> membership id (explicit memberships only).
    memberships: dict[str, dict[str, str]]
    managed_group_ids: frozenset[str]
    #: Enabled policies in the store's order (inserted_at, id).
    policies: list[Policy]
    resources: dict[str, ResourceModel]
    site_names: dict[str, str]
    _grants: dict[str, list[PolicyGrant]] = field(default_factory=dict)
    _policy_models: dict[str, PolicyModel | None] = field(default_factory=dict)

    def grants(self, actor_id: str) -> list[PolicyGrant]:
        """Mirrors ``list_policies_for_actor``: explicit grants in policy order, then
        the managed (Everyone) group's for users; none for a disabled actor."""
        cached = self._grants.get(actor_id)
        if cached is not None:
            return cached
        actor = self.actors[actor_id]
        out: list[PolicyGrant] = []
        if not actor.disabled:
            mine = self.memberships.get(actor_id, {})
            out = [PolicyGrant(p, mine[p.group_id]) for p in self.policies if p.group_id in mine]
            if actor.is_user:
                out.extend(PolicyGrant(p, None) for p in self.policies
                           if p.group_id in self.managed_group_ids)
        self._grants[actor_id] = out
        return out

    def client_access(
        self,
        actor_id: str,
        device: Device,
        token: Token,
        remote_country: str | None,
        client_version: str | None,
    ) -> ClientAccess | None:
        """One client's snapshot; None if its actor is gone."""
        actor = self.actors.get(actor_id)
        if actor is None:
            return None
        return build_client_access(
            self.account, actor, device, self.grants(actor_id), self.resources,
            self.site_names, token, remote_country, client_version, self._policy_models,
        )


async def load_account_snapshot(store: IPortalStore, account_id: str) -> AccountSnapshot:
    """Read an account's actors, memberships, groups, policies, resources and sites."""
    account = await store.get_account(account_id)
    actors = await store.list_actors(account_id)
    groups = await store.list_groups(account_id)
    memberships = await store.list_memberships(account_id)
    policies = await store.list_policies(account_id)
    resources = await store.list_resources(account_id)
    sites = await store.list_sites(account_id)
    by_actor: dict[str, dict[str, str]] = {}
    for m in memberships:
        by_actor.setdefault(m.actor_id, {})[m.group_id] = m.id
    return AccountSnapshot(
        account=account,
        actors={a.id: a for a in actors},
        memberships=by_actor,
        managed_group_ids=frozenset(g.id for g in groups if g.managed),
        policies=[p for p in policies if not p.disabled],
        resources=_models_of(resources),
        site_names={s.id: s.name for s in sites},
    )
