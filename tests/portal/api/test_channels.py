"""Client, gateway and relay channels end to end over in-memory WebSockets (REFERENCE 1.2-1.5)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import ice_credentials, turn_password, wireguard_psk
from firezone.portal.api import ingest
from firezone.portal.presence import relay_id
from tests.portal.api.harness import (
    CANDIDATE,
    OLD_CLIENT_UA,
    Fixture,
    Peer,
    World,
    public_key,
    wait,
)

SECRET_A = "a" * 64
SECRET_B = "b" * 64


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.fx: Fixture = self.world.fixture()
        self.node = self.world.node()

    def authorize(self, client: Peer, resource_id: str, **extra: Any) -> None:
        client.push("request_authorization",
                    {"resource_id": resource_id, "connected_gateway_ids": [], **extra})


class FramingTests(_Base):
    def test_heartbeat_reply(self) -> None:
        """Heartbeats on topic ``phoenix`` are answered with the same ref."""
        client = self.world.client(self.fx)
        ref = client.send("phoenix", "heartbeat", {})
        self.assertEqual(client.reply(ref), {"status": "ok", "response": {}})

    def test_idle_timeout_37s(self) -> None:
        """The server closes a client socket after 37 s without any frame."""
        client = self.world.client(self.fx)
        self.world.advance(30)
        client.send("phoenix", "heartbeat", {})
        self.world.advance(36)
        self.assertFalse(client.closed)
        self.world.advance(1.5)
        self.assertTrue(client.closed)

    def test_relay_idle_timeout_41s(self) -> None:
        relay = self.world.relay(self.fx, secret=SECRET_A)
        self.world.advance(40)
        self.assertFalse(relay.closed)
        self.world.advance(1.5)
        self.assertTrue(relay.closed)
        self.assertEqual(self.node.presence.relays(), [])

    def test_unknown_message(self) -> None:
        """Unknown events (and known ones with the wrong payload) get ``unknown_message``."""
        client = self.world.client(self.fx)
        for event, payload in (("foo", {}), ("new_gateway_ice_candidates", {"x": 1}),
                               ("request_authorization", None)):
            ref = client.push(event, payload)
            self.assertEqual(client.reply(ref),
                             {"status": "error", "response": {"reason": "unknown_message"}})
        self.assertFalse(client.closed)

    def test_wrong_topic(self) -> None:
        """Joining ``gateway`` on a client socket is ``unmatched topic``."""
        client = self.world.client(self.fx, join=False)
        reply = client.join("gateway")
        self.assertEqual(reply, {"status": "error", "response": {"reason": "unmatched topic"}})

    def test_malformed_and_oversized_frames(self) -> None:
        """Garbage is ignored; a frame over 1 MiB closes the socket with 1009."""
        client = self.world.client(self.fx)
        client.send_raw("{not json")
        client.send_raw(b"\x00\x01", binary=True)
        ref = client.send("phoenix", "heartbeat", {})
        self.assertEqual(client.reply(ref)["status"], "ok")
        client.send_raw("x" * (1024 * 1024 + 1))
        self.assertTrue(client.closed)
        self.assertEqual(client.close_code, 1009)


class ClientInitTests(_Base):
    def test_init_payload(self) -> None:
        """``init`` lists the connectable resources, relays, interface and disabled flow logs."""
        relay = self.world.relay(self.fx, secret=SECRET_A)
        self.assertEqual(relay.last("init"), {})
        key = public_key()
        client = self.world.client(self.fx, key=key)
        init = client.last("init")
        self.assertEqual(init["flow_logs"]["upload_interval_secs"], 0)
        self.assertEqual(sorted(r["id"] for r in init["resources"]),
                         sorted([self.fx.network.id, self.fx.wiki.id]))
        network = next(r for r in init["resources"] if r["id"] == self.fx.network.id)
        self.assertEqual(network["sites"], [{"id": self.fx.site.id, "name": "Main"}])
        self.assertEqual(network["filters"][0],
                         {"protocol": "tcp", "port_range_start": 80, "port_range_end": 80})
        device = wait(self.world.store.find_device(self.fx.account.id, "client", "laptop-1"))
        self.assertEqual((init["interface"]["ipv4"], init["interface"]["ipv6"]),
                         (device.ipv4, device.ipv6))
        [view] = init["relays"]
        self.assertEqual(view["id"], relay_id(SECRET_A))
        self.assertEqual(view["addr"], "203.0.113.7:3478")
        self.assertEqual(view["password"], turn_password(view["username"], SECRET_A))
        token = wait(self.world.store.list_tokens(self.fx.account.id, "client"))[0]
        self.assertEqual(view["expires_at"], int(token.expires_at or 0))
        self.assertEqual(init["account_slug"], "acme")

    def test_old_client_gets_gateway_groups(self) -> None:
        """Clients before the ``sites`` payload get the ``gateway_groups`` key."""
        client = self.world.client(self.fx, user_agent=OLD_CLIENT_UA)
        resource = client.last("init")["resources"][0]
        self.assertIn("gateway_groups", resource)
        self.assertNotIn("sites", resource)

    def test_relays_chosen_two(self) -> None:
        """With three relays online a device is given two."""
        for secret in (SECRET_A, SECRET_B, "c" * 64):
            self.world.relay(self.fx, secret=secret)
        client = self.world.client(self.fx)
        self.assertEqual(len({r["id"] for r in client.last("init")["relays"]}), 2)


class AuthorizationTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.gw_key = public_key()
        self.gateway = self.world.gateway(self.fx, key=self.gw_key)
        self.client_key = public_key()
        self.client = self.world.client(self.fx, key=self.client_key)

    def test_round_trip(self) -> None:
        """request_authorization -> create_authorization (signed ref, PSK, ICE, JWT) ->
        authorization_created (gateway) -> authorization_created (client)."""
        self.authorize(self.client, self.fx.network.id)
        create = self.gateway.last("create_authorization")
        client_dev = wait(self.world.store.find_device(self.fx.account.id, "client", "laptop-1"))
        gw_dev = wait(self.world.store.find_device(self.fx.account.id, "gateway", "gw-1"))
        psk = wireguard_psk(client_dev.psk_base, gw_dev.psk_base, client_dev.id, gw_dev.id,
                            self.client_key, self.gw_key)
        ice = ice_credentials(client_dev.id, self.client_key, gw_dev.id, self.gw_key)
        self.assertEqual(create["client"]["preshared_key"], psk)
        self.assertEqual(create["client"]["id"], client_dev.id)
        self.assertEqual(create["client_ice_credentials"],
                         {"username": ice.initiator_username, "password": ice.initiator_password})
        self.assertEqual(create["gateway_ice_credentials"],
                         {"username": ice.receiver_username, "password": ice.receiver_password})
        self.assertEqual(create["resource"]["id"], self.fx.network.id)
        self.assertIsInstance(create["expires_at"], int)
        header, claims = ingest.decode_unverified(create["flow_logs_ingest_token"])
        self.assertEqual((header["alg"], claims["role"]), ("HS256", "responder"))
        self.assertFalse(claims["uploads_enabled"])
        [row] = wait(self.world.store.list_policy_authorizations(self.fx.account.id))
        self.assertEqual((row.initiating_device_id, row.receiving_device_id, row.resource_id,
                          row.id), (client_dev.id, gw_dev.id, self.fx.network.id,
                                    claims["policy_authorization_id"]))
        self.assertEqual(self.client.events("authorization_created"), [])

        ref = self.gateway.push("authorization_created", {"ref": create["ref"]})
        self.assertEqual(self.gateway.reply(ref), {"status": "ok", "response": {}})
        created = self.client.last("authorization_created")
        self.assertEqual(created["gateway_id"], gw_dev.id)
        self.assertEqual(created["site_id"], self.fx.site.id)
        self.assertEqual(created["gateway_public_key"], self.gw_key)
        self.assertEqual((created["gateway_ipv4"], created["gateway_ipv6"]),
                         (gw_dev.ipv4, gw_dev.ipv6))
        self.assertEqual(created["preshared_key"], psk)
        self.assertEqual(created["client_ice_credentials"], create["client_ice_credentials"])
        self.assertFalse(created["use_iceless"])
        _, client_claims = ingest.decode_unverified(created["flow_logs_ingest_token"])
        self.assertEqual(client_claims["role"], "initiator")
        # The 15 s timer was cancelled: no failure follows.
        self.world.advance(20)
        self.assertEqual(self.client.events("authorization_creation_failed"), [])

    def test_timeout_offline(self) -> None:
        """Without the gateway's answer the client gets ``offline`` after 15 s."""
        self.authorize(self.client, self.fx.network.id)
        self.world.advance(14.9)
        self.assertEqual(self.client.events("authorization_creation_failed"), [])
        self.world.advance(0.2)
        self.assertEqual(self.client.last("authorization_creation_failed"),
                         {"resource_id": self.fx.network.id, "reason": "offline"})
        # A late answer is ignored.
        self.gateway.push("authorization_created",
                          {"ref": self.gateway.last("create_authorization")["ref"]})
        self.assertEqual(self.client.events("authorization_created"), [])

    def test_forged_and_foreign_refs(self) -> None:
        """A ref this portal did not sign for this gateway is ``invalid_ref``."""
        self.authorize(self.client, self.fx.network.id)
        good = self.gateway.last("create_authorization")["ref"]
        other = self.world.gateway(self.fx, external_id="gw-2")
        for peer, ref in ((self.gateway, "signed-reference"), (self.gateway, good[:-2] + "AA"),
                          (other, good)):
            r = peer.push("authorization_created", {"ref": ref})
            self.assertEqual(peer.reply(r),
                             {"status": "error", "response": {"reason": "invalid_ref"}})
        self.assertEqual(self.client.events("authorization_created"), [])

    def test_not_found_for_unknown_and_foreign_resources(self) -> None:
        """Unknown ids, another account's resources and non-UUIDs are ``not_found``."""
        other = self.world.fixture("globex")
        for rid in ("4a7d1ea2-0000-4000-8000-000000000000", other.network.id):
            self.authorize(self.client, rid)
            self.assertEqual(self.client.last("authorization_creation_failed"),
                             {"resource_id": rid, "reason": "not_found"})
        self.authorize(self.client, "nope")
        self.assertEqual(self.client.last("authorization_creation_failed")["reason"], "not_found")
        self.assertEqual(self.gateway.events("create_authorization"), [])

    def test_forbidden_with_violated_properties(self) -> None:
        """Failing conditions are ``forbidden`` with the violated properties."""
        [policy] = wait(self.world.store.list_policies(self.fx.account.id,
                                                       resource_id=self.fx.wiki.id))
        wait(self.world.store.update_policy(self.fx.account.id, policy.id, conditions=[
            {"property": "remote_ip", "operator": "is_in_cidr", "values": ["10.0.0.0/8"]},
        ]))
        self.world.flush()
        self.authorize(self.client, self.fx.wiki.id)
        self.assertEqual(self.client.last("authorization_creation_failed"), {
            "resource_id": self.fx.wiki.id, "reason": "forbidden",
            "violated_properties": ["remote_ip"],
        })

    def test_offline_and_version_mismatch(self) -> None:
        """No gateway online is ``offline``; only incompatible ones is ``version_mismatch``."""
        self.gateway.close()
        self.authorize(self.client, self.fx.network.id)
        self.assertEqual(self.client.last("authorization_creation_failed")["reason"], "offline")
        self.world.advance(1)
        self.world.gateway(self.fx, external_id="old",
                           user_agent="Ubuntu/22.4.0 gateway/1.2.0 (x86_64; 6.5.0)")
        self.authorize(self.client, self.fx.network.id)
        self.assertEqual(self.client.last("authorization_creation_failed")["reason"],
                         "version_mismatch")

    def test_ice_candidates_both_ways(self) -> None:
        """Client candidates reach the gateway as ``ice_candidates``/``invalidate_ice_candidates``
        with ``client_id``; the gateway's ``broadcast_*`` reach the client with ``gateway_id``."""
        client_id = wait(self.world.store.find_device(self.fx.account.id, "client",
                                                      "laptop-1")).id
        gateway_id = wait(self.world.store.find_device(self.fx.account.id, "gateway", "gw-1")).id
        self.client.push("new_gateway_ice_candidates",
                         {"gateway_id": gateway_id, "candidates": [CANDIDATE]})
        self.client.push("invalidate_gateway_ice_candidates",
                         {"gateway_id": gateway_id, "candidates": [CANDIDATE]})
        self.client.push("broadcast_ice_candidates",
                         {"gateway_ids": [gateway_id], "candidates": ["c2"]})
        self.assertEqual(self.gateway.events("ice_candidates"), [
            {"client_id": client_id, "candidates": [CANDIDATE]},
            {"client_id": client_id, "candidates": ["c2"]},
        ])
        self.assertEqual(self.gateway.events("invalidate_ice_candidates"),
                         [{"client_id": client_id, "candidates": [CANDIDATE]}])
        self.gateway.push("broadcast_ice_candidates",
                          {"client_ids": [client_id], "candidates": [CANDIDATE]})
        self.gateway.push("broadcast_invalidated_ice_candidates",
                          {"client_ids": [client_id], "candidates": [CANDIDATE]})
        self.assertEqual(self.client.events("ice_candidates"),
                         [{"gateway_id": gateway_id, "candidates": [CANDIDATE]}])
        self.assertEqual(self.client.events("invalidate_ice_candidates"),
                         [{"gateway_id": gateway_id, "candidates": [CANDIDATE]}])

    def test_candidates_do_not_cross_accounts(self) -> None:
        """A client cannot signal to another account's gateway."""
        other = self.world.fixture("globex")
        foreign = self.world.gateway(other, external_id="gx")
        gx = wait(self.world.store.find_device(other.account.id, "gateway", "gx")).id
        self.client.push("new_gateway_ice_candidates", {"gateway_id": gx, "candidates": ["c"]})
        self.assertEqual(foreign.events("ice_candidates"), [])

    def test_v1_names(self) -> None:
        """``/client/websocket`` speaks ``create_flow``/``flow_created``, the v1 gateway
        ``authorize_flow``/``flow_authorized``; v1 rejects a raw ``request_authorization``."""
        self.gateway.close()
        self.world.advance(1)
        gateway = self.world.gateway(self.fx, external_id="gw-v1", v1=True)
        client = self.world.client(self.fx, external_id="laptop-v1", v1=True)
        ref = client.push("request_authorization", {"resource_id": self.fx.network.id})
        self.assertEqual(client.reply(ref)["response"], {"reason": "unknown_message"})
        client.push("create_flow", {"resource_id": self.fx.network.id,
                                    "connected_gateway_ids": []})
        authorize = gateway.last("authorize_flow")
        gateway.push("flow_authorized", {"ref": authorize["ref"]})
        self.assertEqual(client.last("flow_created")["resource_id"], self.fx.network.id)
        client.push("create_flow", {"resource_id": self.fx.network.id})
        self.world.advance(16)
        self.assertEqual(client.last("flow_creation_failed")["reason"], "offline")

    def test_connected_gateways_preferred(self) -> None:
        """A gateway the client is already connected to is reused."""
        self.world.gateway(self.fx, external_id="gw-2")
        gw2 = wait(self.world.store.find_device(self.fx.account.id, "gateway", "gw-2")).id
        for _ in range(5):
            self.authorize(self.client, self.fx.network.id, connected_gateway_ids=[gw2])
        self.assertEqual(self.gateway.events("create_authorization"), [])

    def test_prepare_connection_legacy_reply(self) -> None:
        ref = self.client.push("prepare_connection", {"resource_id": self.fx.network.id})
        response = self.client.reply(ref)["response"]
        self.assertEqual(response["site_id"], self.fx.site.id)
        self.assertEqual(response["resource_id"], self.fx.network.id)

    def test_other_client_messages_accepted(self) -> None:
        """Capabilities, device-pool lookups and no_relays are understood."""
        for event, payload in (("set_snownet_capabilities", {"iceless": True}),
                               ("request_device_access", {}), ("no_relays", {})):
            self.client.push(event, payload)
        self.assertEqual(self.client.last("relays_presence"),
                         {"disconnected_ids": [], "connected": []})
        self.client.push("resolve_device_pool_domain",
                         {"resource_id": self.fx.network.id, "domain": "x.example"})
        self.assertEqual(self.client.last("device_pool_domain_resolution_failed")["reason"],
                         "not_found")
        errors = [f for f in self.client.received if f["event"] == "phx_reply"
                  and f["payload"]["status"] == "error"]
        self.assertEqual(errors, [])


