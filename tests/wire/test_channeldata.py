"""Tests for firezone.wire.channeldata."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wire.channeldata import (
    MAX_CHANNEL,
    MIN_CHANNEL,
    ChannelData,
    ChannelDataError,
    decode_channel_data,
    encode_channel_data,
)

channels = st.integers(MIN_CHANNEL, MAX_CHANNEL)
payloads = st.binary(max_size=300)


class ChannelDataTests(SynchronousTestCase):
    def test_known_encoding(self) -> None:
        """RFC 8656 12.4: channel number, then length, then the application data."""
        self.assertEqual(encode_channel_data(0x4000, b"ping"), b"\x40\x00\x00\x04ping")
        self.assertEqual(decode_channel_data(b"\x7f\xff\x00\x00"), (0x7FFF, b""))

    @settings(max_examples=200)
    @given(channels, payloads)
    def test_round_trip(self, channel: int, payload: bytes) -> None:
        """decode(encode(c, p)) == (c, p), for the helpers and the value class."""
        self.assertEqual(decode_channel_data(encode_channel_data(channel, payload)),
                         (channel, payload))
        value = ChannelData(channel, payload)
        self.assertEqual(ChannelData.decode(value.encode()), value)

    @settings(max_examples=200)
    @given(channels, payloads)
    def test_padded_is_accepted(self, channel: int, payload: bytes) -> None:
        """A padded message (as over TCP) decodes to the unpadded payload."""
        padded = ChannelData(channel, payload).encode(pad=True)
        self.assertEqual(len(padded) % 4, 0)
        self.assertEqual(decode_channel_data(padded), (channel, payload))

    def test_memoryview_payload_is_a_view(self) -> None:
        """A memoryview input yields a memoryview payload (no copy on the data path)."""
        channel, payload = decode_channel_data(memoryview(b"\x40\x01\x00\x02hi"))
        self.assertEqual(channel, 0x4001)
        self.assertIsInstance(payload, memoryview)
        self.assertEqual(bytes(payload), b"hi")
        self.assertEqual(decode_channel_data(bytearray(b"\x40\x01\x00\x01x")), (0x4001, b"x"))

    def test_rejects(self) -> None:
        """Short headers, out-of-range channels and lengths beyond the data are errors."""
        for bad in [b"", b"\x40\x00\x00", b"\x3f\xff\x00\x00", b"\x80\x00\x00\x00",
                    b"\x40\x00\x00\x05ping"]:
            with self.assertRaises(ChannelDataError, msg=bad.hex()):
                decode_channel_data(bad)
        with self.assertRaises(ChannelDataError):
            encode_channel_data(0x3FFF, b"")
        with self.assertRaises(ChannelDataError):
            encode_channel_data(0x8000, b"")
        with self.assertRaises(ChannelDataError):
            encode_channel_data(0x4000, b"x" * 0x10000)

    @settings(max_examples=500)
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes raise only ChannelDataError, and a decoded payload fits its length."""
        try:
            channel, payload = decode_channel_data(data)
        except ChannelDataError:
            return
        self.assertTrue(MIN_CHANNEL <= channel <= MAX_CHANNEL)
        self.assertEqual(len(payload), int.from_bytes(data[2:4], "big"))
