"""Bad input from the network is logged at a bounded rate."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from firezone.common.logging import RateLimitedLog, observer


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        self.clock = Clock()
        self.limited = RateLimitedLog(Logger(observer=self.events.append), self.clock.seconds,
                                      interval=10, burst=3)

    def test_burst_then_suppressed(self) -> None:
        """At most `burst` lines per key per interval; the rest are counted, not logged."""
        results = [self.limited.warn("peer", "bad packet from {peer}", peer="x") for _ in range(5)]
        self.assertEqual(results, [True, True, True, False, False])
        self.assertEqual(len(self.events), 3)
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.limited.suppressed, 2)

    def test_window_resets(self) -> None:
        """After the interval the key may log again; other keys are independent."""
        for _ in range(4):
            self.limited.warn("a", "x")
        self.assertTrue(self.limited.warn("b", "y"))
        self.clock.advance(10)
        self.assertTrue(self.limited.warn("a", "x"))


class ObserverTests(SynchronousTestCase):
    def test_json_and_level_filter(self) -> None:
        """LOG_FORMAT=json writes JSON records; LOG_LEVEL=warn drops info events."""
        import io
        import json
        import sys

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        log = Logger(observer=observer({"LOG_LEVEL": "warn", "LOG_FORMAT": "json"}))
        log.info("quiet {n}", n=1)
        log.warn("loud {n}", n=2)
        records = [json.loads(line.strip("\x1e")) for line in out.getvalue().splitlines() if line]
        self.assertEqual([r["n"] for r in records], [2])
