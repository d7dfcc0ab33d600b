"""The front door of the WireGuard machine: our static key plus a table of peers.

Incoming datagrams are routed here: transport data by receiver index,
initiations by decrypting the sender's static key, responses and cookie
replies by index.  Handshake messages pass the DoS gate first (mac1 always;
under load mac2 or a cookie reply, then a per-source-IP rate limit).  Every
drop is counted by reason in :attr:`Device.stats`.  Outgoing IP packets are
sent through a :class:`~firezone.wireguard.peer.Peer` the caller picks (the
allowed-IPs table lives elsewhere); likewise the caller must check that a
decrypted packet's source address is allowed for the peer it came from.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from firezone.wireguard.constants import (
    FIREZONE_HANDSHAKE_RATE_LIMIT,
    RATELIMIT_BURST,
    RATELIMIT_PACKETS_PER_SECOND,
    UNDER_LOAD_AFTER_TIME,
    TimerConfig,
)
from firezone.wireguard.cookie import CookieChecker, source_bytes
from firezone.wireguard.crypto import KEY_SIZE, RandomBytes
from firezone.wireguard.events import Action, Address, SendDatagram, WriteToTun
from firezone.wireguard.indextable import IndexTable
from firezone.wireguard.messages import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_TRANSPORT,
    TRANSPORT_MIN_SIZE,
    CookieReply,
    HandshakeInitiation,
    HandshakeResponse,
    WireGuardDecodeError,
    message_type,
    sender_index,
)
from firezone.wireguard.noise import HandshakeError, StaticIdentity, open_initiation
from firezone.wireguard.peer import Peer
from firezone.wireguard.ratelimit import LoadMonitor, RateLimiter
from firezone.wireguard.stats import DeviceStats

_TRANSPORT_HEADER = struct.Struct("<IIQ")

_REASON_COUNTER = {
    "decrypt": "decrypt_failed",
    "bad_key": "bad_key",
    "stale_timestamp": "stale_timestamp",
    "flood": "handshake_flood",
    "state": "unexpected_message",
}


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Device-wide knobs.

    ``handshake_rate_limit``: handshake messages (with valid mac1) per second above
    which the device is under load and demands cookies (Firezone/boringtun: 100).
    ``per_ip_rate``/``per_ip_burst``: wireguard-go's per-source-IP limit under load.
    """

    handshake_rate_limit: int = FIREZONE_HANDSHAKE_RATE_LIMIT
    under_load_hold: float = UNDER_LOAD_AFTER_TIME
    per_ip_rate: float = RATELIMIT_PACKETS_PER_SECOND
    per_ip_burst: int = RATELIMIT_BURST
    timers: TimerConfig = field(default_factory=TimerConfig)
    #: Pad transport plaintext no further than this (wireguard-go pads against the TUN MTU).
    mtu: int | None = None


