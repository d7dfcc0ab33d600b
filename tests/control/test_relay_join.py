"""The relay's portal join (firezone.relay.tap with --api-url): wiring, readiness, fatal exit."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from firezone.control.channel import INVALID_TOKEN, ChannelFatal
from firezone.control.client import PortalChannelService
from firezone.relay import tap
from firezone.wire import phoenix
from tests.control.test_client import MemoryNetwork, PhoenixServer
from tests.fakes import FakeUDPReactor

SECRET = "0123456789abcdef" * 4
ENV = {
    "PUBLIC_IP4_ADDR": "192.0.2.1",
    "FIREZONE_API_URL": "ws://portal.test:8081",
    "FIREZONE_TOKEN": "relay-token",
    "FIREZONE_NAME": "relay-1",
    "HEALTH_CHECK_ADDR": "127.0.0.1:18080",
}


def parse(env: dict[str, str], argv: list[str] | None = None) -> tap.Options:
    options = tap.Options(environ=env)
    options.parse_strict(argv or [])
    return options


class RelayJoinWiringTests(SynchronousTestCase):
    def build(self, env: dict[str, str] = ENV) -> tuple[Any, FakeUDPReactor]:
        reactor = FakeUDPReactor()
        root = tap.makeService(parse(env, ["--stamp-secret", SECRET]), reactor=reactor)
        return root, reactor

    def test_api_url_needs_token(self) -> None:
        """--api-url without --token/FIREZONE_TOKEN is a usage error."""
        env = {k: v for k, v in ENV.items() if k != "FIREZONE_TOKEN"}
        with self.assertRaises(usage.UsageError):
            parse(env)

    def test_service_tree_has_portal_channel(self) -> None:
        """With --api-url the tree holds the channel client, and /readyz starts not ready."""
        root, _reactor = self.build()
        portal = root.getServiceNamed("portal")
        self.assertIsInstance(portal, PortalChannelService)
        self.assertFalse(root.readiness.ready)
        self.assertEqual(portal.machine.topic, "relay")
        self.assertEqual(portal.machine.join_payload, {"stamp_secret": SECRET})
        url = urlsplit(portal.address.url)
        self.assertEqual((url.scheme, url.netloc, url.path),
                         ("ws", "portal.test:8081", "/relay/websocket"))
        self.assertEqual(parse_qsl(url.query),
                         [("name", "relay-1"), ("ipv4", "192.0.2.1"), ("port", "3478")])

    def test_standalone_is_ready(self) -> None:
        """Without --api-url there is no channel and the relay is ready at once."""
        env = {k: v for k, v in ENV.items() if k not in ("FIREZONE_API_URL", "FIREZONE_TOKEN")}
        root, _reactor = self.build(env)
        self.assertRaises(KeyError, root.getServiceNamed, "portal")
        self.assertTrue(root.readiness.ready)

    def test_readiness_follows_the_join(self) -> None:
        """/readyz is 200 only while joined; a fatal error stops the reactor with status 1."""
        stops: list[tuple[Any, int]] = []
        self.patch(tap, "stop_with_status", lambda reactor, status: stops.append((reactor, status)))
        servers: list[PhoenixServer] = []

        def serve() -> PhoenixServer:
            servers.append(PhoenixServer())
            return servers[-1]

        root, reactor = self.build()
        net = MemoryNetwork(reactor, serve)
        portal = root.getServiceNamed("portal")
        portal.endpoint_factory = net.endpoint
        root.startService()
        net.flush()
        self.assertTrue(root.readiness.ready)
        self.assertEqual(servers[0].request.headers["x-authorization"], "Bearer relay-token")
        self.assertRegex(servers[0].request.headers["user-agent"], r" relay/\d+\.\d+\.\d+")

        servers[0].sendClose(1000)
        net.flush()
        self.assertFalse(root.readiness.ready)
        self.assertIn("portal connection", root.readiness.reason)

        reactor.advance(1.0)
        net.flush()
        self.assertTrue(root.readiness.ready)

        servers[1].push(phoenix.disconnect("relay", "token_expired"))
        net.flush()
        self.assertFalse(root.readiness.ready)
        self.assertEqual(stops, [(reactor, 1)])
        self.assertEqual(portal.fatal.kind, INVALID_TOKEN)
        root.stopService()


class PortalLinkTests(SynchronousTestCase):
    def test_observer(self) -> None:
        """Joined -> ready; disconnected -> not ready with the reason; fatal -> stop, status 1."""
        from firezone.common.health import Readiness

        stops: list[tuple[Any, int]] = []
        readiness = Readiness()
        link = tap.PortalLink(readiness, "reactor", stop=lambda r, s: stops.append((r, s)))
        link.on_joined({})
        self.assertTrue(readiness.ready)
        link.on_message("init", {})
        link.on_disconnected("connection to the portal lost")
        self.assertFalse(readiness.ready)
        self.assertIn("connection to the portal lost", readiness.reason)
        link.on_joined({})
        link.on_fatal(ChannelFatal(INVALID_TOKEN, "the portal rejected the token"))
        self.assertFalse(readiness.ready)
        self.assertEqual(stops, [("reactor", 1)])
