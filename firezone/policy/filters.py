"""Validation of resource addresses, IP stacks and traffic filters (user input).

Address rules per type (reference ``Portal.Resource.changeset``):

* ``cidr``: any IPv4/IPv6 network, host bits allowed and cleared
  (``10.0.0.7/24`` -> ``10.0.0.0/24``); a bare address becomes ``/32`` or
  ``/128``;
* ``ip``: one IPv4 or IPv6 address, normalised (``2001:DB8::01`` -> ``2001:db8::1``);
* both refuse a port, ranges that contain or lie in ``0.0.0.0``/``::`` (use the
  internet resource), loopback (``127.0.0.0/8``, ``::1``) and the tunnel's own
  ranges (``100.64.0.0/10``, ``fd00:2021:1111::/48``);
* ``dns``: :func:`firezone.dns_pattern.validate_pattern`;
* ``internet``: no address.

Filters: ``{"protocol": "tcp"|"udp"|"icmp", "ports": ["80", "8000-8080"]}``;
ports 1-65535, ranges must not overlap, ``icmp`` takes no ports, a protocol
appears at most once; no ports means all ports.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Mapping

from firezone.dns_pattern import InvalidPattern, validate_pattern
from firezone.policy.errors import InvalidFilter, InvalidResource
from firezone.policy.model import (
    IP_STACKS,
    PROTOCOLS,
    RESOURCE_TYPES,
    Filter,
    FilterProtocol,
    IpStack,
    PortRange,
)

__all__ = [
    "InvalidFilter",
    "InvalidResource",
    "parse_filter",
    "parse_filters",
    "parse_port_range",
    "validate_ip_stack",
    "validate_resource_address",
]

_PORT_RE = re.compile(r"\A\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?\Z")
_PROTOCOL_NUMBERS = {6: "tcp", 17: "udp", 1: "icmp"}

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FULL_TUNNEL = (ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128"))
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_RESERVED = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00:2021:1111::/48"))


def parse_port_range(value: str | int) -> PortRange:
    """``80``, ``"80"`` or ``"8000-8080"`` -> an inclusive range within 1-65535."""
    if isinstance(value, bool):
        raise InvalidFilter(f"invalid port {value!r}")
    if isinstance(value, int):
        start = end = value
    elif isinstance(value, str):
        m = _PORT_RE.match(value)
        if m is None:
            raise InvalidFilter(f"invalid port or port range {value!r}, expected 80 or 8000-8080")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else start
    else:
        raise InvalidFilter(f"invalid port {value!r}")
    if not (1 <= start <= 65535 and 1 <= end <= 65535):
        raise InvalidFilter(f"port {value!r} must be between 1 and 65535")
    if start > end:
        raise InvalidFilter(f"port range {value!r} must not end before it starts")
    return PortRange(start, end)


def parse_filter(data: Mapping[str, object]) -> Filter:
    """One filter from ``{"protocol", "ports"}``; protocol also as 6/17/1."""
    if not isinstance(data, Mapping):
        raise InvalidFilter(f"a filter must be an object, got {data!r}")
    unknown = set(data) - {"protocol", "ports"}
    if unknown:
        raise InvalidFilter(f"unknown filter keys: {', '.join(sorted(map(str, unknown)))}")
    raw_protocol = data.get("protocol")
    if isinstance(raw_protocol, int) and not isinstance(raw_protocol, bool):
        protocol = _PROTOCOL_NUMBERS.get(raw_protocol)
    elif isinstance(raw_protocol, str):
        protocol = raw_protocol.strip().lower()
    else:
        protocol = None
    if protocol not in PROTOCOLS:
        raise InvalidFilter(f"protocol must be one of icmp, tcp, udp, got {raw_protocol!r}")
    raw_ports = data.get("ports") or []
    if not isinstance(raw_ports, list | tuple):
        raise InvalidFilter("ports must be a list")
    ports = tuple(parse_port_range(p) for p in raw_ports)  # type: ignore[arg-type]
    if protocol == "icmp" and ports:
        raise InvalidFilter("icmp filters take no ports")
    ordered = sorted(ports)
    for a, b in itertools.pairwise(ordered):
        if b.start <= a.end:
            raise InvalidFilter(f"port ranges must not overlap: {a.text()} and {b.text()}")
    proto: FilterProtocol = protocol  # type: ignore[assignment]
    return Filter(proto, tuple(ordered))


def parse_filters(items: Iterable[Mapping[str, object]]) -> tuple[Filter, ...]:
    """A resource's filter list; each protocol at most once."""
    filters = tuple(parse_filter(item) for item in items)
    seen: set[str] = set()
    for f in filters:
        if f.protocol in seen:
            raise InvalidFilter(f"protocol {f.protocol} appears in more than one filter")
        seen.add(f.protocol)
    return filters


def _overlaps(a: _Network, b: _Network) -> bool:
    return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]


def _check_network(net: _Network, full_tunnel_message: str) -> None:
    for bad in _FULL_TUNNEL:
        if _overlaps(net, bad):
            raise InvalidResource(full_tunnel_message)
    for bad in _LOOPBACK:
        if _overlaps(net, bad):
            raise InvalidResource("address cannot contain loopback addresses")
    for bad in _RESERVED:
        if _overlaps(net, bad):
            raise InvalidResource(f"address cannot overlap {bad}, which Firezone uses for tunnels")


def _reject_port_and_brackets(address: str) -> None:
    if re.search(r"\]:\d+\Z", address) or (address.count(":") == 1):
        raise InvalidResource("address cannot contain a port number")
    if ("[" in address) != ("]" in address):
        raise InvalidResource("address has mismatched brackets")


def validate_resource_address(type: str, address: str | None) -> str | None:
    """The normalised address for a resource of ``type``; None only for ``internet``."""
    if type not in RESOURCE_TYPES:
        raise InvalidResource(
            f"resource type must be one of {', '.join(sorted(RESOURCE_TYPES))}, got {type!r}"
        )
    if type == "internet":
        if address is not None and address.strip():
            raise InvalidResource("the internet resource takes no address")
        return None
    if address is None or not address.strip():
        raise InvalidResource(f"a {type} resource needs an address")
    text = address.strip()
    if type == "dns":
        if text.count(":") == 1:
            raise InvalidResource("address cannot contain a port number")
        try:
            return validate_pattern(text)
        except InvalidPattern as e:
            raise InvalidResource(str(e)) from None
    _reject_port_and_brackets(text)
    if "%" in text:
        raise InvalidResource(f"{text!r}: scoped addresses are not allowed")
    if type == "cidr":
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidResource(f"{text!r} is not a valid CIDR range") from None
        _check_network(net, "please use the internet resource for full-tunnel traffic")
        return str(net)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidResource(f"{text!r} is not a valid IP address") from None
    _check_network(
        ipaddress.ip_network(ip),
        f"cannot contain all IPv{ip.version} addresses",
    )
    return str(ip)


def validate_ip_stack(type: str, ip_stack: str | None) -> IpStack | None:
    """``dns`` resources get one (default ``dual``); other types have none."""
    if type != "dns":
        if ip_stack is not None:
            raise InvalidResource(f"ip_stack applies only to dns resources, not {type}")
        return None
    if ip_stack is None:
        return "dual"
    if ip_stack not in IP_STACKS:
        raise InvalidResource(
            f"ip_stack must be one of {', '.join(sorted(IP_STACKS))}, got {ip_stack!r}"
        )
    return ip_stack  # type: ignore[return-value]
