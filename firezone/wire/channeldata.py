"""TURN ChannelData framing (RFC 8656 12.4).

``channel (u16) | length (u16) | payload``.  Over UDP the relay neither needs
nor adds padding, but a padded datagram (TCP-style, to a multiple of 4) is
accepted: only ``length`` bytes of payload are taken.  The relay's data path
calls :func:`decode_channel_data` / :func:`encode_channel_data` per packet, so
they avoid any allocation beyond the result.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "HEADER_LEN",
    "MAX_CHANNEL",
    "MIN_CHANNEL",
    "ChannelData",
    "ChannelDataError",
    "decode_channel_data",
    "encode_channel_data",
]

MIN_CHANNEL = 0x4000
MAX_CHANNEL = 0x7FFF
HEADER_LEN = 4

_HEADER = struct.Struct(">HH")


class ChannelDataError(ValueError):
    """The bytes are not a well-formed ChannelData message."""


def encode_channel_data(channel: int, payload: bytes) -> bytes:
    """Prefix ``payload`` with the 4-byte ChannelData header."""
    n = len(payload)
    if not MIN_CHANNEL <= channel <= MAX_CHANNEL:
        raise ChannelDataError(f"channel number out of range: {channel:#x}")
    if n > 0xFFFF:
        raise ChannelDataError("payload longer than 65535 bytes")
    return _HEADER.pack(channel, n) + payload


def decode_channel_data(buf: bytes | bytearray | memoryview) -> tuple[int, bytes | memoryview]:
    """Return ``(channel, payload)``; the payload is a slice of ``buf`` (same type)."""
    available = len(buf) - HEADER_LEN
    if available < 0:
        raise ChannelDataError("shorter than a ChannelData header")
    channel = (buf[0] << 8) | buf[1]
    if not MIN_CHANNEL <= channel <= MAX_CHANNEL:
        raise ChannelDataError(f"channel number out of range: {channel:#x}")
    length = (buf[2] << 8) | buf[3]
    if length > available:
        raise ChannelDataError(f"length {length} exceeds the {available} bytes available")
    payload = buf[HEADER_LEN : HEADER_LEN + length]
    if isinstance(payload, bytearray):
        payload = bytes(payload)
    return channel, payload


@dataclass(frozen=True, slots=True)
class ChannelData:
    """A ChannelData message as a value."""

    channel: int
    payload: bytes

    def encode(self, *, pad: bool = False) -> bytes:
        """Encode; ``pad`` rounds up to a multiple of 4 as stream transports require."""
        data = encode_channel_data(self.channel, self.payload)
        if pad and len(data) & 3:
            data += b"\x00" * (4 - (len(data) & 3))
        return data

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> ChannelData:
        channel, payload = decode_channel_data(buf)
        return cls(channel, bytes(payload))
