"""Tests for firezone.wire.stun: RFC 5769 vectors, round-trips, robustness."""

from __future__ import annotations

import hashlib
import socket
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wire.stun import (
    KNOWN_ATTRIBUTE_TYPES,
    MAGIC_COOKIE,
    AdditionalAddressFamily,
    AddressFamily,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCode,
    EvenPort,
    Fingerprint,
    IceControlled,
    IceControlling,
    Lifetime,
    MappedAddress,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    Priority,
    RawAttribute,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    StunDecodeError,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode_message_type,
    encode_message_type,
    is_stun_message,
    verify_fingerprint,
    verify_integrity,
    verify_integrity_sha256,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 2.1 Sample Request (padding of USERNAME is 0x20 in the RFC, on purpose).
RFC5769_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
""")
RFC5769_SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 2.2 Sample IPv4 Response.
RFC5769_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
""")

# RFC 5769 2.3 Sample IPv6 Response.
RFC5769_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
""")

# RFC 5769 2.4 Sample Request with Long-Term Authentication.
RFC5769_LONG_TERM_REQUEST = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
""")
RFC5769_TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
MATRIX_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
# The RFC's password is "The<U+00AD>M<U+00AA>tr<U+2168>"; SASLprep maps it to "TheMatrIX".
# We use the prepared form so the vector is reproducible without a SASLprep implementation.
MATRIX_PASSWORD_SASLPREPPED = "TheMatrIX"


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1 :]


