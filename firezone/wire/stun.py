"""STUN/TURN message codec (RFC 8489, RFC 8656, RFC 8445 attributes).

Messages are values: :class:`Message` holds the method, class, transaction id and
an ordered list of typed attribute values.  ``Message.decode`` never raises
anything but :class:`StunDecodeError`; unknown comprehension-required attributes
are kept (as :class:`RawAttribute`) and listed by
``Message.unknown_comprehension_required`` so a server can answer 420.

Integrity and fingerprint checks work on the raw datagram because the HMAC and the
CRC cover the exact bytes received (padding included), not a re-encoding.
"""

from __future__ import annotations

import hmac
import socket
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from hashlib import sha1, sha256
from typing import ClassVar, Self, TypeVar

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_LEN",
    "KNOWN_ATTRIBUTE_TYPES",
    "MAGIC_COOKIE",
    "REASON_PHRASES",
    "AdditionalAddressFamily",
    "AddressFamily",
    "Attribute",
    "ChannelNumber",
    "Data",
    "DontFragment",
    "ErrorCode",
    "EvenPort",
    "Fingerprint",
    "IceControlled",
    "IceControlling",
    "Lifetime",
    "MappedAddress",
    "Message",
    "MessageClass",
    "MessageIntegrity",
    "MessageIntegritySha256",
    "Method",
    "Nonce",
    "Priority",
    "RawAttribute",
    "Realm",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "Software",
    "StunDecodeError",
    "UnknownAttributes",
    "UseCandidate",
    "Username",
    "XorMappedAddress",
    "XorPeerAddress",
    "XorRelayedAddress",
    "decode_message_type",
    "encode_message_type",
    "is_stun_message",
    "verify_fingerprint",
    "verify_integrity",
    "verify_integrity_sha256",
]

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
HEADER_LEN = 20

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_HEADER = struct.Struct(">HHI12s")
_ATTR_HEADER = struct.Struct(">HH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# Attribute type codes the codec needs internally.
_T_MESSAGE_INTEGRITY = 0x0008
_T_MESSAGE_INTEGRITY_SHA256 = 0x001C
_T_FINGERPRINT = 0x8028


class StunDecodeError(ValueError):
    """The bytes are not a well-formed STUN message."""


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


_CLASSES = tuple(MessageClass)


class AddressFamily(IntEnum):
    """STUN address family codes (also used by the relay's allocation commands)."""

    V4 = 0x01
    V6 = 0x02


def encode_message_type(method: int, message_class: int) -> int:
    """Interleave the 12 method bits and 2 class bits (RFC 8489 5, figure 3)."""
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def decode_message_type(message_type: int) -> tuple[int, MessageClass]:
    method = ((message_type & 0x3E00) >> 2) | ((message_type & 0x00E0) >> 1) | (
        message_type & 0x000F
    )
    message_class = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    return method, _CLASSES[message_class]


def is_stun_message(data: bytes) -> bool:
    """Cheap demultiplexing check: leading zero bits and the magic cookie."""
    return len(data) >= HEADER_LEN and data[0] < 4 and data[4:8] == _COOKIE_BYTES


# --------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------

A = TypeVar("A", bound="Attribute")


class Attribute:
    """Base of all attribute values; ``TYPE`` is the 16-bit attribute type."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def type_code(self) -> int:
        return self.TYPE

    def encode_value(self, transaction_id: bytes) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        raise NotImplementedError


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise StunDecodeError(what)


def _pack_ip(ip: str) -> tuple[int, bytes]:
    try:
        if ":" in ip:
            return AddressFamily.V6, socket.inet_pton(socket.AF_INET6, ip)
        return AddressFamily.V4, socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        raise ValueError(f"not an IP address: {ip!r}") from None


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


@dataclass(frozen=True, slots=True)
class _Address(Attribute):
    """A transport address; ``ip`` is in ``inet_ntop`` form, as socket APIs report it."""

    ip: str
    port: int

    XOR: ClassVar[bool] = True

    @property
    def family(self) -> AddressFamily:
        return AddressFamily.V6 if ":" in self.ip else AddressFamily.V4

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def encode_value(self, transaction_id: bytes) -> bytes:
        _check_port(self.port)
        family, packed = _pack_ip(self.ip)
        port = self.port
        if self.XOR:
            port ^= MAGIC_COOKIE >> 16
            if family == AddressFamily.V4:
                packed = (int.from_bytes(packed, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
            else:
                mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
                packed = (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")
        return bytes((0, family)) + _U16.pack(port) + packed

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) >= 4, "address attribute too short")
        family = value[1]
        port = (value[2] << 8) | value[3]
        raw = value[4:]
        if family == AddressFamily.V4:
            _need(len(raw) == 4, "IPv4 address attribute must be 8 bytes")
            if cls.XOR:
                port ^= MAGIC_COOKIE >> 16
                raw = (int.from_bytes(raw, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
            ip = socket.inet_ntop(socket.AF_INET, raw)
        elif family == AddressFamily.V6:
            _need(len(raw) == 16, "IPv6 address attribute must be 20 bytes")
            if cls.XOR:
                port ^= MAGIC_COOKIE >> 16
                mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
                raw = (int.from_bytes(raw, "big") ^ mask).to_bytes(16, "big")
            ip = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            raise StunDecodeError(f"unknown address family {family}")
        return cls(ip, port)


@dataclass(frozen=True, slots=True)
class MappedAddress(_Address):
    TYPE: ClassVar[int] = 0x0001
    XOR: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class XorMappedAddress(_Address):
    TYPE: ClassVar[int] = 0x0020


@dataclass(frozen=True, slots=True)
class XorPeerAddress(_Address):
    TYPE: ClassVar[int] = 0x0012


@dataclass(frozen=True, slots=True)
class XorRelayedAddress(_Address):
    TYPE: ClassVar[int] = 0x0016


@dataclass(frozen=True, slots=True)
class _Text(Attribute):
    """A UTF-8 string attribute with a byte-length limit."""

    value: str

    MAX_BYTES: ClassVar[int] = 763

    def encode_value(self, transaction_id: bytes) -> bytes:
        data = self.value.encode("utf-8")
        if len(data) > self.MAX_BYTES:
            raise ValueError(f"attribute 0x{self.TYPE:04x} longer than {self.MAX_BYTES} bytes")
        return data

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) <= cls.MAX_BYTES, "text attribute too long")
        try:
            return cls(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise StunDecodeError("text attribute is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Username(_Text):
    TYPE: ClassVar[int] = 0x0006
    MAX_BYTES: ClassVar[int] = 512


@dataclass(frozen=True, slots=True)
class Realm(_Text):
    TYPE: ClassVar[int] = 0x0014


@dataclass(frozen=True, slots=True)
class Nonce(_Text):
    TYPE: ClassVar[int] = 0x0015


@dataclass(frozen=True, slots=True)
class Software(_Text):
    TYPE: ClassVar[int] = 0x8022


@dataclass(frozen=True, slots=True)
class MessageIntegrity(Attribute):
    """HMAC-SHA1 over the message up to this attribute (RFC 8489 14.5)."""

    TYPE: ClassVar[int] = _T_MESSAGE_INTEGRITY
    hmac: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.hmac) != 20:
            raise ValueError("MESSAGE-INTEGRITY is 20 bytes")
        return self.hmac

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 20, "MESSAGE-INTEGRITY must be 20 bytes")
        return cls(bytes(value))


@dataclass(frozen=True, slots=True)
class MessageIntegritySha256(Attribute):
    """HMAC-SHA256, possibly truncated to 16..32 bytes (RFC 8489 14.6)."""

    TYPE: ClassVar[int] = _T_MESSAGE_INTEGRITY_SHA256
    hmac: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not (16 <= len(self.hmac) <= 32 and len(self.hmac) % 4 == 0):
            raise ValueError("MESSAGE-INTEGRITY-SHA256 is 16..32 bytes, a multiple of 4")
        return self.hmac

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(16 <= len(value) <= 32 and len(value) % 4 == 0, "bad MESSAGE-INTEGRITY-SHA256")
        return cls(bytes(value))


@dataclass(frozen=True, slots=True)
class Fingerprint(Attribute):
    """CRC-32 of the message xor 0x5354554e (RFC 8489 14.7)."""

    TYPE: ClassVar[int] = _T_FINGERPRINT
    crc: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.crc)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 4, "FINGERPRINT must be 4 bytes")
        return cls(_U32.unpack(value)[0])


REASON_PHRASES: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


@dataclass(frozen=True, slots=True)
class ErrorCode(Attribute):
    """ERROR-CODE: ``code`` 300..699 and a UTF-8 reason phrase (RFC 8489 14.8)."""

    TYPE: ClassVar[int] = 0x0009
    code: int
    reason: str = ""

    @classmethod
    def of(cls, code: int) -> ErrorCode:
        """The error with its standard reason phrase."""
        return cls(code, REASON_PHRASES.get(code, ""))

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 300 <= self.code <= 699:
            raise ValueError(f"error code out of range: {self.code}")
        reason = self.reason.encode("utf-8")
        if len(reason) > 763:
            raise ValueError("reason phrase too long")
        return bytes((0, 0, self.code // 100, self.code % 100)) + reason

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(4 <= len(value) <= 4 + 763, "bad ERROR-CODE length")
        klass = value[2] & 0x07
        number = value[3]
        _need(3 <= klass <= 6 and number < 100, "ERROR-CODE out of range")
        try:
            reason = value[4:].decode("utf-8")
        except UnicodeDecodeError:
            raise StunDecodeError("ERROR-CODE reason is not UTF-8") from None
        return cls(klass * 100 + number, reason)


@dataclass(frozen=True, slots=True)
class UnknownAttributes(Attribute):
    TYPE: ClassVar[int] = 0x000A
    types: tuple[int, ...]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(_U16.pack(t) for t in self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) % 2 == 0, "UNKNOWN-ATTRIBUTES length must be even")
        return cls(tuple(_U16.unpack_from(value, i)[0] for i in range(0, len(value), 2)))


@dataclass(frozen=True, slots=True)
class _U32Value(Attribute):
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 4, f"attribute 0x{cls.TYPE:04x} must be 4 bytes")
        return cls(_U32.unpack(value)[0])


@dataclass(frozen=True, slots=True)
class Lifetime(_U32Value):
    """LIFETIME in seconds (RFC 8656 18.2)."""

    TYPE: ClassVar[int] = 0x000D


@dataclass(frozen=True, slots=True)
class Priority(_U32Value):
    TYPE: ClassVar[int] = 0x0024


@dataclass(frozen=True, slots=True)
class ChannelNumber(Attribute):
    """CHANNEL-NUMBER; range checks are the server's business (it answers 400)."""

    TYPE: ClassVar[int] = 0x000C
    number: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U16.pack(self.number) + b"\x00\x00"

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 4, "CHANNEL-NUMBER must be 4 bytes")
        return cls(_U16.unpack_from(value)[0])


