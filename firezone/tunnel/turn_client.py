"""A sans-IO TURN client for one relay, as snownet's ``allocation.rs`` behaves (REFERENCE 3.3).

Datagrams, the sender address and ``now`` go in; :class:`Transmit` values,
events and the next deadline come out.  The node that owns the UDP socket
drives it:

* datagrams from the relay's address (port 3478) whose first byte is 0..3 go to
  :meth:`TurnClient.handle_input`; ChannelData (first byte 64..79) goes to
  :meth:`TurnClient.decode_from_relay`;
* ``poll_transmit`` / ``poll_event`` are drained after every call, and
  ``handle_timeout`` is called at ``poll_timeout``;
* payloads for a peer reached through this relay are wrapped with
  :meth:`TurnClient.encode_to_peer`.

Lifecycle: BINDING to every relay address (the first to answer becomes the
active one and yields the server-reflexive candidate), Allocate (401 -> retry
with the relay's NONCE/REALM, 438 -> retry with the fresh nonce), Refresh at
lifetime/2, BINDING keepalives every 25 s, channels bound on demand.  Every
request is retransmitted with RTO 1 s doubling and abandoned after 8 s; an
abandoned request means the relay is unreachable: :class:`AllocationFailed`
is emitted and every candidate is invalidated.  :meth:`TurnClient.restart`
starts over (e.g. after a network change).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from firezone.credentials import REALM, long_term_key
from firezone.wire.candidate import Candidate
from firezone.wire.channeldata import ChannelDataError, decode_channel_data, encode_channel_data
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
    StunDecodeError,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    verify_integrity,
)

__all__ = [
    "BINDING_INTERVAL",
    "CHANNEL_LIFETIME",
    "CHANNEL_REBIND_HOLD",
    "CHANNEL_REFRESH_AFTER",
    "FIRST_CHANNEL",
    "LAST_CHANNEL",
    "REQUEST_MAX_ELAPSED",
    "REQUEST_RTO",
    "SOFTWARE",
    "Address",
    "AllocationFailed",
    "CandidateDiscovered",
    "CandidateInvalidated",
    "ChannelBound",
    "FailureReason",
    "Relayed",
    "Transmit",
    "TurnClient",
    "TurnEvent",
    "TurnStats",
]

Address = tuple[str, int]

REQUEST_RTO = 1.0
REQUEST_MAX_ELAPSED = 8.0
BINDING_INTERVAL = 25.0
CHANNEL_LIFETIME = 600.0
CHANNEL_REFRESH_AFTER = 300.0
CHANNEL_REBIND_HOLD = 300.0
FIRST_CHANNEL = 0x4000
LAST_CHANNEL = 0x4FFF
SOFTWARE = "snownet"
UDP = 17

#: Channel bindings asked for before the allocation exists (the reference's ring buffer).
MAX_BUFFERED_BINDINGS = 100
#: 401/438 answers in a row for one request before giving up (a looping relay).
MAX_AUTH_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``payload`` to ``dest`` from the node's UDP socket.

    ``via_relay`` is only set by the ICE agent: the local relayed candidate
    whose TURN client must wrap the payload (``encode_to_peer(dest, ...)``).
    """

    payload: bytes
    dest: Address
    via_relay: Address | None = None


class Relayed(NamedTuple):
    """A payload a peer sent to our relayed address ``relay_address``."""

    peer: Address
    payload: bytes
    relay_address: Address


class FailureReason(StrEnum):
    NO_RESPONSE = "no_response"
    AUTHENTICATION = "authentication"
    PROTOCOL = "protocol"
    UNHANDLED_RESPONSE = "unhandled_response"


