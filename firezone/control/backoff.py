"""Reconnect delays for the portal channel, as connlib takes them from the ``backoff`` crate.

The channel needs two schedules (REFERENCE 1.2): before the first successful
connect a constant 1 s for at most 15 s (a component that never reached the
portal should fail fast and loudly), and afterwards an exponential schedule
with jitter whose total budget the role chooses (24 h for relays and gateways,
unlimited for clients).  Time and randomness come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INITIAL_CONNECT", "Backoff", "BackoffPolicy", "reconnect_policy"]


@dataclass(frozen=True)
class BackoffPolicy:
    """The ``backoff`` crate's ``ExponentialBackoff`` parameters (its defaults)."""

    initial_interval: float = 0.5
    multiplier: float = 1.5
    max_interval: float = 60.0
    randomization_factor: float = 0.5
    #: Give up once this long has passed since the first failure; ``None`` = never.
    max_elapsed: float | None = 15 * 60.0

    def __post_init__(self) -> None:
        if self.initial_interval < 0 or self.max_interval < self.initial_interval:
            raise ValueError("need 0 <= initial_interval <= max_interval")
        if self.multiplier < 1 or not 0 <= self.randomization_factor < 1:
            raise ValueError("need multiplier >= 1 and 0 <= randomization_factor < 1")

    def start(self, now: float) -> Backoff:
        return Backoff(self, now)


#: Before the first successful connect: 1 s apart, for at most 15 s.
INITIAL_CONNECT = BackoffPolicy(
    initial_interval=1.0,
    multiplier=1.0,
    max_interval=1.0,
    randomization_factor=0.0,
    max_elapsed=15.0,
)


def reconnect_policy(max_elapsed: float | None) -> BackoffPolicy:
    """The roles' reconnect schedule: crate defaults with the role's total budget."""
    return BackoffPolicy(max_elapsed=max_elapsed)


class Backoff:
    """One run of a policy, started at the first failure and dropped on success."""

    def __init__(self, policy: BackoffPolicy, started_at: float) -> None:
        self.policy = policy
        self.started_at = started_at
        self.current_interval = policy.initial_interval

    def next_delay(self, now: float, rng: Callable[[], float]) -> float | None:
        """The next delay, or ``None`` once the elapsed budget is spent.

        ``rng()`` returns a float in [0, 1); the delay is uniform in
        ``current * (1 +- randomization_factor)``, as the crate draws it.
        """
        policy = self.policy
        elapsed = now - self.started_at
        if policy.max_elapsed is not None and elapsed > policy.max_elapsed:
            return None
        delta = policy.randomization_factor * self.current_interval
        low = self.current_interval - delta
        delay = low + rng() * (2 * delta)
        self.current_interval = min(
            self.current_interval * policy.multiplier, policy.max_interval
        )
        if policy.max_elapsed is not None and elapsed + delay > policy.max_elapsed:
            return None
        return delay
