"""The node: ICE, TURN and WireGuard of every connection on one socket, driven through an
in-memory network with NATs and in-process relays (``TurnServer``), time in plain floats."""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import ice_credentials, turn_credentials
from firezone.relay.commands import SendFromAllocation, SendMessage
from firezone.relay.server import TurnServer
from firezone.tunnel.ice import CLIENT_DEFAULT, IceCreds, IceState, credentials_for
from firezone.tunnel.node import (
    CANDIDATE_TIMEOUT,
    MAX_BUFFERED_PACKETS,
    Connected,
    ConnectionFailed,
    IceRole,
    InvalidatedLocalCandidate,
    NewLocalCandidate,
    Node,
    NodeEvent,
    NodeRole,
    NoRelays,
    PathChanged,
    PathKind,
    RelayFailed,
    RelayInfo,
)
from firezone.tunnel.relays import MAD_FLOOR, PROBE_TIMEOUT, RELAY_SILENCE, sample_relay
from firezone.tunnel.turn_client import Address
from firezone.wire.candidate import Candidate, CandidateKind
from firezone.wire.channeldata import encode_channel_data
from firezone.wire.stun import (
    IceControlling,
    Message,
    MessageClass,
    Method,
    Priority,
    Username,
    is_stun_message,
)
from firezone.wireguard import generate_private_key
from firezone.wireguard.device import Device
from firezone.wireguard.events import SendDatagram
from tests.tunnel.test_peers import ipv4_packet as ipv4_header

NOW = 1_700_000_000.0
SECRET = "4c1e7a9b2d5f8e0c3a6b9d2f5e8a1c4b7e0d3f6a9c2e5b8d1f4a7c0e3b6d9f2a"
RELAY_IPS = ("203.0.113.10", "203.0.113.20")
LAN_A: Address = ("10.0.0.1", 52625)
LAN_B: Address = ("10.0.0.2", 52625)
TUN_A, TUN_B = "100.64.0.1", "100.64.0.2"

Datagram = tuple[Address, Address, bytes]
E = TypeVar("E")


def ipv4_packet(src: str, dst: str, payload: bytes = b"") -> bytes:
    """An IPv4 packet whose total length covers ``payload`` (WireGuard trims to it)."""
    header = bytearray(ipv4_header(src, dst))
    header[2:4] = (20 + len(payload)).to_bytes(2, "big")
    return bytes(header) + payload


class Nat:
    """Address- and port-dependent filtering (like Linux conntrack); the mapping is
    endpoint-independent ("cone") or per destination ("symmetric")."""

    def __init__(self, public_ip: str, *, symmetric: bool = False) -> None:
        self.public_ip = public_ip
        self.symmetric = symmetric
        self.mapping: dict[object, Address] = {}
        self.reverse: dict[Address, Address] = {}
        self.permissions: set[tuple[Address, Address]] = set()

    def outbound(self, private: Address, dst: Address) -> Address:
        key: object = (private, dst) if self.symmetric else private
        public = self.mapping.get(key)
        if public is None:
            public = (self.public_ip, 40000 + len(self.mapping))
            self.mapping[key] = public
            self.reverse[public] = private
        self.permissions.add((public, dst))
        return public

    def inbound(self, public: Address, src: Address) -> Address | None:
        if (public, src) not in self.permissions:
            return None
        return self.reverse.get(public)


class SimHost:
    """One device: a node, its socket address (maybe behind a NAT) and its TUN."""

    def __init__(self, sim: Sim, name: str, addr: Address, role: NodeRole, nat: Nat | None,
                 seed: int) -> None:
        self.sim = sim
        self.name = name
        self.addr = addr
        self.nat = nat
        self.node = Node(generate_private_key(), role, sim.now, random.Random(seed),
                         host_addresses=[addr])
        self.events: list[tuple[float, NodeEvent]] = []
        self.tun: list[tuple[str, bytes]] = []
        self.sent: list[tuple[float, Address, bytes]] = []

    def drain(self) -> None:
        while (transmit := self.node.poll_transmit()) is not None:
            self.sent.append((self.sim.now, transmit.dest, transmit.payload))
            self.sim.send(self, transmit.dest, transmit.payload)
        while (event := self.node.poll_event()) is not None:
            self.events.append((self.sim.now, event))
            if isinstance(event, NewLocalCandidate | InvalidatedLocalCandidate):
                self.sim.signals.append((event.peer_id, self.name, event))

    def receive(self, data: bytes, src: Address) -> None:
        result = self.node.decapsulate(data, src, self.sim.now)
        if result is not None:
            self.tun.append(result)

    def send_ip(self, peer_id: str, packet: bytes) -> Address | None:
        """Encapsulate; returns where the datagram went if it left at once."""
        transmit = self.node.encapsulate(peer_id, packet, self.sim.now)
        if transmit is None:
            return None
        self.sent.append((self.sim.now, transmit.dest, transmit.payload))
        self.sim.send(self, transmit.dest, transmit.payload)
        return transmit.dest

    def of(self, kind: type[E]) -> list[E]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def timed(self, kind: type[E]) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


