"""Tests for the sans-IO TURN client (REFERENCE 3.3), against the in-process TurnServer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import REALM, long_term_key, turn_credentials
from firezone.relay.commands import Command, SendFromAllocation, SendMessage
from firezone.relay.server import TurnServer
from firezone.tunnel.turn_client import (
    CHANNEL_LIFETIME,
    CHANNEL_REBIND_HOLD,
    CHANNEL_REFRESH_AFTER,
    FIRST_CHANNEL,
    LAST_CHANNEL,
    Address,
    AllocationFailed,
    CandidateDiscovered,
    CandidateInvalidated,
    ChannelBound,
    FailureReason,
    Relayed,
    Transmit,
    TurnClient,
    TurnEvent,
)
from firezone.wire.candidate import CandidateKind
from firezone.wire.channeldata import encode_channel_data
from firezone.wire.stun import (
    AdditionalAddressFamily,
    AddressFamily,
    Attribute,
    ChannelNumber,
    ErrorCode,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    Software,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    verify_integrity,
)

SECRET = "0d5e8a0f3b6c4d2e9f1a7b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e"
NOW = 1_700_000_000.0
RELAY_IP = "203.0.113.10"
RELAY_IP6 = "2001:db8::10"
RELAY: Address = (RELAY_IP, 3478)
RELAY6: Address = (RELAY_IP6, 3478)
CLIENT: Address = ("198.51.100.20", 52625)
CLIENT6: Address = ("2001:db8:1::20", 52625)
PEER: Address = ("192.0.2.1", 40000)
PEER2: Address = ("192.0.2.2", 40001)
USERNAME, PASSWORD = turn_credentials("a" * 43 + "=", SECRET, int(NOW) + 86_400)


def make_server(ip6: bool = False, seed: int = 1) -> TurnServer:
    return TurnServer(IPv4Address(RELAY_IP), IPv6Address(RELAY_IP6) if ip6 else None, SECRET,
                      rng=random.Random(seed))


class Harness:
    """A TurnClient wired to a TurnServer; every request is logged with its send time."""

    def __init__(self, server: TurnServer | None = None, *, servers: list[Address] | None = None,
                 username: str = USERNAME, password: str = PASSWORD,
                 client_addr: Address = CLIENT, blackhole: bool = False,
                 answer_only: set[Address] | None = None, seed: int = 7,
                 **kwargs: object) -> None:
        self.now = NOW
        self.server = server if server is not None else make_server()
        self.client_addr = client_addr
        self.client = TurnClient(servers or [RELAY], username, password, self.now,
                                 rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]
        self.sent: list[tuple[float, Transmit]] = []
        self.events: list[TurnEvent] = []
        self.to_peer: list[SendFromAllocation] = []
        self.from_peer: list[Relayed | None] = []
        self.commands: list[Command] = []
        self.blackhole = blackhole
        self.answer_only = answer_only
        self.hold: set[int] = set()  # request methods the relay never sees
        self.flush()

    def flush(self) -> None:
        while (t := self.client.poll_transmit()) is not None:
            self.sent.append((self.now, t))
            if self.blackhole or (self.answer_only is not None and t.dest not in self.answer_only):
                continue
            if t.payload[0] < 4 and Message.decode(t.payload).method in self.hold:
                continue
            source = self.client_addr if t.dest == RELAY else CLIENT6
            for cmd in self.server.handle_client_input(t.payload, source, self.now):
                self._apply(cmd, t.dest)
        while (e := self.client.poll_event()) is not None:
            self.events.append(e)

    def _apply(self, cmd: Command, relay: Address) -> None:
        self.commands.append(cmd)
        if isinstance(cmd, SendMessage):
            if cmd.payload[0] < 4:
                self.client.handle_input(cmd.payload, relay, self.now)
            else:
                self.from_peer.append(self.client.decode_from_relay(cmd.payload, relay, self.now))
        elif isinstance(cmd, SendFromAllocation):
            self.to_peer.append(cmd)

    def advance(self, until: float) -> None:
        """Run every client and server timer up to ``until`` (absolute seconds)."""
        stuck = 0
        while True:
            deadlines = [t for t in (self.client.poll_timeout(), self.server.poll_timeout())
                         if t is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > until:
                self.now = until
                return
            stuck = stuck + 1 if nxt <= self.now else 0
            if stuck > 100:
                raise AssertionError(f"a deadline at {nxt} is never cleared by handle_timeout")
            self.now = max(self.now, nxt)
            for cmd in self.server.handle_deadline(self.now):
                self.commands.append(cmd)
            self.client.handle_timeout(self.now)
            self.flush()

    def peer_sends(self, peer: Address, payload: bytes) -> None:
        info = self.server.allocation_for(self.client_addr)
        assert info is not None
        for cmd in self.server.handle_peer_traffic(payload, peer, info.port, self.now):
            self._apply(cmd, RELAY)
        self.flush()

    def requests(self, method: int | None = None, since: float = 0.0
                 ) -> list[tuple[float, Message]]:
        out = []
        for when, t in self.sent:
            if t.payload[0] >= 4 or when < since:
                continue
            m = Message.decode(t.payload)
            if method is None or m.method == method:
                out.append((when, m))
        return out

    def take_events(self) -> list[TurnEvent]:
        events, self.events = self.events, []
        return events


def respond(request: Message, klass: MessageClass, attrs: Sequence[Attribute],
            key: bytes | None) -> bytes:
    """The relay's answer to ``request``, signed with ``key`` (None: unsigned)."""
    return Message(request.method, klass, request.transaction_id,
                   list(attrs)).encode(integrity_key=key)


