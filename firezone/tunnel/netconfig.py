"""Addresses, MTU and routes of the TUN device, through netlink (pyroute2)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class NetConfigError(OSError):
    """A netlink request failed; the message names the device and the request."""


def configure_interface(
    name: str,
    mtu: int,
    addresses: Iterable[str] = (),
    routes: Iterable[str] = (),
) -> None:
    """Set ``name`` up with ``mtu``, add ``addresses`` (CIDR) and route ``routes`` to it.

    Existing identical addresses and routes are left alone, so a restart or a
    repeated ``init`` from the portal is harmless.
    """
    with IPRoute() as ipr:
        index = _index(ipr, name)
        try:
            ipr.link("set", index=index, mtu=mtu, state="up")
        except NetlinkError as e:
            raise NetConfigError(e.code, f"{name}: cannot set MTU {mtu} and up: {e}") from None
        for address in addresses:
            iface = ipaddress.ip_interface(address)
            try:
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST
                    raise NetConfigError(e.code, f"{name}: cannot add {address}: {e}") from None
        for route in routes:
            network = ipaddress.ip_network(route, strict=False)
            try:
                ipr.route("replace", dst=str(network), oif=index)
            except NetlinkError as e:
                raise NetConfigError(e.code, f"{name}: cannot route {route}: {e}") from None


def remove_routes(name: str, routes: Iterable[str]) -> None:
    """Delete routes to ``name``; routes that are already gone are fine."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for route in routes:
            network = ipaddress.ip_network(route, strict=False)
            try:
                ipr.route("del", dst=str(network), oif=index)
            except NetlinkError as e:
                if e.code not in (3, 2):  # ESRCH, ENOENT
                    raise NetConfigError(e.code, f"{name}: cannot remove {route}: {e}") from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetConfigError(19, f"no such interface {name}")
    return int(found[0])
