"""The TUN device, read in batches by the reactor.

Packets are whole IP packets (``IFF_TUN | IFF_NO_PI``: no packet-information
header).  The file descriptor is non-blocking and added to the reactor as a
reader; each wake-up drains up to ``batch`` packets so that one epoll round
trip serves many packets (a TUN read costs about a microsecond, an epoll turn
much more).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
DEFAULT_NAME = "tun-firezone"
DEFAULT_MTU = 1280
#: Largest packet read; the MTU is 1280 but a misconfigured MTU must not truncate silently.
READ_SIZE = 65535


class TunError(OSError):
    """The TUN device could not be opened or configured."""


def open_tun(name: str = DEFAULT_NAME) -> tuple[int, str]:
    """Open ``/dev/net/tun`` as a non-blocking ``IFF_TUN | IFF_NO_PI`` device; (fd, name)."""
    if len(name.encode()) > 15:
        raise TunError(errno.EINVAL, f"interface name {name!r} is longer than 15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(e.errno, f"cannot open /dev/net/tun: {e.strerror}") from None
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        result = fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        os.close(fd)
        raise TunError(e.errno, f"cannot create TUN {name}: {e.strerror}") from None
    actual = result[:16].rstrip(b"\0").decode()
    return fd, actual


@dataclass
class TunStats:
    packets_read: int = 0
    bytes_read: int = 0
    packets_written: int = 0
    bytes_written: int = 0
    write_drops: int = 0


@implementer(IReadDescriptor)
class TunDevice:
    """A TUN file descriptor driven by the reactor.

    ``on_packets`` gets a list of packets per wake-up (the batch), so the data
    path above can amortise its own per-call costs too.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        fd: int,
        name: str,
        on_packets: Callable[[list[bytes]], None],
        batch: int = 64,
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self.name = name
        self._on_packets = on_packets
        self._batch = batch
        self.stats = TunStats()
        self._reading = False

    @classmethod
    def open(
        cls,
        reactor: IReactorFDSet,
        on_packets: Callable[[list[bytes]], None],
        name: str = DEFAULT_NAME,
        batch: int = 64,
    ) -> TunDevice:
        fd, actual = open_tun(name)
        return cls(reactor, fd, actual, on_packets, batch)

    # IReadDescriptor / ILoggingContext

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return f"tun:{self.name}"

    def doRead(self) -> None:
        packets: list[bytes] = []
        read = os.read
        fd = self._fd
        for _ in range(self._batch):
            try:
                packet = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not packet:
                break
            packets.append(packet)
        if packets:
            self.stats.packets_read += len(packets)
            self.stats.bytes_read += sum(map(len, packets))
            self._on_packets(packets)

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False

    # control

    def start_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def write(self, packet: bytes) -> bool:
        """Write one IP packet; a full queue drops it (as a kernel would), counted."""
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            self.stats.write_drops += 1
            return False
        except OSError as e:
            # EINVAL: not an IP packet the kernel accepts. Count it, never crash.
            self.stats.write_drops += 1
            _log.debug("TUN write failed: {error}", error=e)
            return False
        self.stats.packets_written += 1
        self.stats.bytes_written += len(packet)
        return True

    def close(self) -> None:
        self.stop_reading()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
