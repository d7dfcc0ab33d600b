"""The device front door: routing, rejections by reason, cookies under load, robustness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.crypto import generate_private_key, public_key
from firezone.wireguard.device import Device, DeviceConfig
from firezone.wireguard.events import HandshakeCompleted, SendDatagram, WriteToTun
from firezone.wireguard.messages import message_type

from .support import (
    A_ADDR,
    B_ADDR,
    WALL,
    Link,
    datagrams,
    ipv4_packet,
    ipv6_packet,
    seeded,
    tun_packets,
)

PACKET = ipv4_packet(64)


class HandshakeRoutingTests(SynchronousTestCase):
    def test_full_handshake_and_data(self) -> None:
        """Initiation -> response -> keepalive, then data both ways through receive()."""
        link = Link(psk_a=b"k" * 32, psk_b=b"k" * 32)
        init = link.pa.initiate_handshake(0.0, WALL)
        peer, response = link.b.receive(datagrams(init)[0], A_ADDR, 0.0, WALL)
        self.assertIs(peer, link.pb)
        self.assertEqual(
            [
                (message_type(a.data), a.destination)
                for a in response
                if isinstance(a, SendDatagram)
            ],
            [(2, A_ADDR)],
        )
        peer, confirm = link.a.receive(datagrams(response)[0], B_ADDR, 0.0, WALL)
        self.assertIs(peer, link.pa)
        self.assertEqual(confirm[0], HandshakeCompleted(is_initiator=True))
        peer, done = link.b.receive(datagrams(confirm)[0], A_ADDR, 0.0, WALL)
        self.assertEqual(done, [HandshakeCompleted(is_initiator=False)])
        self.assertEqual(tun_packets(link.to_b(link.pa.send(PACKET, 1.0, WALL), 1.0)), [PACKET])
        self.assertEqual(tun_packets(link.to_a(link.pb.send(PACKET, 1.0, WALL), 1.0)), [PACKET])
        self.assertEqual(link.a.stats.responses_received, 1)
        self.assertEqual(link.b.stats.initiations_received, 1)

    def test_wrong_psk(self) -> None:
        """A PSK mismatch shows as a failed decryption of the response's empty payload."""
        link = Link(psk_a=b"a" * 32, psk_b=b"b" * 32)
        actions = link.to_a(link.to_b(link.pa.initiate_handshake(0.0, WALL), 0.0), 0.0)
        self.assertEqual(actions, [])
        self.assertEqual(link.a.stats.decrypt_failed, 1)
        self.assertIsNone(link.pa.current)
        self.assertTrue(link.pa.handshake_in_progress)

    def test_psk_on_one_side_only(self) -> None:
        """A PSK on one side and none (zero) on the other does not interoperate."""
        link = Link(psk_a=b"a" * 32)
        link.to_a(link.to_b(link.pa.initiate_handshake(0.0, WALL), 0.0), 0.0)
        self.assertEqual(link.a.stats.decrypt_failed, 1)

    def test_unknown_initiator(self) -> None:
        """An initiation from a key we have no peer for is dropped and counted."""
        link = Link()
        stranger = Device(generate_private_key(seeded(50)), rand_bytes=seeded(51))
        peer = stranger.add_peer(link.b.public_key)
        result = link.b.receive(datagrams(peer.initiate_handshake(0.0, WALL))[0], A_ADDR, 0.0, WALL)
        self.assertEqual(result, (None, []))
        self.assertEqual(link.b.stats.unknown_peer, 1)

    def test_wrong_responder_key(self) -> None:
        """An initiation meant for another static key fails mac1 before any DH."""
        link = Link()
        wrong = link.a.add_peer(public_key(generate_private_key(seeded(60))))
        self.assertEqual(
            link.b.receive(datagrams(wrong.initiate_handshake(0.0, WALL))[0], A_ADDR, 0.0, WALL),
            (None, []),
        )
        self.assertEqual(link.b.stats.bad_mac1, 1)
        self.assertEqual(link.b.stats.decrypt_failed, 0)

    def test_mac1_tampering(self) -> None:
        """Any flipped bit before or inside mac1 makes the message fail the mac1 check."""
        link = Link()
        init = datagrams(link.pa.initiate_handshake(0.0, WALL))[0]
        for pos in (8, 60, 120, 131):
            tampered = bytearray(init)
            tampered[pos] ^= 1
            self.assertEqual(link.b.receive(bytes(tampered), A_ADDR, 0.0, WALL), (None, []))
        self.assertEqual(link.b.stats.bad_mac1, 4)
        self.assertEqual(link.b.receive(init, A_ADDR, 0.0, WALL)[0], link.pb)

    def test_replayed_initiation(self) -> None:
        """A captured initiation replayed later is rejected by its TAI64N timestamp."""
        link = Link()
        init = datagrams(link.pa.initiate_handshake(0.0, WALL))[0]
        self.assertEqual(len(link.b.receive(init, A_ADDR, 0.0, WALL)[1]), 1)
        self.assertEqual(link.b.receive(init, A_ADDR, 30.0, WALL + 30), (None, []))
        self.assertEqual(link.b.stats.stale_timestamp, 1)

    def test_handshake_flood(self) -> None:
        """Two valid initiations from one peer within 20 ms: the second is dropped."""
        link = Link()
        first = datagrams(link.pa.initiate_handshake(0.0, WALL))[0]
        second = datagrams(link.pa.initiate_handshake(5.0, WALL + 5))[0]
        link.b.receive(first, A_ADDR, 100.0, WALL)
        self.assertEqual(link.b.receive(second, A_ADDR, 100.01, WALL), (None, []))
        self.assertEqual(link.b.stats.handshake_flood, 1)

    def test_unexpected_response(self) -> None:
        """A response to an index with no pending initiation is counted, not processed."""
        link = Link()
        init = datagrams(link.pa.initiate_handshake(0.0, WALL))[0]
        response = datagrams(link.b.receive(init, A_ADDR, 0.0, WALL)[1])[0]
        link.a.receive(response, B_ADDR, 0.0, WALL)
        self.assertEqual(link.a.receive(response, B_ADDR, 0.1, WALL), (None, []))
        self.assertEqual(link.a.stats.unknown_index, 1)


