"""Wire compatibility with the reference components, from the shared test vectors.

``/work/shared/vectors/firezone-messages`` holds every control-plane message
the Rust components' own tests parse, emit or reject.  Here:

* every client->portal and gateway->portal message is sent to our server and
  must be understood (no ``unknown_message``, no crash, the socket stays up);
* every portal->client and portal->gateway message type our server sends
  (collected from a scenario that makes it send all of them) must have the
  shape of the ``parses`` vectors of that type -- every key the vector has,
  with the same JSON type (``null`` matching an optional value), modulo the
  documented legacy keys Rust ignores -- and must not have the shape of a
  ``rejected`` one (it carries the keys whose absence got that one rejected);
* frames obey the ref rules: pushes carry ``ref`` null, replies the request's
  integer ref, never a string;
* refusals are problem details as the ``http_problem_details`` vectors.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from firezone.portal.api import ingest
from firezone.portal.store.records import AccountConfig
from firezone.wire.phoenix import PhoenixMessage, ProblemDetails
from tests.portal.api.harness import CANDIDATE, Peer, World, public_key, wait

VECTORS = Path("/work/shared/vectors/firezone-messages")

#: Keys of vectors that Rust ignores and the reference no longer sends, by context.
IGNORED = {
    # Vectors of "unknown fields are ignored" tests.
    "*": {"future_field"},
    "create_authorization": {"actor", "flow_id"},
    "authorize_flow": {"actor", "flow_id"},
    # Extra fields in resource lists that the parser skips (tests of tolerance).
    "resource": {"ipv4", "ipv6", "not", "some_other"},
    # The client view of the Internet resource has no name (``client/views/resource.ex``).
    "resource:internet": {"name"},
}

#: Keys our messages carry that no vector shows, each documented in REFERENCE 1.3/1.4.
DOCUMENTED_EXTRAS = {
    ("portal-to-client", "init"): {"account_slug", "actor_name", "authorizations", "relays",
                                   "resources"},
    ("portal-to-client", "interface"): {"search_domain", "upstream_do53", "upstream_doh",
                                        "upstream_dns"},
    ("portal-to-client", "authorization_created"): {"use_iceless", "site_id"},
    # The full resource view (REFERENCE 1.3 "Resource view").
    ("portal-to-client", "resource_created_or_updated"): {"filters", "address_description",
                                                          "sites", "ip_stack"},
    ("portal-to-client", "flow_created"): {"use_iceless", "site_id"},
    ("portal-to-gateway", "create_authorization"): {"subject", "use_iceless"},
    ("portal-to-gateway", "authorize_flow"): {"subject", "use_iceless"},
    ("portal-to-gateway", "init"): {"authorizations", "account_slug", "relays"},
    ("portal-to-gateway", "client"): {"version", "device_serial", "device_os_name",
                                      "device_os_version", "device_uuid",
                                      "firebase_installation_id", "identifier_for_vendor"},
}

ALIASES = {"gateway_group_id": "site_id", "gateway_groups": "sites"}

#: Event names Rust accepts as aliases of the one we send.
EVENT_ALIASES = {("portal-to-client", "gateway_ice_candidates"): "ice_candidates"}

#: Vectors that are not shapes to produce, with why.
NOT_SHAPES = {
    "portal-to-client__init__6.json": "deliberately malformed resources (per-resource tolerance)",
}


def load_vectors() -> list[dict[str, Any]]:
    if not VECTORS.is_dir():
        raise SkipTest(f"{VECTORS} is not available")
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text())
        vector["file"] = path.name
        out.append(vector)
    return out


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def shape_problems(vector: Any, ours: Any, path: str, context: str) -> list[str]:
    """Where ``ours`` lacks a key of ``vector`` or has another JSON type there."""
    vt, ot = json_type(vector), json_type(ours)
    if "null" in (vt, ot):
        return []
    if vt != ot:
        return [f"{path}: vector has {vt}, ours {ot}"]
    problems: list[str] = []
    if vt == "object":
        ignored = set(IGNORED.get(context, ())) | IGNORED["*"]
        if context == "resource" and vector.get("type") == "internet":
            ignored |= IGNORED["resource:internet"]
        for key, value in vector.items():
            if key in ignored:
                continue
            name = key if key in ours else ALIASES.get(key, key)
            if name not in ours:
                problems.append(f"{path}.{key}: missing")
                continue
            child = "resource" if key in ("resources", "resource") else key
            problems += shape_problems(value, ours[name], f"{path}.{key}", child)
    elif vt == "list" and vector and ours:
        for i, element in enumerate(vector):
            kind = element.get("type") if isinstance(element, dict) else None
            matching = [o for o in ours if not isinstance(o, dict) or kind is None
                        or o.get("type") == kind]
            for o in matching:
                problems += shape_problems(element, o, f"{path}[{i}]", context)
    return problems


def payload_of(vector: dict[str, Any]) -> Any:
    message = vector["message"]
    if vector["shape"] in ("frame", "event+payload"):
        return message.get("payload")
    return message


class Scenario:
    """Make the portal send every message type it can send; keep what it sent."""

    def __init__(self) -> None:
        w = self.world = World()
        fx = self.fx = w.fixture()
        w.node()
        store = w.store
        self.relay = w.relay(fx, secret="a" * 64)
        self.gateway = w.gateway(fx)
        self.gateway_v1 = w.gateway(fx, external_id="gw-v1", v1=True)
        self.client = w.client(fx)
        self.client_v1 = w.client(fx, external_id="laptop-v1", v1=True)
        client, gateway = self.client, self.gateway
        # Authorization round trips, both names.
        client.push("request_authorization", {"resource_id": fx.network.id,
                                              "connected_gateway_ids": [self.gateway_id()]})
        gateway.push("authorization_created",
                     {"ref": gateway.last("create_authorization")["ref"]})
        self.client_v1.push("create_flow", {"resource_id": fx.network.id,
                                            "connected_gateway_ids": [self.gateway_id("gw-v1")]})
        self.gateway_v1.push("flow_authorized",
                             {"ref": self.gateway_v1.last("authorize_flow")["ref"]})
        client.push("request_authorization", {"resource_id": str(fx.account.id)})
        self.client_v1.push("create_flow", {"resource_id": str(fx.account.id)})
        # ICE both ways.
        client_id = gateway.last("create_authorization")["client"]["id"]
        for event in ("new_gateway_ice_candidates", "invalidate_gateway_ice_candidates"):
            client.push(event, {"gateway_id": self.gateway_id(), "candidates": [CANDIDATE]})
        for event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
            gateway.push(event, {"client_ids": [client_id], "candidates": [CANDIDATE]})
        client.push("resolve_device_pool_domain",
                    {"resource_id": fx.network.id, "domain": "x.laptops.example.com"})
        # Store changes and presence.
        changes: list[tuple[Any, list[dict[str, Any]]]] = [
            (fx.network, [{"protocol": "udp", "ports": ["53"]}, {"protocol": "tcp"}]),
            (fx.network, [{"protocol": "tcp", "ports": ["10-20"]}, {"protocol": "udp"},
                          {"protocol": "icmp"}]),
            (fx.wiki, [{"protocol": "icmp"}, {"protocol": "tcp"}]),
        ]
        for resource, filters in changes:
            wait(store.update_resource(fx.account.id, resource.id, filters=filters))
            w.flush()
        wait(store.update_resource(fx.account.id, fx.wiki.id, name="Wiki (new)"))
        w.flush()
        wait(store.update_account(fx.account.id, config=AccountConfig(
            search_domain="corp.example", upstream_do53=("1.1.1.1",))))
        w.relay(fx, secret="b" * 64)
        self.relay.close()
        w.advance(1.1)
        wait(store.delete_resource(fx.account.id, fx.network.id))
        w.flush()
        for token in wait(store.list_tokens(fx.account.id, "client")):
            wait(store.delete_token(fx.account.id, token.id))
        w.flush()

    def gateway_id(self, external_id: str = "gw-1") -> str:
        return str(wait(self.world.store.find_device(self.fx.account.id, "gateway",
                                                     external_id)).id)

    def sent(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        by_type: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        peers: list[tuple[str, Peer]] = [
            ("portal-to-client", self.client), ("portal-to-client", self.client_v1),
            ("portal-to-gateway", self.gateway), ("portal-to-gateway", self.gateway_v1),
        ]
        for direction, peer in peers:
            for frame in peer.received:
                by_type[(direction, frame["event"])].append(frame)
        return by_type


_SENT: dict[tuple[str, str], list[dict[str, Any]]] = {}


def _sent() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """One scenario run shared by the outbound tests (trial has no class fixtures)."""
    if not _SENT:
        _SENT.update(Scenario().sent())
    return _SENT


class WireCompatibilityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.vectors = load_vectors()
        self.sent = _sent()

    def test_vector_set_is_complete(self) -> None:
        """All 89 vectors are read."""
        self.assertEqual(len(self.vectors), 89)

    def test_dns_and_cidr_descriptions_sent(self) -> None:
        """Both resource kinds the vectors describe were pushed."""
        kinds = {f["payload"]["type"]
                 for f in self.sent[("portal-to-client", "resource_created_or_updated")]}
        self.assertEqual(kinds, {"dns", "cidr"})

    def test_we_send_the_message_types(self) -> None:
        """The scenario really makes the portal send every type checked below."""
        expected = {
            ("portal-to-client", e) for e in (
                "init", "authorization_created", "authorization_creation_failed",
                "flow_created", "flow_creation_failed", "ice_candidates",
                "invalidate_ice_candidates", "relays_presence", "resource_created_or_updated",
                "resource_deleted", "config_changed", "disconnect", "phx_reply",
                "device_pool_domain_resolution_failed")
        } | {
            ("portal-to-gateway", e) for e in (
                "init", "create_authorization", "authorize_flow", "ice_candidates",
                "invalidate_ice_candidates", "relays_presence", "resource_updated",
                "reject_access")
        }
        self.assertEqual(expected - set(self.sent), set())

    def test_outbound_messages_have_the_parses_shapes(self) -> None:
        """Every ``parses`` vector of a type we send is matched by what we sent."""
        checked = 0
        for vector in self.vectors:
            direction, event = vector["direction"], vector["event"]
            if vector["expect"] != "parses" or vector["file"] in NOT_SHAPES:
                continue
            if direction not in ("portal-to-client", "portal-to-gateway"):
                continue
            ours = self._ours_for(vector)
            if ours is None:
                continue
            for sample in ours:
                problems = shape_problems(payload_of(vector), sample, event, event)
                self.assertEqual(problems, [], vector["file"])
            checked += 1
        # All but the device-pool messages and the legacy request_connection (REFERENCE 1.4:
        # HEAD gateways no longer parse it), which this portal never sends, and NOT_SHAPES.
        self.assertEqual(checked, 43)

    def _ours_for(self, vector: dict[str, Any]) -> list[Any] | None:
        direction, event, shape = vector["direction"], vector["event"], vector["shape"]
        event = EVENT_ALIASES.get((direction, event), event)
        if event == "filter":
            frames = self.sent.get((direction, "resource_updated"), [])
            filters = [f for frame in frames for f in frame["payload"]["filters"]]
            protocol = vector["message"]["protocol"]
            ranged = "port_range_start" in vector["message"]
            return [f for f in filters if f["protocol"] == protocol
                    and ("port_range_start" in f) == ranged] or None
        if event in ("resource_updated",) and shape == "payload-list":
            return [[f["payload"] for f in self.sent.get((direction, event), [])]] or None
        frames = self.sent.get((direction, event)) or []
        if not frames:
            return None
        if shape == "payload.resources":
            return [f["payload"]["resources"] for f in frames]
        if shape == "payload.flow_logs":
            return [f["payload"]["flow_logs"] for f in frames]
        payloads = [f["payload"] for f in frames]
        wanted = payload_of(vector)
        if isinstance(wanted, dict) and "type" in wanted:
            # A resource description: compare with ours of the same type.
            payloads = [p for p in payloads
                        if isinstance(p, dict) and p.get("type") == wanted["type"]]
        return payloads or None

    def test_outbound_extra_keys_are_documented(self) -> None:
        """Keys we send beyond the vectors are the ones REFERENCE documents."""
        vector_keys: dict[tuple[str, str], set[str]] = defaultdict(set)
        for vector in self.vectors:
            payload = payload_of(vector)
            if vector["shape"] in ("frame", "event+payload", "payload") \
                    and isinstance(payload, dict):
                key = (vector["direction"], vector["event"])
                vector_keys[key] |= set(payload)
                for k in payload:
                    if k in ALIASES:
                        vector_keys[key].add(ALIASES[k])
        for (direction, event), frames in self.sent.items():
            known = vector_keys.get((direction, event))
            if not known:
                continue
            for frame in frames:
                payload = frame["payload"]
                if not isinstance(payload, dict):
                    continue
                extra = set(payload) - known
                self.assertLessEqual(extra, DOCUMENTED_EXTRAS.get((direction, event), set()),
                                     f"{direction} {event}")
                if event == "init" and direction == "portal-to-client":
                    extra = set(payload["interface"]) - {"ipv4", "ipv6"}
                    self.assertLessEqual(extra, DOCUMENTED_EXTRAS[(direction, "interface")])
                if event == "create_authorization":
                    extra = set(payload["client"]) - {"id", "ipv4", "ipv6", "public_key",
                                                      "preshared_key"}
                    self.assertLessEqual(extra, DOCUMENTED_EXTRAS[(direction, "client")])

    def test_outbound_is_never_a_rejected_shape(self) -> None:
        """What got a ``rejected`` vector refused (a missing key) is present in ours."""
        checked = 0
        for vector in self.vectors:
            if vector["expect"] != "rejected":
                continue
            direction, event = vector["direction"], vector["event"]
            ours = self.sent.get((direction, event))
            if not ours:
                continue
            rejected = payload_of(vector)
            accepted = [payload_of(v) for v in self.vectors
                        if v["expect"] == "parses" and v["direction"] == direction
                        and v["event"] == event and isinstance(payload_of(v), dict)
                        and v["file"] not in NOT_SHAPES]
            missing = set().union(*(set(p) for p in accepted)) - set(rejected)
            self.assertTrue(missing, vector["file"])
            for frame in ours:
                payload = frame["payload"]
                self.assertFalse(set(payload) <= set(rejected), vector["file"])
                required = {k for k in missing if all(k in p for p in accepted)}
                self.assertLessEqual(required, set(payload), vector["file"])
            checked += 1
        self.assertGreaterEqual(checked, 5)

    def test_ingest_tokens_parse_like_the_test_token(self) -> None:
        """Our ingest JWTs are HS256 with every claim of connlib's TEST_INGEST_TOKEN."""
        reference = next(v for v in self.vectors
                         if v["file"] == "portal-to-client__authorization_created__1.json")
        _, ref_claims = ingest.decode_unverified(
            reference["message"]["payload"]["flow_logs_ingest_token"])
        required = set(ingest.REQUIRED_CLAIMS)
        self.assertLessEqual(required, set(ref_claims))
        for key in (("portal-to-client", "authorization_created"),
                    ("portal-to-gateway", "create_authorization")):
            for frame in self.sent[key]:
                token = frame["payload"]["flow_logs_ingest_token"]
                header, claims = ingest.decode_unverified(token)
                self.assertEqual(header["alg"], "HS256")
                self.assertLessEqual(required, set(claims))
                for claim in required:
                    self.assertEqual(json_type(claims[claim]), json_type(ref_claims[claim]), claim)

    def test_ref_rules(self) -> None:
        """Pushes have ``ref`` null, replies the integer ref of their request; never strings;
        every frame decodes with the shared codec."""
        for (_, event), frames in self.sent.items():
            for frame in frames:
                PhoenixMessage.from_json(frame)
                self.assertEqual(list(frame), ["topic", "event", "payload", "ref"])
                if event == "phx_reply":
                    self.assertIsInstance(frame["ref"], int)
                else:
                    self.assertIsNone(frame["ref"])


class InboundVectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.vectors = load_vectors()
        self.world = World()
        self.fx = self.world.fixture()
        self.world.node()

    def test_every_component_message_is_understood(self) -> None:
        """Each client->portal and gateway->portal vector is accepted: no ``unknown_message``,
        no crash, and the socket still answers a heartbeat afterwards."""
        gateway = self.world.gateway(self.fx)
        sent = 0
        for vector in self.vectors:
            direction = vector["direction"]
            if direction not in ("client-to-portal", "gateway-to-portal"):
                continue
            event = vector["event"]
            if direction == "gateway-to-portal":
                peer = gateway
            else:
                self.world.advance(1)
                peer = self.world.client(self.fx, external_id=f"c-{sent}",
                                         v1=event == "create_flow")
            if event == "phx_join":
                # The vector joins topic "test" (the Rust test server's); ours is "client".
                frame = dict(vector["message"], topic="test", ref=100)
                peer.send_raw(json.dumps(frame))
                self.assertEqual(peer.reply(100)["response"], {"reason": "unmatched topic"})
                frame["topic"], frame["ref"] = "client", 101
                peer.send_raw(json.dumps(frame))
                self.assertEqual(peer.reply(101)["status"], "ok")
                sent += 1
                continue
            payload = payload_of(vector)
            if vector["shape"] == "frame":
                frame = dict(vector["message"], topic=peer.topic)
                peer.send_raw(json.dumps(frame))
                ref = frame["ref"]
            else:
                ref = peer.push(event, payload)
            replies = [f for f in peer.received if f["event"] == "phx_reply" and f["ref"] == ref]
            for reply in replies:
                self.assertNotEqual(reply["payload"]["response"].get("reason"),
                                    "unknown_message", vector["file"])
            self.assertFalse(peer.closed, vector["file"])
            beat = peer.send("phoenix", "heartbeat", {})
            self.assertEqual(peer.reply(beat)["status"], "ok", vector["file"])
            sent += 1
        self.assertEqual(sent, 16)

    def test_framing_vectors(self) -> None:
        """Framing samples decode with the shared codec; sent to us they are answered or
        ignored, never fatal."""
        client = self.world.client(self.fx)
        for vector in self.vectors:
            if vector["direction"] != "framing" or not vector["frame"]:
                continue
            message = vector["message"]
            if vector["expect"] == "parses":
                PhoenixMessage.from_json(message)
            client.send_raw(json.dumps(message))
            self.assertFalse(client.closed, vector["file"])
        heartbeat = next(v for v in self.vectors if v["file"] == "framing__heartbeat__1.json")
        client.clear()
        client.send_raw(json.dumps(heartbeat["message"]))
        self.assertEqual(client.reply(heartbeat["message"]["ref"])["status"], "ok")

    def test_problem_details_vectors(self) -> None:
        """Our 401 body is the reference's byte for byte; every refusal decodes like the vectors."""
        status, headers, body = self.world.raw("/client/v2/websocket", token="bogus",
                                               query={"external_id": "x",
                                                      "public_key": public_key()})
        reference = next(v for v in self.vectors
                         if v["file"] == "framing__http_problem_details__1.json")
        self.assertEqual((status, headers["content-type"]),
                         (reference["http"]["status"], reference["http"]["content_type"]))
        self.assertEqual(json.loads(body), reference["message"])
        for vector in self.vectors:
            if vector["event"] == "http_problem_details" and vector["expect"] == "parses":
                ProblemDetails.decode(json.dumps(vector["message"]))
