"""Batched UDP for the userspace data paths: many datagrams per wake-up, one send per run.

Twisted's ``udp.Port`` hands datagrams to a protocol one at a time and has no
point where a read burst ends, so a data path cannot coalesce what it sends.
:class:`BatchedUDPPort` keeps Twisted's port for binding and closing the
socket (so ``reactor.listenUDP`` stays the one seam that tests fake) but reads
with its own :class:`BatchReader`, which hands up to ``max_batch`` datagrams
per reactor wake-up to a handler as one list.  The handler sends through a
:class:`DatagramSender`: a run of equal-size datagrams to one address leaves
in one ``sendmsg`` with UDP GSO (Linux 4.18+, ``UDP_SEGMENT``), which the
kernel splits into datagrams only on the wire (or at the receiving socket on
veth), so the per-datagram syscall and stack traversal is paid once per run.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "MAX_BATCH",
    "MAX_DATAGRAM",
    "SOL_UDP",
    "UDP_SEGMENT",
    "BatchHandler",
    "BatchReader",
    "BatchedUDPPort",
    "DatagramSender",
    "SendErrorHandler",
    "gso_run_limit",
]

_log = Logger()

Address = tuple[str, int]
#: Receives one wake-up's datagrams, ``(data, (host, port))`` in arrival order.
BatchHandler = Callable[[list[tuple[bytes, Address]]], None]
#: Told about a send the kernel refused: the error, the address and how many datagrams it cost.
SendErrorHandler = Callable[[OSError, Address, int], None]

SOL_UDP = 17
#: ``UDP_SEGMENT`` from ``linux/udp.h``: the cmsg carrying the GSO segment size.
UDP_SEGMENT = 103
#: The kernel's ``UDP_MAX_SEGMENTS`` before 6.x raised it; the portable ceiling.
GSO_MAX_SEGMENTS = 64
#: Largest UDP payload of one IPv4 datagram (65535 - 20 - 8); a GSO send is one such payload.
GSO_MAX_BYTES = 65507
#: Datagrams read per wake-up: enough to amortise the reactor, few enough to stay fair.
MAX_BATCH = 256
MAX_DATAGRAM = 65535

_SEGMENT_SIZE = struct.Struct("=H")
#: Errors meaning this socket's route cannot do GSO at all (no kernel support, no checksum
#: offload on the device, IPsec): stop trying on this socket.
_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: Errors meaning this segment size is too big for the route's MTU (EMSGSIZE on 6.x, EINVAL
#: on older kernels): use GSO only below it.
_GSO_TOO_LARGE = frozenset({errno.EINVAL, errno.EMSGSIZE})
_gso_reported: set[int] = set()


def gso_run_limit(segment: int) -> int:
    """How many ``segment``-byte datagrams one GSO send may carry (1: send it alone)."""
    if segment <= 0:
        return 1
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))


class DatagramSender:
    """Sends on one UDP socket; errors go to ``on_error``, never raise.

    :meth:`send_run` takes datagrams to one address, all ``segment`` bytes
    long except possibly the last, which may be shorter (the GSO contract),
    at most :func:`gso_run_limit` of them.  If the kernel refuses GSO for
    this socket's route the run is sent datagram by datagram and the sender
    remembers: the whole socket when GSO is unavailable, or this segment size
    and above when it exceeds the path MTU.
    """

    __slots__ = ("_on_error", "_sendmsg", "gso_max_segment", "sendto", "socket")

    def __init__(self, sock: Any, on_error: SendErrorHandler) -> None:
        self.socket = sock
        self.sendto: Callable[[bytes, Address], int] = sock.sendto
        self._sendmsg = sock.sendmsg
        self._on_error = on_error
        #: Runs of datagrams up to this size go out with GSO; 0 once GSO failed for good.
        self.gso_max_segment = GSO_MAX_BYTES

    def send(self, data: bytes, address: Address) -> None:
        try:
            self.sendto(data, address)
        except OSError as e:
            self._on_error(e, address, 1)

    def send_run(self, run: list[bytes], segment: int, address: Address) -> None:
        if len(run) == 1 or segment > self.gso_max_segment:
            self._send_each(run, address)
            return
        try:
            self._sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment))], 0, address)
        except OSError as e:
            if e.errno in _GSO_UNSUPPORTED:
                self.gso_max_segment = 0
            elif e.errno in _GSO_TOO_LARGE:
                self.gso_max_segment = min(self.gso_max_segment, segment - 1)
            else:
                # A full buffer or an unreachable address drops the whole run, as it would
                # each datagram.
                self._on_error(e, address, len(run))
                return
            self._report_fallback(e, segment)
            self._send_each(run, address)

    def _send_each(self, run: list[bytes], address: Address) -> None:
        sendto = self.sendto
        for data in run:
            try:
                sendto(data, address)
            except OSError as e:
                self._on_error(e, address, 1)

    def _report_fallback(self, error: OSError, segment: int) -> None:
        # One info line per kind of refusal per process; the rest (one per socket) at debug.
        key = error.errno or 0
        level = _log.debug if key in _gso_reported else _log.info
        _gso_reported.add(key)
        if self.gso_max_segment:
            level("UDP GSO refused for {segment}-byte datagrams ({error}); sending those "
                  "one by one on this socket", segment=segment, error=error)
        else:
            level("UDP GSO unavailable ({error}); sending datagrams one by one on this socket",
                  error=error)


@implementer(IReadDescriptor)
class BatchReader:
    """Reads up to ``max_batch`` datagrams per wake-up and hands them over as one list.

    IPv6 addresses are cut to ``(host, port)`` as Twisted's port does.  Read
    errors never propagate to the reactor (which would stop reading the
    socket for good): an empty queue, a signal or a reported ICMP error ends
    or skips a read, anything else is counted and logged (sparsely: a
    persistent error would otherwise log at every wake-up).
    """

    def __init__(
        self,
        sock: Any,
        handler: BatchHandler,
        *,
        ipv6: bool,
        max_batch: int = MAX_BATCH,
        max_size: int = MAX_DATAGRAM,
        name: str = "udp",
    ) -> None:
        self.socket = sock
        self.handler = handler
        self.ipv6 = ipv6
        self.max_batch = max_batch
        self.max_size = max_size
        self.name = name
        self.read_errors = 0

    def fileno(self) -> int:
        return int(self.socket.fileno())

    def logPrefix(self) -> str:
        return self.name

    def connectionLost(self, reason: Failure) -> None:
        # Only the reactor calls this (it never does for an unraised doRead); the port's
        # owner closes the socket.
        _log.warn("{name}: reactor dropped the reader: {reason}", name=self.name, reason=reason)

    def doRead(self) -> None:
        recvfrom = self.socket.recvfrom
        size = self.max_size
        batch: list[tuple[bytes, Address]] = []
        append = batch.append
        ipv6 = self.ipv6
        for _ in range(self.max_batch):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue  # an ICMP error was pending; datagrams may be queued behind it
            except OSError as e:
                self.read_errors += 1
                if self.read_errors & (self.read_errors - 1) == 0:  # 1st, 2nd, 4th, 8th...
                    _log.warn("{name}: receive failed ({count} so far): {error}",
                              name=self.name, count=self.read_errors, error=e)
                break
            append((data, addr[:2]) if ipv6 else (data, addr))
        if batch:
            try:
                self.handler(batch)
            except Exception:
                _log.failure("{name}: handling {n} datagrams failed", name=self.name,
                             n=len(batch))


class _SingleDatagrams(DatagramProtocol):
    """What Twisted's port would call if it still read: a batch of one."""

    def __init__(self, handler: BatchHandler) -> None:
        self.handler = handler

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.handler([(data, (addr[0], addr[1]))])