class Sim:
    def __init__(self, relays: int = 1, seed: int = 0) -> None:
        self.now = NOW
        self.rng = random.Random(seed)
        self.servers = {ip: TurnServer(IPv4Address(ip), None, SECRET,
                                       rng=random.Random(seed + i))
                        for i, ip in enumerate(RELAY_IPS[:relays])}
        self.hosts: dict[str, SimHost] = {}
        self.queue: list[Datagram] = []
        self.signals: list[tuple[str, str, NodeEvent]] = []
        self.drop: Callable[[Address, Address, bytes], bool] = lambda s, d, p: False
        self.dead: set[str] = set()
        self.loss = 0.0

    def add(self, name: str, addr: Address, role: NodeRole, nat: Nat | None = None,
            relays: bool = True) -> SimHost:
        host = SimHost(self, name, addr, role, nat, seed=len(self.hosts) + 7)
        self.hosts[name] = host
        if relays:
            host.node.update_relays(self.relay_infos(name), self.now)
        return host

    def relay_infos(self, name: str) -> list[RelayInfo]:
        username, password = turn_credentials(f"{name}-public-key", SECRET, int(NOW) + 10**6)
        return [RelayInfo(f"relay{i + 1}", [(ip, 3478)], username, password)
                for i, ip in enumerate(self.servers)]

    def connect(self, client: SimHost, gateway: SimHost, psk: bytes = b"\x07" * 32,
                pump: bool = True) -> None:
        creds = ice_credentials(client.name, "ck", gateway.name, "gk")
        local, remote = credentials_for(creds, initiator=True)
        gateway.node.upsert_connection(client.name, client.node.public_key, psk, remote, local,
                                       IceRole.CONTROLLED, self.now)
        client.node.upsert_connection(gateway.name, gateway.node.public_key, psk, local, remote,
                                      IceRole.CONTROLLING, self.now)
        if pump:
            self.pump()

    # -- the wire ------------------------------------------------------------------------

    def send(self, host: SimHost, dst: Address, payload: bytes) -> None:
        src = host.nat.outbound(host.addr, dst) if host.nat is not None else host.addr
        self.queue.append((src, dst, payload))

    def _route(self, src: Address, dst: Address, payload: bytes) -> None:
        if self.drop(src, dst, payload) or (self.loss and self.rng.random() < self.loss):
            return
        server = self.servers.get(dst[0])
        if server is not None:
            if dst[0] in self.dead:
                return
            if dst[1] == 3478:
                commands = server.handle_client_input(payload, src, self.now)
            else:
                commands = server.handle_peer_traffic(payload, src, dst[1], self.now)
            for command in commands:
                if isinstance(command, SendMessage):
                    self.queue.append(((dst[0], 3478), command.recipient, command.payload))
                elif isinstance(command, SendFromAllocation):
                    self.queue.append(((dst[0], command.port), command.recipient,
                                       command.payload))
            return
        for host in self.hosts.values():
            if host.nat is None and host.addr == dst:
                host.receive(payload, src)
            elif host.nat is not None and host.nat.public_ip == dst[0]:
                if host.nat.inbound(dst, src) == host.addr:
                    host.receive(payload, src)

    def pump(self) -> None:
        for _ in range(100_000):
            for host in self.hosts.values():
                host.drain()
            if self.signals:
                signals, self.signals = self.signals, []
                for to, sender, event in signals:
                    target = self.hosts.get(to)
                    if target is None:
                        continue
                    if isinstance(event, NewLocalCandidate):
                        target.node.add_remote_candidate(sender, event.sdp, self.now)
                    elif isinstance(event, InvalidatedLocalCandidate):
                        target.node.remove_remote_candidate(sender, event.sdp, self.now)
                continue
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for src, dst, payload in batch:
                self._route(src, dst, payload)
        raise AssertionError("the network never went quiet")

    def run(self, duration: float, until: Callable[[], bool] | None = None) -> None:
        """Advance to ``now + duration`` firing every timer (stop early once ``until``)."""
        end = self.now + duration
        self.pump()
        stuck = 0
        while not (until is not None and until()):
            deadlines = [d for h in self.hosts.values()
                         if (d := h.node.poll_timeout()) is not None]
            deadlines += [d for s in self.servers.values() if (d := s.poll_timeout()) is not None]
            nxt = min(deadlines, default=None)
            if nxt is None or nxt > end:
                self.now = end
                return
            stuck = stuck + 1 if nxt <= self.now else 0
            if stuck > 100:
                raise AssertionError(f"a deadline at {nxt} is never cleared by handle_timeout")
            self.now = max(self.now, nxt)
            for host in self.hosts.values():
                deadline = host.node.poll_timeout()
                if deadline is not None and deadline <= self.now:
                    host.node.handle_timeout(self.now)
            for server in self.servers.values():
                server.handle_deadline(self.now)
            self.pump()

    def ping(self, a: SimHost, b: SimHost, src: str = TUN_A, dst: str = TUN_B,
             tag: bytes = b"ping") -> bool:
        """One IP packet a -> b through the tunnel; True if b's TUN got it."""
        packet = ipv4_packet(src, dst, tag)
        before = len(b.tun)
        a.send_ip(b.name, packet)
        self.pump()
        return (a.name, packet) in b.tun[before:]


