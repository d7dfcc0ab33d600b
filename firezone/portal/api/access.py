"""What a connected client may reach, from the store's rows and the policy engine.

The channels call :func:`load_client_access` whenever something that could
change the answer happened (a store change, the minute tick) and then ask the
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
    "ClientAccess",
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
    policies = []
    membership_by_policy: dict[str, str | None] = {}
    for grant in grants:
        model = policy_model(grant.policy)
        if model is not None:
            policies.append(model)
            membership_by_policy[model.id] = grant.membership_id
    models = {}
    for r in resources:
        model_r = resource_model(r)
        if model_r is not None:
            models[r.id] = model_r
    return ClientAccess(
        account=account,
        actor=actor,
        device=device,
        subject=subject_for(actor, grants, device, token, remote_country),
        policies=policies,
        membership_by_policy=membership_by_policy,
        resources=models,
        site_names={s.id: s.name for s in sites},
        client_version=client_version,
    )
