"""Two ICE agents back to back through an in-memory network (loss, reordering, NAT) and,
for relayed paths, two TURN clients and one in-process TurnServer."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import ice_credentials, turn_credentials
from firezone.relay.commands import SendFromAllocation, SendMessage
from firezone.relay.server import TurnServer
from firezone.tunnel.ice import (
    CLIENT_DEFAULT,
    CLIENT_IDLE,
    CLIENT_PROFILE,
    IDLE_AFTER,
    SERVER_PROFILE,
    Connected,
    Disconnected,
    Failed,
    IceAgent,
    IceCreds,
    IceEvent,
    IceProfile,
    IceState,
    NominatedPairChanged,
    PairState,
    RoleChanged,
    credentials_for,
)
from firezone.tunnel.turn_client import (
    Address,
    CandidateDiscovered,
    CandidateInvalidated,
    Transmit,
    TurnClient,
)
from firezone.wire.candidate import Candidate, CandidateKind
from firezone.wire.stun import Message, MessageClass, UseCandidate

SECRET = "7a1c2e4f6b8d0a2c4e6f8b0d2a4c6e8f0b2d4a6c8e0f2b4d6a8c0e2f4b6d8a0c"
NOW = 1_700_000_000.0
RELAY_IP = "203.0.113.10"
RELAY: Address = (RELAY_IP, 3478)
CREDS = ice_credentials("client-id", "client-pk", "gateway-id", "gateway-pk")

Datagram = tuple[Address, Address, bytes]


class Nat:
    """Endpoint-independent mapping, address-dependent filtering (a typical home router)."""

    def __init__(self, public_ip: str) -> None:
        self.public_ip = public_ip
        self.mapping: dict[Address, Address] = {}
        self.reverse: dict[Address, Address] = {}
        self.permissions: set[tuple[Address, str]] = set()

    def outbound(self, private: Address, dst: Address) -> Address:
        public = self.mapping.get(private)
        if public is None:
            public = (self.public_ip, 40000 + len(self.mapping))
            self.mapping[private] = public
            self.reverse[public] = private
        self.permissions.add((private, dst[0]))
        return public

    def inbound(self, public: Address, src: Address) -> Address | None:
        private = self.reverse.get(public)
        if private is None or (private, src[0]) not in self.permissions:
            return None
        return private


class Host:
    """What the node will do: one socket, one agent, maybe one TURN client; demux in the
    reference order (relay STUN, relay ChannelData, ICE checks, then "WireGuard")."""

    def __init__(self, net: Network, name: str, addr: Address, agent: IceAgent, *,
                 nat: Nat | None = None, relay: bool = False, seed: int = 0) -> None:
        self.net = net
        self.name = name
        self.addr = addr
        self.agent = agent
        self.nat = nat
        self.peer: Host | None = None
        self.events: list[tuple[float, IceEvent]] = []
        self.sent: list[tuple[float, Transmit]] = []
        self.app_received: list[tuple[bytes, Address, Address | None]] = []
        self.relay_not_ready = 0
        self.turn: TurnClient | None = None
        if relay:
            username, password = turn_credentials(f"{name}-public-key", SECRET, int(NOW) + 10**6)
            self.turn = TurnClient([RELAY], username, password, net.now,
                                   rng=random.Random(seed + 100))

    def add_host_candidate(self) -> None:
        candidate = Candidate.host(self.addr)
        self.agent.add_local_candidate(candidate, self.net.now)
        self.signal(candidate)

    def signal(self, candidate: Candidate) -> None:
        """Trickle over the portal: as SDP text, decoded on the other side."""
        assert self.peer is not None
        self.peer.agent.add_remote_candidate(Candidate.decode(candidate.encode()), self.net.now)

    def drain(self) -> None:
        now = self.net.now
        if self.turn is not None:
            while (t := self.turn.poll_transmit()) is not None:
                self.net.send(self, t.dest, t.payload)
            while (e := self.turn.poll_event()) is not None:
                assert self.peer is not None
                if isinstance(e, CandidateDiscovered):
                    self.agent.add_local_candidate(e.candidate, now)
                    self.signal(e.candidate)
                elif isinstance(e, CandidateInvalidated):
                    self.agent.invalidate_local_candidate(e.candidate, now)
                    self.peer.agent.invalidate_remote_candidate(e.candidate, now)
        while (t := self.agent.poll_transmit()) is not None:
            self.sent.append((now, t))
            self._send_agent(t)
        while (ev := self.agent.poll_event()) is not None:
            self.events.append((now, ev))

    def _send_agent(self, t: Transmit) -> None:
        if t.via_relay is None:
            self.net.send(self, t.dest, t.payload)
            return
        assert self.turn is not None
        assert t.via_relay in [c.address for c in self.turn.relay_candidates]
        wrapped = self.turn.encode_to_peer(t.dest, t.payload, self.net.now)
        if wrapped is None:
            self.relay_not_ready += 1
        else:
            self.net.send(self, wrapped[1], wrapped[0])

    def receive(self, data: bytes, src: Address) -> None:
        now = self.net.now
        if self.turn is not None and self.turn.matches_server(src):
            if data[0] < 4 and self.turn.handle_input(data, src, now):
                return
            if 64 <= data[0] <= 79:
                relayed = self.turn.decode_from_relay(data, src, now)
                if relayed is not None and not self.agent.handle_input(
                    relayed.payload, relayed.peer, now, via_relay=relayed.relay_address
                ):
                    self.app_received.append((relayed.payload, relayed.peer,
                                              relayed.relay_address))
                return
        if not self.agent.handle_input(data, src, now):
            self.app_received.append((data, src, None))

    def send_app(self, payload: bytes) -> None:
        """Send application data on the selected path (what WireGuard will do)."""
        selected = self.agent.selected
        assert selected is not None
        self._send_agent(Transmit(payload, selected.remote.address, selected.via_relay))
        self.agent.note_traffic(self.net.now)

    def selected_kinds(self) -> tuple[CandidateKind, CandidateKind] | None:
        s = self.agent.selected
        return None if s is None else (s.local.kind, s.remote.kind)

    def of(self, kind: type) -> list[tuple[float, IceEvent]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


class Network:
    def __init__(self, *, relay: bool = False, seed: int = 0) -> None:
        self.now = NOW
        self.rng = random.Random(seed)
        self.hosts: list[Host] = []
        self.server = TurnServer(IPv4Address(RELAY_IP), None, SECRET,
                                 rng=random.Random(seed + 1)) if relay else None
        self.queue: list[Datagram] = []
        self.drop: Callable[[Address, Address, bytes], bool] = lambda s, d, p: False
        self.loss = 0.0
        self.reorder = False
        self.delivered = 0

    def pair(self, a_addr: Address, b_addr: Address, *, a_nat: Nat | None = None,
             b_nat: Nat | None = None, relay: bool = False,
             a_creds: tuple[IceCreds, IceCreds] | None = None,
             b_creds: tuple[IceCreds, IceCreds] | None = None,
             a_controlling: bool = True, b_controlling: bool = False,
             a_profile: IceProfile = CLIENT_PROFILE, b_profile: IceProfile = SERVER_PROFILE,
             host_candidates: bool = True) -> tuple[Host, Host]:
        """A client-like host A and gateway-like host B, candidates trickled to each other."""
        la, ra = a_creds or credentials_for(CREDS, initiator=True)
        lb, rb = b_creds or credentials_for(CREDS, initiator=False)
        a = Host(self, "a", a_addr, IceAgent(la, ra, controlling=a_controlling,
                                              rng=random.Random(11), profile=a_profile),
                 nat=a_nat, relay=relay, seed=1)
        b = Host(self, "b", b_addr, IceAgent(lb, rb, controlling=b_controlling,
                                              rng=random.Random(22), profile=b_profile),
                 nat=b_nat, relay=relay, seed=2)
        a.peer, b.peer = b, a
        self.hosts += [a, b]
        if host_candidates:
            a.add_host_candidate()
            b.add_host_candidate()
        self.pump()
        return a, b

    # -- the wire ------------------------------------------------------------------------

    def send(self, host: Host, dst: Address, payload: bytes) -> None:
        src = host.nat.outbound(host.addr, dst) if host.nat is not None else host.addr
        self.queue.append((src, dst, payload))

    def _route(self, src: Address, dst: Address, payload: bytes) -> None:
        if self.drop(src, dst, payload) or (self.loss and self.rng.random() < self.loss):
            return
        self.delivered += 1
        server = self.server
        if server is not None and dst == RELAY:
            commands = server.handle_client_input(payload, src, self.now)
        elif server is not None and dst[0] == RELAY_IP:
            commands = server.handle_peer_traffic(payload, src, dst[1], self.now)
        else:
            for host in self.hosts:
                if host.nat is None and host.addr == dst:
                    host.receive(payload, src)
                elif host.nat is not None and host.nat.public_ip == dst[0]:
                    private = host.nat.inbound(dst, src)
                    if private == host.addr:
                        host.receive(payload, src)
            return
        for cmd in commands:
            if isinstance(cmd, SendMessage):
                self.queue.append((RELAY, cmd.recipient, cmd.payload))
            elif isinstance(cmd, SendFromAllocation):
                self.queue.append(((RELAY_IP, cmd.port), cmd.recipient, cmd.payload))

    def pump(self) -> None:
        for _ in range(10_000):
            for host in self.hosts:
                host.drain()
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            if self.reorder:
                self.rng.shuffle(batch)
            for src, dst, payload in batch:
                self._route(src, dst, payload)
        raise AssertionError("the network never went quiet")

    def run(self, duration: float, until: Callable[[], bool] | None = None) -> None:
        """Advance time to ``now + duration`` firing every timer (or stop once ``until``)."""
        end = self.now + duration
        self.pump()
        stuck = 0
        while not (until is not None and until()):
            deadlines = [d for h in self.hosts for d in (
                h.agent.poll_timeout(), h.turn.poll_timeout() if h.turn else None)
                if d is not None]
            if self.server is not None and (d := self.server.poll_timeout()) is not None:
                deadlines.append(d)
            nxt = min(deadlines, default=None)
            if nxt is None or nxt > end:
                self.now = end
                return
            stuck = stuck + 1 if nxt <= self.now else 0
            if stuck > 100:
                raise AssertionError(f"a deadline at {nxt} is never cleared by handle_timeout")
            self.now = max(self.now, nxt)
            for host in self.hosts:
                if (d := host.agent.poll_timeout()) is not None and d <= self.now:
                    host.agent.handle_timeout(self.now)
                if host.turn is not None and (d := host.turn.poll_timeout()) is not None \
                        and d <= self.now:
                    host.turn.handle_timeout(self.now)
            if self.server is not None:
                self.server.handle_deadline(self.now)
            self.pump()


def connected(*hosts: Host) -> Callable[[], bool]:
    return lambda: all(h.agent.state is IceState.CONNECTED for h in hosts)


LAN_A: Address = ("10.0.0.1", 52625)
LAN_B: Address = ("10.0.0.2", 52625)
PUBLIC_B: Address = ("203.0.113.2", 52625)


def relayed_only(src: Address, dst: Address, payload: bytes) -> bool:
    """Drop everything except client <-> relay:3478 and relay port <-> relay port."""
    if src == RELAY or dst == RELAY:
        return False
    return not (src[0] == RELAY_IP and dst[0] == RELAY_IP)


class HostPathTests(SynchronousTestCase):
    def test_host_to_host(self) -> None:
        """On one LAN both agents connect over their host candidates within a round trip."""
        net = Network()
        a, b = net.pair(LAN_A, LAN_B)
        net.run(1.0, until=connected(a, b))
        self.assertEqual(net.now, NOW)
        self.assertEqual(a.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        self.assertEqual(b.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        ((_, event),) = a.of(Connected)
        assert isinstance(event, Connected)
        self.assertEqual((event.dest, event.via_relay), (LAN_B, None))
        a.send_app(b"wireguard")
        net.pump()
        self.assertEqual(b.app_received, [(b"wireguard", LAN_A, None)])

    def test_checks_survive_loss_and_reordering(self) -> None:
        """With 30 % loss and every batch shuffled, both sides still agree on one path."""
        for seed in range(5):
            net = Network(seed=seed)
            net.loss = 0.3
            net.reorder = True
            a, b = net.pair(LAN_A, LAN_B)
            net.run(CLIENT_DEFAULT.timeout - 1, until=connected(a, b))
            self.assertEqual(a.agent.state, IceState.CONNECTED, f"seed {seed}")
            self.assertEqual(b.agent.state, IceState.CONNECTED, f"seed {seed}")

    def test_wrong_credentials_never_connect(self) -> None:
        """Peers whose passwords do not match never answer each other: every check is
        counted and dropped, and both sides fail after the ICE timeout."""
        net = Network()
        local_b, remote_b = credentials_for(CREDS, initiator=False)
        wrong = (IceCreds(local_b.ufrag, "not-the-password"), IceCreds(remote_b.ufrag, "nor-this"))
        a, b = net.pair(LAN_A, LAN_B, b_creds=wrong, b_profile=CLIENT_PROFILE)
        net.run(30)
        self.assertGreater(a.agent.stats.bad_integrity, 0)
        self.assertGreater(b.agent.stats.bad_integrity, 0)
        self.assertEqual(a.of(Connected) + b.of(Connected), [])
        self.assertEqual(a.agent.stats.responses_sent + b.agent.stats.responses_sent, 0)
        self.assertEqual([t - NOW for t, _ in a.of(Failed)], [CLIENT_DEFAULT.timeout])
        self.assertEqual([t - NOW for t, _ in b.of(Failed)], [CLIENT_DEFAULT.timeout])


class RoleConflictPathTests(SynchronousTestCase):
    def _both(self, controlling: bool) -> None:
        net = Network()
        a, b = net.pair(LAN_A, LAN_B, a_controlling=controlling, b_controlling=controlling)
        net.run(2.0, until=connected(a, b))
        self.assertEqual(a.agent.state, IceState.CONNECTED)
        self.assertEqual(b.agent.state, IceState.CONNECTED)
        winner, loser = sorted((a, b), key=lambda h: h.agent.tie_breaker, reverse=True)
        self.assertTrue(winner.agent.controlling, "the larger tie-breaker ends up controlling")
        self.assertFalse(loser.agent.controlling)
        switched = loser if controlling else winner
        self.assertEqual([e for _, e in switched.of(RoleChanged)],
                         [RoleChanged(not controlling)])
        self.assertGreater(a.agent.stats.role_conflicts + b.agent.stats.role_conflicts, 0)

    def test_both_controlling(self) -> None:
        """RFC 8445 7.3.1.1: two controlling agents resolve by tie-breaker."""
        self._both(True)

    def test_both_controlled(self) -> None:
        """Two controlled agents resolve by tie-breaker too."""
        self._both(False)


class NatPathTests(SynchronousTestCase):
    def test_server_reflexive_path_through_nat(self) -> None:
        """A behind a NAT learns its srflx address from the relay; B reaches it there."""
        net = Network(relay=True)
        nat = Nat("198.51.100.1")
        a, b = net.pair(LAN_A, PUBLIC_B, a_nat=nat, relay=True)
        net.run(5.0, until=connected(a, b))
        public_a = nat.mapping[LAN_A]
        srflx = [c for c in a.agent.local_candidates() if c.kind is CandidateKind.SRFLX]
        self.assertEqual([c.address for c in srflx], [public_a])
        self.assertEqual(a.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        b_selected = b.agent.selected
        assert b_selected is not None
        self.assertEqual((b_selected.remote.address, b_selected.remote.kind),
                         (public_a, CandidateKind.SRFLX))
        self.assertIsNone(b_selected.via_relay)
        b.send_app(b"through the nat")
        net.pump()
        self.assertEqual(a.app_received, [(b"through the nat", PUBLIC_B, None)])

    def test_peer_reflexive_when_srflx_is_not_signalled(self) -> None:
        """Without a srflx candidate, B learns A's NAT address from A's check (prflx)."""
        net = Network()
        nat = Nat("198.51.100.1")
        a, b = net.pair(LAN_A, PUBLIC_B, a_nat=nat)
        net.run(5.0, until=connected(a, b))
        b_selected = b.agent.selected
        assert b_selected is not None
        self.assertEqual((b_selected.remote.kind, b_selected.remote.address),
                         (CandidateKind.PRFLX, nat.mapping[LAN_A]))
        self.assertGreaterEqual(b.agent.stats.prflx_discovered, 1)


class RelayPathTests(SynchronousTestCase):
    def test_relay_to_relay(self) -> None:
        """With every direct path blocked, both sides connect relay to relay through one
        in-process TURN server, and application data crosses it both ways."""
        net = Network(relay=True)
        net.drop = relayed_only
        a, b = net.pair(LAN_A, LAN_B, relay=True)
        net.run(10.0, until=connected(a, b))
        self.assertEqual(a.selected_kinds(), (CandidateKind.RELAY, CandidateKind.RELAY))
        self.assertEqual(b.selected_kinds(), (CandidateKind.RELAY, CandidateKind.RELAY))
        assert a.turn is not None and b.turn is not None
        a_relay = a.turn.relay_candidates[0].address
        b_relay = b.turn.relay_candidates[0].address
        ((_, event),) = a.of(Connected)
        assert isinstance(event, Connected)
        self.assertEqual((event.via_relay, event.dest), (a_relay, b_relay))
        self.assertIsNotNone(a.turn.channel_to(b_relay, net.now))
        self.assertIsNotNone(b.turn.channel_to(a_relay, net.now))
        a.send_app(b"ping")
        net.pump()
        b.send_app(b"pong")
        net.pump()
        self.assertEqual(b.app_received, [(b"ping", a_relay, b_relay)])
        self.assertEqual(a.app_received, [(b"pong", b_relay, a_relay)])

    def test_direct_pairs_fail_relay_pairs_live_on(self) -> None:
        """Blocked direct pairs fail after the ICE timeout; the relayed pair stays selected."""
        net = Network(relay=True)
        net.drop = relayed_only
        a, _ = net.pair(LAN_A, LAN_B, relay=True)
        net.run(60.0)
        states = {(p.local.kind, p.remote.kind): p.state for p in a.agent.pairs()}
        self.assertEqual(states[(CandidateKind.HOST, CandidateKind.HOST)], PairState.FAILED)
        self.assertEqual(states[(CandidateKind.RELAY, CandidateKind.RELAY)], PairState.SUCCEEDED)
        self.assertEqual(a.agent.state, IceState.CONNECTED)
        self.assertEqual(a.of(Disconnected), [])


class NominationTests(SynchronousTestCase):
    def test_switches_to_a_better_pair(self) -> None:
        """Connected over the relay first, the controlling side moves both ends to the
        host pair once its (retransmitted) check succeeds: the highest-priority valid pair."""
        net = Network(relay=True)
        net.drop = relayed_only
        a, b = net.pair(LAN_A, LAN_B, relay=True)
        net.run(3.0, until=connected(a, b))
        self.assertEqual(a.selected_kinds(), (CandidateKind.RELAY, CandidateKind.RELAY))
        net.drop = lambda s, d, p: False
        net.run(5.0)
        self.assertEqual(a.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        self.assertEqual(b.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        for host in (a, b):
            changes = [e for _, e in host.of(NominatedPairChanged)]
            self.assertEqual(len(changes), 1)
            assert isinstance(changes[0], NominatedPairChanged)
            self.assertIsNone(changes[0].via_relay)
            valid = [p for p in host.agent.pairs() if p.state is PairState.SUCCEEDED]
            selected = host.agent.selected
            assert selected is not None
            self.assertEqual(selected.priority, max(p.priority for p in valid))

    def test_use_candidate_only_on_the_selected_pair(self) -> None:
        """Once moved, the controlling side stops nominating the old pair."""
        net = Network(relay=True)
        net.drop = relayed_only
        a, b = net.pair(LAN_A, LAN_B, relay=True)
        net.run(3.0, until=connected(a, b))
        net.drop = lambda s, d, p: False
        net.run(5.0)
        switch_time = a.of(NominatedPairChanged)[0][0]
        later = [t for when, t in a.sent if when > switch_time + 0.01
                 and Message.decode(t.payload).message_class is MessageClass.REQUEST]
        self.assertTrue(later)
        for t in later:
            nominating = Message.decode(t.payload).get(UseCandidate) is not None
            self.assertEqual(nominating, t.via_relay is None, t)


class FailoverTests(SynchronousTestCase):
    def test_invalidated_candidates_stop_being_used(self) -> None:
        """After A's relayed candidate is invalidated (on A and at B), A sends nothing through
        that relay address and B sends nothing to it; the connection moves to another pair."""
        net = Network(relay=True)
        net.drop = relayed_only
        a, b = net.pair(LAN_A, LAN_B, relay=True)
        net.run(3.0, until=connected(a, b))
        self.assertEqual(a.selected_kinds(), (CandidateKind.RELAY, CandidateKind.RELAY))
        assert a.turn is not None
        relay = a.turn.relay_candidates[0]
        net.drop = lambda s, d, p: False
        self.assertTrue(a.agent.invalidate_local_candidate(relay, net.now))
        self.assertTrue(b.agent.invalidate_remote_candidate(relay, net.now))
        a_mark, b_mark = len(a.sent), len(b.sent)
        net.run(30.0)
        a_after = [t for _, t in a.sent[a_mark:]]
        b_after = [t for _, t in b.sent[b_mark:]]
        self.assertTrue(a_after and b_after)
        self.assertNotIn(relay.address, [t.via_relay for t in a_after])
        self.assertNotIn(relay.address, [t.dest for t in b_after])
        self.assertNotIn(relay.address, [c.address for c in b.agent.remote_candidates()])
        for host in (a, b):
            # No other pair had been validated yet (direct traffic was blocked until now).
            after = [e for _, e in host.events[1:]]
            self.assertEqual([type(e) for e in after], [Disconnected, Connected])
            self.assertEqual(host.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))

    def test_invalidating_every_remote_candidate_disconnects(self) -> None:
        """With no remote candidate left there is no pair, hence Disconnected."""
        net = Network()
        a, _ = net.pair(LAN_A, LAN_B)
        net.run(1.0)
        self.assertTrue(a.agent.invalidate_remote_candidate(Candidate.host(LAN_B), net.now))
        self.assertFalse(a.agent.invalidate_remote_candidate(Candidate.host(LAN_B), net.now))
        net.pump()
        self.assertEqual(len(a.of(Disconnected)), 1)
        self.assertEqual(a.agent.pairs(), [])
        self.assertEqual(a.agent.state, IceState.DISCONNECTED)

    def test_lost_relay_is_invalidated_through_the_turn_client(self) -> None:
        """When A's relay stops answering, the relayed pairs lose consent, then the TURN
        client's keepalive times out and invalidates the relayed candidate, which leaves A's
        agent and B's view of it; the host path is untouched."""
        net = Network(relay=True)
        a, b = net.pair(LAN_A, LAN_B, relay=True)
        net.run(2.0)
        assert a.turn is not None
        relay = a.turn.relay_candidates[0]
        net.drop = lambda s, d, p: s == LAN_A and d[0] == RELAY_IP
        net.run(120.0)
        self.assertNotIn(relay, a.agent.local_candidates())
        self.assertNotIn(relay.address, [c.address for c in b.agent.remote_candidates()])
        self.assertEqual(a.selected_kinds(), (CandidateKind.HOST, CandidateKind.HOST))
        self.assertEqual(a.agent.state, IceState.CONNECTED)

    def test_consent_loss_disconnects_then_fails(self) -> None:
        """When the path dies, consent checks go unanswered: Disconnected once the check is
        ``timeout`` old, and Failed as nothing is left (client profile: 16.5 s)."""
        net = Network()
        a, b = net.pair(LAN_A, LAN_B)
        net.run(1.0)
        last_ok = net.now
        net.drop = lambda s, d, p: True
        for _ in range(60):  # application traffic keeps the active (non-idle) profile
            if a.agent.selected is not None:
                a.send_app(b"x")
            net.run(1.0)
        ((disconnected_at, _),) = a.of(Disconnected)
        ((failed_at, _),) = a.of(Failed)
        self.assertEqual(failed_at, disconnected_at)
        # The first unanswered consent check goes out at most one keepalive after the last
        # success; the pair fails ``timeout`` after it.
        self.assertGreaterEqual(disconnected_at - last_ok, CLIENT_DEFAULT.timeout)
        self.assertLessEqual(disconnected_at - last_ok,
                             CLIENT_DEFAULT.keepalive + CLIENT_DEFAULT.timeout)
        self.assertEqual(b.of(Failed), [], "the gateway profile waits much longer")


