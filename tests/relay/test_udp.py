"""The relay's Twisted adapter moves datagrams between sockets and the pure server."""

from __future__ import annotations

import errno
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from firezone.common.sockets import DEFAULT_BUFFER as SOCKET_BUFFER
from firezone.common.udp_batch import (
    GSO_MAX_SEGMENTS,
    BatchedUDPPort,
    BatchReader,
    DatagramSender,
    gso_run_limit,
)
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
    Nonce,
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


def _reader_of(reactor: FakeUDPReactor, port: FakeUDPPort) -> BatchReader:
    """The batched reader the relay registered with the reactor for ``port``'s socket."""
    readers = [r for r in reactor.getReaders()
               if isinstance(r, BatchReader) and r.socket is port.socket]
    assert len(readers) == 1, readers
    return readers[0]


def _channel_data(channel: int, payload: bytes) -> bytes:
    return struct.pack(">HH", channel, len(payload)) + payload


def _payloads(*sizes: int) -> list[bytes]:
    """Distinct payloads of the given sizes, so order and content can be checked."""
    return [bytes([i % 251]) * size for i, size in enumerate(sizes)]


class RecordingHandler:
    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, tuple[str, int]]]] = []

    def __call__(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.batches.append(list(batch))


class BatchReaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.handler = RecordingHandler()
        self.errors: list[tuple[OSError, tuple[str, int], int]] = []
        self.port = BatchedUDPPort.listen(self.reactor, 5000, "192.0.2.1", self.handler,
                                          lambda e, a, n: self.errors.append((e, a, n)),
                                          max_batch=4)
        self.fake = self.reactor.udp_ports[("192.0.2.1", 5000)]

    def test_replaces_twisted_reading(self) -> None:
        """The port stops Twisted's reading and the reactor reads through our reader."""
        self.assertFalse(self.fake.reading)
        self.assertEqual(self.reactor.getReaders(), [self.port.reader])
        self.assertTrue(verifyObject(IReadDescriptor, self.port.reader))
        self.assertEqual(self.port.reader.fileno(), self.fake.socket.fileno())

    def test_reads_at_most_max_batch_per_wakeup(self) -> None:
        """One wake-up hands over at most max_batch datagrams, in arrival order, as one list."""
        for i in range(6):
            self.fake.queue(bytes([i]), ("192.0.2.9", 100 + i))
        self.port.reader.doRead()
        self.port.reader.doRead()
        self.port.reader.doRead()
        self.assertEqual(self.handler.batches, [
            [(bytes([i]), ("192.0.2.9", 100 + i)) for i in range(4)],
            [(bytes([i]), ("192.0.2.9", 100 + i)) for i in range(4, 6)],
        ])

    def test_ipv6_addresses_cut_to_host_and_port(self) -> None:
        """IPv6 sources lose flow info and scope id, as Twisted's port delivers them."""
        port = BatchedUDPPort.listen(self.reactor, 5000, "2001:db8::1", self.handler,
                                     lambda e, a, n: None)
        fake = self.reactor.udp_ports[("2001:db8::1", 5000)]
        fake.queue(b"x", ("2001:db8::9", 7, 0, 0))
        port.reader.doRead()
        self.assertEqual(self.handler.batches, [[(b"x", ("2001:db8::9", 7))]])

    def test_read_errors_never_reach_the_reactor(self) -> None:
        """EAGAIN and EINTR end a read, ECONNREFUSED is skipped, other errors are logged."""
        inbox = self.fake.socket.inbox
        inbox.extend([(b"a", ("192.0.2.9", 1)), ConnectionRefusedError(errno.ECONNREFUSED, ""),
                      (b"b", ("192.0.2.9", 1)), InterruptedError(errno.EINTR, ""),
                      (b"c", ("192.0.2.9", 1)), OSError(errno.ENOMEM, "no memory"),
                      (b"d", ("192.0.2.9", 1))])
        reader = self.port.reader
        for _ in range(4):  # the last finds the queue empty: EAGAIN
            reader.doRead()
        data = [[d for d, _ in batch] for batch in self.handler.batches]
        self.assertEqual(data, [[b"a", b"b"], [b"c"], [b"d"]])
        self.assertEqual(reader.read_errors, 1)
        self.assertIn(reader, self.reactor.getReaders())

    def test_handler_failure_is_logged_not_raised(self) -> None:
        """A handler bug is logged; the reactor keeps the reader."""
        def broken(batch: list[tuple[bytes, tuple[str, int]]]) -> None:
            raise RuntimeError("bug")

        self.port.reader.handler = broken
        self.fake.queue(b"x", ("192.0.2.9", 1))
        self.port.reader.doRead()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(self.port.reader, self.reactor.getReaders())

    def test_stop_listening_removes_reader_and_closes(self) -> None:
        """stopListening takes the reader out of the reactor and closes the socket."""
        self.port.stopListening()
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertTrue(self.fake.closed)

    def test_twisted_delivery_is_a_batch_of_one(self) -> None:
        """Should Twisted's port deliver a datagram itself, the handler still gets it."""
        self.fake.deliver(b"x", ("192.0.2.9", 1))
        self.assertEqual(self.handler.batches, [[(b"x", ("192.0.2.9", 1))]])


class DatagramSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.fake = self.reactor.listenUDP(5000, DatagramProtocol(), interface="192.0.2.1")
        self.errors: list[tuple[int | None, tuple[str, int], int]] = []
        self.sender = DatagramSender(self.fake.socket,
                                     lambda e, a, n: self.errors.append((e.errno, a, n)))

    def test_run_limit(self) -> None:
        """Runs stop at 64 segments and at one IPv4 datagram's payload (65507 bytes)."""
        self.assertEqual(gso_run_limit(100), GSO_MAX_SEGMENTS)
        self.assertEqual(gso_run_limit(1200), 54)
        self.assertEqual(gso_run_limit(65507 // 2), 2)
        self.assertEqual(gso_run_limit(40000), 1)
        self.assertEqual(gso_run_limit(0), 1, "empty datagrams cannot be segmented")

    def test_one_datagram_uses_sendto(self) -> None:
        """A run of one is a plain sendto."""
        self.sender.send_run([b"abc"], 3, PEER)
        self.assertEqual(self.fake.sent, [(b"abc", PEER)])
        self.assertEqual(self.fake.socket.sendmsg_calls, 0)

    def test_run_is_one_gso_send(self) -> None:
        """Equal datagrams plus a shorter last one leave in one sendmsg with UDP_SEGMENT."""
        run = [b"a" * 10, b"b" * 10, b"c" * 4]
        self.sender.send_run(run, 10, PEER)
        self.assertEqual(self.fake.gso_sends, [(10, 3, PEER)])
        self.assertEqual(self.fake.sent, [(d, PEER) for d in run])

    def test_unsupported_gso_falls_back_for_good(self) -> None:
        """EIO (no checksum offload) sends the run one by one and GSO is not tried again."""
        self.fake.socket.gso_errno = errno.EIO
        self.sender.send_run([b"a" * 10, b"b" * 10], 10, PEER)
        self.sender.send_run([b"c" * 5, b"d" * 5], 5, PEER)
        self.assertEqual([d for d, _ in self.fake.sent], [b"a" * 10, b"b" * 10, b"c" * 5,
                                                          b"d" * 5])
        self.assertEqual(self.fake.socket.sendmsg_calls, 1)
        self.assertEqual(self.sender.gso_max_segment, 0)
        self.assertEqual(self.errors, [])

    def test_segment_above_mtu_falls_back_for_that_size_only(self) -> None:
        """EMSGSIZE (segment too big for the route's MTU) disables GSO from that size up."""
        self.fake.socket.gso_max_segment = 1000
        self.sender.send_run([b"a" * 1400] * 3, 1400, PEER)
        self.sender.send_run([b"b" * 1500] * 3, 1500, PEER)
        self.sender.send_run([b"c" * 500] * 3, 500, PEER)
        self.assertEqual(len(self.fake.sent), 9)
        self.assertEqual(self.fake.socket.sendmsg_calls, 2, "1500 is not tried again")
        self.assertEqual(self.fake.gso_sends, [(500, 3, PEER)])

    def test_send_error_drops_the_run(self) -> None:
        """A full buffer drops every datagram of the run and reports how many."""
        self.fake.socket.send_errno = errno.EAGAIN
        self.sender.send_run([b"a" * 10] * 5, 10, PEER)
        self.sender.send(b"x", PEER)
        self.assertEqual(self.errors, [(errno.EAGAIN, PEER, 5), (errno.EAGAIN, PEER, 1)])


PEER2 = ("198.51.100.8", 40001)
CLIENT2 = ("192.0.2.11", 50001)


class RelayUDPBatchTests(SynchronousTestCase):
    """The relay's batched data paths, driven through the reactor's reader as epoll would."""

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
        self.allocation = self.allocate()
        self.bind(0x4000, PEER)

    def wake(self, port: FakeUDPPort) -> None:
        _reader_of(self.reactor, port).doRead()

    def request(self, data: bytes, client: tuple[str, int] = CLIENT) -> Message:
        before = len(self.listen.sent)
        self.listen.queue(data, client)
        self.wake(self.listen)
        replies = self.listen.sent[before:]
        self.assertEqual(len(replies), 1)
        return Message.decode(replies[0][0])

    def allocate(self, client: Client | None = None) -> FakeUDPPort:
        client = client or self.client
        challenge = self.request(client.build(Method.ALLOCATE, [RequestedTransport(17)],
                                              signed=False, with_nonce=False), client.addr)
        nonce = challenge.get(Nonce)
        assert nonce is not None
        client.nonce = nonce.value
        reply = self.request(client.build(Method.ALLOCATE, [RequestedTransport(17)]),
                             client.addr)
        relayed = reply.get(XorRelayedAddress)
        assert relayed is not None
        return self.reactor.udp_ports[(BIND, relayed.port)]

    def bind(self, channel: int, peer: tuple[str, int], client: Client | None = None) -> None:
        client = client or self.client
        reply = self.request(client.build(
            Method.CHANNEL_BIND, [ChannelNumber(channel), XorPeerAddress(*peer)]), client.addr)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)

    def send_from_client(self, payloads: list[bytes], channel: int = 0x4000) -> None:
        for payload in payloads:
            self.listen.queue(_channel_data(channel, payload), CLIENT)
        self.wake(self.listen)

    def test_sockets_are_read_by_batch_readers(self) -> None:
        """Twisted no longer reads the relay's sockets; a batch reader per socket does."""
        self.assertFalse(self.listen.reading)
        self.assertFalse(self.allocation.reading)
        self.assertEqual(len(self.reactor.getReaders()), 2)

    def test_channel_data_burst_is_one_gso_send(self) -> None:
        """Equal ChannelData payloads to one peer leave the allocation in one GSO send."""
        payloads = _payloads(*[1200] * 10)
        self.send_from_client(payloads)
        self.assertEqual(self.allocation.gso_sends, [(1200, 10, PEER)])
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in payloads])
        self.assertEqual(self.server.stats.packets_to_peer, 10)

    def test_size_change_ends_a_run(self) -> None:
        """A shorter datagram is the run's last segment; a longer one starts a new run."""
        payloads = _payloads(100, 100, 100, 50, 100, 100, 200, 30)
        self.send_from_client(payloads)
        self.assertEqual(self.allocation.gso_sends,
                         [(100, 4, PEER), (100, 2, PEER), (200, 2, PEER)])
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in payloads])

    def test_short_last_segment(self) -> None:
        """Runs close at a short segment; the next equal-size datagrams form a new run."""
        payloads = _payloads(500, 500, 500, 20, 500, 500)
        self.send_from_client(payloads)
        self.assertEqual(self.allocation.gso_sends, [(500, 4, PEER), (500, 2, PEER)])
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in payloads])

    def test_destination_change_ends_a_run(self) -> None:
        """Runs hold datagrams to one peer; interleaved channels split them."""
        self.bind(0x4001, PEER2)
        a, b = _payloads(*[300] * 5), _payloads(*[300] * 2)
        for channel, payload in [(0x4000, a[0]), (0x4000, a[1]), (0x4001, b[0]),
                                 (0x4001, b[1]), (0x4000, a[2])]:
            self.listen.queue(_channel_data(channel, payload), CLIENT)
        self.wake(self.listen)
        self.assertEqual(self.allocation.gso_sends, [(300, 2, PEER), (300, 2, PEER2)])
        self.assertEqual(self.allocation.sent, [(a[0], PEER), (a[1], PEER), (b[0], PEER2),
                                                (b[1], PEER2), (a[2], PEER)])

    def test_clients_interleaved_split_by_allocation(self) -> None:
        """Two clients relaying to the same peer address use their own allocation sockets."""
        other = Client(self.server, CLIENT2, salt="other-device-salt")
        allocation2 = self.allocate(other)
        self.bind(0x4000, PEER, other)
        mine, theirs = _payloads(*[80] * 3), _payloads(*[80] * 3)
        for source, payload in [(CLIENT, mine[0]), (CLIENT, mine[1]), (CLIENT2, theirs[0]),
                                (CLIENT2, theirs[1]), (CLIENT2, theirs[2]), (CLIENT, mine[2])]:
            self.listen.queue(_channel_data(0x4000, payload), source)
        self.wake(self.listen)
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in mine])
        self.assertEqual(allocation2.sent, [(p, PEER) for p in theirs])
        self.assertEqual(self.allocation.gso_sends, [(80, 2, PEER)])
        self.assertEqual(allocation2.gso_sends, [(80, 3, PEER)])

    def test_run_stops_at_64_segments(self) -> None:
        """No GSO send carries more than 64 datagrams (the kernel's UDP_MAX_SEGMENTS)."""
        payloads = _payloads(*[100] * 130)
        self.send_from_client(payloads)
        self.assertEqual(self.allocation.gso_sends, [(100, 64, PEER), (100, 64, PEER),
                                                     (100, 2, PEER)])
        self.assertEqual(len(self.allocation.sent), 130)

    def test_run_stops_below_64_kilobytes(self) -> None:
        """No GSO send carries more than one datagram's 65507 payload bytes."""
        self.send_from_client(_payloads(*[1200] * 60))
        self.send_from_client(_payloads(*[2000] * 40))
        self.send_from_client(_payloads(*[1200] * 53, 1199))
        self.assertEqual(self.allocation.gso_sends, [
            (1200, 54, PEER), (1200, 6, PEER), (2000, 32, PEER), (2000, 8, PEER),
            (1200, 54, PEER)])

    def test_runs_never_span_wakeups(self) -> None:
        """Whatever a wake-up read is sent before it returns."""
        self.send_from_client(_payloads(*[100] * 3))
        self.assertEqual(len(self.allocation.sent), 3)
        self.send_from_client(_payloads(*[100] * 3))
        self.assertEqual(self.allocation.gso_sends, [(100, 3, PEER)] * 2)

    def test_reads_at_most_256_per_wakeup(self) -> None:
        """A wake-up handles 256 datagrams; the rest wait for the next one."""
        for payload in _payloads(*[10] * 300):
            self.listen.queue(_channel_data(0x4000, payload), CLIENT)
        self.wake(self.listen)
        self.assertEqual(len(self.allocation.sent), 256)
        self.wake(self.listen)
        self.assertEqual(len(self.allocation.sent), 300)

    def test_stun_in_the_middle_keeps_order(self) -> None:
        """ChannelData read before a STUN message is sent before its response, and after it."""
        before = len(self.reactor.wire)
        payloads = _payloads(*[100] * 5)
        for payload in payloads[:3]:
            self.listen.queue(_channel_data(0x4000, payload), CLIENT)
        binding = Message(Method.BINDING, MessageClass.REQUEST, b"t" * 12, []).encode()
        self.listen.queue(binding, CLIENT)
        for payload in payloads[3:]:
            self.listen.queue(_channel_data(0x4000, payload), CLIENT)
        self.wake(self.listen)
        wire = [(port, data[:1] if port is self.listen else data, to)
                for port, data, to in self.reactor.wire[before:]]
        self.assertEqual(wire, [(self.allocation, payloads[0], PEER),
                                (self.allocation, payloads[1], PEER),
                                (self.allocation, payloads[2], PEER),
                                (self.listen, b"\x01", CLIENT),
                                (self.allocation, payloads[3], PEER),
                                (self.allocation, payloads[4], PEER)])

    def test_channel_bind_mid_batch_applies_to_what_follows(self) -> None:
        """A ChannelBind in a batch routes the datagrams after it and not those before."""
        self.listen.queue(_channel_data(0x4001, b"early"), CLIENT)
        self.listen.queue(self.client.build(
            Method.CHANNEL_BIND, [ChannelNumber(0x4001), XorPeerAddress(*PEER2)]), CLIENT)
        self.listen.queue(_channel_data(0x4001, b"late"), CLIENT)
        self.wake(self.listen)
        self.assertEqual(self.allocation.sent, [(b"late", PEER2)])
        self.assertEqual(self.server.stats.drops["unbound_channel"], 1)
        self.assertIsInstance(self.observed[-1], CreateChannelBinding)

    def test_refresh_to_zero_mid_batch_flushes_first(self) -> None:
        """Datagrams read before a deleting Refresh leave before the allocation's socket closes."""
        payloads = _payloads(*[100] * 3)
        for payload in payloads:
            self.listen.queue(_channel_data(0x4000, payload), CLIENT)
        self.listen.queue(self.client.build(Method.REFRESH, [Lifetime(0)]), CLIENT)
        self.listen.queue(_channel_data(0x4000, b"after"), CLIENT)
        self.wake(self.listen)
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in payloads])
        self.assertTrue(self.allocation.closed)
        self.assertEqual(self.relay.send_errors, 0)
        self.assertEqual([type(c) for c in self.observed[-2:]],
                         [DeleteChannelBinding, FreeAllocation])
        self.assertNotIn(self.allocation.socket, [getattr(r, "socket", None)
                                                  for r in self.reactor.getReaders()])

    def test_gso_fallback_after_eio(self) -> None:
        """If the route refuses GSO (EIO) datagrams go one by one, and GSO is not retried."""
        self.allocation.socket.gso_errno = errno.EIO
        first, second = _payloads(*[1200] * 10), _payloads(*[1200] * 10)
        self.send_from_client(first)
        self.send_from_client(second)
        self.assertEqual(self.allocation.sent, [(p, PEER) for p in first + second])
        self.assertEqual(self.allocation.socket.sendmsg_calls, 1)
        self.assertEqual(self.relay.send_errors, 0)
        self.listen.socket.gso_errno = None
        self.allocation.queue(b"p" * 10, PEER)
        self.allocation.queue(b"q" * 10, PEER)
        self.wake(self.allocation)
        self.assertEqual(self.listen.gso_sends, [(14, 2, CLIENT)], "other sockets keep GSO")

    def test_full_buffer_drops_whole_run_and_counts_each(self) -> None:
        """A refused GSO send counts every datagram it carried as a send error."""
        self.allocation.socket.send_errno = errno.EAGAIN
        self.send_from_client(_payloads(*[100] * 7))
        self.assertEqual(self.relay.send_errors, 7)

    def test_peer_burst_reaches_client_as_one_gso_send(self) -> None:
        """Equal-size peer datagrams become equal-size ChannelData in one send to the client."""
        before = len(self.listen.sent)
        payloads = _payloads(*[300] * 8)
        for payload in payloads:
            self.allocation.queue(payload, PEER)
        self.wake(self.allocation)
        self.assertEqual(self.listen.gso_sends, [(304, 8, CLIENT)])
        self.assertEqual(self.listen.sent[before:],
                         [(_channel_data(0x4000, p), CLIENT) for p in payloads])

    def test_two_peers_to_one_client_share_a_run(self) -> None:
        """ChannelData of different channels to the same client may share a GSO send."""
        self.bind(0x4001, PEER2)
        before = len(self.listen.sent)
        for sender in (PEER, PEER2, PEER, PEER2):
            self.allocation.queue(b"z" * 50, sender)
        self.allocation.queue(b"short", PEER)
        self.allocation.queue(b"y" * 50, ("198.51.100.99", 1))  # no permission: dropped
        self.allocation.queue(b"x" * 50, PEER)
        self.wake(self.allocation)
        self.assertEqual(self.listen.gso_sends, [(54, 5, CLIENT)])
        channels = [data[:2] for data, _ in self.listen.sent[before:]]
        self.assertEqual(channels, [b"\x40\x00", b"\x40\x01", b"\x40\x00", b"\x40\x01",
                                    b"\x40\x00", b"\x40\x00"])
        self.assertEqual(self.server.stats.drops["unknown_peer"], 1)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.one_of(st.binary(max_size=40),
                                        st.binary(max_size=40).map(lambda b: b"\x40\x00" + b),
                                        st.binary(max_size=40).map(lambda b: b"\x00\x01" + b)),
                              st.integers(0, 65535), st.booleans()),
                    max_size=300))
    def test_garbage_flood_never_raises(
            self, flood: list[tuple[bytes, int, bool]]) -> None:
        """Arbitrary datagrams on either socket are relayed or dropped, never an error."""
        for data, port, from_client in flood:
            if from_client:
                self.listen.queue(data, (CLIENT[0], port) if port % 2 else CLIENT)
            else:
                self.allocation.queue(data, (PEER[0], port) if port % 2 else PEER)
        for _ in range(3):
            self.wake(self.listen)
            self.wake(self.allocation)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertFalse(self.listen.socket.inbox)
        self.assertFalse(self.allocation.socket.inbox)
        self.assertEqual(len(self.reactor.getReaders()), 2)

    def test_stop_service_removes_readers_and_closes_sockets(self) -> None:
        """stopService takes every reader out of the reactor and closes every socket."""
        self.relay.stopService()
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertTrue(self.listen.closed)
        self.assertTrue(self.allocation.closed)
