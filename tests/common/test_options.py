"""Options read the reference's environment variables and refuse bad values in one line."""

from __future__ import annotations

import io
import sys
from ipaddress import IPv4Address

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from firezone.common import options as opt


class _Sample(opt.EnvOptions):
    programName = "sample"
    envParameters = [
        ("port", None, "3478", "a port", opt.port_number, "LISTEN_PORT"),
        ("ip4", None, None, "an address", opt.ipv4_address, "PUBLIC_IP4_ADDR"),
        ("health", None, "0.0.0.0:8080", "health", opt.host_port, "HEALTH_CHECK_ADDR"),
    ]
    envFlags = [("verbose", "v", "talk more", "SAMPLE_VERBOSE")]


class EnvOptionsTests(SynchronousTestCase):
    """Precedence is command line, then environment, then default."""

    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> _Sample:
        options = _Sample(environ=environ or {})
        options.parse_strict(argv)
        return options

    def test_defaults_are_coerced(self) -> None:
        """A default given as text reaches the role in its parsed form."""
        options = self.parse([])
        self.assertEqual(options["port"], 3478)
        self.assertEqual(options["health"], ("0.0.0.0", 8080))
        self.assertIsNone(options["ip4"])
        self.assertFalse(options["verbose"])

    def test_environment_overrides_default(self) -> None:
        """The reference's environment variables configure the option."""
        options = self.parse([], {"LISTEN_PORT": "3479", "PUBLIC_IP4_ADDR": "192.0.2.1",
                                  "SAMPLE_VERBOSE": "true"})
        self.assertEqual(options["port"], 3479)
        self.assertEqual(options["ip4"], IPv4Address("192.0.2.1"))
        self.assertTrue(options["verbose"])

    def test_command_line_overrides_environment(self) -> None:
        """An explicit flag wins, even when it repeats the default."""
        options = self.parse(["--port", "3478"], {"LISTEN_PORT": "3479"})
        self.assertEqual(options["port"], 3478)

    def test_bad_environment_value_names_the_variable(self) -> None:
        """The error says which variable was wrong."""
        with self.assertRaises(usage.UsageError) as ctx:
            self.parse([], {"PUBLIC_IP4_ADDR": "not-an-ip"})
        self.assertIn("PUBLIC_IP4_ADDR", str(ctx.exception))

    def test_bad_value_exits_with_one_line(self) -> None:
        """parseOptions prints exactly one line to stderr and exits 2, no traceback, no usage."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        options = _Sample(environ={})
        with self.assertRaises(SystemExit) as ctx:
            options.parseOptions(["--port", "70000"])
        self.assertEqual(ctx.exception.code, 2)
        lines = stderr.getvalue().splitlines()
        self.assertEqual(lines, ["sample: error: --port: port 70000 is outside 1-65535"])

    def test_help_mentions_environment_variable(self) -> None:
        """--help shows which variable sets each option."""
        self.assertIn("[env: LISTEN_PORT]", str(_Sample(environ={})))


class ValueParserTests(SynchronousTestCase):
    """The small parsers behind the options."""

    def test_host_port(self) -> None:
        self.assertEqual(opt.host_port("127.0.0.1:8080"), ("127.0.0.1", 8080))
        self.assertEqual(opt.host_port("[::1]:9"), ("::1", 9))
        for bad in ("8080", "example.com:80", "1.2.3.4:0", "[::1]", ":80", "1.2.3.4:x"):
            with self.assertRaises(ValueError, msg=bad):
                opt.host_port(bad)

    def test_websocket_url_maps_http_to_ws(self) -> None:
        self.assertEqual(opt.websocket_url("https://api.example/"), "wss://api.example/")
        self.assertEqual(opt.websocket_url("ws://127.0.0.1:13000"), "ws://127.0.0.1:13000")
        with self.assertRaises(ValueError):
            opt.websocket_url("ftp://x")

    def test_hex_secret(self) -> None:
        self.assertEqual(opt.hex_secret("AB" * 16), "ab" * 16)
        for bad in ("zz" * 16, "ab"):
            with self.assertRaises(ValueError):
                opt.hex_secret(bad)

    def test_duration(self) -> None:
        self.assertEqual(opt.duration_seconds("90"), 90)
        self.assertEqual(opt.duration_seconds("24h"), 86400)
        self.assertEqual(opt.duration_seconds("30m"), 1800)
        for bad in ("0", "-1", "soon"):
            with self.assertRaises(ValueError):
                opt.duration_seconds(bad)

    def test_parse_bool(self) -> None:
        self.assertTrue(opt.parse_bool("yes"))
        self.assertFalse(opt.parse_bool("0"))
        with self.assertRaises(usage.UsageError):
            opt.parse_bool("maybe")
