"""WireGuard protocol constants and the per-peer timer configuration.

The values are those of the WireGuard paper (section 6) and wireguard-go's
``device/constants.go``.  Timers are a frozen value so that a node can give ICE
paths a shorter ``rekey_attempt_time`` (Firezone uses 20 s) without touching
the defaults used elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
#: Retransmissions and the "no reply" handshake timer add up to this much random delay.
REKEY_TIMEOUT_JITTER_MAX = 0.334
KEEPALIVE_TIMEOUT = 10.0
#: How long a cookie (and the responder's cookie secret) stays valid.
COOKIE_REFRESH_TIME = 120.0
#: wireguard-go refuses a second initiation from the same peer within 1/50 s.
HANDSHAKE_INITIATION_RATE = 1.0 / 50.0
#: Transport plaintext is padded to a multiple of this.
PADDING_MULTIPLE = 16
#: wireguard-go keeps the device "under load" this long after load was seen.
UNDER_LOAD_AFTER_TIME = 1.0
#: Firezone's (boringtun's) handshake rate limit: above this many handshake
#: messages per second the device demands cookies.
FIREZONE_HANDSHAKE_RATE_LIMIT = 100
#: wireguard-go ``ratelimiter.go``: handshake packets per second per source IP, and burst.
RATELIMIT_PACKETS_PER_SECOND = 20.0
RATELIMIT_BURST = 5
#: Packets kept while no session exists (wireguard-go ``QueueStagedSize``).
STAGED_PACKETS_LIMIT = 128


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Per-peer protocol timers; the defaults are the WireGuard specification's."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    staged_packets_limit: int = STAGED_PACKETS_LIMIT

    def __post_init__(self) -> None:
        if self.reject_after_messages > REJECT_AFTER_MESSAGES:
            raise ValueError("reject_after_messages exceeds the replay window's limit")
        if self.staged_packets_limit < 1:
            raise ValueError("staged_packets_limit must be at least 1")
        if min(self.rekey_timeout, self.keepalive_timeout, self.reject_after_time) <= 0:
            raise ValueError("timeouts must be positive")


#: Firezone's timers for connections over an ICE path: give up a stuck handshake after 20 s.
FIREZONE_ICE_TIMERS = TimerConfig(rekey_attempt_time=20.0)
