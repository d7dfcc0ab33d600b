"""Flow-log ingest tokens: the HS256 JWTs in every authorization (REFERENCE 6.4).

HEAD connlib refuses ``authorization_created`` and ``create_authorization``
without ``flow_logs_ingest_token``; it parses the claims but does not check
the signature.  The reference signs with ``accounts.ingest_signing_key``; this
store has no such column, so the key is derived per account from the portal's
secret key (an ingest endpoint holding the same secret can verify it).

Pure: the caller passes ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "INGEST_GRACE",
    "REQUIRED_CLAIMS",
    "IngestAttribution",
    "decode_unverified",
    "ingest_signing_key",
    "mint",
    "mint_pair",
]

#: ``exp`` is the authorization's expiry plus this grace for late uploads.
INGEST_GRACE = 30 * 24 * 3600

#: The claims connlib's ``IngestTokenClaims`` requires.
REQUIRED_CLAIMS = (
    "account_id", "iat", "exp", "uploads_enabled", "role", "initiator_device_id",
    "responder_device_id", "policy_authorization_id", "policy_id", "resource_id",
    "resource_name", "initiator_actor_id", "initiator_actor_name", "authorized_at",
    "authorization_expires_at",
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _iso(ts: float) -> str:
    """``2026-07-06T12:00:00.000000Z``, the form ``DateTime.to_iso8601`` gives for usec times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ingest_signing_key(secret_key: bytes, account_id: str) -> bytes:
    return hmac.new(secret_key, b"flow log ingest " + account_id.encode(), "sha256").digest()


def mint(key: bytes, claims: Mapping[str, Any]) -> str:
    """A compact HS256 JWT of ``claims``."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, claims)`` without checking the signature -- what connlib does."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three segments")
    decoded = []
    for part in parts[:2]:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        if not isinstance(value, dict):
            raise ValueError("JWT segments must be JSON objects")
        decoded.append(value)
    return decoded[0], decoded[1]


@dataclass(frozen=True)
class IngestAttribution:
    """Everything both ingest tokens of one authorization say (``mint_ingest_tokens``)."""

    account_id: str
    policy_authorization_id: str
    policy_id: str
    initiator_device_id: str
    responder_device_id: str
    uploads_enabled: bool
    resource_id: str
    resource_name: str
    resource_address: str | None
    initiator_actor_id: str
    initiator_actor_name: str
    initiator_actor_email: str | None
    initiator_auth_provider_id: str | None
    initiator_client_version: str | None
    initiator_device_os_name: str | None
    initiator_device_os_version: str | None

    def claims(self, role: str, now: float, expires_at: float | None) -> dict[str, Any]:
        """Required claims always; optional ones only when known."""
        expiry = expires_at if expires_at is not None else now
        claims: dict[str, Any] = {
            "account_id": self.account_id,
            "iat": int(now),
            "exp": int(expiry) + INGEST_GRACE,
            "uploads_enabled": self.uploads_enabled,
            "role": role,
            "initiator_device_id": self.initiator_device_id,
            "responder_device_id": self.responder_device_id,
            "policy_authorization_id": self.policy_authorization_id,
            "policy_id": self.policy_id,
            "resource_id": self.resource_id,
            "resource_name": self.resource_name,
            "initiator_actor_id": self.initiator_actor_id,
            "initiator_actor_name": self.initiator_actor_name,
            "authorized_at": _iso(now),
            "authorization_expires_at": _iso(expiry),
        }
        optional = {
            "resource_address": self.resource_address,
            "initiator_actor_email": self.initiator_actor_email,
            "initiator_auth_provider_id": self.initiator_auth_provider_id,
            "initiator_client_version": self.initiator_client_version,
            "initiator_device_os_name": self.initiator_device_os_name,
            "initiator_device_os_version": self.initiator_device_os_version,
        }
        claims.update({k: v for k, v in optional.items() if v is not None})
        return claims


def mint_pair(
    key: bytes, attribution: IngestAttribution, now: float, expires_at: float | None
) -> tuple[str, str]:
    """``(initiator_token, responder_token)``; only ``role`` differs between them."""
    return (
        mint(key, attribution.claims("initiator", now, expires_at)),
        mint(key, attribution.claims("responder", now, expires_at)),
    )