@dataclass(frozen=True, slots=True)
class CandidateDiscovered:
    """A new (or changed) server-reflexive or relayed candidate to signal and add to ICE."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class CandidateInvalidated:
    """The candidate is gone (allocation lost): invalidate it in every ICE agent."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    """The client gave up; it stays idle until ``restart`` or ``update_credentials``."""

    reason: FailureReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChannelBound:
    peer: Address
    number: int


TurnEvent = CandidateDiscovered | CandidateInvalidated | AllocationFailed | ChannelBound


@dataclass(slots=True)
class TurnStats:
    requests_sent: int = 0
    retransmissions: int = 0
    responses: int = 0
    dropped_integrity: int = 0
    channel_data_in: int = 0
    channel_data_out: int = 0


@dataclass(slots=True)
class _Request:
    method: int
    attributes: list[Attribute]
    dest: Address
    payload: bytes
    authenticated: bool
    had_nonce: bool
    started: float
    next_send: float
    interval: float
    auth_retries: int = 0
    channel: int | None = None
    peer: Address | None = None
    is_delete: bool = False

    @property
    def give_up_at(self) -> float:
        return self.started + REQUEST_MAX_ELAPSED


@dataclass(slots=True)
class _Channel:
    peer: Address
    bound: bool
    bound_at: float
    received: bool = False

    def age(self, now: float) -> float:
        return now - self.bound_at

    def usable(self, now: float) -> bool:
        """Bound and not past its lifetime: the relay will forward on it."""
        return self.bound and self.age(now) < CHANNEL_LIFETIME

    def reserved_for(self, peer: Address, now: float) -> bool:
        """The relay still ties this number to ``peer`` (lifetime + rebind hold)."""
        return self.peer == peer and self.age(now) < CHANNEL_LIFETIME + CHANNEL_REBIND_HOLD

    def reusable(self, now: float) -> bool:
        return self.age(now) >= CHANNEL_LIFETIME + CHANNEL_REBIND_HOLD


def _family(address: Address) -> AddressFamily:
    return AddressFamily.V6 if ":" in address[0] else AddressFamily.V4


@dataclass(slots=True)
class _Allocation:
    relayed: dict[AddressFamily, Candidate] = field(default_factory=dict)
    received_at: float = 0.0
    lifetime: float = 0.0


class TurnClient:
    """One TURN allocation on one relay, refreshed and kept alive by itself.

    ``servers`` are the relay's addresses (one per family, port 3478); BINDING
    goes to each and the first that answers is used from then on.  ``base`` is
    the local socket address, written as ``raddr`` of the server-reflexive
    candidate when known.  ``dual_stack`` adds ``ADDITIONAL-ADDRESS-FAMILY=v6``
    to Allocate, as the reference always does.
    """

    def __init__(
        self,
        servers: Sequence[Address],
        username: str,
        password: str,
        now: float,
        *,
        rng: random.Random,
        realm: str = REALM,
        dual_stack: bool = True,
        software: str = SOFTWARE,
        base: Address | None = None,
    ) -> None:
        if not servers:
            raise ValueError("a TURN client needs at least one relay address")
        self.servers: tuple[Address, ...] = tuple((ip, port) for ip, port in servers)
        self.stats = TurnStats()
        self._rng = rng
        self._realm = realm
        self._dual_stack = dual_stack
        self._software = Software(software)
        self._base = base
        self._username: str | None = username
        self._password: str | None = password
        self._key: bytes | None = long_term_key(username, realm, password)
        self._nonce: str | None = None
        self._transmits: deque[Transmit] = deque()
        self._events: deque[TurnEvent] = deque()
        self._pending: dict[bytes, _Request] = {}
        # In-flight CHANNEL-BINDs by peer and by number (encode_to_peer is per packet).
        self._binding_peers: dict[Address, bytes] = {}
        self._binding_numbers: dict[int, bytes] = {}
        self._active: Address | None = None
        self._next_binding = 0.0
        self._srflx: dict[AddressFamily, Candidate] = {}
        self._allocation: _Allocation | None = None
        self._channels: dict[int, _Channel] = {}
        self._channel_by_peer: dict[Address, int] = {}
        self._next_channel = FIRST_CHANNEL
        self._buffered_bindings: deque[Address] = deque(maxlen=MAX_BUFFERED_BINDINGS)
        self._failure: FailureReason | None = None
        self._send_bindings(now)

    # ----------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------

    @property
    def active_server(self) -> Address | None:
        """The relay address in use (the first to answer BINDING), or None."""
        return self._active

    @property
    def failure(self) -> FailureReason | None:
        return self._failure

    @property
    def has_allocation(self) -> bool:
        return self._allocation is not None

    @property
    def relay_candidates(self) -> list[Candidate]:
        return list(self._allocation.relayed.values()) if self._allocation else []

    @property
    def srflx_candidates(self) -> list[Candidate]:
        return list(self._srflx.values())

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self._username is None or self._password is None:
            return None
        return (self._username, self._password)

    def matches_server(self, address: Address) -> bool:
        return address in self.servers

    def relay_address_for(self, peer: Address) -> Address | None:
        """Our relayed address of ``peer``'s family, if allocated."""
        if self._allocation is None:
            return None
        candidate = self._allocation.relayed.get(_family(peer))
        return candidate.address if candidate is not None else None

    def channel_to(self, peer: Address, now: float) -> int | None:
        """The bound, unexpired channel number to ``peer``."""
        number = self._channel_by_peer.get(peer)
        if number is None or not self._channels[number].usable(now):
            return None
        return number

    # ----------------------------------------------------------------------------------
    # Outputs
    # ----------------------------------------------------------------------------------

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> TurnEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        if self._failure is not None:
            return None
        deadlines: list[float] = []
        for request in self._pending.values():
            deadlines.append(min(request.next_send, request.give_up_at))
        allocation = self._allocation
        if allocation is not None:
            deadlines.append(allocation.received_at + allocation.lifetime)
            if not self._in_flight(Method.REFRESH):
                deadlines.append(allocation.received_at + allocation.lifetime / 2)
            if self._active is not None:
                deadlines.append(self._next_binding)
            for number, channel in self._channels.items():
                if channel.bound and channel.received and not self._binding_in_flight(number):
                    deadlines.append(channel.bound_at + CHANNEL_REFRESH_AFTER)
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------

    def handle_input(self, datagram: bytes, from_addr: Address, now: float) -> bool:
        """A STUN datagram from the network; True if it was a response of ours.

        Responses whose transaction id is unknown are not ours (False).  Known
        ones failing MESSAGE-INTEGRITY are consumed and dropped, except BINDING
        answers (unauthenticated by design) and 401/438 challenges: a stock
        server does not sign those, ours signs them with the key of the claimed
        username, which a client holding a wrong password cannot check.  Forging
        one takes the 96-bit transaction id, i.e. an on-path attacker, who can
        drop our packets anyway.
        """
        if from_addr not in self.servers or not datagram or datagram[0] > 3:
            return False
        try:
            message = Message.decode(datagram)
        except StunDecodeError:
            return False
        if message.message_class not in (MessageClass.SUCCESS, MessageClass.ERROR):
            return False
        request = self._pending.get(message.transaction_id)
        if request is None or request.dest != from_addr or message.method != request.method:
            return False
        if not self._integrity_ok(message, datagram, request):
            self.stats.dropped_integrity += 1
            return True
        self._forget_request(message.transaction_id)
        self.stats.responses += 1
        if message.message_class is MessageClass.ERROR:
            self._on_error(request, message, now)
        else:
            self._on_success(request, message, from_addr, now)
        return True

    def decode_from_relay(self, datagram: bytes, from_addr: Address, now: float
                          ) -> Relayed | None:
        """Unwrap ChannelData from the active relay address; None if not for a bound channel."""
        if from_addr != self._active or self._allocation is None:
            return None
        try:
            number, payload = decode_channel_data(datagram)
        except ChannelDataError:
            return None
        channel = self._channels.get(number)
        if channel is None or not channel.bound:
            return None
        relay_address = self.relay_address_for(channel.peer)
        if relay_address is None:
            return None
        channel.received = True
        self.stats.channel_data_in += 1
        return Relayed(channel.peer, bytes(payload), relay_address)

    def encode_to_peer(self, peer: Address, payload: bytes, now: float
                       ) -> tuple[bytes, Address] | None:
        """``(channel_data, relay_address)`` to send, or None (then a binding is started)."""
        if self._active is None:
            return None
        number = self.channel_to(peer, now)
        if number is None:
            self.bind_channel(peer, now)
            return None
        try:
            datagram = encode_channel_data(number, payload)
        except ChannelDataError:
            return None
        # Our own traffic keeps the NAT binding to the relay open.
        self._next_binding = now + BINDING_INTERVAL
        self.stats.channel_data_out += 1
        return datagram, self._active

    def bind_channel(self, peer: Address, now: float) -> None:
        """Make sure a channel to ``peer`` is (being) bound; queued until allocated."""
        if self._failure is not None or self._key is None:
            return
        if self.channel_to(peer, now) is not None or self._bind_in_flight_to(peer):
            return
        if self._allocation is None:
            if peer not in self._buffered_bindings:
                self._buffered_bindings.append(peer)
            return
        if _family(peer) not in self._allocation.relayed:
            return
        number = self._channel_number_for(peer, now)
        if number is None:
            return
        if number not in self._channels:
            self._channels[number] = _Channel(peer, bound=False, bound_at=now)
            self._channel_by_peer[peer] = number
        self._queue_channel_bind(number, peer, now)

    def handle_timeout(self, now: float) -> None:
        if self._failure is not None:
            return
        allocation = self._allocation
        if allocation is not None and now >= allocation.received_at + allocation.lifetime:
            self._invalidate_allocation()
            self._authenticate_and_queue(Method.ALLOCATE, self._allocate_attributes(), now)
            allocation = None

        for tid, request in list(self._pending.items()):
            if tid not in self._pending:
                continue
            if now >= request.give_up_at:
                self._forget_request(tid)
                self._gave_up(request)
                if self._failure is not None:
                    return
            elif now >= request.next_send:
                while request.next_send <= now:
                    request.interval *= 2
                    request.next_send += request.interval
                self.stats.retransmissions += 1
                self._transmits.append(Transmit(request.payload, request.dest))

        allocation = self._allocation
        if allocation is None:
            return
        if self._active is not None and now >= self._next_binding:
            self._next_binding = now + BINDING_INTERVAL
            self._queue(Method.BINDING, [self._software], self._active, now)
        if (now >= allocation.received_at + allocation.lifetime / 2
                and not self._in_flight(Method.REFRESH)):
            self._authenticate_and_queue(Method.REFRESH, [self._software], now)
        for number, channel in list(self._channels.items()):
            if (channel.bound and channel.received
                    and channel.age(now) >= CHANNEL_REFRESH_AFTER
                    and not self._binding_in_flight(number)):
                self._queue_channel_bind(number, channel.peer, now)

    def update_credentials(self, username: str, password: str, now: float) -> None:
        """New credentials from the portal: drop the allocation and allocate with them."""
        if (username, password) == self.credentials and self._failure is None:
            return
        had_allocation = self._allocation is not None
        self._username, self._password = username, password
        self._key = long_term_key(username, self._realm, password)
        self._nonce = None
        self._invalidate_allocation()
        if self._failure is not None or self._active is None:
            self.restart(now)
        elif had_allocation:
            # Delete the old allocation (REFRESH LIFETIME=0); its success re-allocates.
            self._authenticate_and_queue(
                Method.REFRESH, [self._software, Lifetime(0)], now, is_delete=True
            )
        else:
            self._authenticate_and_queue(Method.ALLOCATE, self._allocate_attributes(), now)

    def restart(self, now: float) -> None:
        """Forget everything learnt (candidates become invalid) and start with BINDING."""
        self._invalidate_allocation()
        for candidate in self._srflx.values():
            self._events.append(CandidateInvalidated(candidate))
        self._srflx.clear()
        self._forget_requests(authenticated_only=False)
        self._buffered_bindings.clear()
        self._active = None
        self._nonce = None
        self._failure = None
        if self._key is None:
            self._fail(FailureReason.AUTHENTICATION, "no credentials")
            return
        self._send_bindings(now)

    # ----------------------------------------------------------------------------------
    # Responses
    # ----------------------------------------------------------------------------------

    def _integrity_ok(self, message: Message, raw: bytes, request: _Request) -> bool:
        if request.method == Method.BINDING:
            # BINDING is unauthenticated; it only teaches us our reflexive address.
            return True
        error = message.get(ErrorCode)
        if message.message_class is MessageClass.ERROR and error is not None and (
            error.code in (401, 438)
        ):
            return True
        return (message.get(MessageIntegrity) is not None and self._key is not None
                and verify_integrity(raw, self._key))

    def _on_error(self, request: _Request, message: Message, now: float) -> None:
        error = message.get(ErrorCode)
        code = error.code if error is not None else 0
        method = request.method
        if method == Method.BINDING:
            # A relay refusing BINDING is still alive; the next keepalive tries again.
            return
        if code == 401 and request.had_nonce:
            self._username = self._password = None
            self._key = None
            self._fail(FailureReason.AUTHENTICATION, "credentials rejected")
            return
        if code in (401, 438):
            realm = message.get(Realm)
            nonce = message.get(Nonce)
            if realm is not None and realm.value != self._realm:
                self._fail(FailureReason.AUTHENTICATION, f"relay realm {realm.value!r}")
                return
            if nonce is None or request.auth_retries >= MAX_AUTH_RETRIES:
                self._fail(FailureReason.AUTHENTICATION, f"{code} without a usable nonce")
                return
            self._nonce = nonce.value
            self._authenticate_and_queue(
                method, request.attributes, now,
                auth_retries=request.auth_retries + 1,
                channel=request.channel, peer=request.peer, is_delete=request.is_delete,
            )
            return
        if code == 437:
            self._invalidate_allocation()
            if method == Method.ALLOCATE:
                # The relay holds an allocation for our socket that we do not know: delete it.
                self._authenticate_and_queue(
                    Method.REFRESH, [self._software, Lifetime(0)], now, is_delete=True
                )
            else:
                if method == Method.CHANNEL_BIND and request.peer is not None:
                    self._buffered_bindings.append(request.peer)
                self._authenticate_and_queue(Method.ALLOCATE, self._allocate_attributes(), now)
            return
        if code == 420:
            self._fail(FailureReason.PROTOCOL, "relay did not understand our attributes")
            return
        if method == Method.CHANNEL_BIND:
            if request.channel is not None:
                self._forget_channel(request.channel)
            return
        self._fail(FailureReason.UNHANDLED_RESPONSE, f"{Method(method).name} error {code}")

    def _on_success(self, request: _Request, message: Message, from_addr: Address,
                    now: float) -> None:
        method = request.method
        if method == Method.BINDING:
            mapped = message.get(XorMappedAddress)
            if mapped is not None:
                family = _family(from_addr)
                candidate = Candidate.srflx(mapped.address, self._base)
                if self._srflx.get(family) != candidate:
                    # Like the reference, a changed address is announced, not the old one
                    # invalidated: that would make peers disconnect on a false positive.
                    self._srflx[family] = candidate
                    self._events.append(CandidateDiscovered(candidate))
            if self._active is None:
                self._active = from_addr
                self._next_binding = now + BINDING_INTERVAL
                # The other family's BINDING is moot now.
                for tid, other in list(self._pending.items()):
                    if other.method == Method.BINDING and other.dest != from_addr:
                        self._forget_request(tid)
                if not self._authenticate_and_queue(
                    Method.ALLOCATE, self._allocate_attributes(), now
                ):
                    self._fail(FailureReason.AUTHENTICATION, "no credentials")
        elif method == Method.ALLOCATE:
            self._on_allocated(message, now)
        elif method == Method.REFRESH:
            lifetime = message.get(Lifetime)
            if request.is_delete or (lifetime is not None and lifetime.value == 0):
                self._authenticate_and_queue(Method.ALLOCATE, self._allocate_attributes(), now)
            elif lifetime is not None and self._allocation is not None:
                self._allocation.received_at = now
                self._allocation.lifetime = float(lifetime.value)
        elif method == Method.CHANNEL_BIND and request.channel is not None:
            channel = self._channels.get(request.channel)
            if channel is None or channel.peer != request.peer:
                return
            newly = not channel.usable(now)
            channel.bound = True
            channel.bound_at = now
            channel.received = False
            if newly:
                self._events.append(ChannelBound(channel.peer, request.channel))

    def _on_allocated(self, message: Message, now: float) -> None:
        lifetime = message.get(Lifetime)
        relayed = message.get_all(XorRelayedAddress)
        if lifetime is None or not relayed:
            self._fail(FailureReason.UNHANDLED_RESPONSE, "Allocate success without "
                       + ("LIFETIME" if lifetime is None else "XOR-RELAYED-ADDRESS"))
            return
        mapped = message.get(XorMappedAddress)
        allocation = _Allocation(received_at=now, lifetime=float(lifetime.value))
        for attribute in relayed:
            family = attribute.family
            if family not in allocation.relayed:
                allocation.relayed[family] = Candidate.relay(
                    attribute.address, mapped.address if mapped is not None else None
                )
        previous = self._allocation.relayed if self._allocation is not None else {}
        self._allocation = allocation
        for candidate in previous.values():
            if candidate not in allocation.relayed.values():
                self._events.append(CandidateInvalidated(candidate))
        for candidate in allocation.relayed.values():
            if candidate not in previous.values():
                self._events.append(CandidateDiscovered(candidate))
        buffered = list(self._buffered_bindings)
        self._buffered_bindings.clear()
        for peer in buffered:
            self.bind_channel(peer, now)

    # ----------------------------------------------------------------------------------
    # Requests
    # ----------------------------------------------------------------------------------

    def _allocate_attributes(self) -> list[Attribute]:
        attributes: list[Attribute] = [RequestedTransport(UDP)]
        if self._dual_stack:
            attributes.append(AdditionalAddressFamily(AddressFamily.V6))
        attributes.append(self._software)
        return attributes

    def _send_bindings(self, now: float) -> None:
        for server in self.servers:
            self._queue(Method.BINDING, [self._software], server, now)

    def _queue_channel_bind(self, number: int, peer: Address, now: float) -> None:
        attributes: list[Attribute] = [
            XorPeerAddress(peer[0], peer[1]), ChannelNumber(number), self._software
        ]
        self._authenticate_and_queue(Method.CHANNEL_BIND, attributes, now,
                                     channel=number, peer=peer)

    def _authenticate_and_queue(
        self, method: int, attributes: list[Attribute], now: float, *,
        auth_retries: int = 0, channel: int | None = None, peer: Address | None = None,
        is_delete: bool = False,
    ) -> bool:
        """Sign with the long-term credential; False if there is no relay or credential yet."""
        if self._active is None or self._key is None or self._username is None:
            return False
        self._queue(method, attributes, self._active, now, authenticate=True,
                    auth_retries=auth_retries, channel=channel, peer=peer, is_delete=is_delete)
        return True

    def _queue(
        self, method: int, attributes: list[Attribute], dest: Address, now: float, *,
        authenticate: bool = False, auth_retries: int = 0, channel: int | None = None,
        peer: Address | None = None, is_delete: bool = False,
    ) -> None:
        tid = self._rng.randbytes(12)
        wire = list(attributes)
        key: bytes | None = None
        had_nonce = False
        if authenticate and self._username is not None and self._nonce is not None:
            wire += [Username(self._username), Realm(self._realm), Nonce(self._nonce)]
            had_nonce = True
            key = self._key
        # Without a nonce yet the request goes out with no credentials at all (RFC 5389
        # 10.2.1: "the very first request is sent as if there were no authentication"): the
        # 401 brings REALM and NONCE.  USERNAME + MESSAGE-INTEGRITY without NONCE gets 400
        # from RFC-conforming servers such as coturn (10.2.2), unsigned, so no retry.
        payload = Message(method, MessageClass.REQUEST, tid, wire).encode(integrity_key=key)
        if method == Method.CHANNEL_BIND and channel is not None and peer is not None:
            self._binding_peers[peer] = tid
            self._binding_numbers[channel] = tid
        self._pending[tid] = _Request(
            method=method,
            attributes=list(attributes),
            dest=dest,
            payload=payload,
            authenticated=authenticate,
            had_nonce=had_nonce,
            started=now,
            next_send=now + REQUEST_RTO,
            interval=REQUEST_RTO,
            auth_retries=auth_retries,
            channel=channel,
            peer=peer,
            is_delete=is_delete,
        )
        self.stats.requests_sent += 1
        self._transmits.append(Transmit(payload, dest))

    def _gave_up(self, request: _Request) -> None:
        """A request got no answer within 8 s."""
        if request.method == Method.BINDING and self._active is None:
            if not any(r.method == Method.BINDING for r in self._pending.values()):
                self._fail(FailureReason.NO_RESPONSE, "no relay address answered BINDING")
            return
        self._fail(FailureReason.NO_RESPONSE, f"{Method(request.method).name} timed out")

    # ----------------------------------------------------------------------------------
    # Channels
    # ----------------------------------------------------------------------------------

    def _channel_number_for(self, peer: Address, now: float) -> int | None:
        """The number still tied to ``peer`` at the relay, else the next free one round-robin."""
        current = self._channel_by_peer.get(peer)
        if current is not None:
            if self._channels[current].reserved_for(peer, now):
                return current
            self._forget_channel(current)
        span = LAST_CHANNEL - FIRST_CHANNEL + 1
        for offset in range(span):
            number = FIRST_CHANNEL + (self._next_channel - FIRST_CHANNEL + offset) % span
            existing = self._channels.get(number)
            if existing is None or existing.reusable(now):
                self._next_channel = FIRST_CHANNEL + (number - FIRST_CHANNEL + 1) % span
                self._forget_channel(number)
                return number
        return None

    def _forget_channel(self, number: int) -> None:
        channel = self._channels.pop(number, None)
        if channel is not None and self._channel_by_peer.get(channel.peer) == number:
            del self._channel_by_peer[channel.peer]

    def _in_flight(self, method: int) -> bool:
        return any(r.method == method for r in self._pending.values())

    def _binding_in_flight(self, number: int) -> bool:
        return number in self._binding_numbers

    def _bind_in_flight_to(self, peer: Address) -> bool:
        return peer in self._binding_peers or peer in self._buffered_bindings

    def _forget_request(self, tid: bytes) -> None:
        request = self._pending.pop(tid, None)
        if request is None or request.method != Method.CHANNEL_BIND:
            return
        if request.peer is not None and self._binding_peers.get(request.peer) == tid:
            del self._binding_peers[request.peer]
        if request.channel is not None and self._binding_numbers.get(request.channel) == tid:
            del self._binding_numbers[request.channel]

    def _forget_requests(self, *, authenticated_only: bool) -> None:
        for tid, request in list(self._pending.items()):
            if request.authenticated or not authenticated_only:
                self._forget_request(tid)

    # ----------------------------------------------------------------------------------
    # State changes
    # ----------------------------------------------------------------------------------

    def _invalidate_allocation(self) -> None:
        """Drop the allocation, its channels and every authenticated request in flight."""
        if self._allocation is not None:
            for candidate in self._allocation.relayed.values():
                self._events.append(CandidateInvalidated(candidate))
        self._allocation = None
        self._channels.clear()
        self._channel_by_peer.clear()
        self._forget_requests(authenticated_only=True)

    def _fail(self, reason: FailureReason, detail: str) -> None:
        self._invalidate_allocation()
        for candidate in self._srflx.values():
            self._events.append(CandidateInvalidated(candidate))
        self._srflx.clear()
        self._forget_requests(authenticated_only=False)
        self._buffered_bindings.clear()
        self._active = None
        self._failure = reason
        self._events.append(AllocationFailed(reason, detail))
