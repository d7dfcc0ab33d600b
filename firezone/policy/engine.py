"""Default-deny access decisions (REFERENCE.md 2.1, 2.2; reference ``Cache.Client``).

A policy grants the members of its group access to its resource while all of
its conditions pass.  The managed "Everyone" group holds every user and admin
but no service account; the caller names that group's id and the engine adds
it to the subject's groups when the actor type qualifies.  Disabled policies
count for nothing, not even for telling ``forbidden`` from ``not_found``.

:func:`authorize` decides one request:

* no enabled policy of the subject's groups names the resource -> ``not_found``;
* none of them passes -> ``forbidden`` with the sorted union of the
  properties that failed;
* otherwise the passing policy whose conditions expire *latest* (no expiry =
  never) wins, first in input order on ties; the authorization expires at the
  earlier of that expiry and the subject's token expiry.

The caller answers ``not_found`` itself for resource ids it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from firezone.policy.conditions import evaluate_conditions
from firezone.policy.model import Instant, Policy, Resource, Subject, to_timestamp
from firezone.policy.versions import adapt_resource_for_version

__all__ = [
    "Allowed",
    "Decision",
    "Denied",
    "applicable_policies",
    "authorize",
    "connectable_resources",
    "effective_group_ids",
]


@dataclass(frozen=True)
class Allowed:
    """Access granted under ``policy_id`` until ``expires_at`` (unix seconds, None = never)."""

    policy_id: str
    expires_at: float | None


@dataclass(frozen=True)
class Denied:
    """Access refused; ``violated_properties`` is sorted and set only for ``forbidden``."""

    reason: Literal["forbidden", "not_found"]
    violated_properties: tuple[str, ...] = ()


Decision = Allowed | Denied


def effective_group_ids(subject: Subject, everyone_group_id: str | None) -> frozenset[str]:
    """The subject's groups plus "Everyone" for users and admins."""
    if everyone_group_id is not None and subject.actor_type in ("user", "admin"):
        return subject.group_ids | {everyone_group_id}
    return subject.group_ids


def applicable_policies(
    subject: Subject, policies: Iterable[Policy], everyone_group_id: str | None = None
) -> list[Policy]:
    """The enabled policies of the subject's groups, in input order."""
    groups = effective_group_ids(subject, everyone_group_id)
    return [p for p in policies if not p.disabled and p.group_id in groups]


def _earlier(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def authorize(
    subject: Subject,
    resource_id: str,
    policies: Iterable[Policy],
    now: Instant,
    *,
    everyone_group_id: str | None = None,
) -> Decision:
    """Decide whether ``subject`` may reach ``resource_id`` at ``now``."""
    ts = to_timestamp(now)
    relevant = [
        p
        for p in applicable_policies(subject, policies, everyone_group_id)
        if p.resource_id == resource_id
    ]
    if not relevant:
        return Denied("not_found")
    violated: set[str] = set()
    best: tuple[Policy, float | None] | None = None
    for policy in relevant:
        verdict = evaluate_conditions(policy.conditions, subject, ts)
        if not verdict.passed:
            violated.update(verdict.violated_properties)
            continue
        if best is None:
            best = (policy, verdict.expires_at)
            continue
        current = best[1]
        if current is not None and (verdict.expires_at is None or verdict.expires_at > current):
            best = (policy, verdict.expires_at)
    if best is None:
        return Denied("forbidden", tuple(sorted(violated)))
    policy, condition_expiry = best
    return Allowed(policy.id, _earlier(condition_expiry, subject.token_expires_at))


def connectable_resources(
    subject: Subject,
    policies: Iterable[Policy],
    resources: Mapping[str, Resource] | Iterable[Resource],
    now: Instant,
    *,
    everyone_group_id: str | None = None,
    client_version: str | None = None,
) -> set[str]:
    """Ids of the resources the subject may connect to at ``now``.

    A resource qualifies when it is among ``resources``, has a site, is usable
    by a client of ``client_version`` (unknown version: no gating) and at least
    one enabled policy of the subject's groups for it passes.
    """
    ts = to_timestamp(now)
    if isinstance(resources, Mapping):
        by_id = dict(resources)
    else:
        by_id = {r.id: r for r in resources}
    usable = {
        rid
        for rid, r in by_id.items()
        if r.site_id is not None and adapt_resource_for_version(r, client_version) is not None
    }
    result: set[str] = set()
    for policy in applicable_policies(subject, policies, everyone_group_id):
        rid = policy.resource_id
        if rid in result or rid not in usable:
            continue
        if evaluate_conditions(policy.conditions, subject, ts).passed:
            result.add(rid)
    return result