class Device:
    """Routes datagrams to peers and answers handshakes on behalf of our static key."""

    def __init__(
        self,
        private_key: bytes,
        *,
        config: DeviceConfig | None = None,
        rand_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.config = config if config is not None else DeviceConfig()
        self.identity = StaticIdentity.from_private_key(private_key)
        self.stats = DeviceStats()
        #: Set to True to demand cookies regardless of the measured load.
        self.force_under_load = False
        self._rand_bytes = rand_bytes
        self._index = IndexTable(rand_bytes)
        self._keypairs = self._index.keypairs
        self._peers: dict[bytes, Peer] = {}
        self._checker = CookieChecker(self.identity.public_key, rand_bytes)
        self._load = LoadMonitor(self.config.handshake_rate_limit, self.config.under_load_hold)
        self._ratelimiter = RateLimiter(self.config.per_ip_rate, self.config.per_ip_burst)

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    # ------------------------------------------------------------------ peers

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        persistent_keepalive: float | None = None,
        timers: TimerConfig | None = None,
    ) -> Peer:
        """Register a peer (replacing any previous one with the same key)."""
        if len(public_key) != KEY_SIZE:
            raise ValueError("public key must be 32 bytes")
        self.remove_peer(public_key)
        peer = Peer(
            self.identity,
            public_key,
            preshared_key=preshared_key,
            timers=timers if timers is not None else self.config.timers,
            persistent_keepalive=persistent_keepalive,
            mtu=self.config.mtu,
            index_table=self._index,
            device_stats=self.stats,
            rand_bytes=self._rand_bytes,
        )
        self._peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> Peer | None:
        """Forget a peer, erasing its keys and freeing its indices."""
        peer = self._peers.pop(public_key, None)
        if peer is not None:
            peer.close()
        return peer

    def get_peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    def peers(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def under_load(self, now: float) -> bool:
        return self.force_under_load or self._load.under_load(now)

    # --------------------------------------------------------------- incoming

    def decrypt_transport(self, datagram: bytes, now: float) -> tuple[Peer, bytes] | None:
        """Fast path for transport data: ``(peer, ip_packet)`` (b"" for a keepalive).

        None if the datagram was dropped (counted) or is not transport data.  Never
        returns actions; re-check the peer's ``next_deadline()`` afterwards.
        """
        if len(datagram) < TRANSPORT_MIN_SIZE:
            self.stats.malformed += 1
            return None
        word, index, counter = _TRANSPORT_HEADER.unpack_from(datagram)
        if word != MESSAGE_TRANSPORT:
            self.stats.malformed += 1
            return None
        kp = self._keypairs.get(index)
        if kp is None or kp.peer is None:
            self.stats.unknown_index += 1
            return None
        peer = kp.peer
        plaintext = peer.decrypt_with(kp, datagram, counter, now)
        if plaintext is None:
            return None
        return peer, plaintext

    def receive(
        self, datagram: bytes, source: Address, now: float, wall_time: float
    ) -> tuple[Peer | None, list[Action]]:
        """General path for any datagram: the peer it belonged to and what to do.

        Never raises on malformed input.  The caller should treat ``source`` as the
        peer's endpoint whenever a peer is returned (roaming), and check the source
        address of any :class:`WriteToTun` packet against that peer's allowed IPs.
        """
        kind = message_type(datagram)
        if kind == MESSAGE_TRANSPORT:
            result = self.decrypt_transport(datagram, now)
            if result is None:
                return None, []
            peer, plaintext = result
            out: list[Action] = [WriteToTun(plaintext)] if plaintext else []
            out.extend(peer.drain(now, wall_time))
            return peer, out
        if kind == 0:
            self.stats.malformed += 1
            return None, []
        try:
            if kind == MESSAGE_COOKIE_REPLY:
                return self._receive_cookie_reply(datagram, now)
            return self._receive_handshake(kind, datagram, source, now, wall_time)
        except WireGuardDecodeError:
            self.stats.malformed += 1
            return None, []
        except HandshakeError as e:
            counter = _REASON_COUNTER.get(e.reason, "unexpected_message")
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            return None, []

    def _receive_cookie_reply(
        self, datagram: bytes, now: float
    ) -> tuple[Peer | None, list[Action]]:
        reply = CookieReply.decode(datagram)
        peer = self._index.peer_for(reply.receiver)
        if peer is None:
            self.stats.unknown_index += 1
            return None, []
        if peer.handle_cookie_reply(reply, now):
            self.stats.cookie_replies_received += 1
        else:
            self.stats.bad_cookie_reply += 1
        return peer, []

    def _receive_handshake(
        self, kind: int, datagram: bytes, source: Address, now: float, wall_time: float
    ) -> tuple[Peer | None, list[Action]]:
        stats = self.stats
        if not self._checker.check_mac1(datagram):
            stats.bad_mac1 += 1
            return None, []
        under_load = self._load.record(now) or self.force_under_load
        if under_load:
            src = source_bytes(source)
            if not self._checker.check_mac2(datagram, src, now):
                reply = self._checker.create_reply(datagram, sender_index(datagram), src, now)
                stats.cookie_sent += 1
                return None, [SendDatagram(reply.encode(), source)]
            if not self._ratelimiter.allow(source[0], now):
                stats.rate_limited += 1
                return None, []
        if kind == MESSAGE_INITIATION:
            opened = open_initiation(self.identity, HandshakeInitiation.decode(datagram))
            peer = self._peers.get(opened.remote_static)
            if peer is None:
                stats.unknown_peer += 1
                return None, []
            out = peer.handle_initiation(opened, source, now, wall_time)
            stats.initiations_received += 1
            return peer, out
        msg = HandshakeResponse.decode(datagram)
        owner = self._index.handshakes.get(msg.receiver)
        if owner is None:
            stats.unknown_index += 1
            return None, []
        out = owner.handle_response(msg, now, wall_time)
        stats.responses_received += 1
        return owner, out

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """The earliest deadline of any peer (O(peers); per-peer deadlines are cheaper)."""
        best: float | None = None
        for peer in self._peers.values():
            t = peer.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_timer(self, now: float, wall_time: float) -> list[tuple[Peer, Action]]:
        """Run every peer whose deadline has passed; actions are tagged with their peer."""
        out: list[tuple[Peer, Action]] = []
        for peer in list(self._peers.values()):
            t = peer.next_deadline()
            if t is not None and t <= now:
                out.extend((peer, action) for action in peer.on_timer(now, wall_time))
        return out
