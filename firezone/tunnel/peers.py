"""Which peer a packet from the TUN belongs to: longest-prefix match on allowed IPs.

The client and the gateway both keep one of these: destination address ->
peer, and peer -> its current UDP endpoint.  It is pure and knows nothing of
WireGuard; peers are opaque keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]


class PeerTable(Generic[K]):
    """Allowed-IPs routing for both address families, with per-peer endpoints."""

    def __init__(self) -> None:
        # Per family: prefix length -> {network address as int: peer}
        self._routes: dict[int, dict[int, dict[int, K]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self._allowed: dict[K, set[Network]] = {}
        self.endpoints: dict[K, Endpoint] = {}

    def add(self, peer: K, allowed: Iterable[str | Network], endpoint: Endpoint | None = None
            ) -> None:
        """Route ``allowed`` networks to ``peer`` (a network already routed moves to it)."""
        nets = {ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
                for n in allowed}
        for net in nets:
            for other, other_nets in self._allowed.items():
                if other != peer:
                    other_nets.discard(net)
            by_len = self._routes[net.version].setdefault(net.prefixlen, {})
            by_len[int(net.network_address)] = peer
        self._allowed.setdefault(peer, set()).update(nets)
        self._reindex()
        if endpoint is not None:
            self.endpoints[peer] = endpoint

    def remove(self, peer: K) -> None:
        """Forget ``peer`` and every route to it."""
        for net in self._allowed.pop(peer, set()):
            by_len = self._routes[net.version].get(net.prefixlen, {})
            if by_len.get(int(net.network_address)) == peer:
                del by_len[int(net.network_address)]
        self.endpoints.pop(peer, None)
        self._reindex()

    def allowed(self, peer: K) -> set[Network]:
        return set(self._allowed.get(peer, ()))

    def peers(self) -> list[K]:
        return list(self._allowed)

    def lookup(self, address: int, version: int) -> K | None:
        """The peer for a destination address (as an int), longest prefix first."""
        routes = self._routes[version]
        bits = 32 if version == 4 else 128
        for length in self._lengths[version]:
            mask = ((1 << length) - 1) << (bits - length) if length else 0
            peer = routes[length].get(address & mask)
            if peer is not None:
                return peer
        return None

    def lookup_packet(self, packet: bytes) -> K | None:
        """The peer for an IP packet's destination; None for anything unroutable."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self.lookup(int.from_bytes(packet[16:20], "big"), 4)
        if version == 6 and len(packet) >= 40:
            return self.lookup(int.from_bytes(packet[24:40], "big"), 6)
        return None

    def source_allowed(self, peer: K, packet: bytes) -> bool:
        """True when a decrypted packet's source address is inside the peer's allowed IPs."""
        if not packet:
            return False
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self.lookup(int.from_bytes(packet[12:16], "big"), 4) == peer
        if version == 6 and len(packet) >= 40:
            return self.lookup(int.from_bytes(packet[8:24], "big"), 6) == peer
        return False

    def _reindex(self) -> None:
        for version in (4, 6):
            routes = self._routes[version]
            for length in [n for n, table in routes.items() if not table]:
                del routes[length]
            self._lengths[version] = sorted(routes, reverse=True)