class Rfc5769Tests(SynchronousTestCase):
    def test_sample_request_decodes(self) -> None:
        """RFC 5769 2.1: the sample request decodes to its documented attributes."""
        msg = Message.decode(RFC5769_REQUEST)
        self.assertEqual(msg.method, Method.BINDING)
        self.assertEqual(msg.message_class, MessageClass.REQUEST)
        self.assertEqual(msg.transaction_id, RFC5769_TID)
        self.assertEqual(
            msg.attributes[:4],
            [
                Software("STUN test client"),
                Priority(0x6E0001FF),
                IceControlled(0x932FF9B151263B36),
                Username("evtj:h6vY"),
            ],
        )
        self.assertEqual(msg.get(Fingerprint), Fingerprint(0xE57A3BCF))
        self.assertEqual(msg.unknown_comprehension_required, [])

    def test_sample_request_integrity_and_fingerprint(self) -> None:
        """RFC 5769 2.1: MESSAGE-INTEGRITY (short-term password as key) and FINGERPRINT verify."""
        self.assertTrue(verify_integrity(RFC5769_REQUEST, RFC5769_SHORT_TERM_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_REQUEST))
        self.assertFalse(verify_integrity(RFC5769_REQUEST, b"wrong"))

    def test_tampering_breaks_verification(self) -> None:
        """A single flipped bit before MI breaks both the HMAC and the CRC."""
        for index in (3 + 20, 30, 70):  # SOFTWARE, PRIORITY, USERNAME bytes
            tampered = flip(RFC5769_REQUEST, index)
            self.assertFalse(verify_integrity(tampered, RFC5769_SHORT_TERM_PASSWORD))
            self.assertFalse(verify_fingerprint(tampered))
        # A flip in the FINGERPRINT value only breaks the fingerprint.
        tampered = flip(RFC5769_REQUEST, len(RFC5769_REQUEST) - 1)
        self.assertTrue(verify_integrity(tampered, RFC5769_SHORT_TERM_PASSWORD))
        self.assertFalse(verify_fingerprint(tampered))

    def test_ipv4_response(self) -> None:
        """RFC 5769 2.2: XOR-MAPPED-ADDRESS is 192.0.2.1:32853 and both checks verify."""
        msg = Message.decode(RFC5769_IPV4_RESPONSE)
        self.assertEqual(msg.message_class, MessageClass.SUCCESS)
        self.assertEqual(msg.get(Software), Software("test vector"))
        self.assertEqual(msg.get(XorMappedAddress), XorMappedAddress("192.0.2.1", 32853))
        self.assertTrue(verify_integrity(RFC5769_IPV4_RESPONSE, RFC5769_SHORT_TERM_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_IPV4_RESPONSE))
        encoded = XorMappedAddress("192.0.2.1", 32853).encode_value(RFC5769_TID)
        self.assertEqual(encoded, unhex("00 01 a1 47 e1 12 a6 43"))

    def test_ipv6_response(self) -> None:
        """RFC 5769 2.3: XOR-MAPPED-ADDRESS is [2001:db8:1234:5678:11:2233:4455:6677]:32853."""
        msg = Message.decode(RFC5769_IPV6_RESPONSE)
        expected = XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853)
        self.assertEqual(msg.get(XorMappedAddress), expected)
        self.assertEqual(expected.family, AddressFamily.V6)
        self.assertTrue(verify_integrity(RFC5769_IPV6_RESPONSE, RFC5769_SHORT_TERM_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_IPV6_RESPONSE))
        self.assertEqual(
            expected.encode_value(RFC5769_TID),
            unhex("00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9"),
        )

    def test_responses_reencode_with_zero_padding(self) -> None:
        """Re-encoding the 2.2/2.3 responses differs from the RFC bytes only in padding/MI/FP."""
        for raw in (RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE):
            msg = Message.decode(raw)
            body = [a for a in msg.attributes if not isinstance(a, MessageIntegrity | Fingerprint)]
            ours = Message(msg.method, msg.message_class, msg.transaction_id, body).encode(
                integrity_key=RFC5769_SHORT_TERM_PASSWORD, fingerprint=True
            )
            self.assertEqual(len(ours), len(raw))
            # Only SOFTWARE's single padding byte (0x20 in the RFC) and the MI/FP differ.
            self.assertEqual(ours[:35], raw[:35])
            self.assertEqual(ours[35], 0)
            self.assertEqual(ours[36:-32], raw[36:-32])
            self.assertTrue(verify_integrity(ours, RFC5769_SHORT_TERM_PASSWORD))
            self.assertTrue(verify_fingerprint(ours))
            self.assertEqual(Message.decode(ours).attributes[:2], msg.attributes[:2])

    def test_long_term_request(self) -> None:
        """RFC 5769 2.4: long-term key MD5(user:realm:SASLprep(pass)) verifies the request."""
        msg = Message.decode(RFC5769_LONG_TERM_REQUEST)
        self.assertEqual(msg.get(Username), Username(MATRIX_USERNAME))
        self.assertEqual(msg.get(Nonce), Nonce("f//499k954d6OL34oL9FSTvy64sA"))
        self.assertEqual(msg.get(Realm), Realm("example.org"))
        key = hashlib.md5(
            f"{MATRIX_USERNAME}:example.org:{MATRIX_PASSWORD_SASLPREPPED}".encode()
        ).digest()
        self.assertTrue(verify_integrity(RFC5769_LONG_TERM_REQUEST, key))
        self.assertFalse(verify_fingerprint(RFC5769_LONG_TERM_REQUEST))  # it has none

    def test_long_term_request_encodes_byte_exact(self) -> None:
        """RFC 5769 2.4 uses zero padding, so our encoder must reproduce it byte for byte."""
        key = hashlib.md5(
            f"{MATRIX_USERNAME}:example.org:{MATRIX_PASSWORD_SASLPREPPED}".encode()
        ).digest()
        msg = Message(
            Method.BINDING,
            MessageClass.REQUEST,
            unhex("78 ad 34 33 c6 ad 72 c0 29 da 41 2e"),
            [
                Username(MATRIX_USERNAME),
                Nonce("f//499k954d6OL34oL9FSTvy64sA"),
                Realm("example.org"),
            ],
        )
        self.assertEqual(msg.encode(integrity_key=key), RFC5769_LONG_TERM_REQUEST)


