"""Tests for firezone.policy.selection and firezone.policy.versions."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.geo import haversine_km
from firezone.policy.model import Resource
from firezone.policy.selection import (
    GatewayCandidate,
    NoGateway,
    RelayCandidate,
    compatible,
    select_gateway,
    select_relays,
)
from firezone.policy.versions import adapt_resource_for_version, parse_version

BERLIN = (52.52, 13.40)
PARIS = (48.86, 2.35)
NEW_YORK = (40.71, -74.01)
TOKYO = (35.68, 139.69)

RESOURCE = Resource("r1", "dns", "*.corp.example", ip_stack="dual", site_id="s1")


def gw(
    gid: str,
    version: str | None = "1.6.1",
    where: tuple[float, float] | None = None,
    site: str = "s1",
) -> GatewayCandidate:
    lat, lon = where if where else (None, None)
    return GatewayCandidate(gid, site, version, lat, lon)


class VersionTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Semver parses; anything else is None."""
        self.assertEqual(str(parse_version("1.6.1")), "1.6.1")
        self.assertEqual(str(parse_version(" 1.2.0-rc.1+build.5 ")), "1.2.0-rc.1")
        for bad in [None, "", "1.6", "v1.6.1", "1.06.1", "1.6.1.2", "latest"]:
            with self.subTest(bad=bad):
                self.assertIsNone(parse_version(bad))

    def test_precedence(self) -> None:
        """Semver precedence: numeric parts, pre-releases before releases, 1.10 > 1.9."""
        ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0",
            "1.9.0",
            "1.10.0",
            "2.0.0",
        ]
        parsed = [parse_version(v) for v in ordered]
        for a, b in itertools.pairwise(parsed):
            assert a is not None and b is not None
            self.assertLess(a, b)
            self.assertGreater(b, a)

    def test_compatibility_rule(self) -> None:
        """Gateway must be >= X.(Y-1).0 and < X.(Y+2).0 for client X.Y.*."""
        cases = [
            ("1.5.12", "1.4.0", True),
            ("1.5.12", "1.3.9", False),
            ("1.5.12", "1.5.0", True),
            ("1.5.12", "1.6.9", True),
            ("1.5.12", "1.7.0", False),
            ("1.5.12", "2.5.0", False),
            ("1.5.12", "1.7.0-rc.1", True),  # a pre-release sorts before 1.7.0
            ("1.0.3", "1.0.0", True),
            ("1.0.3", "1.1.9", True),
            ("1.0.3", "1.2.0", False),
            ("1.0.3", "0.9.9", False),
            (None, "1.0.0", True),
            (None, None, False),
            ("1.5.0", None, False),
            ("1.5.0", "garbage", False),
            ("garbage", "1.5.0", False),
        ]
        for client, gateway, expected in cases:
            with self.subTest(client=client, gateway=gateway):
                self.assertEqual(compatible(client, gateway), expected)

    def test_adapt_resource(self) -> None:
        """Internet needs >= 1.3.0; below 1.2.0 wildcards are rewritten or dropped."""
        internet = Resource("i", "internet", site_id="s")
        self.assertIsNone(adapt_resource_for_version(internet, "1.2.9"))
        self.assertIs(adapt_resource_for_version(internet, "1.3.0"), internet)
        self.assertIs(adapt_resource_for_version(internet, None), internet)
        self.assertIs(adapt_resource_for_version(internet, "garbage"), internet)

        def dns(address: str) -> Resource:
            return Resource("d", "dns", address, ip_stack="dual", site_id="s")

        for address, old in [
            ("**.example.com", "*.example.com"),
            ("*.example.com", "?.example.com"),
            ("example.com", "example.com"),
            ("a.*.example.com", None),
            ("a.**.example.com", None),
            ("?.example.com", None),
            ("*.?.example.com", None),
        ]:
            with self.subTest(address=address):
                adapted = adapt_resource_for_version(dns(address), "1.1.0")
                self.assertEqual(adapted.address if adapted else None, old)
                self.assertEqual(adapt_resource_for_version(dns(address), "1.2.0"), dns(address))
        cidr = Resource("c", "cidr", "10.0.0.0/8", site_id="s")
        self.assertIs(adapt_resource_for_version(cidr, "1.0.0"), cidr)