class IdleTests(SynchronousTestCase):
    def _consent_times(self, host: Host, start: float, end: float) -> list[float]:
        return [when for when, t in host.sent if start <= when <= end
                and Message.decode(t.payload).message_class is MessageClass.REQUEST]

    def test_idle_after_20s_without_traffic(self) -> None:
        """A connection without application traffic for 20 s switches to the idle profile
        (consent every 25 s); traffic switches it back (every 5 s)."""
        net = Network()
        a, _ = net.pair(LAN_A, LAN_B)
        net.run(1.0)
        connected_at = a.of(Connected)[0][0]
        self.assertEqual(IDLE_AFTER, 20.0)  # REFERENCE 5.4 MAX_IDLE
        net.run(connected_at + 19.99 - net.now)
        self.assertFalse(a.agent.idle)
        net.run(0.02)
        self.assertTrue(a.agent.idle)
        net.run(200.0)
        self.assertTrue(a.agent.idle)
        self.assertEqual(a.agent.timing, CLIENT_IDLE)
        checks = self._consent_times(a, connected_at + IDLE_AFTER + 30, net.now)
        gaps = {round(y - x, 6) for x, y in itertools.pairwise(checks)}
        self.assertEqual(gaps, {CLIENT_IDLE.keepalive})
        a.send_app(b"wake up")
        self.assertFalse(a.agent.idle)
        woke = net.now
        net.run(12.0)
        checks = self._consent_times(a, woke + 0.001, net.now)
        gaps = {round(y - x, 6) for x, y in itertools.pairwise(checks)}
        self.assertEqual(gaps, {CLIENT_DEFAULT.keepalive})
        self.assertEqual(a.agent.state, IceState.CONNECTED)

    def test_explicit_set_idle(self) -> None:
        """set_idle selects the idle timing explicitly; auto_idle=False never switches."""
        net = Network()
        a, _ = net.pair(LAN_A, LAN_B)
        a.agent.set_idle(True, net.now)
        self.assertEqual(a.agent.timing, CLIENT_IDLE)
        a.agent.set_idle(False, net.now)
        self.assertEqual(a.agent.timing, CLIENT_DEFAULT)
        quiet = IceAgent(*credentials_for(CREDS, initiator=True), controlling=True,
                         rng=random.Random(3), auto_idle=False)
        quiet.add_local_candidate(Candidate.host(LAN_A), NOW)
        quiet.add_remote_candidate(Candidate.host(LAN_B), NOW)
        quiet.handle_timeout(NOW + 100)
        self.assertFalse(quiet.idle)

    def test_idle_consent_loss_takes_the_idle_timeout(self) -> None:
        """An idle connection notices a dead path after the idle profile's timeout (100 s)."""
        net = Network()
        a, _ = net.pair(LAN_A, LAN_B)
        net.run(60.0)
        self.assertTrue(a.agent.idle)
        dead = net.now
        net.drop = lambda s, d, p: True
        net.run(300.0)
        ((disconnected_at, _),) = a.of(Disconnected)
        self.assertGreaterEqual(disconnected_at - dead, CLIENT_IDLE.timeout)
        self.assertLessEqual(disconnected_at - dead, CLIENT_IDLE.keepalive + CLIENT_IDLE.timeout)
