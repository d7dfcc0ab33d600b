"""Tests for the sans-IO TURN server (REFERENCE.md 3.2), driven through the STUN codec."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import long_term_key, turn_password, turn_username
from firezone.relay.commands import (
    Address,
    Command,
    CreateAllocation,
    CreateChannelBinding,
    DeleteChannelBinding,
    FreeAllocation,
    SendFromAllocation,
    SendMessage,
)
from firezone.relay.nonces import NONCE_USES
from firezone.relay.server import (
    DEFAULT_SOFTWARE,
    RESPONSE_CACHE_TTL,
    TurnServer,
)
from firezone.wire.channeldata import decode_channel_data, encode_channel_data
from firezone.wire.stun import (
    AdditionalAddressFamily,
    AddressFamily,
    Attribute,
    ChannelNumber,
    ErrorCode,
    Lifetime,
    Message,
    MessageClass,
    Method,
    Nonce,
    RawAttribute,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    verify_fingerprint,
    verify_integrity,
)

SECRET = "4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab"
NOW = 1_700_000_000.0
EXPIRY = int(NOW) + 86_400
IP4 = IPv4Address("203.0.113.1")
IP6 = IPv6Address("2001:db8::1")
PEER4: Address = ("198.51.100.7", 40000)
PEER4_B: Address = ("198.51.100.8", 40001)
PEER6: Address = ("2001:db8::77", 40002)


def make_server(
    ip4: IPv4Address | None = IP4,
    ip6: IPv6Address | None = None,
    lowest_port: int = 49152,
    highest_port: int = 65535,
    seed: int = 1,
    allocations_per_username: int = 1,
) -> TurnServer:
    return TurnServer(
        ip4,
        ip6,
        SECRET,
        lowest_port=lowest_port,
        highest_port=highest_port,
        rng=random.Random(seed),
        allocations_per_username=allocations_per_username,
    )


def sends(commands: list[Command]) -> list[SendMessage]:
    return [c for c in commands if isinstance(c, SendMessage)]


def effects(commands: list[Command]) -> list[Command]:
    return [c for c in commands if not isinstance(c, SendMessage)]


class Client:
    """A TURN client speaking to the server through the codec, as a test helper."""

    def __init__(
        self,
        server: TurnServer,
        addr: Address = ("192.0.2.10", 50000),
        salt: str = "n23JJ2wKKtt30oXi",
        expiry: int = EXPIRY,
    ) -> None:
        self.server = server
        self.addr = addr
        self.username = turn_username(expiry, salt)
        self.password = turn_password(self.username, SECRET)
        self.key = long_term_key(self.username, "firezone", self.password)
        self.nonce: str | None = None
        self._counter = 0

    def tid(self) -> bytes:
        self._counter += 1
        return self._counter.to_bytes(4, "big") + self.addr[1].to_bytes(8, "big")

    def build(
        self,
        method: int,
        attrs: list[Attribute] | None = None,
        *,
        tid: bytes | None = None,
        signed: bool = True,
        with_nonce: bool = True,
        with_username: bool = True,
        realm: str = "firezone",
        key: bytes | None = None,
        username: str | None = None,
    ) -> bytes:
        attributes: list[Attribute] = list(attrs or [])
        if with_username:
            attributes.append(Username(username or self.username))
        if realm:
            attributes.append(Realm(realm))
        if with_nonce and self.nonce is not None:
            attributes.append(Nonce(self.nonce))
        msg = Message(method, MessageClass.REQUEST, tid or self.tid(), attributes)
        return msg.encode(integrity_key=(key or self.key) if signed else None)

    def send(self, data: bytes, now: float = NOW) -> list[Command]:
        return self.server.handle_client_input(data, self.addr, now)

    def call(
        self, method: int, attrs: list[Attribute] | None = None, now: float = NOW, **kw: object
    ) -> tuple[Message, list[Command]]:
        """Send a request; return the decoded response and the other commands."""
        commands = self.send(self.build(method, attrs, **kw), now)  # type: ignore[arg-type]
        return self.response(commands), effects(commands)

    def response(self, commands: list[Command]) -> Message:
        replies = sends(commands)
        assert len(replies) == 1, commands
        assert replies[0].recipient == self.addr
        assert verify_fingerprint(replies[0].payload)
        return Message.decode(replies[0].payload)

    def login(self, now: float = NOW) -> None:
        """Obtain a nonce through the 401 dance the snownet client does."""
        reply, _ = self.call(
            Method.ALLOCATE, [RequestedTransport(17)], now, signed=False, with_nonce=False
        )
        assert error_code(reply) == 401
        nonce = reply.get(Nonce)
        assert nonce is not None
        self.nonce = nonce.value

    def allocate(
        self, attrs: list[Attribute] | None = None, now: float = NOW
    ) -> tuple[Message, list[Command]]:
        if self.nonce is None:
            self.login(now)
        return self.call(Method.ALLOCATE, [RequestedTransport(17), *(attrs or [])], now)

    def relay_port(self) -> int:
        info = self.server.allocation_for(self.addr)
        assert info is not None
        return info.port

    def bind(
        self, number: int, peer: Address, now: float = NOW
    ) -> tuple[Message, list[Command]]:
        return self.call(
            Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)], now
        )


def error_code(msg: Message) -> int | None:
    attr = msg.get(ErrorCode)
    return None if attr is None else attr.code


class DemuxTests(SynchronousTestCase):
    def test_source_port_zero_dropped(self) -> None:
        """Packets from UDP source port 0 are dropped (ignores_stun_request_from_port_0)."""
        server = make_server()
        binding = Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12).encode()
        self.assertEqual(server.handle_client_input(binding, ("192.0.2.1", 0), NOW), [])
        self.assertEqual(server.stats.drops["source_port_zero"], 1)

    def test_unknown_first_byte_dropped(self) -> None:
        """First byte 0..3 is STUN, 64..127 ChannelData (0x4000-0x7FFF); else dropped."""
        server = make_server()
        for first in (4, 63, 128, 0xFF):
            data = bytes((first,)) + b"\x00" * 23
            self.assertEqual(server.handle_client_input(data, ("192.0.2.1", 1), NOW), [])
        self.assertEqual(server.stats.drops["unknown_first_byte"], 4)
        self.assertEqual(server.handle_client_input(b"", ("192.0.2.1", 1), NOW), [])

    def test_unparseable_stun_dropped(self) -> None:
        """Requests that fail to parse get no answer."""
        server = make_server()
        self.assertEqual(server.handle_client_input(b"\x00\x01\x00\x00", ("192.0.2.1", 1), NOW), [])
        self.assertEqual(server.stats.drops["malformed_stun"], 1)

    def test_indications_and_responses_ignored(self) -> None:
        """Send/Data indications are not supported; stray responses are dropped."""
        server = make_server()
        for method, klass in [
            (Method.SEND, MessageClass.INDICATION),
            (Method.DATA, MessageClass.INDICATION),
            (Method.BINDING, MessageClass.SUCCESS),
            (Method.ALLOCATE, MessageClass.ERROR),
        ]:
            data = Message(method, klass, b"\x02" * 12, [XorPeerAddress(*PEER4)]).encode()
            self.assertEqual(server.handle_client_input(data, ("192.0.2.1", 9), NOW), [])
        self.assertEqual(server.stats.drops["not_a_request"], 4)

    def test_unknown_request_method_is_400(self) -> None:
        """A request for a method the relay does not implement gets 400 Bad Request."""
        server = make_server()
        client = Client(server)
        reply, _ = client.call(Method.SEND, [XorPeerAddress(*PEER4)], signed=False)
        self.assertEqual(error_code(reply), 400)
        self.assertEqual(reply.method, Method.SEND)


class BindingTests(SynchronousTestCase):
    def test_binding_v4(self) -> None:
        """BINDING is unauthenticated; success carries XOR-MAPPED-ADDRESS and SOFTWARE."""
        server = make_server()
        client = Client(server, ("192.0.2.10", 5555))
        tid = b"\x07" * 12
        reply, other = client.call(Method.BINDING, tid=tid, signed=False, with_username=False,
                                   realm="")
        self.assertEqual(other, [])
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(reply.transaction_id, tid)
        self.assertEqual(reply.get(XorMappedAddress), XorMappedAddress("192.0.2.10", 5555))
        self.assertEqual(reply.get(Software), Software(DEFAULT_SOFTWARE))
        self.assertEqual(server.stats.responses[("binding", "success", None)], 1)

    def test_binding_v6(self) -> None:
        """An IPv6 client learns its IPv6 reflexive address."""
        server = make_server(ip4=None, ip6=IP6)
        client = Client(server, ("2001:db8::99", 6000))
        reply, _ = client.call(Method.BINDING, signed=False, with_username=False, realm="")
        self.assertEqual(reply.get(XorMappedAddress), XorMappedAddress("2001:db8::99", 6000))

    def test_binding_unknown_required_attribute_is_420(self) -> None:
        """RFC 8489 6.3.1: unknown comprehension-required attributes -> 420 + UNKNOWN-ATTRIBUTES."""
        server = make_server()
        client = Client(server)
        reply, _ = client.call(Method.BINDING, [RawAttribute(0x7FFE, b"x")], signed=False,
                               with_username=False, realm="")
        self.assertEqual(error_code(reply), 420)
        self.assertEqual(reply.get(UnknownAttributes), UnknownAttributes((0x7FFE,)))
        reply, _ = client.call(Method.BINDING, [RawAttribute(0xFFFE, b"x")], signed=False,
                               with_username=False, realm="")
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)


class AuthenticationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()
        self.client = Client(self.server)

    def test_unauthenticated_allocate_gets_401_with_realm_and_nonce(self) -> None:
        """401 responses carry REALM "firezone" and a UUID NONCE (unauthenticated_allocate...)."""
        reply, other = self.client.call(
            Method.ALLOCATE, [RequestedTransport(17)], signed=False, with_nonce=False,
            with_username=False, realm="",
        )
        self.assertEqual(other, [])
        self.assertEqual(error_code(reply), 401)
        self.assertEqual(reply.get(Realm), Realm("firezone"))
        nonce = reply.get(Nonce)
        assert nonce is not None
        uuid.UUID(nonce.value)
        self.assertEqual(self.server.num_allocations, 0)
        self.assertEqual(self.server.stats.responses[("allocate", "error", 401)], 1)

    def test_401_is_signed_when_username_given(self) -> None:
        """Responses are signed with the long-term credential of the request's username."""
        commands = self.client.send(
            self.client.build(Method.ALLOCATE, [RequestedTransport(17)], with_nonce=False)
        )
        payload = sends(commands)[0].payload
        self.assertEqual(error_code(Message.decode(payload)), 401)
        self.assertTrue(verify_integrity(payload, self.client.key))

    def test_nonce_reused_for_same_client(self) -> None:
        """A client keeps getting the same nonce while it has uses left."""
        self.client.login()
        first = self.client.nonce
        self.client.login()
        self.assertEqual(self.client.nonce, first)

    def test_wrong_password_is_401(self) -> None:
        """A MESSAGE-INTEGRITY made with another password is refused with 401."""
        self.client.login()
        bad_key = long_term_key(self.client.username, "firezone", "not-the-password")
        reply, other = self.client.call(Method.ALLOCATE, [RequestedTransport(17)], key=bad_key)
        self.assertEqual(error_code(reply), 401)
        self.assertEqual(other, [])
        self.assertIsNotNone(reply.get(Nonce))

    def test_missing_message_integrity_is_401(self) -> None:
        """USERNAME, NONCE and MESSAGE-INTEGRITY are all required."""
        self.client.login()
        reply, _ = self.client.call(Method.ALLOCATE, [RequestedTransport(17)], signed=False)
        self.assertEqual(error_code(reply), 401)
        reply, _ = self.client.call(Method.ALLOCATE, [RequestedTransport(17)],
                                    with_username=False)
        self.assertEqual(error_code(reply), 401)

    def test_wrong_realm_is_401(self) -> None:
        """A REALM other than "firezone" is refused."""
        self.client.login()
        reply, _ = self.client.call(Method.ALLOCATE, [RequestedTransport(17)], realm="example.org")
        self.assertEqual(error_code(reply), 401)

    def test_non_uuid_nonce_is_401(self) -> None:
        """A nonce that is not a UUID cannot be ours: 401."""
        self.client.nonce = "not-a-uuid"
        reply, _ = self.client.call(Method.ALLOCATE, [RequestedTransport(17)])
        self.assertEqual(error_code(reply), 401)

    def test_unknown_nonce_is_438(self) -> None:
        """An unknown nonce gets 438 Stale Nonce with REALM and a fresh NONCE."""
        self.client.login()
        issued = self.client.nonce
        self.client.nonce = str(uuid.UUID(int=5))
        reply, _ = self.client.call(Method.ALLOCATE, [RequestedTransport(17)])
        self.assertEqual(error_code(reply), 438)
        self.assertEqual(reply.get(Realm), Realm("firezone"))
        self.assertEqual(reply.get(Nonce), Nonce(str(issued)))

    def test_nonce_is_per_client_socket(self) -> None:
        """A nonce issued to one 5-tuple is stale for another."""
        self.client.login()
        other = Client(self.server, ("192.0.2.10", 50001))
        other.nonce = self.client.nonce
        reply, _ = other.call(Method.ALLOCATE, [RequestedTransport(17)])
        self.assertEqual(error_code(reply), 438)

    def test_expired_username_is_401(self) -> None:
        """The relay rejects the request if expiry < now."""
        client = Client(self.server, expiry=int(NOW) - 1)
        client.login()
        reply, _ = client.call(Method.ALLOCATE, [RequestedTransport(17)])
        self.assertEqual(error_code(reply), 401)
        on_the_second = Client(self.server, ("192.0.2.10", 50002), expiry=int(NOW))
        reply, _ = on_the_second.allocate()
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)

    def test_malformed_username_is_401_unsigned(self) -> None:
        """A username that is not "<expiry>:<salt>" cannot authenticate (or sign)."""
        self.client.login()
        data = self.client.build(Method.ALLOCATE, [RequestedTransport(17)], username="nocolon")
        payload = sends(self.client.send(data))[0].payload
        self.assertEqual(error_code(Message.decode(payload)), 401)
        self.assertFalse(verify_integrity(payload, self.client.key))

    def test_successful_response_is_signed(self) -> None:
        """Success responses carry MESSAGE-INTEGRITY with the client's key, then FINGERPRINT."""
        self.client.login()
        payload = sends(self.client.send(
            self.client.build(Method.ALLOCATE, [RequestedTransport(17)])
        ))[0].payload
        self.assertTrue(verify_integrity(payload, self.client.key))
        self.assertTrue(verify_fingerprint(payload))

    def test_nonce_valid_for_10000_requests(self) -> None:
        """Nonce: one per client 5-tuple, valid for 10 000 requests, then 438 (auth.rs Nonces)."""
        self.client.login()
        first = self.client.nonce
        for _ in range(NONCE_USES):
            commands = self.client.send(self.client.build(Method.CREATE_PERMISSION,
                                                          [XorPeerAddress(*PEER4)]))
            self.assertEqual(len(commands), 1)
        reply, _ = self.client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)])
        self.assertEqual(error_code(reply), 438)
        fresh = reply.get(Nonce)
        assert fresh is not None
        self.assertNotEqual(fresh.value, first)
        self.client.nonce = fresh.value
        reply, _ = self.client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)])
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(self.server.stats.responses[("createpermission", "success", None)],
                         NONCE_USES + 1)


