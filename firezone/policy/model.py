"""The plain values the policy engine evaluates (REFERENCE.md 2.1, 2.2, 7).

These are immutable and hashable so the engine can cache compiled conditions
and callers can keep them in sets.  Construction only checks shapes and
normalises representations (tuples, ip objects, timestamps); the rules on
*contents* live in ``conditions`` (condition values) and ``filters``
(resource addresses and filters), which the portal calls on user input.

Times are unix seconds (``float``); aware ``datetime`` values are accepted
wherever an instant is taken and converted with :func:`to_timestamp`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from firezone.policy.geo import normalize_country

__all__ = [
    "ACTOR_TYPES",
    "IP_STACKS",
    "OPERATORS_BY_PROPERTY",
    "PROPERTIES",
    "PROTOCOLS",
    "RESOURCE_TYPES",
    "ActorType",
    "Condition",
    "Filter",
    "FilterProtocol",
    "Instant",
    "IpAddress",
    "IpStack",
    "Policy",
    "PortRange",
    "Resource",
    "ResourceType",
    "Subject",
    "to_timestamp",
]

ActorType = Literal["user", "admin", "service_account"]
ResourceType = Literal["cidr", "ip", "dns", "internet"]
IpStack = Literal["ipv4_only", "ipv6_only", "dual"]
FilterProtocol = Literal["tcp", "udp", "icmp"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Instant = float | int | datetime

ACTOR_TYPES: frozenset[str] = frozenset({"user", "admin", "service_account"})
RESOURCE_TYPES: frozenset[str] = frozenset({"cidr", "ip", "dns", "internet"})
IP_STACKS: frozenset[str] = frozenset({"ipv4_only", "ipv6_only", "dual"})
PROTOCOLS: frozenset[str] = frozenset({"tcp", "udp", "icmp"})

#: The condition properties and the operators each one accepts (REFERENCE 2.2).
OPERATORS_BY_PROPERTY: dict[str, frozenset[str]] = {
    "remote_ip_location_region": frozenset({"is_in", "is_not_in"}),
    "remote_ip": frozenset({"is_in_cidr", "is_not_in_cidr"}),
    "auth_provider_id": frozenset({"is_in", "is_not_in"}),
    "current_utc_datetime": frozenset({"is_in_day_of_week_time_ranges"}),
    "client_verified": frozenset({"is"}),
}
PROPERTIES: frozenset[str] = frozenset(OPERATORS_BY_PROPERTY)


def to_timestamp(value: Instant) -> float:
    """Unix seconds from a number or an aware datetime (naive ones are refused)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass an aware datetime or unix seconds")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected unix seconds or an aware datetime, got {value!r}")
    return float(value)


def _ip_or_none(value: object) -> IpAddress | None:
    if value is None:
        return None
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if isinstance(value, str):
        return ipaddress.ip_address(value.strip())
    raise TypeError(f"expected an IP address, got {value!r}")


@dataclass(frozen=True)
class Condition:
    """``{property, operator, values[]}`` as stored on a policy.

    Build from user input with ``conditions.parse_condition``, which validates
    and normalises; a directly built Condition with bad values evaluates as
    failing (default deny), it never raises during evaluation.
    """

    property: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        values = tuple(self.values)
        if not all(isinstance(v, str) for v in values):
            raise TypeError("condition values must be strings")
        object.__setattr__(self, "values", values)

    def to_dict(self) -> dict[str, object]:
        return {"property": self.property, "operator": self.operator, "values": list(self.values)}


@dataclass(frozen=True)
class Policy:
    """Grants the members of ``group_id`` access to ``resource_id`` while conditions pass."""

    id: str
    group_id: str
    resource_id: str
    conditions: tuple[Condition, ...] = ()
    disabled: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))


@dataclass(frozen=True)
class Subject:
    """The client asking for access: its actor, groups and session facts.

    ``group_ids`` are the actor's explicit memberships; the engine adds the
    managed "Everyone" group itself for users and admins (never for service
    accounts) when the caller names it.  ``remote_country`` is an ISO 3166
    alpha-2 code (any case) or None when unknown; anything else counts as
    unknown, and then location conditions fail.
    ``token_expires_at`` caps every authorization (unix seconds, None = never).
    """

    actor_id: str
    actor_type: ActorType
    group_ids: frozenset[str] = frozenset()
    remote_ip: IpAddress | None = None
    remote_country: str | None = None
    auth_provider_id: str | None = None
    client_verified: bool = False
    token_expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.actor_type not in ACTOR_TYPES:
            raise ValueError(
                f"actor_type must be one of {sorted(ACTOR_TYPES)}, got {self.actor_type!r}"
            )
        object.__setattr__(self, "group_ids", frozenset(self.group_ids))
        object.__setattr__(self, "remote_ip", _ip_or_none(self.remote_ip))
        object.__setattr__(self, "remote_country", normalize_country(self.remote_country))
        if self.token_expires_at is not None:
            object.__setattr__(self, "token_expires_at", to_timestamp(self.token_expires_at))


class PortRange(NamedTuple):
    """An inclusive port range; a single port has ``start == end``."""

    start: int
    end: int

    def text(self) -> str:
        """``"80"`` or ``"8000-8080"``, the stored form."""
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@dataclass(frozen=True)
class Filter:
    """Allowed traffic to a resource: a protocol and, for tcp/udp, port ranges.

    No ranges means every port of that protocol.
    """

    protocol: FilterProtocol
    ports: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(PortRange(*p) for p in self.ports))

    def to_dict(self) -> dict[str, object]:
        return {"protocol": self.protocol, "ports": [p.text() for p in self.ports]}


@dataclass(frozen=True)
class Resource:
    """Something behind a site's gateways: a CIDR, one IP, a DNS pattern or the Internet.

    ``address`` is None only for ``internet``; ``ip_stack`` is set only for
    ``dns``.  A resource without ``site_id`` cannot be connected to.
    """

    id: str
    type: ResourceType
    address: str | None = None
    address_description: str | None = None
    ip_stack: IpStack | None = None
    filters: tuple[Filter, ...] = ()
    site_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.type not in RESOURCE_TYPES:
            raise ValueError(
                f"resource type must be one of {sorted(RESOURCE_TYPES)}, got {self.type!r}"
            )
        if self.ip_stack is not None and self.ip_stack not in IP_STACKS:
            raise ValueError(f"ip_stack must be one of {sorted(IP_STACKS)}, got {self.ip_stack!r}")
        object.__setattr__(self, "filters", tuple(self.filters))
