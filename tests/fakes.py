"""Small real implementations of reactor interfaces the Twisted test helpers lack."""

from __future__ import annotations

import errno
import itertools
import struct
from collections import deque
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock


class FakeSocket:
    """What the adapters touch of a UDP socket: sendto and setsockopt."""

    #: The kernel's limits on one UDP GSO send (``UDP_MAX_SEGMENTS``, IPv4 payload).
    GSO_MAX_SEGMENTS = 64
    GSO_MAX_BYTES = 65507
    _fds = itertools.count(1000)

    def __init__(self, port: FakeUDPPort) -> None:
        self._port = port
        self.options: dict[tuple[int, int], int] = {}
        # What recvfrom returns, in order: a datagram ``(data, address)`` or an OSError to raise.
        self.inbox: deque[tuple[bytes, tuple[Any, ...]] | OSError] = deque()
        #: errno a GSO sendmsg fails with (EIO: no checksum offload; ENOPROTOOPT: old kernel).
        self.gso_errno: int | None = None
        #: GSO segments above this size fail with EMSGSIZE, as above the route's MTU (6.x).
        self.gso_max_segment = 65535
        #: errno every sendto/sendmsg fails with (EAGAIN: a full send buffer).
        self.send_errno: int | None = None
        self.sendmsg_calls = 0
        self._fd = next(self._fds)

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self._port.closed:
            raise OSError(9, "Bad file descriptor")
        if self.send_errno is not None:
            raise OSError(self.send_errno, errno.errorcode[self.send_errno])
        self._port.sent.append((bytes(data), (address[0], address[1])))
        self._port.reactor.wire.append((self._port, bytes(data), (address[0], address[1])))
        return len(data)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0,
                address: tuple[str, int] | None = None) -> int:
        """Linux's UDP sendmsg: a ``(SOL_UDP, UDP_SEGMENT)`` cmsg makes one GSO send.

        The kernel's checks apply: at most 64 segments, one datagram's worth of
        payload, a segment size the route can carry.  The receiver sees the
        segments as separate datagrams, so they are recorded in ``sent`` one by one.
        """
        self.sendmsg_calls += 1
        assert address is not None
        if self._port.closed:
            raise OSError(9, "Bad file descriptor")
        if self.send_errno is not None:
            raise OSError(self.send_errno, errno.errorcode[self.send_errno])
        data = b"".join(bytes(b) for b in buffers)
        segment = None
        for level, kind, value in ancdata:
            if (level, kind) == (17, 103):
                (segment,) = struct.unpack("=H", value)
        if not segment or len(data) <= segment:
            return self.sendto(data, address)
        if self.gso_errno is not None:
            raise OSError(self.gso_errno, errno.errorcode[self.gso_errno])
        if len(data) > self.GSO_MAX_BYTES:
            raise OSError(errno.EMSGSIZE, "Message too long")
        if segment > self.gso_max_segment:
            raise OSError(errno.EMSGSIZE, "Message too long")
        count = -(-len(data) // segment)
        if count > self.GSO_MAX_SEGMENTS:
            raise OSError(errno.EINVAL, "Invalid argument")
        self._port.gso_sends.append((segment, count, (address[0], address[1])))
        for offset in range(0, len(data), segment):
            self.sendto(data[offset:offset + segment], address)
        return len(data)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[Any, ...]]:
        if self._port.closed:
            raise OSError(9, "Bad file descriptor")
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        item = self.inbox.popleft()
        if isinstance(item, OSError):
            raise item
        return item[0][:size], item[1]

    def fileno(self) -> int:
        return -1 if self._port.closed else self._fd

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
        #: One ``(segment size, datagrams, address)`` per GSO send.
        self.gso_sends: list[tuple[int, int, tuple[str, int]]] = []
        self.closed = False
        self.reading = True
        self.socket = FakeSocket(self)
        protocol.transport = self
        protocol.doStart()

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.socket.sendto(data, address)

    def deliver(self, data: bytes, sender: tuple[str, int]) -> None:
        self.protocol.datagramReceived(data, sender)

    def queue(self, data: bytes, sender: tuple[Any, ...]) -> None:
        """Put a datagram in the socket's receive queue (for a reader of ``socket``)."""
        self.socket.inbox.append((data, sender))

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address, IPv6Address

        cls = IPv6Address if ":" in self.interface else IPv4Address
        return cls("UDP", self.interface, self.port)

    def stopListening(self) -> None:
        if not self.closed:
            self.closed = True
            self.reading = False
            self.protocol.doStop()
            self.reactor.udp_ports.pop((self.interface, self.port), None)


class FakeUDPReactor(MemoryReactorClock):
    """``MemoryReactorClock`` plus ``listenUDP``; ports can be made unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.udp_ports: dict[tuple[str, int], FakeUDPPort] = {}
        self.busy_ports: set[int] = set()
        #: Every datagram any port sent, in order: ``(port, data, address)``.
        self.wire: list[tuple[FakeUDPPort, bytes, tuple[str, int]]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUDPPort:
        if port in self.busy_ports or (interface, port) in self.udp_ports:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listening = FakeUDPPort(self, port, protocol, interface)
        self.udp_ports[(interface, port)] = listening
        return listening