class AllocateTests(SynchronousTestCase):
    def test_allocate_success(self) -> None:
        """Success: XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME 600; socket bound first."""
        server = make_server()
        client = Client(server)
        reply, other = client.allocate()
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        relayed = reply.get_all(XorRelayedAddress)
        self.assertEqual(len(relayed), 1)
        self.assertEqual(relayed[0].ip, "203.0.113.1")
        self.assertTrue(49152 <= relayed[0].port <= 65535)
        self.assertEqual(reply.get(XorMappedAddress), XorMappedAddress(*client.addr))
        self.assertEqual(reply.get(Lifetime), Lifetime(600))
        self.assertEqual(other, [CreateAllocation(relayed[0].port, AddressFamily.V4)])
        commands = client.send(client.build(Method.ALLOCATE, [RequestedTransport(17)]))
        self.assertEqual(error_code(client.response(commands)), 437)
        self.assertEqual(server.stats.allocations_active, 1)
        # CreateAllocation precedes the response: the socket exists when the client learns of it.
        client2 = Client(server, ("192.0.2.10", 50009), salt="other")
        client2.login()
        commands = client2.send(client2.build(Method.ALLOCATE, [RequestedTransport(17)]))
        self.assertIsInstance(commands[0], CreateAllocation)
        self.assertIsInstance(commands[-1], SendMessage)

    def test_lifetime_rules(self) -> None:
        """LIFETIME is capped at 3600 s; shorter requests are honoured."""
        server = make_server()
        reply, _ = Client(server, salt="a").allocate([Lifetime(100_000)])
        self.assertEqual(reply.get(Lifetime), Lifetime(3600))
        reply, _ = Client(server, ("192.0.2.10", 2), salt="b").allocate([Lifetime(100)])
        self.assertEqual(reply.get(Lifetime), Lifetime(100))
        self.assertEqual(server.poll_timeout(), NOW + 100)

    def test_only_udp(self) -> None:
        """Only REQUESTED-TRANSPORT UDP (17) is allowed, otherwise 400; missing is 400."""
        server = make_server()
        client = Client(server)
        client.login()
        reply, other = client.call(Method.ALLOCATE, [RequestedTransport(6)])
        self.assertEqual(error_code(reply), 400)
        self.assertEqual(other, [])
        reply, other = client.call(Method.ALLOCATE, [])
        self.assertEqual(error_code(reply), 400)
        self.assertEqual(server.num_allocations, 0)

    def test_retransmitted_allocate_gets_same_answer(self) -> None:
        """A retransmission (same transaction id, same bytes) is answered from cache, not 437."""
        server = make_server()
        client = Client(server)
        client.login()
        request = client.build(Method.ALLOCATE, [RequestedTransport(17)])
        first = client.send(request)
        again = client.send(request, NOW + 1)
        self.assertEqual(len(first), 2)
        self.assertEqual(again, sends(first))
        self.assertEqual(server.num_allocations, 1)
        self.assertEqual(server.stats.retransmissions, 1)
        # The cache is short-lived: much later the same bytes are processed afresh.
        late = client.send(request, NOW + RESPONSE_CACHE_TTL + 1)
        self.assertEqual(error_code(client.response(late)), 437)

    def test_same_transaction_id_different_request_is_processed(self) -> None:
        """Only an identical retransmission is replayed; other bytes are handled normally."""
        server = make_server()
        client = Client(server)
        client.login()
        tid = b"\x09" * 12
        client.send(client.build(Method.ALLOCATE, [RequestedTransport(17)], tid=tid))
        reply, _ = client.call(Method.ALLOCATE, [RequestedTransport(17), Lifetime(5)], tid=tid)
        self.assertEqual(error_code(reply), 437)

    def test_one_allocation_per_username(self) -> None:
        """A new Allocate from a new socket with the same username deletes the old one."""
        server = make_server()
        old = Client(server, ("192.0.2.10", 1000))
        old.allocate()
        old_port = old.relay_port()
        old.bind(0x4000, PEER4)
        new = Client(server, ("192.0.2.99", 2000))
        reply, other = new.allocate()
        new_port = new.relay_port()
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(
            other,
            [
                DeleteChannelBinding(old.addr, 0x4000, PEER4, old_port),
                FreeAllocation(old_port, AddressFamily.V4),
                CreateAllocation(new_port, AddressFamily.V4),
            ],
        )
        self.assertIsNone(server.allocation_for(old.addr))
        self.assertEqual(server.num_allocations, 1)
        reply, _ = old.call(Method.REFRESH)
        self.assertEqual(error_code(reply), 437)

    def test_allocations_per_username_limit(self) -> None:
        """With a limit of 2 a second socket keeps its allocation; a third evicts the oldest."""
        server = make_server(allocations_per_username=2)
        clients = [Client(server, ("192.0.2.10", 1000 + i)) for i in range(3)]
        clients[0].allocate()
        first_port = clients[0].relay_port()
        clients[1].allocate()
        self.assertEqual(server.num_allocations, 2)
        _reply, other = clients[2].allocate()
        self.assertIn(FreeAllocation(first_port, AddressFamily.V4), other)
        self.assertIsNone(server.allocation_for(clients[0].addr))
        self.assertIsNotNone(server.allocation_for(clients[1].addr))
        self.assertEqual(server.num_allocations, 2)

    def test_channel_data_for_high_channel_numbers(self) -> None:
        """A channel bound in 0x5000-0x7FFF relays through handle_client_input too."""
        server = make_server()
        client = Client(server)
        client.allocate()
        client.bind(0x7FFF, PEER4)
        commands = server.handle_client_input(b"\x7f\xff\x00\x02hi", client.addr, NOW)
        self.assertEqual(commands, [SendFromAllocation(b"hi", client.relay_port(), PEER4)])

    def test_insufficient_capacity(self) -> None:
        """No free ports -> 508 Insufficient Capacity; ports stay inside the range."""
        server = make_server(lowest_port=50000, highest_port=50001)
        ports = set()
        for i in range(2):
            client = Client(server, ("192.0.2.10", 100 + i), salt=f"s{i}")
            reply, _ = client.allocate()
            ports.add(client.relay_port())
        self.assertEqual(ports, {50000, 50001})
        reply, _ = Client(server, ("192.0.2.10", 200), salt="late").allocate()
        self.assertEqual(error_code(reply), 508)
        self.assertEqual(server.stats.responses[("allocate", "error", 508)], 1)

    def test_ports_are_random(self) -> None:
        """The allocation port is picked at random from the range (not sequentially)."""
        server = make_server()
        ports = []
        for i in range(8):
            client = Client(server, ("192.0.2.10", 100 + i), salt=f"s{i}")
            client.allocate()
            ports.append(client.relay_port())
        self.assertEqual(len(set(ports)), 8)
        self.assertNotEqual(ports, sorted(ports))


