"""The peer table routes by longest prefix, like WireGuard's allowed IPs."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.tunnel.peers import PeerTable


def ipv4_packet(src: str, dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)


def ipv6_packet(src: str, dst: str) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, 0, 17, 64) + ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst).packed)


class PeerTableTests(SynchronousTestCase):
    def test_longest_prefix_wins(self) -> None:
        """A /32 inside a /24 routes to its own peer; the rest of the /24 to the other."""
        table: PeerTable[str] = PeerTable()
        table.add("a", ["198.18.0.0/24", "2001:db8::/64"])
        table.add("b", ["198.18.0.7/32"], endpoint=("192.0.2.1", 51820))
        self.assertEqual(table.lookup_packet(ipv4_packet("100.64.0.1", "198.18.0.7")), "b")
        self.assertEqual(table.lookup_packet(ipv4_packet("100.64.0.1", "198.18.0.8")), "a")
        self.assertEqual(table.lookup_packet(ipv6_packet("fd00::1", "2001:db8::5")), "a")
        self.assertIsNone(table.lookup_packet(ipv4_packet("100.64.0.1", "198.19.0.1")))
        self.assertEqual(table.endpoints["b"], ("192.0.2.1", 51820))

    def test_remove_and_move(self) -> None:
        """Removing a peer drops its routes; re-adding a network moves it to the new peer."""
        table: PeerTable[str] = PeerTable()
        table.add("a", ["198.18.0.0/24"])
        table.add("b", ["198.18.0.0/24"])
        self.assertEqual(table.allowed("a"), set())
        self.assertEqual(table.lookup_packet(ipv4_packet("1.1.1.1", "198.18.0.1")), "b")
        table.remove("b")
        self.assertIsNone(table.lookup_packet(ipv4_packet("1.1.1.1", "198.18.0.1")))

    def test_source_check(self) -> None:
        """A decrypted packet is accepted only from the peer's own allowed IPs."""
        table: PeerTable[str] = PeerTable()
        table.add("a", ["100.64.0.2/32"])
        table.add("b", ["100.64.0.3/32"])
        self.assertTrue(table.source_allowed("a", ipv4_packet("100.64.0.2", "100.64.0.1")))
        self.assertFalse(table.source_allowed("a", ipv4_packet("100.64.0.3", "100.64.0.1")))
        self.assertFalse(table.source_allowed("a", b"\x45\x00"))
        self.assertFalse(table.source_allowed("a", b""))

    @settings(max_examples=200)
    @given(
        routes=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32),
                                  st.sampled_from("abc")), max_size=12),
        probe=st.integers(0, 2**32 - 1),
    )
    def test_matches_brute_force(self, routes: list[tuple[int, int, str]], probe: int) -> None:
        """Lookup equals a brute-force longest-prefix search over the same routes."""
        table: PeerTable[str] = PeerTable()
        expected: dict[ipaddress.IPv4Network, str] = {}
        for address, length, peer in routes:
            net = ipaddress.IPv4Network((address, length), strict=False)
            table.add(peer, [net])
            expected[net] = peer
        addr = ipaddress.IPv4Address(probe)
        matching = [n for n in expected if addr in n]
        want = expected[max(matching, key=lambda n: n.prefixlen)] if matching else None
        self.assertEqual(table.lookup(probe, 4), want)