def both_connected(a: SimHost, b: SimHost) -> Callable[[], bool]:
    return lambda: bool(a.of(Connected)) and bool(b.of(Connected))


def arrived(host: SimHost, sender: str, packet: bytes) -> Callable[[], bool]:
    return lambda: (sender, packet) in host.tun


def latest_path(host: SimHost, peer: str) -> Connected | PathChanged:
    events = [e for _, e in host.events
              if isinstance(e, Connected | PathChanged) and e.peer_id == peer]
    return events[-1]


def lan_pair(sim: Sim, **kw: object) -> tuple[SimHost, SimHost]:
    a = sim.add("client", LAN_A, NodeRole.CLIENT, **kw)  # type: ignore[arg-type]
    b = sim.add("gateway", LAN_B, NodeRole.GATEWAY, **kw)  # type: ignore[arg-type]
    sim.pump()
    return a, b


def direct_between_devices(src: Address, dst: Address, payload: bytes) -> bool:
    """True for datagrams that do not touch a relay."""
    return src[0] not in RELAY_IPS and dst[0] not in RELAY_IPS


def is_wireguard_initiation(payload: bytes) -> bool:
    return len(payload) == 148 and payload[0] == 1 and not is_stun_message(payload)


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------


class NodePathTests(SynchronousTestCase):
    def test_host_path(self) -> None:
        """On one LAN both nodes nominate the host pair, handshake and carry IP packets."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.connect(a, b)
        sim.run(2.0, until=both_connected(a, b))
        (connected,) = a.of(Connected)
        assert isinstance(connected, Connected)
        self.assertEqual((connected.peer_id, connected.path), ("gateway", PathKind.HOST))
        self.assertIsNone(connected.relay_id)
        self.assertEqual(b.node.path("client"), PathKind.HOST)
        self.assertTrue(sim.ping(a, b))
        self.assertTrue(sim.ping(b, a, TUN_B, TUN_A, b"pong"))
        self.assertEqual(a.node.stats.wg_unknown_endpoint + b.node.stats.wg_unknown_endpoint, 0)
        # REFERENCE 5.4: the handshake starts after nomination; the controlling side sends it.
        a_peer, b_peer = a.node.peer("gateway"), b.node.peer("client")
        assert a_peer is not None and b_peer is not None
        self.assertEqual((a_peer.stats.initiations_sent, b_peer.stats.initiations_sent), (1, 0))

    def test_first_packet_is_held_until_connected(self) -> None:
        """A packet sent before nomination waits (nothing leaves for it) and then arrives."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.connect(a, b, pump=False)
        packet = ipv4_packet(TUN_A, TUN_B, b"early")
        self.assertIsNone(a.node.encapsulate("gateway", packet, sim.now))
        sim.run(2.0, until=lambda: ("client", packet) in b.tun)
        self.assertIn(("client", packet), b.tun)

    def test_srflx_path_through_cone_nats(self) -> None:
        """Behind two cone NATs the nodes punch through with server-reflexive candidates
        learnt from the relay, and data then flows directly, not via the relay."""
        sim = Sim()
        a = sim.add("client", LAN_A, NodeRole.CLIENT, Nat("198.51.100.1"))
        b = sim.add("gateway", LAN_B, NodeRole.GATEWAY, Nat("198.51.100.2"))
        sim.run(1.0)
        sim.connect(a, b)
        sim.run(3.0)
        self.assertEqual(latest_path(a, "gateway").path, PathKind.SRFLX)
        self.assertEqual(b.node.path("client"), PathKind.SRFLX)
        packet = ipv4_packet(TUN_A, TUN_B, b"direct")
        dest = a.send_ip("gateway", packet)
        sim.pump()
        self.assertEqual(dest, ("198.51.100.2", 40000))
        self.assertIn(("client", packet), b.tun)

    def test_relayed_path_through_symmetric_nats(self) -> None:
        """Behind two symmetric NATs only the relayed pair works; WireGuard runs through
        ChannelData and the relay."""
        sim = Sim()
        a = sim.add("client", LAN_A, NodeRole.CLIENT, Nat("198.51.100.1", symmetric=True))
        b = sim.add("gateway", LAN_B, NodeRole.GATEWAY, Nat("198.51.100.2", symmetric=True))
        sim.run(1.0)
        sim.connect(a, b)
        sim.run(CLIENT_DEFAULT.timeout + 1)
        last = latest_path(a, "gateway")
        self.assertEqual(last.path, PathKind.RELAY)
        self.assertEqual(last.relay_id, "relay1")
        self.assertEqual(b.node.path("client"), PathKind.RELAY)
        self.assertTrue(sim.ping(a, b))
        self.assertTrue(sim.ping(b, a, TUN_B, TUN_A))
        turn = a.node.relays.turn_client("relay1")
        assert turn is not None
        self.assertGreater(turn.stats.channel_data_in, 0)
        self.assertEqual(a.node.stats.channel_data_unknown, 0)

    def test_one_relay_per_connection(self) -> None:
        """With two relays allocated, a connection signals the relayed candidate of one."""
        sim = Sim(relays=2)
        a, b = lan_pair(sim)
        sim.run(1.0)
        self.assertTrue(all(a.node.relays.allocated(r) for r in ("relay1", "relay2")))
        sim.connect(a, b)
        relayed = [Candidate.decode(e.sdp) for e in a.of(NewLocalCandidate)
                   if isinstance(e, NewLocalCandidate)
                   and Candidate.decode(e.sdp).kind is CandidateKind.RELAY]
        self.assertEqual(len(relayed), 1)
        chosen = a.node.connection_relay("gateway")
        self.assertEqual(relayed[0].address,
                         a.node.relays.relay_candidates(chosen)[0].address)

    def test_switches_from_relay_to_better_direct_pair(self) -> None:
        """Direct traffic is blocked at first, so the relayed pair is nominated; once the
        direct pair answers, the controlling side nominates it and data moves there."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.run(1.0)
        blocked = [True]
        sim.drop = lambda s, d, p: blocked[0] and direct_between_devices(s, d, p)
        sim.connect(a, b)
        sim.run(1.5)
        (first,) = a.of(Connected)
        assert isinstance(first, Connected)
        self.assertEqual(first.path, PathKind.RELAY)
        self.assertTrue(sim.ping(a, b, tag=b"via relay"))
        blocked[0] = False
        sim.run(5.0)
        changed = a.of(PathChanged)
        self.assertTrue(changed)
        self.assertEqual(latest_path(a, "gateway").path, PathKind.HOST)
        dest = a.send_ip("gateway", ipv4_packet(TUN_A, TUN_B, b"direct"))
        sim.pump()
        self.assertEqual(dest, LAN_B)
        self.assertEqual(b.tun[-1], ("client", ipv4_packet(TUN_A, TUN_B, b"direct")))


    def test_setup_survives_loss(self) -> None:
        """With 20 % of all datagrams lost (checks, TURN, handshakes), every seed still
        connects and carries data: everything is retried."""
        for seed in range(5):
            sim = Sim(seed=seed)
            sim.loss = 0.2
            a = sim.add("client", LAN_A, NodeRole.CLIENT, Nat("198.51.100.1"))
            b = sim.add("gateway", LAN_B, NodeRole.GATEWAY, Nat("198.51.100.2"))
            sim.run(3.0)
            sim.connect(a, b)
            sim.run(30.0, until=both_connected(a, b))
            self.assertTrue(a.of(Connected) and b.of(Connected), f"seed {seed}")
            packet = ipv4_packet(TUN_A, TUN_B, b"lossy")
            delivered = arrived(b, "client", packet)
            for _ in range(40):
                a.send_ip("gateway", packet)
                sim.run(1.0, until=delivered)
                if delivered():
                    break
            self.assertTrue(delivered(), f"seed {seed}")


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def check(username: str, key: bytes, priority: int = 1) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, b"\x11" * 12,
                      [Username(username), Priority(priority), IceControlling(5)])
    return message.encode(integrity_key=key, fingerprint=True)


class NodeDropTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = Sim()
        self.a, self.b = lan_pair(self.sim)
        # Upserted on both sides, nothing exchanged yet: no pair is validated or nominated.
        self.sim.connect(self.a, self.b, pump=False)
        self.creds = credentials_for(ice_credentials("client", "ck", "gateway", "gk"),
                                     initiator=True)

    def test_check_for_unknown_ufrag_dropped(self) -> None:
        """A check whose USERNAME names none of our connections is dropped and counted."""
        node = self.b.node
        self.assertFalse(node.handle_input(check("zzzz:yyyy", b"whatever"), LAN_A, NOW))
        self.assertEqual(node.stats.ice_unknown_username, 1)
        self.assertIsNone(node.poll_transmit())

    def test_check_with_wrong_integrity_dropped(self) -> None:
        """RFC 8445 7.3: a check failing MESSAGE-INTEGRITY gets no answer and makes no path;
        WireGuard from that address is still refused."""
        local, remote = self.creds
        node = self.b.node
        forged = check(f"{remote.ufrag}:{local.ufrag}", b"not-the-password", priority=99)
        self.assertTrue(node.handle_input(forged, ("192.0.2.66", 4444), NOW))
        self.assertEqual(node.stats.ice_bad_integrity, 1)
        self.assertIsNone(node.poll_transmit())
        agent = node.agent("client")
        assert agent is not None
        self.assertNotIn(("192.0.2.66", 4444), [c.address for c in agent.remote_candidates()])
        self.assertFalse(node.handle_input(b"\x04" + bytes(40), ("192.0.2.66", 4444), NOW))
        self.assertEqual(node.stats.wg_unknown_endpoint, 1)

    def test_unparseable_candidates_counted(self) -> None:
        """Candidates that do not parse are skipped and counted; so are unknown peers'."""
        node = self.a.node
        self.assertFalse(node.add_remote_candidate("gateway", "candidate:garbage", NOW))
        self.assertFalse(node.add_remote_candidate("gateway", "", NOW))
        self.assertEqual(node.stats.candidates_unparseable, 2)
        sdp = Candidate.host(("192.0.2.7", 1)).encode()
        self.assertFalse(node.add_remote_candidate("nobody", sdp, NOW))
        self.assertEqual(node.stats.candidates_unknown_connection, 1)

    def test_channel_data_from_unknown_channel_dropped(self) -> None:
        """ChannelData from a relay on a channel we never bound is dropped and counted."""
        self.sim.run(1.0)
        data = encode_channel_data(0x4ABC, ipv4_packet(TUN_B, TUN_A))
        self.assertFalse(self.a.node.handle_input(data, (RELAY_IPS[0], 3478), self.sim.now))
        self.assertEqual(self.a.node.stats.channel_data_unknown, 1)
        self.assertEqual(self.a.tun, [])

    def test_wireguard_before_nomination_dropped(self) -> None:
        """A genuine handshake initiation from the peer's own key and host address is
        dropped before ICE nominated a pair: the device never sees it."""
        node = self.b.node
        rogue = Device(generate_private_key())
        peer = rogue.add_peer(node.public_key)
        (send,) = peer.initiate_handshake(NOW, NOW)
        assert isinstance(send, SendDatagram)
        self.assertFalse(node.handle_input(send.data, LAN_A, NOW))
        self.assertEqual(node.stats.wg_unknown_endpoint, 1)
        self.assertEqual(node.device.stats.initiations_received, 0)

    def test_packets_for_unknown_peer_counted(self) -> None:
        """Encapsulating for a peer without a connection is a counted drop."""
        self.assertIsNone(self.a.node.encapsulate("nobody", ipv4_packet(TUN_A, TUN_B), NOW))
        self.assertEqual(self.a.node.stats.packets_unknown_peer, 1)

    def test_check_with_wrong_remote_ufrag_dropped(self) -> None:
        """A check for our ufrag but from another remote ufrag is claimed and dropped."""
        local, remote = self.creds
        node = self.b.node
        self.assertTrue(node.handle_input(check(f"{remote.ufrag}:qqqq", local.key), LAN_A, NOW))
        self.assertEqual(node.stats.ice_bad_username, 1)
        self.assertIsNone(node.poll_transmit())

    def test_unsolicited_stun_response_dropped(self) -> None:
        """A binding response to a check we never sent is dropped and counted."""
        response = Message(Method.BINDING, MessageClass.SUCCESS, b"\x22" * 12, []).encode()
        self.assertFalse(self.a.node.handle_input(response, LAN_B, NOW))
        self.assertEqual(self.a.node.stats.stun_unmatched, 1)

    def test_unusable_candidate_counted(self) -> None:
        """A candidate the agent cannot use (TCP) is skipped and counted."""
        sdp = "candidate:1 1 tcp 2130706431 192.0.2.7 9 typ host"
        self.assertFalse(self.a.node.add_remote_candidate("gateway", sdp, NOW))
        self.assertEqual(self.a.node.stats.candidates_unusable, 1)

    def test_held_packets_are_bounded(self) -> None:
        """Before nomination at most 128 packets are held; more are dropped and counted."""
        for i in range(MAX_BUFFERED_PACKETS + 5):
            self.a.node.encapsulate("gateway", ipv4_packet(TUN_A, TUN_B, bytes([i])), NOW)
        self.assertEqual(self.a.node.stats.packets_buffer_dropped, 5)

    def test_wireguard_of_another_peer_on_a_path_dropped(self) -> None:
        """WireGuard arriving on one connection's validated path but sealed by another
        connected peer's key is dropped: a path belongs to the peer that proved it."""
        self.sim.run(2.0, until=both_connected(self.a, self.b))
        other = self.sim.add("other", ("10.0.0.3", 52625), NodeRole.CLIENT)
        self.sim.connect(other, self.b)
        self.sim.run(2.0, until=lambda: bool(other.of(Connected)))
        peer = other.node.peer("gateway")
        assert peer is not None
        peer.zero_and_flush()
        (send,) = peer.initiate_handshake(self.sim.now + 6, self.sim.now + 6)
        assert isinstance(send, SendDatagram)
        node = self.b.node
        before = node.device.stats.initiations_received
        self.assertFalse(node.handle_input(send.data, LAN_A, self.sim.now + 6))
        self.assertEqual(node.stats.wg_wrong_peer, 1)
        self.assertEqual(node.device.stats.initiations_received, before + 1)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.sampled_from([LAN_A, LAN_B, (RELAY_IPS[0], 3478),
                                                     ("192.0.2.9", 9)]))
    def test_arbitrary_datagrams_never_raise(self, data: bytes, source: Address) -> None:
        """Any bytes from anywhere are handled or dropped without an exception or a path."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.connect(a, b, pump=False)
        a.node.handle_input(data, source, sim.now)
        self.assertIsNone(a.node.path("gateway"))
        self.assertEqual(a.tun, [])


# --------------------------------------------------------------------------------------
# Failure and cleanup
# --------------------------------------------------------------------------------------


class NodeFailureTests(SynchronousTestCase):
    def test_ice_failure_cleans_up(self) -> None:
        """When the peer goes silent, ICE fails within its timeout after the last answer;
        the node reports ConnectionFailed and forgets the connection and its WireGuard peer."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.connect(a, b)
        sim.run(2.0, until=both_connected(a, b))
        self.assertTrue(sim.ping(a, b))
        cut = sim.now
        sim.drop = lambda s, d, p: True
        # Keep sending (into the void) so the connection stays active, not idle.
        for _ in range(int(CLIENT_DEFAULT.timeout + CLIENT_DEFAULT.keepalive) + 2):
            if a.of(ConnectionFailed):
                break
            a.send_ip("gateway", ipv4_packet(TUN_A, TUN_B, b"lost"))
            sim.run(1.0)
        ((when, failed),) = a.timed(ConnectionFailed)
        assert isinstance(failed, ConnectionFailed)
        self.assertEqual(failed.peer_id, "gateway")
        self.assertTrue(failed.reason.startswith("ice"), failed.reason)
        # Consent checks go out every 5 s; the first unanswered one starts the timeout.
        self.assertLessEqual(when - cut, CLIENT_DEFAULT.timeout + CLIENT_DEFAULT.keepalive)
        self.assertFalse(a.node.has_connection("gateway"))
        self.assertEqual(len(a.node.device), 0)
        self.assertIsNone(a.node.encapsulate("gateway", ipv4_packet(TUN_A, TUN_B), sim.now))
        self.assertEqual(a.node.stats.packets_unknown_peer, 1)

    def test_wireguard_expiry_fails_connection(self) -> None:
        """ICE works but every handshake initiation is lost: WireGuard gives up after the
        20 s rekey-attempt time and the connection fails."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.drop = lambda s, d, p: is_wireguard_initiation(p)
        sim.connect(a, b)
        sim.run(30.0, until=lambda: bool(a.of(ConnectionFailed)))
        ((when, failed),) = a.timed(ConnectionFailed)
        assert isinstance(failed, ConnectionFailed)
        self.assertEqual(failed.reason, "wireguard handshake_timeout")
        # Initiations are retried every 5 s (+ jitter); the attempt ends after 20 s.
        self.assertGreaterEqual(when - NOW, 20.0)
        self.assertLessEqual(when - NOW, 26.0)
        self.assertFalse(a.node.has_connection("gateway"))

    def test_no_remote_candidates_times_out(self) -> None:
        """A connection that never hears of a remote candidate fails after 10 s."""
        sim = Sim()
        a = sim.add("client", LAN_A, NodeRole.CLIENT)
        local, remote = credentials_for(ice_credentials("c", "ck", "g", "gk"), initiator=True)
        a.node.upsert_connection("gateway", b"\x01" * 32, None, local, remote,
                                 IceRole.CONTROLLING, sim.now)
        sim.run(CANDIDATE_TIMEOUT + 1)
        self.assertEqual([e.reason for e in a.of(ConnectionFailed)], ["no remote candidates"])


# --------------------------------------------------------------------------------------
# Upsert
# --------------------------------------------------------------------------------------


class NodeUpsertTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = Sim()
        self.a, self.b = lan_pair(self.sim)
        self.local, self.remote = credentials_for(
            ice_credentials("client", "ck", "gateway", "gk"), initiator=True)

    def upsert(self, psk: bytes = b"\x07" * 32, remote: IceCreds | None = None) -> bool:
        return self.a.node.upsert_connection("gateway", self.b.node.public_key, psk,
                                             self.local, remote or self.remote,
                                             IceRole.CONTROLLING, self.sim.now)

    def test_same_arguments_keep_the_connection(self) -> None:
        """snownet's upsert: equal key, PSK and credentials reuse the connection as is."""
        self.assertTrue(self.upsert())
        self.a.drain()
        agent = self.a.node.agent("gateway")
        signalled = len(self.a.of(NewLocalCandidate))
        self.assertFalse(self.upsert())
        self.a.drain()
        self.assertIs(self.a.node.agent("gateway"), agent)
        self.assertEqual(len(self.a.of(NewLocalCandidate)), signalled)

    def test_changed_psk_or_credentials_replace_it(self) -> None:
        """A different PSK (or credentials) makes a new connection with a new peer."""
        self.assertTrue(self.upsert())
        peer = self.a.node.peer("gateway")
        self.assertTrue(self.upsert(psk=b"\x08" * 32))
        self.assertIsNot(self.a.node.peer("gateway"), peer)
        self.assertEqual(len(self.a.node.device), 1)
        agent = self.a.node.agent("gateway")
        self.assertTrue(self.upsert(psk=b"\x08" * 32, remote=IceCreds("abcd", "x" * 22)))
        self.assertIsNot(self.a.node.agent("gateway"), agent)

    def test_close_forgets_silently(self) -> None:
        """close_connection removes the connection without a ConnectionFailed event."""
        self.upsert()
        self.assertTrue(self.a.node.close_connection("gateway"))
        self.assertFalse(self.a.node.close_connection("gateway"))
        self.a.drain()
        self.assertEqual(self.a.of(ConnectionFailed), [])
        self.assertEqual(len(self.a.node.device), 0)


