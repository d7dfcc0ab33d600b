"""The node: ICE, TURN and WireGuard for every connection of one device on ONE UDP socket.

A client and a gateway each run one :class:`Node` (REFERENCE 5.4, snownet's
``node.rs``).  It combines the pure machines: a
:class:`~firezone.tunnel.relays.RelayPool` (a TURN client per relay), one
:class:`~firezone.tunnel.ice.IceAgent` and one WireGuard
:class:`~firezone.wireguard.peer.Peer` per connection, and a single
WireGuard :class:`~firezone.wireguard.device.Device` holding our key.

Datagrams from the socket are demultiplexed in the reference's order:

1. from a relay's address, first byte 0-3: STUN for our TURN client;
   64-79: ChannelData, unwrapped and handled as if it came from the relayed peer;
2. a STUN binding request or response for one of the ICE agents (requests are
   routed by the USERNAME's local ufrag, responses by the transaction id of the
   check we sent);
3. otherwise WireGuard, accepted only on a path the peer proved its ICE
   credentials on (a validated or nominated pair) and only once the connection
   has a nominated pair; everything else is dropped and counted.

Per connection: candidates (host addresses of the socket, server-reflexive
ones from every relay, relayed ones from the ONE relay sampled for it) come out
as :class:`NewLocalCandidate` / :class:`InvalidatedLocalCandidate` for the
portal; the controlling side starts the WireGuard handshake once ICE nominates
a pair, and data follows the nominated pair (direct or through the relay),
switching when ICE nominates a better one.  ICE failure or WireGuard giving up
ends the connection with :class:`ConnectionFailed`.

Pure: no Twisted, no clock.  ``now`` is the reactor's (wall-clock) time; it is
also WireGuard's wall time for its TAI64N handshake timestamps.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from firezone.tunnel import ice
from firezone.tunnel.ice import CLIENT_PROFILE, SERVER_PROFILE, IceAgent, IceCreds, PairState
from firezone.tunnel.node_events import (
    Connected,
    ConnectionFailed,
    IceRole,
    InvalidatedLocalCandidate,
    NewLocalCandidate,
    NodeEvent,
    NodeRole,
    NodeStats,
    NoRelays,
    PathChanged,
    PathKind,
    RelayFailed,
    path_kind,
)
from firezone.tunnel.relays import (
    RelayCandidateAdded,
    RelayCandidateRemoved,
    RelayDown,
    RelayInfo,
    RelayPool,
    SrflxAdded,
    SrflxRemoved,
)
from firezone.tunnel.turn_client import Address, Transmit
from firezone.wire.candidate import Candidate, CandidateError, CandidateKind
from firezone.wire.stun import Message, StunDecodeError, Username, is_stun_message
from firezone.wireguard.constants import FIREZONE_ICE_TIMERS, REKEY_TIMEOUT
from firezone.wireguard.crypto import RandomBytes
from firezone.wireguard.device import Device, DeviceConfig
from firezone.wireguard.events import (
    Action,
    ConnectionExpired,
    HandshakeCompleted,
    SendDatagram,
)
from firezone.wireguard.peer import Peer

__all__ = [
    "CANDIDATE_TIMEOUT",
    "CONTROLLED_INITIATE_AFTER",
    "DEFAULT_PORT",
    "MAX_BUFFERED_PACKETS",
    "Connected",
    "ConnectionFailed",
    "IceRole",
    "InvalidatedLocalCandidate",
    "NewLocalCandidate",
    "NoRelays",
    "Node",
    "NodeEvent",
    "NodeRole",
    "NodeStats",
    "Path",
    "PathChanged",
    "PathKind",
    "RelayFailed",
    "RelayInfo",
]

#: REFERENCE 5.2: client and gateway sockets bind 0.0.0.0:52625 ("FIRE"), else ephemeral.
DEFAULT_PORT = 52625
#: TUN MTU; WireGuard pads plaintext no further than this.
TUN_MTU = 1280
#: REFERENCE 5.4 ``CANDIDATE_TIMEOUT``: give up on a connection that got no remote candidate.
CANDIDATE_TIMEOUT = 10.0
#: The controlled side leaves the first handshake to the controlling side; if it has
#: packets to send and no session this long after nomination, it initiates itself.
CONTROLLED_INITIATE_AFTER = REKEY_TIMEOUT
#: Packets held per connection until a path and a session exist (reference: 128).
MAX_BUFFERED_PACKETS = 128
#: Transaction ids of our connectivity checks remembered for routing responses.
MAX_CHECK_TIDS = 8192

_TRANSPORT = 4
_CHANNEL_DATA_FIRST, _CHANNEL_DATA_LAST = 64, 79

#: ``(our relayed address or None for the socket, remote address)``: one ICE pair's path.
Path = tuple[Address | None, Address]


# --------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Connection:
    peer_id: str
    public_key: bytes
    preshared_key: bytes | None
    local_creds: IceCreds
    remote_creds: IceCreds
    role: IceRole
    agent: IceAgent
    wg: Peer
    created_at: float
    relay_id: str | None = None
    #: Local candidates given to the agent and signalled, by (kind, address).
    locals: dict[tuple[CandidateKind, Address], Candidate] = field(default_factory=dict)
    #: The agent's selected pair; kept through a Disconnected (it may come back).
    selected: Path | None = None
    path_kind: PathKind | None = None
    connected_at: float | None = None
    #: Paths WireGuard is accepted from (validated or nominated pairs, once nominated).
    accept: frozenset[Path] = frozenset()
    #: Where the peer's last WireGuard came from: the controlled side answers there
    #: until its own agent selects a pair.
    last_wg_path: Path | None = None
    buffer: deque[bytes] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED_PACKETS))
    session: bool = False
    initiated: bool = False
    candidate_deadline_done: bool = False
    closed: bool = False

    @property
    def controlling(self) -> bool:
        return self.role is IceRole.CONTROLLING

    @property
    def send_path(self) -> Path | None:
        return self.selected if self.selected is not None else self.last_wg_path


def _agent_drops(agent: IceAgent) -> tuple[int, int, int, int, int, int]:
    s = agent.stats
    return (s.bad_username, s.bad_integrity, s.bad_fingerprint, s.malformed, s.unknown_path,
            s.non_symmetric)


class Node:
    """ICE + TURN + WireGuard for one device; every connection shares one UDP socket."""

    def __init__(
        self,
        private_key: bytes,
        role: NodeRole,
        now: float,
        rng: random.Random,
        *,
        host_addresses: Iterable[Address] = (),
        dual_stack: bool = True,
        rand_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.role = NodeRole(role)
        self.stats = NodeStats()
        self._rng = rng
        self._device = Device(private_key, config=DeviceConfig(timers=FIREZONE_ICE_TIMERS,
                                                               mtu=TUN_MTU),
                              rand_bytes=rand_bytes)
        self._pool = RelayPool(rng, dual_stack=dual_stack)
        self._hosts: list[Candidate] = []
        self._connections: dict[str, _Connection] = {}
        self._by_ufrag: dict[str, list[str]] = {}
        self._wg_paths: dict[Path, str] = {}
        self._check_tids: dict[bytes, str] = {}
        self._transmits: deque[Transmit] = deque()
        self._events: deque[NodeEvent] = deque()
        self.set_host_addresses(host_addresses, now)

    # ----------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self._device.public_key

    @property
    def device(self) -> Device:
        return self._device

    @property
    def relays(self) -> RelayPool:
        return self._pool

    @property
    def no_relays(self) -> bool:
        """True when the portal gave us no relay: relayed paths are impossible."""
        return len(self._pool) == 0

    def connection_ids(self) -> list[str]:
        return list(self._connections)

    def has_connection(self, peer_id: str) -> bool:
        return peer_id in self._connections

    def path(self, peer_id: str) -> PathKind | None:
        conn = self._connections.get(peer_id)
        return conn.path_kind if conn is not None else None

    def connection_relay(self, peer_id: str) -> str | None:
        """The relay sampled for this connection."""
        conn = self._connections.get(peer_id)
        return conn.relay_id if conn is not None else None

    def agent(self, peer_id: str) -> IceAgent | None:
        conn = self._connections.get(peer_id)
        return conn.agent if conn is not None else None

    def peer(self, peer_id: str) -> Peer | None:
        conn = self._connections.get(peer_id)
        return conn.wg if conn is not None else None

    def local_candidates(self, peer_id: str) -> list[Candidate]:
        conn = self._connections.get(peer_id)
        return list(conn.locals.values()) if conn is not None else []

    # ----------------------------------------------------------------------------------
    # Outputs
    # ----------------------------------------------------------------------------------

    def poll_transmit(self) -> Transmit | None:
        """The next datagram to send from the socket (``via_relay`` is always None)."""
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> NodeEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        deadlines: list[float] = []
        pool_deadline = self._pool.poll_timeout(self._watched_relays())
        if pool_deadline is not None:
            deadlines.append(pool_deadline)
        for conn in self._connections.values():
            deadline = conn.agent.poll_timeout()
            if deadline is not None:
                deadlines.append(deadline)
            deadline = conn.wg.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
            if not conn.candidate_deadline_done:
                deadlines.append(conn.created_at + CANDIDATE_TIMEOUT)
            if self._controlled_waiting(conn):
                assert conn.connected_at is not None
                deadlines.append(conn.connected_at + CONTROLLED_INITIATE_AFTER)
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------
    # Local addresses and relays
    # ----------------------------------------------------------------------------------

    def set_host_addresses(self, addresses: Iterable[Address], now: float) -> None:
        """The socket's local addresses (each interface address with the bound port)."""
        wanted: list[Candidate] = []
        for address in addresses:
            try:
                candidate = Candidate.host((str(address[0]), int(address[1])))
            except CandidateError:
                continue
            if candidate not in wanted:
                wanted.append(candidate)
        removed = [c for c in self._hosts if c not in wanted]
        added = [c for c in wanted if c not in self._hosts]
        self._hosts = wanted
        self._pool.base = next((c.address for c in wanted if not c.is_ipv6), None)
        for conn in list(self._connections.values()):
            for candidate in removed:
                self._withdraw(conn, candidate, now)
            for candidate in added:
                self._offer(conn, candidate, now)
            # A server-reflexive candidate equal to a host one was redundant until now.
            for candidate in self._pool.srflx_candidates():
                if self._useful_srflx(candidate):
                    self._offer(conn, candidate, now)
                else:
                    self._withdraw(conn, candidate, now)
        self._drain_pool(now)

    def update_relays(self, relays: Iterable[RelayInfo | tuple[str, Iterable[Address], str, str]],
                      now: float) -> None:
        """The portal's relays ``(id, addresses, username, password)``; absent ones go away
        (their candidates are invalidated on every connection)."""
        infos = [RelayInfo(r[0], tuple(r[1]), r[2], r[3]) for r in relays]
        had = len(self._pool)
        self._pool.update(infos, now)
        self._drain_pool(now)
        if not infos and had:
            self._events.append(NoRelays())

    # ----------------------------------------------------------------------------------
    # Connections
    # ----------------------------------------------------------------------------------

    def upsert_connection(
        self,
        peer_id: str,
        peer_public_key: bytes,
        preshared_key: bytes | None,
        local_creds: IceCreds,
        remote_creds: IceCreds,
        role: IceRole,
        now: float,
    ) -> bool:
        """Create (or replace) the connection to ``peer_id``; False if one with the same
        key, preshared key, credentials and role exists already (it is kept as is)."""
        role = IceRole(role)
        existing = self._connections.get(peer_id)
        if existing is not None:
            if (existing.public_key, existing.preshared_key, existing.local_creds,
                    existing.remote_creds, existing.role) == (
                    peer_public_key, preshared_key, local_creds, remote_creds, role):
                return False
            self._remove(existing)
        for other in list(self._connections.values()):
            if other.public_key == peer_public_key:
                # One WireGuard peer per key: the newer connection replaces the older.
                self._remove(other)
        agent = IceAgent(local_creds, remote_creds, controlling=role is IceRole.CONTROLLING,
                         rng=self._rng,
                         profile=CLIENT_PROFILE if self.role is NodeRole.CLIENT
                         else SERVER_PROFILE)
        wg = self._device.add_peer(peer_public_key, preshared_key=preshared_key,
                                   timers=FIREZONE_ICE_TIMERS)
        conn = _Connection(peer_id, peer_public_key, preshared_key, local_creds, remote_creds,
                           role, agent, wg, created_at=now)
        conn.relay_id = self._pool.sample()
        self._connections[peer_id] = conn
        self._by_ufrag.setdefault(local_creds.ufrag, []).append(peer_id)
        for candidate in self._local_candidates(conn):
            self._offer(conn, candidate, now)
        self._drain_pool(now)
        return True

    def close_connection(self, peer_id: str) -> bool:
        """Forget the connection (no event); False if there was none."""
        conn = self._connections.get(peer_id)
        if conn is None:
            return False
        self._remove(conn)
        return True

    def add_remote_candidate(self, peer_id: str, sdp: str, now: float) -> bool:
        """A candidate the peer signalled; unparseable or unusable ones are counted."""
        conn = self._connections.get(peer_id)
        if conn is None:
            self.stats.candidates_unknown_connection += 1
            return False
        try:
            candidate = Candidate.decode(sdp)
        except CandidateError:
            self.stats.candidates_unparseable += 1
            return False
        if not conn.agent.add_remote_candidate(candidate, now):
            if not any(r.address == candidate.address for r in conn.agent.remote_candidates()):
                self.stats.candidates_unusable += 1
            self._drain_agent(conn, now)
            return False
        if conn.relay_id is not None:
            # Bind ahead of need so the first relayed checks are not held up by the bind.
            self._pool.bind_channel(conn.relay_id, candidate.address, now)
        self._drain_agent(conn, now)
        if not conn.closed:
            self._refresh_path_kind(conn)
        self._drain_pool(now)
        return True

    def remove_remote_candidate(self, peer_id: str, sdp: str, now: float) -> bool:
        conn = self._connections.get(peer_id)
        if conn is None:
            self.stats.candidates_unknown_connection += 1
            return False
        try:
            candidate = Candidate.decode(sdp)
        except CandidateError:
            self.stats.candidates_unparseable += 1
            return False
        removed = conn.agent.invalidate_remote_candidate(candidate, now)
        self._drain_agent(conn, now)
        self._drain_pool(now)
        return removed

    # ----------------------------------------------------------------------------------
    # Data path
    # ----------------------------------------------------------------------------------

    def encapsulate(self, peer_id: str, ip_packet: bytes, now: float) -> Transmit | None:
        """Seal an IP packet for the peer; the datagram to send now, or None (then it was
        held, staged for a handshake, or dropped and counted; see :meth:`poll_transmit`)."""
        conn = self._connections.get(peer_id)
        if conn is None:
            self.stats.packets_unknown_peer += 1
            return None
        conn.agent.note_traffic(now)
        path = conn.send_path
        if path is None or (not conn.session and not conn.controlling and not conn.initiated):
            if len(conn.buffer) == MAX_BUFFERED_PACKETS:
                self.stats.packets_buffer_dropped += 1
            conn.buffer.append(ip_packet)
            return None
        data = conn.wg.encrypt(ip_packet, now)
        if data is None:
            self._apply_wg(conn, conn.wg.send(ip_packet, now, now), now)
            return None
        return self._on_path(conn, path, data, now)

    def decapsulate(self, datagram: bytes, source: Address, now: float
                    ) -> tuple[str, bytes] | None:
        """Every datagram from the socket goes here.  Control traffic is consumed (its
        results come out of ``poll_*``); WireGuard data yields ``(peer_id, ip_packet)``."""
        result = self._demux(datagram, source, now)
        return result if type(result) is tuple else None

    def handle_input(self, datagram: bytes, source: Address, now: float) -> bool:
        """Like :meth:`decapsulate` for callers without a TUN: True if the datagram was
        accepted (any IP packet it carried is discarded), False if dropped."""
        return self._demux(datagram, source, now) is not False

    def _demux(self, datagram: bytes, source: Address, now: float
               ) -> tuple[str, bytes] | bool:
        if not datagram:
            return False
        first = datagram[0]
        pool = self._pool
        if pool.is_server(source):
            if first < 4:
                if pool.handle_stun(datagram, source, now):
                    self._drain_pool(now)
                    return True
            elif _CHANNEL_DATA_FIRST <= first <= _CHANNEL_DATA_LAST:
                relayed = pool.decode_channel_data(datagram, source, now)
                if relayed is None:
                    self.stats.channel_data_unknown += 1
                    return False
                return self._from_peer(relayed.payload, relayed.peer, relayed.relay_address,
                                       now)
        return self._from_peer(datagram, source, None, now)

    def _from_peer(self, data: bytes, source: Address, via: Address | None, now: float
                   ) -> tuple[str, bytes] | bool:
        if not data:
            return False
        if data[0] < 4 and is_stun_message(data):
            return self._stun(data, source, via, now)
        return self._wireguard(data, source, via, now)

    def _stun(self, data: bytes, source: Address, via: Address | None, now: float) -> bool:
        kind = data[:2]
        if kind == b"\x00\x01":  # binding request: route by our ufrag
            try:
                message = Message.decode(data)
            except StunDecodeError:
                self.stats.stun_malformed += 1
                return False
            username = message.get(Username)
            ufrag = username.value.partition(":")[0] if username is not None else ""
            for peer_id in self._by_ufrag.get(ufrag, ()):
                conn = self._connections[peer_id]
                if self._agent_input(conn, data, source, via, now):
                    return True
            self.stats.ice_unknown_username += 1
            return False
        if kind in (b"\x01\x01", b"\x01\x11"):  # binding response: route by transaction
            owner = self._check_tids.get(bytes(data[8:20]))
            checked = self._connections.get(owner) if owner is not None else None
            if checked is not None and self._agent_input(checked, data, source, via, now):
                return True
        self.stats.stun_unmatched += 1
        return False

    def _agent_input(self, conn: _Connection, data: bytes, source: Address,
                     via: Address | None, now: float) -> bool:
        before = _agent_drops(conn.agent)
        if not conn.agent.handle_input(data, source, now, via_relay=via):
            return False
        after = _agent_drops(conn.agent)
        if after != before:
            stats = self.stats
            stats.ice_bad_username += after[0] - before[0]
            stats.ice_bad_integrity += after[1] - before[1]
            stats.ice_bad_fingerprint += after[2] - before[2]
            stats.ice_malformed += after[3] - before[3]
            stats.ice_unknown_path += after[4] - before[4]
            stats.ice_non_symmetric += after[5] - before[5]
        self._drain_agent(conn, now)
        self._drain_pool(now)
        return True

    def _wireguard(self, data: bytes, source: Address, via: Address | None, now: float
                   ) -> tuple[str, bytes] | bool:
        path = (via, source)
        peer_id = self._wg_paths.get(path)
        if peer_id is None:
            self.stats.wg_unknown_endpoint += 1
            return False
        conn = self._connections.get(peer_id)
        if conn is None:
            self.stats.wg_unknown_endpoint += 1
            return False
        if data[0] == _TRANSPORT:
            result = self._device.decrypt_transport(data, now)
            if result is None:
                return False
            peer, plaintext = result
            if peer is not conn.wg:
                self.stats.wg_wrong_peer += 1
                return False
            conn.last_wg_path = path
            if not conn.session:
                # The responder's session is confirmed by this packet: release the
                # deferred HandshakeCompleted now rather than at the next timer.
                deadline = peer.next_deadline()
                if deadline is not None and deadline <= now:
                    self._apply_wg(conn, peer.drain(now, now), now)
            if plaintext:
                conn.agent.note_traffic(now)
                return peer_id, plaintext
            return True
        found, actions = self._device.receive(data, source, now, now)
        if found is None:
            # Cookie replies to a handshake we could not take now (under load).
            for action in actions:
                if isinstance(action, SendDatagram):
                    transmit = self._on_path(conn, path, action.data, now)
                    if transmit is not None:
                        self._transmits.append(transmit)
            return bool(actions)
        if found is not conn.wg:
            self.stats.wg_wrong_peer += 1
            return False
        conn.last_wg_path = path
        self._apply_wg(conn, actions, now)
        return True

    # ----------------------------------------------------------------------------------
    # Timers
    # ----------------------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        self._pool.handle_timeout(now, self._watched_relays())
        self._drain_pool(now)
        for conn in list(self._connections.values()):
            if conn.closed:
                continue
            deadline = conn.agent.poll_timeout()
            if deadline is not None and deadline <= now:
                conn.agent.handle_timeout(now)
                self._drain_agent(conn, now)
                if conn.closed:
                    continue
            deadline = conn.wg.next_deadline()
            if deadline is not None and deadline <= now:
                self._apply_wg(conn, conn.wg.on_timer(now, now), now)
                if conn.closed:
                    continue
            if not conn.candidate_deadline_done and now >= conn.created_at + CANDIDATE_TIMEOUT:
                conn.candidate_deadline_done = True
                if conn.connected_at is None and not conn.agent.remote_candidates():
                    self._fail(conn, "no remote candidates")
                    continue
            if self._controlled_waiting(conn):
                assert conn.connected_at is not None
                if now >= conn.connected_at + CONTROLLED_INITIATE_AFTER:
                    conn.initiated = True
                    self._flush_buffer(conn, now)
        self._drain_pool(now)

    @staticmethod
    def _controlled_waiting(conn: _Connection) -> bool:
        return (not conn.controlling and conn.connected_at is not None and not conn.session
                and not conn.initiated and bool(conn.buffer))

    def _watched_relays(self) -> list[str]:
        """Our relays that carry the nominated path of an active (non-idle) connection."""
        watched: list[str] = []
        for conn in self._connections.values():
            selected = conn.selected
            if selected is not None and selected[0] is not None and not conn.agent.idle:
                relay_id = self._pool.relay_id_for(selected[0])
                if relay_id is not None and relay_id not in watched:
                    watched.append(relay_id)
        return watched

    # ----------------------------------------------------------------------------------
    # Candidates
    # ----------------------------------------------------------------------------------

    def _useful_srflx(self, candidate: Candidate) -> bool:
        """Not redundant with a host candidate (no NAT: the relay sees our host address)."""
        return all(h.address != candidate.address for h in self._hosts)

    def _local_candidates(self, conn: _Connection) -> list[Candidate]:
        return [*self._hosts,
                *(c for c in self._pool.srflx_candidates() if self._useful_srflx(c)),
                *self._pool.relay_candidates(conn.relay_id)]

    def _offer(self, conn: _Connection, candidate: Candidate, now: float) -> None:
        key = (candidate.kind, candidate.address)
        if conn.closed or key in conn.locals:
            return
        if conn.agent.add_local_candidate(candidate, now):
            conn.locals[key] = candidate
            self._events.append(NewLocalCandidate(conn.peer_id, candidate.encode()))
        self._drain_agent(conn, now)

    def _withdraw(self, conn: _Connection, candidate: Candidate, now: float) -> None:
        key = (candidate.kind, candidate.address)
        known = conn.locals.pop(key, None)
        if conn.closed or known is None:
            return
        conn.agent.invalidate_local_candidate(known, now)
        self._events.append(InvalidatedLocalCandidate(conn.peer_id, known.encode()))
        self._drain_agent(conn, now)

    def _resample(self, conn: _Connection, now: float) -> None:
        """Move the connection's relayed candidates to another relay: the new ones are
        offered (and signalled) before the old ones are withdrawn, so neither agent is
        ever left with nothing but failed pairs, which would end it."""
        old = [c for c in conn.locals.values() if c.kind is CandidateKind.RELAY]
        conn.relay_id = self._pool.sample()
        self._adopt_relay(conn, now)
        keep = self._pool.relay_candidates(conn.relay_id)
        for candidate in old:
            if candidate not in keep:
                self._withdraw(conn, candidate, now)

    def _adopt_relay(self, conn: _Connection, now: float) -> None:
        if conn.relay_id is None or conn.closed:
            return
        for remote in conn.agent.remote_candidates():
            self._pool.bind_channel(conn.relay_id, remote.address, now)
        for candidate in self._pool.relay_candidates(conn.relay_id):
            self._offer(conn, candidate, now)

    def _drain_pool(self, now: float) -> None:
        pool = self._pool
        transmits = self._transmits
        while (transmit := pool.poll_transmit()) is not None:
            transmits.append(transmit)
        while (event := pool.poll_event()) is not None:
            connections = list(self._connections.values())
            if isinstance(event, SrflxAdded):
                if self._useful_srflx(event.candidate):
                    for conn in connections:
                        self._offer(conn, event.candidate, now)
            elif isinstance(event, SrflxRemoved):
                for conn in connections:
                    self._withdraw(conn, event.candidate, now)
            elif isinstance(event, RelayCandidateAdded):
                for conn in connections:
                    if conn.relay_id is None or not pool.allocated(conn.relay_id):
                        if conn.relay_id != event.relay_id:
                            conn.relay_id = event.relay_id
                            self._adopt_relay(conn, now)
                            continue
                    if conn.relay_id == event.relay_id:
                        self._offer(conn, event.candidate, now)
            elif isinstance(event, RelayCandidateRemoved):
                for conn in connections:
                    if conn.relay_id == event.relay_id:
                        self._withdraw(conn, event.candidate, now)
            elif isinstance(event, RelayDown):
                for conn in connections:
                    if conn.relay_id == event.relay_id and not conn.closed:
                        self._resample(conn, now)
                if not event.removed:
                    self._events.append(RelayFailed(event.relay_id, event.reason))
            while (transmit := pool.poll_transmit()) is not None:
                transmits.append(transmit)

    # ----------------------------------------------------------------------------------
    # ICE
    # ----------------------------------------------------------------------------------

    def _drain_agent(self, conn: _Connection, now: float) -> None:
        agent = conn.agent
        while (transmit := agent.poll_transmit()) is not None:
            payload = transmit.payload
            if payload[:2] == b"\x00\x01":
                self._remember_check(bytes(payload[8:20]), conn.peer_id)
            if transmit.via_relay is None:
                self._transmits.append(transmit)
                continue
            relayed = self._pool.send_via(transmit.via_relay, transmit.dest, payload, now,
                                          wait_for_channel=True)
            if relayed is not None:
                self._transmits.append(relayed)
            else:
                self.stats.relay_not_ready += 1
        while (event := agent.poll_event()) is not None:
            self._on_ice_event(conn, event, now)
            if conn.closed:
                return
        self._update_accept(conn)

    def _remember_check(self, tid: bytes, peer_id: str) -> None:
        tids = self._check_tids
        tids[tid] = peer_id
        if len(tids) > MAX_CHECK_TIDS:
            del tids[next(iter(tids))]

    def _on_ice_event(self, conn: _Connection, event: ice.IceEvent, now: float) -> None:
        if isinstance(event, ice.Connected | ice.NominatedPairChanged):
            conn.selected = (event.via_relay, event.dest)
            kind = path_kind(event.local, event.remote)
            relay_id = self._pool.relay_id_for(event.via_relay)
            first = conn.connected_at is None
            conn.path_kind = kind
            if first:
                conn.connected_at = now
                self._events.append(Connected(conn.peer_id, kind, event.local, event.remote,
                                              relay_id))
                self._update_accept(conn)
                self._start_wireguard(conn, now)
            else:
                self._events.append(PathChanged(conn.peer_id, kind, event.local, event.remote,
                                                relay_id))
        elif isinstance(event, ice.Failed):
            self._fail(conn, "ice failed")

    def _refresh_path_kind(self, conn: _Connection) -> None:
        """A peer-reflexive remote may turn out to be the peer's host or srflx candidate."""
        selected = conn.agent.selected
        if selected is None or conn.connected_at is None:
            return
        kind = path_kind(selected.local, selected.remote)
        if kind is not conn.path_kind:
            conn.path_kind = kind
            self._events.append(PathChanged(conn.peer_id, kind, selected.local, selected.remote,
                                            self._pool.relay_id_for(selected.via_relay)))

    def _update_accept(self, conn: _Connection) -> None:
        pairs = conn.agent.pairs()
        accept: frozenset[Path] = frozenset()
        if conn.selected is not None or any(p.nominated for p in pairs):
            accept = frozenset((p.via_relay, p.remote.address) for p in pairs
                               if p.state is PairState.SUCCEEDED or p.nominated)
        if accept == conn.accept:
            return
        paths = self._wg_paths
        for path in conn.accept - accept:
            if paths.get(path) == conn.peer_id:
                del paths[path]
        for path in accept:
            paths[path] = conn.peer_id
        conn.accept = accept
        if conn.last_wg_path is not None and conn.last_wg_path not in accept:
            conn.last_wg_path = None

    # ----------------------------------------------------------------------------------
    # WireGuard
    # ----------------------------------------------------------------------------------

    def _start_wireguard(self, conn: _Connection, now: float) -> None:
        """After nomination the controlling side initiates (REFERENCE 5.4)."""
        if not conn.controlling:
            return
        conn.initiated = True
        if conn.buffer:
            self._flush_buffer(conn, now)
        else:
            self._apply_wg(conn, conn.wg.initiate_handshake(now, now), now)

    def _flush_buffer(self, conn: _Connection, now: float) -> None:
        while conn.buffer and not conn.closed:
            packet = conn.buffer.popleft()
            self._apply_wg(conn, conn.wg.send(packet, now, now), now)

    def _apply_wg(self, conn: _Connection, actions: list[Action], now: float) -> None:
        expired: str | None = None
        completed = False
        for action in actions:
            if isinstance(action, SendDatagram):
                path = conn.send_path
                if path is None:
                    self.stats.no_path += 1
                    continue
                transmit = self._on_path(conn, path, action.data, now)
                if transmit is not None:
                    self._transmits.append(transmit)
            elif isinstance(action, HandshakeCompleted):
                conn.session = True
                completed = True
            elif isinstance(action, ConnectionExpired):
                expired = action.reason
        if expired is not None:
            self._fail(conn, f"wireguard {expired}")
        elif completed and conn.buffer:
            self._flush_buffer(conn, now)

    def _on_path(self, conn: _Connection, path: Path, payload: bytes, now: float
                 ) -> Transmit | None:
        via, dest = path
        if via is None:
            return Transmit(payload, dest)
        transmit = self._pool.send_via(via, dest, payload, now)
        if transmit is None:
            self.stats.relay_not_ready += 1
            self._drain_pool(now)
        return transmit

    # ----------------------------------------------------------------------------------
    # Teardown
    # ----------------------------------------------------------------------------------

    def _fail(self, conn: _Connection, reason: str) -> None:
        if conn.closed:
            return
        self._remove(conn)
        self._events.append(ConnectionFailed(conn.peer_id, reason))

    def _remove(self, conn: _Connection) -> None:
        conn.closed = True
        if self._connections.get(conn.peer_id) is conn:
            del self._connections[conn.peer_id]
        ids = self._by_ufrag.get(conn.local_creds.ufrag)
        if ids is not None:
            if conn.peer_id in ids:
                ids.remove(conn.peer_id)
            if not ids:
                del self._by_ufrag[conn.local_creds.ufrag]
        for path in conn.accept:
            if self._wg_paths.get(path) == conn.peer_id:
                del self._wg_paths[path]
        conn.accept = frozenset()
        conn.buffer.clear()
        if self._device.get_peer(conn.public_key) is conn.wg:
            self._device.remove_peer(conn.public_key)
        else:
            conn.wg.close()