KEY = long_term_key(USERNAME, REALM, PASSWORD)


class AllocationTests(SynchronousTestCase):
    def test_starts_with_binding_to_every_relay_address(self) -> None:
        """REFERENCE 3.3: "send BINDING to every known relay address"."""
        h = Harness(servers=[RELAY, RELAY6], server=make_server(ip6=True))
        first = [(t.dest, Message.decode(t.payload)) for when, t in h.sent[:2]]
        self.assertEqual([d for d, _ in first], [RELAY, RELAY6])
        for _, m in first:
            self.assertEqual((m.method, m.message_class), (Method.BINDING, MessageClass.REQUEST))
            self.assertEqual(m.get(Software), Software("snownet"))

    def test_first_relay_address_to_answer_wins(self) -> None:
        """Whichever relay address answers BINDING first is used for the allocation."""
        h = Harness(servers=[RELAY, RELAY6], server=make_server(ip6=True),
                    answer_only={RELAY6})
        h.answer_only = None
        self.assertEqual(h.client.active_server, RELAY6)
        allocates = [t for _, t in h.sent if Message.decode(t.payload).method == Method.ALLOCATE]
        self.assertTrue(allocates)
        self.assertEqual({t.dest for t in allocates}, {RELAY6})

    def test_allocates_and_learns_candidates(self) -> None:
        """BINDING yields the srflx candidate, Allocate the relayed one (REFERENCE 3.2)."""
        h = Harness()
        info = h.server.allocation_for(CLIENT)
        assert info is not None
        self.assertEqual(info.username, USERNAME)
        kinds = [(e.candidate.kind, e.candidate.address) for e in h.events
                 if isinstance(e, CandidateDiscovered)]
        self.assertEqual(kinds, [(CandidateKind.SRFLX, CLIENT),
                                 (CandidateKind.RELAY, (RELAY_IP, info.port))])
        relay = h.client.relay_candidates[0]
        self.assertEqual(relay.related, CLIENT)
        self.assertTrue(h.client.has_allocation)

    def test_allocate_attributes_and_401_retry(self) -> None:
        """The first Allocate carries no credentials (RFC 5389 10.2.1: "the very first
        request is sent as if there were no authentication"); after 401 it is retried
        with USERNAME, REALM, the relay's NONCE and MESSAGE-INTEGRITY."""
        h = Harness()
        allocates = [m for _, m in h.requests(Method.ALLOCATE)]
        self.assertEqual(len(allocates), 2)
        first, second = allocates
        self.assertEqual(first.get(RequestedTransport), RequestedTransport(17))
        self.assertEqual(first.get(AdditionalAddressFamily),
                         AdditionalAddressFamily(AddressFamily.V6))
        self.assertEqual(first.get(Software), Software("snownet"))
        self.assertIsNone(first.get(Username))
        self.assertIsNone(first.get(Realm))
        self.assertIsNone(first.get(Nonce))
        self.assertIsNone(first.get(MessageIntegrity))
        self.assertEqual(second.get(Username), Username(USERNAME))
        self.assertEqual(second.get(Realm), Realm("firezone"))
        self.assertIsNotNone(second.get(MessageIntegrity))
        nonce = second.get(Nonce)
        assert nonce is not None
        challenge = [c for c in h.commands if isinstance(c, SendMessage)
                     and Message.decode(c.payload).get(ErrorCode) == ErrorCode.of(401)]
        self.assertEqual(Message.decode(challenge[0].payload).get(Nonce), nonce)
        self.assertNotEqual(first.transaction_id, second.transaction_id)

    def test_without_dual_stack_no_additional_family(self) -> None:
        """ADDITIONAL-ADDRESS-FAMILY is only sent when dual stack is asked for."""
        h = Harness(dual_stack=False)
        for _, m in h.requests(Method.ALLOCATE):
            self.assertIsNone(m.get(AdditionalAddressFamily))
        self.assertTrue(h.client.has_allocation)

    def test_dual_stack_relay_gives_two_relay_candidates(self) -> None:
        """A dual-stack relay answers ADDITIONAL-ADDRESS-FAMILY=v6 with two relayed addresses."""
        h = Harness(server=make_server(ip6=True))
        families = sorted(c.is_ipv6 for c in h.client.relay_candidates)
        self.assertEqual(families, [False, True])
        self.assertEqual(h.client.relay_address_for(("2001:db8::99", 1))[0],  # type: ignore[index]
                         RELAY_IP6)

    def test_wrong_password_fails_authentication(self) -> None:
        """A 401 to a request that already carried a NONCE means bad credentials: give up."""
        h = Harness(password="wrong")
        failures = [e for e in h.events if isinstance(e, AllocationFailed)]
        self.assertEqual([f.reason for f in failures], [FailureReason.AUTHENTICATION])
        self.assertEqual(len(h.requests(Method.ALLOCATE)), 2)
        self.assertIsNone(h.client.poll_timeout())
        self.assertIsNone(h.client.credentials)

    def test_stale_nonce_retries_with_new_nonce(self) -> None:
        """RFC 8656 / REFERENCE 3.2: 438 Stale Nonce -> retry with the NONCE of the response."""
        h = Harness()
        h.hold = {Method.REFRESH}
        h.advance(h.now + 300)  # refresh due at lifetime/2
        refresh = h.requests(Method.REFRESH)[-1][1]
        stale = respond(refresh, MessageClass.ERROR,
                        [ErrorCode.of(438), Realm(REALM), Nonce("fresh-nonce")], KEY)
        self.assertTrue(h.client.handle_input(stale, RELAY, h.now))
        h.flush()
        retry = h.requests(Method.REFRESH)[-1][1]
        self.assertNotEqual(retry.transaction_id, refresh.transaction_id)
        self.assertEqual(retry.get(Nonce), Nonce("fresh-nonce"))
        self.assertTrue(verify_integrity(h.sent[-1][1].payload, KEY))

    def test_repeated_challenges_give_up(self) -> None:
        """A relay answering 438 forever does not make the client loop forever."""
        h = Harness()
        h.hold = {Method.REFRESH}
        h.advance(h.now + 300)
        for _ in range(10):
            request = h.requests(Method.REFRESH)[-1][1]
            h.client.handle_input(respond(request, MessageClass.ERROR,
                                          [ErrorCode.of(438), Nonce("n")], KEY), RELAY, h.now)
            h.flush()
            if h.client.failure is not None:
                break
        self.assertEqual(h.client.failure, FailureReason.AUTHENTICATION)

    def test_allocation_mismatch_on_allocate_deletes_and_reallocates(self) -> None:
        """A 437 to Allocate (the relay still holds our socket's allocation) -> delete, allocate."""
        server = make_server()
        Harness(server)
        old = server.allocation_for(CLIENT)
        h = Harness(server, seed=8)  # a restarted client on the same socket
        refreshes = [m for _, m in h.requests(Method.REFRESH)]
        self.assertIn(Lifetime(0), [m.get(Lifetime) for m in refreshes])
        new = server.allocation_for(CLIENT)
        assert old is not None and new is not None
        self.assertTrue(h.client.has_allocation)
        self.assertEqual(h.client.relay_candidates[0].port, new.port)


