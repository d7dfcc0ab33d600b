"""The health endpoint answers as the reference's: /healthz, /readyz, /metrics."""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from firezone import __version__
from firezone.common.health import Readiness, health_resource
from firezone.common.metrics import new_registry


class HealthResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.readiness = Readiness()
        self.registry = new_registry("relay")
        self.treq = StubTreq(health_resource(self.readiness, self.registry))

    def get(self, path: str) -> tuple[int, bytes]:
        response = self.successResultOf(self.treq.get(f"http://health{path}"))
        return response.code, self.successResultOf(response.content())

    def test_healthz_always_200(self) -> None:
        """GET /healthz returns 200 while the process runs, ready or not."""
        self.assertEqual(self.get("/healthz")[0], 200)

    def test_readyz_503_until_ready(self) -> None:
        """GET /readyz is 503 with the reason until the role is ready, then 200 with the version."""
        code, body = self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"starting", body)
        self.readiness.set_ready()
        self.assertEqual(self.get("/readyz"), (200, f"{__version__}\n".encode()))
        self.readiness.set_not_ready("portal connection lost")
        code, body = self.get("/readyz")
        self.assertEqual((code, b"portal connection lost" in body), (503, True))

    def test_metrics_prometheus_text(self) -> None:
        """GET /metrics is the Prometheus text format of the role's registry."""
        code, body = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'firezone_build_info{role="relay",version="' + __version__.encode(), body)

    def test_unknown_path_404(self) -> None:
        self.assertEqual(self.get("/nope")[0], 404)