class SelectGatewayTests(SynchronousTestCase):
    def test_offline(self) -> None:
        """No online gateway in the resource's site: offline."""
        rng = random.Random(1)
        self.assertEqual(select_gateway(RESOURCE, [], rng=rng), NoGateway("offline"))
        self.assertEqual(
            select_gateway(RESOURCE, [gw("g1", site="s2")], rng=rng), NoGateway("offline")
        )
        siteless = Resource("r", "cidr", "10.0.0.0/8", site_id=None)
        self.assertEqual(select_gateway(siteless, [gw("g1")], rng=rng), NoGateway("offline"))

    def test_version_mismatch(self) -> None:
        """Gateways exist in the site but none is compatible: version_mismatch."""
        rng = random.Random(1)
        gateways = [gw("g1", "1.2.0"), gw("g2", None), gw("g3", "1.9.0")]
        self.assertEqual(
            select_gateway(RESOURCE, gateways, rng=rng, client_version="1.5.12"),
            NoGateway("version_mismatch"),
        )
        self.assertEqual(
            select_gateway(RESOURCE, gateways, rng=rng, client_version="not-a-version"),
            NoGateway("version_mismatch"),
        )
        internet = Resource("i", "internet", site_id="s1")
        self.assertEqual(
            select_gateway(internet, [gw("g1", "1.2.5")], rng=rng, client_version="1.2.0"),
            NoGateway("version_mismatch"),
        )

    def test_unknown_client_version_accepts_any_known_gateway(self) -> None:
        """Without a client version every parseable gateway version is a candidate."""
        chosen = select_gateway(RESOURCE, [gw("g1", None), gw("g2", "0.1.0")], rng=random.Random(0))
        self.assertEqual(chosen, gw("g2", "0.1.0"))

    def test_prefers_connected_gateways(self) -> None:
        """A gateway the client is connected to is chosen over nearer or newer ones."""
        gateways = [gw("near", "1.6.1", BERLIN), gw("far", "1.5.0", TOKYO)]
        for seed in range(20):
            chosen = select_gateway(
                RESOURCE,
                gateways,
                rng=random.Random(seed),
                client_version="1.5.12",
                client_location=BERLIN,
                connected_gateway_ids={"far"},
            )
            self.assertEqual(chosen, gateways[1])

    def test_connected_but_incompatible_is_ignored(self) -> None:
        """Connection reuse only applies to compatible candidates."""
        gateways = [gw("new", "1.6.1"), gw("old", "1.0.0")]
        chosen = select_gateway(
            RESOURCE,
            gateways,
            rng=random.Random(3),
            client_version="1.5.12",
            connected_gateway_ids=["old"],
        )
        self.assertEqual(chosen, gateways[0])

    def test_nearest_group_then_highest_version(self) -> None:
        """With a location: nearest (lat, lon) group, then its highest version, then random."""
        gateways = [
            gw("paris-old", "1.5.0", PARIS),
            gw("paris-new-a", "1.6.1", PARIS),
            gw("paris-new-b", "1.6.1", PARIS),
            gw("berlin", "1.6.1", BERLIN),
            gw("nowhere", "1.6.1"),
        ]
        seen = set()
        for seed in range(50):
            chosen = select_gateway(
                RESOURCE,
                gateways,
                rng=random.Random(seed),
                client_version="1.5.12",
                client_location=(48.0, 2.0),
            )
            assert isinstance(chosen, GatewayCandidate)
            seen.add(chosen.id)
        self.assertEqual(seen, {"paris-new-a", "paris-new-b"})

    def test_version_order_is_semantic(self) -> None:
        """1.10.0 is newer than 1.9.0 (the reference compares strings)."""
        gateways = [gw("nine", "1.9.0", PARIS), gw("ten", "1.10.0", PARIS)]
        chosen = select_gateway(RESOURCE, gateways, rng=random.Random(0), client_location=PARIS)
        self.assertEqual(chosen, gateways[1])

    def test_gateways_without_location_come_last(self) -> None:
        """Unlocated gateways are chosen only when no located one is compatible."""
        gateways = [gw("nowhere", "1.6.1"), gw("tokyo", "1.5.0", TOKYO)]
        chosen = select_gateway(
            RESOURCE,
            gateways,
            rng=random.Random(0),
            client_version="1.5.12",
            client_location=BERLIN,
        )
        self.assertEqual(chosen, gateways[1])
        only_unlocated = [gw("nowhere-a"), gw("nowhere-b", "1.6.0")]
        chosen = select_gateway(
            RESOURCE, only_unlocated, rng=random.Random(0), client_location=BERLIN
        )
        self.assertEqual(chosen, only_unlocated[0])

    def test_unknown_location_is_uniform_and_seeded(self) -> None:
        """Without a location every compatible gateway can be picked; a seed fixes the pick."""
        gateways = [gw(f"g{i}", "1.6.1", BERLIN if i % 2 else TOKYO) for i in range(4)]
        picks = {
            select_gateway(RESOURCE, gateways, rng=random.Random(seed)).id  # type: ignore[union-attr]
            for seed in range(100)
        }
        self.assertEqual(picks, {"g0", "g1", "g2", "g3"})
        half_known = (52.0, None)
        a = select_gateway(RESOURCE, gateways, rng=random.Random(7), client_location=half_known)
        b = select_gateway(RESOURCE, gateways[::-1], rng=random.Random(7))
        self.assertEqual(a, b)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["1.4.0", "1.5.3", "1.6.1", "1.7.0", None]),
                st.sampled_from([BERLIN, PARIS, NEW_YORK, None]),
                st.sampled_from(["s1", "s2"]),
            ),
            max_size=8,
        ),
        st.one_of(st.none(), st.sampled_from([BERLIN, TOKYO, NEW_YORK])),
        st.integers(0, 2**32),
    )
    def test_choice_invariants(
        self,
        specs: list[tuple[str | None, tuple[float, float] | None, str]],
        location: tuple[float, float] | None,
        seed: int,
    ) -> None:
        """The pick is compatible, in the site, and (with a location) no farther than any other."""
        gateways = [gw(f"g{i}", v, where, site) for i, (v, where, site) in enumerate(specs)]
        chosen = select_gateway(
            RESOURCE,
            gateways,
            rng=random.Random(seed),
            client_version="1.5.12",
            client_location=location,
        )
        eligible = [g for g in gateways if g.site_id == "s1" and compatible("1.5.12", g.version)]
        if isinstance(chosen, NoGateway):
            self.assertEqual(eligible, [])
            in_site = [g for g in gateways if g.site_id == "s1"]
            self.assertEqual(chosen.reason, "version_mismatch" if in_site else "offline")
            return
        self.assertIn(chosen, eligible)
        if location is not None:
            located = [g for g in eligible if g.lat is not None]
            if located:
                assert chosen.lat is not None and chosen.lon is not None
                best = min(haversine_km(location, (g.lat, g.lon)) for g in located)  # type: ignore[arg-type]
                self.assertAlmostEqual(haversine_km(location, (chosen.lat, chosen.lon)), best)