class TimerTests(SynchronousTestCase):
    def test_request_retransmissions_double_and_give_up_after_8s(self) -> None:
        """RTO 1 s doubling (sends at 0, 1, 3, 7 s); at 8 s the relay counts as unreachable."""
        h = Harness(blackhole=True)
        h.advance(NOW + 20)
        self.assertEqual([when - NOW for when, _ in h.sent], [0.0, 1.0, 3.0, 7.0])
        payloads = {t.payload for _, t in h.sent}
        self.assertEqual(len(payloads), 1, "a retransmission repeats the same transaction")
        failed = [e for e in h.events if isinstance(e, AllocationFailed)]
        self.assertEqual([f.reason for f in failed], [FailureReason.NO_RESPONSE])
        self.assertIsNone(h.client.poll_timeout())

    def test_give_up_happens_exactly_at_8s(self) -> None:
        """Nothing fails at 7.99 s; the failure event comes at 8 s."""
        client = TurnClient([RELAY], USERNAME, PASSWORD, NOW, rng=random.Random(1))
        client.handle_timeout(NOW + 7.99)
        self.assertNotIsInstance(client.poll_event(), AllocationFailed)
        self.assertEqual(client.poll_timeout(), NOW + 8.0)
        client.handle_timeout(NOW + 8.0)
        self.assertIsInstance(client.poll_event(), AllocationFailed)

    def test_unreachable_relay_invalidates_candidates(self) -> None:
        """When an allocated relay stops answering, AllocationFailed and every candidate goes."""
        h = Harness()
        candidates = h.client.srflx_candidates + h.client.relay_candidates
        h.take_events()
        h.blackhole = True
        start = h.now
        h.advance(start + 40)
        events = h.take_events()
        invalidated = [e.candidate for e in events if isinstance(e, CandidateInvalidated)]
        self.assertEqual(sorted(c.address for c in invalidated),
                         sorted(c.address for c in candidates))
        failed = [e for e in events if isinstance(e, AllocationFailed)]
        self.assertEqual(len(failed), 1)
        # The first keepalive BINDING at +25 s gave up 8 s later.
        self.assertEqual(h.client.poll_timeout(), None)
        self.assertFalse(h.client.has_allocation)

    def test_restart_after_failure_allocates_again(self) -> None:
        """restart() starts over with BINDING and reaches a new allocation."""
        h = Harness()
        h.blackhole = True
        h.advance(h.now + 40)
        h.blackhole = False
        h.take_events()
        h.client.restart(h.now)
        h.flush()
        self.assertTrue(h.client.has_allocation)
        kinds = [e.candidate.kind for e in h.events if isinstance(e, CandidateDiscovered)]
        self.assertEqual(kinds, [CandidateKind.SRFLX, CandidateKind.RELAY])

    def test_binding_keepalive_every_25s(self) -> None:
        """REFERENCE 3.3: "send BINDING every 25 s to keep NAT state alive"."""
        h = Harness()
        start = h.now
        h.advance(start + 101)
        times = [when - start for when, _ in h.requests(Method.BINDING, since=start + 0.001)]
        self.assertEqual(times, [25.0, 50.0, 75.0, 100.0])

    def test_sending_channel_data_postpones_keepalive(self) -> None:
        """Our own ChannelData keeps the NAT binding alive, so the keepalive moves back."""
        h = Harness()
        start = h.now
        h.client.bind_channel(PEER, h.now)
        h.flush()
        h.advance(start + 20)
        self.assertIsNotNone(h.client.encode_to_peer(PEER, b"x", h.now))
        h.advance(start + 44)
        self.assertEqual(h.requests(Method.BINDING, since=start + 0.001), [])
        h.advance(start + 46)
        self.assertEqual([w - start for w, _ in h.requests(Method.BINDING, since=start + 0.001)],
                         [45.0])

    def test_refresh_at_half_lifetime(self) -> None:
        """REFERENCE 3.3: "Refresh at lifetime/2" (600 s lifetime -> every 300 s)."""
        h = Harness()
        start = h.now
        h.advance(start + 299.9)
        self.assertEqual(h.requests(Method.REFRESH), [])
        h.advance(start + 901)
        refresh_times = sorted({round(w - start, 6) for w, m in h.requests(Method.REFRESH)
                                if m.get(Nonce) is not None})
        self.assertEqual(refresh_times, [300.0, 600.0, 900.0])
        info = h.server.allocation_for(CLIENT)
        assert info is not None
        self.assertEqual(info.expires_at, start + 900 + 600)
        self.assertTrue(h.client.has_allocation)

    def test_refresh_follows_the_granted_lifetime(self) -> None:
        """The refresh timer follows the LIFETIME the relay granted, not a constant."""
        h = Harness(blackhole=True)
        binding = Message.decode(h.sent[0][1].payload)
        h.client.handle_input(respond(binding, MessageClass.SUCCESS,
                                      [XorMappedAddress(*CLIENT)], None), RELAY, NOW)
        h.flush()
        allocate = h.requests(Method.ALLOCATE)[-1][1]
        h.client.handle_input(respond(allocate, MessageClass.SUCCESS,
                                      [XorRelayedAddress(RELAY_IP, 50000),
                                       XorMappedAddress(*CLIENT), Lifetime(100)], KEY),
                              RELAY, NOW)
        self.assertTrue(h.client.has_allocation)
        self.assertEqual(h.client.poll_timeout(), NOW + 25)  # the keepalive comes first
        h.blackhole = False
        h.advance(NOW + 50.5)
        self.assertEqual([w - NOW for w, _ in h.requests(Method.REFRESH)][:1], [50.0])