# --------------------------------------------------------------------------------------
# Relays
# --------------------------------------------------------------------------------------


class RelaySamplingTests(SynchronousTestCase):
    def test_two_relays_within_one_and_a_half_times_the_fastest(self) -> None:
        """REFERENCE 2.4: with 1-2 relays the threshold is 1.5x the fastest."""
        rng = random.Random(1)
        picks = {sample_relay({"a": 0.010, "b": 0.014}, rng) for _ in range(50)}
        self.assertEqual(picks, {"a", "b"})
        picks = {sample_relay({"a": 0.010, "b": 0.016}, rng) for _ in range(50)}
        self.assertEqual(picks, {"a"})

    def test_three_or_more_by_median_and_mad(self) -> None:
        """With 3 or more the threshold is median + 3 MAD, the MAD floored at 2 ms."""
        rng = random.Random(2)
        rtts = {"a": 0.010, "b": 0.011, "c": 0.012, "d": 0.050}
        picks = {sample_relay(rtts, rng) for _ in range(100)}
        self.assertEqual(picks, {"a", "b", "c"})
        # MAD here is 1 ms, floored to 2 ms: 11.5 + 6 = 17.5 ms lets 17 ms in.
        rtts["d"] = 0.017
        self.assertEqual({sample_relay(rtts, rng) for _ in range(100)}, {"a", "b", "c", "d"})
        self.assertEqual(MAD_FLOOR, 0.002)

    def test_no_rtt_no_sample(self) -> None:
        """Only relays with a measured RTT are eligible."""
        self.assertIsNone(sample_relay({}, random.Random(0)))

    def test_pool_measures_rtt_from_binding(self) -> None:
        """The node learns each relay's RTT from its TURN client's BINDING round trip."""
        sim = Sim(relays=2)
        a = sim.add("client", LAN_A, NodeRole.CLIENT)
        sim.pump()
        self.assertEqual(a.node.relays.rtt("relay1"), 0.0)  # the in-memory wire is instant
        self.assertIsNotNone(a.node.relays.rtt("relay2"))


