"""The control-plane API as a service: store, node, timers and the listening site.

Starting opens (and migrates) the store, loads the portal's secret key, starts
the node (store listeners), its two ``TimerService`` s -- the presence
heartbeat and the minute tick -- and then listens; readiness turns on once all
of that worked.  Stopping undoes it in reverse order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from firezone.common.health import Readiness
from firezone.policy.geo import GeoResolver
from firezone.portal.api.gate import api_resource
from firezone.portal.api.node import ApiNode, NodeConfig
from firezone.portal.api.views import FlowLogsConfig
from firezone.portal.store import IPortalStore, open_store
from firezone.portal.tokens import SECRET_KEY_FILENAME, Tokens, load_or_create_secret_key

__all__ = ["ApiTimers", "PortalApiService", "api_site"]

_log = Logger()


class ApiTimers:
    """The node's heartbeat and minute tick as ``TimerService`` s on the node's clock."""

    def __init__(self, node: ApiNode) -> None:
        self.services = [
            TimerService(node.config.heartbeat_interval, node.heartbeat),
            TimerService(node.config.recompute_interval, node.tick),
        ]
        for timer in self.services:
            timer.clock = node.clock

    def start(self) -> None:
        for timer in self.services:
            timer.startService()

    def stop(self) -> None:
        for timer in self.services:
            if timer.running:
                timer.stopService()


class _QuietSite(Site):
    """Long-lived sockets, not page views: no access log line per upgrade."""

    def log(self, request: Any) -> None:
        pass


def api_site(node: ApiNode, reactor: Any, root: Resource | None = None) -> Site:
    """A site serving the API paths (mounted into ``root`` if given, e.g. the admin UI)."""
    resource = api_resource(node, reactor)
    if root is not None:
        for name, child in resource.children.items():
            root.putChild(name, child)
        resource = root
    site = _QuietSite(resource, reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site


class PortalApiService(Service):
    def __init__(
        self,
        *,
        reactor: Any,
        listen: str,
        database_url: str,
        data_dir: Path,
        external_url: str,
        readiness: Readiness,
        geo: GeoResolver | None = None,
    ) -> None:
        self.reactor = reactor
        self.listen = listen
        self.database_url = database_url
        self.data_dir = Path(data_dir)
        self.external_url = external_url
        self.readiness = readiness
        self.geo = geo
        self.store: IPortalStore | None = None
        self.node: ApiNode | None = None
        self.timers: ApiTimers | None = None
        self.port: IListeningPort | None = None
        self.started: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.readiness.set_not_ready("opening the database")
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        _log.failure("the control-plane API did not start", failure)
        self.readiness.set_not_ready(f"API not started: {failure.getErrorMessage()}")

    async def _start(self) -> None:
        self.store = await open_store(self.database_url, clock=self.reactor, reactor=self.reactor)
        os.makedirs(self.data_dir, exist_ok=True)
        key = load_or_create_secret_key(str(self.data_dir / SECRET_KEY_FILENAME))
        tokens = Tokens(self.store, key, self.reactor)
        config = NodeConfig(flow_logs=FlowLogsConfig(api_url=self.external_url.rstrip("/")))
        self.node = ApiNode(self.store, tokens, key, self.reactor, config, geo=self.geo)
        await self.node.start()
        self.timers = ApiTimers(self.node)
        self.timers.start()
        endpoint = serverFromString(self.reactor, self.listen)
        self.port = await endpoint.listen(api_site(self.node, self.reactor))
        self.readiness.set_ready()
        _log.info("control-plane API listening on {listen} (node {node})",
                  listen=self.listen, node=self.node.node_id)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.readiness.set_not_ready("stopping")
        if self.port is not None:
            port, self.port = self.port, None
            await maybeDeferred(port.stopListening)
        if self.timers is not None:
            self.timers.stop()
            self.timers = None
        if self.node is not None:
            node, self.node = self.node, None
            await node.stop()
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()
