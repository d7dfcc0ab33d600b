"""The sans-IO STUN/TURN relay server (REFERENCE.md 3.2, mirroring ``rust/relay/proto``).

Bytes, a sender address and ``now`` go in; :mod:`firezone.relay.commands` come
out.  ``now`` is UNIX time in seconds (``reactor.seconds()``) because TURN
usernames carry a UNIX expiry; the server never reads a clock itself.

The two data paths have allocation-free fast entry points,
:meth:`TurnServer.relay_client_channel_data` and :meth:`TurnServer.relay_peer_data`,
which are a dict lookup and a slice; everything else (STUN control traffic,
expiry) goes through :meth:`TurnServer.handle_client_input`,
:meth:`TurnServer.handle_deadline` and :meth:`TurnServer.poll_timeout`.
"""

from __future__ import annotations

import heapq
import random
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from firezone.credentials import REALM, long_term_key, parse_turn_username, turn_password
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
from firezone.relay.nonces import NonceCheck, Nonces
from firezone.wire.channeldata import MAX_CHANNEL, MIN_CHANNEL
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
    RequestedAddressFamily,
    RequestedTransport,
    Software,
    StunDecodeError,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    verify_integrity,
)

__all__ = [
    "ALLOCATION_DEFAULT_LIFETIME",
    "ALLOCATION_MAX_LIFETIME",
    "CHANNEL_LIFETIME",
    "CHANNEL_REBIND_HOLD",
    "DEFAULT_SOFTWARE",
    "RESPONSE_CACHE_SIZE",
    "RESPONSE_CACHE_TTL",
    "AllocationInfo",
    "ChannelInfo",
    "RelayStats",
    "TurnServer",
]

ALLOCATION_DEFAULT_LIFETIME = 600.0
ALLOCATION_MAX_LIFETIME = 3600.0
CHANNEL_LIFETIME = 600.0
CHANNEL_REBIND_HOLD = 300.0
UDP_TRANSPORT = 17

#: Responses to authenticated requests are replayed to retransmissions for this long.
RESPONSE_CACHE_TTL = 40.0
RESPONSE_CACHE_SIZE = 8192

#: SOFTWARE value when the adapter does not pass the build's revision.
DEFAULT_SOFTWARE = "firezone-relay; rev=00000000"

_CHANNEL_HEADER = struct.Struct(">HH")
_KEY_CACHE_SIZE = 4096

_METRIC_NAMES: dict[int, str] = {
    Method.BINDING: "binding",
    Method.ALLOCATE: "allocate",
    Method.REFRESH: "refresh",
    Method.CHANNEL_BIND: "channelbind",
    Method.CREATE_PERMISSION: "createpermission",
}


@dataclass(slots=True)
class RelayStats:
    """Plain counters; the adapter exports them (e.g. to Prometheus).

    ``responses`` is keyed ``(message_type, response_class, error_code)`` like the
    reference ``relay.responses`` metric (``error_code`` None for successes).
    Byte counters count relayed payload bytes, as the reference ``data_relayed``.
    """

    responses: Counter[tuple[str, str, int | None]] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    allocations_active: int = 0
    allocations_created: int = 0
    channels_bound: int = 0
    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0
    retransmissions: int = 0


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    client: Address
    port: int
    families: tuple[AddressFamily, ...]
    expires_at: float
    username: str


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    client: Address
    channel: int
    peer: Address
    allocation_port: int
    expires_at: float
    bound: bool


class _Allocation:
    __slots__ = ("alive", "channels", "client", "expires_at", "families", "port", "username")

    def __init__(
        self,
        client: Address,
        port: int,
        families: tuple[AddressFamily, ...],
        expires_at: float,
        username: str,
    ) -> None:
        self.client = client
        self.port = port
        self.families = families
        self.expires_at = expires_at
        self.username = username
        self.channels: set[int] = set()
        self.alive = True

    def deadline(self) -> float:
        return self.expires_at


class _Channel:
    __slots__ = ("alive", "bound", "client", "expiry", "number", "peer", "port")

    def __init__(
        self, client: Address, number: int, peer: Address, port: int, expiry: float
    ) -> None:
        self.client = client
        self.number = number
        self.peer = peer
        self.port = port
        self.expiry = expiry
        self.bound = True
        self.alive = True

    def deadline(self) -> float:
        return self.expiry if self.bound else self.expiry + CHANNEL_REBIND_HOLD


def _family_of(ip: str) -> AddressFamily:
    return AddressFamily.V6 if ":" in ip else AddressFamily.V4


