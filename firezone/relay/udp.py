"""The Twisted side of the relay: UDP sockets that feed the pure ``TurnServer``.

One socket per address family on the listen port (3478) carries STUN and
ChannelData from clients; one socket per allocation port and family carries
traffic from peers.  The adapter translates datagrams into calls on the
server and the server's commands into socket operations; it holds no protocol
logic.  ChannelData, the hot path, skips the command objects: it asks the
server for ``(payload, port, peer)`` and sends at once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from firezone.common.logging import RateLimitedLog
from firezone.common.sockets import grow_buffers
from firezone.relay.commands import (
    Address,
    Command,
    CreateAllocation,
    CreateChannelBinding,
    DeleteChannelBinding,
    FreeAllocation,
    SendFromAllocation,
    SendMessage,
)
from firezone.relay.server import TurnServer
from firezone.wire.stun import AddressFamily

_log = Logger()

BindingObserver = Callable[[Command], None]
_ALLOCATE_SUCCESS = b"\x01\x03"  # STUN message type of an Allocate success response


def _family(ip: str) -> AddressFamily:
    return AddressFamily.V6 if ":" in ip else AddressFamily.V4


class _ListenProtocol(DatagramProtocol):
    """The listen port of one family: STUN and ChannelData from clients."""

    def __init__(self, relay: RelayUDP) -> None:
        self.relay = relay

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        relay = self.relay
        sender: Address = (addr[0], addr[1])
        if data and 64 <= data[0] <= 127:  # channels 0x4000-0x7FFF (RFC 8656 12)
            routed = relay.server.relay_client_channel_data(data, sender)
            if routed is not None:
                payload, port, peer = routed
                relay.send_from_allocation(payload, port, peer)
            return
        relay.apply(relay.server.handle_client_input(data, sender, relay.clock.seconds()))
        relay.reschedule()


class _AllocationProtocol(DatagramProtocol):
    """One allocation port of one family: traffic from peers."""

    def __init__(self, relay: RelayUDP, port: int) -> None:
        self.relay = relay
        self.allocation_port = port

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        relay = self.relay
        routed = relay.server.relay_peer_data(data, (addr[0], addr[1]), self.allocation_port)
        if routed is not None:
            message, client = routed
            relay.send_to_client(message, client)


class RelayUDP(Service):
    """Owns the relay's sockets and its expiry timer."""

    def __init__(
        self,
        reactor: Any,
        server: TurnServer,
        bind_ip4: str | None,
        bind_ip6: str | None,
        binding_observers: Iterable[BindingObserver] = (),
    ) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.server = server
        self.bind_ips: dict[AddressFamily, str] = {}
        if bind_ip4 is not None and server.public_ip4 is not None:
            self.bind_ips[AddressFamily.V4] = bind_ip4
        if bind_ip6 is not None and server.public_ip6 is not None:
            self.bind_ips[AddressFamily.V6] = bind_ip6
        self._listen: dict[AddressFamily, Any] = {}
        self._allocations: dict[tuple[int, AddressFamily], Any] = {}
        self._timer: IDelayedCall | None = None
        self._binding_observers = list(binding_observers)
        self.send_errors = 0
        self._warn = RateLimitedLog(_log, reactor.seconds)

    # service lifetime

    def startService(self) -> None:
        for family, ip in self.bind_ips.items():
            port = self.reactor.listenUDP(
                self.server.listen_port, _ListenProtocol(self), interface=ip, maxPacketSize=65535
            )
            grow_buffers(port.socket)
            self._listen[family] = port
            _log.info("relay listening on {ip} port {port}", ip=ip, port=self.server.listen_port)
        super().startService()
        self.reschedule()

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for port in list(self._allocations.values()) + list(self._listen.values()):
            port.stopListening()
        self._allocations.clear()
        self._listen.clear()

    @property
    def listening_ports(self) -> dict[AddressFamily, int]:
        return {family: port.getHost().port for family, port in self._listen.items()}

    def add_binding_observer(self, observer: BindingObserver) -> None:
        """Called with every Create/DeleteChannelBinding and FreeAllocation, in order."""
        self._binding_observers.append(observer)

    # sending

    def send_from_allocation(self, payload: bytes, port: int, peer: Address) -> None:
        sock = self._allocations.get((port, _family(peer[0])))
        if sock is None:
            self.send_errors += 1
            return
        self._sendto(sock, payload, peer)

    def send_to_client(self, message: bytes, client: Address) -> None:
        sock = self._listen.get(_family(client[0]))
        if sock is None:
            self.send_errors += 1
            return
        self._sendto(sock, message, client)

    def _sendto(self, port: Any, data: bytes, address: Address) -> None:
        try:
            port.socket.sendto(data, address)
        except OSError as e:
            # A full buffer or an unreachable peer drops one datagram, as UDP does.
            self.send_errors += 1
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                self._warn.warn(("send", e.errno), "relay send to {address} failed: {error}",
                                address=address, error=e)

    # commands

    def apply(self, commands: list[Command]) -> None:
        # Sockets first: if an allocation port cannot be bound, the Allocate success in
        # this batch is withheld (the server has forgotten the allocation).
        failed = False
        for command in commands:
            if isinstance(command, CreateAllocation):
                failed |= not self._open_allocation(command.port, command.family)
        for command in commands:
            if isinstance(command, SendMessage):
                if failed and command.payload[:2] == _ALLOCATE_SUCCESS:
                    continue
                self.send_to_client(command.payload, command.recipient)
            elif isinstance(command, SendFromAllocation):
                self.send_from_allocation(command.payload, command.port, command.recipient)
            elif isinstance(command, FreeAllocation):
                self._close_allocation(command.port, command.family)
                self._notify(command)
            elif isinstance(command, CreateChannelBinding | DeleteChannelBinding):
                self._notify(command)

    def _notify(self, command: Command) -> None:
        if isinstance(command, CreateChannelBinding | DeleteChannelBinding):
            _log.debug(
                "binding {kind} {c[0]} {c[1]} {channel} {p[0]} {p[1]} {port}",
                kind="create" if isinstance(command, CreateChannelBinding) else "delete",
                c=command.client, channel=command.channel, p=command.peer,
                port=command.allocation_port,
            )
        for observer in self._binding_observers:
            try:
                observer(command)
            except Exception:
                _log.failure("binding observer failed for {command}", command=command)

    def _open_allocation(self, port: int, family: AddressFamily) -> bool:
        ip = self.bind_ips.get(family)
        if ip is None or (port, family) in self._allocations:
            return True
        try:
            listening = self.reactor.listenUDP(
                port, _AllocationProtocol(self, port), interface=ip, maxPacketSize=65535
            )
        except CannotListenError as e:
            _log.warn("cannot bind allocation port {port}: {error}", port=port, error=e)
            self.apply(self.server.handle_allocation_failed(port))
            return False
        grow_buffers(listening.socket)
        self._allocations[(port, family)] = listening
        return True

    def _close_allocation(self, port: int, family: AddressFamily) -> None:
        listening = self._allocations.pop((port, family), None)
        if listening is not None:
            listening.stopListening()

    # expiry

    def reschedule(self) -> None:
        """Arm the timer for the server's next deadline (allocation or channel expiry)."""
        deadline = self.server.poll_timeout()
        if deadline is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, deadline - self.clock.seconds())
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - deadline) < 0.001:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.apply(self.server.handle_deadline(self.clock.seconds()))
        except Exception:
            _log.failure("relay expiry failed")
        self.reschedule()
