"""Per-peer session rotation and every protocol timer, driven with explicit `now` values."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.constants import FIREZONE_ICE_TIMERS, TimerConfig
from firezone.wireguard.events import (
    Action,
    ConnectionExpired,
    HandshakeCompleted,
    SendDatagram,
)
from firezone.wireguard.messages import message_type

from .support import B_ADDR, WALL, Link, datagrams, ipv4_packet, tun_packets

PACKET = ipv4_packet(100)


def kinds(actions: list[Action]) -> list[int]:
    return [message_type(d) for d in datagrams(actions)]


def expired(actions: list[Action]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, ConnectionExpired)]


class RekeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = Link()
        self.link.handshake(0.0)

    def test_initiator_rekeys_after_time_on_send(self) -> None:
        """Paper 6.2: after REKEY_AFTER_TIME the initiator sends a new initiation when sending."""
        pa = self.link.pa
        self.assertIsNotNone(pa.encrypt(PACKET, 119.9))
        deadline = pa.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 119.9)
        self.assertIsNotNone(pa.encrypt(PACKET, 120.5))
        self.assertEqual(pa.next_deadline(), 120.5)
        self.assertEqual(kinds(pa.on_timer(120.5, WALL + 120.5)), [1])

    def test_general_send_rekeys_inline(self) -> None:
        """send() returns the rekey initiation right after the data packet."""
        self.assertEqual(kinds(self.link.pa.send(PACKET, 121.0, WALL + 121)), [4, 1])

    def test_responder_does_not_rekey_on_time(self) -> None:
        """Only the initiator of a session rekeys because of its age."""
        pb = self.link.pb
        self.assertIsNotNone(pb.encrypt(PACKET, 150.0))
        deadline = pb.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 150.0)

    def test_rekey_after_messages(self) -> None:
        """After REKEY_AFTER_MESSAGES packets the sender initiates a handshake."""
        pb = self.link.pb
        kp = pb.current
        assert kp is not None
        kp.send_counter = (1 << 60) - 1
        self.assertIsNotNone(pb.encrypt(PACKET, 6.0))
        deadline = pb.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 6.0)
        self.assertIsNotNone(pb.encrypt(PACKET, 6.0))  # counter 2^60 used: next one is over
        self.assertEqual(pb.next_deadline(), 6.0)
        self.assertEqual(kinds(pb.on_timer(6.0, WALL + 6)), [1])

    def test_reject_after_time(self) -> None:
        """After REJECT_AFTER_TIME a keypair neither sends nor receives."""
        link = self.link
        late = link.pa.encrypt(PACKET, 179.9)
        assert late is not None
        self.assertIsNone(link.pa.encrypt(PACKET, 180.0))
        self.assertEqual(kinds(link.pa.send(PACKET, 180.0, WALL + 180)), [1])
        self.assertEqual(link.pa.staged_count, 1)
        self.assertIsNone(link.b.decrypt_transport(late, 180.1))
        self.assertEqual(link.b.stats.expired_keypair, 1)

    def test_reject_after_messages(self) -> None:
        """A keypair that used REJECT_AFTER_MESSAGES counters stops sending."""
        kp = self.link.pa.current
        assert kp is not None
        kp.send_counter = (1 << 64) - (1 << 13) - 1
        self.assertIsNone(self.link.pa.encrypt(PACKET, 1.0))
        self.assertFalse(self.link.pa.has_session(1.0))

    def test_initiator_rekeys_on_receive(self) -> None:
        """Paper 6.2: the initiator rekeys on receiving once the session is
        REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT (165 s) old, once."""
        link = self.link

        def b_sends(now: float) -> None:
            data = link.pb.encrypt(PACKET, now)
            assert data is not None
            self.assertIsNotNone(link.a.decrypt_transport(data, now))

        b_sends(164.0)
        deadline = link.pa.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 164.0)
        b_sends(165.5)
        self.assertEqual(link.pa.next_deadline(), 165.5)
        self.assertEqual(kinds(link.pa.on_timer(165.5, WALL + 165.5)), [1])
        b_sends(165.6)
        deadline = link.pa.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 165.6)

    def test_responder_does_not_rekey_on_receive(self) -> None:
        """The responder does not start a handshake because the session got old."""
        data = self.link.pa.encrypt(PACKET, 170.0)
        assert data is not None
        self.assertIsNotNone(self.link.b.decrypt_transport(data, 170.0))
        deadline = self.link.pb.next_deadline()
        assert deadline is not None
        self.assertGreater(deadline, 170.0)


class KeepaliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = Link()
        self.link.handshake(0.0)

    def a_sends_data(self, now: float) -> None:
        data = self.link.pa.encrypt(PACKET, now)
        assert data is not None
        result = self.link.b.decrypt_transport(data, now)
        assert result is not None
        self.assertEqual(result[1], PACKET)

    def test_keepalive_after_receiving_only(self) -> None:
        """Paper 6.5: KEEPALIVE_TIMEOUT after receiving data with nothing sent, send a keepalive."""
        self.a_sends_data(1.0)
        self.assertEqual(self.link.pb.next_deadline(), 11.0)
        self.assertEqual(self.link.pb.on_timer(10.9, WALL), [])
        actions = self.link.pb.on_timer(11.0, WALL + 11)
        self.assertEqual([len(d) for d in datagrams(actions)], [32])
        result = self.link.a.decrypt_transport(datagrams(actions)[0], 11.0)
        assert result is not None
        self.assertEqual(result[1], b"")

    def test_sending_data_cancels_keepalive(self) -> None:
        """Any packet sent before the keepalive timer fires makes the keepalive unnecessary."""
        self.a_sends_data(1.0)
        self.assertIsNotNone(self.link.pb.encrypt(PACKET, 5.0))
        self.assertEqual(datagrams(self.link.pb.on_timer(11.0, WALL + 11)), [])

    def test_another_keepalive_when_more_data_arrived(self) -> None:
        """Data received while the keepalive timer runs re-arms it once more after firing."""
        self.a_sends_data(1.0)
        self.a_sends_data(2.0)
        self.assertEqual(len(datagrams(self.link.pb.on_timer(11.0, WALL))), 1)
        self.assertEqual(self.link.pb.next_deadline(), 21.0)
        self.assertEqual(len(datagrams(self.link.pb.on_timer(21.0, WALL))), 1)
        self.assertEqual(self.link.pb.next_deadline(), 540.0)

    def test_new_handshake_when_sent_but_nothing_received(self) -> None:
        """Paper 6.5: data sent and nothing heard for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
        (plus jitter) starts a new handshake."""
        self.assertIsNotNone(self.link.pa.encrypt(PACKET, 1.0))
        deadline = self.link.pa.next_deadline()
        assert deadline is not None
        self.assertTrue(16.0 <= deadline < 16.334, deadline)
        self.assertEqual(kinds(self.link.pa.on_timer(deadline, WALL + deadline)), [1])

    def test_reply_cancels_new_handshake(self) -> None:
        """Receiving any authenticated packet cancels the new-handshake timer."""
        self.a_sends_data(1.0)
        keepalive = datagrams(self.link.pb.on_timer(11.0, WALL))
        self.link.a.decrypt_transport(keepalive[0], 11.0)
        self.assertEqual(self.link.pa.next_deadline(), 540.0)

    def test_persistent_keepalive(self) -> None:
        """With persistent keepalive, a keepalive follows the last packet after the interval."""
        link = Link(persistent_keepalive=25.0)
        link.handshake(0.0)
        self.assertEqual(link.pa.next_deadline(), 25.0)
        self.assertEqual([len(d) for d in datagrams(link.pa.on_timer(25.0, WALL))], [32])
        self.assertEqual(link.pa.next_deadline(), 50.0)
        self.assertEqual(kinds(link.pa.send_keepalive(30.0, WALL)), [4])
        self.assertEqual(link.pa.next_deadline(), 55.0)


class RetransmitTests(SynchronousTestCase):
    def run_unanswered(self, timers: TimerConfig | None = None) -> tuple[list[float], float]:
        """A sends one packet to a silent B; returns initiation times and the expiry time."""
        link = Link(timers=timers)
        pa = link.pa
        self.assertEqual(kinds(pa.send(PACKET, 0.0, WALL)), [1])
        sent = [0.0]
        senders = {pa.handshake.local_index}
        while True:
            deadline = pa.next_deadline()
            assert deadline is not None
            self.assertTrue(5.0 <= deadline - sent[-1] < 5.334, deadline - sent[-1])
            actions = pa.on_timer(deadline, WALL + deadline)
            if expired(actions):
                self.assertEqual(expired(actions), ["handshake_timeout"])
                self.assertEqual(datagrams(actions), [])
                self.assertEqual(pa.staged_count, 0)
                self.assertEqual(pa.stats.staged_dropped, 1)
                self.assertFalse(pa.handshake_in_progress)
                self.assertEqual(pa.next_deadline(), deadline + 540.0)
                return sent, deadline
            self.assertEqual(kinds(actions), [1])
            sent.append(deadline)
            senders.add(pa.handshake.local_index)
            self.assertEqual(len(senders), len(sent))  # a fresh index each time

    def test_retry_until_rekey_attempt_time(self) -> None:
        """Paper 6.4: retransmit every REKEY_TIMEOUT + jitter; give up after REKEY_ATTEMPT_TIME."""
        sent, gave_up = self.run_unanswered()
        self.assertLess(sent[-1], 90.0)
        self.assertTrue(90.0 <= gave_up < 95.334)
        self.assertIn(len(sent), (17, 18))
        gaps = {round(b - a, 6) for a, b in itertools.pairwise(sent)}
        self.assertGreater(len(gaps), 1)  # jittered, not a fixed period

    def test_firezone_ice_attempt_time(self) -> None:
        """With Firezone's 20 s REKEY_ATTEMPT_TIME a stuck handshake fails after ~20 s."""
        sent, gave_up = self.run_unanswered(FIREZONE_ICE_TIMERS)
        self.assertTrue(20.0 <= gave_up < 25.334)
        self.assertEqual(len(sent), 4)

    def test_new_packets_do_not_extend_attempt(self) -> None:
        """Packets queued during an attempt do not restart its clock (boringtun)."""
        link = Link(timers=FIREZONE_ICE_TIMERS)
        pa = link.pa
        now = 0.0
        gave_up = None
        while now < 40.0 and gave_up is None:
            actions = pa.send(PACKET, now, WALL + now)
            actions += pa.on_timer(now, WALL + now)
            if expired(actions):
                gave_up = now
            now = round(now + 0.5, 1)
        assert gave_up is not None
        self.assertTrue(20.0 <= gave_up < 26.0, gave_up)

    def test_answer_stops_retransmission(self) -> None:
        """A response clears the retransmit timer and completes the handshake."""
        link = Link()
        init = link.pa.send(PACKET, 0.0, WALL)
        retry = link.pa.on_timer(5.4, WALL + 5.4)
        self.assertEqual(kinds(retry), [1])
        response = link.to_b(retry, 5.5)
        actions = link.to_a(response, 5.6)
        self.assertIn(HandshakeCompleted(is_initiator=True), actions)
        self.assertEqual(kinds(actions), [4])  # the staged packet, no keepalive needed
        deadline = link.pa.next_deadline()  # now only the "no reply to data" timer
        assert deadline is not None
        self.assertTrue(20.6 <= deadline < 20.934, deadline)
        self.assertEqual(link.b.stats.stale_timestamp, 0)
        # The first initiation, delivered late, is older than the retry: a replay.
        link.to_b(init, 6.0)
        self.assertEqual(link.b.stats.stale_timestamp, 1)


