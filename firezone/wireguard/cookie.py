"""MAC1/MAC2 and cookie replies: WireGuard's defence against handshake floods.

Every handshake message carries ``mac1`` keyed by HASH(LABEL_MAC1 || receiver's
public key), so a responder can discard junk without any DH.  Under load the
responder also wants ``mac2``, keyed by a cookie that proves the sender owns
its source address; without it the sender gets a cookie reply instead of an
answer.  Semantics follow wireguard-go ``device/cookie.go``: the responder's
secret lives 120 s and is only renewed when a reply is made; a received cookie
is used for 120 s.
"""

from __future__ import annotations

import ipaddress
import os

from firezone.wireguard.constants import COOKIE_REFRESH_TIME
from firezone.wireguard.crypto import (
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
    XNONCE_SIZE,
    RandomBytes,
    WireGuardCryptoError,
    blake2s_hash,
    constant_time_equal,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)
from firezone.wireguard.events import Address
from firezone.wireguard.messages import CookieReply


def mac1_key(public_key: bytes) -> bytes:
    """The key of mac1 for messages sent to the owner of ``public_key``."""
    return blake2s_hash(LABEL_MAC1, public_key)


def cookie_key(public_key: bytes) -> bytes:
    """The XChaCha20-Poly1305 key of cookie replies sent by the owner of ``public_key``."""
    return blake2s_hash(LABEL_COOKIE, public_key)


def source_bytes(source: Address) -> bytes:
    """The bytes a cookie is bound to: packed IP then little-endian port (as wireguard-go)."""
    host, port = source[0], source[1]
    try:
        packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        packed = host.encode("utf-8", "surrogateescape")
    return packed + (port & 0xFFFF).to_bytes(2, "little")


class CookieChecker:
    """The responder side: verifies mac1/mac2 of messages to us and makes cookie replies."""

    def __init__(self, local_public_key: bytes, rand_bytes: RandomBytes = os.urandom) -> None:
        self._mac1_key = mac1_key(local_public_key)
        self._encryption_key = cookie_key(local_public_key)
        self._rand_bytes = rand_bytes
        self._secret = b""
        self._secret_set_at = float("-inf")

    def check_mac1(self, msg: bytes) -> bool:
        """Is ``mac1`` (the 16 bytes before the last 16) right for our public key?"""
        n = len(msg)
        if n < 2 * MAC_SIZE:
            return False
        smac1 = n - 2 * MAC_SIZE
        expected = mac(self._mac1_key, msg[:smac1])
        return constant_time_equal(expected, msg[smac1 : n - MAC_SIZE])

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)

    def check_mac2(self, msg: bytes, source: bytes, now: float) -> bool:
        """Does ``mac2`` prove a cookie we issued to ``source`` within COOKIE_REFRESH_TIME?"""
        if now - self._secret_set_at > COOKIE_REFRESH_TIME or len(msg) < 2 * MAC_SIZE:
            return False
        smac2 = len(msg) - MAC_SIZE
        expected = mac(self._cookie(source), msg[:smac2])
        return constant_time_equal(expected, msg[smac2:])

    def create_reply(self, msg: bytes, receiver: int, source: bytes, now: float) -> CookieReply:
        """A cookie reply for the handshake message ``msg`` from ``source``.

        The cookie is encrypted with a random 24-byte nonce and the message's mac1 as
        associated data, so only the sender of that very message can open it.
        """
        if now - self._secret_set_at > COOKIE_REFRESH_TIME:
            self._secret = self._rand_bytes(32)
            self._secret_set_at = now
        n = len(msg)
        mac1 = msg[n - 2 * MAC_SIZE : n - MAC_SIZE]
        nonce = self._rand_bytes(XNONCE_SIZE)
        encrypted = xaead_encrypt(self._encryption_key, nonce, self._cookie(source), mac1)
        return CookieReply(receiver, nonce, encrypted)


class CookieGenerator:
    """The sender side, one per peer: writes mac1/mac2 and remembers the last cookie."""

    def __init__(self, remote_public_key: bytes) -> None:
        self._mac1_key = mac1_key(remote_public_key)
        self._decryption_key = cookie_key(remote_public_key)
        self._cookie = b""
        self._cookie_set_at = float("-inf")
        self._last_mac1: bytes | None = None

    @property
    def has_cookie(self) -> bool:
        return bool(self._cookie)

    def add_macs(self, msg: bytes, now: float) -> bytes:
        """``msg`` (an encoded handshake message) with mac1 and, if we hold a fresh cookie, mac2."""
        n = len(msg)
        smac1 = n - 2 * MAC_SIZE
        body = msg[:smac1]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if now - self._cookie_set_at > COOKIE_REFRESH_TIME:
            return body + mac1 + bytes(MAC_SIZE)
        return body + mac1 + mac(self._cookie, body + mac1)

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Accept a cookie reply answering our last handshake message; False if it does not."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(
                self._decryption_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except WireGuardCryptoError:
            return False
        self._cookie = cookie
        self._cookie_set_at = now
        return True
