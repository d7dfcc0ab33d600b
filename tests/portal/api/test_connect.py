"""Connect-time values: token, User-Agent, parameters, refusals, rate limit (REFERENCE 1.1)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.api.connect import (
    ENDPOINTS,
    InvalidConnectParams,
    RateLimiter,
    Rejection,
    device_params,
    extract_token,
    parse_user_agent,
    relay_params,
)
from firezone.wire.phoenix import ProblemDetails

KEY = base64.b64encode(bytes(32)).decode()


class EndpointTests(SynchronousTestCase):
    def test_paths_roles_versions_and_timeouts(self) -> None:
        """Five mounts; 37 s idle timeout for clients and gateways, 41 s for relays."""
        self.assertEqual(
            {p: (e.role, e.version, e.idle_timeout) for p, e in ENDPOINTS.items()},
            {
                "/client/websocket": ("client", 1, 37.0),
                "/client/v2/websocket": ("client", 2, 37.0),
                "/gateway/websocket": ("gateway", 1, 37.0),
                "/gateway/v2/websocket": ("gateway", 2, 37.0),
                "/relay/websocket": ("relay", 1, 41.0),
            },
        )


class ExtractTokenTests(SynchronousTestCase):
    def test_header_first_whitespace_stripped(self) -> None:
        """The ``x-authorization`` header wins and all whitespace is removed from the token."""
        self.assertEqual(extract_token("Bearer  ab c\n", {"token": ["other"]}), "abc")

    def test_query_fallback(self) -> None:
        """Without the header the ``token`` query parameter is used."""
        self.assertEqual(extract_token(None, {"token": [" t1 "]}), "t1")
        self.assertEqual(extract_token("Basic xyz", {"token": ["t2"]}), "t2")

    def test_missing(self) -> None:
        """No token anywhere (or only blanks) is 401 ``missing_token``."""
        for header, query in ((None, {}), ("Bearer   ", {"token": [""]})):
            with self.assertRaises(Rejection) as ctx:
                extract_token(header, query)
            self.assertEqual((ctx.exception.status, ctx.exception.code), (401, "missing_token"))


class RejectionTests(SynchronousTestCase):
    def test_problem_details_shape(self) -> None:
        """RFC 9457 body ``{type, title, status, detail, code}`` with ``about:blank``."""
        body = Rejection.invalid_token().problem().encode()
        self.assertEqual(
            ProblemDetails.decode(body),
            ProblemDetails("about:blank", "Unauthorized", 401, "Invalid token", "invalid_token"),
        )

    def test_status_code_table(self) -> None:
        """The statuses and codes of ``PortalAPI.Sockets.handle_error``."""
        cases = [
            (Rejection.missing_token(), 401, "missing_token"),
            (Rejection.invalid_token(), 401, "invalid_token"),
            (Rejection.unauthenticated(), 403, "unauthenticated"),
            (Rejection.gateway_already_connected(), 409, "gateway_already_connected"),
            (Rejection.invalid_connect_params("x"), 400, "invalid_connect_params"),
            (Rejection.rate_limit(1), 503, "rate_limit"),
            (Rejection.unhandled(), 500, "unhandled_connect_error"),
        ]
        for rejection, status, code in cases:
            self.assertEqual((rejection.status, rejection.code), (status, code))
        self.assertEqual(Rejection.rate_limit(2).retry_after, 2)


class UserAgentTests(SynchronousTestCase):
    def test_parse_connlib_format(self) -> None:
        """``<os>/<os_version> <component>/<version> (<arch>; <kernel>)``."""
        ua = parse_user_agent("Mac OS/15.5 apple-client/1.5.11 (arm64; 24.5.0)")
        self.assertEqual((ua.component, ua.version), ("apple-client", "1.5.11"))
        self.assertEqual((ua.os_name, ua.os_version), ("Mac OS", "15.5"))

    def test_unknown_component(self) -> None:
        """A UA naming no known component has no component and no version."""
        ua = parse_user_agent("curl/8.0")
        self.assertIsNone(ua.component)
        self.assertIsNone(ua.version)

    def test_sites_payload_versions(self) -> None:
        """``client_supports_sites_payload?``: apple >= 1.5.11, headless >= 1.5.6, ..."""
        def supports(text: str) -> bool:
            return parse_user_agent(text).supports_sites_payload

        self.assertTrue(supports("x/1 headless-client/1.5.6 (a; b)"))
        self.assertFalse(supports("x/1 headless-client/1.5.5 (a; b)"))
        self.assertFalse(supports("x/1 apple-client/1.5.10 (a; b)"))
        self.assertTrue(supports("x/1 android-client/1.5.8 (a; b)"))
        self.assertTrue(supports("x/1 gui-client/1.6.0 (a; b)"))
        self.assertFalse(supports("x/1 connlib/1.9.0 (a; b)"))

    @settings(max_examples=200)
    @given(st.text(max_size=200))
    def test_any_text_parses(self, text: str) -> None:
        """Arbitrary header text never raises."""
        ua = parse_user_agent(text)
        self.assertIsInstance(ua.supports_sites_payload, bool)


class DeviceParamsTests(SynchronousTestCase):
    def test_external_id_or_firezone_id(self) -> None:
        """``firezone_id`` is accepted in place of ``external_id``; a name is made up if absent."""
        params = device_params("client", {"firezone_id": ["abc"], "public_key": [KEY]})
        self.assertEqual(params.external_id, "abc")
        self.assertTrue(params.name.startswith("client-"))

    def test_errors_name_external_id_and_public_key(self) -> None:
        """Missing ids are reported as ``external_id``; the key must be 44 chars of 32 bytes."""
        with self.assertRaises(InvalidConnectParams) as ctx:
            device_params("client", {"public_key": ["abc"]})
        self.assertIn("external_id can't be blank", str(ctx.exception))
        self.assertIn("public_key", str(ctx.exception))
        short = base64.b64encode(bytes(31)).decode()
        for bad in (short, "!" * 44, KEY[:-1] + "*"):
            with self.assertRaises(InvalidConnectParams):
                device_params("gateway", {"external_id": ["g"], "public_key": [bad]})


class RelayParamsTests(SynchronousTestCase):
    def test_addresses_and_port(self) -> None:
        params = relay_params({"ipv4": ["203.0.113.1"], "ipv6": ["2001:DB8::1"]})
        self.assertEqual((params.ipv4, params.ipv6, params.port),
                         ("203.0.113.1", "2001:db8::1", 3478))

    def test_needs_an_address(self) -> None:
        """The reference rejects a relay with neither ``ipv4`` nor ``ipv6``."""
        with self.assertRaises(InvalidConnectParams):
            relay_params({"port": ["3478"]})
        for bad in ({"ipv4": ["2001:db8::1"]}, {"ipv4": ["1.2.3.4"], "port": ["70000"]}):
            with self.assertRaises(InvalidConnectParams):
                relay_params(bad)


class RateLimiterTests(SynchronousTestCase):
    def test_one_per_second_per_key(self) -> None:
        """A second connect within a second is told when to retry; other keys are independent."""
        limiter = RateLimiter()
        a, b = RateLimiter.key("192.0.2.1", "t"), RateLimiter.key("192.0.2.2", "t")
        self.assertIsNone(limiter.check(a, 100.0))
        self.assertEqual(limiter.check(a, 100.2), 1)
        self.assertIsNone(limiter.check(b, 100.2))
        self.assertIsNone(limiter.check(a, 101.0))

    def test_prunes_old_keys(self) -> None:
        """The table does not grow without bound."""
        limiter = RateLimiter(prune_above=10)
        for i in range(30):
            limiter.check(RateLimiter.key(str(i), "t"), float(i * 2))
        self.assertLessEqual(len(limiter), 11)
