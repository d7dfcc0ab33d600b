"""Tests for firezone.control.client: the Autobahn adapter against scripted portals in memory.

Each dial is connected with ``twisted.test.iosim`` to a fresh server protocol:
an Autobahn ``WebSocketServerProtocol`` that speaks Phoenix, or a raw HTTP
responder that refuses the upgrade the way the portal does.  Time is a
``MemoryReactorClock``; no sockets, no global reactor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from firezone.control.channel import INVALID_TOKEN, ChannelFatal, ChannelState
from firezone.control.client import TCP_CONNECT_TIMEOUT, PortalChannelService, default_endpoint
from firezone.control.login import PortalAddress, portal_address
from firezone.wire import phoenix
from firezone.wire.phoenix import PhoenixMessage

STAMP = "ab" * 32
UA = "Linux/6.1 relay/0.1.0 (x86_64; 6.1)"


class RecordingObserver:
    def __init__(self) -> None:
        self.joined: list[Mapping[str, Any]] = []
        self.messages: list[tuple[str, Any]] = []
        self.disconnected: list[str] = []
        self.fatal: list[ChannelFatal] = []

    def on_joined(self, reply: Mapping[str, Any]) -> None:
        self.joined.append(reply)

    def on_message(self, event: str, payload: Any) -> None:
        self.messages.append((event, payload))

    def on_disconnected(self, reason: str) -> None:
        self.disconnected.append(reason)

    def on_fatal(self, reason: ChannelFatal) -> None:
        self.fatal.append(reason)


class PhoenixServer(WebSocketServerProtocol):
    """A portal socket: answers joins and (unless told not to) heartbeats."""

    def __init__(self, answer_heartbeats: bool = True) -> None:
        super().__init__()
        self.answer_heartbeats = answer_heartbeats
        self.request: Any = None
        self.received: list[PhoenixMessage] = []
        self.closed = False

    def onConnect(self, request: Any) -> None:
        self.request = request

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        msg = PhoenixMessage.decode(payload)
        self.received.append(msg)
        if msg.event == "phx_join":
            self.push(phoenix.phx_reply(msg.topic, msg.ref, "ok"))
            self.push(phoenix.push(msg.topic, "init", {}))
        elif msg.event == "heartbeat" and self.answer_heartbeats:
            self.push(phoenix.phx_reply("phoenix", msg.ref, "ok"))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.closed = True

    def push(self, msg: PhoenixMessage) -> None:
        self.sendMessage(msg.encode().encode())


class HTTPResponder(Protocol):
    """Reads the upgrade request and answers with ``parts`` (more with ``send_more``)."""

    def __init__(self, *parts: bytes, close: bool = True) -> None:
        self.parts = list(parts)
        self.close = close
        self.request = b""

    def dataReceived(self, data: bytes) -> None:
        first = b"\r\n\r\n" not in self.request
        self.request += data
        if first and b"\r\n\r\n" in self.request:
            self.send_more()

    def send_more(self) -> None:
        assert self.transport is not None
        if self.parts:
            self.transport.write(self.parts.pop(0))
        if not self.parts and self.close:
            self.transport.loseConnection()


class Silent(Protocol):
    """Accepts TCP and never answers (a hung TLS or upgrade)."""


def http_response(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def problem(status: int, code: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": "x", "status": status, "detail": detail,
                       "code": code}).encode()


PROBLEM_TYPE = "application/problem+json; charset=utf-8"


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, net: MemoryNetwork, address: PortalAddress) -> None:
        self.net = net
        self.address = address

    def connect(self, factory: Any) -> Deferred[Any]:
        return self.net.connect(self.address, factory)


class MemoryNetwork:
    """Hands every dial to the next server from ``serve`` through an iosim pump."""

    def __init__(self, reactor: MemoryReactorClock,
                 serve: Callable[[], Protocol | None]) -> None:
        self.reactor = reactor
        self.serve = serve
        self.dials: list[tuple[float, PortalAddress]] = []
        self.servers: list[Protocol] = []
        self.pumps: list[iosim.IOPump] = []

    def endpoint(self, reactor: Any, address: PortalAddress) -> IStreamClientEndpoint:
        return _MemoryEndpoint(self, address)

    def connect(self, address: PortalAddress, factory: Any) -> Deferred[Any]:
        self.dials.append((self.reactor.seconds(), address))
        server = self.serve()
        if server is None:
            return fail(ConnectionRefusedError("connection refused"))
        if isinstance(server, WebSocketServerProtocol):
            server_factory = WebSocketServerFactory(reactor=self.reactor)
            server_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
            server.factory = server_factory
        else:
            server.factory = Factory()
        client = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", address.port))
        client_io = iosim.FakeTransport(
            client, isServer=False, hostAddress=IPv4Address("TCP", "10.0.0.2", 40000),
            peerAddress=IPv4Address("TCP", "192.0.2.10", address.port),
        )
        server_io = iosim.FakeTransport(
            server, isServer=True, hostAddress=IPv4Address("TCP", "192.0.2.10", address.port),
            peerAddress=IPv4Address("TCP", "10.0.0.2", 40000),
        )
        pump = iosim.connect(server, server_io, client, client_io, greet=False,
                             clock=self.reactor)
        self.servers.append(server)
        self.pumps.append(pump)
        return succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


class AdapterHarness:
    def __init__(self, serve: Callable[[], Protocol | None], **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.net = MemoryNetwork(self.reactor, serve)
        self.observer = RecordingObserver()
        options: dict[str, Any] = {
            "topic": "relay",
            "join_payload": {"stamp_secret": STAMP},
            "observer": self.observer,
            "user_agent": UA,
            "params": {"name": "relay-1", "ipv4": "192.0.2.1", "ipv6": None, "port": 3478},
            "rng": lambda: 0.5,
            "endpoint_factory": self.net.endpoint,
        }
        options.update(kwargs)
        self.service = PortalChannelService(
            self.reactor, "ws://portal.test:8081", "relay", " tok\nen ", **options
        )

    def start(self) -> None:
        self.service.startService()
        self.net.flush()

    def run_for(self, seconds: float, step: float = 0.1) -> None:
        """Advance time in small steps, moving bytes after each; ends a hair past ``seconds``."""
        start = self.reactor.seconds()
        steps = max(1, round(seconds / step))
        for i in range(1, steps + 1):
            target = start + seconds * i / steps + 1e-6
            self.reactor.advance(target - self.reactor.seconds())
            self.net.flush()

    def server(self, n: int = -1) -> PhoenixServer:
        server = self.net.servers[n]
        assert isinstance(server, PhoenixServer)
        return server


class ConnectionTests(SynchronousTestCase):
    def test_join_heartbeat_and_push(self) -> None:
        """The relay dials /relay/websocket with its token and params, joins, beats, pushes."""
        h = AdapterHarness(PhoenixServer)
        h.start()
        server = h.server()
        request = server.request
        self.assertEqual(request.path, "/relay/websocket")
        self.assertEqual(request.params, {"name": ["relay-1"], "ipv4": ["192.0.2.1"],
                                          "port": ["3478"]})
        self.assertEqual(request.headers["x-authorization"], "Bearer token")
        self.assertEqual(request.headers["user-agent"], UA)
        join = server.received[0]
        self.assertEqual((join.topic, join.event, join.payload, join.ref),
                         ("relay", "phx_join", {"stamp_secret": STAMP}, 0))
        self.assertEqual(h.observer.joined, [{}])
        self.assertEqual(h.observer.messages, [("init", {})])
        self.assertTrue(h.service.joined)

        h.run_for(10)
        beat = server.received[-1]
        self.assertEqual((beat.topic, beat.event, beat.ref), ("phoenix", "heartbeat", 1))

        server.push(phoenix.push("relay", "relays_presence", {"connected": []}))
        h.net.flush()
        self.assertEqual(h.observer.messages[-1], ("relays_presence", {"connected": []}))

        self.assertTrue(h.service.send("foo", {"a": 1}))
        h.net.flush()
        foo = server.received[-1]
        self.assertEqual((foo.topic, foo.event, foo.payload, foo.ref),
                         ("relay", "foo", {"a": 1}, 2))

        h.run_for(60)
        self.assertEqual(len(h.net.dials), 1)
        self.assertEqual(h.observer.disconnected, [])
        self.assertEqual([m.ref for m in server.received], list(range(len(server.received))))

    def test_unanswered_heartbeats_reconnect(self) -> None:
        """A portal that stops answering heartbeats is left after the 4th and redialled."""
        servers = iter([PhoenixServer(answer_heartbeats=False), PhoenixServer()])
        h = AdapterHarness(lambda: next(servers))
        h.start()
        h.run_for(39.95)
        self.assertEqual(len(h.net.dials), 1)
        h.run_for(1)
        self.assertEqual(len(h.net.dials), 2)
        self.assertTrue(h.server(0).closed)
        [reason] = h.observer.disconnected
        self.assertIn("unanswered", reason)
        self.assertEqual(len(h.observer.joined), 2)
        self.assertEqual(h.server(1).received[0].ref, 0)

    def test_portal_close_frame_reconnects(self) -> None:
        """A WebSocket Close from the portal drops the connection and redials."""
        h = AdapterHarness(PhoenixServer)
        h.start()
        h.server().sendClose(1000)
        h.net.flush()
        self.assertEqual(len(h.observer.disconnected), 1)
        self.assertIn("closed", h.observer.disconnected[0])
        h.run_for(1)
        self.assertEqual(len(h.net.dials), 2)
        self.assertEqual(len(h.observer.joined), 2)

    def test_tcp_refused_is_retried(self) -> None:
        """A refused TCP connection is a hiccup: 1 s later (initial schedule) it dials again."""
        servers = iter([None, PhoenixServer()])
        h = AdapterHarness(lambda: next(servers))
        h.start()
        self.assertEqual(len(h.observer.disconnected), 1)
        self.assertIn("refused", h.observer.disconnected[0])
        h.run_for(0.9)
        self.assertEqual(len(h.net.dials), 1)
        h.run_for(0.2)
        self.assertEqual(len(h.net.dials), 2)
        self.assertEqual(len(h.observer.joined), 1)

    def test_connect_timeout(self) -> None:
        """A dial that never completes the upgrade is abandoned after 15 s."""
        servers = iter([Silent(), PhoenixServer()])
        h = AdapterHarness(lambda: next(servers))
        h.start()
        h.run_for(14.9)
        self.assertEqual(h.observer.disconnected, [])
        h.run_for(0.2)
        self.assertEqual(len(h.observer.disconnected), 1)
        self.assertTrue(h.net.pumps[0].clientIO.disconnected)
        h.run_for(1)
        self.assertEqual(len(h.net.dials), 2)
        self.assertEqual(len(h.observer.joined), 1)

    def test_stop_service_closes(self) -> None:
        """stopService sends a Close, its Deferred fires once the connection is gone."""
        h = AdapterHarness(PhoenixServer)
        h.start()
        d = h.service.stopService()
        assert d is not None
        h.net.flush()
        h.run_for(1.5)
        self.successResultOf(d)
        self.assertTrue(h.server().closed)
        self.assertIs(h.service.state, ChannelState.STOPPED)
        h.run_for(30)
        self.assertEqual(len(h.net.dials), 1)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_send_before_join_is_queued(self) -> None:
        """A push made before the channel is joined arrives right after the join (ref 1)."""
        h = AdapterHarness(PhoenixServer)
        self.assertTrue(h.service.send("early", {"n": 1}))
        h.start()
        self.assertEqual([(m.event, m.ref) for m in h.server().received],
                         [("phx_join", 0), ("early", 1)])

    def test_params_callable_evaluated_per_dial(self) -> None:
        """A callable params is read at every dial."""
        keys = iter(["k1", "k2"])
        servers = iter([None, PhoenixServer()])
        h = AdapterHarness(lambda: next(servers), params=lambda: {"public_key": next(keys)})
        h.start()
        h.run_for(1.1)
        self.assertEqual(h.server().request.params, {"public_key": ["k2"]})


class RejectionTests(SynchronousTestCase):
    def test_401_problem_details_is_fatal(self) -> None:
        """401 with code invalid_token is fatal; nothing is redialled."""
        body = problem(401, "invalid_token", "Invalid token")
        h = AdapterHarness(lambda: HTTPResponder(http_response(
            "401 Unauthorized",
            {"content-type": PROBLEM_TYPE, "content-length": str(len(body))}, body)))
        h.start()
        [fatal] = h.observer.fatal
        self.assertEqual(fatal.kind, INVALID_TOKEN)
        self.assertIn("Invalid token", fatal.message)
        self.assertEqual(h.service.fatal, fatal)
        h.run_for(60, step=1)
        self.assertEqual(len(h.net.dials), 1)
        self.assertEqual(h.observer.joined, [])

    def test_body_waited_for(self) -> None:
        """The body is read to its Content-Length even when it arrives later than the headers."""
        body = problem(401, "missing_token", "No token")
        responder = HTTPResponder(
            http_response("401 Unauthorized",
                          {"content-type": PROBLEM_TYPE, "content-length": str(len(body))}, b""),
            body[:10], body[10:],
        )
        h = AdapterHarness(lambda: responder)
        h.start()
        self.assertEqual(h.observer.fatal, [])
        responder.send_more()
        h.net.flush()
        self.assertEqual(h.observer.fatal, [])
        responder.send_more()
        h.net.flush()
        [fatal] = h.observer.fatal
        self.assertIn("missing_token", fatal.message)

    def test_chunked_body(self) -> None:
        """A chunked problem-details body is decoded."""
        body = problem(401, "invalid_token", "Expired")
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        h = AdapterHarness(lambda: HTTPResponder(http_response(
            "401 Unauthorized", {"content-type": PROBLEM_TYPE, "transfer-encoding": "chunked"},
            chunked)))
        h.start()
        [fatal] = h.observer.fatal
        self.assertEqual(fatal.kind, INVALID_TOKEN)
        self.assertIn("Expired", fatal.message)

    def test_503_retry_after(self) -> None:
        """503 rate_limit with Retry-After: 7 is retried after exactly that delay."""
        body = problem(503, "rate_limit", "Slow down")
        servers = iter([
            HTTPResponder(http_response(
                "503 Service Unavailable",
                {"content-type": PROBLEM_TYPE, "content-length": str(len(body)),
                 "retry-after": "7"}, body)),
            PhoenixServer(),
        ])
        h = AdapterHarness(lambda: next(servers))
        h.start()
        self.assertEqual(h.observer.fatal, [])
        [reason] = h.observer.disconnected
        self.assertIn("503", reason)
        self.assertIn("rate_limit", reason)
        h.run_for(6.9)
        self.assertEqual(len(h.net.dials), 1)
        h.run_for(0.2)
        self.assertEqual(len(h.net.dials), 2)
        self.assertLess(abs(h.net.dials[1][0] - 7.0), 0.001)
        self.assertEqual(len(h.observer.joined), 1)

    def test_body_until_close(self) -> None:
        """Without a length the body ends with the connection; a 403 is retried."""
        body = problem(403, "device_untrusted", "Device is not trusted")
        servers = iter([
            HTTPResponder(http_response("403 Forbidden", {"content-type": PROBLEM_TYPE}, body)),
            PhoenixServer(),
        ])
        h = AdapterHarness(lambda: next(servers))
        h.start()
        [reason] = h.observer.disconnected
        self.assertIn("device_untrusted", reason)
        self.assertEqual(h.observer.fatal, [])
        h.run_for(1.1)
        self.assertEqual(len(h.observer.joined), 1)

    def test_proxy_html_ignored(self) -> None:
        """A 401 from a proxy without problem details is still fatal, but names no code."""
        h = AdapterHarness(lambda: HTTPResponder(http_response(
            "401 Unauthorized", {"content-type": "text/html", "content-length": "6"},
            b"<html>")))
        h.start()
        [fatal] = h.observer.fatal
        self.assertEqual(fatal.kind, "authentication_failed")


class DefaultEndpointTests(SynchronousTestCase):
    def test_ws_is_plain_tcp(self) -> None:
        """ws:// dials TCP to host:port with connlib's 5 s TCP connect timeout."""
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        default_endpoint(reactor, portal_address("ws://192.0.2.1:8080", "relay", {})).connect(
            factory)
        reactor.advance(0)
        [(_host, port, wrapping, timeout, _bind)] = reactor.tcpClients
        self.assertEqual((port, timeout), (8080, TCP_CONNECT_TIMEOUT))
        self.assertIs(getattr(wrapping, "_wrappedFactory", None), factory)

    def test_wss_adds_tls(self) -> None:
        """wss:// wraps the TCP connection in TLS (certificate checked against the host)."""
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        default_endpoint(reactor, portal_address("wss://portal.test", "relay", {})).connect(
            factory)
        reactor.advance(0)
        [(_host, port, wrapping, _timeout, _bind)] = reactor.tcpClients
        self.assertEqual(port, 443)
        self.assertIsInstance(getattr(wrapping, "_wrappedFactory", None), TLSMemoryBIOFactory)
