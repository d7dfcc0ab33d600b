"""Refused and admitted upgrades over in-memory HTTP (REFERENCE 1.1 "Connect rejections")."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from firezone.wire.phoenix import ProblemDetails, is_problem_json
from tests.portal.api.harness import (
    CLIENT_UA,
    GATEWAY_UA,
    World,
    public_key,
    wait,
)


class GateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.fx = self.world.fixture()
        self.node = self.world.node()

    def refused(self, response: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
        got_status, headers, body = response
        self.assertEqual(got_status, status, body)
        self.assertTrue(is_problem_json(headers.get("content-type")))
        problem = ProblemDetails.decode(body)
        self.assertEqual((problem.status, problem.code, problem.type),
                         (status, code, "about:blank"))

    def client_query(self, **extra: str) -> dict[str, str]:
        return {"external_id": "laptop", "public_key": public_key(), **extra}

    def test_missing_token_401(self) -> None:
        """No header and no ``token`` parameter: 401 ``missing_token``."""
        self.refused(self.world.raw("/client/v2/websocket", query=self.client_query()),
                     401, "missing_token")

    def test_invalid_token_401(self) -> None:
        """A forged token, or one of another type, is 401 ``invalid_token``."""
        for token in ("n.SFMyNTY.garbage.sig", self.fx.gateway_token):
            self.world.advance(1)
            self.refused(self.world.raw("/client/v2/websocket", token=token,
                                        query=self.client_query()), 401, "invalid_token")

    def test_token_reuse_after_deletion_401(self) -> None:
        """A revoked token no longer connects."""
        self.world.client(self.fx).close()
        for token in wait(self.world.store.list_tokens(self.fx.account.id, "client")):
            wait(self.world.store.delete_token(self.fx.account.id, token.id))
        self.world.advance(2)
        self.refused(self.world.raw("/client/v2/websocket", token=self.fx.client_token,
                                    query=self.client_query()), 401, "invalid_token")

    def test_expired_token_401(self) -> None:
        self.world.advance(8 * 86400)
        self.refused(self.world.raw("/client/v2/websocket", token=self.fx.client_token,
                                    query=self.client_query()), 401, "invalid_token")

    def test_token_query_parameter(self) -> None:
        """The ``token`` query parameter is accepted when no header is sent (FLOW-ERA clients)."""
        status, headers, _ = self.world.raw(
            "/client/v2/websocket", token=self.fx.client_token, header_token=False,
            query=self.client_query())
        self.assertEqual(status, 101)
        self.assertEqual(headers["upgrade"].lower(), "websocket")

    def test_invalid_connect_params_400(self) -> None:
        """Bad public key, missing id, unrecognised client UA, relay without address: 400."""
        cases = [
            ("/client/v2/websocket", self.fx.client_token,
             {"external_id": "x", "public_key": "short"}, CLIENT_UA),
            ("/client/v2/websocket", self.fx.client_token, {"public_key": public_key()},
             CLIENT_UA),
            ("/client/v2/websocket", self.fx.client_token, self.client_query(), "curl/8.0"),
            ("/gateway/v2/websocket", self.fx.gateway_token, {"external_id": "g"}, GATEWAY_UA),
            ("/relay/websocket", self.fx.relay_token, {"port": "3478"}, None),
        ]
        for path, token, query, ua in cases:
            self.world.advance(1)
            status, _, body = self.world.raw(path, token=token, query=query, user_agent=ua)
            self.refused((status, {"content-type": "application/problem+json"}, body),
                         400, "invalid_connect_params")
        detail = ProblemDetails.decode(body).detail or ""
        self.assertIn("ipv4 or ipv6", detail)

    def test_external_id_of_another_actor_403(self) -> None:
        """A client id registered to another actor's device is not this subject's: 403."""
        bob = wait(self.world.store.create_actor(self.fx.account.id, "account_user", "Bob"))
        bob_token = wait(self.world.tokens.issue_client_token(self.fx.account.id, bob.id))
        self.world.client(self.fx, external_id="shared")
        self.world.advance(1)
        self.refused(self.world.raw("/client/v2/websocket", token=bob_token.encoded,
                                    query={"external_id": "shared", "public_key": public_key()}),
                     403, "unauthenticated")

    def test_second_gateway_with_same_id_409(self) -> None:
        """"First wins": the second connection of a gateway id is 409."""
        first = self.world.gateway(self.fx, external_id="gw-1")
        first_key = wait(self.world.store.find_device(
            self.fx.account.id, "gateway", "gw-1")).public_key
        self.world.advance(1)
        self.refused(self.world.raw("/gateway/v2/websocket", token=self.fx.gateway_token,
                                    user_agent=GATEWAY_UA,
                                    query={"external_id": "gw-1", "public_key": public_key()}),
                     409, "gateway_already_connected")
        # The refused gateway's key did not replace the connected one's.
        self.assertEqual(wait(self.world.store.find_device(
            self.fx.account.id, "gateway", "gw-1")).public_key, first_key)
        first.close()
        self.world.advance(1)
        self.world.gateway(self.fx, external_id="gw-1")

    def test_rate_limit_503_with_retry_after(self) -> None:
        """At most one connect per second per (IP, token): 503 ``rate_limit`` + Retry-After."""
        query = self.client_query()
        first = self.world.raw("/client/v2/websocket", token=self.fx.client_token, query=query,
                               ip="198.51.100.1")
        self.assertEqual(first[0], 101)
        second = self.world.raw("/client/v2/websocket", token=self.fx.client_token, query=query,
                                ip="198.51.100.1")
        self.refused(second, 503, "rate_limit")
        self.assertEqual(second[1]["retry-after"], "1")
        other_ip = self.world.raw("/client/v2/websocket", token=self.fx.client_token,
                                  query=query, ip="198.51.100.2")
        self.assertEqual(other_ip[0], 101)
        self.world.advance(1)
        again = self.world.raw("/client/v2/websocket", token=self.fx.client_token, query=query,
                               ip="198.51.100.1")
        self.assertEqual(again[0], 101)

    def test_plain_get_is_refused(self) -> None:
        """A request that is not a WebSocket upgrade is 426 (long-poll is disabled)."""
        status, _, body = self.world.raw("/client/v2/websocket", upgrade=False,
                                               token=self.fx.client_token)
        self.assertEqual(status, 426)
        self.assertEqual(json.loads(body)["code"], "upgrade_required")

    def test_connect_records_last_seen(self) -> None:
        """The device row gets the key, remote IP, User-Agent and version of the connect."""
        key = public_key()
        self.world.client(self.fx, external_id="seen", key=key, ip="198.51.100.9")
        device = wait(self.world.store.find_device(self.fx.account.id, "client", "seen"))
        self.assertEqual(
            (device.public_key, device.last_seen_remote_ip, device.last_seen_user_agent,
             device.last_seen_version, device.last_seen_at, device.actor_id),
            (key, "198.51.100.9", CLIENT_UA, "1.5.12", self.world.clock.seconds(),
             self.fx.alice.id),
        )
        token = wait(self.world.store.list_tokens(self.fx.account.id, "client"))[0]
        self.assertEqual(token.last_used_remote_ip, "198.51.100.9")

    def test_unknown_path_404(self) -> None:
        status, _, _ = self.world.raw("/client/v3/websocket", token=self.fx.client_token)
        self.assertEqual(status, 404)
