"""The message codecs and the classifier."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.messages import (
    CookieReply,
    HandshakeInitiation,
    HandshakeResponse,
    TransportData,
    WireGuardDecodeError,
    decode_message,
    message_type,
    sender_index,
)

u32 = st.integers(0, 2**32 - 1)


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(
    HandshakeInitiation, u32, fixed(32), fixed(48), fixed(28), fixed(16), fixed(16)
)
responses = st.builds(HandshakeResponse, u32, u32, fixed(32), fixed(16), fixed(16), fixed(16))
cookie_replies = st.builds(CookieReply, u32, fixed(24), fixed(32))
transports = st.builds(
    TransportData, u32, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=200)
)


class CodecTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        """Message sizes are 148, 92, 64 and 16 + ciphertext bytes."""
        self.assertEqual(len(HandshakeInitiation(1, bytes(32), bytes(48), bytes(28)).encode()), 148)
        self.assertEqual(len(HandshakeResponse(1, 2, bytes(32), bytes(16)).encode()), 92)
        self.assertEqual(len(CookieReply(1, bytes(24), bytes(32)).encode()), 64)
        self.assertEqual(len(TransportData(1, 2, bytes(16)).encode()), 32)

    def test_layout(self) -> None:
        """Type word then little-endian indices, as wireguard-go marshals them."""
        data = HandshakeResponse(
            0x01020304, 0x0A0B0C0D, b"E" * 32, b"N" * 16, b"1" * 16, b"2" * 16
        ).encode()
        self.assertEqual(data[:12].hex(), "02000000" + "04030201" + "0d0c0b0a")
        self.assertEqual(data[12:44], b"E" * 32)
        self.assertEqual(data[60:76], b"1" * 16)
        self.assertEqual(sender_index(data), 0x01020304)
        transport = TransportData(5, 0x0102030405060708, bytes(16)).encode()
        self.assertEqual(transport[:16].hex(), "04000000050000000807060504030201")

    @settings(max_examples=200)
    @given(st.one_of(initiations, responses, cookie_replies, transports))
    def test_roundtrip(
        self, msg: HandshakeInitiation | HandshakeResponse | CookieReply | TransportData
    ) -> None:
        """decode(encode(m)) == m for every message type."""
        data = msg.encode()
        self.assertEqual(type(msg).decode(data), msg)
        self.assertEqual(decode_message(data), msg)
        self.assertNotEqual(message_type(data), 0)

    @settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes decode or raise WireGuardDecodeError, nothing else."""
        for cls in (HandshakeInitiation, HandshakeResponse, CookieReply, TransportData):
            try:
                cls.decode(data)
            except WireGuardDecodeError:
                pass
        try:
            decode_message(data)
        except WireGuardDecodeError:
            self.assertEqual(message_type(data), 0)

    def test_wrong_type_rejected(self) -> None:
        """A message of one type does not decode as another."""
        data = CookieReply(1, bytes(24), bytes(32)).encode()
        self.assertRaises(WireGuardDecodeError, HandshakeResponse.decode, data + bytes(28))
        self.assertRaises(WireGuardDecodeError, CookieReply.decode, data[:-1])


class ClassifierTests(SynchronousTestCase):
    def test_types_and_sizes(self) -> None:
        """message_type checks the type word and the size for each type."""
        self.assertEqual(message_type(b"\x01\0\0\0" + bytes(144)), 1)
        self.assertEqual(message_type(b"\x01\0\0\0" + bytes(145)), 0)
        self.assertEqual(message_type(b"\x02\0\0\0" + bytes(88)), 2)
        self.assertEqual(message_type(b"\x03\0\0\0" + bytes(60)), 3)
        self.assertEqual(message_type(b"\x04\0\0\0" + bytes(28)), 4)
        self.assertEqual(message_type(b"\x04\0\0\0" + bytes(27)), 0)
        self.assertEqual(message_type(b"\x04\0\0\0" + bytes(2000)), 4)

    def test_reserved_bytes_must_be_zero(self) -> None:
        """The three reserved bytes after the type are zero; otherwise not WireGuard."""
        self.assertEqual(message_type(b"\x04\x01\0\0" + bytes(28)), 0)
        self.assertEqual(message_type(b"\x05\0\0\0" + bytes(28)), 0)
        self.assertEqual(message_type(b""), 0)
        self.assertEqual(message_type(b"\x04"), 0)

    def test_field_validation(self) -> None:
        """Constructing a message with wrong field sizes is a ValueError."""
        self.assertRaises(ValueError, HandshakeInitiation, 1, bytes(31), bytes(48), bytes(28))
        self.assertRaises(ValueError, CookieReply, 2**32, bytes(24), bytes(32))
        self.assertRaises(ValueError, TransportData, 1, 2**64, bytes(16))
