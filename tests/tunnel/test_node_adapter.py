"""The node's Twisted adapter: port 52625 or ephemeral, TUN <-> node <-> UDP, one timer."""

from __future__ import annotations

import random
import socket

from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import ice_credentials
from firezone.tunnel.ice import credentials_for
from firezone.tunnel.node import (
    DEFAULT_PORT,
    Connected,
    IceRole,
    NewLocalCandidate,
    Node,
    NodeEvent,
    NodeRole,
    RelayInfo,
)
from firezone.tunnel.node_adapter import SOCKET_BUFFER, NodeAdapter
from firezone.wireguard import generate_private_key
from tests.fakes import FakeUDPPort, FakeUDPReactor
from tests.tunnel.test_node import ipv4_packet

NOW = 1_700_000_000.0
A_IP, B_IP = "10.0.0.1", "10.0.0.2"
TUN_A, TUN_B = "100.64.0.1", "100.64.0.2"


class Side:
    def __init__(self, ip: str, role: NodeRole, seed: int) -> None:
        self.ip = ip
        self.reactor = FakeUDPReactor()
        self.reactor.advance(NOW)
        self.node = Node(generate_private_key(), role, NOW, random.Random(seed))
        self.tun: list[bytes] = []
        self.events: list[NodeEvent] = []
        self.adapter = NodeAdapter(self.reactor, self.node, tun_write=self._write,
                                   on_event=self.events.append)
        self.port_number = self.adapter.listen()
        self.adapter.set_host_addresses([ip])

    def _write(self, packet: bytes) -> bool:
        self.tun.append(packet)
        return True

    @property
    def port(self) -> FakeUDPPort:
        return self.reactor.udp_ports[("0.0.0.0", self.port_number)]

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port_number)


class Pair:
    """Two adapters whose sockets a test joins by hand (each has its own clock)."""

    def __init__(self) -> None:
        self.a = Side(A_IP, NodeRole.CLIENT, 1)
        self.b = Side(B_IP, NodeRole.GATEWAY, 2)

    def connect(self) -> None:
        creds = ice_credentials("client", "ck", "gateway", "gk")
        local, remote = credentials_for(creds, initiator=True)
        psk = b"\x05" * 32
        self.b.adapter.upsert_connection("client", self.a.node.public_key, psk, remote, local,
                                         IceRole.CONTROLLED, [f"{TUN_A}/32"])
        self.a.adapter.upsert_connection("gateway", self.b.node.public_key, psk, local, remote,
                                         IceRole.CONTROLLING, [f"{TUN_B}/32"])
        self.pump()

    def pump(self) -> None:
        """Deliver datagrams and signal candidates (events) until nothing moves."""
        seen = {id(self.a): 0, id(self.b): 0}
        for _ in range(1000):
            self.a.reactor.advance(0)
            self.b.reactor.advance(0)
            moved = False
            for side, other in ((self.a, self.b), (self.b, self.a)):
                for event in side.events[seen[id(side)]:]:
                    sdp = getattr(event, "sdp", None)
                    if isinstance(event, NewLocalCandidate) and sdp is not None:
                        moved = True
                        other.adapter.add_remote_candidate(
                            "gateway" if other is self.a else "client", sdp)
                seen[id(side)] = len(side.events)
                sent, side.port.sent[:] = list(side.port.sent), []
                for data, dest in sent:
                    moved = True
                    if dest == other.address:
                        other.port.deliver(data, side.address)
            if not moved:
                return
        raise AssertionError("never settled")


class NodeAdapterTests(SynchronousTestCase):
    def test_binds_52625_else_ephemeral(self) -> None:
        """REFERENCE 5.2: port 52625 on the wildcard address, an ephemeral one if taken;
        the socket buffers are enlarged."""
        reactor = FakeUDPReactor()
        adapter = NodeAdapter(reactor, Node(generate_private_key(), NodeRole.CLIENT, 0.0,
                                            random.Random(0)))
        self.assertEqual(adapter.listen(), DEFAULT_PORT)
        sock = reactor.udp_ports[("0.0.0.0", DEFAULT_PORT)].socket
        self.assertIn(SOCKET_BUFFER, sock.options.values())
        busy = FakeUDPReactor()
        busy.busy_ports.add(DEFAULT_PORT)
        adapter = NodeAdapter(busy, Node(generate_private_key(), NodeRole.CLIENT, 0.0,
                                         random.Random(0)))
        self.assertEqual(adapter.listen(), 0)
        self.assertEqual(list(busy.udp_ports), [("0.0.0.0", 0)])

    def test_packets_cross_both_adapters(self) -> None:
        """A TUN packet routed by allowed IPs reaches the other TUN, and back."""
        pair = Pair()
        pair.connect()
        self.assertTrue(any(isinstance(e, Connected) for e in pair.a.events))
        ping = ipv4_packet(TUN_A, TUN_B, b"ping")
        pair.a.adapter.packets_from_tun([ping])
        pair.pump()
        self.assertEqual(pair.b.tun, [ping])
        pong = ipv4_packet(TUN_B, TUN_A, b"pong")
        pair.b.adapter.packets_from_tun([pong])
        pair.pump()
        self.assertEqual(pair.a.tun, [pong])

    def test_unroutable_and_spoofed_packets_dropped(self) -> None:
        """No route: counted; a decrypted packet from outside the sender's allowed IPs
        is not written to the TUN."""
        pair = Pair()
        pair.connect()
        pair.a.adapter.packets_from_tun([ipv4_packet(TUN_A, "198.18.9.9")])
        self.assertEqual(pair.a.adapter.stats.no_route, 1)
        pair.a.adapter.packets_from_tun([ipv4_packet(TUN_A, TUN_B, b"one")])
        pair.pump()
        pair.a.adapter.packets_from_tun([ipv4_packet("100.64.0.66", TUN_B, b"spoof")])
        pair.pump()
        self.assertEqual(pair.b.tun, [ipv4_packet(TUN_A, TUN_B, b"one")])
        self.assertEqual(pair.b.adapter.stats.source_rejected, 1)

    def test_one_timer_at_the_node_deadline(self) -> None:
        """After a flush exactly one delayed call is armed, at Node.poll_timeout(); when it
        fires the node's retransmissions leave the socket."""
        side = Side(A_IP, NodeRole.CLIENT, 3)
        side.adapter.update_relays([RelayInfo("r", [("203.0.113.1", 3478)], "u", "p")])
        side.reactor.advance(0)
        calls = side.reactor.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        deadline = side.node.poll_timeout()
        assert deadline is not None
        self.assertAlmostEqual(calls[0].getTime(), deadline)
        sent = len(side.port.sent)
        self.assertEqual(sent, 1)  # the first BINDING
        side.reactor.advance(deadline - side.reactor.seconds())
        self.assertEqual(len(side.port.sent), 2)  # retransmitted
        self.assertEqual(len(side.reactor.getDelayedCalls()), 1)

    def test_send_errors_are_counted(self) -> None:
        """A failing sendto loses the datagram and counts it; nothing raises."""
        side = Side(A_IP, NodeRole.CLIENT, 4)
        side.port.closed = True
        side.adapter.update_relays([RelayInfo("r", [("203.0.113.1", 3478)], "u", "p")])
        side.reactor.advance(0)
        self.assertEqual(side.adapter.stats.send_errors, 1)
        self.assertIn(socket.SOL_SOCKET, {level for level, _ in side.port.socket.options})
