"""Tests for firezone.control.login: socket URL, authorization header and User-Agent."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from firezone.control.login import authorization_header, portal_address, user_agent


class PortalAddressTests(SynchronousTestCase):
    def test_paths(self) -> None:
        """Clients and gateways use the v2 sockets, relays the unversioned one (login_url.rs)."""
        for kind, path in (("relay", "/relay/websocket"), ("gateway", "/gateway/v2/websocket"),
                           ("client", "/client/v2/websocket")):
            address = portal_address("wss://api.firezone.dev", kind, {})
            self.assertEqual(urlsplit(address.url).path, path)

    def test_relay_query(self) -> None:
        """Relay query: name, ipv4, ipv6, port; absent values left out."""
        address = portal_address(
            "ws://portal.test:8081", "relay",
            {"name": "relay 1", "ipv4": "192.0.2.1", "ipv6": None, "port": 3478},
        )
        self.assertEqual(parse_qsl(urlsplit(address.url).query),
                         [("name", "relay 1"), ("ipv4", "192.0.2.1"), ("port", "3478")])
        self.assertEqual((address.host, address.port, address.secure),
                         ("portal.test", 8081, False))

    def test_schemes_and_default_ports(self) -> None:
        """http maps to ws and https to wss; default ports 80 and 443."""
        plain = portal_address("http://portal.test", "client", {})
        secure = portal_address("https://portal.test/", "client", {})
        self.assertTrue(plain.url.startswith("ws://portal.test/"))
        self.assertEqual((plain.port, plain.secure), (80, False))
        self.assertTrue(secure.url.startswith("wss://portal.test/"))
        self.assertEqual((secure.port, secure.secure), (443, True))

    def test_prefix_kept_query_replaced(self) -> None:
        """A base path stays a prefix; a query in the base URL is replaced."""
        address = portal_address("wss://example.com/fz/?x=1", "gateway", {"name": "g"})
        self.assertEqual(urlsplit(address.url).path, "/fz/gateway/v2/websocket")
        self.assertEqual(urlsplit(address.url).query, "name=g")

    def test_ipv6_literal(self) -> None:
        """An IPv6 literal keeps its brackets in the URL; host is the bare address."""
        address = portal_address("ws://[::1]:8080", "relay", {})
        self.assertEqual(address.host, "::1")
        self.assertTrue(address.url.startswith("ws://[::1]:8080/relay/websocket"))

    def test_bad_input(self) -> None:
        """Unknown schemes, missing hosts and unknown path kinds are refused."""
        for url, kind in (("ftp://x", "relay"), ("ws://", "relay"), ("ws://x", "portal")):
            with self.assertRaises(ValueError):
                portal_address(url, kind, {})


class HeaderTests(SynchronousTestCase):
    def test_token_whitespace_stripped(self) -> None:
        """'All whitespace is stripped from the token first.'"""
        self.assertEqual(authorization_header(" ab\ncd \t"), "Bearer abcd")

    def test_user_agent_format(self) -> None:
        """<os_type>/<os_version> <component>/<version> (<arch>; <kernel>)."""
        ua = user_agent("relay", "0.1.0", os_type="Linux", os_version="6.1", arch="x86_64",
                        kernel="6.1")
        self.assertEqual(ua, "Linux/6.1 relay/0.1.0 (x86_64; 6.1)")
        self.assertEqual(user_agent("gateway", "1.0", os_type="Linux", os_version="6",
                                    arch="", kernel=""), "Linux/6 gateway/1.0")

    def test_user_agent_ascii_only(self) -> None:
        """Non-ASCII characters are dropped, as make_request does."""
        ua = user_agent("relay", "0.1.0", os_type="Lïnux", os_version="1", arch="a", kernel="k")
        self.assertEqual(ua, "Lnux/1 relay/0.1.0 (a; k)")

    def test_user_agent_from_platform(self) -> None:
        """Without overrides the running system fills the fields; the version parses out."""
        ua = user_agent("headless-client", "1.5.12")
        self.assertRegex(ua, r"^\S+/\S+ headless-client/1\.5\.12")
        self.assertIsNotNone(re.search(r"headless-client/(\d+\.\d+\.\d+)", ua))
