"""Several portal nodes sharing one store: presence and delivery across nodes (REFERENCE 1.6).

The SQLite store delivers NOTIFY to every listener in the process, which is
exactly what PostgreSQL does for nodes sharing a database; the PostgreSQL run
is in ``test_integration``.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.api.node import ApiNode
from firezone.portal.presence import relay_id
from tests.portal.api.harness import CANDIDATE, GATEWAY_UA, World, public_key, wait


class TwoNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.fx = self.world.fixture()
        self.a: ApiNode = self.world.node("node-a")
        self.b: ApiNode = self.world.node("node-b")

    def test_authorization_across_nodes(self) -> None:
        """A client on node A gets an authorization from a gateway on node B, and their
        ICE candidates cross the nodes both ways."""
        gateway = self.world.gateway(self.fx, node=1)
        client = self.world.client(self.fx, node=0)
        self.assertIsNone(self.a.local(wait(self.world.store.find_device(
            self.fx.account.id, "gateway", "gw-1")).id))
        client.push("request_authorization", {"resource_id": self.fx.network.id})
        create = gateway.last("create_authorization")
        gateway.push("authorization_created", {"ref": create["ref"]})
        created = client.last("authorization_created")
        self.assertEqual(created["preshared_key"], create["client"]["preshared_key"])
        client.push("new_gateway_ice_candidates",
                    {"gateway_id": created["gateway_id"], "candidates": [CANDIDATE]})
        self.assertEqual(gateway.last("ice_candidates")["candidates"], [CANDIDATE])
        gateway.push("broadcast_ice_candidates",
                     {"client_ids": [create["client"]["id"]], "candidates": [CANDIDATE]})
        self.assertEqual(client.last("ice_candidates")["gateway_id"], created["gateway_id"])

    def test_change_on_one_node_reaches_clients_of_the_other(self) -> None:
        """Store changes are heard by every node; each serves its own channels."""
        client_a = self.world.client(self.fx, node=0)
        client_b = self.world.client(self.fx, node=1, external_id="laptop-2")
        wait(self.world.store.delete_resource(self.fx.account.id, self.fx.wiki.id))
        self.world.flush()
        self.assertEqual(client_a.events("resource_deleted"), [self.fx.wiki.id])
        self.assertEqual(client_b.events("resource_deleted"), [self.fx.wiki.id])

    def test_gateway_id_taken_on_another_node_is_409(self) -> None:
        key = public_key()
        self.world.gateway(self.fx, node=1, key=key)
        self.world.advance(1)
        status, _, body = self.world.raw(
            "/gateway/v2/websocket", token=self.fx.gateway_token, user_agent=GATEWAY_UA,
            query={"external_id": "gw-1", "public_key": public_key()}, node=0)
        self.assertEqual(status, 409, body)

    def test_presence_expires_when_a_node_stops_heartbeating(self) -> None:
        """Node B's gateway disappears from A 15 s after B's last announcement."""
        self.world.gateway(self.fx, node=1)
        self.assertEqual(len(self.a.online_gateways(self.fx.account.id)), 1)
        self.world.advance(10)
        self.b.heartbeat()
        self.world.advance(10)
        self.a.heartbeat()
        self.assertEqual(len(self.a.online_gateways(self.fx.account.id)), 1)
        self.world.advance(6)
        self.a.heartbeat()
        self.assertEqual(self.a.online_gateways(self.fx.account.id), [])
        client = self.world.client(self.fx, node=0)
        client.push("request_authorization", {"resource_id": self.fx.network.id})
        self.assertEqual(client.last("authorization_creation_failed")["reason"], "offline")

    def test_bye_removes_entries_at_once(self) -> None:
        self.world.relay(self.fx, secret="d" * 64, node=1)
        self.assertEqual([r.id for r in self.a.presence.relays()], [relay_id("d" * 64)])
        wait(self._stop(self.b))
        self.assertEqual(self.a.presence.relays(), [])

    def _stop(self, node: ApiNode) -> object:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(node.stop())

    def test_remote_relays_feed_init_and_presence(self) -> None:
        """Relays connected to node B are handed to clients on node A and announced to them."""
        self.world.relay(self.fx, secret="d" * 64, node=1)
        client = self.world.client(self.fx, node=0)
        self.assertEqual([r["id"] for r in client.last("init")["relays"]], [relay_id("d" * 64)])
        self.world.relay(self.fx, secret="e" * 64, node=1)
        self.world.advance(1.1)
        update = client.last("relays_presence")
        self.assertEqual({r["id"] for r in update["connected"]},
                         {relay_id("d" * 64), relay_id("e" * 64)})
