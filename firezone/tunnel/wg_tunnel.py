"""Drives the pure WireGuard ``Device`` from the TUN device, a UDP socket and the clock.

The hot paths stay lean: a TUN packet is routed with the peer table and sealed
with ``Peer.encrypt``; a transport datagram is opened with
``Device.decrypt_transport``.  Only when those return None (no session yet,
handshake messages, cookies) does the general action-returning API run.  One
timer is armed at the earliest deadline any peer reported; fast paths only move
it earlier when a peer's deadline does.

Endpoint and roaming policy live here, not in the protocol: a peer's endpoint
follows the source of its last authenticated datagram, as in WireGuard.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from firezone.tunnel.peers import PeerTable
from firezone.wireguard.device import Device
from firezone.wireguard.events import (
    Action,
    ConnectionExpired,
    HandshakeCompleted,
    SendDatagram,
    WriteToTun,
)
from firezone.wireguard.peer import Peer

_log = Logger()

Address = tuple[str, int]
_TRANSPORT = 4


@dataclass
class TunnelStats:
    """Drops the adapter itself decides on (the protocol counts its own)."""

    no_route: int = 0
    no_endpoint: int = 0
    source_rejected: int = 0
    send_errors: int = 0
    tun_write_drops: int = 0


class WireGuardTunnel:
    """WireGuard between one TUN device and one UDP socket."""

    def __init__(
        self,
        clock: Any,
        device: Device,
        tun_write: Callable[[bytes], bool],
        udp_send: Callable[[bytes, Address], None],
        on_event: Callable[[bytes, Action], None] | None = None,
    ) -> None:
        self.clock = clock
        self.device = device
        self.table: PeerTable[bytes] = PeerTable()
        self._tun_write = tun_write
        self._udp_send = udp_send
        self._on_event = on_event
        self.stats = TunnelStats()
        self._timer: IDelayedCall | None = None
        self._timer_at = float("inf")

    # peers

    def add_peer(self, public_key: bytes, allowed_ips: list[Any], endpoint: Address | None = None,
                 **peer_options: Any) -> Peer:
        peer = self.device.add_peer(public_key, **peer_options)
        self.table.add(public_key, allowed_ips, endpoint)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        self.device.remove_peer(public_key)
        self.table.remove(public_key)

    def set_endpoint(self, public_key: bytes, endpoint: Address) -> None:
        self.table.endpoints[public_key] = endpoint

    # TUN -> UDP

    def packets_from_tun(self, packets: list[bytes]) -> None:
        now = self.clock.seconds()
        lookup = self.table.lookup_packet
        endpoints = self.table.endpoints
        get_peer = self.device.get_peer
        send = self._udp_send
        earliest = self._timer_at
        for packet in packets:
            key = lookup(packet)
            if key is None:
                self.stats.no_route += 1
                continue
            peer = get_peer(key)
            if peer is None:
                self.stats.no_route += 1
                continue
            data = peer.encrypt(packet, now)
            if data is not None:
                endpoint = endpoints.get(key)
                if endpoint is None:
                    self.stats.no_endpoint += 1
                else:
                    send(data, endpoint)
            else:
                self._apply(peer, peer.send(packet, now, now))
            deadline = peer.next_deadline()
            if deadline is not None and deadline < earliest:
                earliest = deadline
        self._arm(earliest)

    # UDP -> TUN

    def datagram_received(self, data: bytes, source: Address) -> None:
        now = self.clock.seconds()
        if data and data[0] == _TRANSPORT:
            result = self.device.decrypt_transport(data, now)
            if result is None:
                return
            peer, plaintext = result
            key = peer.public_key
            self.table.endpoints[key] = source
            if plaintext:
                if self.table.source_allowed(key, plaintext):
                    if not self._tun_write(plaintext):
                        self.stats.tun_write_drops += 1
                else:
                    self.stats.source_rejected += 1
            deadline = peer.next_deadline()
            if deadline is not None and deadline < self._timer_at:
                self._arm(deadline)
            return
        found, actions = self.device.receive(data, source, now, now)
        if found is not None:
            self.table.endpoints[found.public_key] = source
            self._apply(found, actions)
            deadline = found.next_deadline()
            if deadline is not None:
                self._arm(deadline)
        else:
            for action in actions:  # cookie replies to unknown or loaded senders
                if isinstance(action, SendDatagram):
                    target = action.destination or source
                    self._send(action.data, (target[0], target[1]))

    # actions and timers

    def _apply(self, peer: Peer, actions: list[Action]) -> None:
        key = peer.public_key
        for action in actions:
            if isinstance(action, SendDatagram):
                destination = action.destination or self.table.endpoints.get(key)
                if destination is None:
                    self.stats.no_endpoint += 1
                else:
                    self._send(action.data, (destination[0], destination[1]))
            elif isinstance(action, WriteToTun):
                if self.table.source_allowed(key, action.packet):
                    if not self._tun_write(action.packet):
                        self.stats.tun_write_drops += 1
                else:
                    self.stats.source_rejected += 1
            elif isinstance(action, HandshakeCompleted | ConnectionExpired):
                if isinstance(action, ConnectionExpired):
                    _log.info("WireGuard peer {peer} expired: {reason}",
                              peer=_short(key), reason=action.reason)
                if self._on_event is not None:
                    self._on_event(key, action)

    def _send(self, data: bytes, destination: Address) -> None:
        try:
            self._udp_send(data, destination)
        except OSError as e:
            self.stats.send_errors += 1
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                _log.debug("WireGuard send to {d} failed: {e}", d=destination, e=e)

    def _arm(self, deadline: float) -> None:
        if deadline == float("inf") or deadline >= self._timer_at:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()),
                                           self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self.clock.seconds()
        try:
            for peer, action in self.device.on_timer(now, now):
                self._apply(peer, [action])
        except Exception:
            _log.failure("WireGuard timer failed")
        deadline = self.device.next_deadline()
        if deadline is not None:
            self._arm(max(deadline, now + 0.001))

    def start(self) -> None:
        deadline = self.device.next_deadline()
        if deadline is not None:
            self._arm(deadline)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")


class TunnelDatagramProtocol(DatagramProtocol):
    """The UDP socket of a tunnel; sends go straight to ``socket.sendto``."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data, (addr[0], addr[1]))

    def send(self, data: bytes, address: Address) -> None:
        assert self.transport is not None
        self.transport.socket.sendto(data, address)  # type: ignore[attr-defined]


def _short(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()[:8]
