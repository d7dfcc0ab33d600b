"""Deterministic credential formulas shared by the portal, the relay and the data plane.

Every function here must produce byte-identical output to the reference portal
(Elixir) and relay (Rust), because the two sides derive the same secret
independently and never exchange it (REFERENCE.md 2.5).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

__all__ = [
    "REALM",
    "IceCredentials",
    "ice_credentials",
    "long_term_key",
    "parse_turn_username",
    "turn_credentials",
    "turn_password",
    "turn_salt",
    "turn_username",
    "wireguard_psk",
    "wireguard_psk_client_to_client",
]

#: The TURN realm of every Firezone relay (``auth.rs`` ``FIREZONE``).
REALM = "firezone"

_U64_MAX = 2**64 - 1


def _b64_nopad(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def turn_salt(device_public_key_b64: str) -> str:
    """The per-device salt, so each device gets distinct TURN credentials."""
    return _b64_nopad(hashlib.sha256(device_public_key_b64.encode("utf-8")).digest())


def turn_username(expires_unix: int, salt: str) -> str:
    """``<expires_unix>:<salt>``: the relay reads the expiry back out of it."""
    return f"{int(expires_unix)}:{salt}"


def parse_turn_username(username: str) -> tuple[int, str]:
    """Split ``<expiry>:<salt>`` like the relay's ``split_username``.

    Exactly one ``:`` and an unsigned 64-bit decimal expiry are required; anything
    else raises ``ValueError`` (the relay answers such requests with 401).
    """
    parts = username.split(":")
    if len(parts) != 2:
        raise ValueError("TURN username must be '<expiry>:<salt>'")
    expiry_text, salt = parts
    if not (expiry_text.isascii() and expiry_text.isdigit()):
        raise ValueError("TURN username expiry must be decimal digits")
    expiry = int(expiry_text)
    if expiry > _U64_MAX:
        raise ValueError("TURN username expiry does not fit in 64 bits")
    return expiry, salt


def _password(expiry: int, salt: str, stamp_secret: str) -> str:
    digest = hashlib.sha256(f"{expiry}:{stamp_secret}:{salt}".encode()).digest()
    return _b64_nopad(digest)


def turn_password(username: str, stamp_secret: str) -> str:
    """Re-derive the password from the username and the relay's secret (no state needed)."""
    expiry, salt = parse_turn_username(username)
    return _password(expiry, salt, stamp_secret)


def turn_credentials(
    device_public_key_b64: str, stamp_secret: str, expires_unix: int
) -> tuple[str, str]:
    """The ``(username, password)`` the portal hands a device for one relay."""
    username = turn_username(expires_unix, turn_salt(device_public_key_b64))
    return username, turn_password(username, stamp_secret)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 9.2.2 long-term credential key ``MD5(username ":" realm ":" password)``."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def _derive_psk(secret: bytes, salt: str) -> str:
    key = hashlib.pbkdf2_hmac("sha256", secret, salt.encode("utf-8"), 1, 32)
    return base64.b64encode(key).decode("ascii")


def wireguard_psk(
    client_psk_base: bytes,
    gateway_psk_base: bytes,
    client_id: str,
    gateway_id: str,
    client_pubkey_b64: str,
    gateway_pubkey_b64: str,
) -> str:
    """The WireGuard preshared key of a client/gateway pair (``Portal.Crypto.psk``)."""
    salt = (
        f"WG_PSK|C_ID:{client_id}|G_ID:{gateway_id}"
        f"|C_PK:{client_pubkey_b64}|G_PK:{gateway_pubkey_b64}"
    )
    return _derive_psk(client_psk_base + gateway_psk_base, salt)


def wireguard_psk_client_to_client(
    client_a_psk_base: bytes,
    client_b_psk_base: bytes,
    client_a_id: str,
    client_b_id: str,
    client_a_pubkey_b64: str,
    client_b_pubkey_b64: str,
) -> str:
    """The WireGuard preshared key of a client-to-client pair (``WG_PSK_CC`` salt)."""
    salt = (
        f"WG_PSK_CC|CA_ID:{client_a_id}|CB_ID:{client_b_id}"
        f"|CA_PK:{client_a_pubkey_b64}|CB_PK:{client_b_pubkey_b64}"
    )
    return _derive_psk(client_a_psk_base + client_b_psk_base, salt)


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """ICE ufrag/password for both ends; deterministic so re-authorizations reuse connections."""

    initiator_username: str
    initiator_password: str
    receiver_username: str
    receiver_password: str


def ice_credentials(
    initiator_id: str, initiator_pubkey: str, receiver_id: str, receiver_pubkey: str
) -> IceCredentials:
    """Slice ``base32_lower_nopad(sha256(seed))`` like ``generate_ice_credentials``.

    Elixir's inclusive ranges 0..3, 4..25, 26..29, 30..52 over the 52-character
    hash give 4/22/4/22 characters.
    """
    seed = f"{initiator_id}:{initiator_pubkey}:{receiver_id}:{receiver_pubkey}"
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    h = base64.b32encode(digest).decode("ascii").lower().rstrip("=")
    return IceCredentials(
        initiator_username=h[0:4],
        initiator_password=h[4:26],
        receiver_username=h[26:30],
        receiver_password=h[30:53],
    )
