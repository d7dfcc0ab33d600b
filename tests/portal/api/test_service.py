"""The API service: store opened, node started, timers running, site listening, readiness."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from firezone.common.health import Readiness
from firezone.portal.api.service import PortalApiService


class PortalApiServiceTests(SynchronousTestCase):
    def make(self, database: str) -> tuple[PortalApiService, MemoryReactorClock, Readiness]:
        reactor = MemoryReactorClock()
        readiness = Readiness()
        data = Path(self.mktemp())
        service = PortalApiService(
            reactor=reactor, listen="tcp:13000:interface=127.0.0.1", database_url=database,
            data_dir=data, external_url="http://127.0.0.1:13000/", readiness=readiness,
        )
        return service, reactor, readiness

    def test_start_listens_when_the_store_is_open(self) -> None:
        """Readiness turns on once the store is open and the API listens on ``--listen``."""
        data = Path(self.mktemp())
        service, reactor, readiness = self.make(f"sqlite:///{data}/portal.db")
        service.startService()
        self.assertTrue(readiness.ready, readiness.reason)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (13000, "127.0.0.1"))
        self.assertIsInstance(factory, Site)
        self.assertTrue(all(t.running for t in service.timers.services))  # type: ignore[union-attr]
        self.successResultOf(service.stopService())
        self.assertFalse(readiness.ready)
        self.assertIsNone(service.store)

    def test_bad_database_is_not_ready(self) -> None:
        """If the store cannot be opened, the service stays unready and does not listen."""
        service, reactor, readiness = self.make("sqlite:///")
        service.startService()
        self.assertFalse(readiness.ready)
        self.assertIn("API not started", readiness.reason)
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.successResultOf(service.stopService())
