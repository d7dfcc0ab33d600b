"""Two portal nodes on real loopback sockets sharing one PostgreSQL database.

A gateway connects to node B, a client to node A; the client's authorization
crosses the nodes through PostgreSQL ``NOTIFY`` and so does a store change
made through node B's connection.  Skipped where no throwaway PostgreSQL
cluster can run (see ``tests/portal/pgcluster.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from firezone.portal.api.node import ApiNode, NodeConfig
from firezone.portal.api.service import api_site
from firezone.portal.api.views import FlowLogsConfig
from firezone.portal.store import IPortalStore, open_store
from firezone.portal.tokens import Tokens
from tests.portal import pgcluster
from tests.portal.api.harness import CLIENT_UA, GATEWAY_UA, KEY, public_key

reactor: Any = _reactor


class _Collector(WebSocketClientProtocol):  # type: ignore[misc]
    """Keeps every frame; ``expect`` waits for one matching a predicate."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self.ref = 0
        self.opened: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        self.frames.append(frame)
        for waiter in list(self.waiters):
            if waiter[0](frame):
                self.waiters.remove(waiter)
                waiter[1].callback(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def expect(self, match: Callable[[dict[str, Any]], bool]) -> Deferred[dict[str, Any]]:
        for frame in self.frames:
            if match(frame):
                return _fired(frame)
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiters.append((match, d))
        return d.addTimeout(20, reactor)

    def event(self, name: str) -> Deferred[dict[str, Any]]:
        return self.expect(lambda f: f["event"] == name)

    def push(self, topic: str, event: str, payload: Any) -> int:
        ref = self.ref
        self.ref += 1
        frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        self.sendMessage(json.dumps(frame).encode())
        return ref


def _fired(value: dict[str, Any]) -> Deferred[dict[str, Any]]:
    d: Deferred[dict[str, Any]] = Deferred()
    d.callback(value)
    return d


class PostgresNodesTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        reason = pgcluster.unavailable_reason()
        if reason is not None:
            raise SkipTest(reason)
        cluster = pgcluster.shared_cluster()
        self.dsn = cluster.create_database()
        self.addCleanup(cluster.drop_database, self.dsn)

    async def _store(self) -> IPortalStore:
        store = await open_store(self.dsn, clock=reactor, reactor=reactor)
        self.addCleanup(store.close)
        return store

    async def _node(self, store: IPortalStore, node_id: str) -> int:
        node = ApiNode(store, Tokens(store, KEY, reactor), KEY, reactor,
                       NodeConfig(flow_logs=FlowLogsConfig("http://127.0.0.1")),
                       node_id=node_id)
        await node.start()
        port = reactor.listenTCP(0, api_site(node, reactor), interface="127.0.0.1")
        self.addCleanup(lambda: Deferred.fromCoroutine(node.stop()))
        self.addCleanup(port.stopListening)
        self.nodes[node_id] = node
        return int(port.getHost().port)

    async def _connect(self, port: int, path: str, token: str, query: dict[str, str],
                       user_agent: str) -> _Collector:
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{port}{path}?{urlencode(query)}",
            headers={"X-Authorization": f"Bearer {token}"}, useragent=user_agent,
        )
        factory.protocol = _Collector
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                   serverConnectionDropTimeout=0, autoPingInterval=0)
        connected: list[_Collector] = []

        def build(addr: Any) -> _Collector:
            protocol: Any = WebSocketClientFactory.buildProtocol(factory, addr)
            connected.append(protocol)
            return protocol

        factory.buildProtocol = build  # type: ignore[method-assign]
        reactor.connectTCP("127.0.0.1", port, factory)
        while not connected:
            await task.deferLater(reactor, 0.01, lambda: None)
        protocol = connected[0]
        await protocol.opened.addTimeout(20, reactor)

        async def close() -> None:
            if not protocol.lost.called:
                protocol.sendClose(1000)
                await protocol.lost
        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return protocol

    async def _until(self, condition: Callable[[], bool]) -> None:
        for _ in range(1000):
            if condition():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("condition not reached")

    def test_client_on_a_gets_authorization_from_gateway_on_b(self) -> Deferred[None]:
        """The client on node A is authorized by the gateway on node B; a change made
        through node B's connection reaches the client on node A."""
        return Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        self.nodes: dict[str, ApiNode] = {}
        store_a = await self._store()
        store_b = await self._store()
        tokens = Tokens(store_a, KEY, reactor)
        created = await store_a.create_account("acme", "Acme")
        account_id = created.account.id
        site = await store_a.create_site(account_id, "Main")
        alice = await store_a.create_actor(account_id, "account_user", "Alice", "a@acme.test")
        network = await store_a.create_resource(account_id, "cidr", "10.0.0.0/16", "Net",
                                                site.id)
        await store_a.create_policy(account_id, created.everyone_group.id, network.id)
        client_token = (await tokens.issue_client_token(account_id, alice.id)).encoded
        gateway_token = (await tokens.issue_gateway_token(account_id, site.id)).encoded

        port_a = await self._node(store_a, "node-a")
        port_b = await self._node(store_b, "node-b")

        gateway = await self._connect(
            port_b, "/gateway/v2/websocket", gateway_token,
            {"external_id": "gw-1", "name": "gw", "public_key": public_key()}, GATEWAY_UA)
        gateway.push("gateway", "phx_join", None)
        await gateway.event("init")
        await self._until(lambda: bool(self.nodes["node-a"].online_gateways(account_id)))

        client = await self._connect(
            port_a, "/client/v2/websocket", client_token,
            {"external_id": "laptop", "name": "laptop", "public_key": public_key()}, CLIENT_UA)
        client.push("client", "phx_join", None)
        init = await client.event("init")
        self.assertEqual([r["id"] for r in init["payload"]["resources"]], [network.id])

        client.push("client", "request_authorization",
                    {"resource_id": network.id, "connected_gateway_ids": []})
        create = await gateway.event("create_authorization")
        ref = gateway.push("gateway", "authorization_created", {"ref": create["payload"]["ref"]})
        reply = await gateway.expect(lambda f: f["event"] == "phx_reply" and f["ref"] == ref)
        self.assertEqual(reply["payload"]["status"], "ok")
        created_msg = await client.event("authorization_created")
        gateway_row = await store_a.find_device(account_id, "gateway", "gw-1")
        self.assertEqual(created_msg["payload"]["gateway_id"], gateway_row.id)
        self.assertEqual(created_msg["payload"]["preshared_key"],
                         create["payload"]["client"]["preshared_key"])
        rows = await store_a.list_policy_authorizations(account_id)
        self.assertEqual([r.receiving_device_id for r in rows], [gateway_row.id])

        await store_b.delete_resource(account_id, network.id)
        deleted = await client.event("resource_deleted")
        self.assertEqual(deleted["payload"], network.id)
        rejected = await gateway.event("reject_access")
        self.assertEqual(rejected["payload"]["resource_id"], network.id)
