"""Tunnel address pools and the probe order used to allocate device addresses.

Every device (client or gateway) gets one IPv4 and one IPv6 tunnel address,
unique within its account, from the reference system's ranges.  The store picks
a random start and probes linearly from there inside one transaction, so two
accounts draw independent addresses and a fresh account does not hand out
``100.64.0.1``, ``100.64.0.2``, ... in a guessable order.

Pure: no clock, no randomness (the caller supplies the random start), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_network

TUNNEL_IPV4: IPv4Network = IPv4Network("100.64.0.0/11")
TUNNEL_IPV6: IPv6Network = IPv6Network("fd00:2021:1111::/107")


class PoolExhausted(Exception):
    """Every usable address of a pool is taken in this account."""


def usable_count(network: IPv4Network | IPv6Network) -> int:
    """How many addresses of ``network`` may be given to devices.

    The first (network / subnet-router anycast) and the last (broadcast-like)
    address are never handed out.
    """
    return max(network.num_addresses - 2, 0)


def address_at(network: IPv4Network | IPv6Network, index: int) -> str:
    """The ``index``-th usable address of ``network`` in canonical text form."""
    if not 0 <= index < usable_count(network):
        raise IndexError(f"index {index} outside the usable part of {network}")
    return str(network[index + 1])


def probe(network: IPv4Network | IPv6Network, start: int) -> Iterator[str]:
    """Every usable address once, beginning at index ``start`` and wrapping around."""
    count = usable_count(network)
    for step in range(count):
        yield address_at(network, (start + step) % count)


def in_pool(network: IPv4Network | IPv6Network, address: str) -> bool:
    """Whether ``address`` is a usable address of ``network``."""
    try:
        host = ip_network(address)
    except ValueError:
        return False
    if host.num_addresses != 1 or host.version != network.version:
        return False
    offset = int(host.network_address) - int(network.network_address)
    return 1 <= offset <= usable_count(network)
