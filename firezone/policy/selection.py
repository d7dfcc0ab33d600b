"""Which gateway serves a client's request, and which relays a device is given.

Gateway choice (REFERENCE.md 2.3, reference ``load_balance_gateways``):

1. candidates are the online gateways in the resource's site;
2. keep those :func:`versions.compatible` with the client and able to serve
   the resource at their version; none left -> ``version_mismatch`` if the
   site had gateways, else ``offline``;
3. if the client is already connected to some candidates, choose among those;
4. client location unknown -> uniform random choice;
5. otherwise group by gateway ``(lat, lon)``, take the nearest group
   (gateways without a location last), then the highest version in it, then
   choose at random.

Relay choice (REFERENCE.md 2.4): with a location, the ``count`` nearest
(relays without a location last, ties in input order); without one, shuffle
and take ``count``.

Randomness comes from the injected ``rng``; candidates are ordered by id
before a random pick so a seeded rng gives the same answer for the same set.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from firezone.policy.geo import haversine_km
from firezone.policy.model import Resource
from firezone.policy.versions import (
    Version,
    adapt_resource_for_version,
    compatible,
    parse_version,
)

__all__ = [
    "GatewayCandidate",
    "GatewayLike",
    "Located",
    "NoGateway",
    "RelayCandidate",
    "compatible",
    "select_gateway",
    "select_relays",
]

Coordinates = tuple[float | None, float | None] | None


class Located(Protocol):
    @property
    def lat(self) -> float | None: ...

    @property
    def lon(self) -> float | None: ...


class GatewayLike(Located, Protocol):
    @property
    def id(self) -> str: ...

    @property
    def site_id(self) -> str | None: ...

    @property
    def version(self) -> str | None: ...


@dataclass(frozen=True)
class GatewayCandidate:
    """An online gateway as presence knows it."""

    id: str
    site_id: str | None
    version: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class RelayCandidate:
    """An online relay as presence knows it."""

    id: str
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class NoGateway:
    """Why no gateway was chosen: ``offline`` or ``version_mismatch``."""

    reason: Literal["offline", "version_mismatch"]


G = TypeVar("G", bound=GatewayLike)
R = TypeVar("R", bound=Located)


def _point(location: Coordinates) -> tuple[float, float] | None:
    if location is None:
        return None
    lat, lon = location
    if lat is None or lon is None:
        return None
    return (lat, lon)


def _distance(origin: tuple[float, float], item: Located) -> float | None:
    if item.lat is None or item.lon is None:
        return None
    return haversine_km(origin, (item.lat, item.lon))


def _version_key(gateway: GatewayLike) -> tuple[int, Version | None]:
    parsed = parse_version(gateway.version)
    return (0, None) if parsed is None else (1, parsed)


def select_gateway(
    resource: Resource,
    online_gateways: Iterable[G],
    *,
    rng: random.Random,
    client_version: str | None = None,
    client_location: Coordinates = None,
    connected_gateway_ids: Collection[str] = (),
) -> G | NoGateway:
    """Choose the gateway that will serve ``resource`` for this client."""
    site_id = resource.site_id
    site = [g for g in online_gateways if site_id is not None and g.site_id == site_id]
    candidates = [
        g
        for g in site
        if compatible(client_version, g.version)
        and adapt_resource_for_version(resource, g.version) is not None
    ]
    if not candidates:
        return NoGateway("version_mismatch" if site else "offline")
    preferred = [g for g in candidates if g.id in connected_gateway_ids]
    if preferred:
        candidates = preferred
    candidates.sort(key=lambda g: g.id)
    origin = _point(client_location)
    if origin is None:
        return rng.choice(candidates)
    groups: dict[tuple[float | None, float | None], list[G]] = {}
    for g in candidates:
        groups.setdefault((g.lat, g.lon), []).append(g)

    def group_rank(item: tuple[tuple[float | None, float | None], list[G]]) -> tuple[int, float]:
        d = _distance(origin, item[1][0])
        return (1, 0.0) if d is None else (0, d)

    nearest = min(groups.items(), key=group_rank)[1]
    best_version = max(_version_key(g) for g in nearest)
    newest = [g for g in nearest if _version_key(g) == best_version]
    return rng.choice(newest)


def select_relays(
    relays: Iterable[R],
    *,
    rng: random.Random,
    location: Coordinates = None,
    count: int = 2,
) -> list[R]:
    """The relays handed to a device: ``count`` nearest, or ``count`` random."""
    items = list(relays)
    origin = _point(location)
    if origin is None:
        rng.shuffle(items)
        return items[:count]

    def rank(item: R) -> tuple[int, float]:
        d = _distance(origin, item)
        return (1, 0.0) if d is None else (0, d)

    return sorted(items, key=rank)[:count]