class AddressFamilyTests(SynchronousTestCase):
    def families(
        self, server: TurnServer, attrs: Sequence[Attribute]
    ) -> tuple[int | None, list[str]]:
        client = Client(server)
        reply, other = client.allocate(list(attrs))
        relayed = [a.ip for a in reply.get_all(XorRelayedAddress)]
        if relayed:
            port = reply.get_all(XorRelayedAddress)[0].port
            self.assertTrue(all(a.port == port for a in reply.get_all(XorRelayedAddress)))
            self.assertEqual(
                other, [CreateAllocation(port, AddressFamily.V6 if ":" in ip else AddressFamily.V4)
                        for ip in relayed]
            )
        return error_code(reply), relayed

    def test_default_is_ipv4(self) -> None:
        """No attribute or REQUESTED-ADDRESS-FAMILY v4 -> an IPv4 relay address."""
        dual = make_server(ip6=IP6)
        self.assertEqual(self.families(dual, []), (None, ["203.0.113.1"]))
        self.assertEqual(self.families(make_server(ip6=IP6), [RequestedAddressFamily(1)]),
                         (None, ["203.0.113.1"]))

    def test_requested_ipv6(self) -> None:
        """REQUESTED-ADDRESS-FAMILY v6 -> an IPv6 relay address."""
        self.assertEqual(self.families(make_server(ip6=IP6), [RequestedAddressFamily(2)]),
                         (None, ["2001:db8::1"]))
        self.assertEqual(self.families(make_server(ip4=None, ip6=IP6),
                                       [RequestedAddressFamily(2)]), (None, ["2001:db8::1"]))

    def test_additional_ipv6_on_dual_stack(self) -> None:
        """ADDITIONAL-ADDRESS-FAMILY v6 on a dual-stack relay -> two XOR-RELAYED-ADDRESS."""
        self.assertEqual(self.families(make_server(ip6=IP6), [AdditionalAddressFamily(2)]),
                         (None, ["203.0.113.1", "2001:db8::1"]))

    def test_additional_ipv6_partially_fulfilled(self) -> None:
        """On a single-stack relay, ADDITIONAL v6 gets only the family the relay has."""
        self.assertEqual(self.families(make_server(), [AdditionalAddressFamily(2)]),
                         (None, ["203.0.113.1"]))
        self.assertEqual(self.families(make_server(ip4=None, ip6=IP6),
                                       [AdditionalAddressFamily(2)]), (None, ["2001:db8::1"]))

    def test_bad_requests(self) -> None:
        """Both attributes, or ADDITIONAL = v4 -> 400 (RFC 8656 7.2 steps 6 and 9)."""
        server = make_server(ip6=IP6)
        both = [RequestedAddressFamily(1), AdditionalAddressFamily(2)]
        self.assertEqual(self.families(server, both), (400, []))
        self.assertEqual(self.families(make_server(ip6=IP6), [AdditionalAddressFamily(1)]),
                         (400, []))
        self.assertEqual(server.num_allocations, 0)

    def test_family_not_available(self) -> None:
        """Family not available -> 440 Address Family not Supported."""
        self.assertEqual(self.families(make_server(), [RequestedAddressFamily(2)]), (440, []))
        self.assertEqual(self.families(make_server(ip4=None, ip6=IP6), []), (440, []))
        self.assertEqual(self.families(make_server(ip4=None, ip6=IP6),
                                       [RequestedAddressFamily(1)]), (440, []))
        self.assertEqual(self.families(make_server(ip6=IP6), [RequestedAddressFamily(9)]),
                         (440, []))


class RefreshTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()
        self.client = Client(self.server)
        self.client.allocate()
        self.port = self.client.relay_port()

    def test_allocation_expires(self) -> None:
        """An allocation is deleted once its lifetime has passed (deallocate_once_time_expired)."""
        self.assertEqual(self.server.poll_timeout(), NOW + 600)
        self.assertEqual(self.server.handle_deadline(NOW + 599.9), [])
        self.assertEqual(self.server.handle_deadline(NOW + 600),
                         [FreeAllocation(self.port, AddressFamily.V4)])
        self.assertIsNone(self.server.poll_timeout())
        self.assertEqual(self.server.num_allocations, 0)
        self.assertEqual(self.server.stats.allocations_active, 0)

    def test_refresh_extends(self) -> None:
        """Refreshed in time, an allocation does not expire (when_refreshed_in_time...)."""
        reply, other = self.client.call(Method.REFRESH, [Lifetime(1000)], NOW + 500)
        self.assertEqual(reply.get(Lifetime), Lifetime(1000))
        self.assertEqual(other, [])
        self.assertEqual(self.server.handle_deadline(NOW + 600), [])
        self.assertEqual(self.server.poll_timeout(), NOW + 1500)
        self.assertEqual(self.server.num_allocations, 1)
        reply, _ = self.client.call(Method.REFRESH, [], NOW + 1000)
        self.assertEqual(reply.get(Lifetime), Lifetime(600))
        self.assertEqual(self.server.poll_timeout(), NOW + 1600)

    def test_refresh_zero_deletes(self) -> None:
        """LIFETIME 0 deletes the allocation (when_receiving_lifetime_0...)."""
        self.client.bind(0x4001, PEER4)
        reply, other = self.client.call(Method.REFRESH, [Lifetime(0)])
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(reply.get(Lifetime), Lifetime(0))
        self.assertEqual(other, [
            DeleteChannelBinding(self.client.addr, 0x4001, PEER4, self.port),
            FreeAllocation(self.port, AddressFamily.V4),
        ])
        self.assertEqual(self.server.num_allocations, 0)
        self.assertEqual(list(self.server.channels()), [])
        self.assertIsNone(self.server.poll_timeout())

    def test_refresh_without_allocation_is_437(self) -> None:
        """REFRESH from a socket without allocation -> 437."""
        other = Client(self.server, ("192.0.2.10", 999))
        other.login()
        reply, _ = other.call(Method.REFRESH, [Lifetime(600)])
        self.assertEqual(error_code(reply), 437)

    def test_expired_before_deadline_processing(self) -> None:
        """A late REFRESH finds the allocation already expired even if no timer fired."""
        commands = self.client.send(self.client.build(Method.REFRESH), NOW + 601)
        self.assertEqual(effects(commands), [FreeAllocation(self.port, AddressFamily.V4)])
        self.assertEqual(error_code(self.client.response(commands)), 437)

    def test_allocation_failed(self) -> None:
        """If the adapter cannot bind the socket, the allocation is dropped."""
        self.assertEqual(self.server.handle_allocation_failed(self.port),
                         [FreeAllocation(self.port, AddressFamily.V4)])
        self.assertEqual(self.server.handle_allocation_failed(self.port), [])


class ChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()
        self.client = Client(self.server)
        self.client.allocate()
        self.port = self.client.relay_port()

    def ping(self, number: int = 0x4000, now: float = NOW) -> list[Command]:
        return self.client.send(encode_channel_data(number, b"ping"), now)

    def pong(self, peer: Address = PEER4, now: float = NOW) -> list[Command]:
        return self.server.handle_peer_traffic(b"pong", peer, self.port, now)

    def test_ping_pong_relay(self) -> None:
        """ChannelData goes from the allocation port to the peer and back (ping_pong_relay)."""
        reply, other = self.client.bind(0x4000, PEER4)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(other, [CreateChannelBinding(self.client.addr, 0x4000, PEER4, self.port)])
        self.assertEqual(self.ping(), [SendFromAllocation(b"ping", self.port, PEER4)])
        self.assertEqual(self.pong(), [SendMessage(b"\x40\x00\x00\x04pong", self.client.addr)])
        self.assertEqual(self.server.relay_client_channel_data(b"\x40\x00\x00\x02hi\x00\x00",
                                                               self.client.addr),
                         (b"hi", self.port, PEER4))
        self.assertEqual(self.server.relay_peer_data(b"x", PEER4, self.port),
                         (b"\x40\x00\x00\x01x", self.client.addr))
        stats = self.server.stats
        self.assertEqual((stats.packets_to_peer, stats.bytes_to_peer), (2, 6))
        self.assertEqual((stats.packets_to_client, stats.bytes_to_client), (2, 5))
        self.assertEqual(self.server.num_bound_channels, 1)

    def test_ping_pong_ipv6(self) -> None:
        """An IPv6 allocation relays to an IPv6 peer (ping_pong_ip6_relay)."""
        server = make_server(ip4=None, ip6=IP6)
        client = Client(server, ("2001:db8::5", 7000))
        client.allocate([RequestedAddressFamily(2)])
        port = client.relay_port()
        reply, _ = client.bind(0x4abc, PEER6)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(client.send(encode_channel_data(0x4ABC, b"six")),
                         [SendFromAllocation(b"six", port, PEER6)])
        out = server.handle_peer_traffic(b"back", PEER6, port, NOW)
        self.assertEqual(out, [SendMessage(encode_channel_data(0x4ABC, b"back"), client.addr)])

    def test_unbound_traffic_dropped(self) -> None:
        """Unbound channels and unknown peers are dropped; so is bad ChannelData."""
        self.assertEqual(self.ping(), [])
        self.assertEqual(self.pong(), [])
        self.client.bind(0x4000, PEER4)
        self.assertEqual(self.pong(PEER4_B), [])
        self.assertEqual(self.server.handle_peer_traffic(b"x", PEER4, self.port + 1, NOW)
                         if self.port < 65535 else [], [])
        self.assertEqual(self.client.send(b"\x40\x00\x00\x09short"), [])
        self.assertEqual(self.client.send(b"\x40\x00"), [])
        other_client = Client(self.server, ("192.0.2.10", 7777))
        self.assertEqual(other_client.send(encode_channel_data(0x4000, b"spoof")), [])
        drops = self.server.stats.drops
        self.assertEqual(drops["unbound_channel"], 2)
        self.assertEqual(drops["malformed_channel_data"], 2)
        self.assertGreaterEqual(drops["unknown_peer"], 2)

    def test_channel_number_range(self) -> None:
        """Channel numbers must be 0x4000-0x7FFF, else 400."""
        for number in (0x3FFF, 0x8000, 0):
            reply, other = self.client.bind(number, PEER4)
            self.assertEqual(error_code(reply), 400)
            self.assertEqual(other, [])
        reply, _ = self.client.bind(0x7FFF, PEER4)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        reply, _ = self.client.call(Method.CHANNEL_BIND, [ChannelNumber(0x4001)])
        self.assertEqual(error_code(reply), 400)

    def test_channel_bind_without_allocation_is_437(self) -> None:
        """CHANNEL-BIND needs an allocation on the sender's socket."""
        other = Client(self.server, ("192.0.2.10", 999))
        other.login()
        reply, _ = other.bind(0x4000, PEER4)
        self.assertEqual(error_code(reply), 437)

    def test_peer_family_mismatch_is_443(self) -> None:
        """The peer family must match the allocation's families, else 443."""
        reply, other = self.client.bind(0x4000, PEER6)
        self.assertEqual(error_code(reply), 443)
        self.assertEqual(other, [])
        server = make_server(ip6=IP6)
        dual = Client(server)
        dual.allocate([AdditionalAddressFamily(2)])
        self.assertEqual(dual.bind(0x4000, PEER6)[0].message_class, MessageClass.SUCCESS)
        self.assertEqual(dual.bind(0x4001, PEER4)[0].message_class, MessageClass.SUCCESS)
        v6only = Client(server, ("192.0.2.10", 50111), salt="v6")
        v6only.allocate([RequestedAddressFamily(2)])
        self.assertEqual(error_code(v6only.bind(0x4000, PEER4)[0]), 443)

    def test_conflicting_binds_are_400(self) -> None:
        """Same peer on another number, or same number to another peer -> 400."""
        self.client.bind(0x4000, PEER4)
        reply, other = self.client.bind(0x4001, PEER4)
        self.assertEqual(error_code(reply), 400)
        self.assertEqual(other, [])
        reply, other = self.client.bind(0x4000, PEER4_B)
        self.assertEqual(error_code(reply), 400)
        self.assertEqual(other, [])
        self.assertEqual(self.ping(), [SendFromAllocation(b"ping", self.port, PEER4)])

    def test_rebind_refreshes(self) -> None:
        """Re-binding the same pair refreshes the binding for another 600 s."""
        self.client.bind(0x4000, PEER4)
        reply, other = self.client.bind(0x4000, PEER4, NOW + 500)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(other, [CreateChannelBinding(self.client.addr, 0x4000, PEER4, self.port)])
        self.client.call(Method.REFRESH, [Lifetime(3600)], NOW + 500)
        self.assertEqual(self.server.handle_deadline(NOW + 600), [])
        self.assertEqual(self.ping(now=NOW + 1000), [SendFromAllocation(b"ping", self.port, PEER4)])
        self.assertEqual(self.server.poll_timeout(), NOW + 1100)

    def test_channel_expiry_and_rebind_hold(self) -> None:
        """After 600 s the binding is deleted; number and peer stay reserved for 300 s more."""
        self.client.call(Method.REFRESH, [Lifetime(3600)])
        self.client.bind(0x4000, PEER4)
        self.assertEqual(self.server.poll_timeout(), NOW + 600)
        self.assertEqual(self.server.handle_deadline(NOW + 600),
                         [DeleteChannelBinding(self.client.addr, 0x4000, PEER4, self.port)])
        self.assertEqual(self.ping(now=NOW + 601), [])
        self.assertEqual(self.pong(now=NOW + 601), [])
        self.assertEqual(self.server.poll_timeout(), NOW + 900)
        # While held, neither the number nor the peer can be bound elsewhere.
        self.assertEqual(error_code(self.client.bind(0x4000, PEER4_B, NOW + 700)[0]), 400)
        self.assertEqual(error_code(self.client.bind(0x4001, PEER4, NOW + 700)[0]), 400)
        # After the hold the channel is forgotten, silently (its binding is already gone).
        self.assertEqual(self.server.handle_deadline(NOW + 900), [])
        self.assertEqual(list(self.server.channels()), [])
        reply, other = self.client.bind(0x4000, PEER4_B, NOW + 901)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(other,
                         [CreateChannelBinding(self.client.addr, 0x4000, PEER4_B, self.port)])

    def test_rebind_during_hold(self) -> None:
        """Re-binding the held pair binds it again (allows_rebind_channel_after_expiry)."""
        self.client.call(Method.REFRESH, [Lifetime(3600)])
        self.client.bind(0x4000, PEER4)
        self.server.handle_deadline(NOW + 600)
        reply, other = self.client.bind(0x4000, PEER4, NOW + 650)
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(other, [CreateChannelBinding(self.client.addr, 0x4000, PEER4, self.port)])
        self.assertEqual(self.ping(now=NOW + 651), [SendFromAllocation(b"ping", self.port, PEER4)])
        # The stale hold deadline does nothing; the new expiry is 650 + 600.
        self.assertEqual(self.server.handle_deadline(NOW + 900), [])
        self.assertEqual(self.server.poll_timeout(), NOW + 1250)

    def test_freeing_allocation_clears_all_channels(self) -> None:
        """Allocation expiry deletes every bound channel, then frees the sockets."""
        self.client.bind(0x4000, PEER4)
        self.client.bind(0x4001, PEER4_B)
        commands = self.server.handle_deadline(NOW + 600)
        self.assertEqual(commands, [
            DeleteChannelBinding(self.client.addr, 0x4000, PEER4, self.port),
            DeleteChannelBinding(self.client.addr, 0x4001, PEER4_B, self.port),
            FreeAllocation(self.port, AddressFamily.V4),
        ])
        self.assertEqual(self.server.num_bound_channels, 0)
        self.assertEqual(self.server.stats.channels_bound, 0)
        self.assertEqual(self.ping(now=NOW + 601), [])
        self.assertIsNone(self.server.poll_timeout())

    def test_create_permission_is_noop(self) -> None:
        """CREATE-PERMISSION succeeds when authenticated but enforces nothing."""
        reply, other = self.client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)])
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)
        self.assertEqual(other, [])
        self.assertEqual(self.pong(), [])
        reply, _ = self.client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)],
                                    signed=False)
        self.assertEqual(error_code(reply), 401)

    def test_unknown_required_attribute_in_authenticated_request(self) -> None:
        """Authenticated request with an unknown comprehension-required attribute -> signed 420."""
        data = self.client.build(Method.CHANNEL_BIND,
                                 [ChannelNumber(0x4000), XorPeerAddress(*PEER4),
                                  RawAttribute(0x0FFF, b"?")])
        commands = self.client.send(data)
        self.assertEqual(effects(commands), [])
        payload = sends(commands)[0].payload
        reply = Message.decode(payload)
        self.assertEqual(error_code(reply), 420)
        self.assertEqual(reply.get(UnknownAttributes), UnknownAttributes((0x0FFF,)))
        self.assertTrue(verify_integrity(payload, self.client.key))
        reply, _ = self.client.call(Method.CHANNEL_BIND, [ChannelNumber(0x4000),
                                                          XorPeerAddress(*PEER4),
                                                          RawAttribute(0xC001, b"?")])
        self.assertEqual(reply.message_class, MessageClass.SUCCESS)


