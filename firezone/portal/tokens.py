"""Issue, verify and revoke the portal's bearer tokens (REFERENCE 6.1).

A token is ``<nonce>.SFMyNTY.<payload>.<signature>``: an optional nonce, then a
Phoenix.Token-shaped signed fragment (``SFMyNTY`` is base64 of ``HS256``)
whose payload names the account, the token row and a random secret.  The
signing key is derived per token type from the portal's secret key, so a
gateway token never verifies as a client token.

The database keeps only ``secret_salt`` and ``secret_hash = sha3_256(nonce ||
secret || salt)``: a stolen database yields no usable token, and a stolen
signing key without the database neither.  Comparison is constant-time
(``hmac.compare_digest``).  The nonce lets the sign-in flow hand the browser
only the fragment while the client that generated the nonce assembles the
full token (REFERENCE 6.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store.errors import NotFound
from firezone.portal.store.interface import IPortalStore
from firezone.portal.store.records import DEFAULT_CLIENT_SESSION_LIFETIME, Token

#: the key file's name inside the portal's data directory
SECRET_KEY_FILENAME = "secret_key"
SECRET_KEY_BYTES = 64
MIN_SECRET_KEY_BYTES = 32

SIGNED_PREFIX = "SFMyNTY"
MAX_TOKEN_LENGTH = 4096
MAX_NONCE_LENGTH = 128


class TokenError(Exception):
    """A presented token cannot be used; ``reason`` is a short machine-readable code."""

    reason = "invalid_token"


class InvalidToken(TokenError):
    """Malformed, forged, of the wrong type, or its actor is disabled."""


class ExpiredToken(TokenError):
    reason = "token_expired"


class DeletedToken(TokenError):
    """Correctly signed, but the row is gone: revoked or swept."""

    reason = "token_deleted"


@dataclass(frozen=True)
class IssuedToken:
    """A newly issued token: the row and the only copy of the secret parts.

    ``fragment`` is everything after the nonce (it starts with ``.``); the
    sign-in redirect carries only that.  ``encoded`` is what a device presents.
    """

    token: Token
    nonce: str
    fragment: str

    @property
    def encoded(self) -> str:
        return self.nonce + self.fragment


@dataclass(frozen=True)
class Claims:
    """What a correctly signed token says about itself."""

    nonce: str
    account_id: str | None
    token_id: str
    secret: str


def load_or_create_secret_key(path: str) -> bytes:
    """The portal's signing key, created (mode 0600) on first start.

    Stored as hex text so an operator can copy it to the other portal nodes.
    """
    if not os.path.exists(path):
        # Write a private temporary file, then link it into place: a portal and a
        # firezone-ctl starting together both end up reading one complete key.
        fd, temporary = tempfile.mkstemp(prefix=".secret_key.", dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SECRET_KEY_BYTES) + "\n")
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    with open(path) as f:
        text = f.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the secret key must be hex text") from None
    if len(key) < MIN_SECRET_KEY_BYTES:
        raise ValueError(f"{path}: the secret key must be at least {MIN_SECRET_KEY_BYTES} bytes")
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_nonce(nonce: str) -> str:
    """Nonces travel in URLs and are split off at the first ``.``."""
    if (
        not isinstance(nonce, str)
        or len(nonce) > MAX_NONCE_LENGTH
        or any(c == "." or not c.isascii() or not c.isprintable() or c.isspace() for c in nonce)
    ):
        raise ValueError("a nonce is at most 128 printable ASCII characters without '.'")
    return nonce


def hash_secret(nonce: str, secret: str, salt: str) -> str:
    return hashlib.sha3_256((nonce + secret + salt).encode()).hexdigest()


@dataclass(frozen=True)
class TokenCodec:
    """Signs and checks the fragment; knows nothing of the database."""

    secret_key: bytes

    def _key(self, type: str) -> bytes:
        return hmac.new(self.secret_key, b"firezone token " + type.encode(), "sha256").digest()

    def _signature(self, type: str, payload: str) -> str:
        message = f"{SIGNED_PREFIX}.{payload}".encode()
        return _b64encode(hmac.new(self._key(type), message, "sha256").digest())

    def fragment(self, type: str, account_id: str | None, token_id: str, secret: str) -> str:
        claims = json.dumps([account_id, token_id, secret], separators=(",", ":"))
        payload = _b64encode(claims.encode())
        return f".{SIGNED_PREFIX}.{payload}.{self._signature(type, payload)}"

    def parse(self, encoded: str, type: str) -> Claims:
        """The claims of a token of ``type``, or InvalidToken."""
        if not isinstance(encoded, str) or len(encoded) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        nonce, dot, rest = "".join(encoded.split()).partition(".")
        parts = rest.split(".")
        if not dot or len(parts) != 3 or parts[0] != SIGNED_PREFIX:
            raise InvalidToken("malformed token")
        _, payload, signature = parts
        if not hmac.compare_digest(signature.encode(), self._signature(type, payload).encode()):
            raise InvalidToken("bad token signature")
        try:
            value: Any = json.loads(_b64decode(payload))
        except (binascii.Error, ValueError):
            raise InvalidToken("malformed token payload") from None
        if not (
            isinstance(value, list)
            and len(value) == 3
            and (value[0] is None or isinstance(value[0], str))
            and isinstance(value[1], str)
            and isinstance(value[2], str)
        ):
            raise InvalidToken("malformed token payload")
        return Claims(nonce, value[0], value[1], value[2])


class Tokens:
    """Token lifecycle on top of a store; time from the injected clock."""

    def __init__(self, store: IPortalStore, secret_key: bytes, clock: SupportsSeconds) -> None:
        self._store = store
        self._codec = TokenCodec(secret_key)
        self._clock = clock

    async def _issue(
        self, account_id: str | None, type: str, nonce: str, **row: Any
    ) -> IssuedToken:
        nonce = check_nonce(nonce)
        secret = base64.b32hexencode(secrets.token_bytes(32)).decode("ascii")
        salt = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii")
        token = await self._store.create_token(
            account_id, type, secret_salt=salt, secret_hash=hash_secret(nonce, secret, salt), **row
        )
        return IssuedToken(token, nonce, self._codec.fragment(type, account_id, token.id, secret))

    def issue_client_token(
        self,
        account_id: str,
        actor_id: str,
        *,
        auth_provider_id: str | None = None,
        nonce: str = "",
        expires_at: float | None = None,
    ) -> Deferred[IssuedToken]:
        """Expires at ``expires_at``, else after the provider's session lifetime
        (default 7 days); a service account's token has no provider."""

        async def issue() -> IssuedToken:
            expiry = expires_at
            if expiry is None:
                lifetime = DEFAULT_CLIENT_SESSION_LIFETIME
                if auth_provider_id is not None:
                    provider = await self._store.get_auth_provider(account_id, auth_provider_id)
                    lifetime = provider.client_session_lifetime_secs
                expiry = self._clock.seconds() + lifetime
            return await self._issue(
                account_id, "client", nonce, actor_id=actor_id,
                auth_provider_id=auth_provider_id, expires_at=expiry,
            )

        return Deferred.fromCoroutine(issue())

    def issue_gateway_token(self, account_id: str, site_id: str) -> Deferred[IssuedToken]:
        """A site's gateway token: no expiry, revocable, no nonce."""
        return Deferred.fromCoroutine(self._issue(account_id, "gateway", "", site_id=site_id))

    def issue_relay_token(self) -> Deferred[IssuedToken]:
        """A global relay token: no account, no expiry."""
        return Deferred.fromCoroutine(self._issue(None, "relay", ""))

    def issue_api_token(
        self, account_id: str, actor_id: str, *, name: str | None = None,
        expires_at: float | None = None,
    ) -> Deferred[IssuedToken]:
        return Deferred.fromCoroutine(
            self._issue(account_id, "api", "", actor_id=actor_id, name=name,
                        expires_at=expires_at)
        )

    def verify(self, encoded: str, type: str) -> Deferred[Token]:
        """The token row, or fail with InvalidToken / ExpiredToken / DeletedToken."""
        return Deferred.fromCoroutine(self._verify(encoded, type))

    async def _verify(self, encoded: str, type: str) -> Token:
        claims = self._codec.parse(encoded, type)
        try:
            token = await self._store.get_token(claims.account_id, claims.token_id)
        except NotFound:
            raise DeletedToken("the token was revoked or has been deleted") from None
        expected = hash_secret(claims.nonce, claims.secret, token.secret_salt)
        if token.type != type or not hmac.compare_digest(token.secret_hash, expected):
            raise InvalidToken("token secret does not match")
        if token.expires_at is not None and token.expires_at <= self._clock.seconds():
            raise ExpiredToken("the token has expired")
        if token.actor_id is not None and token.account_id is not None:
            try:
                actor = await self._store.get_actor(token.account_id, token.actor_id)
            except NotFound:
                raise DeletedToken("the token's actor is gone") from None
            if actor.disabled:
                raise InvalidToken("the token's actor is disabled")
        return token

    def revoke(self, account_id: str | None, token_id: str) -> Deferred[None]:
        """Delete the token; the store announces it on ``token_deleted``."""
        return self._store.delete_token(account_id, token_id)
