"""Drives a :class:`~firezone.tunnel.node.Node` from one UDP socket, a TUN device and the
reactor clock.

The adapter only translates: a UDP datagram goes to ``Node.decapsulate`` and a
resulting IP packet to the TUN (if its source is inside the sending peer's
allowed IPs); a TUN packet is routed to a connection with the peer table and
sealed by ``Node.encapsulate``; everything the node queues (``poll_transmit``,
``poll_event``) is flushed once per reactor turn, and one ``callLater`` is kept
armed at ``Node.poll_timeout()``.

The socket binds the wildcard address on port 52625 and falls back to an
ephemeral port if that is taken (REFERENCE 5.2); IPv4 only.  Buffers are
enlarged (SO_RCVBUFFORCE when root, via firezone.common.sockets) and datagrams leave through
``socket.sendto`` directly, errors counted, never raised.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from firezone.common.sockets import DEFAULT_BUFFER as SOCKET_BUFFER
from firezone.common.sockets import grow_buffers
from firezone.tunnel.ice import IceCreds
from firezone.tunnel.node import (
    DEFAULT_PORT,
    ConnectionFailed,
    IceRole,
    Node,
    NodeEvent,
    RelayInfo,
)
from firezone.tunnel.peers import PeerTable
from firezone.tunnel.wg_tunnel import TunnelDatagramProtocol

__all__ = [
    "SOCKET_BUFFER",
    "AdapterStats",
    "NodeAdapter",
    "interface_addresses",
]

_log = Logger()

Address = tuple[str, int]


@dataclass
class AdapterStats:
    """Drops the adapter decides on; the node counts its own."""

    send_errors: int = 0
    no_route: int = 0
    source_rejected: int = 0
    tun_write_drops: int = 0


def interface_addresses(exclude: Iterable[str] = ()) -> list[str]:
    """This host's IPv4 addresses usable as host candidates: not loopback, not
    link-local, not on an excluded interface (our own TUN)."""
    from pyroute2 import IPRoute

    skip = set(exclude)
    found: list[str] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for message in ipr.get_addr(family=socket.AF_INET):
            if names.get(message["index"]) in skip:
                continue
            text = message.get_attr("IFA_ADDRESS")
            if text is None:
                continue
            ip = ipaddress.ip_address(text)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast:
                continue
            if str(ip) not in found:
                found.append(str(ip))
    return found


class NodeAdapter:
    """One node, one UDP socket, one peer table; the TUN is wired in by the caller
    (``TunDevice(reactor, fd, name, adapter.packets_from_tun)``, ``tun_write=tun.write``)."""

    def __init__(
        self,
        reactor: Any,
        node: Node,
        *,
        tun_write: Callable[[bytes], bool] | None = None,
        on_event: Callable[[NodeEvent], None] | None = None,
        on_packet: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.node = node
        self.table: PeerTable[str] = PeerTable()
        self.stats = AdapterStats()
        self._tun_write = tun_write
        self._on_event = on_event
        self._on_packet = on_packet
        self._port: Any = None
        self._socket: Any = None
        self._timer: IDelayedCall | None = None
        self._flush_call: IDelayedCall | None = None

    # ----------------------------------------------------------------------------------
    # Socket
    # ----------------------------------------------------------------------------------

    def listen(self, port: int = DEFAULT_PORT, interface: str = "0.0.0.0") -> int:
        """Bind the node's socket; ``port`` if free, else an ephemeral one.  Returns it."""
        protocol = TunnelDatagramProtocol(self.datagram_received)
        try:
            self._port = self.reactor.listenUDP(port, protocol, interface=interface,
                                                maxPacketSize=65535)
        except CannotListenError:
            if port == 0:
                raise
            _log.info("UDP port {port} is taken; using an ephemeral port", port=port)
            self._port = self.reactor.listenUDP(0, protocol, interface=interface,
                                                maxPacketSize=65535)
        self._socket = self._port.socket
        grow_buffers(self._socket, SOCKET_BUFFER)
        return self.port

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not listening")
        return int(self._port.getHost().port)

    def stop(self) -> None:
        for call in (self._timer, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._flush_call = None
        if self._port is not None:
            self._port.stopListening()
            self._port = None
            self._socket = None

    def _send(self, payload: bytes, dest: Address) -> None:
        try:
            self._socket.sendto(payload, dest)
        except OSError:
            # Full buffers, unreachable networks, a closed socket: a lost datagram.
            self.stats.send_errors += 1

    # ----------------------------------------------------------------------------------
    # Control (the role's calls, with the reactor's time)
    # ----------------------------------------------------------------------------------

    def set_host_addresses(self, ips: Iterable[str]) -> None:
        """The socket's host candidates: these addresses with the bound port."""
        port = self.port
        self.node.set_host_addresses([(ip, port) for ip in ips], self.reactor.seconds())
        self._schedule()

    def update_relays(self, relays: Iterable[RelayInfo]) -> None:
        self.node.update_relays(relays, self.reactor.seconds())
        self._schedule()

    def upsert_connection(self, peer_id: str, peer_public_key: bytes,
                          preshared_key: bytes | None, local_creds: IceCreds,
                          remote_creds: IceCreds, role: IceRole,
                          allowed_ips: Iterable[str]) -> bool:
        """``Node.upsert_connection`` plus routing ``allowed_ips`` to it from the TUN."""
        created = self.node.upsert_connection(peer_id, peer_public_key, preshared_key,
                                              local_creds, remote_creds, role,
                                              self.reactor.seconds())
        if created:
            self.table.remove(peer_id)
        self.table.add(peer_id, list(allowed_ips))
        self._schedule()
        return created

    def add_remote_candidate(self, peer_id: str, sdp: str) -> bool:
        added = self.node.add_remote_candidate(peer_id, sdp, self.reactor.seconds())
        self._schedule()
        return added

    def remove_remote_candidate(self, peer_id: str, sdp: str) -> bool:
        removed = self.node.remove_remote_candidate(peer_id, sdp, self.reactor.seconds())
        self._schedule()
        return removed

    def close_connection(self, peer_id: str) -> bool:
        self.table.remove(peer_id)
        closed = self.node.close_connection(peer_id)
        self._schedule()
        return closed

    # ----------------------------------------------------------------------------------
    # Data path
    # ----------------------------------------------------------------------------------

    def packets_from_tun(self, packets: list[bytes]) -> None:
        now = self.reactor.seconds()
        lookup = self.table.lookup_packet
        encapsulate = self.node.encapsulate
        send = self._send
        for packet in packets:
            peer_id = lookup(packet)
            if peer_id is None:
                self.stats.no_route += 1
                continue
            transmit = encapsulate(peer_id, packet, now)
            if transmit is not None:
                send(transmit.payload, transmit.dest)
        self._schedule()

    def datagram_received(self, data: bytes, source: Address) -> None:
        result = self.node.decapsulate(data, source, self.reactor.seconds())
        if result is not None:
            peer_id, packet = result
            if self._on_packet is not None:
                self._on_packet(peer_id, packet)
            if not self.table.source_allowed(peer_id, packet):
                self.stats.source_rejected += 1
            elif self._tun_write is not None and not self._tun_write(packet):
                self.stats.tun_write_drops += 1
        self._schedule()

    # ----------------------------------------------------------------------------------
    # Flushing and the timer
    # ----------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Flush the node's queues once this reactor turn is done (batches many inputs)."""
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what the node queued, hand its events on, re-arm the timer."""
        self._flush_call = None
        node = self.node
        if self._socket is not None:
            while (transmit := node.poll_transmit()) is not None:
                self._send(transmit.payload, transmit.dest)
        while (event := node.poll_event()) is not None:
            if isinstance(event, ConnectionFailed):
                self.table.remove(event.peer_id)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    _log.failure("node event handler failed on {event!r}", event=event)
        self._arm()

    def _arm(self) -> None:
        deadline = self.node.poll_timeout()
        timer = self._timer
        if deadline is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        delay = max(0.0, deadline - self.reactor.seconds())
        if timer is not None and timer.active():
            if abs(timer.getTime() - deadline) > 1e-6:
                timer.reset(delay)
            return
        self._timer = self.reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.node.handle_timeout(self.reactor.seconds())
        except Exception:
            _log.failure("node timer failed")
        self.flush()