class ChannelTests(SynchronousTestCase):
    def test_bind_and_relay_both_ways(self) -> None:
        """A bound channel carries data to the peer and back through the real relay."""
        h = Harness()
        h.take_events()
        self.assertIsNone(h.client.encode_to_peer(PEER, b"early", h.now))
        h.flush()
        self.assertEqual(h.take_events(), [ChannelBound(PEER, FIRST_CHANNEL)])
        wrapped = h.client.encode_to_peer(PEER, b"hello peer", h.now)
        assert wrapped is not None
        datagram, relay = wrapped
        self.assertEqual(relay, RELAY)
        for cmd in h.server.handle_client_input(datagram, CLIENT, h.now):
            h._apply(cmd, RELAY)
        info = h.server.allocation_for(CLIENT)
        assert info is not None
        self.assertEqual(h.to_peer, [SendFromAllocation(b"hello peer", info.port, PEER)])
        h.peer_sends(PEER, b"hello client")
        self.assertEqual(h.from_peer, [Relayed(PEER, b"hello client", (RELAY_IP, info.port))])

    def test_channel_data_only_from_the_relay(self) -> None:
        """ChannelData from anywhere but the relay's 3478 address is not unwrapped."""
        h = Harness()
        h.client.bind_channel(PEER, h.now)
        h.flush()
        data = encode_channel_data(FIRST_CHANNEL, b"x")
        self.assertIsNone(h.client.decode_from_relay(data, (RELAY_IP, 3479), h.now))
        self.assertIsNone(h.client.decode_from_relay(data, PEER, h.now))
        self.assertIsNotNone(h.client.decode_from_relay(data, RELAY, h.now))
        self.assertIsNone(h.client.decode_from_relay(encode_channel_data(FIRST_CHANNEL + 1, b"x"),
                                                     RELAY, h.now))

    def test_numbers_are_round_robin(self) -> None:
        """REFERENCE 3.3: channel numbers are allocated round-robin from 0x4000."""
        h = Harness()
        h.take_events()
        for peer in (PEER, PEER2, ("192.0.2.3", 1)):
            h.client.bind_channel(peer, h.now)
        h.flush()
        self.assertEqual([e.number for e in h.take_events() if isinstance(e, ChannelBound)],
                         [0x4000, 0x4001, 0x4002])

    def test_numbers_wrap_and_are_held_before_reuse(self) -> None:
        """After 0x4FFF numbering wraps to 0x4000, but only once its binding has been gone
        for the 5 min rebind hold (10 min lifetime + 5 min)."""
        h = Harness()
        start = h.now
        count = LAST_CHANNEL - FIRST_CHANNEL + 1
        peers = [(f"192.0.{2 + i // 250}.{1 + i % 250}", 9) for i in range(count)]
        for peer in peers:
            h.client.bind_channel(peer, h.now)
        h.flush()
        self.assertEqual(h.server.num_bound_channels, count)
        newcomer = ("198.18.0.1", 9)
        h.client.bind_channel(newcomer, h.now)
        h.flush()
        self.assertIsNone(h.client.channel_to(newcomer, h.now), "all numbers are taken")
        h.advance(start + CHANNEL_LIFETIME + CHANNEL_REBIND_HOLD - 1)
        h.client.bind_channel(newcomer, h.now)
        h.flush()
        self.assertIsNone(h.client.channel_to(newcomer, h.now), "still in the rebind hold")
        h.advance(start + CHANNEL_LIFETIME + CHANNEL_REBIND_HOLD + 1)
        h.take_events()
        h.client.bind_channel(newcomer, h.now)
        h.flush()
        self.assertEqual(h.client.channel_to(newcomer, h.now), FIRST_CHANNEL)
        self.assertEqual(h.take_events(), [ChannelBound(newcomer, FIRST_CHANNEL)])

    def test_expired_channel_is_rebound_with_the_same_number(self) -> None:
        """Within the hold the relay ties number and peer, so re-binding reuses the number."""
        h = Harness()
        start = h.now
        h.client.bind_channel(PEER, h.now)
        h.client.bind_channel(PEER2, h.now)
        h.flush()
        h.advance(start + CHANNEL_LIFETIME + 10)
        self.assertIsNone(h.client.channel_to(PEER, h.now), "expired after 10 min")
        self.assertIsNone(h.client.encode_to_peer(PEER, b"x", h.now))
        h.flush()
        self.assertEqual(h.client.channel_to(PEER, h.now), FIRST_CHANNEL)
        self.assertEqual(
            [m.get(ChannelNumber) for _, m in h.requests(Method.CHANNEL_BIND, since=start + 1)
             if m.get(Nonce)], [ChannelNumber(FIRST_CHANNEL)])

    def test_refresh_only_channels_that_received_data(self) -> None:
        """REFERENCE 3.3: "channels are refreshed after 5 min, but only if data was received"."""
        h = Harness()
        start = h.now
        h.client.bind_channel(PEER, h.now)
        h.client.bind_channel(PEER2, h.now)
        h.flush()
        h.advance(start + 100)
        h.peer_sends(PEER, b"traffic")
        h.advance(start + CHANNEL_REFRESH_AFTER - 0.5)
        self.assertEqual(h.requests(Method.CHANNEL_BIND, since=start + 1), [])
        h.advance(start + CHANNEL_REFRESH_AFTER + 1)
        binds = h.requests(Method.CHANNEL_BIND, since=start + 1)
        self.assertEqual({m.get(XorPeerAddress) for _, m in binds}, {XorPeerAddress(*PEER)})
        self.assertEqual({w - start for w, _ in binds}, {CHANNEL_REFRESH_AFTER})
        channels = {c.peer: c for c in h.server.channels()}
        self.assertEqual(channels[PEER].expires_at, start + CHANNEL_REFRESH_AFTER + 600)
        self.assertEqual(channels[PEER2].expires_at, start + 600)
        # Without new traffic the refreshed channel is not refreshed again.
        h.advance(start + 2 * CHANNEL_REFRESH_AFTER + 10)
        self.assertEqual(len(h.requests(Method.CHANNEL_BIND, since=start + 1)), len(binds))

    def test_bind_before_allocation_is_buffered(self) -> None:
        """A binding asked for before the allocation exists is made once it does."""
        h = Harness(blackhole=True)
        h.client.bind_channel(PEER, NOW)
        h.blackhole = False
        h.advance(NOW + 1.5)  # the BINDING retransmission gets through
        self.assertTrue(h.client.has_allocation)
        self.assertIn(ChannelBound(PEER, FIRST_CHANNEL), h.events)