class MessageTypeTests(SynchronousTestCase):
    def test_known_types(self) -> None:
        """RFC 8489 5: Binding request 0x0001, success 0x0101, error 0x0111, indication 0x0011."""
        self.assertEqual(encode_message_type(Method.BINDING, MessageClass.REQUEST), 0x0001)
        self.assertEqual(encode_message_type(Method.BINDING, MessageClass.SUCCESS), 0x0101)
        self.assertEqual(encode_message_type(Method.BINDING, MessageClass.ERROR), 0x0111)
        self.assertEqual(encode_message_type(Method.BINDING, MessageClass.INDICATION), 0x0011)
        self.assertEqual(encode_message_type(Method.ALLOCATE, MessageClass.REQUEST), 0x0003)
        self.assertEqual(encode_message_type(Method.SEND, MessageClass.INDICATION), 0x0016)
        self.assertEqual(encode_message_type(Method.DATA, MessageClass.INDICATION), 0x0017)
        self.assertEqual(encode_message_type(Method.CHANNEL_BIND, MessageClass.ERROR), 0x0119)

    @settings(max_examples=200)
    @given(st.integers(0, 0xFFF), st.sampled_from(MessageClass))
    def test_round_trip(self, method: int, klass: MessageClass) -> None:
        """Every 12-bit method and class survive the bit interleaving."""
        message_type = encode_message_type(method, klass)
        self.assertLess(message_type, 0x4000)
        self.assertEqual(decode_message_type(message_type), (method, klass))


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------

