"""The relay's Twisted adapter moves datagrams between sockets and the pure server."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from firezone.common.sockets import DEFAULT_BUFFER as SOCKET_BUFFER
from firezone.relay.commands import (
    Command,
    CreateChannelBinding,
    DeleteChannelBinding,
    FreeAllocation,
)
from firezone.relay.metrics import RelayCollector
from firezone.relay.server import TurnServer
from firezone.relay.udp import RelayUDP
from firezone.wire.stun import (
    ChannelNumber,
    Lifetime,
    Message,
    MessageClass,
    Method,
    RequestedTransport,
    XorPeerAddress,
    XorRelayedAddress,
)
from tests.fakes import FakeUDPPort, FakeUDPReactor
from tests.relay.test_server import IP4, NOW, SECRET, Client

BIND = "203.0.113.1"
CLIENT = ("192.0.2.10", 50000)
PEER = ("198.51.100.7", 40000)


class RelayUDPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.reactor.advance(NOW)
        self.server = TurnServer(IP4, None, SECRET, rng=random.Random(3), listen_port=3478)
        self.observed: list[Command] = []
        self.relay = RelayUDP(self.reactor, self.server, BIND, None, [self.observed.append])
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.listen = self.reactor.udp_ports[(BIND, 3478)]
        self.client = Client(self.server, CLIENT)

    def request(self, data: bytes) -> Message:
        """Deliver a request on the listen port; return the one reply sent back."""
        before = len(self.listen.sent)
        self.listen.deliver(data, CLIENT)
        replies = self.listen.sent[before:]
        self.assertEqual(len(replies), 1)
        self.assertEqual(replies[0][1], CLIENT)
        return Message.decode(replies[0][0])

    def allocate(self, lifetime: int = 600) -> FakeUDPPort:
        challenge = self.request(self.client.build(Method.ALLOCATE, [RequestedTransport(17)],
                                                   signed=False, with_nonce=False))
        from firezone.wire.stun import Nonce

        nonce = challenge.get(Nonce)
        assert nonce is not None
        self.client.nonce = nonce.value
        reply = self.request(self.client.build(
            Method.ALLOCATE, [RequestedTransport(17), Lifetime(lifetime)]))
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        relayed = reply.get(XorRelayedAddress)
        assert relayed is not None
        return self.reactor.udp_ports[(BIND, relayed.port)]

    def test_listens_with_large_buffers(self) -> None:
        """The listen socket is bound on the configured address with big kernel buffers."""
        self.assertEqual(self.relay.listening_ports, {1: 3478})
        self.assertIn(SOCKET_BUFFER, self.listen.socket.options.values())

    def test_allocate_opens_socket_and_data_flows_both_ways(self) -> None:
        """ChannelData goes out of the allocation port; peer data comes back as ChannelData."""
        allocation = self.allocate()
        reply = self.request(self.client.build(
            Method.CHANNEL_BIND, [ChannelNumber(0x4001), XorPeerAddress(*PEER)]))
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertIsInstance(self.observed[-1], CreateChannelBinding)

        self.listen.deliver(b"\x40\x01\x00\x05hello", CLIENT)
        self.assertEqual(allocation.sent, [(b"hello", PEER)])

        before = len(self.listen.sent)
        allocation.deliver(b"world", PEER)
        self.assertEqual(self.listen.sent[before:], [(b"\x40\x01\x00\x05world", CLIENT)])

        allocation.deliver(b"stranger", ("198.51.100.99", 1))
        self.assertEqual(len(self.listen.sent), before + 1)

    def test_expiry_closes_socket_and_tells_observers(self) -> None:
        """When the allocation's lifetime ends on the clock its socket closes and maps clear."""
        allocation = self.allocate(lifetime=60)
        self.request(self.client.build(
            Method.CHANNEL_BIND, [ChannelNumber(0x4000), XorPeerAddress(*PEER)]))
        self.reactor.advance(59)
        self.assertFalse(allocation.closed)
        self.reactor.advance(2)
        self.assertTrue(allocation.closed)
        kinds = [type(c) for c in self.observed]
        self.assertEqual(kinds, [CreateChannelBinding, DeleteChannelBinding, FreeAllocation])
        self.assertEqual(self.server.num_allocations, 0)

    def test_busy_port_fails_the_allocation(self) -> None:
        """If the kernel refuses the allocation port the server forgets the allocation."""
        self.reactor.busy_ports.update(range(49152, 65536))
        challenge = self.request(self.client.build(Method.ALLOCATE, [RequestedTransport(17)],
                                                   signed=False, with_nonce=False))
        from firezone.wire.stun import Nonce

        nonce = challenge.get(Nonce)
        assert nonce is not None
        self.client.nonce = nonce.value
        before = len(self.listen.sent)
        request = self.client.build(Method.ALLOCATE, [RequestedTransport(17)])
        self.listen.deliver(request, CLIENT)
        self.assertEqual(self.server.num_allocations, 0)
        self.assertEqual(self.listen.sent[before:], [], "no success for a port never bound")
        self.reactor.busy_ports.clear()
        reply = self.request(request)  # the client's retransmission
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(self.server.num_allocations, 1)

    def test_send_errors_counted_not_raised(self) -> None:
        """A socket error on send drops that datagram and is counted."""
        allocation = self.allocate()
        self.request(self.client.build(
            Method.CHANNEL_BIND, [ChannelNumber(0x4000), XorPeerAddress(*PEER)]))
        allocation.closed = True  # the fake socket now raises EBADF
        self.listen.deliver(b"\x40\x00\x00\x01x", CLIENT)
        self.assertEqual(self.relay.send_errors, 1)

    def test_metrics(self) -> None:
        """Relayed packets and responses appear in the Prometheus text."""
        allocation = self.allocate()
        self.request(self.client.build(
            Method.CHANNEL_BIND, [ChannelNumber(0x4000), XorPeerAddress(*PEER)]))
        self.listen.deliver(b"\x40\x00\x00\x01x", CLIENT)
        allocation.deliver(b"yy", PEER)
        registry = CollectorRegistry()
        registry.register(RelayCollector(self.server, lambda: self.relay.send_errors))
        text = generate_latest(registry).decode()
        self.assertIn('relay_packets_total{datapath="userspace",direction="to_peer"} 1.0', text)
        self.assertIn('relay_bytes_total{datapath="userspace",direction="to_client"} 2.0', text)
        self.assertIn("relay_active_allocations 1.0", text)
        self.assertIn('message_type="allocate",response_class="success"', text)

    def test_garbage_never_raises(self) -> None:
        """Arbitrary datagrams on the listen port are dropped without an exception."""
        rng = random.Random(7)
        for _ in range(500):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
            self.listen.deliver(data, (CLIENT[0], rng.randrange(0, 65536)))
        self.assertEqual(self.server.num_allocations, 0)