class RecoveryTests(SynchronousTestCase):
    def test_new_credentials_reallocate(self) -> None:
        """update_credentials drops the old allocation and allocates with the new ones."""
        server = make_server()
        h = Harness(server)
        old = h.client.relay_candidates[0]
        h.take_events()
        user2, pass2 = turn_credentials("b" * 43 + "=", SECRET, int(NOW) + 90_000)
        h.client.update_credentials(user2, pass2, h.now)
        h.flush()
        events = h.take_events()
        self.assertEqual(events[0], CandidateInvalidated(old))
        discovered = [e.candidate for e in events if isinstance(e, CandidateDiscovered)]
        self.assertEqual([c.kind for c in discovered], [CandidateKind.RELAY])
        info = server.allocation_for(CLIENT)
        assert info is not None
        self.assertEqual(info.username, user2)
        self.assertEqual(discovered[0].port, info.port)
        self.assertEqual(h.client.credentials, (user2, pass2))

    def test_same_credentials_change_nothing(self) -> None:
        """Re-sending the same credentials is a no-op."""
        h = Harness()
        h.take_events()
        sent = len(h.sent)
        h.client.update_credentials(USERNAME, PASSWORD, h.now)
        h.flush()
        self.assertEqual((len(h.sent), h.take_events()), (sent, []))

    def test_relay_restart_recovers_via_438_and_437(self) -> None:
        """A restarted relay forgets nonce and allocation: REFRESH gets 438, then 437, and
        the client allocates anew and announces the new relayed candidate."""
        h = Harness()
        old = h.client.relay_candidates[0]
        h.take_events()
        h.server = make_server(seed=99)
        h.advance(h.now + 300)
        codes = [Message.decode(c.payload).get(ErrorCode) for c in h.commands
                 if isinstance(c, SendMessage) and c.payload[0] < 4]
        self.assertIn(ErrorCode.of(438), codes)
        self.assertIn(ErrorCode.of(437), codes)
        events = h.take_events()
        self.assertIn(CandidateInvalidated(old), events)
        new = [e.candidate for e in events if isinstance(e, CandidateDiscovered)]
        info = h.server.allocation_for(CLIENT)
        assert info is not None
        self.assertEqual([c.address for c in new], [(RELAY_IP, info.port)])

    def test_437_on_refresh_reallocates(self) -> None:
        """RFC 8656: 437 to REFRESH means no allocation: allocate again."""
        h = Harness()
        h.hold = {Method.REFRESH}
        h.advance(h.now + 300)
        refresh = h.requests(Method.REFRESH)[-1][1]
        h.take_events()
        mismatch = respond(refresh, MessageClass.ERROR, [ErrorCode.of(437)], KEY)
        self.assertTrue(h.client.handle_input(mismatch, RELAY, h.now))
        h.flush()
        self.assertIsInstance(h.take_events()[0], CandidateInvalidated)
        self.assertEqual(h.requests(Method.ALLOCATE)[-1][0], h.now)

    def test_unsigned_or_forged_responses_are_dropped(self) -> None:
        """Responses failing MESSAGE-INTEGRITY are consumed but change nothing."""
        h = Harness(blackhole=True)
        binding = Message.decode(h.sent[0][1].payload)
        h.client.handle_input(respond(binding, MessageClass.SUCCESS,
                                      [XorMappedAddress(*CLIENT)], None), RELAY, NOW)
        h.flush()
        allocate = h.requests(Method.ALLOCATE)[-1][1]
        success = [XorRelayedAddress(RELAY_IP, 50000), Lifetime(600)]
        forged = respond(allocate, MessageClass.SUCCESS, success, b"not the key")
        unsigned = respond(allocate, MessageClass.SUCCESS, success, None)
        self.assertTrue(h.client.handle_input(forged, RELAY, NOW))
        self.assertTrue(h.client.handle_input(unsigned, RELAY, NOW))
        self.assertFalse(h.client.has_allocation)
        self.assertEqual(h.client.stats.dropped_integrity, 2)
        other_tid = Message(Method.ALLOCATE, MessageClass.SUCCESS, b"\x01" * 12, success)
        self.assertFalse(h.client.handle_input(other_tid.encode(integrity_key=KEY), RELAY, NOW))
        good = respond(allocate, MessageClass.SUCCESS, success, KEY)
        self.assertFalse(h.client.handle_input(good, PEER, NOW), "not from the relay")
        self.assertTrue(h.client.handle_input(good, RELAY, NOW))
        self.assertTrue(h.client.has_allocation)
        self.assertFalse(h.client.handle_input(good, RELAY, NOW), "transaction is over")


class FuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.client.bind_channel(PEER, self.h.now)
        self.h.flush()

    @settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        """Arbitrary datagrams from the relay neither raise nor break the allocation."""
        c = self.h.client
        c.handle_input(data, RELAY, self.h.now)
        c.decode_from_relay(data, RELAY, self.h.now)
        c.handle_timeout(self.h.now)
        self.assertTrue(c.has_allocation)

    @settings(max_examples=200)
    @given(st.integers(0, 19), st.binary(min_size=1, max_size=8))
    def test_mutated_stun_never_raises(self, offset: int, junk: bytes) -> None:
        """Valid-looking STUN headers followed by junk never raise."""
        c = self.h.client
        req = Message.decode(self.h.sent[-1][1].payload)
        good = respond(req, MessageClass.SUCCESS, [Lifetime(600)], KEY)
        mutated = good[:offset] + junk + good[offset + len(junk):]
        c.handle_input(mutated, RELAY, self.h.now)
        c.handle_input(good[:20] + junk, RELAY, self.h.now)
