"""Tests for the SDP ``candidate:`` codec and RFC 8445 priorities."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wire.candidate import (
    Candidate,
    CandidateError,
    CandidateKind,
    compute_foundation,
    compute_priority,
)


class PriorityTests(SynchronousTestCase):
    def test_host_priority_matches_the_reference_example(self) -> None:
        """A host candidate with local preference 65535, component 1 has priority 2130706431."""
        self.assertEqual(compute_priority(CandidateKind.HOST), 2130706431)

    def test_formula(self) -> None:
        """RFC 8445 5.1.2.1: "priority = (2^24)*(type preference) + (2^8)*(local preference)
        + (2^0)*(256 - component ID)"."""
        self.assertEqual(compute_priority(CandidateKind.SRFLX, 1000, 2),
                         (100 << 24) + (1000 << 8) + 254)
        self.assertEqual(compute_priority(CandidateKind.PRFLX, 0, 1), (110 << 24) + 255)
        self.assertEqual(compute_priority(CandidateKind.RELAY, 65535, 1), (65535 << 8) + 255)

    def test_type_order(self) -> None:
        """Type preferences order host > prflx > srflx > relay (RFC 8445 5.1.2.2)."""
        ranked = sorted(CandidateKind, key=compute_priority, reverse=True)
        self.assertEqual(ranked, [CandidateKind.HOST, CandidateKind.PRFLX,
                                  CandidateKind.SRFLX, CandidateKind.RELAY])

    def test_out_of_range(self) -> None:
        """Local preference and component out of range are refused."""
        self.assertRaises(CandidateError, compute_priority, CandidateKind.HOST, 65536)
        self.assertRaises(CandidateError, compute_priority, CandidateKind.HOST, 1, 0)
        self.assertRaises(CandidateError, compute_priority, CandidateKind.HOST, 1, 257)

    def test_foundation_equal_for_same_type_and_base(self) -> None:
        """RFC 8445 5.1.1.3: same type and base -> same foundation; otherwise different."""
        self.assertEqual(compute_foundation(CandidateKind.SRFLX, "10.0.0.1"),
                         compute_foundation(CandidateKind.SRFLX, "10.0.0.1"))
        self.assertNotEqual(compute_foundation(CandidateKind.SRFLX, "10.0.0.1"),
                            compute_foundation(CandidateKind.HOST, "10.0.0.1"))
        self.assertNotEqual(compute_foundation(CandidateKind.HOST, "10.0.0.1"),
                            compute_foundation(CandidateKind.HOST, "10.0.0.2"))


