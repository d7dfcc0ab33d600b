"""Policy conditions: validation of user input and evaluation against a subject.

Properties and operators (REFERENCE.md 2.2, reference
``Portal.Policies.Condition`` / ``Evaluator``):

====================================  ==================================  ==========================
property                              operators                           values
====================================  ==================================  ==========================
``remote_ip_location_region``         ``is_in``, ``is_not_in``            ISO 3166 alpha-2 codes
``remote_ip``                         ``is_in_cidr``, ``is_not_in_cidr``  CIDRs or bare IPs
``auth_provider_id``                  ``is_in``, ``is_not_in``            provider UUIDs
``current_utc_datetime``              ``is_in_day_of_week_time_ranges``   ``timewindows`` syntax
``client_verified``                   ``is``                              exactly one of true/false
====================================  ==================================  ==========================

Validation normalises values (upper-case country codes, CIDRs to their
network ``10.0.0.0/24`` and bare IPs to ``/32`` or ``/128``, lower-case
UUIDs, ``true``/``false``) and refuses empty or duplicate value lists (the
reference allows empty lists, which either never or always pass).

Evaluation follows the reference: an unknown country fails both operators; an
unknown remote IP fails both CIDR operators (an IPv4-mapped IPv6 address is
matched as IPv4); an unknown auth provider passes ``is_not_in``;
``client_verified is ["false"]`` always passes; a time window passes while
inside and expires at the window's end.  A condition that does not validate
(built directly with bad values) never passes.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from firezone.policy import timewindows
from firezone.policy.errors import InvalidCondition
from firezone.policy.geo import COUNTRY_CODES
from firezone.policy.model import (
    OPERATORS_BY_PROPERTY,
    Condition,
    Instant,
    Subject,
    to_timestamp,
)

__all__ = [
    "ConditionResult",
    "Conformance",
    "InvalidCondition",
    "evaluate_condition",
    "evaluate_conditions",
    "parse_condition",
    "parse_conditions",
    "validate_condition",
]

_UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ConditionResult:
    """One condition's verdict; ``expires_at`` (unix seconds) only for time windows."""

    passed: bool
    expires_at: float | None = None


@dataclass(frozen=True)
class Conformance:
    """A condition list's verdict: violated properties in the order first met."""

    passed: bool
    expires_at: float | None
    violated_properties: tuple[str, ...]