@dataclass(frozen=True, slots=True)
class Data(Attribute):
    TYPE: ClassVar[int] = 0x0013
    data: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.data

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(bytes(value))


@dataclass(frozen=True, slots=True)
class _FamilyValue(Attribute):
    """REQUESTED/ADDITIONAL-ADDRESS-FAMILY; ``family`` kept as an int so 440 is possible."""

    family: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((self.family, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 4, f"attribute 0x{cls.TYPE:04x} must be 4 bytes")
        return cls(value[0])


@dataclass(frozen=True, slots=True)
class RequestedAddressFamily(_FamilyValue):
    TYPE: ClassVar[int] = 0x0017


@dataclass(frozen=True, slots=True)
class AdditionalAddressFamily(_FamilyValue):
    TYPE: ClassVar[int] = 0x8000


@dataclass(frozen=True, slots=True)
class RequestedTransport(Attribute):
    TYPE: ClassVar[int] = 0x0019
    protocol: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((self.protocol, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 4, "REQUESTED-TRANSPORT must be 4 bytes")
        return cls(value[0])


@dataclass(frozen=True, slots=True)
class EvenPort(Attribute):
    TYPE: ClassVar[int] = 0x0018
    reserve: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"\x80" if self.reserve else b"\x00"

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 1, "EVEN-PORT must be 1 byte")
        return cls(bool(value[0] & 0x80))


@dataclass(frozen=True, slots=True)
class ReservationToken(Attribute):
    TYPE: ClassVar[int] = 0x0022
    token: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.token) != 8:
            raise ValueError("RESERVATION-TOKEN is 8 bytes")
        return self.token

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 8, "RESERVATION-TOKEN must be 8 bytes")
        return cls(bytes(value))


