"""Pure values of the API: views, ingest tokens, signed refs, presence, cluster messages."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import turn_password
from firezone.policy.model import Filter, PortRange, Resource
from firezone.portal.api import cluster, ingest
from firezone.portal.api.refs import InvalidRef, RefSigner
from firezone.portal.api.views import (
    client_interface,
    client_resource_view,
    gateway_resource_view,
    relay_views,
    render_filters,
)
from firezone.portal.presence import (
    GATEWAY,
    RELAY,
    GatewayEntry,
    Presence,
    PresenceError,
    RelayEntry,
    entry_from_json,
    relay_id,
)
from firezone.portal.store.records import AccountConfig

KEY = bytes(range(64))
RID = "733e8d14-c18d-4931-af30-3639fa09c0c0"
SITE = "bf56f32d-7b2c-4f5d-a784-788977d014a4"


class ViewTests(SynchronousTestCase):
    def test_filters(self) -> None:
        """One entry per port range; no ports is ``{protocol}`` (Rust reads all ports)."""
        filters = (Filter("tcp", (PortRange(80, 80), PortRange(8000, 8080))), Filter("udp"),
                   Filter("icmp"))
        self.assertEqual(render_filters(filters), [
            {"protocol": "tcp", "port_range_start": 80, "port_range_end": 80},
            {"protocol": "tcp", "port_range_start": 8000, "port_range_end": 8080},
            {"protocol": "udp"},
            {"protocol": "icmp"},
        ])

    def test_ip_resources_are_cidrs(self) -> None:
        """Resources stored as ``ip`` are sent as ``cidr`` with a /32 or /128 mask."""
        v4 = Resource(RID, "ip", "10.1.2.3", site_id=SITE, name="db")
        v6 = Resource(RID, "ip", "2001:db8::1", site_id=SITE, name="db6")
        self.assertEqual(client_resource_view(v4, "Main")["address"], "10.1.2.3/32")
        self.assertEqual(gateway_resource_view(v6)["address"], "2001:db8::1/128")
        self.assertEqual(gateway_resource_view(v6)["type"], "cidr")

    def test_client_view_dns_and_sites_key(self) -> None:
        """DNS resources carry ``ip_stack``; older clients get ``gateway_groups``."""
        r = Resource(RID, "dns", "*.corp", ip_stack="dual", site_id=SITE, name="corp")
        view = client_resource_view(r, "Main", sites_key="gateway_groups")
        self.assertEqual(view["gateway_groups"], [{"id": SITE, "name": "Main"}])
        self.assertEqual(view["ip_stack"], "dual")
        self.assertNotIn("sites", view)

    def test_internet_views(self) -> None:
        r = Resource(RID, "internet", site_id=SITE, name="Internet")
        self.assertEqual(client_resource_view(r, "Main"), {
            "id": RID, "type": "internet", "can_be_disabled": True,
            "sites": [{"id": SITE, "name": "Main"}],
        })
        self.assertEqual(gateway_resource_view(r), {"id": RID, "type": "internet"})

    def test_relay_views_one_per_family_with_relay_checkable_credentials(self) -> None:
        """The relay re-derives the password from the username and its stamp secret."""
        relay = RelayEntry("r1", "s3cr3t", "203.0.113.1", "2001:db8::2", 3478)
        views = relay_views([relay], "PUBKEY=", 1_800_000_000)
        self.assertEqual([v["addr"] for v in views], ["203.0.113.1:3478", "[2001:db8::2]:3478"])
        for view in views:
            self.assertEqual(view["password"], turn_password(view["username"], "s3cr3t"))
            self.assertEqual(view["expires_at"], 1_800_000_000)
            self.assertTrue(view["username"].startswith("1800000000:"))

    def test_interface_dns(self) -> None:
        """Do53 servers are also sent in the legacy ``upstream_dns`` form."""
        config = AccountConfig("corp.example", ("1.1.1.1", "2606:4700::1111"),
                               ("https://dns.google/dns-query",))
        view = client_interface("100.64.0.1", "fd00:2021:1111::1", config)
        self.assertEqual(view["upstream_do53"], [{"ip": "1.1.1.1"}, {"ip": "2606:4700::1111"}])
        self.assertEqual(view["upstream_dns"], [
            {"protocol": "ip_port", "address": "1.1.1.1:53"},
            {"protocol": "ip_port", "address": "[2606:4700::1111]:53"},
        ])
        self.assertEqual(view["upstream_doh"], [{"url": "https://dns.google/dns-query"}])
        self.assertEqual(view["search_domain"], "corp.example")


class IngestTokenTests(SynchronousTestCase):
    def attribution(self) -> ingest.IngestAttribution:
        return ingest.IngestAttribution(
            account_id="a", policy_authorization_id="pa", policy_id="p",
            initiator_device_id="c", responder_device_id="g", uploads_enabled=False,
            resource_id=RID, resource_name="GitLab", resource_address=None,
            initiator_actor_id="actor", initiator_actor_name="Jane",
            initiator_actor_email="jane@x", initiator_auth_provider_id=None,
            initiator_client_version="1.5.11", initiator_device_os_name="macOS",
            initiator_device_os_version=None,
        )

    def test_pair_has_required_claims_and_hs256(self) -> None:
        """Both tokens are HS256 JWTs with every required claim; only ``role`` differs;
        ``exp`` is the authorization expiry plus 30 days."""
        initiator, responder = ingest.mint_pair(KEY, self.attribution(), 1_782_756_000.0,
                                                1_782_842_400.0)
        h1, c1 = ingest.decode_unverified(initiator)
        _, c2 = ingest.decode_unverified(responder)
        self.assertEqual(h1, {"alg": "HS256", "typ": "JWT"})
        for claim in ingest.REQUIRED_CLAIMS:
            self.assertIn(claim, c1)
        self.assertEqual((c1["role"], c2["role"]), ("initiator", "responder"))
        self.assertEqual({k: v for k, v in c1.items() if k != "role"},
                         {k: v for k, v in c2.items() if k != "role"})
        self.assertEqual(c1["exp"], 1_782_842_400 + 30 * 86400)
        self.assertEqual(c1["authorized_at"], "2026-06-29T18:00:00.000000Z")
        self.assertNotIn("resource_address", c1)

    def test_signature_is_hmac_sha256(self) -> None:
        """The third segment is the HMAC of the first two under the account's key."""
        import base64
        import hashlib
        import hmac

        token = ingest.mint(b"k", {"a": 1})
        head, body, sig = token.split(".")
        expected = hmac.new(b"k", f"{head}.{body}".encode(), hashlib.sha256).digest()
        self.assertEqual(base64.urlsafe_b64decode(sig + "="), expected)


class RefTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        signer = RefSigner(KEY)
        facts = {"c": "client", "r": RID, "ice": ["a", "b", "c", "d"]}
        self.assertEqual(signer.verify(signer.sign(facts)), facts)

    def test_forged_or_foreign_refs(self) -> None:
        """A changed body, another portal's key or garbage is ``InvalidRef``."""
        ref = RefSigner(KEY).sign({"c": "client"})
        mac = ref.split(".")[1]
        tampered = RefSigner(KEY).sign({"c": "other"}).split(".")[0] + "." + mac
        for bad in (tampered, RefSigner(b"x" * 64).sign({"c": "client"}), "signed-reference",
                    "", 42, None, "a." * 5000):
            with self.assertRaises(InvalidRef):
                RefSigner(KEY).verify(bad)

    @settings(max_examples=200)
    @given(st.text(max_size=300))
    def test_arbitrary_text(self, text: str) -> None:
        """Arbitrary refs raise only ``InvalidRef``."""
        try:
            RefSigner(KEY).verify(text)
        except InvalidRef:
            pass


class RelayIdTests(SynchronousTestCase):
    def test_uuid_v4_stable_per_secret(self) -> None:
        """A UUIDv4 (version 4, RFC 4122 variant) that depends only on the secret."""
        first = uuid.UUID(relay_id("a" * 64))
        self.assertEqual(first.version, 4)
        self.assertEqual(first.variant, uuid.RFC_4122)
        self.assertEqual(relay_id("a" * 64), str(first))
        self.assertNotEqual(relay_id("b" * 64), str(first))

    def test_bit_layout(self) -> None:
        """``a:32, b:16, skip 4, c:12, skip 2, d:62`` of sha256(secret)."""
        import hashlib

        h = int.from_bytes(hashlib.sha256(b"secret").digest()[:16], "big")
        value = uuid.UUID(relay_id("secret")).int
        self.assertEqual(value >> 80, h >> 80)
        self.assertEqual((value >> 64) & 0xFFF, (h >> 64) & 0xFFF)
        self.assertEqual(value & ((1 << 62) - 1), h & ((1 << 62) - 1))


