"""The cryptographic primitives WireGuard is built from, named as in the paper.

BLAKE2s comes from :mod:`hashlib`; bulk ChaCha20-Poly1305 from ``cryptography``
(about five times faster than PyNaCl for 1280-byte packets); X25519 and
XChaCha20-Poly1305 (cookie replies only) from PyNaCl.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

KEY_SIZE = 32
MAC_SIZE = 16
TAG_SIZE = 16
XNONCE_SIZE = 24
TAI64N_SIZE = 12

#: A source of random bytes (``os.urandom`` in production, seeded in tests).
RandomBytes = Callable[[int], bytes]

_TAI64_BASE = 0x400000000000000A
#: wireguard-go drops the low 24 bits of the nanoseconds so the timestamp does
#: not leak a precise clock.
_TAI64N_WHITENER = 0xFFFFFF
_TAI64N = struct.Struct(">QI")


class WireGuardCryptoError(ValueError):
    """A key is malformed, a DH result is degenerate, or an AEAD tag did not verify."""


def blake2s_hash(*parts: bytes) -> bytes:
    """HASH(parts...) of the paper: BLAKE2s-256 of the concatenation."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) over BLAKE2s-256, the building block of the KDF."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: one 32-byte output of HKDF(key, data) built from HMAC-BLAKE2s."""
    prk = hmac_blake2s(key, data)
    return hmac_blake2s(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2: two 32-byte outputs."""
    prk = hmac_blake2s(key, data)
    t0 = hmac_blake2s(prk, b"\x01")
    t1 = hmac_blake2s(prk, t0 + b"\x02")
    return t0, t1


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3: three 32-byte outputs."""
    prk = hmac_blake2s(key, data)
    t0 = hmac_blake2s(prk, b"\x01")
    t1 = hmac_blake2s(prk, t0 + b"\x02")
    t2 = hmac_blake2s(prk, t1 + b"\x03")
    return t0, t1, t2


def counter_nonce(counter: int) -> bytes:
    """The 96-bit AEAD nonce: 32 zero bits then the counter as little-endian 64 bits."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, ad): ChaCha20-Poly1305, ciphertext || tag."""
    return ChaCha20Poly1305(key).encrypt(counter_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; raises :class:`WireGuardCryptoError` on a bad tag."""
    try:
        return ChaCha20Poly1305(key).decrypt(counter_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise WireGuardCryptoError("AEAD authentication failed") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce, plaintext, ad): XChaCha20-Poly1305 with a 24-byte nonce."""
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`xaead_encrypt`; raises :class:`WireGuardCryptoError` on a bad tag."""
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except nacl.exceptions.CryptoError:
        raise WireGuardCryptoError("XAEAD authentication failed") from None


def clamp(private_key: bytes) -> bytes:
    """Clamp a Curve25519 scalar the way ``wg genkey`` does."""
    if len(private_key) != KEY_SIZE:
        raise WireGuardCryptoError("private key must be 32 bytes")
    k = bytearray(private_key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def generate_private_key(rand_bytes: RandomBytes | None = None) -> bytes:
    """A fresh clamped X25519 private key (from ``rand_bytes``, default the OS)."""
    return clamp((rand_bytes or os.urandom)(KEY_SIZE))


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of ``private_key``."""
    if len(private_key) != KEY_SIZE:
        raise WireGuardCryptoError("private key must be 32 bytes")
    return nacl.bindings.crypto_scalarmult_base(private_key)


def dh(private_key: bytes, public: bytes) -> bytes:
    """DH(private, public): X25519; rejects the all-zero result of a low-order point."""
    if len(private_key) != KEY_SIZE or len(public) != KEY_SIZE:
        raise WireGuardCryptoError("X25519 keys must be 32 bytes")
    try:
        return nacl.bindings.crypto_scalarmult(private_key, public)
    except nacl.exceptions.CryptoError:
        raise WireGuardCryptoError("X25519 produced the all-zero shared secret") from None


def tai64n(wall_time: float) -> bytes:
    """TAI64N label of a UNIX wall-clock time, whitened like wireguard-go's."""
    seconds = math.floor(wall_time)
    nanos = min(int((wall_time - seconds) * 1e9), 999_999_999) & ~_TAI64N_WHITENER
    return _TAI64N.pack((_TAI64_BASE + seconds) & 0xFFFFFFFFFFFFFFFF, nanos)


def key_to_base64(key: bytes) -> str:
    """A 32-byte key as ``wg`` prints it (standard base64, 44 characters)."""
    if len(key) != KEY_SIZE:
        raise WireGuardCryptoError("keys are 32 bytes")
    return base64.b64encode(key).decode("ascii")


def key_from_base64(text: str) -> bytes:
    """Parse a ``wg``-style base64 key; raises :class:`WireGuardCryptoError` if malformed."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WireGuardCryptoError("key is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise WireGuardCryptoError("key does not decode to 32 bytes")
    return raw


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare MACs without leaking where they differ."""
    return hmac.compare_digest(a, b)
