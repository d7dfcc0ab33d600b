"""The WireGuard adapter routes TUN packets to peers, arms timers and checks sources."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firezone.tunnel.wg_tunnel import WireGuardTunnel
from firezone.wireguard.device import Device
from tests.tunnel.test_peers import ipv4_packet

A_ADDR, B_ADDR = ("198.18.1.2", 51820), ("198.18.2.2", 51820)


class Pair:
    """Two tunnels joined by an in-memory network that a test pumps."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.wire: list[tuple[str, bytes, tuple[str, int]]] = []
        self.tun: dict[str, list[bytes]] = {"a": [], "b": []}
        keys = {name: os.urandom(32) for name in "ab"}
        self.a = self._tunnel("a", keys["a"])
        self.b = self._tunnel("b", keys["b"])
        self.a.add_peer(self.b.device.public_key, ["100.64.0.2/32"], B_ADDR)
        self.b.add_peer(self.a.device.public_key, ["100.64.0.1/32"], None)
        self.sent = {"a": 0, "b": 0}

    def _tunnel(self, name: str, key: bytes) -> WireGuardTunnel:
        def tun_write(packet: bytes) -> bool:
            self.tun[name].append(packet)
            return True

        def udp_send(data: bytes, destination: tuple[str, int]) -> None:
            self.sent[name] += 1
            self.wire.append((name, data, destination))

        return WireGuardTunnel(self.clock, Device(key), tun_write, udp_send)

    def pump(self) -> None:
        for _ in range(100):
            if not self.wire:
                return
            sender, data, destination = self.wire.pop(0)
            if sender == "a" and destination == B_ADDR:
                self.b.datagram_received(data, A_ADDR)
            elif sender == "b" and destination == A_ADDR:
                self.a.datagram_received(data, B_ADDR)
        raise AssertionError("network did not settle")


class WireGuardTunnelTests(SynchronousTestCase):
    def test_first_packet_handshakes_then_arrives(self) -> None:
        """A packet for a peer without a session is staged, the handshake runs, it arrives."""
        pair = Pair()
        packet = ipv4_packet("100.64.0.1", "100.64.0.2") + b"payload!" * 2
        pair.a.packets_from_tun([packet])
        pair.pump()
        self.assertEqual(len(pair.tun["b"]), 1)
        self.assertTrue(pair.tun["b"][0].startswith(packet[:20]))
        reply = ipv4_packet("100.64.0.2", "100.64.0.1")
        pair.b.packets_from_tun([reply])
        pair.pump()
        self.assertEqual(len(pair.tun["a"]), 1)
        self.assertEqual(pair.b.table.endpoints[pair.a.device.public_key], A_ADDR)

    def test_unroutable_and_spoofed_packets_dropped(self) -> None:
        """No route: counted; a decrypted packet from outside the peer's allowed IPs: dropped."""
        pair = Pair()
        pair.a.packets_from_tun([ipv4_packet("100.64.0.1", "198.18.9.9")])
        self.assertEqual(pair.a.stats.no_route, 1)
        pair.a.packets_from_tun([ipv4_packet("100.64.0.1", "100.64.0.2")])
        pair.pump()
        spoofed = ipv4_packet("100.64.0.66", "100.64.0.2")
        pair.a.packets_from_tun([spoofed])  # routed by destination, sealed, sent
        pair.pump()
        self.assertEqual(pair.b.stats.source_rejected, 1)
        self.assertEqual(len(pair.tun["b"]), 1)

    def test_keepalive_timer_armed_by_fast_path(self) -> None:
        """After receiving data and sending nothing, a keepalive leaves after KEEPALIVE_TIMEOUT."""
        pair = Pair()
        pair.a.packets_from_tun([ipv4_packet("100.64.0.1", "100.64.0.2")])
        pair.pump()
        pair.a.packets_from_tun([ipv4_packet("100.64.0.1", "100.64.0.2")])  # confirms b's keys
        pair.pump()
        before = pair.sent["b"]
        pair.clock.advance(9)
        self.assertEqual(pair.sent["b"], before)
        pair.clock.advance(2)
        self.assertEqual(pair.sent["b"], before + 1)
        pair.pump()
        self.assertEqual(pair.tun["a"], [], "a keepalive carries no packet")

    def test_garbage_datagrams_never_raise(self) -> None:
        """Arbitrary datagrams are dropped and counted by the device."""
        pair = Pair()
        for i in range(300):
            data = os.urandom(i % 200)
            if data:
                data = bytes([i % 6]) + data[1:]
            pair.a.datagram_received(data, B_ADDR)
        self.assertEqual(pair.tun["a"], [])