class CookieUnderLoadTests(SynchronousTestCase):
    def test_forced_under_load(self) -> None:
        """Under load a valid-mac1 initiation without mac2 gets a cookie reply; the retry
        carries mac2 and is answered."""
        link = Link()
        link.b.force_under_load = True
        init = link.pa.initiate_handshake(0.0, WALL)
        peer, actions = link.b.receive(datagrams(init)[0], A_ADDR, 0.0, WALL)
        self.assertIsNone(peer)
        self.assertEqual(
            [(message_type(a.data), a.destination) for a in actions if isinstance(a, SendDatagram)],
            [(3, A_ADDR)],
        )
        self.assertEqual(link.b.stats.cookie_sent, 1)
        self.assertIsNone(link.pb.next)
        peer, nothing = link.a.receive(datagrams(actions)[0], B_ADDR, 0.1, WALL)
        self.assertIs(peer, link.pa)
        self.assertEqual(nothing, [])
        self.assertEqual(link.a.stats.cookie_replies_received, 1)
        deadline = link.pa.next_deadline()
        assert deadline is not None
        retry = link.pa.on_timer(deadline, WALL + deadline)
        self.assertNotEqual(datagrams(retry)[0][-16:], bytes(16))  # mac2 present
        response = link.to_b(retry, deadline)
        self.assertEqual([message_type(d) for d in datagrams(response)], [2])
        self.assertIn(HandshakeCompleted(is_initiator=True), link.to_a(response, deadline))

    def test_cookie_bound_to_source(self) -> None:
        """A cookie obtained from one source address does not help another."""
        link = Link()
        link.b.force_under_load = True
        reply = link.b.receive(
            datagrams(link.pa.initiate_handshake(0.0, WALL))[0], A_ADDR, 0.0, WALL
        )[1]
        link.a.receive(datagrams(reply)[0], B_ADDR, 0.0, WALL)
        retry = datagrams(link.pa.on_timer(6.0, WALL + 6))[0]
        _, actions = link.b.receive(retry, ("198.51.100.9", 51820), 6.0, WALL)
        self.assertEqual([message_type(d) for d in datagrams(actions)], [3])
        self.assertEqual(link.b.stats.cookie_sent, 2)

    def test_threshold_triggers_load(self) -> None:
        """More than handshake_rate_limit handshake messages per second means under load."""
        link = Link(config=DeviceConfig(handshake_rate_limit=2))
        others = [
            Device(generate_private_key(seeded(70 + i)), rand_bytes=seeded(80 + i))
            for i in range(3)
        ]
        kinds = []
        for i, other in enumerate(others):
            link.b.add_peer(other.public_key)
            init = other.add_peer(link.b.public_key).initiate_handshake(0.0, WALL)
            _, actions = link.b.receive(datagrams(init)[0], (f"203.0.113.{i}", 1), 0.1 * i, WALL)
            kinds.append([message_type(d) for d in datagrams(actions)])
        self.assertEqual(kinds, [[2], [2], [3]])
        self.assertTrue(link.b.under_load(0.3))
        self.assertFalse(link.b.under_load(1.3))

    def test_rate_limited_per_source(self) -> None:
        """Under load, even with valid mac2, one source gets at most the token bucket's burst."""
        link = Link()
        link.b.force_under_load = True
        reply = link.b.receive(
            datagrams(link.pa.initiate_handshake(0.0, WALL))[0], A_ADDR, 0.0, WALL
        )[1]
        link.a.receive(datagrams(reply)[0], B_ADDR, 0.0, WALL)
        for i in range(8):
            now = 5.0 * (i + 1)
            msg = datagrams(link.pa.initiate_handshake(now, WALL + now))[0]
            self.assertNotEqual(msg[-16:], bytes(16))
            link.b.receive(msg, A_ADDR, 50.0 + i * 1e-6, WALL)
        # 5 pass the bucket (the first is answered, the others hit the 20 ms flood
        # guard), 3 are rate limited.
        stats = link.b.stats
        self.assertEqual(stats.rate_limited, 3)
        self.assertEqual((stats.initiations_received, stats.handshake_flood), (1, 4))


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = Link()
        self.link.handshake(0.0)

    def test_fast_path(self) -> None:
        """decrypt_transport returns (peer, packet) with the padding removed."""
        data = self.link.pa.encrypt(PACKET, 1.0)
        assert data is not None
        self.assertEqual(self.link.b.decrypt_transport(data, 1.0), (self.link.pb, PACKET))

    def test_ipv6_trimmed(self) -> None:
        """IPv6 packets are trimmed to 40 + payload length."""
        packet = ipv6_packet(23)
        data = self.link.pa.encrypt(packet, 1.0)
        assert data is not None
        self.assertEqual(self.link.b.decrypt_transport(data, 1.0), (self.link.pb, packet))

    def test_replay_rejected(self) -> None:
        """The same transport message twice: the second is a replay (checked after auth)."""
        data = self.link.pa.encrypt(PACKET, 1.0)
        assert data is not None
        self.assertIsNotNone(self.link.b.decrypt_transport(data, 1.0))
        self.assertEqual(self.link.b.receive(data, A_ADDR, 1.0, WALL), (None, []))
        self.assertEqual(self.link.b.stats.replay, 1)

    def test_forged_counter_does_not_move_window(self) -> None:
        """A forged packet with a huge counter fails auth and leaves the window alone."""
        data = self.link.pa.encrypt(PACKET, 1.0)
        assert data is not None
        forged = data[:8] + (10**6).to_bytes(8, "little") + data[16:]
        self.assertIsNone(self.link.b.decrypt_transport(forged, 1.0))
        self.assertEqual(self.link.b.stats.decrypt_failed, 1)
        self.assertIsNotNone(self.link.b.decrypt_transport(data, 1.0))

    def test_tampered_ciphertext(self) -> None:
        """A flipped ciphertext bit fails authentication."""
        data = bytearray(self.link.pa.encrypt(PACKET, 1.0) or b"")
        data[40] ^= 1
        self.assertIsNone(self.link.b.decrypt_transport(bytes(data), 1.0))
        self.assertEqual(self.link.b.stats.decrypt_failed, 1)

    def test_unknown_index(self) -> None:
        """Transport data for an index we never issued is counted as unknown."""
        data = self.link.pa.encrypt(PACKET, 1.0) or b""
        bogus = data[:4] + b"\xff\xff\xff\xff" + data[8:]
        self.assertIsNone(self.link.b.decrypt_transport(bogus, 1.0))
        self.assertEqual(self.link.b.stats.unknown_index, 1)

    def test_not_ip(self) -> None:
        """Authenticated plaintext that is not an IP packet is dropped as invalid."""
        for junk in (b"\x00" * 40, b"\x45" + bytes(10), b"\x45\x00\x10\x00" + bytes(40)):
            data = self.link.pa.encrypt(junk, 1.0)
            assert data is not None
            self.assertIsNone(self.link.b.decrypt_transport(data, 1.0))
        self.assertEqual(self.link.b.stats.invalid_packet, 3)

    def test_keepalive_yields_no_tun_write(self) -> None:
        """A keepalive is accepted but writes nothing to the TUN device."""
        actions = self.link.pa.send_keepalive(1.0, WALL)
        peer, out = self.link.b.receive(datagrams(actions)[0], A_ADDR, 1.0, WALL)
        self.assertIs(peer, self.link.pb)
        self.assertFalse([a for a in out if isinstance(a, WriteToTun)])

    def test_device_timers_tag_peers(self) -> None:
        """Device.on_timer runs due peers and tags each action with its peer."""
        self.assertEqual(self.link.a.next_deadline(), 540.0)
        tagged = self.link.a.on_timer(540.0, WALL)
        self.assertEqual([p for p, _ in tagged], [self.link.pa])


class RobustnessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = Link()
        self.link.handshake(0.0)

    @settings(max_examples=200)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """No datagram makes receive() or decrypt_transport() raise."""
        self.link.b.receive(data, A_ADDR, 1.0, WALL)
        self.link.b.decrypt_transport(data, 1.0)

    @settings(max_examples=200)
    @given(st.sampled_from([(1, 144), (2, 88), (3, 60), (4, 28), (4, 200)]), st.data())
    def test_well_framed_garbage(self, shape: tuple[int, int], data: st.DataObject) -> None:
        """Correctly sized messages of every type with random contents are dropped quietly."""
        kind, size = shape
        body = data.draw(st.binary(min_size=size, max_size=size))
        _, actions = self.link.b.receive(bytes([kind, 0, 0, 0]) + body, A_ADDR, 1.0, WALL)
        self.assertEqual(actions, [])

    def test_garbage_with_known_index(self) -> None:
        """Garbage addressed to a live index fails authentication, nothing else."""
        kp = self.link.pb.current
        assert kp is not None
        datagram = b"\x04\0\0\0" + kp.local_index.to_bytes(4, "little") + bytes(40)
        self.assertIsNone(self.link.b.decrypt_transport(datagram, 1.0))
        cookie = b"\x03\0\0\0" + kp.local_index.to_bytes(4, "little") + bytes(56)
        self.assertEqual(self.link.b.receive(cookie, A_ADDR, 1.0, WALL), (self.link.pb, []))
        self.assertEqual(self.link.b.stats.bad_cookie_reply, 1)