class CandidateCodecTests(SynchronousTestCase):
    def test_decode_reference_example(self) -> None:
        """The reference's own example parses into a host candidate."""
        c = Candidate.decode("candidate:1 1 udp 2130706431 1.1.1.1 80 typ host")
        self.assertEqual(c, Candidate(CandidateKind.HOST, ("1.1.1.1", 80), 2130706431, "1"))

    def test_encode_reference_example(self) -> None:
        """Encoding gives back the reference's exact string."""
        c = Candidate(CandidateKind.HOST, ("1.1.1.1", 80), 2130706431, "1")
        self.assertEqual(c.encode(), "candidate:1 1 udp 2130706431 1.1.1.1 80 typ host")

    def test_srflx_and_relay_carry_raddr(self) -> None:
        """Server-reflexive and relayed candidates carry raddr/rport."""
        srflx = Candidate.srflx(("198.51.100.7", 40000), ("10.0.0.2", 52625))
        self.assertTrue(srflx.encode().endswith(
            "198.51.100.7 40000 typ srflx raddr 10.0.0.2 rport 52625"))
        relay = Candidate.relay(("203.0.113.9", 50000), ("198.51.100.7", 40000))
        self.assertEqual(Candidate.decode(relay.encode()), relay)
        self.assertEqual(relay.related, ("198.51.100.7", 40000))
        self.assertEqual(relay.priority, compute_priority(CandidateKind.RELAY))

    def test_ipv6_is_canonicalised(self) -> None:
        """IPv6 addresses are kept in canonical (compressed) text form."""
        c = Candidate.decode("candidate:7 1 UDP 1 2001:0db8:0:0:0:0:0:0001 9 typ relay"
                             " raddr 2001:DB8::2 rport 10")
        self.assertEqual(c.address, ("2001:db8::1", 9))
        self.assertEqual(c.related, ("2001:db8::2", 10))
        self.assertEqual(c.transport, "udp")

    def test_ignores_unknown_extensions_and_a_prefix(self) -> None:
        """Browser-style extensions are skipped; an ``a=`` prefix is accepted."""
        c = Candidate.decode("a=candidate:842163049 1 udp 1677729535 198.51.100.7 61665 typ "
                             "srflx raddr 0.0.0.0 rport 0 generation 0 ufrag EsAw network-cost 999")
        self.assertEqual(c.kind, CandidateKind.SRFLX)
        self.assertEqual(c.related, ("0.0.0.0", 0))

    def test_rejects(self) -> None:
        """Unusable candidates raise CandidateError, so callers can skip them."""
        bad = [
            "",
            "candidate:",
            "1 1 udp 1 1.1.1.1 80 typ host",
            "candidate:1 1 udp 1 1.1.1.1 80 typ",
            "candidate:1 1 udp 1 1.1.1.1 80 type host",
            "candidate:1 1 udp 1 1.1.1.1 80 typ bogus",
            "candidate:1 1 udp 1 abc.local 80 typ host",
            "candidate:1 1 udp 1 fe80::1%eth0 80 typ host",
            "candidate:1 1 udp 1 1.1.1.1 65536 typ host",
            "candidate:1 1 udp 4294967296 1.1.1.1 80 typ host",
            "candidate:1 0 udp 1 1.1.1.1 80 typ host",
            "candidate:1 257 udp 1 1.1.1.1 80 typ host",
            "candidate:1 1 udp +1 1.1.1.1 80 typ host",
            "candidate:1 1 udp 1 1.1.1.1 8_0 typ host",
            "candidate:1  1 udp 1 1.1.1.1 80 typ host",
            "candidate:f-o 1 udp 1 1.1.1.1 80 typ host",
            "candidate:1 1 udp 1 1.1.1.1 80 typ srflx raddr 1.1.1.1",
            "candidate:1 1 udp 1 1.1.1.1 80 typ srflx raddr 1.1.1.1 rport",
            "candidate:1 1 udp 1 1.1.1.1 80 typ srflx rport 5",
            "candidate:1 1 udp 1 1.1.1.1 80 typ srflx raddr x rport 5",
            "candidate:1 1 udp 1 1.1.1.1 80 typ srflx raddr 1.1.1.1 rport 5 rport 6",
            "candidate:1 1 udp 1 1.1.1.01 80 typ host",
        ]
        for text in bad:
            self.assertRaises(CandidateError, Candidate.decode, text)

    def test_constructor_validates(self) -> None:
        """A Candidate value can only hold what encode/decode can round-trip."""
        self.assertRaises(CandidateError, Candidate, CandidateKind.HOST, ("x", 1), 1, "1")
        self.assertRaises(CandidateError, Candidate, CandidateKind.HOST, ("1.1.1.1", -1), 1, "1")
        self.assertRaises(CandidateError, Candidate, CandidateKind.HOST, ("1.1.1.1", 1), 1, "")
        self.assertRaises(CandidateError, Candidate, CandidateKind.HOST, ("1.1.1.1", 1), -1, "1")
        self.assertRaises(CandidateError, Candidate, "nope", ("1.1.1.1", 1), 1, "1")

    @settings(max_examples=200)
    @given(st.text(max_size=120))
    def test_arbitrary_text_only_raises_candidate_error(self, text: str) -> None:
        """Arbitrary text either parses or raises CandidateError, nothing else."""
        try:
            c = Candidate.decode(text)
        except CandidateError:
            return
        self.assertEqual(Candidate.decode(c.encode()), c)

    @settings(max_examples=200)
    @given(st.lists(st.sampled_from(
        ["candidate:1", "1", "udp", "typ", "host", "srflx", "raddr", "rport", "1.2.3.4",
         "::1", "80", "65535", "4294967295", "x", "relay", "prflx"]), max_size=14))
    def test_token_soup_only_raises_candidate_error(self, tokens: list[str]) -> None:
        """Plausible tokens in any order parse or raise CandidateError."""
        try:
            Candidate.decode(" ".join(tokens))
        except CandidateError:
            pass

    @settings(max_examples=200)
    @given(
        kind=st.sampled_from(list(CandidateKind)),
        address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
        port=st.integers(0, 65535),
        priority=st.integers(0, 2**32 - 1),
        foundation=st.text(
            alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/",
            min_size=1, max_size=32),
        component=st.integers(1, 256),
        related=st.one_of(st.none(), st.tuples(st.ip_addresses(), st.integers(0, 65535))),
    )
    def test_round_trip(
        self, kind: CandidateKind, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int, priority: int, foundation: str, component: int,
        related: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
    ) -> None:
        """decode(encode(c)) == c for every representable candidate."""
        c = Candidate(kind, (str(address), port), priority, foundation, component,
                      related=(str(related[0]), related[1]) if related else None)
        self.assertEqual(Candidate.decode(c.encode()), c)