@dataclass(frozen=True, slots=True)
class _Flag(Attribute):
    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 0, f"attribute 0x{cls.TYPE:04x} must be empty")
        return cls()


@dataclass(frozen=True, slots=True)
class DontFragment(_Flag):
    TYPE: ClassVar[int] = 0x001A


@dataclass(frozen=True, slots=True)
class UseCandidate(_Flag):
    TYPE: ClassVar[int] = 0x0025


@dataclass(frozen=True, slots=True)
class _TieBreaker(Attribute):
    tie_breaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U64.pack(self.tie_breaker)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _need(len(value) == 8, f"attribute 0x{cls.TYPE:04x} must be 8 bytes")
        return cls(_U64.unpack(value)[0])


@dataclass(frozen=True, slots=True)
class IceControlled(_TieBreaker):
    TYPE: ClassVar[int] = 0x8029


@dataclass(frozen=True, slots=True)
class IceControlling(_TieBreaker):
    TYPE: ClassVar[int] = 0x802A


@dataclass(frozen=True, slots=True)
class RawAttribute(Attribute):
    """An attribute this codec does not interpret, kept verbatim."""

    attr_type: int
    value: bytes

    def type_code(self) -> int:
        return self.attr_type

    @property
    def comprehension_required(self) -> bool:
        return self.attr_type < 0x8000

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


