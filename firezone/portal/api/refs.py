"""The opaque ``ref`` of ``create_authorization``, signed so a gateway cannot forge one.

The gateway must echo it verbatim in ``authorization_created``; the portal
then knows, without keeping state, which client connection asked, for which
resource, and with which preshared key and ICE credentials (the reference
signs ``term_to_binary`` of the same facts with ``Plug.Crypto.sign``).  Here
it is ``base64url(JSON) "." base64url(HMAC-SHA256)`` under a key derived from
the portal's secret key, so every node sharing the key can verify it.

Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_REF_LENGTH", "InvalidRef", "RefSigner"]

MAX_REF_LENGTH = 4096


class InvalidRef(ValueError):
    """The ref was not signed by this portal, or is malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RefSigner:
    def __init__(self, secret_key: bytes) -> None:
        self._key = hmac.new(secret_key, b"gateway_reply_ref", "sha256").digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def sign(self, facts: Mapping[str, Any]) -> str:
        body = _b64(json.dumps(dict(facts), separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, ref: object) -> dict[str, Any]:
        if not isinstance(ref, str) or len(ref) > MAX_REF_LENGTH or not ref.isascii():
            raise InvalidRef("malformed ref")
        body, dot, mac = ref.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            raise InvalidRef("bad ref signature")
        try:
            value = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            raise InvalidRef("malformed ref body") from None
        if not isinstance(value, dict):
            raise InvalidRef("malformed ref body")
        return value
