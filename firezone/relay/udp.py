"""The Twisted side of the relay: UDP sockets that feed the pure ``TurnServer``.

One socket per address family on the listen port (3478) carries STUN and
ChannelData from clients; one socket per allocation port and family carries
traffic from peers.  The adapter translates datagrams into calls on the
server and the server's commands into socket operations; it holds no protocol
logic.

The data paths are batched (:mod:`firezone.common.udp_batch`): each reactor
wake-up reads up to 256 datagrams from a socket, asks the server's fast paths
for each one's route and sends consecutive equal-size datagrams to the same
address as one UDP GSO ``sendmsg``.  Sending is never deferred past the
wake-up, and everything queued is sent before a STUN message is handled, so
datagrams leave in the order they would one by one and the commands a STUN
message yields (sockets, binding observers) apply in the same turn.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from firezone.common.logging import RateLimitedLog
from firezone.common.sockets import grow_buffers
from firezone.common.udp_batch import BatchedUDPPort, DatagramSender, gso_run_limit
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
_QUIET_SEND_ERRORS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED})


def _family(ip: str) -> AddressFamily:
    return AddressFamily.V6 if ":" in ip else AddressFamily.V4


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
        self._listen: dict[AddressFamily, BatchedUDPPort] = {}
        self._allocations: dict[tuple[int, AddressFamily], BatchedUDPPort] = {}
        # The data paths' lookups: allocation port -> sender, per family of the peer.
        self._to_peer4: dict[int, DatagramSender] = {}
        self._to_peer6: dict[int, DatagramSender] = {}
        self._timer: IDelayedCall | None = None
        self._binding_observers = list(binding_observers)
        self.send_errors = 0
        self._warn = RateLimitedLog(_log, reactor.seconds)

    # service lifetime

    def startService(self) -> None:
        for family, ip in self.bind_ips.items():
            self._listen[family] = BatchedUDPPort.listen(
                self.reactor, self.server.listen_port, ip, self._from_clients, self._send_failed,
                prepare=grow_buffers)
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
        self._to_peer4.clear()
        self._to_peer6.clear()
        self._listen.clear()

    @property
    def listening_ports(self) -> dict[AddressFamily, int]:
        return {family: port.getHost().port for family, port in self._listen.items()}

    def add_binding_observer(self, observer: BindingObserver) -> None:
        """Called with every Create/DeleteChannelBinding and FreeAllocation, in order."""
        self._binding_observers.append(observer)

    # the data paths

    def _from_clients(self, batch: list[tuple[bytes, Address]]) -> None:
        """One wake-up of the listen port: ChannelData to peers in GSO runs, STUN in order."""
        route = self.server.relay_client_channel_data
        to_peer4, to_peer6 = self._to_peer4, self._to_peer6
        run: list[bytes] = []
        segment = limit = port = 0
        peer: Address = ("", 0)
        sender = cast(DatagramSender, None)  # set whenever ``run`` is not empty
        for data, sender_address in batch:
            if data and 64 <= data[0] <= 127:  # channels 0x4000-0x7FFF (RFC 8656 12)
                routed = route(data, sender_address)
                if routed is None:
                    continue
                payload, to_port, to_peer = routed
                n = len(payload)
                if run and to_port == port and to_peer == peer and len(run) < limit:
                    if n == segment:
                        run.append(payload)
                        continue
                    if n < segment:  # a shorter datagram ends a GSO run
                        run.append(payload)
                        sender.send_run(run, segment, peer)
                        run = []
                        continue
                if run:
                    sender.send_run(run, segment, peer)
                    run = []
                found = (to_peer6 if ":" in to_peer[0] else to_peer4).get(to_port)
                if found is None:
                    self.send_errors += 1
                    continue
                sender = found
                run = [payload]
                segment, limit, port, peer = n, gso_run_limit(n), to_port, to_peer
            else:
                if run:
                    sender.send_run(run, segment, peer)
                    run = []
                try:
                    self.apply(self.server.handle_client_input(
                        data, sender_address, self.clock.seconds()))
                    self.reschedule()
                except Exception:
                    _log.failure("relay failed on a STUN message from {sender}",
                                 sender=sender_address)
        if run:
            sender.send_run(run, segment, peer)

    def _from_peers(self, allocation_port: int) -> Callable[[list[tuple[bytes, Address]]], None]:
        """The batch handler of one allocation port: peer data to clients as ChannelData."""
        route = self.server.relay_peer_data
        listen = self._listen

        def from_peers(batch: list[tuple[bytes, Address]]) -> None:
            run: list[bytes] = []
            segment = limit = 0
            client: Address = ("", 0)
            sender = cast(DatagramSender, None)  # set whenever ``run`` is not empty
            for data, peer in batch:
                routed = route(data, peer, allocation_port)
                if routed is None:
                    continue
                message, to_client = routed
                n = len(message)
                if run and to_client == client and len(run) < limit:
                    if n == segment:
                        run.append(message)
                        continue
                    if n < segment:
                        run.append(message)
                        sender.send_run(run, segment, client)
                        run = []
                        continue
                if run:
                    sender.send_run(run, segment, client)
                    run = []
                port = listen.get(AddressFamily.V6 if ":" in to_client[0] else AddressFamily.V4)
                if port is None:
                    self.send_errors += 1
                    continue
                sender = port.sender
                run = [message]
                segment, limit, client = n, gso_run_limit(n), to_client
            if run:
                sender.send_run(run, segment, client)

        return from_peers

    # sending (commands)

    def send_from_allocation(self, payload: bytes, port: int, peer: Address) -> None:
        sender = (self._to_peer6 if ":" in peer[0] else self._to_peer4).get(port)
        if sender is None:
            self.send_errors += 1
            return
        sender.send(payload, peer)

    def send_to_client(self, message: bytes, client: Address) -> None:
        port = self._listen.get(_family(client[0]))
        if port is None:
            self.send_errors += 1
            return
        port.sender.send(message, client)

    def _send_failed(self, error: OSError, address: Address, datagrams: int) -> None:
        # A full buffer or an unreachable peer drops datagrams, as UDP does.
        self.send_errors += datagrams
        if error.errno not in _QUIET_SEND_ERRORS:
            self._warn.warn(("send", error.errno), "relay send to {address} failed: {error}",
                            address=address, error=error)

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
            listening = BatchedUDPPort.listen(self.reactor, port, ip, self._from_peers(port),
                                              self._send_failed, prepare=grow_buffers)
        except CannotListenError as e:
            _log.warn("cannot bind allocation port {port}: {error}", port=port, error=e)
            self.apply(self.server.handle_allocation_failed(port))
            return False
        self._allocations[(port, family)] = listening
        senders = self._to_peer6 if family == AddressFamily.V6 else self._to_peer4
        senders[port] = listening.sender
        return True

    def _close_allocation(self, port: int, family: AddressFamily) -> None:
        listening = self._allocations.pop((port, family), None)
        if listening is not None:
            (self._to_peer6 if family == AddressFamily.V6 else self._to_peer4).pop(port, None)
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
