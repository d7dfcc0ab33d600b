"""Small real implementations of reactor interfaces the Twisted test helpers lack."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock


class FakeSocket:
    """What the adapters touch of a UDP socket: sendto and setsockopt."""

    def __init__(self, port: FakeUDPPort) -> None:
        self._port = port
        self.options: dict[tuple[int, int], int] = {}

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self._port.closed:
            raise OSError(9, "Bad file descriptor")
        self._port.sent.append((bytes(data), (address[0], address[1])))
        return len(data)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[(level, option)] = value


class FakeUDPPort:
    """A listening UDP port: records what is sent, lets a test deliver datagrams."""

    def __init__(self, reactor: FakeUDPReactor, port: int, protocol: Any, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False
        self.socket = FakeSocket(self)
        protocol.transport = self
        protocol.doStart()

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.socket.sendto(data, address)

    def deliver(self, data: bytes, sender: tuple[str, int]) -> None:
        self.protocol.datagramReceived(data, sender)

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address, IPv6Address

        cls = IPv6Address if ":" in self.interface else IPv4Address
        return cls("UDP", self.interface, self.port)

    def stopListening(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.doStop()
            self.reactor.udp_ports.pop((self.interface, self.port), None)


class FakeUDPReactor(MemoryReactorClock):
    """``MemoryReactorClock`` plus ``listenUDP``; ports can be made unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.udp_ports: dict[tuple[str, int], FakeUDPPort] = {}
        self.busy_ports: set[int] = set()

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUDPPort:
        if port in self.busy_ports or (interface, port) in self.udp_ports:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listening = FakeUDPPort(self, port, protocol, interface)
        self.udp_ports[(interface, port)] = listening
        return listening