class RelayPresenceTests(_Base):
    def test_debounced_relays_presence(self) -> None:
        """Relay changes are pushed 1 s after the last one, with the disconnected ids."""
        relay_a = self.world.relay(self.fx, secret=SECRET_A)
        client = self.world.client(self.fx)
        gateway = self.world.gateway(self.fx)
        self.world.relay(self.fx, secret=SECRET_B)
        self.world.advance(0.5)
        self.assertEqual(client.events("relays_presence"), [])
        self.world.advance(0.6)
        update = client.last("relays_presence")
        self.assertEqual(update["disconnected_ids"], [])
        self.assertEqual({r["id"] for r in update["connected"]},
                         {relay_id(SECRET_A), relay_id(SECRET_B)})
        self.assertEqual(gateway.last("relays_presence")["connected"][0]["expires_at"],
                         2145916800)
        relay_a.close()
        self.world.advance(1.1)
        update = client.last("relays_presence")
        self.assertEqual(update["disconnected_ids"], [relay_id(SECRET_A)])
        self.assertEqual([r["id"] for r in update["connected"]], [relay_id(SECRET_B)])

    def test_relay_join_needs_stamp_secret(self) -> None:
        relay = self.world.relay(self.fx, secret=SECRET_A, join=False)
        self.assertEqual(relay.join("relay", {})["status"], "error")
        ref = relay.join("relay", {"stamp_secret": SECRET_A})
        self.assertEqual(ref["status"], "ok")
        r = relay.push("anything", {})
        self.assertEqual(relay.reply(r)["response"], {"reason": "unknown_message"})
