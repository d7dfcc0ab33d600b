"""Rows as immutable values.

Every record a store returns is one of these frozen dataclasses, whatever the
backend: ids are UUID strings, times are unix seconds (``float``), JSON columns
are plain ``dict``/``list`` values and ``psk_base`` is ``bytes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

#: Client token lifetime when the auth provider does not set one (REFERENCE 6.1).
DEFAULT_CLIENT_SESSION_LIFETIME = 7 * 24 * 3600

ACTOR_TYPES = ("account_user", "account_admin_user", "service_account")
USER_ACTOR_TYPES = ("account_user", "account_admin_user")
AUTH_PROVIDER_TYPES = ("email_otp", "oidc")
GROUP_TYPES = ("managed", "static")
RESOURCE_TYPES = ("cidr", "ip", "dns", "internet")
IP_STACKS = ("dual", "ipv4_only", "ipv6_only")
DEVICE_TYPES = ("client", "gateway")
TOKEN_TYPES = ("client", "gateway", "relay", "api")

EVERYONE_GROUP_NAME = "Everyone"

_R = TypeVar("_R", bound="_Record")


def _json(value: Any) -> Any:
    """SQLite hands JSON back as text, PostgreSQL (jsonb) as Python values."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class _Record:
    """Shared row decoding."""

    _json_fields: ClassVar[frozenset[str]] = frozenset()
    _bytes_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_row(cls: type[_R], row: dict[str, Any]) -> _R:
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = row[f.name]
            if value is not None and f.name in cls._json_fields:
                value = _json(value)
            elif value is not None and f.name in cls._bytes_fields:
                value = bytes(value)
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class AccountConfig:
    """What clients of the account get as DNS settings in their ``interface``.

    ``upstream_do53`` holds plain IP addresses, ``upstream_doh`` https URLs;
    both empty means "use the system resolvers".
    """

    search_domain: str | None = None
    upstream_do53: tuple[str, ...] = ()
    upstream_doh: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "search_domain": self.search_domain,
            "upstream_do53": list(self.upstream_do53),
            "upstream_doh": list(self.upstream_doh),
        }

    @classmethod
    def from_json(cls, value: Any) -> AccountConfig:
        value = _json(value) or {}
        return cls(
            search_domain=value.get("search_domain"),
            upstream_do53=tuple(value.get("upstream_do53") or ()),
            upstream_doh=tuple(value.get("upstream_doh") or ()),
        )


@dataclass(frozen=True)
class Account(_Record):
    id: str
    slug: str
    name: str
    config: AccountConfig
    inserted_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Account:
        return cls(
            id=row["id"],
            slug=row["slug"],
            name=row["name"],
            config=AccountConfig.from_json(row["config"]),
            inserted_at=row["inserted_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class Actor(_Record):
    account_id: str
    id: str
    type: str
    name: str
    email: str | None
    disabled_at: float | None
    inserted_at: float
    updated_at: float

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def is_user(self) -> bool:
        """Users (not service accounts) are implicit members of Everyone."""
        return self.type in USER_ACTOR_TYPES


@dataclass(frozen=True)
class AuthProvider(_Record):
    _json_fields = frozenset({"config"})

    account_id: str
    id: str
    type: str
    name: str
    config: dict[str, Any]
    disabled_at: float | None
    inserted_at: float
    updated_at: float

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def client_session_lifetime_secs(self) -> int:
        value = self.config.get("client_session_lifetime_secs")
        return int(value) if value is not None else DEFAULT_CLIENT_SESSION_LIFETIME


@dataclass(frozen=True)
class Identity(_Record):
    account_id: str
    id: str
    actor_id: str
    provider_id: str
    provider_identifier: str
    email: str | None
    inserted_at: float


@dataclass(frozen=True)
class Group(_Record):
    account_id: str
    id: str
    name: str
    type: str
    inserted_at: float
    updated_at: float

    @property
    def managed(self) -> bool:
        return self.type == "managed"


@dataclass(frozen=True)
class Membership(_Record):
    account_id: str
    id: str
    group_id: str
    actor_id: str
    inserted_at: float


@dataclass(frozen=True)
class Site(_Record):
    account_id: str
    id: str
    name: str
    inserted_at: float
    updated_at: float


@dataclass(frozen=True)
class Resource(_Record):
    """``filters`` is a list of ``{"protocol": "tcp"|"udp"|"icmp", "ports": ["80", "1-9"]}``."""

    _json_fields = frozenset({"filters"})

    account_id: str
    id: str
    site_id: str
    type: str
    address: str | None
    address_description: str | None
    name: str
    ip_stack: str | None
    filters: list[dict[str, Any]] = field(hash=False)
    inserted_at: float
    updated_at: float


@dataclass(frozen=True)
class Policy(_Record):
    """``conditions`` is a list of ``{"property", "operator", "values"}`` (REFERENCE 2.2)."""

    _json_fields = frozenset({"conditions"})

    account_id: str
    id: str
    group_id: str
    resource_id: str
    conditions: list[dict[str, Any]] = field(hash=False)
    description: str | None
    disabled_at: float | None
    inserted_at: float
    updated_at: float

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True)
class PolicyGrant:
    """A policy that applies to an actor, and the membership granting it.

    ``membership_id`` is ``None`` for policies on the managed Everyone group,
    whose membership is implicit (REFERENCE 2.1).
    """

    policy: Policy
    membership_id: str | None


@dataclass(frozen=True)
class Device(_Record):
    _bytes_fields = frozenset({"psk_base"})

    account_id: str
    id: str
    type: str
    external_id: str
    name: str
    public_key: str
    psk_base: bytes
    ipv4: str
    ipv6: str
    actor_id: str | None
    site_id: str | None
    last_seen_remote_ip: str | None
    last_seen_user_agent: str | None
    last_seen_version: str | None
    last_seen_at: float | None
    verified_at: float | None
    inserted_at: float
    updated_at: float

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


@dataclass(frozen=True)
class Token(_Record):
    """A token row: what a presented token resolves to.

    ``account_id`` is ``None`` only for relay tokens, which are global.
    """

    id: str
    account_id: str | None
    type: str
    actor_id: str | None
    auth_provider_id: str | None
    site_id: str | None
    name: str | None
    secret_salt: str
    secret_hash: str
    expires_at: float | None
    last_used_at: float | None
    last_used_remote_ip: str | None
    inserted_at: float


@dataclass(frozen=True)
class PolicyAuthorization(_Record):
    account_id: str
    id: str
    token_id: str
    policy_id: str
    initiating_device_id: str
    receiving_device_id: str
    resource_id: str
    membership_id: str | None
    initiator_remote_ip: str | None
    initiator_user_agent: str | None
    receiver_remote_ip: str | None
    expires_at: float | None
    inserted_at: float


@dataclass(frozen=True)
class CreatedAccount:
    """Everything ``create_account`` made in its one transaction."""

    account: Account
    everyone_group: Group
    email_provider: AuthProvider
    admin: Actor | None
    admin_identity: Identity | None