class _Reject(Exception):
    """Internal: answer the current request with this error code."""

    def __init__(self, code: int) -> None:
        self.code = code


_Handler = Callable[[Message, Address, str, float, list[Command]], list[Attribute]]


class TurnServer:
    """A TURN relay bound to one public IPv4 and/or IPv6 address, UDP only.

    All state is indexed by the client's socket address: the server's own
    address, port and protocol are fixed, so the sender completes the 5-tuple.
    """

    def __init__(
        self,
        public_ip4: IPv4Address | None,
        public_ip6: IPv6Address | None,
        stamp_secret: str,
        *,
        lowest_port: int = 49152,
        highest_port: int = 65535,
        listen_port: int = 3478,
        rng: random.Random | None = None,
        software: str = DEFAULT_SOFTWARE,
        allocations_per_username: int = 1,
    ) -> None:
        if public_ip4 is None and public_ip6 is None:
            raise ValueError("a relay needs a public IPv4 or IPv6 address")
        if not 1 <= lowest_port <= highest_port <= 65535:
            raise ValueError("invalid allocation port range")
        if allocations_per_username < 1:
            raise ValueError("allocations_per_username must be at least 1")
        # The reference keeps one allocation per username, so a device that roams frees its
        # old allocation by allocating anew; a higher limit serves clients that legitimately
        # hold several (coturn's turnutils_uclient -y allocates twice with one credential).
        self.allocations_per_username = allocations_per_username
        self.public_ip4 = public_ip4
        self.public_ip6 = public_ip6
        self.listen_port = listen_port
        self.lowest_port = lowest_port
        self.highest_port = highest_port
        self.software = software
        self.stats = RelayStats()
        self._secret = stamp_secret
        self._rng = rng if rng is not None else random.Random()
        self._software = Software(software)
        self._relay_ips: dict[AddressFamily, str] = {}
        if public_ip4 is not None:
            self._relay_ips[AddressFamily.V4] = str(public_ip4)
        if public_ip6 is not None:
            self._relay_ips[AddressFamily.V6] = str(public_ip6)

        self._nonces = Nonces(self._rng)
        # Derived long-term keys by claimed username (pure function of it and the secret).
        self._keys: dict[str, bytes | None] = {}
        self._allocations: dict[Address, _Allocation] = {}
        self._allocation_by_port: dict[int, _Allocation] = {}
        self._ports_by_username: dict[str, list[int]] = {}
        self._channels: dict[tuple[Address, int], _Channel] = {}
        self._channel_by_client_peer: dict[tuple[Address, Address], int] = {}
        # Data-path maps, holding bound channels only.
        self._to_peer: dict[tuple[Address, int], tuple[int, Address]] = {}
        self._to_client: dict[tuple[int, Address], tuple[Address, int]] = {}
        # (deadline, sequence, allocation-or-channel); stale entries are skipped lazily.
        self._timers: list[tuple[float, int, _Allocation | _Channel]] = []
        self._timer_seq = 0
        # (client, transaction id) -> (request bytes, response bytes, expires at).
        self._responses: dict[tuple[Address, bytes], tuple[bytes, bytes, float]] = {}
        self._handlers: dict[int, _Handler] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CHANNEL_BIND: self._channel_bind,
            Method.CREATE_PERMISSION: self._create_permission,
        }

    # ----------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------

    def handle_client_input(self, data: bytes, sender: Address, now: float) -> list[Command]:
        """A datagram that arrived on the listen port."""
        if sender[1] == 0:
            self.stats.drops["source_port_zero"] += 1
            return []
        if not data:
            self.stats.drops["empty"] += 1
            return []
        commands: list[Command] = []
        if self._timers and self._timers[0][0] <= now:
            commands.extend(self.handle_deadline(now))
        first = data[0]
        if first < 4:
            commands.extend(self._handle_stun(data, sender, now))
        elif 64 <= first <= 127:
            # ChannelData for channels 0x4000-0x7FFF, the range ChannelBind accepts (RFC 8656
            # 12); the reference's 64-79 would drop bound channels 0x5000-0x7FFF.
            routed = self.relay_client_channel_data(data, sender)
            if routed is not None:
                commands.append(SendFromAllocation(routed[0], routed[1], routed[2]))
        else:
            self.stats.drops["unknown_first_byte"] += 1
        return commands

    def handle_peer_traffic(
        self, data: bytes, peer: Address, allocation_port: int, now: float
    ) -> list[Command]:
        """A datagram that arrived on an allocation port."""
        commands: list[Command] = []
        if self._timers and self._timers[0][0] <= now:
            commands.extend(self.handle_deadline(now))
        routed = self.relay_peer_data(data, peer, allocation_port)
        if routed is not None:
            commands.append(SendMessage(routed[0], routed[1]))
        return commands

    def relay_client_channel_data(
        self, data: bytes, sender: Address
    ) -> tuple[bytes, int, Address] | None:
        """Fast path for ChannelData from a client: ``(payload, allocation_port, peer)``.

        The caller sends ``payload`` from ``allocation_port`` to ``peer``.  None means
        dropped (malformed, or no bound channel).  Expiry is only applied by
        handle_deadline, so keep calling it when poll_timeout says.
        """
        available = len(data) - 4
        if available < 0:
            self.stats.drops["malformed_channel_data"] += 1
            return None
        length = (data[2] << 8) | data[3]
        if length > available:
            self.stats.drops["malformed_channel_data"] += 1
            return None
        route = self._to_peer.get((sender, (data[0] << 8) | data[1]))
        if route is None:
            self.stats.drops["unbound_channel"] += 1
            return None
        stats = self.stats
        stats.packets_to_peer += 1
        stats.bytes_to_peer += length
        return data[4 : 4 + length], route[0], route[1]

    def relay_peer_data(
        self, data: bytes, peer: Address, allocation_port: int
    ) -> tuple[bytes, Address] | None:
        """Fast path for a peer datagram: ``(channel_data_message, client)`` or None.

        The caller sends the message from the listen port to ``client``.
        """
        route = self._to_client.get((allocation_port, peer))
        if route is None:
            self.stats.drops["unknown_peer"] += 1
            return None
        n = len(data)
        if n > 0xFFFF:
            self.stats.drops["oversized_peer_data"] += 1
            return None
        stats = self.stats
        stats.packets_to_client += 1
        stats.bytes_to_client += n
        return _CHANNEL_HEADER.pack(route[1], n) + data, route[0]

    def handle_deadline(self, now: float) -> list[Command]:
        """Expire allocations and channels whose time has come."""
        commands: list[Command] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, item = heapq.heappop(timers)
            if not item.alive or item.deadline() != deadline:
                continue
            if isinstance(item, _Allocation):
                self._delete_allocation(item, commands)
            elif item.bound:
                self._unbind_channel(item, commands)
                self._schedule(item)
            else:
                self._forget_channel(item)
        return commands

    def poll_timeout(self) -> float | None:
        """When handle_deadline next has work to do (UNIX seconds), or None."""
        timers = self._timers
        while timers:
            deadline, _, item = timers[0]
            if item.alive and item.deadline() == deadline:
                return deadline
            heapq.heappop(timers)
        return None

    def handle_allocation_failed(self, port: int) -> list[Command]:
        """The adapter could not bind an allocation's socket: drop that allocation."""
        commands: list[Command] = []
        allocation = self._allocation_by_port.get(port)
        if allocation is not None:
            self._delete_allocation(allocation, commands)
            # The success answer must not be replayed to a retransmission: the client's
            # next Allocate is handled afresh and gets another port.
            for key in [k for k in self._responses if k[0] == allocation.client]:
                del self._responses[key]
        return commands

    # ----------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------

    @property
    def num_allocations(self) -> int:
        return len(self._allocations)

    @property
    def num_bound_channels(self) -> int:
        return len(self._to_peer)

    def allocations(self) -> Iterator[AllocationInfo]:
        for a in self._allocations.values():
            yield AllocationInfo(a.client, a.port, a.families, a.expires_at, a.username)

    def allocation_for(self, client: Address) -> AllocationInfo | None:
        a = self._allocations.get(client)
        if a is None:
            return None
        return AllocationInfo(a.client, a.port, a.families, a.expires_at, a.username)

    def channels(self) -> Iterator[ChannelInfo]:
        """All channels, including unbound ones still held against rebinding."""
        for c in self._channels.values():
            yield ChannelInfo(c.client, c.number, c.peer, c.port, c.expiry, c.bound)

    # ----------------------------------------------------------------------------------
    # STUN
    # ----------------------------------------------------------------------------------

    def _handle_stun(self, data: bytes, sender: Address, now: float) -> list[Command]:
        try:
            request = Message.decode(data)
        except StunDecodeError:
            self.stats.drops["malformed_stun"] += 1
            return []
        if request.message_class is not MessageClass.REQUEST:
            # Send/Data indications are not supported; responses are not ours to take.
            self.stats.drops["not_a_request"] += 1
            return []

        method = request.method
        if method == Method.BINDING:
            unknown = request.unknown_comprehension_required
            if unknown:
                unknown_attr = UnknownAttributes(tuple(unknown))
                return [self._error(request, sender, 420, None, [unknown_attr])]
            attrs: list[Attribute] = [XorMappedAddress(sender[0], sender[1])]
            return [SendMessage(self._response(request, MessageClass.SUCCESS, attrs, None), sender)]

        handler = self._handlers.get(method)
        if handler is None or not self._well_formed(request):
            return [self._error(request, sender, 400, None)]

        cache_key = (sender, request.transaction_id)
        cached = self._responses.get(cache_key)
        if cached is not None and cached[2] > now and cached[0] == data:
            self.stats.retransmissions += 1
            return [SendMessage(cached[1], sender)]

        username_attr = request.get(Username)
        code = self._authenticate(request, data, sender, now)
        # Even refusals are signed with the claimed username's key, like the reference.
        key = self._key_for(username_attr.value) if username_attr is not None else None
        if code:
            extra: list[Attribute] = [Realm(REALM), Nonce(self._nonces.issue(sender))]
            return [self._error(request, sender, code, key, extra)]
        assert username_attr is not None
        username = username_attr.value

        commands: list[Command] = []
        unknown = request.unknown_comprehension_required
        if unknown:
            payload = self._error_payload(request, 420, key, [UnknownAttributes(tuple(unknown))])
        else:
            try:
                attrs = handler(request, sender, username, now, commands)
                payload = self._response(request, MessageClass.SUCCESS, attrs, key)
            except _Reject as reject:
                payload = self._error_payload(request, reject.code, key)
        self._remember(cache_key, data, payload, now)
        commands.append(SendMessage(payload, sender))
        return commands

    @staticmethod
    def _well_formed(request: Message) -> bool:
        """Attributes a method cannot do without (the reference answers 400 unsigned)."""
        method = request.method
        if method == Method.ALLOCATE:
            return request.get(RequestedTransport) is not None
        if method == Method.CHANNEL_BIND:
            number = request.get(ChannelNumber)
            return (
                number is not None
                and MIN_CHANNEL <= number.number <= MAX_CHANNEL
                and request.get(XorPeerAddress) is not None
            )
        return True

    def _authenticate(self, request: Message, raw: bytes, sender: Address, now: float) -> int:
        """0 if the long-term credential checks pass, else 401 or 438."""
        username = request.get(Username)
        nonce = request.get(Nonce)
        if request.get(MessageIntegrity) is None or username is None or nonce is None:
            return 401
        try:
            nonce_value = uuid.UUID(nonce.value)
        except ValueError:
            return 401
        if self._nonces.use(sender, nonce_value) is not NonceCheck.OK:
            return 438
        realm = request.get(Realm)
        if realm is not None and realm.value != REALM:
            return 401
        try:
            expiry, _ = parse_turn_username(username.value)
        except ValueError:
            return 401
        if expiry < now:
            return 401
        key = self._key_for(username.value)
        if key is None or not verify_integrity(raw, key):
            return 401
        return 0

    def _key_for(self, username: str) -> bytes | None:
        """The long-term key for a claimed username, or None if it is not ``<expiry>:<salt>``."""
        keys = self._keys
        if username in keys:
            return keys[username]
        try:
            expiry, salt = parse_turn_username(username)
        except ValueError:
            key = None
        else:
            canonical = f"{expiry}:{salt}"
            key = long_term_key(canonical, REALM, turn_password(canonical, self._secret))
        if len(keys) >= _KEY_CACHE_SIZE:
            keys.clear()
        keys[username] = key
        return key

    def _response(
        self,
        request: Message,
        message_class: MessageClass,
        attrs: list[Attribute],
        key: bytes | None,
        code: int | None = None,
    ) -> bytes:
        reply = Message(
            request.method, message_class, request.transaction_id, [self._software, *attrs]
        )
        name = _METRIC_NAMES.get(request.method, "other")
        klass = "success" if message_class is MessageClass.SUCCESS else "error"
        self.stats.responses[(name, klass, code)] += 1
        return reply.encode(integrity_key=key, fingerprint=True)

    def _error_payload(
        self,
        request: Message,
        code: int,
        key: bytes | None,
        extra: list[Attribute] | None = None,
    ) -> bytes:
        attrs: list[Attribute] = [ErrorCode.of(code)]
        if extra:
            attrs.extend(extra)
        return self._response(request, MessageClass.ERROR, attrs, key, code)

    def _error(
        self,
        request: Message,
        sender: Address,
        code: int,
        key: bytes | None,
        extra: list[Attribute] | None = None,
    ) -> SendMessage:
        return SendMessage(self._error_payload(request, code, key, extra), sender)

    def _remember(self, cache_key: tuple[Address, bytes], data: bytes, payload: bytes,
                  now: float) -> None:
        cache = self._responses
        cache.pop(cache_key, None)
        cache[cache_key] = (data, payload, now + RESPONSE_CACHE_TTL)
        while cache:
            oldest = next(iter(cache))
            if len(cache) > RESPONSE_CACHE_SIZE or cache[oldest][2] <= now:
                del cache[oldest]
            else:
                break

    # ----------------------------------------------------------------------------------
    # TURN methods
    # ----------------------------------------------------------------------------------

    def _allocate(
        self, request: Message, sender: Address, username: str, now: float,
        commands: list[Command],
    ) -> list[Attribute]:
        if sender in self._allocations:
            raise _Reject(437)
        total_ports = self.highest_port - self.lowest_port + 1
        if len(self._allocation_by_port) >= total_ports:
            raise _Reject(508)
        transport = request.get(RequestedTransport)
        if transport is None or transport.protocol != UDP_TRANSPORT:
            raise _Reject(400)
        families = self._relay_families(request)

        held = self._ports_by_username.get(username, [])
        while len(held) >= self.allocations_per_username:
            # Oldest first: this is the roaming clean-up of the reference.
            self._delete_allocation(self._allocation_by_port[held[0]], commands)

        lifetime = _effective_lifetime(request)
        port = self._pick_port()
        allocation = _Allocation(sender, port, families, now + lifetime, username)
        self._allocations[sender] = allocation
        self._allocation_by_port[port] = allocation
        self._ports_by_username.setdefault(username, []).append(port)
        self._schedule(allocation)
        self.stats.allocations_active += 1
        self.stats.allocations_created += 1
        for family in families:
            commands.append(CreateAllocation(port, family))

        attrs: list[Attribute] = [
            XorRelayedAddress(self._relay_ips[family], port) for family in families
        ]
        attrs.append(XorMappedAddress(sender[0], sender[1]))
        attrs.append(Lifetime(int(lifetime)))
        return attrs

    def _relay_families(self, request: Message) -> tuple[AddressFamily, ...]:
        """REQUESTED-/ADDITIONAL-ADDRESS-FAMILY rules (RFC 8656 7.2), as the reference has them."""
        requested = request.get(RequestedAddressFamily)
        additional = request.get(AdditionalAddressFamily)
        has4 = AddressFamily.V4 in self._relay_ips
        has6 = AddressFamily.V6 in self._relay_ips
        if requested is not None and additional is not None:
            raise _Reject(400)
        if additional is not None:
            if additional.family != AddressFamily.V6:
                raise _Reject(400)
            if has4 and has6:
                return (AddressFamily.V4, AddressFamily.V6)
            # Partially fulfilled, like the reference: only the family we have.
            return (AddressFamily.V4,) if has4 else (AddressFamily.V6,)
        if requested is None or requested.family == AddressFamily.V4:
            if has4:
                return (AddressFamily.V4,)
            raise _Reject(440)
        if requested.family == AddressFamily.V6 and has6:
            return (AddressFamily.V6,)
        raise _Reject(440)

    def _pick_port(self) -> int:
        low, high = self.lowest_port, self.highest_port
        used = self._allocation_by_port
        if len(used) * 2 < high - low + 1:
            while True:
                port = self._rng.randint(low, high)
                if port not in used:
                    return port
        return self._rng.choice([p for p in range(low, high + 1) if p not in used])

    def _refresh(
        self, request: Message, sender: Address, username: str, now: float,
        commands: list[Command],
    ) -> list[Attribute]:
        allocation = self._allocations.get(sender)
        if allocation is None:
            raise _Reject(437)
        lifetime = _effective_lifetime(request)
        if lifetime == 0:
            self._delete_allocation(allocation, commands)
        else:
            allocation.expires_at = now + lifetime
            self._schedule(allocation)
        return [Lifetime(int(lifetime))]

    def _channel_bind(
        self, request: Message, sender: Address, username: str, now: float,
        commands: list[Command],
    ) -> list[Attribute]:
        allocation = self._allocations.get(sender)
        if allocation is None:
            raise _Reject(437)
        number_attr = request.get(ChannelNumber)
        peer_attr = request.get(XorPeerAddress)
        assert number_attr is not None and peer_attr is not None  # checked by _well_formed
        number = number_attr.number
        peer = (peer_attr.ip, peer_attr.port)
        if _family_of(peer[0]) not in allocation.families:
            raise _Reject(443)
        existing_number = self._channel_by_client_peer.get((sender, peer))
        if existing_number is not None and existing_number != number:
            raise _Reject(400)
        channel = self._channels.get((sender, number))
        if channel is not None:
            if channel.peer != peer:
                raise _Reject(400)
            # Re-binding refreshes the binding (and re-binds it if it was held).
            channel.expiry = now + CHANNEL_LIFETIME
            if not channel.bound:
                channel.bound = True
                self.stats.channels_bound += 1
        else:
            channel = _Channel(sender, number, peer, allocation.port, now + CHANNEL_LIFETIME)
            self._channels[(sender, number)] = channel
            self._channel_by_client_peer[(sender, peer)] = number
            allocation.channels.add(number)
            self.stats.channels_bound += 1
        self._to_peer[(sender, number)] = (allocation.port, peer)
        self._to_client[(allocation.port, peer)] = (sender, number)
        self._schedule(channel)
        commands.append(CreateChannelBinding(sender, number, peer, allocation.port))
        return []

    def _create_permission(
        self, request: Message, sender: Address, username: str, now: float,
        commands: list[Command],
    ) -> list[Attribute]:
        # Permissions are not enforced: only channel bindings gate relaying.
        return []

    # ----------------------------------------------------------------------------------
    # State changes
    # ----------------------------------------------------------------------------------

    def _schedule(self, item: _Allocation | _Channel) -> None:
        """Push the item's current deadline; superseded entries are skipped when popped."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (item.deadline(), self._timer_seq, item))
        live = len(self._allocations) + len(self._channels)
        if len(self._timers) > 2 * live + 1024:
            # Frequent refreshes leave stale entries behind: rebuild to stay bounded.
            items: list[_Allocation | _Channel] = [
                *self._allocations.values(),
                *self._channels.values(),
            ]
            base = self._timer_seq
            self._timers = [(i.deadline(), base + n, i) for n, i in enumerate(items, 1)]
            self._timer_seq = base + len(items)
            heapq.heapify(self._timers)

    def _unbind_channel(self, channel: _Channel, commands: list[Command]) -> None:
        """Stop relaying; the number and peer stay reserved until the hold is over."""
        channel.bound = False
        self.stats.channels_bound -= 1
        del self._to_peer[(channel.client, channel.number)]
        del self._to_client[(channel.port, channel.peer)]
        commands.append(
            DeleteChannelBinding(channel.client, channel.number, channel.peer, channel.port)
        )

    def _forget_channel(self, channel: _Channel) -> None:
        channel.alive = False
        del self._channels[(channel.client, channel.number)]
        del self._channel_by_client_peer[(channel.client, channel.peer)]
        allocation = self._allocations.get(channel.client)
        if allocation is not None:
            allocation.channels.discard(channel.number)

    def _delete_allocation(self, allocation: _Allocation, commands: list[Command]) -> None:
        allocation.alive = False
        client = allocation.client
        for number in sorted(allocation.channels):
            channel = self._channels[(client, number)]
            if channel.bound:
                self._unbind_channel(channel, commands)
            channel.alive = False
            del self._channels[(client, number)]
            del self._channel_by_client_peer[(client, channel.peer)]
        allocation.channels.clear()
        del self._allocations[client]
        del self._allocation_by_port[allocation.port]
        held = self._ports_by_username.get(allocation.username)
        if held is not None and allocation.port in held:
            held.remove(allocation.port)
            if not held:
                del self._ports_by_username[allocation.username]
        self.stats.allocations_active -= 1
        for family in allocation.families:
            commands.append(FreeAllocation(allocation.port, family))


def _effective_lifetime(request: Message) -> float:
    """Requested LIFETIME capped at 3600 s; 600 s when absent (reference client_message.rs)."""
    lifetime = request.get(Lifetime)
    if lifetime is None:
        return ALLOCATION_DEFAULT_LIFETIME
    return float(min(lifetime.value, ALLOCATION_MAX_LIFETIME))
