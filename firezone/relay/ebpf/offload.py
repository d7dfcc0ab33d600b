"""The relay's XDP offload: attach, mirror channel bindings, report counters, detach.

Wiring (what ``firezone.relay.tap`` does)::

    offload = XdpOffload(iface, mode, public_ip4, public_ip6, listen_port, lowest, highest)
    offload.start()                          # raises XdpOffloadError: refuse to start
    udp.add_binding_observer(offload.observe)
    collector.datapaths["xdp"] = offload.counters
    XdpOffloadService(offload, server).setServiceParent(root)   # detaches on stop

The userspace relay stays the authority: the program relays only what the
maps hold, the maps hold only what :meth:`XdpOffload.observe` wrote in the same
event-loop turn as the server's command, and anything the program does not
relay reaches the sockets as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from twisted.application.service import Service
from twisted.logger import Logger

from firezone.relay.commands import Command
from firezone.relay.ebpf import syscall
from firezone.relay.ebpf.loader import XdpOffloadError, XdpProgram
from firezone.relay.ebpf.maps import RelayConfig
from firezone.relay.server import TurnServer

__all__ = ["AttachMode", "XdpOffload", "XdpOffloadService"]

_log = Logger()


class AttachMode(Enum):
    """``driver``: native XDP in the NIC driver; ``generic``: after the skb is built (slower,
    works on every interface)."""

    DRIVER = "driver"
    GENERIC = "generic"

    @classmethod
    def parse(cls, value: str) -> AttachMode:
        """For ``--ebpf-attach-mode``/``EBPF_ATTACH_MODE``: a ValueError that names the choices."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise ValueError(f"{value!r} is not an attach mode: use driver or generic") from None

    @property
    def flags(self) -> int:
        if self is AttachMode.DRIVER:
            return syscall.XDP_FLAGS_DRV_MODE
        return syscall.XDP_FLAGS_SKB_MODE


_SIOCGIFMTU = 0x8921


def _mtu(iface: str) -> int:
    """The interface's MTU, asked in the current network namespace (sysfs may show another)."""
    request = struct.pack("16si12x", iface.encode()[:15], 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        reply = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, request)
    return int(struct.unpack_from("i", reply, 16)[0])


class XdpOffload:
    """One attachment of the relay program to one interface."""

    def __init__(
        self,
        iface: str,
        mode: AttachMode | str,
        public_ip4: IPv4Address | None,
        public_ip6: IPv6Address | None,
        listen_port: int = 3478,
        lowest_port: int = 49152,
        highest_port: int = 65535,
        program: XdpProgram | None = None,
    ) -> None:
        self.iface = iface
        self.mode = AttachMode(mode)
        self.public_ip4 = public_ip4
        self.public_ip6 = public_ip6
        self.listen_port = listen_port
        self.lowest_port = lowest_port
        self.highest_port = highest_port
        self.program = program
        self._link_fd: int | None = None

    @property
    def attached(self) -> bool:
        return self._link_fd is not None

    def start(self) -> None:
        """Load (unless given a program), configure and attach; XdpOffloadError says why not."""
        if self._link_fd is not None:
            return
        try:
            ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            raise XdpOffloadError(f"interface {self.iface} not found") from None
        if self.program is None:
            self.program = XdpProgram.load()
        self.program.configure(RelayConfig(
            self.public_ip4, self.public_ip6, self.listen_port, self.lowest_port,
            self.highest_port, _mtu(self.iface)))
        try:
            self._link_fd = syscall.link_create_xdp(self.program.fd, ifindex, self.mode.flags)
        except syscall.BpfError as e:
            raise XdpOffloadError(
                f"cannot attach XDP to {self.iface} in {self.mode.value} mode: {e.strerror}"
                + (" (another XDP program is attached)" if e.errno == errno.EBUSY else "")
                + (" (the driver has no native XDP; try generic mode)"
                   if e.errno == errno.EOPNOTSUPP and self.mode is AttachMode.DRIVER else "")
            ) from e
        _log.info("XDP offload attached to {iface} ({mode} mode)", iface=self.iface,
                  mode=self.mode.value)

    def stop(self) -> None:
        """Detach (closing the link detaches) and forget every binding."""
        if self._link_fd is None:
            return
        os.close(self._link_fd)
        self._link_fd = None
        if self.program is not None:
            self.program.clear()
        _log.info("XDP offload detached from {iface}", iface=self.iface)

    def observe(self, command: Command) -> None:
        """The binding observer for ``RelayUDP.add_binding_observer``: mirror one command."""
        if self.program is not None:
            self.program.bindings.apply(command)

    def reconcile(self, server: TurnServer) -> None:
        """Rewrite the maps from the server's channels (start-up with existing state)."""
        if self.program is not None:
            self.program.bindings.reconcile(server.channels())

    def counters(self) -> dict[str, tuple[int, int]]:
        """For ``RelayCollector.datapaths["xdp"]``."""
        if self.program is None:
            return {"to_peer": (0, 0), "to_client": (0, 0)}
        return self.program.counters()

    def map_entries(self) -> dict[str, int]:
        """Entries per binding map (scans the maps: diagnostics and tests)."""
        if self.program is None:
            return {}
        return self.program.bindings.entries()


class XdpOffloadService(Service):
    """Keeps an offload attached while the relay runs: start (if not yet), reconcile, detach.

    Start the offload before building this (in ``makeService``) to refuse to start with
    its error; starting here too makes the service usable on its own.
    """

    def __init__(self, offload: XdpOffload, server: TurnServer) -> None:
        self.offload = offload
        self.server = server

    def startService(self) -> None:
        self.offload.start()
        self.offload.reconcile(self.server)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.offload.stop()