class SelectRelaysTests(SynchronousTestCase):
    RELAYS = [
        RelayCandidate("tokyo", *TOKYO),
        RelayCandidate("unknown"),
        RelayCandidate("paris", *PARIS),
        RelayCandidate("new-york", *NEW_YORK),
        RelayCandidate("berlin", *BERLIN),
    ]

    def test_two_nearest_with_location(self) -> None:
        """With a location the two nearest relays are returned, nearest first."""
        chosen = select_relays(self.RELAYS, rng=random.Random(0), location=(50.0, 8.0))
        self.assertEqual([r.id for r in chosen], ["paris", "berlin"])
        chosen = select_relays(self.RELAYS, rng=random.Random(0), location=(40.0, -75.0))
        self.assertEqual([r.id for r in chosen], ["new-york", "paris"])

    def test_relays_without_location_last(self) -> None:
        """Relays without coordinates are used only after all located ones."""
        chosen = select_relays(self.RELAYS, rng=random.Random(0), location=BERLIN, count=5)
        self.assertEqual(chosen[-1].id, "unknown")
        few = [RelayCandidate("unknown"), RelayCandidate("tokyo", *TOKYO)]
        self.assertEqual(
            [r.id for r in select_relays(few, rng=random.Random(0), location=BERLIN)],
            ["tokyo", "unknown"],
        )

    def test_random_two_without_location(self) -> None:
        """Without a location two distinct relays are drawn; a seed fixes the draw."""
        draws = set()
        for seed in range(200):
            chosen = select_relays(self.RELAYS, rng=random.Random(seed))
            self.assertEqual(len({r.id for r in chosen}), 2)
            draws.add(tuple(r.id for r in chosen))
        self.assertGreater(len(draws), 10)
        self.assertEqual(
            select_relays(self.RELAYS, rng=random.Random(42)),
            select_relays(self.RELAYS, rng=random.Random(42)),
        )

    def test_input_not_mutated_and_small_inputs(self) -> None:
        """The caller's list stays as it was; fewer relays than asked are all returned."""
        relays = list(self.RELAYS)
        select_relays(relays, rng=random.Random(1))
        self.assertEqual(relays, self.RELAYS)
        self.assertEqual(select_relays([], rng=random.Random(1)), [])
        one = [RelayCandidate("solo")]
        self.assertEqual(select_relays(one, rng=random.Random(1), location=BERLIN), one)