class PresenceTests(SynchronousTestCase):
    def test_remote_entries_expire_without_announcements(self) -> None:
        """A node that stops heartbeating loses its entries after ``expiry`` seconds."""
        presence = Presence("me", expiry=15)
        gw = GatewayEntry("g1", "acct", "site", "1.6.1")
        self.assertEqual(presence.announce("other", [gw], 100.0), {GATEWAY})
        self.assertEqual(presence.gateways("acct"), [gw])
        self.assertEqual(presence.expire(110.0), set())
        presence.announce("other", [gw], 110.0)
        self.assertEqual(presence.expire(124.0), set())
        self.assertEqual(presence.expire(126.0), {GATEWAY})
        self.assertEqual(presence.gateways("acct"), [])

    def test_leave_bye_and_own_announcements(self) -> None:
        presence = Presence("me")
        relay = RelayEntry("r1", "s", "203.0.113.1", None, 3478)
        presence.announce("other", [relay], 1.0)
        self.assertFalse(presence.leave("third", RELAY, "r1"))
        self.assertTrue(presence.leave("other", RELAY, "r1"))
        presence.announce("other", [relay], 1.0)
        self.assertEqual(presence.forget_node("other"), {RELAY})
        self.assertEqual(presence.announce("me", [relay], 1.0), set())
        self.assertEqual(presence.relays(), [])

    def test_local_entries(self) -> None:
        presence = Presence("me")
        gw = GatewayEntry("g1", "acct", None)
        presence.add_local(gw)
        self.assertTrue(presence.is_local(GATEWAY, "g1"))
        self.assertFalse(presence.remove_local(GATEWAY, "g1", GatewayEntry("g1", "x", None)))
        self.assertTrue(presence.remove_local(GATEWAY, "g1", gw))
        self.assertFalse(presence.is_online(GATEWAY, "g1"))

    def test_entry_json_round_trip_and_errors(self) -> None:
        for entry in (GatewayEntry("g", "a", "s", "1.2.3", 1.5, -2.0),
                      RelayEntry("r", "sec", None, "2001:db8::1", 3478, None, None)):
            self.assertEqual(entry_from_json(entry.to_json()), entry)
        bad: object
        for bad in ({"kind": "relay", "id": "r", "stamp_secret": "s", "port": 0},
                    {"kind": "gateway", "id": 1}, {"kind": "x"}, []):
            with self.assertRaises(PresenceError):
                entry_from_json(bad)


class ClusterMessageTests(SynchronousTestCase):
    def test_round_trips(self) -> None:
        messages: list[cluster.ClusterMessage] = [
            cluster.Announce("n1", (GatewayEntry("g", "a", "s"),
                                    RelayEntry("r", "x", "1.2.3.4", None, 3478))),
            cluster.Leave("n1", "relay", "r"),
            cluster.Bye("n1"),
            cluster.Deliver("n1", "device", {"type": "ice_candidates", "candidates": ["c"]}),
        ]
        for message in messages:
            self.assertEqual(cluster.decode(message.encode()), message)

    def test_chunks_fit_notify(self) -> None:
        """Announcements are split to stay under PostgreSQL's 8000-byte payload limit."""
        entries = [RelayEntry(str(uuid.uuid4()), "f" * 64, "203.0.113.1", "2001:db8::1", 3478)
                   for _ in range(200)]
        chunks = cluster.chunk_announce("node", entries)
        self.assertGreater(len(chunks), 1)
        for chunk in chunks:
            self.assertLessEqual(len(chunk.encode().encode()), cluster.MAX_PAYLOAD)
        self.assertEqual([e for c in chunks for e in c.entries], entries)
        self.assertEqual(cluster.chunk_announce("node", []), [cluster.Announce("node", ())])

    @settings(max_examples=200)
    @given(st.one_of(st.text(max_size=200), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["v", "from", "kind", "to", "msg", "entries"]), inner,
                          max_size=6),
        max_leaves=20,
    ).map(lambda v: __import__("json").dumps(v))))
    def test_arbitrary_payloads(self, text: str) -> None:
        """Anything on the channel either decodes or raises ``ClusterMessageError``."""
        try:
            cluster.decode(text)
        except cluster.ClusterMessageError:
            pass