class BoundedMemoryTests(SynchronousTestCase):
    def test_response_cache_expires(self) -> None:
        """Cached responses are dropped once older than the cache TTL."""
        server = make_server()
        client = Client(server)
        client.allocate()
        for _ in range(50):
            client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)])
        self.assertEqual(len(server._responses), 51)
        client.call(Method.CREATE_PERMISSION, [XorPeerAddress(*PEER4)],
                    NOW + RESPONSE_CACHE_TTL + 1)
        self.assertEqual(len(server._responses), 1)

    def test_timers_stay_bounded_under_refresh_storm(self) -> None:
        """Thousands of refreshes do not grow the timer heap without bound."""
        server = make_server()
        client = Client(server)
        client.allocate()
        client.bind(0x4000, PEER4)
        for i in range(3000):
            client.call(Method.REFRESH, [Lifetime(3600 - i % 1000)], NOW + i / 100)
            client.bind(0x4000, PEER4, NOW + i / 100)
        self.assertLess(len(server._timers), 2000)
        self.assertEqual(server.poll_timeout(), NOW + 2999 / 100 + 600)


class MetricsTests(SynchronousTestCase):
    def test_response_counters(self) -> None:
        """Responses are counted by message type, class and error code."""
        server = make_server()
        client = Client(server)
        client.allocate()
        client.bind(0x4000, PEER4)
        client.bind(0x3000, PEER4)
        responses = server.stats.responses
        self.assertEqual(responses[("allocate", "error", 401)], 1)
        self.assertEqual(responses[("allocate", "success", None)], 1)
        self.assertEqual(responses[("channelbind", "success", None)], 1)
        self.assertEqual(responses[("channelbind", "error", 400)], 1)
        self.assertEqual(server.stats.allocations_created, 1)
        self.assertEqual(server.stats.channels_bound, 1)


