"""Component versions: client/gateway compatibility and per-version resource shapes.

Rules (REFERENCE.md 1.1 and 2.1, reference ``compatible_gateway?`` and
``Portal.Resource.adapt_resource_for_version``):

* a gateway serves a client ``X.Y.*`` when ``X.(Y-1).0 <= gateway < X.(Y+2).0``
  (for ``Y = 0`` the lower bound is ``X.0.0``; the reference would crash);
* an unknown client version accepts every gateway; an unparseable one none;
  a gateway with an unknown or unparseable version serves nobody;
* ``internet`` resources need a component >= 1.3.0;
* below 1.2.0 DNS wildcards use the old syntax: a leading ``**`` becomes
  ``*``, a leading ``*`` becomes ``?``, and any other ``*`` or any ``?``
  makes the resource unusable for that component.

Versions are semver ``MAJOR.MINOR.PATCH[-pre][+build]`` compared by semver
precedence (the reference sorts gateway versions as strings; we do not).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from firezone.policy.model import Resource

__all__ = ["Version", "adapt_resource_for_version", "compatible", "parse_version"]

_SEMVER_RE = re.compile(
    r"\A(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?\Z"
)


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after all of its pre-releases; numeric identifiers
        # sort numerically and before alphanumeric ones (semver 11.4).
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: Version) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: Version) -> bool:
        return self._key() >= other._key()

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        return f"{base}-{'.'.join(self.pre)}" if self.pre else base


def parse_version(text: str | None) -> Version | None:
    """A semver version, or None when absent or unparseable."""
    if text is None:
        return None
    m = _SEMVER_RE.match(text.strip())
    if m is None:
        return None
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)


_V1_2 = Version(1, 2, 0)
_V1_3 = Version(1, 3, 0)


def compatible(client_version: str | None, gateway_version: str | None) -> bool:
    """Whether a gateway of ``gateway_version`` may serve a client of ``client_version``."""
    gateway = parse_version(gateway_version)
    if gateway is None:
        return False
    if client_version is None:
        return True
    client = parse_version(client_version)
    if client is None:
        return False
    low = Version(client.major, max(client.minor - 1, 0), 0)
    high = Version(client.major, client.minor + 2, 0)
    return low <= gateway < high


def _old_wildcards(address: str) -> str | None:
    if address.startswith("**"):
        head, rest = "*", address[2:]
    elif address.startswith("*"):
        head, rest = "?", address[1:]
    else:
        head, rest = "", address
    if "*" in rest or "?" in rest:
        return None
    return head + rest


def adapt_resource_for_version(resource: Resource, version: str | None) -> Resource | None:
    """The resource as a component of ``version`` must see it, or None if it cannot.

    An unknown or unparseable version gets the resource unchanged.
    """
    parsed = parse_version(version)
    if parsed is None:
        return resource
    if resource.type == "internet" and parsed < _V1_3:
        return None
    if parsed >= _V1_2 or resource.address is None:
        return resource
    address = _old_wildcards(resource.address)
    if address is None:
        return None
    if address == resource.address:
        return resource
    return dataclasses.replace(resource, address=address)
