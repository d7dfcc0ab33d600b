"""The four WireGuard messages as value codecs, plus a fast classifier.

Every message starts with a little-endian 32-bit word: the type in the low byte
and three reserved zero bytes.  Handshake messages have fixed sizes; transport
data is a 16-byte header followed by at least a Poly1305 tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
#: A keepalive: header plus the tag of an empty plaintext.
TRANSPORT_MIN_SIZE = 32

_U32 = struct.Struct("<I")
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")


class WireGuardDecodeError(ValueError):
    """The bytes are not a well-formed WireGuard message of the expected type."""


def message_type(buf: bytes) -> int:
    """The message type (1-4) if ``buf`` has a valid type word and size, else 0.

    Cheap enough to run on every datagram of a shared socket.
    """
    n = len(buf)
    if n < 4:
        return 0
    word = _U32.unpack_from(buf)[0]
    if word == MESSAGE_TRANSPORT:
        return MESSAGE_TRANSPORT if n >= TRANSPORT_MIN_SIZE else 0
    if word == MESSAGE_INITIATION:
        return MESSAGE_INITIATION if n == INITIATION_SIZE else 0
    if word == MESSAGE_RESPONSE:
        return MESSAGE_RESPONSE if n == RESPONSE_SIZE else 0
    if word == MESSAGE_COOKIE_REPLY:
        return MESSAGE_COOKIE_REPLY if n == COOKIE_REPLY_SIZE else 0
    return 0


def _check(data: bytes, kind: int, size: int, exact: bool = True) -> None:
    if (len(data) != size) if exact else (len(data) < size):
        raise WireGuardDecodeError(f"type {kind} message has wrong length {len(data)}")
    if _U32.unpack_from(data)[0] != kind:
        raise WireGuardDecodeError(f"not a type {kind} message")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must fit in 32 bits")


@dataclass(frozen=True, slots=True)
class HandshakeInitiation:
    """Type 1: the initiator's ephemeral key, encrypted static key and timestamp."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    SIZE: ClassVar[int] = INITIATION_SIZE

    def __post_init__(self) -> None:
        _check_u32("sender", self.sender)
        _check_len("ephemeral", self.ephemeral, 32)
        _check_len("encrypted_static", self.encrypted_static, 48)
        _check_len("encrypted_timestamp", self.encrypted_timestamp, 28)
        _check_len("mac1", self.mac1, 16)
        _check_len("mac2", self.mac2, 16)

    def encode(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> HandshakeInitiation:
        _check(data, MESSAGE_INITIATION, INITIATION_SIZE)
        _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
        return cls(sender, eph, static, ts, mac1, mac2)


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """Type 2: the responder's ephemeral key and the authenticated empty payload."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    SIZE: ClassVar[int] = RESPONSE_SIZE

    def __post_init__(self) -> None:
        _check_u32("sender", self.sender)
        _check_u32("receiver", self.receiver)
        _check_len("ephemeral", self.ephemeral, 32)
        _check_len("encrypted_nothing", self.encrypted_nothing, 16)
        _check_len("mac1", self.mac1, 16)
        _check_len("mac2", self.mac2, 16)

    def encode(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> HandshakeResponse:
        _check(data, MESSAGE_RESPONSE, RESPONSE_SIZE)
        _, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
        return cls(sender, receiver, eph, empty, mac1, mac2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Type 3: an encrypted cookie sent instead of processing a handshake under load."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    SIZE: ClassVar[int] = COOKIE_REPLY_SIZE

    def __post_init__(self) -> None:
        _check_u32("receiver", self.receiver)
        _check_len("nonce", self.nonce, 24)
        _check_len("encrypted_cookie", self.encrypted_cookie, 32)

    def encode(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )

    @classmethod
    def decode(cls, data: bytes) -> CookieReply:
        _check(data, MESSAGE_COOKIE_REPLY, COOKIE_REPLY_SIZE)
        _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        return cls(receiver, nonce, cookie)


@dataclass(frozen=True, slots=True)
class TransportData:
    """Type 4: an encrypted (padded) IP packet, or an empty keepalive."""

    receiver: int
    counter: int
    encrypted_packet: bytes

    def __post_init__(self) -> None:
        _check_u32("receiver", self.receiver)
        if not 0 <= self.counter < 1 << 64:
            raise ValueError("counter must fit in 64 bits")
        if len(self.encrypted_packet) < 16:
            raise ValueError("encrypted_packet holds at least the 16-byte tag")

    def encode(self) -> bytes:
        header = _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, self.receiver, self.counter)
        return header + self.encrypted_packet

    @classmethod
    def decode(cls, data: bytes) -> TransportData:
        _check(data, MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE, exact=False)
        _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
        return cls(receiver, counter, bytes(data[TRANSPORT_HEADER_SIZE:]))


Message = HandshakeInitiation | HandshakeResponse | CookieReply | TransportData

_DECODERS: dict[int, type[HandshakeInitiation | HandshakeResponse | CookieReply | TransportData]]
_DECODERS = {
    MESSAGE_INITIATION: HandshakeInitiation,
    MESSAGE_RESPONSE: HandshakeResponse,
    MESSAGE_COOKIE_REPLY: CookieReply,
    MESSAGE_TRANSPORT: TransportData,
}


def decode_message(data: bytes) -> Message:
    """Decode any of the four messages; raises :class:`WireGuardDecodeError`."""
    kind = message_type(data)
    if kind == 0:
        raise WireGuardDecodeError("not a WireGuard message")
    return _DECODERS[kind].decode(data)


def sender_index(data: bytes) -> int:
    """The sender index of a handshake initiation or response (bytes 4..8)."""
    if len(data) < 8:
        raise WireGuardDecodeError("too short for a sender index")
    return int(_U32.unpack_from(data, 4)[0])
