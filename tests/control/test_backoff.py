"""Tests for firezone.control.backoff: the backoff crate's ExponentialBackoff, time injected."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.control.backoff import INITIAL_CONNECT, BackoffPolicy, reconnect_policy


class BackoffTests(SynchronousTestCase):
    def test_initial_connect_schedule(self) -> None:
        """1 s constant without jitter; None once the next retry would pass 15 s elapsed."""
        backoff = INITIAL_CONNECT.start(100.0)
        delays = []
        now = 100.0
        while (delay := backoff.next_delay(now, lambda: 0.9)) is not None:
            delays.append(delay)
            now += delay
        self.assertEqual(delays, [1.0] * 15)
        self.assertEqual(now, 115.0)

    def test_exponential_bounds(self) -> None:
        """Delay n lies in [0.5, 1.5] * 0.5 s * 1.5^n, the interval capped at 60 s."""
        low = reconnect_policy(None).start(0.0)
        high = reconnect_policy(None).start(0.0)
        interval = 0.5
        for _ in range(30):
            self.assertAlmostEqual(low.next_delay(0.0, lambda: 0.0), interval * 0.5)  # type: ignore[arg-type]
            self.assertAlmostEqual(high.next_delay(0.0, lambda: 1.0), interval * 1.5)  # type: ignore[arg-type]
            interval = min(interval * 1.5, 60.0)
        self.assertEqual(interval, 60.0)

    def test_unlimited_budget(self) -> None:
        """max_elapsed None never gives up (the headless client's unset MAX_PARTITION_TIME)."""
        backoff = reconnect_policy(None).start(0.0)
        self.assertIsNotNone(backoff.next_delay(10.0 * 365 * 86400, lambda: 0.5))

    def test_budget_counts_from_start(self) -> None:
        """Elapsed time is measured from the first failure, including time spent connecting."""
        backoff = BackoffPolicy(max_elapsed=100.0).start(50.0)
        self.assertIsNotNone(backoff.next_delay(149.0, lambda: 0.0))
        self.assertIsNone(backoff.next_delay(150.5, lambda: 0.0))

    def test_invalid_policies(self) -> None:
        """Nonsense parameters are refused at construction."""
        for kwargs in ({"multiplier": 0.5}, {"randomization_factor": 1.0},
                       {"initial_interval": 2.0, "max_interval": 1.0}, {"initial_interval": -1}):
            with self.assertRaises(ValueError, msg=kwargs):
                BackoffPolicy(**kwargs)  # type: ignore[arg-type]

    @settings(max_examples=200)
    @given(st.lists(st.floats(0.0, 0.999999), min_size=1, max_size=40))
    def test_jitter_within_bounds(self, draws: list[float]) -> None:
        """Every delay is within +-randomization_factor of the current interval."""
        policy = reconnect_policy(None)
        backoff = policy.start(0.0)
        interval = policy.initial_interval
        for draw in draws:
            delay = backoff.next_delay(0.0, lambda d=draw: d)  # type: ignore[misc]
            assert delay is not None
            self.assertGreaterEqual(delay, interval * 0.5 - 1e-9)
            self.assertLessEqual(delay, interval * 1.5 + 1e-9)
            interval = min(interval * 1.5, 60.0)