_KNOWN: tuple[type[Attribute], ...] = (
    MappedAddress,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    Username,
    Realm,
    Nonce,
    Software,
    MessageIntegrity,
    MessageIntegritySha256,
    Fingerprint,
    ErrorCode,
    UnknownAttributes,
    Lifetime,
    Priority,
    ChannelNumber,
    Data,
    RequestedAddressFamily,
    AdditionalAddressFamily,
    RequestedTransport,
    EvenPort,
    ReservationToken,
    DontFragment,
    UseCandidate,
    IceControlled,
    IceControlling,
)
_DECODERS: dict[int, type[Attribute]] = {kind.TYPE: kind for kind in _KNOWN}

#: Attribute types this codec decodes into typed values (all others become RawAttribute).
KNOWN_ATTRIBUTE_TYPES: frozenset[int] = frozenset(_DECODERS)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One STUN message; ``attributes`` keeps wire order.

    After decoding, attributes that follow MESSAGE-INTEGRITY (other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are dropped, as RFC 8489 14.5
    requires receivers to ignore them.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[Attribute] = field(default_factory=list)

    def get(self, kind: type[A]) -> A | None:
        """The first attribute of type ``kind``, or None."""
        for attribute in self.attributes:
            if type(attribute) is kind:
                return attribute  # type: ignore[return-value]
        return None

    def get_all(self, kind: type[A]) -> list[A]:
        return [a for a in self.attributes if type(a) is kind]  # type: ignore[misc]

    @property
    def unknown_comprehension_required(self) -> list[int]:
        """Types of unknown attributes below 0x8000 (the server must answer 420)."""
        return [
            a.attr_type
            for a in self.attributes
            if type(a) is RawAttribute and a.attr_type < 0x8000
        ]

    def encode(
        self,
        *,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Serialise, appending MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT when asked.

        The length field used for each HMAC/CRC covers the attribute being
        computed, as RFC 8489 14.5-14.7 prescribe.
        """
        tid = self.transaction_id
        if len(tid) != 12:
            raise ValueError("transaction id must be 12 bytes")
        if not 0 <= self.method <= 0xFFF:
            raise ValueError("method must fit in 12 bits")
        message_type = encode_message_type(self.method, self.message_class)
        parts: list[bytes] = []
        pack_header = _ATTR_HEADER.pack
        for attribute in self.attributes:
            value = attribute.encode_value(tid)
            n = len(value)
            if n > 0xFFFF:
                raise ValueError("attribute value too long")
            parts.append(pack_header(attribute.type_code(), n))
            parts.append(value)
            if n & 3:
                parts.append(b"\x00" * (4 - (n & 3)))
        body = b"".join(parts)
        if integrity_key is not None:
            head = _HEADER.pack(message_type, len(body) + 24, MAGIC_COOKIE, tid)
            mac = hmac.new(integrity_key, head + body, sha1).digest()
            body += pack_header(_T_MESSAGE_INTEGRITY, 20) + mac
        if integrity_sha256_key is not None:
            head = _HEADER.pack(message_type, len(body) + 36, MAGIC_COOKIE, tid)
            mac = hmac.new(integrity_sha256_key, head + body, sha256).digest()
            body += pack_header(_T_MESSAGE_INTEGRITY_SHA256, 32) + mac
        if fingerprint:
            head = _HEADER.pack(message_type, len(body) + 8, MAGIC_COOKIE, tid)
            crc = (zlib.crc32(body, zlib.crc32(head)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            body += pack_header(_T_FINGERPRINT, 4) + _U32.pack(crc)
        if len(body) > 0xFFFF:
            raise ValueError("message too long")
        return _HEADER.pack(message_type, len(body), MAGIC_COOKIE, tid) + body

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Message:
        """Parse one datagram; the header length must match the datagram exactly."""
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if n < HEADER_LEN:
            raise StunDecodeError("shorter than a STUN header")
        message_type, length, cookie, tid = _HEADER.unpack_from(data)
        if message_type & 0xC000:
            raise StunDecodeError("leading bits of a STUN message must be zero")
        if cookie != MAGIC_COOKIE:
            raise StunDecodeError("bad magic cookie")
        if length & 3:
            raise StunDecodeError("message length is not a multiple of 4")
        if length != n - HEADER_LEN:
            raise StunDecodeError("message length does not match the datagram")
        method, message_class = decode_message_type(message_type)

        attributes: list[Attribute] = []
        offset = HEADER_LEN
        # 0: normal; 1: after MI; 2: after MI-SHA256; 3: after FINGERPRINT.
        stage = 0
        unpack_header = _ATTR_HEADER.unpack_from
        decoders = _DECODERS
        while offset < n:
            if offset + 4 > n:
                raise StunDecodeError("truncated attribute header")
            attr_type, attr_len = unpack_header(data, offset)
            start = offset + 4
            end = start + attr_len
            offset = start + ((attr_len + 3) & ~3)
            if offset > n:
                raise StunDecodeError("attribute overruns the message")
            if stage:
                if stage == 3:
                    continue
                if attr_type == _T_FINGERPRINT:
                    pass
                elif attr_type == _T_MESSAGE_INTEGRITY_SHA256 and stage == 1:
                    pass
                else:
                    continue
            kind = decoders.get(attr_type)
            value = data[start:end]
            if kind is None:
                attributes.append(RawAttribute(attr_type, value))
                continue
            try:
                attributes.append(kind.decode_value(value, tid))
            except StunDecodeError:
                raise
            except (ValueError, IndexError, struct.error) as e:  # defensive: one error type out
                raise StunDecodeError(f"bad attribute 0x{attr_type:04x}: {e}") from None
            if attr_type == _T_MESSAGE_INTEGRITY:
                stage = 1
            elif attr_type == _T_MESSAGE_INTEGRITY_SHA256:
                stage = 2
            elif attr_type == _T_FINGERPRINT:
                stage = 3
        return cls(method, message_class, tid, attributes)


# --------------------------------------------------------------------------------------
# Raw-bytes verification
# --------------------------------------------------------------------------------------


def _find_attribute(raw: bytes, wanted: int) -> tuple[int, int] | None:
    """Offset and value length of the first ``wanted`` attribute in a raw message."""
    n = len(raw)
    if n < HEADER_LEN or raw[4:8] != _COOKIE_BYTES:
        return None
    end = min(n, HEADER_LEN + ((raw[2] << 8) | raw[3]))
    offset = HEADER_LEN
    while offset + 4 <= end:
        attr_type, attr_len = _ATTR_HEADER.unpack_from(raw, offset)
        if attr_type == wanted:
            if offset + 4 + attr_len > end:
                return None
            return offset, attr_len
        offset += 4 + ((attr_len + 3) & ~3)
    return None


def _with_length(raw: bytes, offset: int, attr_total: int) -> bytes:
    """The message prefix before ``offset`` with its length field covering that attribute."""
    return raw[:2] + _U16.pack(offset - HEADER_LEN + attr_total) + raw[4:offset]


def verify_integrity(raw: bytes | bytearray | memoryview, key: bytes) -> bool:
    """Check the first MESSAGE-INTEGRITY (HMAC-SHA1) of ``raw`` against ``key``.

    Works whatever follows the attribute (e.g. FINGERPRINT), because the
    length field is rewritten to end at MESSAGE-INTEGRITY (RFC 8489 14.5).
    """
    raw = bytes(raw)
    found = _find_attribute(raw, _T_MESSAGE_INTEGRITY)
    if found is None or found[1] != 20:
        return False
    offset = found[0]
    expected = hmac.new(key, _with_length(raw, offset, 24), sha1).digest()
    return hmac.compare_digest(expected, raw[offset + 4 : offset + 24])


def verify_integrity_sha256(raw: bytes | bytearray | memoryview, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 (possibly truncated) of ``raw`` against ``key``."""
    raw = bytes(raw)
    found = _find_attribute(raw, _T_MESSAGE_INTEGRITY_SHA256)
    if found is None:
        return False
    offset, attr_len = found
    if not (16 <= attr_len <= 32 and attr_len % 4 == 0):
        return False
    expected = hmac.new(key, _with_length(raw, offset, 4 + attr_len), sha256).digest()
    return hmac.compare_digest(expected[:attr_len], raw[offset + 4 : offset + 4 + attr_len])


def verify_fingerprint(raw: bytes | bytearray | memoryview) -> bool:
    """Check the FINGERPRINT attribute (CRC-32 xor 0x5354554e) of ``raw``."""
    raw = bytes(raw)
    found = _find_attribute(raw, _T_FINGERPRINT)
    if found is None or found[1] != 4:
        return False
    offset = found[0]
    crc = (zlib.crc32(_with_length(raw, offset, 8)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return crc == _U32.unpack_from(raw, offset + 4)[0]
