"""User input to stored values, for the store's write paths.

The rules on resource addresses, filters and policy conditions belong to the
policy package (``firezone.policy``) and DNS patterns to
``firezone.dns_pattern``; this module calls them and re-raises their errors as
:class:`InvalidRecord`, so every write fails with a store error and nothing
half-validated reaches the database.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from firezone.policy.conditions import parse_condition
from firezone.policy.errors import InvalidCondition, InvalidFilter, InvalidResource
from firezone.policy.filters import parse_filters, validate_ip_stack, validate_resource_address
from firezone.portal.store.errors import InvalidRecord
from firezone.portal.store.records import AccountConfig

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{2,99}\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)
#: longest client session a provider may configure (the reference caps at 90 days)
MAX_SESSION_LIFETIME = 90 * 24 * 3600


def slug(value: object) -> str:
    """Account slugs appear in URLs (``/<slug>``) next to account ids, so no UUIDs."""
    if not isinstance(value, str) or not _SLUG.match(value):
        raise InvalidRecord(
            f"slug {value!r} must be 3-100 lower-case letters, digits, '_' or '-'"
        )
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise InvalidRecord("a slug must not look like an account id")


def optional_email(value: object | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _EMAIL.match(value.strip()) or len(value) > 254:
        raise InvalidRecord(f"{value!r} is not an email address")
    return value.strip().lower()


def account_config(config: AccountConfig) -> dict[str, Any]:
    search_domain = config.search_domain
    if search_domain is not None:
        search_domain = search_domain.strip().lower().rstrip(".")
        if not _DOMAIN.match(search_domain):
            raise InvalidRecord(f"search domain {config.search_domain!r} is not a domain name")
    do53 = []
    for address in config.upstream_do53:
        try:
            do53.append(str(ipaddress.ip_address(str(address).strip())))
        except ValueError:
            raise InvalidRecord(f"upstream DNS server {address!r} is not an IP address")
    doh = []
    for url in config.upstream_doh:
        parts = urlsplit(str(url).strip())
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidRecord(f"upstream DoH server {url!r} is not an https:// URL")
        doh.append(parts.geturl())
    return AccountConfig(search_domain, tuple(do53), tuple(doh)).to_json()


def provider_config(config: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise InvalidRecord("auth provider config must be an object")
    result = dict(config)
    lifetime = result.get("client_session_lifetime_secs")
    if lifetime is not None:
        if isinstance(lifetime, bool) or not isinstance(lifetime, int):
            raise InvalidRecord("client_session_lifetime_secs must be an integer")
        if not 60 <= lifetime <= MAX_SESSION_LIFETIME:
            raise InvalidRecord(
                f"client_session_lifetime_secs must be between 60 and {MAX_SESSION_LIFETIME}"
            )
    return result


def resource_address(
    type: str, address: str | None, ip_stack: str | None
) -> tuple[str | None, str | None]:
    """The normalised ``(address, ip_stack)`` of a resource of ``type``."""
    try:
        return validate_resource_address(type, address), validate_ip_stack(type, ip_stack)
    except InvalidResource as e:
        raise InvalidRecord(str(e)) from e


def filters(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    try:
        return [f.to_dict() for f in parse_filters(list(items))]
    except InvalidFilter as e:
        raise InvalidRecord(str(e)) from e


def conditions(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    try:
        return [parse_condition(item).to_dict() for item in items]
    except InvalidCondition as e:
        raise InvalidRecord(str(e)) from e


def public_key(value: object) -> str:
    """A WireGuard public key: standard base64 of 32 bytes (44 characters)."""
    if isinstance(value, str) and len(value) == 44:
        try:
            if len(base64.b64decode(value, validate=True)) == 32:
                return value
        except (binascii.Error, ValueError):
            pass
    raise InvalidRecord("public key must be the standard base64 of 32 bytes")