class BatchedUDPPort:
    """A UDP port read in batches: Twisted binds and closes the socket, we read it.

    ``listen`` raises ``CannotListenError`` like ``listenUDP``.  ``stopListening``
    removes the reader from the reactor before Twisted closes the socket.
    """

    def __init__(self, reactor: Any, port: Any, reader: BatchReader,
                 sender: DatagramSender) -> None:
        self.reactor = reactor
        self.port = port
        self.reader = reader
        self.sender = sender
        self.socket = port.socket

    @classmethod
    def listen(
        cls,
        reactor: Any,
        port: int,
        interface: str,
        handler: BatchHandler,
        on_send_error: SendErrorHandler,
        *,
        max_batch: int = MAX_BATCH,
        prepare: Callable[[socket.socket], object] | None = None,
    ) -> BatchedUDPPort:
        """Bind ``interface:port`` through ``reactor.listenUDP`` and start batched reading.

        ``prepare`` is called with the socket before the first read (buffer sizes).
        """
        listening = reactor.listenUDP(port, _SingleDatagrams(handler), interface=interface,
                                      maxPacketSize=MAX_DATAGRAM)
        if prepare is not None:
            prepare(listening.socket)
        reader = BatchReader(listening.socket, handler, ipv6=":" in interface,
                             max_batch=max_batch, name=f"udp {interface}:{port}")
        listening.stopReading()
        reactor.addReader(reader)
        return cls(reactor, listening, reader, DatagramSender(listening.socket, on_send_error))

    def getHost(self) -> Any:
        return self.port.getHost()

    def stopListening(self) -> Any:
        self.reactor.removeReader(self.reader)
        return self.port.stopListening()