def _normalize_region(value: str) -> str:
    code = value.strip().upper()
    if code not in COUNTRY_CODES:
        raise InvalidCondition(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return code


def _normalize_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise InvalidCondition(f"{value!r} is not an IP address or CIDR range") from None


def _normalize_uuid(value: str) -> str:
    text = value.strip().lower()
    if not _UUID_RE.match(text):
        raise InvalidCondition(f"{value!r} is not a UUID")
    return text


def _normalize_bool(value: str) -> str:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise InvalidCondition(f"{value!r} is not true or false")
    return text


def _normalize_time_window(value: str) -> str:
    timewindows.parse_day_time_ranges(value)
    return value.strip()


_NORMALIZERS = {
    "remote_ip_location_region": _normalize_region,
    "remote_ip": _normalize_cidr,
    "auth_provider_id": _normalize_uuid,
    "current_utc_datetime": _normalize_time_window,
    "client_verified": _normalize_bool,
}


def validate_condition(condition: Condition) -> Condition:
    """Check property, operator and values; return the normalised condition."""
    operators = OPERATORS_BY_PROPERTY.get(condition.property)
    if operators is None:
        raise InvalidCondition(
            f"unknown property {condition.property!r}, must be one of "
            f"{', '.join(sorted(OPERATORS_BY_PROPERTY))}"
        )
    if condition.operator not in operators:
        raise InvalidCondition(
            f"operator {condition.operator!r} is not valid for {condition.property}, "
            f"must be one of {', '.join(sorted(operators))}"
        )
    if not condition.values:
        raise InvalidCondition(f"{condition.property}: at least one value is required")
    if condition.property == "client_verified" and len(condition.values) != 1:
        raise InvalidCondition("client_verified takes exactly one value, true or false")
    normalize = _NORMALIZERS[condition.property]
    try:
        values = tuple(normalize(v) for v in condition.values)
    except InvalidCondition as e:
        raise type(e)(f"{condition.property}: {e}") from None
    if len(set(values)) != len(values):
        raise InvalidCondition(f"{condition.property}: values must not contain duplicates")
    if condition.property == "current_utc_datetime":
        timewindows.parse_schedule(values)
    return Condition(condition.property, condition.operator, values)


def parse_condition(data: Mapping[str, object]) -> Condition:
    """Validate ``{"property", "operator", "values"}`` from an API or CLI."""
    if not isinstance(data, Mapping):
        raise InvalidCondition(f"a condition must be an object, got {data!r}")
    unknown = set(data) - {"property", "operator", "values"}
    if unknown:
        raise InvalidCondition(f"unknown condition keys: {', '.join(sorted(map(str, unknown)))}")
    prop, op, values = data.get("property"), data.get("operator"), data.get("values")
    if not isinstance(prop, str):
        raise InvalidCondition("condition property is required and must be a string")
    if not isinstance(op, str):
        raise InvalidCondition("condition operator is required and must be a string")
    if not isinstance(values, list | tuple):
        raise InvalidCondition(f"{prop}: values must be a list of strings")
    texts: list[str] = []
    for v in values:
        if isinstance(v, bool):
            texts.append("true" if v else "false")
        elif isinstance(v, str):
            texts.append(v)
        else:
            raise InvalidCondition(f"{prop}: values must be strings, got {v!r}")
    return validate_condition(Condition(prop, op, tuple(texts)))


def parse_conditions(items: Iterable[Mapping[str, object]]) -> tuple[Condition, ...]:
    """Validate a policy's condition list."""
    return tuple(parse_condition(item) for item in items)


@dataclass(frozen=True)
class _Compiled:
    names: frozenset[str] = frozenset()
    networks: tuple[_Network, ...] = ()
    schedule: timewindows.Schedule | None = None
    require_verified: bool = False


@functools.lru_cache(maxsize=8192)
def _compile(condition: Condition) -> _Compiled | None:
    try:
        valid = validate_condition(condition)
    except InvalidCondition:
        return None
    if valid.property == "remote_ip":
        return _Compiled(networks=tuple(ipaddress.ip_network(v) for v in valid.values))
    if valid.property == "current_utc_datetime":
        return _Compiled(schedule=timewindows.parse_schedule(valid.values))
    if valid.property == "client_verified":
        return _Compiled(require_verified=valid.values == ("true",))
    return _Compiled(names=frozenset(valid.values))


def _membership(operator: str, member: bool) -> ConditionResult:
    return ConditionResult(member if operator in ("is_in", "is_in_cidr") else not member)


def evaluate_condition(condition: Condition, subject: Subject, now: Instant) -> ConditionResult:
    """Whether ``subject`` satisfies ``condition`` at ``now``."""
    compiled = _compile(condition)
    if compiled is None:
        return ConditionResult(False)
    prop, op = condition.property, condition.operator
    if prop == "remote_ip_location_region":
        if subject.remote_country is None:
            return ConditionResult(False)
        return _membership(op, subject.remote_country in compiled.names)
    if prop == "remote_ip":
        ip = subject.remote_ip
        if ip is None:
            return ConditionResult(False)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return _membership(op, any(ip in net for net in compiled.networks))
    if prop == "auth_provider_id":
        provider = subject.auth_provider_id.lower() if subject.auth_provider_id else None
        return _membership(op, provider in compiled.names)
    if prop == "current_utc_datetime":
        assert compiled.schedule is not None
        state = timewindows.evaluate(compiled.schedule, now)
        return ConditionResult(state.inside, state.expires_at)
    # client_verified
    return ConditionResult(subject.client_verified or not compiled.require_verified)


def evaluate_conditions(
    conditions: Iterable[Condition], subject: Subject, now: Instant
) -> Conformance:
    """All must pass; the expiry is the earliest among them (None = none expires).

    A property already violated is not evaluated again, as in the reference.
    """
    ts = to_timestamp(now)
    violated: list[str] = []
    expires_at: float | None = None
    for condition in conditions:
        if condition.property in violated:
            continue
        result = evaluate_condition(condition, subject, ts)
        if not result.passed:
            violated.append(condition.property)
        elif result.expires_at is not None:
            if expires_at is None or result.expires_at < expires_at:
                expires_at = result.expires_at
    if violated:
        return Conformance(False, None, tuple(violated))
    return Conformance(True, expires_at, ())
