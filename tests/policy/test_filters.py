"""Tests for firezone.policy.filters: filters, resource addresses, IP stacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.filters import (
    InvalidFilter,
    InvalidResource,
    parse_filter,
    parse_filters,
    parse_port_range,
    validate_ip_stack,
    validate_resource_address,
)
from firezone.policy.model import Filter, PortRange


class PortRangeTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """Single ports, ranges with optional spaces, and integers are accepted."""
        for value, expected in [
            ("80", PortRange(80, 80)),
            (443, PortRange(443, 443)),
            ("8000-8080", PortRange(8000, 8080)),
            (" 1 - 65535 ", PortRange(1, 65535)),
            ("22-22", PortRange(22, 22)),
        ]:
            with self.subTest(value=value):
                self.assertEqual(parse_port_range(value), expected)  # type: ignore[arg-type]

    def test_invalid(self) -> None:
        """Out-of-range, reversed, negative and malformed ports are refused."""
        for value in [
            "0",
            "65536",
            "-1",
            "80-",
            "-80",
            "8080-8000",
            "http",
            "1.5",
            "",
            0,
            True,
            None,
        ]:
            with self.subTest(value=value):
                self.assertRaises(InvalidFilter, parse_port_range, value)  # type: ignore[arg-type]

    @settings(max_examples=200)
    @given(st.integers(1, 65535), st.integers(1, 65535))
    def test_text_round_trip(self, a: int, b: int) -> None:
        """PortRange.text() parses back to the same range."""
        r = PortRange(min(a, b), max(a, b))
        self.assertEqual(parse_port_range(r.text()), r)


class FilterTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Protocols by name or number; ports sorted; no ports means all ports."""
        self.assertEqual(
            parse_filter({"protocol": "TCP", "ports": ["8000-8080", "80"]}),
            Filter("tcp", (PortRange(80, 80), PortRange(8000, 8080))),
        )
        self.assertEqual(parse_filter({"protocol": 17}), Filter("udp"))
        self.assertEqual(parse_filter({"protocol": "icmp", "ports": []}), Filter("icmp"))

    def test_invalid(self) -> None:
        """Unknown protocols, icmp ports, overlaps and bad shapes are refused."""
        for data, fragment in [
            ({"protocol": "sctp"}, "protocol"),
            ({"protocol": 132}, "protocol"),
            ({}, "protocol"),
            ({"protocol": "icmp", "ports": ["1"]}, "icmp"),
            ({"protocol": "tcp", "ports": ["80-90", "85"]}, "overlap"),
            ({"protocol": "tcp", "ports": ["80", "80"]}, "overlap"),
            ({"protocol": "tcp", "ports": "80"}, "list"),
            ({"protocol": "tcp", "ports": ["99999"]}, "between 1 and 65535"),
            ({"protocol": "tcp", "port": ["80"]}, "unknown filter keys"),
        ]:
            with self.subTest(data=data):
                with self.assertRaises(InvalidFilter) as ctx:
                    parse_filter(data)  # type: ignore[arg-type]
                self.assertIn(fragment, str(ctx.exception))

    def test_list_and_round_trip(self) -> None:
        """A filter list refuses repeated protocols and round-trips through to_dict."""
        filters = parse_filters(
            [{"protocol": "tcp", "ports": ["443", "8000-8080"]}, {"protocol": "icmp"}]
        )
        self.assertEqual(parse_filters([f.to_dict() for f in filters]), filters)
        self.assertRaises(
            InvalidFilter, parse_filters, [{"protocol": "tcp"}, {"protocol": "tcp", "ports": ["1"]}]
        )


class ResourceAddressTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """Addresses are normalised per type."""
        for rtype, address, expected in [
            ("cidr", "10.0.0.7/24", "10.0.0.0/24"),
            ("cidr", " 192.168.1.0/24 ", "192.168.1.0/24"),
            ("cidr", "172.16.5.4", "172.16.5.4/32"),
            ("cidr", "2001:DB8::1/32", "2001:db8::/32"),
            ("ip", "192.0.2.10", "192.0.2.10"),
            ("ip", "2001:DB8::01", "2001:db8::1"),
            ("dns", "*.Corp.Example.COM.", "*.corp.example.com"),
            ("dns", "**.internal", "**.internal"),
            ("internet", None, None),
            ("internet", "", None),
        ]:
            with self.subTest(type=rtype, address=address):
                self.assertEqual(validate_resource_address(rtype, address), expected)

    def test_invalid(self) -> None:
        """Each refused address names its problem."""
        for rtype, address, fragment in [
            ("cidr", "0.0.0.0/0", "internet resource"),
            ("cidr", "0.0.0.0/8", "internet resource"),
            ("cidr", "::/0", "internet resource"),
            ("cidr", "127.0.0.0/16", "loopback"),
            ("cidr", "120.0.0.0/4", "loopback"),
            ("cidr", "::1/128", "loopback"),
            ("cidr", "100.64.0.0/10", "100.64.0.0/10"),
            ("cidr", "100.96.1.0/24", "100.64.0.0/10"),
            ("cidr", "100.0.0.0/8", "100.64.0.0/10"),
            ("cidr", "fd00:2021:1111::/64", "fd00:2021:1111::/48"),
            ("cidr", "10.0.0.0/33", "not a valid CIDR"),
            ("cidr", "10.0.0.0:80", "port"),
            ("cidr", "example.com", "not a valid CIDR"),
            ("ip", "0.0.0.0", "all IPv4"),
            ("ip", "::", "all IPv6"),
            ("ip", "127.0.0.1", "loopback"),
            ("ip", "100.64.0.1", "100.64.0.0/10"),
            ("ip", "10.0.0.0/8", "not a valid IP"),
            ("ip", "192.0.2.1:443", "port"),
            ("ip", "[2001:db8::1]:443", "port"),
            ("ip", "[2001:db8::1", "brackets"),
            ("ip", "fe80::1%eth0", "scoped"),
            ("dns", "example.com:8080", "port"),
            ("dns", "*.com", "wildcards"),
            ("dns", "10.0.0.1", "IP address"),
            ("dns", "foo.localhost", "localhost"),
            ("dns", "", "needs an address"),
            ("cidr", None, "needs an address"),
            ("internet", "0.0.0.0/0", "no address"),
            ("static_device_pool", "x", "resource type"),
        ]:
            with self.subTest(type=rtype, address=address):
                with self.assertRaises(InvalidResource) as ctx:
                    validate_resource_address(rtype, address)
                self.assertIn(fragment, str(ctx.exception))

    def test_ip_stack(self) -> None:
        """DNS resources default to dual; other types take none."""
        self.assertEqual(validate_ip_stack("dns", None), "dual")
        self.assertEqual(validate_ip_stack("dns", "ipv6_only"), "ipv6_only")
        self.assertIsNone(validate_ip_stack("cidr", None))
        self.assertRaises(InvalidResource, validate_ip_stack, "dns", "ipv5")
        self.assertRaises(InvalidResource, validate_ip_stack, "ip", "dual")
