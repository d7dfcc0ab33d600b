"""An in-memory portal for the API tests: SQLite store, one or more nodes, and peers.

Everything runs on one ``MemoryReactorClock``: the store's clock, the node's
timers, twisted.web's and Autobahn's.  Connections are ``iosim`` pairs between
the API site and either a raw HTTP client (to read refusals byte for byte) or
Autobahn's own WebSocket client protocol (to speak Phoenix frames).
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.server import Site

from firezone.portal.api.node import ApiNode, NodeConfig
from firezone.portal.api.service import api_site
from firezone.portal.api.views import FlowLogsConfig
from firezone.portal.store.records import Account, Actor, Group, Resource
from firezone.portal.store.records import Site as SiteRecord
from firezone.portal.store.sqlite import SQLiteStore
from firezone.portal.tokens import Tokens

START = 1_782_756_000.0
KEY = bytes(range(64))
CLIENT_UA = "Ubuntu/22.4.0 headless-client/1.5.12 (x86_64; 6.5.0)"
OLD_CLIENT_UA = "Ubuntu/22.4.0 headless-client/1.5.3 (x86_64; 6.5.0)"
GATEWAY_UA = "Ubuntu/22.4.0 gateway/1.6.1 (x86_64; 6.5.0)"
RELAY_UA = "Ubuntu/22.4.0 relay/1.6.0 (x86_64; 6.5.0)"
CANDIDATE = "candidate:7031633958891736544 1 udp 50331391 35.244.108.190 53909 typ relay"


def public_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def wait(d: Any) -> Any:
    """The result of an already-fired Deferred (SQLite store calls are synchronous)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class _ClockTimer:
    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, func, *a, **kw)


