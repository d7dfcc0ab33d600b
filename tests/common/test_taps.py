"""Each role's twistd plugin parses its options and builds a service with the health endpoint."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from firezone.client import tap as client_tap
from firezone.gateway import tap as gateway_tap
from firezone.portal import tap as portal_tap
from firezone.relay import tap as relay_tap
from tests.fakes import FakeUDPReactor


class PluginTests(SynchronousTestCase):
    def test_four_plugins(self) -> None:
        """twistd finds one plugin per role, each naming its tap module lazily."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        for role in ("portal", "relay", "gateway", "client"):
            maker = makers[f"firezone-{role}"]
            self.assertEqual(maker.module, f"firezone.{role}.tap")


class RoleOptionsTests(SynchronousTestCase):
    def parse(self, options: usage.Options, argv: list[str]) -> usage.Options:
        options.parse_strict(argv)  # type: ignore[attr-defined]
        return options

    def test_relay_needs_a_public_address(self) -> None:
        """At least one of PUBLIC_IP4_ADDR / PUBLIC_IP6_ADDR is required, as the reference."""
        with self.assertRaises(usage.UsageError):
            self.parse(relay_tap.Options(environ={}), [])
        options = self.parse(relay_tap.Options(environ={"PUBLIC_IP6_ADDR": "2001:db8::1"}), [])
        self.assertEqual(str(options["public-ip6"]), "2001:db8::1")
        self.assertEqual(options["listen-port"], 3478)
        self.assertEqual((options["lowest-port"], options["highest-port"]), (49152, 65535))

    def test_relay_port_range_order(self) -> None:
        with self.assertRaises(usage.UsageError):
            self.parse(relay_tap.Options(environ={}),
                       ["--public-ip4", "192.0.2.1", "--lowest-port", "60000",
                        "--highest-port", "50000"])

    def test_gateway_token_from_env_or_file(self) -> None:
        """The gateway reads FIREZONE_TOKEN, else its token file; without either it refuses."""
        options = self.parse(gateway_tap.Options(environ={"FIREZONE_TOKEN": "tok",
                                                          "FIREZONE_ID": "abc"}), [])
        self.assertEqual((options["token"], options["id"]), ("tok", "abc"))
        missing = str(Path(self.mktemp()) / "none")
        with self.assertRaises(usage.UsageError):
            self.parse(gateway_tap.Options(environ={}), ["--token-path", missing])

    def test_client_dns_control_choices(self) -> None:
        env = {"FIREZONE_TOKEN": "t", "FIREZONE_DNS_CONTROL": "etc-resolv-conf"}
        options = self.parse(client_tap.Options(environ=env), [])
        self.assertEqual(options["dns-control"], "etc-resolv-conf")
        with self.assertRaises(usage.UsageError):
            self.parse(client_tap.Options(environ={**env, "FIREZONE_DNS_CONTROL": "nrpt"}), [])

    def test_portal_defaults_to_embedded_sqlite(self) -> None:
        """Without DATABASE_URL the portal uses SQLite under its data directory."""
        data = self.mktemp()
        options = self.parse(portal_tap.Options(environ={"FIREZONE_DATA_DIR": data}), [])
        self.assertTrue(options["database"].startswith("sqlite:///"))
        self.assertTrue(options["database"].endswith("/portal.db"))
        with self.assertRaises(usage.UsageError):
            self.parse(portal_tap.Options(environ={}), ["--database", "mysql://x"])

    def test_bad_option_one_line_exit_2(self) -> None:
        """Through twistd's entry point a bad value is one line on stderr and exit status 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as ctx:
            relay_tap.Options(environ={}).parseOptions(["--public-ip4", "300.1.1.1"])
        self.assertEqual(ctx.exception.code, 2)
        self.assertEqual(len(stderr.getvalue().splitlines()), 1)


class MakeServiceTests(SynchronousTestCase):
    def test_each_role_builds_a_service_with_health(self) -> None:
        """makeService returns a service tree that serves the health endpoint."""
        tmp = Path(self.mktemp())
        cases = [
            (relay_tap, {"PUBLIC_IP4_ADDR": "192.0.2.1"}),
            (gateway_tap, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "g"}),
            (client_tap, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "c"}),
            (portal_tap, {"FIREZONE_DATA_DIR": str(tmp)}),
        ]
        for module, env in cases:
            options = module.Options(environ={**env, "HEALTH_CHECK_ADDR": "127.0.0.1:18080"})
            options.parse_strict([])
            reactor = FakeUDPReactor()
            service = module.makeService(options, reactor=reactor)
            self.assertTrue(IService.providedBy(service))
            self.assertTrue(IServiceCollection.providedBy(service))
            service.startService()
            ports = [p[0] for p in reactor.tcpServers]
            self.assertEqual(ports[0], 18080, module.__name__)
            if module is portal_tap:
                self.assertIn(13000, ports, "the portal also serves its API on --listen")
            service.stopService()
