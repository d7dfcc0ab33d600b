"""Mirroring the relay's channel bindings into the XDP program's maps (pure: no BPF here).

The maps hold the only copy of the kernel's state: :class:`BindingMaps` writes
and deletes entries as the server's commands arrive and keeps nothing itself,
so what the kernel relays is exactly what the maps say.  Keys and values are
the reference's big-endian byte arrays (REFERENCE.md 3.4)::

    CHAN_TO_UDP_xx: ClientAndChannel{ip, port, channel} -> PortAndPeer
    UDP_TO_CHAN_xx: PortAndPeer{peer ip, allocation_port, peer_port} -> ClientAndChannel

``xx`` is the family of client and peer (``44`` or ``66``).  A binding whose
client and peer differ in family is not offloaded: the program finds no entry
and passes the packet to the userspace relay, which relays it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from firezone.relay.commands import (
    Address,
    Command,
    CreateChannelBinding,
    DeleteChannelBinding,
    FreeAllocation,
)
from firezone.relay.server import ChannelInfo
from firezone.wire.stun import AddressFamily

__all__ = [
    "BINDING_MAPS",
    "COUNTER_SLOTS",
    "BindingMaps",
    "ByteMap",
    "MapKeyError",
    "RelayConfig",
    "counters_from",
    "entries_for",
    "pack_client_channel",
    "pack_port_peer",
    "unpack_client_channel",
    "unpack_port_peer",
]

#: Map names exactly as in bpf/relay_xdp.c (and the reference).
BINDING_MAPS = ("CHAN_TO_UDP_44", "UDP_TO_CHAN_44", "CHAN_TO_UDP_66", "UDP_TO_CHAN_66")

#: Slots of the per-CPU ``COUNTERS`` array: (packets, bytes) per direction.
COUNTER_SLOTS = {"to_peer": (0, 1), "to_client": (2, 3)}


class MapKeyError(ValueError):
    """Bytes that are not a key or value of the binding maps."""


class ByteMap(Protocol):
    """A BPF hash map seen as bytes -> bytes (a dict in tests, a BCC table in the relay)."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None:
        """Remove ``key``; absent keys are ignored."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _packed_ip(ip: str) -> bytes:
    """4 or 16 bytes; an IPv4-mapped IPv6 address is the IPv4 packet it arrives as."""
    # inet_pton, not ipaddress: this runs for every binding command in the event loop.
    try:
        if ":" not in ip:
            return socket.inet_pton(socket.AF_INET, ip)
        packed = socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    except (OSError, ValueError) as e:
        raise MapKeyError(f"not an IP address: {ip!r}") from e
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def _port(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise MapKeyError(f"{what} {value} out of range")
    return value.to_bytes(2, "big")


def pack_client_channel(client: Address, channel: int) -> bytes:
    """``ClientAndChannelV4/V6``: ip | port (BE) | channel (BE)."""
    return _packed_ip(client[0]) + _port(client[1], "port") + _port(channel, "channel")


def pack_port_peer(peer: Address, allocation_port: int) -> bytes:
    """``PortAndPeerV4/V6``: peer ip | allocation port (BE) | peer port (BE)."""
    return (_packed_ip(peer[0]) + _port(allocation_port, "allocation port")
            + _port(peer[1], "peer port"))


def _split(data: bytes) -> tuple[str, int, int]:
    if len(data) not in (8, 20):
        raise MapKeyError(f"a binding map key or value is 8 or 20 bytes, not {len(data)}")
    raw = data[:-4]
    ip = str(IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw))
    first, second = struct.unpack(">HH", data[-4:])
    return ip, first, second


def unpack_client_channel(data: bytes) -> tuple[Address, int]:
    ip, port, channel = _split(data)
    return (ip, port), channel


def unpack_port_peer(data: bytes) -> tuple[Address, int]:
    """``(peer, allocation_port)``."""
    ip, allocation_port, peer_port = _split(data)
    return (ip, peer_port), allocation_port


def _suffix(client_ip: str, peer_ip: str) -> str | None:
    client, peer = len(_packed_ip(client_ip)), len(_packed_ip(peer_ip))
    if client != peer:
        return None
    return "44" if client == 4 else "66"


def entries_for(
    client: Address, channel: int, peer: Address, allocation_port: int
) -> dict[str, tuple[bytes, bytes]]:
    """The two map entries of one bound channel, by map name; empty if not offloadable."""
    suffix = _suffix(client[0], peer[0])
    if suffix is None:
        return {}
    forward = pack_client_channel(client, channel)
    backward = pack_port_peer(peer, allocation_port)
    return {f"CHAN_TO_UDP_{suffix}": (forward, backward),
            f"UDP_TO_CHAN_{suffix}": (backward, forward)}


class BindingMaps:
    """Applies binding commands to the four maps; holds no state of its own."""

    def __init__(self, maps: Mapping[str, ByteMap]) -> None:
        missing = [name for name in BINDING_MAPS if name not in maps]
        if missing:
            raise ValueError(f"missing maps: {', '.join(missing)}")
        self._maps = maps

    def apply(self, command: Command) -> None:
        """Mirror one command; anything but bindings and freed allocations is ignored."""
        if isinstance(command, CreateChannelBinding):
            for name, (key, value) in entries_for(
                command.client, command.channel, command.peer, command.allocation_port
            ).items():
                self._maps[name].put(key, value)
        elif isinstance(command, DeleteChannelBinding):
            for name, (key, _) in entries_for(
                command.client, command.channel, command.peer, command.allocation_port
            ).items():
                self._maps[name].delete(key)
        elif isinstance(command, FreeAllocation):
            self._free(command.port, command.family)

    def _free(self, port: int, family: AddressFamily) -> None:
        # The server deletes an allocation's bindings before freeing it, so this normally
        # finds nothing; it guarantees that no entry outlives its allocation port.
        suffix = "44" if family is AddressFamily.V4 else "66"
        backward, forward = self._maps[f"UDP_TO_CHAN_{suffix}"], self._maps[f"CHAN_TO_UDP_{suffix}"]
        wanted = port.to_bytes(2, "big")
        stale = [(k, v) for k, v in backward.items() if k[-4:-2] == wanted]
        for key, value in stale:
            backward.delete(key)
            if forward.get(value) == key:
                forward.delete(value)

    def reconcile(self, channels: Iterable[ChannelInfo]) -> None:
        """Make the maps hold exactly the bound channels (``TurnServer.channels()``).

        Entries that should exist are written first and stale ones removed after, so
        a binding that stays is relayed throughout.
        """
        wanted: dict[str, dict[bytes, bytes]] = {name: {} for name in BINDING_MAPS}
        for c in channels:
            if c.bound:
                for name, (key, value) in entries_for(
                    c.client, c.channel, c.peer, c.allocation_port
                ).items():
                    wanted[name][key] = value
        for name, entries in wanted.items():
            target = self._maps[name]
            for key, value in entries.items():
                if target.get(key) != value:
                    target.put(key, value)
            for key in [k for k, _ in target.items() if k not in entries]:
                target.delete(key)

    def entries(self) -> dict[str, int]:
        """Entries per map (a scan of each map: for tests and diagnostics)."""
        return {name: sum(1 for _ in self._maps[name].items()) for name in BINDING_MAPS}


def counters_from(per_cpu: Sequence[Sequence[int]]) -> dict[str, tuple[int, int]]:
    """``{"to_peer": (packets, bytes), "to_client": ...}`` from each slot's per-CPU values."""
    totals = [sum(values) for values in per_cpu]
    return {direction: (totals[p], totals[b]) for direction, (p, b) in COUNTER_SLOTS.items()}


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The ``CONFIG`` map's single ``struct relay_config`` (ports in host byte order)."""

    public_ip4: IPv4Address | None
    public_ip6: IPv6Address | None
    listen_port: int
    lowest_port: int
    highest_port: int
    max_ip_len: int

    _FORMAT = struct.Struct("=4s16sHHHH")

    def encode(self) -> bytes:
        if not 1 <= self.listen_port <= 0xFFFF or not (
            1 <= self.lowest_port <= self.highest_port <= 0xFFFF
        ):
            raise ValueError("invalid relay ports")
        return self._FORMAT.pack(
            self.public_ip4.packed if self.public_ip4 is not None else bytes(4),
            self.public_ip6.packed if self.public_ip6 is not None else bytes(16),
            self.listen_port, self.lowest_port, self.highest_port,
            min(self.max_ip_len, 0xFFFF),
        )
