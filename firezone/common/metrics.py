"""One Prometheus registry per process, exported on the health endpoint's ``/metrics``.

Each role creates its collectors against the registry it is handed (never the
global default one), so tests get a fresh registry and two roles in one process
do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from firezone import __version__

__all__ = ["CONTENT_TYPE_LATEST", "new_registry", "render"]


def new_registry(role: str) -> CollectorRegistry:
    """A fresh registry carrying ``firezone_build_info{role,version}``."""
    registry = CollectorRegistry(auto_describe=True)
    info = Gauge(
        "firezone_build_info",
        "Build information of this Firezone process",
        ["role", "version"],
        registry=registry,
    )
    info.labels(role=role, version=__version__).set(1)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