ipv4 = st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ips = ipv4 | ipv6
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def texts(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(max_size=max_bytes // 4)


raw_types = st.integers(0, 0xFFFF).filter(lambda t: t not in KNOWN_ATTRIBUTE_TYPES)

body_attributes: st.SearchStrategy[Attribute] = st.one_of(
    st.builds(MappedAddress, ips, ports),
    st.builds(XorMappedAddress, ips, ports),
    st.builds(XorPeerAddress, ips, ports),
    st.builds(XorRelayedAddress, ips, ports),
    st.builds(Username, texts(512)),
    st.builds(Realm, texts(763)),
    st.builds(Nonce, texts(763)),
    st.builds(Software, texts(763)),
    st.builds(ErrorCode, st.integers(300, 699), texts(763)),
    st.builds(UnknownAttributes, st.lists(st.integers(0, 0xFFFF), max_size=8).map(tuple)),
    st.builds(Lifetime, u32),
    st.builds(Priority, u32),
    st.builds(ChannelNumber, st.integers(0, 0xFFFF)),
    st.builds(Data, st.binary(max_size=200)),
    st.builds(RequestedAddressFamily, st.integers(0, 255)),
    st.builds(AdditionalAddressFamily, st.integers(0, 255)),
    st.builds(RequestedTransport, st.integers(0, 255)),
    st.builds(EvenPort, st.booleans()),
    st.builds(ReservationToken, st.binary(min_size=8, max_size=8)),
    st.just(DontFragment()),
    st.just(UseCandidate()),
    st.builds(IceControlled, u64),
    st.builds(IceControlling, u64),
    st.builds(RawAttribute, raw_types, st.binary(max_size=40)),
)

methods = st.sampled_from(Method) | st.integers(0, 0xFFF)
tids = st.binary(min_size=12, max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    attributes = draw(st.lists(body_attributes, max_size=8))
    if draw(st.booleans()):
        attributes.append(MessageIntegrity(draw(st.binary(min_size=20, max_size=20))))
    if draw(st.booleans()):
        size = draw(st.sampled_from([16, 20, 24, 28, 32]))
        attributes.append(MessageIntegritySha256(draw(st.binary(min_size=size, max_size=size))))
    if draw(st.booleans()):
        attributes.append(Fingerprint(draw(u32)))
    return Message(draw(methods), draw(st.sampled_from(MessageClass)), draw(tids), attributes)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(messages())
    def test_message_round_trip(self, msg: Message) -> None:
        """decode(encode(m)) == m for every method, class and attribute kind."""
        encoded = msg.encode()
        self.assertEqual(len(encoded) % 4, 0)
        self.assertEqual(Message.decode(encoded), msg)

    @settings(max_examples=300)
    @given(body_attributes, tids)
    def test_each_attribute_round_trips(self, attribute: Attribute, tid: bytes) -> None:
        """Every attribute type survives alone in each class of message."""
        for klass in MessageClass:
            msg = Message(Method.ALLOCATE, klass, tid, [attribute])
            self.assertEqual(Message.decode(msg.encode()).attributes, [attribute])

    @settings(max_examples=200)
    @given(messages(), st.binary(min_size=1, max_size=64))
    def test_integrity_and_fingerprint(self, msg: Message, key: bytes) -> None:
        """Encoded MI/MI-SHA256/FINGERPRINT verify, also with later attributes; wrong keys fail."""
        msg.attributes = [
            a for a in msg.attributes
            if not isinstance(a, MessageIntegrity | MessageIntegritySha256 | Fingerprint)
        ]
        raw = msg.encode(integrity_key=key, integrity_sha256_key=key, fingerprint=True)
        self.assertTrue(verify_integrity(raw, key))
        self.assertTrue(verify_integrity_sha256(raw, key))
        self.assertTrue(verify_fingerprint(raw))
        self.assertFalse(verify_integrity(raw, key + b"x"))
        self.assertFalse(verify_integrity_sha256(raw, key + b"x"))
        decoded = Message.decode(raw)
        self.assertEqual(decoded.attributes[: len(msg.attributes)], msg.attributes)
        self.assertIsInstance(decoded.attributes[-1], Fingerprint)

    def test_integrity_only(self) -> None:
        """Without FINGERPRINT the MI is last, and verify_fingerprint reports its absence."""
        msg = Message(Method.REFRESH, MessageClass.REQUEST, b"\x01" * 12, [Lifetime(0)])
        raw = msg.encode(integrity_key=b"k")
        self.assertEqual(struct.unpack_from(">H", raw, 2)[0], len(raw) - 20)
        self.assertTrue(verify_integrity(raw, b"k"))
        self.assertFalse(verify_fingerprint(raw))
        self.assertFalse(verify_integrity(Message(1, MessageClass.REQUEST, b"\0" * 12).encode(),
                                          b"k"))


class DecodeTests(SynchronousTestCase):
    TID = b"\x42" * 12

    def header(self, message_type: int, length: int, cookie: int = MAGIC_COOKIE) -> bytes:
        return struct.pack(">HHI12s", message_type, length, cookie, self.TID)

    def test_rejects_malformed_headers(self) -> None:
        """Short data, bad cookie, leading bits, unaligned or mismatching length all fail."""
        bad = [
            b"",
            b"\x00\x01\x00",
            self.header(0x0001, 0, cookie=0x2112A443),
            self.header(0xC001, 0),
            self.header(0x0001, 4) + b"\x00\x00",
            self.header(0x0001, 2) + b"\x00\x00",
            self.header(0x0001, 0) + b"\x00\x00\x00\x00",
            self.header(0x0001, 8) + b"\x00\x06\x00\x08" + b"ab\x00\x00",  # overrun
            self.header(0x0001, 4) + b"\x00\x0d\x00\x03" + b"abc\x00",  # LIFETIME of 3 bytes
            self.header(0x0001, 8) + b"\x00\x06\x00\x02\xff\xfe\x00\x00",  # USERNAME not UTF-8
            self.header(0x0001, 12) + b"\x00\x20\x00\x08\x00\x03\x00\x00abcd",  # family 3
            self.header(0x0001, 12) + b"\x00\x20\x00\x08\x00\x02\x00\x00abcd",  # short v6
            self.header(0x0001, 8) + b"\x00\x09\x00\x04\x00\x00\x02\x00",  # class 2 error
        ]
        for data in bad:
            with self.assertRaises(StunDecodeError, msg=data.hex()):
                Message.decode(data)

    def test_nonzero_padding_accepted(self) -> None:
        """RFC 8489 14: padding bits MUST be ignored by the receiver."""
        data = self.header(0x0001, 8) + b"\x00\x06\x00\x01a\xff\xff\xff"
        self.assertEqual(Message.decode(data).attributes, [Username("a")])

    def test_unknown_attributes_reported(self) -> None:
        """Unknown types < 0x8000 are comprehension-required and reported; others are not."""
        msg = Message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            self.TID,
            [RawAttribute(0x7777, b"x"), RawAttribute(0x8777, b"y"), Lifetime(5)],
        )
        decoded = Message.decode(msg.encode())
        self.assertEqual(decoded.unknown_comprehension_required, [0x7777])
        self.assertEqual(decoded.get(Lifetime), Lifetime(5))

    def test_attributes_after_integrity_are_ignored(self) -> None:
        """RFC 8489 14.5: agents MUST ignore all other attributes that follow MESSAGE-INTEGRITY."""
        raw = Message(Method.ALLOCATE, MessageClass.REQUEST, self.TID, [Lifetime(1)]).encode(
            integrity_key=b"k"
        )
        extra = b"\x00\x0d\x00\x04\x00\x00\x0e\x10" + b"\x77\x77\x00\x00"
        raw = raw[:2] + struct.pack(">H", len(raw) - 20 + len(extra)) + raw[4:] + extra
        decoded = Message.decode(raw)
        self.assertEqual(decoded.get_all(Lifetime), [Lifetime(1)])
        self.assertEqual(decoded.unknown_comprehension_required, [])
        self.assertTrue(verify_integrity(raw, b"k"))

    def test_accepts_bytearray_and_memoryview(self) -> None:
        """Decoding works on any bytes-like buffer."""
        raw = Message(Method.BINDING, MessageClass.REQUEST, self.TID, [Lifetime(3)]).encode()
        self.assertEqual(Message.decode(bytearray(raw)), Message.decode(memoryview(raw)))
        self.assertTrue(is_stun_message(raw))
        self.assertFalse(is_stun_message(b"\x40" + raw[1:]))

    def test_error_code_helper(self) -> None:
        """ErrorCode.of fills in the standard reason phrase and encodes class/number."""
        self.assertEqual(ErrorCode.of(438), ErrorCode(438, "Stale Nonce"))
        self.assertEqual(ErrorCode.of(401).encode_value(self.TID)[:4], b"\x00\x00\x04\x01")

    def test_encode_rejects_invalid_values(self) -> None:
        """Encoding refuses values that cannot be represented (ValueError, not struct.error)."""
        for attribute in [
            XorPeerAddress("not-an-ip", 1),
            XorPeerAddress("1.2.3.4", 70000),
            ErrorCode(200, "x"),
            MessageIntegrity(b"short"),
            Username("x" * 513),
        ]:
            with self.assertRaises(ValueError):
                Message(1, MessageClass.REQUEST, self.TID, [attribute]).encode()
        with self.assertRaises(ValueError):
            Message(1, MessageClass.REQUEST, b"short", []).encode()

    @settings(max_examples=500)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes never raise anything but StunDecodeError; verifiers never raise."""
        try:
            Message.decode(data)
        except StunDecodeError:
            pass
        verify_integrity(data, b"k")
        verify_fingerprint(data)
        verify_integrity_sha256(data, b"k")

    @settings(max_examples=300)
    @given(messages(), st.data())
    def test_mutated_messages(self, msg: Message, data: st.DataObject) -> None:
        """Valid messages with a mutated body still fail only with StunDecodeError."""
        raw = bytearray(msg.encode(integrity_key=b"k", fingerprint=True))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(20, len(raw) - 1))
            raw[index] = data.draw(st.integers(0, 255))
        try:
            Message.decode(bytes(raw))
        except StunDecodeError:
            pass

    def test_fingerprint_formula(self) -> None:
        """FINGERPRINT is CRC-32 of the message up to it, xor 0x5354554e (RFC 8489 14.7)."""
        raw = Message(Method.BINDING, MessageClass.REQUEST, self.TID).encode(fingerprint=True)
        crc = zlib.crc32(raw[:-8]) ^ 0x5354554E
        self.assertEqual(struct.unpack(">I", raw[-4:])[0], crc)