class NodeRelayTests(SynchronousTestCase):
    def test_removed_relay_invalidates_candidates(self) -> None:
        """Relays the portal drops take their candidates with them on every connection;
        with none left the node says so."""
        sim = Sim()
        a, b = lan_pair(sim)
        sim.run(1.0)
        sim.connect(a, b)
        relayed = [e for e in a.of(NewLocalCandidate) if isinstance(e, NewLocalCandidate)
                   and " typ relay" in e.sdp]
        self.assertEqual(len(relayed), 1)
        self.assertFalse(a.node.no_relays)
        a.node.update_relays([], sim.now)
        a.drain()
        gone = [e.sdp for e in a.of(InvalidatedLocalCandidate)
                if isinstance(e, InvalidatedLocalCandidate)]
        self.assertIn(relayed[0].sdp, gone)
        self.assertEqual(len(a.of(NoRelays)), 1)
        self.assertTrue(a.node.no_relays)
        self.assertEqual(a.of(RelayFailed), [])

    def test_silent_relay_detected_and_replaced(self) -> None:
        """The relay carrying a relayed path dies: the node notices within the ICE timeout
        (a probe after RELAY_SILENCE), reports RelayFailed and moves the connection to the
        other relay's candidates; data flows again."""
        sim = Sim(relays=2, seed=3)
        a = sim.add("client", LAN_A, NodeRole.CLIENT, Nat("198.51.100.1", symmetric=True))
        b = sim.add("gateway", LAN_B, NodeRole.GATEWAY, Nat("198.51.100.2", symmetric=True))
        sim.run(1.0)
        sim.connect(a, b)
        sim.run(CLIENT_DEFAULT.timeout + 1)
        carrying = latest_path(a, "gateway").relay_id
        assert carrying is not None
        self.assertEqual(latest_path(a, "gateway").path, PathKind.RELAY)
        self.assertTrue(sim.ping(a, b))
        killed_at = sim.now
        sim.dead.add(RELAY_IPS[int(carrying[-1]) - 1])
        sim.run(CLIENT_DEFAULT.timeout, until=lambda: bool(a.of(RelayFailed)))
        ((when, failed),) = a.timed(RelayFailed)
        assert isinstance(failed, RelayFailed)
        self.assertEqual(failed.relay_id, carrying)
        self.assertLessEqual(when - killed_at, RELAY_SILENCE + PROBE_TIMEOUT + 0.01)
        sim.run(10.0)
        last = latest_path(a, "gateway")
        self.assertEqual(last.path, PathKind.RELAY)
        self.assertNotEqual(last.relay_id, carrying)
        self.assertTrue(a.node.has_connection("gateway"))
        self.assertTrue(sim.ping(a, b, tag=b"after failover"))
        agent = a.node.agent("gateway")
        assert agent is not None
        self.assertEqual(agent.state, IceState.CONNECTED)