class RawHTTP:
    """Collects whatever the server answers to one raw request."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.transport: Any = None
        self.lost = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = True

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head, _, body = self.data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body


class _PeerProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    def onOpen(self) -> None:
        self.factory.peer.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.peer.received.append(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.peer.closed = True
        self.factory.peer.close_code = code


class Peer:
    """A WebSocket client speaking Phoenix frames to the portal."""

    def __init__(self, world: World, pump: iosim.IOPump, protocol: _PeerProtocol) -> None:
        self.world = world
        self.pump = pump
        self.protocol = protocol
        self.received: list[dict[str, Any]] = []
        self.opened = False
        self.closed = False
        self.close_code: int | None = None
        self.topic = "client"
        self._ref = 0

    def flush(self) -> None:
        self.world.flush()

    def send_raw(self, text: str | bytes, binary: bool = False) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.protocol.sendMessage(data, isBinary=binary)
        self.flush()

    def send(self, topic: str, event: str, payload: Any, ref: int | None = -1) -> int | None:
        if ref == -1:
            ref = self._ref
            self._ref += 1
        frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        self.send_raw(json.dumps(frame))
        return ref

    def push(self, event: str, payload: Any) -> int | None:
        return self.send(self.topic, event, payload)

    def join(self, topic: str, payload: Any = None) -> dict[str, Any]:
        ref = self.send(topic, "phx_join", payload)
        return self.reply(ref)

    def reply(self, ref: int | None) -> dict[str, Any]:
        for frame in self.received:
            if frame["event"] == "phx_reply" and frame["ref"] == ref:
                return frame["payload"]  # type: ignore[no-any-return]
        raise AssertionError(f"no reply to ref {ref}: {self.received}")

    def events(self, event: str) -> list[Any]:
        return [f["payload"] for f in self.received if f["event"] == event]

    def last(self, event: str) -> Any:
        found = self.events(event)
        assert found, f"no {event!r} among {[f['event'] for f in self.received]}"
        return found[-1]

    def clear(self) -> None:
        self.received.clear()

    def close(self) -> None:
        self.protocol.sendClose(1000)
        self.flush()


@dataclass
class Fixture:
    account: Account
    everyone: Group
    engineers: Group
    site: SiteRecord
    alice: Actor
    network: Resource
    wiki: Resource
    client_token: str
    gateway_token: str
    relay_token: str


class World:
    """One store, one clock, and any number of nodes sharing them."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.store = SQLiteStore.open(":memory:", self.clock)
        self.tokens = Tokens(self.store, KEY, self.clock)
        self.nodes: list[ApiNode] = []
        self.sites: list[Site] = []
        self.pumps: list[iosim.IOPump] = []
        self._ip = 10

    # -- nodes ---------------------------------------------------------------------------------
    def node(self, node_id: str = "node-a", **config: Any) -> ApiNode:
        node = ApiNode(
            self.store, self.tokens, KEY, self.clock,
            NodeConfig(flow_logs=FlowLogsConfig("https://portal.test"), **config),
            rng=random.Random(7), node_id=node_id,
        )
        wait(from_coroutine(node.start()))
        self.nodes.append(node)
        self.sites.append(api_site(node, self.clock))
        return node

    def flush(self) -> None:
        for _ in range(50):
            moved = False
            self.clock.advance(0)
            for pump in list(self.pumps):
                moved = pump.pump(advanceClock=False) or moved
            if not moved and not self.clock.getDelayedCalls():
                break
            if not moved:
                # Only timers in the future are left.
                if all(c.getTime() > self.clock.seconds() for c in self.clock.getDelayedCalls()):
                    break

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    # -- fixtures ---------------------------------------------------------------------------------
    def fixture(self, slug: str = "acme") -> Fixture:
        created = wait(self.store.create_account(slug, slug.title()))
        account = created.account
        site = wait(self.store.create_site(account.id, "Main"))
        alice = wait(self.store.create_actor(account.id, "account_user", "Alice",
                                             f"alice@{slug}.test"))
        engineers = wait(self.store.create_group(account.id, "Engineers"))
        wait(self.store.add_membership(account.id, engineers.id, alice.id))
        network = wait(self.store.create_resource(
            account.id, "cidr", "10.0.0.0/16", "Network", site.id,
            filters=[{"protocol": "tcp", "ports": ["80", "8000-8080"]}, {"protocol": "icmp"}],
        ))
        wiki = wait(self.store.create_resource(
            account.id, "dns", "wiki.corp.example", "Wiki", site.id, ip_stack="ipv4_only",
        ))
        wait(self.store.create_policy(account.id, created.everyone_group.id, network.id))
        wait(self.store.create_policy(account.id, engineers.id, wiki.id))
        client = wait(self.tokens.issue_client_token(account.id, alice.id))
        gateway = wait(self.tokens.issue_gateway_token(account.id, site.id))
        relay = wait(self.tokens.issue_relay_token())
        return Fixture(account, created.everyone_group, engineers, site, alice, network, wiki,
                       client.encoded, gateway.encoded, relay.encoded)

    # -- connections -------------------------------------------------------------------------
    def next_ip(self) -> str:
        self._ip += 1
        return f"192.0.2.{self._ip}"

    def _connect(self, protocol: Any, node_index: int, ip: str) -> iosim.IOPump:
        site = self.sites[node_index]
        server = site.buildProtocol(IPv4Address("TCP", ip, 40000))
        server_transport = iosim.FakeTransport(
            server, isServer=True,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 13000),
            peerAddress=IPv4Address("TCP", ip, 40000),
        )
        client_transport = iosim.FakeTransport(
            protocol, isServer=False,
            hostAddress=IPv4Address("TCP", ip, 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 13000),
        )
        pump = iosim.connect(server, server_transport, protocol, client_transport, greet=False)
        self.pumps.append(pump)
        self.flush()
        return pump

    def raw(
        self, path: str, *, token: str | None = None, query: dict[str, str] | None = None,
        user_agent: str | None = CLIENT_UA, header_token: bool = True, node: int = 0,
        ip: str | None = None, upgrade: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        q = dict(query or {})
        if token is not None and not header_token:
            q["token"] = token
        target = path + ("?" + urlencode(q) if q else "")
        lines = [f"GET {target} HTTP/1.1", "Host: portal.test"]
        if upgrade:
            lines += ["Upgrade: websocket", "Connection: Upgrade",
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
        if token is not None and header_token:
            lines.append(f"X-Authorization: Bearer {token}")
        if user_agent is not None:
            lines.append(f"User-Agent: {user_agent}")
        client = RawHTTP(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._connect(client, node, ip or self.next_ip())
        return client.response()

    def peer(
        self, path: str, *, token: str, query: dict[str, str] | None = None,
        user_agent: str = CLIENT_UA, node: int = 0, ip: str | None = None,
    ) -> Peer:
        url = f"ws://portal.test{path}" + ("?" + urlencode(query) if query else "")
        factory = WebSocketClientFactory(
            url, headers={"X-Authorization": f"Bearer {token}"}, useragent=user_agent,
            reactor=self.clock,
        )
        factory._batched_timer = _ClockTimer(self.clock)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                   serverConnectionDropTimeout=0, autoPingInterval=0)
        factory.protocol = _PeerProtocol
        protocol = factory.buildProtocol(None)
        peer = Peer(self, None, protocol)  # type: ignore[arg-type]
        factory.peer = peer  # type: ignore[attr-defined]
        peer.pump = self._connect(protocol, node, ip or self.next_ip())
        return peer

    def client(
        self, fx: Fixture, *, token: str | None = None, external_id: str = "laptop-1",
        key: str | None = None, user_agent: str = CLIENT_UA, node: int = 0, v1: bool = False,
        join: bool = True, ip: str | None = None,
    ) -> Peer:
        path = "/client/websocket" if v1 else "/client/v2/websocket"
        peer = self.peer(path, token=token or fx.client_token, user_agent=user_agent, node=node,
                         query={"external_id": external_id, "name": "Laptop",
                                "public_key": key or public_key()}, ip=ip)
        assert peer.opened, "the client socket was refused"
        peer.topic = "client"
        if join:
            assert peer.join("client")["status"] == "ok"
        return peer

    def gateway(
        self, fx: Fixture, *, external_id: str = "gw-1", key: str | None = None,
        user_agent: str = GATEWAY_UA, node: int = 0, v1: bool = False, join: bool = True,
        ip: str | None = None,
    ) -> Peer:
        path = "/gateway/websocket" if v1 else "/gateway/v2/websocket"
        peer = self.peer(path, token=fx.gateway_token, user_agent=user_agent, node=node,
                         query={"external_id": external_id, "name": "Gateway",
                                "public_key": key or public_key()}, ip=ip)
        assert peer.opened, "the gateway socket was refused"
        peer.topic = "gateway"
        if join:
            assert peer.join("gateway")["status"] == "ok"
        return peer

    def relay(
        self, fx: Fixture, *, secret: str, ipv4: str = "203.0.113.7", node: int = 0,
        join: bool = True,
    ) -> Peer:
        peer = self.peer("/relay/websocket", token=fx.relay_token, user_agent=RELAY_UA,
                         node=node, query={"ipv4": ipv4, "port": "3478"})
        assert peer.opened, "the relay socket was refused"
        peer.topic = "relay"
        if join:
            assert peer.join("relay", {"stamp_secret": secret})["status"] == "ok"
        return peer


def from_coroutine(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)
