"""The Noise_IKpsk2 handshake of WireGuard, one :class:`NoiseHandshake` per peer.

This module only does the handshake's cryptography and its per-peer state
(mirroring wireguard-go's ``noise-protocol.go``).  Index allocation, MACs,
timers and keypair rotation belong to the callers.

Consuming an initiation is split in two because the responder does not know
which peer is talking until the static key has been decrypted:
:func:`open_initiation` (device-wide) then :meth:`NoiseHandshake.consume_initiation`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from firezone.wireguard.constants import HANDSHAKE_INITIATION_RATE
from firezone.wireguard.crypto import (
    CONSTRUCTION,
    IDENTIFIER,
    KEY_SIZE,
    RandomBytes,
    WireGuardCryptoError,
    aead_decrypt,
    aead_encrypt,
    blake2s_hash,
    clamp,
    dh,
    kdf1,
    kdf2,
    kdf3,
    public_key,
    tai64n,
)
from firezone.wireguard.messages import HandshakeInitiation, HandshakeResponse

INITIAL_CHAIN_KEY = blake2s_hash(CONSTRUCTION)
INITIAL_HASH = blake2s_hash(INITIAL_CHAIN_KEY, IDENTIFIER)
_ZERO_KEY = bytes(KEY_SIZE)
_ZERO_TIMESTAMP = bytes(12)


class HandshakeError(ValueError):
    """A handshake message was rejected; ``reason`` names why, for counters.

    Reasons: ``decrypt`` (an AEAD did not verify: wrong keys or PSK),
    ``bad_key`` (degenerate X25519 result), ``stale_timestamp`` (TAI64N not newer
    than the last accepted one: a replay), ``flood`` (initiations too close
    together), ``state`` (message not expected in the current state).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HandshakeState(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """Our long-term key pair, with the transcript hash prefix precomputed for it."""

    private_key: bytes
    public_key: bytes
    responder_hash: bytes

    @classmethod
    def from_private_key(cls, private_key: bytes) -> StaticIdentity:
        private_key = clamp(private_key)
        pub = public_key(private_key)
        return cls(private_key, pub, blake2s_hash(INITIAL_HASH, pub))


@dataclass(frozen=True, slots=True)
class OpenedInitiation:
    """An initiation whose encrypted static key decrypted: who claims to be calling."""

    message: HandshakeInitiation
    remote_static: bytes
    chain_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The transport keys a finished handshake yields, with the indices to use them under."""

    sending_key: bytes
    receiving_key: bytes
    is_initiator: bool
    local_index: int
    remote_index: int


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return dh(private, public)
    except WireGuardCryptoError as e:
        raise HandshakeError("bad_key", str(e)) from None


def _open(key: bytes, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    try:
        return aead_decrypt(key, 0, ciphertext, ad)
    except WireGuardCryptoError:
        raise HandshakeError("decrypt", f"{what} did not decrypt") from None


def open_initiation(identity: StaticIdentity, msg: HandshakeInitiation) -> OpenedInitiation:
    """Decrypt the initiator's static key (first half of consuming an initiation)."""
    h = blake2s_hash(identity.responder_hash, msg.ephemeral)
    ck = kdf1(INITIAL_CHAIN_KEY, msg.ephemeral)
    ck, key = kdf2(ck, _dh(identity.private_key, msg.ephemeral))
    remote_static = _open(key, msg.encrypted_static, h, "static key")
    h = blake2s_hash(h, msg.encrypted_static)
    return OpenedInitiation(msg, remote_static, ck, h)


class NoiseHandshake:
    """The handshake state we keep for one peer (wireguard-go's ``Handshake``)."""

    def __init__(
        self,
        identity: StaticIdentity,
        remote_static: bytes,
        preshared_key: bytes | None = None,
        rand_bytes: RandomBytes = os.urandom,
    ) -> None:
        if len(remote_static) != KEY_SIZE:
            raise ValueError("remote static key must be 32 bytes")
        self.identity = identity
        self.remote_static = remote_static
        self.preshared_key = preshared_key or _ZERO_KEY
        if len(self.preshared_key) != KEY_SIZE:
            raise ValueError("preshared key must be 32 bytes")
        self._rand_bytes = rand_bytes
        try:
            self._static_static: bytes | None = dh(identity.private_key, remote_static)
        except WireGuardCryptoError:
            self._static_static = None
        self._initial_hash = blake2s_hash(INITIAL_HASH, remote_static)
        self.state = HandshakeState.ZEROED
        self.local_index: int | None = None
        self.remote_index = 0
        self.last_timestamp = _ZERO_TIMESTAMP
        self.last_initiation_consumed_at = float("-inf")
        self._hash = b""
        self._chain_key = b""
        self._local_ephemeral = b""
        self._remote_ephemeral = b""

    def clear(self) -> None:
        """Forget the ephemeral secrets and chaining state (not the replay timestamp)."""
        self.state = HandshakeState.ZEROED
        self.local_index = None
        self._hash = self._chain_key = self._local_ephemeral = self._remote_ephemeral = b""

    def _static_static_secret(self) -> bytes:
        if self._static_static is None:
            raise HandshakeError("bad_key", "static-static DH with this peer is degenerate")
        return self._static_static

    def create_initiation(self, sender: int, wall_time: float) -> HandshakeInitiation:
        """Build a handshake initiation (MACs left zero for the cookie layer)."""
        static_static = self._static_static_secret()
        ephemeral_private = clamp(self._rand_bytes(KEY_SIZE))
        ephemeral = public_key(ephemeral_private)
        h = blake2s_hash(self._initial_hash, ephemeral)
        ck = kdf1(INITIAL_CHAIN_KEY, ephemeral)
        ck, key = kdf2(ck, _dh(ephemeral_private, self.remote_static))
        encrypted_static = aead_encrypt(key, 0, self.identity.public_key, h)
        h = blake2s_hash(h, encrypted_static)
        ck, key = kdf2(ck, static_static)
        encrypted_timestamp = aead_encrypt(key, 0, tai64n(wall_time), h)
        h = blake2s_hash(h, encrypted_timestamp)
        self._hash, self._chain_key, self._local_ephemeral = h, ck, ephemeral_private
        self.local_index = sender
        self.state = HandshakeState.INITIATION_CREATED
        return HandshakeInitiation(sender, ephemeral, encrypted_static, encrypted_timestamp)

    def consume_initiation(self, opened: OpenedInitiation, now: float) -> bytes:
        """Verify the timestamp of an initiation from this peer; returns the TAI64N label.

        Rejects replays ("greater than the last seen timestamp for that peer") and
        initiations closer together than wireguard-go's 1/50 s flood limit.
        """
        if opened.remote_static != self.remote_static:
            raise HandshakeError("state", "initiation is from another peer")
        msg = opened.message
        ck, key = kdf2(opened.chain_key, self._static_static_secret())
        timestamp = _open(key, msg.encrypted_timestamp, opened.hash, "timestamp")
        h = blake2s_hash(opened.hash, msg.encrypted_timestamp)
        if timestamp <= self.last_timestamp:
            raise HandshakeError("stale_timestamp", "initiation timestamp is not newer (replay)")
        if now - self.last_initiation_consumed_at <= HANDSHAKE_INITIATION_RATE:
            raise HandshakeError("flood", "initiations arrive too fast")
        self._hash, self._chain_key = h, ck
        self.remote_index = msg.sender
        self._remote_ephemeral = msg.ephemeral
        self.last_timestamp = timestamp
        self.last_initiation_consumed_at = now
        self.state = HandshakeState.INITIATION_CONSUMED
        return timestamp

    def create_response(self, sender: int) -> HandshakeResponse:
        """Answer the consumed initiation (MACs left zero)."""
        if self.state is not HandshakeState.INITIATION_CONSUMED:
            raise HandshakeError("state", "no consumed initiation to respond to")
        ephemeral_private = clamp(self._rand_bytes(KEY_SIZE))
        ephemeral = public_key(ephemeral_private)
        h = blake2s_hash(self._hash, ephemeral)
        ck = kdf1(self._chain_key, ephemeral)
        ck = kdf1(ck, _dh(ephemeral_private, self._remote_ephemeral))
        ck = kdf1(ck, _dh(ephemeral_private, self.remote_static))
        ck, tau, key = kdf3(ck, self.preshared_key)
        h = blake2s_hash(h, tau)
        encrypted_nothing = aead_encrypt(key, 0, b"", h)
        h = blake2s_hash(h, encrypted_nothing)
        self._hash, self._chain_key, self._local_ephemeral = h, ck, ephemeral_private
        self.local_index = sender
        self.state = HandshakeState.RESPONSE_CREATED
        return HandshakeResponse(sender, self.remote_index, ephemeral, encrypted_nothing)

    def consume_response(self, msg: HandshakeResponse) -> None:
        """Finish our initiation with the responder's answer."""
        if self.state is not HandshakeState.INITIATION_CREATED or msg.receiver != self.local_index:
            raise HandshakeError("state", "response does not match a pending initiation")
        h = blake2s_hash(self._hash, msg.ephemeral)
        ck = kdf1(self._chain_key, msg.ephemeral)
        ck = kdf1(ck, _dh(self._local_ephemeral, msg.ephemeral))
        ck = kdf1(ck, _dh(self.identity.private_key, msg.ephemeral))
        ck, tau, key = kdf3(ck, self.preshared_key)
        h = blake2s_hash(h, tau)
        _open(key, msg.encrypted_nothing, h, "response payload")
        h = blake2s_hash(h, msg.encrypted_nothing)
        self._hash, self._chain_key = h, ck
        self.remote_index = msg.sender
        self.state = HandshakeState.RESPONSE_CONSUMED

    def derive_keys(self) -> SessionKeys:
        """Split the chaining key into transport keys and zero the handshake."""
        if self.state is HandshakeState.RESPONSE_CONSUMED:
            send, recv = kdf2(self._chain_key, b"")
            initiator = True
        elif self.state is HandshakeState.RESPONSE_CREATED:
            recv, send = kdf2(self._chain_key, b"")
            initiator = False
        else:
            raise HandshakeError("state", f"cannot derive keys in state {self.state.name}")
        assert self.local_index is not None
        keys = SessionKeys(send, recv, initiator, self.local_index, self.remote_index)
        # The local index now belongs to the keypair, not to the handshake.
        self.clear()
        return keys
