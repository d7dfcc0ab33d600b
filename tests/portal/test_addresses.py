"""Tunnel address pools and the linear probe order."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal import addresses
from firezone.portal.addresses import TUNNEL_IPV4, TUNNEL_IPV6


class AddressPoolTests(SynchronousTestCase):
    def test_pools_are_the_reference_ranges(self) -> None:
        """Tunnel IPs come from 100.64.0.0/11 and fd00:2021:1111::/107 (REFERENCE appendix)."""
        self.assertEqual(str(TUNNEL_IPV4), "100.64.0.0/11")
        self.assertEqual(str(TUNNEL_IPV6), "fd00:2021:1111::/107")

    def test_first_and_last_are_never_used(self) -> None:
        """Index 0 is the second address; the last usable is one before the end."""
        self.assertEqual(addresses.address_at(TUNNEL_IPV4, 0), "100.64.0.1")
        last = addresses.usable_count(TUNNEL_IPV4) - 1
        self.assertEqual(addresses.address_at(TUNNEL_IPV4, last), "100.95.255.254")
        self.assertRaises(IndexError, addresses.address_at, TUNNEL_IPV4, last + 1)
        self.assertRaises(IndexError, addresses.address_at, TUNNEL_IPV4, -1)
        self.assertFalse(addresses.in_pool(TUNNEL_IPV4, "100.64.0.0"))
        self.assertFalse(addresses.in_pool(TUNNEL_IPV4, "100.95.255.255"))
        self.assertFalse(addresses.in_pool(TUNNEL_IPV4, "fd00:2021:1111::1"))
        self.assertFalse(addresses.in_pool(TUNNEL_IPV4, "garbage"))

    def test_probe_wraps_around(self) -> None:
        """The probe starts at the given index and wraps to the start of the pool."""
        tiny = IPv4Network("192.0.2.0/29")  # six usable addresses
        self.assertEqual(
            list(addresses.probe(tiny, 4)),
            ["192.0.2.5", "192.0.2.6", "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"],
        )

    @settings(max_examples=200)
    @given(st.integers(min_value=0, max_value=addresses.usable_count(TUNNEL_IPV6) - 1))
    def test_every_probe_address_is_in_pool(self, start: int) -> None:
        """Whatever the start, the first probed addresses are usable pool addresses."""
        for pool in (TUNNEL_IPV4, TUNNEL_IPV6):
            begin = start % addresses.usable_count(pool)
            probe = addresses.probe(pool, begin)
            first = [next(probe) for _ in range(3)]
            for address in first:
                self.assertTrue(addresses.in_pool(pool, address), address)
            self.assertEqual(first[0], str(ip_address(pool.network_address) + begin + 1))

    def test_probe_visits_each_address_once(self) -> None:
        """A full probe of a small pool is a permutation of its usable addresses."""
        pool = IPv4Network("198.51.100.0/26")
        visited = list(addresses.probe(pool, 17))
        self.assertEqual(len(visited), 62)
        self.assertEqual(len(set(visited)), 62)