# ----------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------

senders = st.tuples(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::3"]), st.integers(0, 3)
)


class MirrorMaps:
    """Applies channel-binding commands like the XDP adapter would."""

    def __init__(self) -> None:
        self.to_peer: dict[tuple[Address, int], tuple[Address, int]] = {}
        self.allocations: set[tuple[int, AddressFamily]] = set()

    def apply(self, commands: list[Command]) -> None:
        for c in commands:
            if isinstance(c, CreateChannelBinding):
                self.to_peer[(c.client, c.channel)] = (c.peer, c.allocation_port)
            elif isinstance(c, DeleteChannelBinding):
                assert self.to_peer.pop((c.client, c.channel)) == (c.peer, c.allocation_port)
            elif isinstance(c, CreateAllocation):
                assert (c.port, c.family) not in self.allocations
                self.allocations.add((c.port, c.family))
            elif isinstance(c, FreeAllocation):
                self.allocations.remove((c.port, c.family))


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(st.lists(st.tuples(st.binary(max_size=80), senders), max_size=20))
    def test_arbitrary_bytes_never_raise(self, packets: list[tuple[bytes, Address]]) -> None:
        """Arbitrary datagrams from arbitrary senders never raise and never allocate."""
        server = make_server(ip6=IP6)
        for offset, (data, sender) in enumerate(packets):
            server.handle_client_input(data, sender, NOW + offset)
            server.handle_peer_traffic(data, sender, 50000, NOW + offset)
        self.assertEqual(server.num_allocations, 0)
        self.assertEqual(server.handle_deadline(NOW + 10_000), [])

    @settings(max_examples=200)
    @example([
        ("allocate", 0, 0, 0x4000, PEER4, 0),
        ("bind", 0, 0, 0x4000, PEER4, 0),
        ("data", 0, 0, 0x4000, PEER4, 0),
        ("peer", 0, 0, 0x4000, PEER4, 0),
        ("allocate6", 1, 1, 0x4000, PEER6, 0),
        ("bind", 1, 1, 0x4001, PEER6, 0),
        ("retransmit", 1, 1, 0x4001, PEER6, 0),
        ("wait", 0, 0, 0x4000, PEER4, 599),
        ("bind", 0, 0, 0x4000, PEER4, 0),
        ("wait", 0, 0, 0x4000, PEER4, 1),
        ("data", 1, 1, 0x4001, PEER6, 0),
        ("peer", 1, 1, 0x4001, PEER6, 0),
        ("allocate", 1, 0, 0x4000, PEER4, 0),  # same username as client 0: replaces it
        ("bind", 1, 0, 0x4000, PEER4_B, 0),
        ("refresh0", 1, 0, 0x4000, PEER4, 0),
    ])
    @given(st.lists(st.tuples(
        st.sampled_from(["allocate", "allocate", "allocate6", "refresh", "refresh0", "bind",
                         "bind", "bind", "data", "data", "peer", "peer", "wait", "garbage",
                         "retransmit"]),
        st.integers(0, 1),  # client index
        st.sampled_from([0, 0, 0, 1]),  # salt index (shared usernames trigger replacement)
        st.sampled_from([0x3FFF, 0x4000, 0x4000, 0x4001]),
        st.sampled_from([PEER4, PEER4, PEER4_B, PEER6]),
        st.sampled_from([0, 1, 299, 300, 301, 599, 600, 601, 700]),
    ), min_size=5, max_size=40))
    def test_operations_never_leak(self, ops: list[tuple[str, int, int, int, Address, int]]
                                   ) -> None:
        """Any sequence of operations keeps the command mirror consistent and frees everything."""
        server = make_server(ip6=IP6, lowest_port=50000, highest_port=50002)
        mirror = MirrorMaps()
        clients = {}
        now = NOW
        last: dict[int, bytes] = {}

        def client(index: int, salt: int) -> Client:
            key = (index, salt)
            if key not in clients:
                clients[key] = Client(server, (f"192.0.2.{index + 1}", 4000 + index),
                                      salt=f"salt{salt}")
            return clients[key]

        for op, index, salt, number, peer, delay in ops:
            c = client(index, salt)
            if c.nonce is None:
                mirror.apply(c.send(c.build(Method.BINDING, signed=False), now))
                c.login(now)
            if op == "allocate":
                data = c.build(Method.ALLOCATE, [RequestedTransport(17)])
            elif op == "allocate6":
                data = c.build(Method.ALLOCATE, [RequestedTransport(17),
                                                 AdditionalAddressFamily(2)])
            elif op == "refresh":
                data = c.build(Method.REFRESH, [Lifetime(delay)])
            elif op == "refresh0":
                data = c.build(Method.REFRESH, [Lifetime(0)])
            elif op == "bind":
                data = c.build(Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)])
            elif op == "data":
                number = max(number, 0x4000)
                data = encode_channel_data(number, b"x")
            elif op == "retransmit":
                data = last.get(index, b"")
            elif op == "garbage":
                data = bytes([delay % 256]) * (number % 50)
            else:
                data = b""
            if op == "wait":
                now += delay
                mirror.apply(server.handle_deadline(now))
            elif op == "peer":
                info = server.allocation_for(c.addr)
                if info is not None:
                    out = server.handle_peer_traffic(b"p", peer, info.port, now)
                    mirror.apply(out)
                    for command in out:
                        assert isinstance(command, SendMessage)
                        channel, _ = decode_channel_data(command.payload)
                        self.assertEqual(mirror.to_peer[(command.recipient, channel)][0], peer)
            else:
                last[index] = data
                out = server.handle_client_input(data, c.addr, now)
                mirror.apply(out)
                for command in out:
                    if isinstance(command, SendFromAllocation):
                        sent_on = (data[0] << 8) | data[1]  # garbage can be ChannelData too
                        self.assertEqual(mirror.to_peer[(c.addr, sent_on)],
                                         (command.recipient, command.port))
            # The mirror of the XDP maps equals the server's bound channels.
            bound = {(i.client, i.channel): (i.peer, i.allocation_port)
                     for i in server.channels() if i.bound}
            self.assertEqual(mirror.to_peer, bound)
            allocated = {(a.port, f) for a in server.allocations() for f in a.families}
            self.assertEqual(mirror.allocations, allocated)
            self.assertEqual(server.stats.allocations_active, server.num_allocations)
            self.assertEqual(server.stats.channels_bound, server.num_bound_channels)
            deadline = server.poll_timeout()
            if server.num_allocations:
                self.assertIsNotNone(deadline)

        while (deadline := server.poll_timeout()) is not None:
            mirror.apply(server.handle_deadline(deadline))
        self.assertEqual(server.num_allocations, 0)
        self.assertEqual(list(server.channels()), [])
        self.assertEqual(mirror.to_peer, {})
        self.assertEqual(mirror.allocations, set())
