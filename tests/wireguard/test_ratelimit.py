"""The per-source token bucket and the under-load detector."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.ratelimit import LoadMonitor, RateLimiter

NS = 1e-9
COST = 1 / 20

IPS = [
    "127.0.0.1",
    "192.168.1.1",
    "2001:db8:a0b:12f0::1",
    "f5c2:818f:c052:655a:9860:b136:6894:25f0",
]


class RateLimiterTests(SynchronousTestCase):
    def test_wireguard_go_table(self) -> None:
        """wireguard-go ratelimiter_test.go: 20 packets/s with a burst of 5, per IP.

        Each step waits its delay plus 1 ns, as the Go test does."""
        table = [(0.0, True)] * 5 + [
            (0.0, False),
            (COST, True),
            (0.0, False),
            (2 * COST, True),
            (0.0, True),
            (0.0, False),
        ]
        limiter = RateLimiter()
        now_ns = 1_000_000_000
        for step, (wait, allowed) in enumerate(table):
            now_ns += round(wait * 1e9) + 1
            for ip in IPS:
                self.assertEqual(limiter.allow(ip, now_ns * NS), allowed, (step, ip))

    def test_keys_independent(self) -> None:
        """Exhausting one source does not limit another."""
        limiter = RateLimiter(packets_per_second=1, burst=1)
        self.assertTrue(limiter.allow("a", 0.0))
        self.assertFalse(limiter.allow("a", 0.5))
        self.assertTrue(limiter.allow("b", 0.5))
        self.assertTrue(limiter.allow("a", 1.6))

    def test_firezone_knob(self) -> None:
        """A configurable rate: 100/s with burst 100 lets 100 through in an instant, not 101."""
        limiter = RateLimiter(packets_per_second=100, burst=100)
        results = [limiter.allow("x", 5.0 + i * NS) for i in range(101)]
        self.assertEqual(results.count(True), 100)
        self.assertFalse(results[-1])

    def test_idle_entries_collected(self) -> None:
        """Entries idle for more than a second are forgotten."""
        limiter = RateLimiter()
        for i in range(10):
            limiter.allow(f"10.0.0.{i}", 0.0)
        self.assertEqual(len(limiter), 10)
        limiter.allow("10.0.1.1", 2.0)
        self.assertEqual(len(limiter), 1)


class LoadMonitorTests(SynchronousTestCase):
    def test_threshold_per_second(self) -> None:
        """More than `threshold` handshake messages within a second means under load."""
        monitor = LoadMonitor(threshold=3, hold=1.0)
        self.assertEqual([monitor.record(0.1 * i) for i in range(4)], [False, False, False, True])
        self.assertTrue(monitor.under_load(1.2))
        self.assertFalse(monitor.under_load(1.31))

    def test_window_resets(self) -> None:
        """Messages spread over several seconds never trip the threshold."""
        monitor = LoadMonitor(threshold=3)
        self.assertFalse(any(monitor.record(0.4 * i) for i in range(30)))
