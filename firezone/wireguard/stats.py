"""Plain counters for the WireGuard machines (read by metrics exporters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class DeviceStats:
    """Why datagrams were dropped, and how many of each kind were accepted."""

    # drops / rejections
    malformed: int = 0
    bad_mac1: int = 0
    cookie_sent: int = 0
    rate_limited: int = 0
    decrypt_failed: int = 0
    bad_key: int = 0
    unknown_peer: int = 0
    unknown_index: int = 0
    stale_timestamp: int = 0
    handshake_flood: int = 0
    unexpected_message: int = 0
    bad_cookie_reply: int = 0
    replay: int = 0
    expired_keypair: int = 0
    invalid_packet: int = 0
    # accepted
    initiations_received: int = 0
    responses_received: int = 0
    cookie_replies_received: int = 0
    transport_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class PeerStats:
    """Traffic and handshake counters of one peer."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    initiations_sent: int = 0
    handshakes_completed: int = 0
    staged_dropped: int = 0
    #: ``now`` of the last completed handshake, None before the first.
    last_handshake_at: float | None = None

    def as_dict(self) -> dict[str, int | float | None]:
        return asdict(self)
