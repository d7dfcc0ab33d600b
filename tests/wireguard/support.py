"""Shared fixtures for the WireGuard tests: seeded randomness, IP packets, a two-device link."""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Iterable
from typing import Any

from firezone.wireguard.constants import TimerConfig
from firezone.wireguard.crypto import RandomBytes, generate_private_key
from firezone.wireguard.device import Device, DeviceConfig
from firezone.wireguard.events import Action, SendDatagram, WriteToTun
from firezone.wireguard.peer import Peer

WALL = 1_800_000_000.0
A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51821)


def seeded(seed: int) -> RandomBytes:
    """A reproducible source of random bytes."""
    return random.Random(seed).randbytes


def load_vectors() -> dict[str, Any]:
    """Handshake/cookie traffic recorded against wireguard-go (see the file's comment)."""
    path = os.path.join(os.path.dirname(__file__), "wireguard_go_vectors.json")
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def ipv4_packet(payload_len: int, src: bytes = b"\x64\x40\x00\x01", ident: int = 0) -> bytes:
    """A syntactically valid IPv4 packet (checksums are not checked by WireGuard)."""
    total = 20 + payload_len
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, ident, 0, 64, 17, 0, src, b"\x64\x40\x00\x02"
    )
    return header + bytes((i * 7 + ident) & 0xFF for i in range(payload_len))


def ipv6_packet(payload_len: int) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, payload_len, 17, 64, b"\xfd" + bytes(15), bytes(16)
    )
    return header + bytes(i & 0xFF for i in range(payload_len))


def datagrams(actions: Iterable[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, SendDatagram)]


def tun_packets(actions: Iterable[Action]) -> list[bytes]:
    return [a.packet for a in actions if isinstance(a, WriteToTun)]


class Link:
    """Devices A and B configured as each other's peer, and a lossless wire between them."""

    def __init__(
        self,
        *,
        psk_a: bytes | None = None,
        psk_b: bytes | None = None,
        timers: TimerConfig | None = None,
        config: DeviceConfig | None = None,
        persistent_keepalive: float | None = None,
        seed: int = 0,
    ) -> None:
        self.a = Device(
            generate_private_key(seeded(seed + 1)), config=config, rand_bytes=seeded(seed + 11)
        )
        self.b = Device(
            generate_private_key(seeded(seed + 2)), config=config, rand_bytes=seeded(seed + 12)
        )
        self.pa: Peer = self.a.add_peer(
            self.b.public_key,
            preshared_key=psk_a,
            timers=timers,
            persistent_keepalive=persistent_keepalive,
        )
        self.pb: Peer = self.b.add_peer(
            self.a.public_key,
            preshared_key=psk_b,
            timers=timers,
            persistent_keepalive=persistent_keepalive,
        )

    def to_b(self, actions: Iterable[Action], now: float) -> list[Action]:
        """Deliver A's datagrams to B; returns B's actions."""
        out: list[Action] = []
        for data in datagrams(actions):
            out.extend(self.b.receive(data, A_ADDR, now, WALL + now)[1])
        return out

    def to_a(self, actions: Iterable[Action], now: float) -> list[Action]:
        out: list[Action] = []
        for data in datagrams(actions):
            out.extend(self.a.receive(data, B_ADDR, now, WALL + now)[1])
        return out

    def handshake(self, now: float = 0.0) -> None:
        """A initiates; the exchange runs to B's key confirmation (A's keepalive)."""
        init = self.pa.initiate_handshake(now, WALL + now)
        response = self.to_b(init, now)
        confirm = self.to_a(response, now)
        self.to_b(confirm, now)