class SessionTests(SynchronousTestCase):
    def test_staged_packets_flushed_after_handshake(self) -> None:
        """Packets sent before a session exists go out, in order, once it is up."""
        link = Link()
        packets = [ipv4_packet(10 + i, ident=i) for i in range(3)]
        first = link.pa.send(packets[0], 0.0, WALL)
        self.assertEqual(kinds(first), [1])
        self.assertEqual(link.pa.send(packets[1], 0.1, WALL), [])
        self.assertEqual(link.pa.send(packets[2], 0.2, WALL), [])
        self.assertIsNone(link.pa.encrypt(packets[2], 0.2))
        response = link.to_b(first, 0.3)
        flushed = link.to_a(response, 0.4)
        self.assertEqual(kinds(flushed), [4, 4, 4])
        self.assertEqual(tun_packets(link.to_b(flushed, 0.5)), packets)

    def test_staged_queue_is_bounded(self) -> None:
        """The staging queue keeps the newest packets and counts the dropped ones."""
        link = Link(timers=TimerConfig(staged_packets_limit=4))
        packets = [ipv4_packet(10, ident=i) for i in range(6)]
        actions: list[Action] = []
        for p in packets:
            actions += link.pa.send(p, 0.0, WALL)
        self.assertEqual(link.pa.staged_count, 4)
        self.assertEqual(link.pa.stats.staged_dropped, 2)
        flushed = link.to_a(link.to_b(actions, 0.1), 0.2)
        self.assertEqual(tun_packets(link.to_b(flushed, 0.3)), packets[2:])

    def test_responder_waits_for_key_confirmation(self) -> None:
        """The responder's keypair is "next" until the initiator's first packet arrives."""
        link = Link()
        response = link.to_b(link.pa.initiate_handshake(0.0, WALL), 0.0)
        self.assertIsNotNone(link.pb.next)
        self.assertIsNone(link.pb.current)
        self.assertIsNone(link.pb.encrypt(PACKET, 0.1))
        self.assertEqual(link.pb.send(PACKET, 0.1, WALL), [])  # staged, no initiation
        keepalive = link.to_a(response, 0.2)
        self.assertEqual([len(d) for d in datagrams(keepalive)], [32])
        result = link.b.decrypt_transport(datagrams(keepalive)[0], 0.3)
        assert result is not None
        self.assertEqual(result, (link.pb, b""))
        self.assertIsNone(link.pb.next)
        self.assertIsNotNone(link.pb.current)
        self.assertEqual(link.pb.next_deadline(), 0.3)
        deferred = link.pb.on_timer(0.3, WALL)
        self.assertEqual(deferred[0], HandshakeCompleted(is_initiator=False))
        self.assertEqual(tun_packets(link.to_a(deferred, 0.4)), [PACKET])

    def test_keypair_rotation(self) -> None:
        """previous/current/next rotate as in wireguard-go, and old keys keep working
        until they fall out of "previous"."""
        link = Link()
        link.handshake(0.0)
        a1, b1 = link.pa.current, link.pb.current
        assert a1 is not None and b1 is not None
        in_flight_a1 = link.pa.encrypt(PACKET, 9.0)
        also_a1 = link.pa.encrypt(PACKET, 9.0)
        assert in_flight_a1 is not None and also_a1 is not None

        # Second handshake, initiated by B: A is the responder now.
        response = link.to_a(link.pb.initiate_handshake(10.0, WALL + 10), 10.0)
        a2 = link.pa.next
        self.assertIs(link.pa.current, a1)
        self.assertIsNone(link.pa.previous)
        confirm = link.to_b(response, 10.1)
        b2 = link.pb.current
        self.assertIs(link.pb.previous, b1)
        self.assertIsNot(b2, b1)
        # A packet sealed with the old session still decrypts at B via "previous".
        self.assertEqual(
            tun_packets(link.b.receive(in_flight_a1, ("192.0.2.1", 1), 10.2, WALL)[1]), [PACKET]
        )
        link.to_a(confirm, 10.3)
        self.assertIs(link.pa.current, a2)
        self.assertIs(link.pa.previous, a1)
        self.assertIsNone(link.pa.next)

        # Third handshake, initiated by A: b1 is dropped from B and its index freed.
        link.to_a(link.to_b(link.pa.initiate_handshake(20.0, WALL + 20), 20.0), 20.0)
        self.assertIs(link.pa.previous, a2)
        self.assertIsNone(link.pb.previous)
        self.assertIs(link.pb.current, b2)
        self.assertIsNotNone(link.pb.next)
        before = link.b.stats.unknown_index
        self.assertIsNone(link.b.decrypt_transport(also_a1, 20.1))
        self.assertEqual(link.b.stats.unknown_index, before + 1)

    def test_zeroing_after_three_reject_times(self) -> None:
        """Paper 6.3: with no new session for 3 * REJECT_AFTER_TIME all keys are erased."""
        link = Link()
        link.handshake(0.0)
        old = link.pb.encrypt(PACKET, 1.0)  # addressed to A's keypair index
        assert old is not None
        self.assertEqual(link.pa.next_deadline(), 540.0)
        self.assertEqual(link.pa.on_timer(539.9, WALL), [])
        actions = link.pa.on_timer(540.0, WALL + 540)
        self.assertEqual(expired(actions), ["keys_zeroed"])
        self.assertIsNone(link.pa.current)
        self.assertIsNone(link.pa.previous)
        self.assertIsNone(link.pa.next_deadline())
        # the keypair's index is gone, not merely expired
        self.assertIsNone(link.a.decrypt_transport(old, 540.0))
        self.assertEqual((link.a.stats.unknown_index, link.a.stats.expired_keypair), (1, 0))

    def test_new_session_postpones_zeroing(self) -> None:
        """Every new session restarts the 3 * REJECT_AFTER_TIME countdown."""
        link = Link()
        link.handshake(0.0)
        link.handshake(100.0)
        self.assertEqual(link.pa.next_deadline(), 640.0)

    def test_simultaneous_initiations_converge(self) -> None:
        """When both sides initiate at once, retransmission still yields one working session."""
        link = Link()
        wire_to_b = link.pa.send(ipv4_packet(10, ident=1), 0.0, WALL)
        wire_to_a = link.pb.send(ipv4_packet(10, ident=2), 0.0, WALL)
        delivered_a: list[bytes] = []
        delivered_b: list[bytes] = []
        now = 0.0
        while now < 30.0:
            now = round(now + 0.1, 1)
            from_b = link.to_b(wire_to_b, now)
            from_a = link.to_a(wire_to_a, now)
            delivered_b += tun_packets(from_b)
            delivered_a += tun_packets(from_a)
            wire_to_a = [a for a in from_b if isinstance(a, SendDatagram)]
            wire_to_b = [a for a in from_a if isinstance(a, SendDatagram)]
            wire_to_b += link.pa.on_timer(now, WALL + now)
            wire_to_a += link.pb.on_timer(now, WALL + now)
            if delivered_a and delivered_b:
                break
        self.assertEqual(delivered_b, [ipv4_packet(10, ident=1)])
        self.assertEqual(delivered_a, [ipv4_packet(10, ident=2)])
        self.assertLess(now, 12.0)

    def test_initiation_rate_limited(self) -> None:
        """At most one initiation per REKEY_TIMEOUT, however often it is asked for."""
        link = Link()
        self.assertEqual(kinds(link.pa.initiate_handshake(0.0, WALL)), [1])
        self.assertEqual(link.pa.initiate_handshake(4.9, WALL), [])
        self.assertEqual(kinds(link.pa.initiate_handshake(5.0, WALL + 5)), [1])

    def test_close_forgets_everything(self) -> None:
        """Removing a peer erases its keys, frees its indices and disarms its timers."""
        link = Link()
        link.handshake(0.0)
        data = link.pa.encrypt(PACKET, 1.0)
        assert data is not None
        link.b.remove_peer(link.a.public_key)
        self.assertIsNone(link.pb.current)
        self.assertIsNone(link.pb.next_deadline())
        self.assertIsNone(link.b.decrypt_transport(data, 1.0))
        self.assertEqual(link.b.stats.unknown_index, 1)
        _, actions = link.b.receive(
            datagrams(link.pa.initiate_handshake(6.0, WALL + 6))[0], B_ADDR, 6.0, WALL
        )
        self.assertEqual(actions, [])
        self.assertEqual(link.b.stats.unknown_peer, 1)
