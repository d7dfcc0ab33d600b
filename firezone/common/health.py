"""``/healthz``, ``/readyz`` and ``/metrics`` on ``HEALTH_CHECK_ADDR``, as the reference has them.

``/healthz`` answers 200 while the process runs.  ``/readyz`` answers 200 with
the version once the role says it is ready (for the relay: joined to the
portal) and 503 otherwise, so an orchestrator only routes to working nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from firezone import __version__
from firezone.common.metrics import CONTENT_TYPE_LATEST, render
from firezone.common.options import endpoint_for


class Readiness:
    """What ``/readyz`` reports; roles flip it as their dependencies come and go."""

    def __init__(self, ready: bool = False, reason: str = "starting") -> None:
        self.ready = ready
        self.reason = reason

    def set_ready(self) -> None:
        self.ready, self.reason = True, ""

    def set_not_ready(self, reason: str) -> None:
        self.ready, self.reason = False, reason


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render_get: Callable[[Request], bytes]) -> None:
        super().__init__()
        self._render_get = render_get

    def render_GET(self, request: Request) -> bytes:
        return self._render_get(request)

    def render_HEAD(self, request: Request) -> bytes:
        self._render_get(request)
        return b""


def health_resource(readiness: Readiness, registry: CollectorRegistry) -> Resource:
    """The resource tree served on the health address."""

    def healthz(request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok\n"

    def readyz(request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if readiness.ready:
            return f"{__version__}\n".encode()
        request.setResponseCode(503)
        return f"not ready: {readiness.reason}\n".encode()

    def metrics(request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return render(registry)

    root = Resource()
    root.putChild(b"healthz", _Leaf(healthz))
    root.putChild(b"readyz", _Leaf(readyz))
    root.putChild(b"metrics", _Leaf(metrics))
    return root


class _QuietSite(Site):
    """Probes hit these paths every few seconds; an access line each would drown the log."""

    def log(self, request: Any) -> None:
        pass


def health_service(
    reactor: IReactorCore,
    address: tuple[str, int],
    readiness: Readiness,
    registry: CollectorRegistry,
) -> IService:
    """A service listening on ``address`` with the health resource."""
    site = _QuietSite(health_resource(readiness, registry))
    site.displayTracebacks = False
    site.noisy = False
    endpoint = serverFromString(reactor, endpoint_for(*address))
    service = StreamServerEndpointService(endpoint, site)
    service.setName("health")
    return service
