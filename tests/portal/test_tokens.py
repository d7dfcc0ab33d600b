"""Token issue, verification, expiry and revocation (REFERENCE 6.1)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal import tokens
from firezone.portal.store import TOKEN_DELETED
from firezone.portal.store.sqlite import SQLiteStore
from firezone.portal.tokens import (
    DeletedToken,
    ExpiredToken,
    InvalidToken,
    TokenCodec,
    Tokens,
    hash_secret,
    load_or_create_secret_key,
)

START = 1_700_000_000.0
KEY = bytes(range(64))


class TokensTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = SQLiteStore.open(":memory:", self.clock)
        self.tokens = Tokens(self.store, KEY, self.clock)
        created = self.successResultOf(
            self.store.create_account("acme", "Acme", admin_email="a@acme.test"))
        self.account_id = created.account.id
        assert created.admin is not None
        self.user = created.admin
        self.provider = created.email_provider
        self.site = self.successResultOf(self.store.create_site(self.account_id, "HQ"))
        self.deleted: list[str] = []
        self.store.listen(TOKEN_DELETED, self.deleted.append)

    def client_token(self, **kw: object) -> tokens.IssuedToken:
        return self.successResultOf(self.tokens.issue_client_token(
            self.account_id, self.user.id, auth_provider_id=self.provider.id, **kw))  # type: ignore[arg-type]

    def test_client_token_round_trip(self) -> None:
        """A client token verifies to its row: account, actor, provider, 7-day expiry."""
        issued = self.client_token(nonce="abc123")
        self.assertTrue(issued.encoded.startswith("abc123.SFMyNTY."))
        self.assertEqual(issued.fragment, issued.encoded[len("abc123"):])
        token = self.successResultOf(self.tokens.verify(issued.encoded, "client"))
        self.assertEqual(token, issued.token)
        self.assertEqual((token.account_id, token.actor_id, token.auth_provider_id),
                         (self.account_id, self.user.id, self.provider.id))
        self.assertEqual(token.expires_at, START + 7 * 86400)

    def test_only_salted_hash_stored(self) -> None:
        """The row holds sha3_256(nonce || secret || salt), never the nonce or secret."""
        issued = self.client_token(nonce="n0nce")
        claims = TokenCodec(KEY).parse(issued.encoded, "client")
        row = issued.token
        self.assertEqual(row.secret_hash, hashlib.sha3_256(
            ("n0nce" + claims.secret + row.secret_salt).encode()).hexdigest())
        self.assertNotIn(claims.secret, repr(row))
        self.assertEqual(len(claims.secret), 56)  # base32hex of 32 bytes, padded

    def test_provider_lifetime(self) -> None:
        """The provider's client_session_lifetime_secs sets the expiry."""
        self.successResultOf(self.store.update_auth_provider(
            self.account_id, self.provider.id, config={"client_session_lifetime_secs": 3600}))
        self.assertEqual(self.client_token().token.expires_at, START + 3600)

    def test_expiry(self) -> None:
        """A client token stops verifying once its expiry has passed."""
        issued = self.client_token(expires_at=START + 10)
        self.clock.advance(9)
        self.successResultOf(self.tokens.verify(issued.encoded, "client"))
        self.clock.advance(1)
        self.failureResultOf(self.tokens.verify(issued.encoded, "client"), ExpiredToken)

    def test_revoke(self) -> None:
        """A revoked token fails as deleted, and its id is announced on token_deleted."""
        issued = self.client_token()
        self.successResultOf(self.tokens.revoke(self.account_id, issued.token.id))
        failure = self.failureResultOf(self.tokens.verify(issued.encoded, "client"), DeletedToken)
        self.assertEqual(failure.value.reason, "token_deleted")
        self.assertEqual(self.deleted, [issued.token.id])

    def test_disabled_actor(self) -> None:
        """Disabling the actor deletes its tokens, so they stop verifying."""
        issued = self.client_token()
        self.successResultOf(self.store.set_actor_disabled(self.account_id, self.user.id, True))
        self.failureResultOf(self.tokens.verify(issued.encoded, "client"), DeletedToken)

    def test_tampering_detected(self) -> None:
        """A changed nonce, payload or signature, or another type, does not verify."""
        issued = self.client_token(nonce="nonce")
        nonce_swapped = "other" + issued.fragment
        head, payload, signature = issued.encoded.rsplit(".", 2)
        forged_payload = f"{head}.{payload[:-2]}AA.{signature}"
        forged_signature = f"{head}.{payload}.{signature[:-2]}AA"
        for bad in (nonce_swapped, issued.fragment, forged_payload, forged_signature, "", "x",
                    "a.b.c.d", issued.encoded + "."):
            self.failureResultOf(self.tokens.verify(bad, "client"), InvalidToken)
        self.failureResultOf(self.tokens.verify(issued.encoded, "gateway"), InvalidToken)
        other_key = Tokens(self.store, b"k" * 64, self.clock)
        self.failureResultOf(other_key.verify(issued.encoded, "client"), InvalidToken)

    def test_whitespace_ignored(self) -> None:
        """Whitespace around or inside a pasted token is ignored, as connlib strips it."""
        issued = self.client_token()
        pasted = " " + issued.encoded[:20] + "\n" + issued.encoded[20:] + "\n"
        self.successResultOf(self.tokens.verify(pasted, "client"))

    def test_hash_compared_in_constant_time(self) -> None:
        """Verification compares the stored hash with hmac.compare_digest."""
        issued = self.client_token(nonce="n")
        calls: list[tuple[Any, Any]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(tokens.hmac, "compare_digest", spy)
        self.successResultOf(self.tokens.verify(issued.encoded, "client"))
        self.assertIn((issued.token.secret_hash, issued.token.secret_hash), calls)

    def test_gateway_token(self) -> None:
        """Gateway tokens belong to a site, have no nonce and never expire."""
        issued = self.successResultOf(
            self.tokens.issue_gateway_token(self.account_id, self.site.id))
        self.assertTrue(issued.encoded.startswith(".SFMyNTY."))
        self.clock.advance(10 * 365 * 86400)
        token = self.successResultOf(self.tokens.verify(issued.encoded, "gateway"))
        self.assertEqual((token.site_id, token.expires_at), (self.site.id, None))
        self.failureResultOf(self.tokens.verify(issued.encoded, "relay"), InvalidToken)

    def test_relay_token(self) -> None:
        """Relay tokens are global: no account, verifiable and revocable without one."""
        issued = self.successResultOf(self.tokens.issue_relay_token())
        token = self.successResultOf(self.tokens.verify(issued.encoded, "relay"))
        self.assertIsNone(token.account_id)
        self.successResultOf(self.tokens.revoke(None, token.id))
        self.failureResultOf(self.tokens.verify(issued.encoded, "relay"), DeletedToken)

    def test_api_token(self) -> None:
        """API tokens name their actor and may expire."""
        issued = self.successResultOf(self.tokens.issue_api_token(
            self.account_id, self.user.id, name="ci", expires_at=START + 60))
        token = self.successResultOf(self.tokens.verify(issued.encoded, "api"))
        self.assertEqual((token.name, token.actor_id), ("ci", self.user.id))

    def test_service_account_token(self) -> None:
        """A service account's client token has no provider and a 7-day default expiry."""
        bot = self.successResultOf(
            self.store.create_actor(self.account_id, "service_account", "bot"))
        issued = self.successResultOf(self.tokens.issue_client_token(self.account_id, bot.id))
        self.assertEqual(issued.token.expires_at, START + 7 * 86400)
        self.assertIsNone(issued.token.auth_provider_id)

    def test_bad_nonce_refused(self) -> None:
        """Nonces may not contain '.', whitespace or exceed 128 characters."""
        for bad in ("a.b", "a b", "x" * 129, "é"):
            self.failureResultOf(self.tokens.issue_client_token(
                self.account_id, self.user.id, nonce=bad), ValueError)
        self.assertEqual(self.successResultOf(self.store.list_tokens(self.account_id)), [])

    @settings(max_examples=200)
    @given(st.text(max_size=300))
    def test_arbitrary_text_is_invalid(self, text: str) -> None:
        """Any string that was not issued fails parsing with InvalidToken only."""
        self.assertRaises(InvalidToken, TokenCodec(KEY).parse, text, "client")

    def test_hash_function(self) -> None:
        """hash_secret is sha3_256 over nonce, secret and salt, hex-encoded."""
        self.assertEqual(hash_secret("n", "s", "t"), hashlib.sha3_256(b"nst").hexdigest())


class SecretKeyTests(SynchronousTestCase):
    def test_created_once_private(self) -> None:
        """The key file is created on first use with mode 0600 and reused afterwards."""
        path = os.path.join(self.mktemp())
        first = load_or_create_secret_key(path)
        self.assertEqual(len(first), 64)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_or_create_secret_key(path), first)

    def test_bad_key_file(self) -> None:
        """A short or non-hex key file is refused with a clear error."""
        for content in ("abcd\n", "not hex at all"):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(content)
            self.assertRaises(ValueError, load_or_create_secret_key, path)
