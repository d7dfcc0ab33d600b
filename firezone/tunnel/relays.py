"""The relays a node keeps: one TURN client each, their RTT, their liveness, and sampling.

The portal gives every device a few relays (REFERENCE 2.4).  The node keeps an
allocation on each (:class:`~firezone.tunnel.turn_client.TurnClient`) and, per
connection, uses the relayed candidates of only one of them, sampled by RTT
(:func:`sample_relay`).  This module owns everything about relays so the node
only sees candidates come and go:

* server-reflexive candidates are reference counted across relays (behind an
  endpoint-independent NAT every relay reports the same one);
* RTT is measured on the TURN clients' own BINDING requests (first send to
  success response), so keepalives keep it current;
* a relay that carries an active path and has sent nothing for
  :data:`RELAY_SILENCE` is probed with a BINDING; no answer within
  :data:`PROBE_TIMEOUT` means it is gone: its candidates are withdrawn at once
  (ICE then moves to another relay's) instead of after the ICE timeout.  A
  failed relay is retried with backoff, so a restarted relay comes back;
* payloads for a relayed peer whose channel is still being bound can wait for
  the ``ChannelBound`` (connectivity checks only, a few per peer), so the first
  relayed checks are not lost to the bind round trip.

Pure: bytes, addresses and ``now`` in; transmits, events and deadlines out.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from firezone.tunnel.turn_client import (
    Address,
    AllocationFailed,
    CandidateDiscovered,
    CandidateInvalidated,
    ChannelBound,
    Relayed,
    Transmit,
    TurnClient,
    TurnEvent,
)
from firezone.wire.candidate import Candidate, CandidateKind
from firezone.wire.stun import Message, MessageClass, Method, Software

__all__ = [
    "MAD_FLOOR",
    "PROBE_TIMEOUT",
    "RELAY_SILENCE",
    "RETRY_AFTER",
    "RETRY_MAX",
    "PoolEvent",
    "PoolStats",
    "RelayCandidateAdded",
    "RelayCandidateRemoved",
    "RelayDown",
    "RelayInfo",
    "RelayPool",
    "SrflxAdded",
    "SrflxRemoved",
    "sample_relay",
]

#: A relay carrying an active (non-idle) path that sent nothing for this long is probed.
#: Active ICE connections exchange consent checks every 5 s, so a live relay is never
#: this quiet while it carries one.
RELAY_SILENCE = 8.0
#: Probe retransmission: first after this, doubling; the relay is gone after PROBE_TIMEOUT.
PROBE_RTO = 0.5
PROBE_TIMEOUT = 3.5
#: A failed TURN client starts over after this long, doubling up to RETRY_MAX.
RETRY_AFTER = 5.0
RETRY_MAX = 60.0
#: REFERENCE 2.4: the MAD used for the sampling threshold is at least 2 ms.
MAD_FLOOR = 0.002
#: Checks held per relayed peer while its channel is bound, and peers with held checks.
MAX_PENDING_PER_PEER = 8
MAX_PENDING_PEERS = 256
#: BINDING transaction ids remembered per relay for RTT measurement.
MAX_BINDINGS_TRACKED = 16

_BINDING_REQUEST = b"\x00\x01"
_BINDING_SUCCESS = b"\x01\x01"
_BINDING_ERROR = b"\x01\x11"


class RelayInfo(NamedTuple):
    """One relay as the portal describes it; ``addresses`` are its STUN/TURN sockets."""

    id: str
    addresses: Sequence[Address]
    username: str
    password: str


def sample_relay(rtts: Mapping[str, float], rng: random.Random) -> str | None:
    """Pick one relay among those with a measured RTT, as snownet's ``allocations.rs``.

    1-2 relays: eligible if within 1.5x the fastest.  3 or more: eligible if at
    most ``median + 3 * MAD`` (MAD floored at 2 ms).  Uniform among the eligible.
    """
    if not rtts:
        return None
    values = list(rtts.values())
    if len(values) <= 2:
        threshold = 1.5 * min(values)
    else:
        median = statistics.median(values)
        mad = max(statistics.median(abs(v - median) for v in values), MAD_FLOOR)
        threshold = median + 3 * mad
    eligible = sorted(relay_id for relay_id, rtt in rtts.items() if rtt <= threshold)
    return rng.choice(eligible)


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SrflxAdded:
    """A server-reflexive address no relay reported before."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class SrflxRemoved:
    """No relay reports this server-reflexive address any more."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class RelayCandidateAdded:
    relay_id: str
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class RelayCandidateRemoved:
    relay_id: str
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class RelayDown:
    """The relay is unusable: ``removed`` by the portal, or failed (``reason``)."""

    relay_id: str
    reason: str

    @property
    def removed(self) -> bool:
        return self.reason == "removed"


PoolEvent = SrflxAdded | SrflxRemoved | RelayCandidateAdded | RelayCandidateRemoved | RelayDown


@dataclass(slots=True)
class PoolStats:
    probes_sent: int = 0
    relays_failed: int = 0
    relay_not_ready: int = 0
    pending_dropped: int = 0
    invalid_relays: int = 0


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Probe:
    tid: bytes
    dest: Address
    payload: bytes
    started: float
    next_send: float
    interval: float


@dataclass(slots=True, eq=False)
class _Relay:
    info: RelayInfo
    turn: TurnClient
    last_received: float
    rtt: float | None = None
    bindings: dict[bytes, float] = field(default_factory=dict)
    probe: _Probe | None = None
    down: bool = False
    retry_at: float | None = None
    retry_interval: float = RETRY_AFTER
    relayed: list[Candidate] = field(default_factory=list)
    srflx: dict[bool, Candidate] = field(default_factory=dict)
    pending: dict[Address, deque[bytes]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def allocated(self) -> bool:
        return bool(self.relayed)


class RelayPool:
    """Every relay of one node, keyed by the portal's relay id."""

    def __init__(self, rng: random.Random, *, dual_stack: bool = True) -> None:
        self._rng = rng
        self._dual_stack = dual_stack
        self.base: Address | None = None
        self.stats = PoolStats()
        self._relays: dict[str, _Relay] = {}
        self._by_server: dict[Address, _Relay] = {}
        self._by_relayed: dict[Address, _Relay] = {}
        self._srflx: dict[Address, tuple[Candidate, set[str]]] = {}
        self._transmits: deque[Transmit] = deque()
        self._events: deque[PoolEvent] = deque()

    # ----------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._relays)

    def ids(self) -> list[str]:
        return list(self._relays)

    def is_server(self, address: Address) -> bool:
        return address in self._by_server

    def allocated(self, relay_id: str) -> bool:
        relay = self._relays.get(relay_id)
        return relay is not None and relay.allocated

    def rtt(self, relay_id: str) -> float | None:
        relay = self._relays.get(relay_id)
        return relay.rtt if relay is not None else None

    def relay_candidates(self, relay_id: str | None) -> list[Candidate]:
        relay = self._relays.get(relay_id) if relay_id is not None else None
        return list(relay.relayed) if relay is not None else []

    def srflx_candidates(self) -> list[Candidate]:
        return [candidate for candidate, _ in self._srflx.values()]

    def relay_id_for(self, relayed_address: Address | None) -> str | None:
        """Which relay allocated our relayed address ``relayed_address``."""
        if relayed_address is None:
            return None
        relay = self._by_relayed.get(relayed_address)
        return relay.id if relay is not None else None

    def turn_client(self, relay_id: str) -> TurnClient | None:
        relay = self._relays.get(relay_id)
        return relay.turn if relay is not None else None

    def sample(self) -> str | None:
        """The relay for a new connection: by RTT among the allocated ones (REFERENCE 2.4);
        with no RTT measured yet, any allocated one; with none allocated, any still trying."""
        allocated = [r for r in self._relays.values() if r.allocated and not r.down]
        rtts = {r.id: r.rtt for r in allocated if r.rtt is not None}
        if rtts:
            return sample_relay(rtts, self._rng)
        ids = sorted(r.id for r in allocated) or sorted(
            r.id for r in self._relays.values() if not r.down and r.turn.failure is None
        )
        return self._rng.choice(ids) if ids else None

    # ----------------------------------------------------------------------------------
    # Outputs
    # ----------------------------------------------------------------------------------

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> PoolEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self, watched: Iterable[str] = ()) -> float | None:
        """The next deadline; ``watched`` are the relays that carry active paths now."""
        deadlines: list[float] = []
        for relay in self._relays.values():
            deadline = relay.turn.poll_timeout()
            if deadline is not None:
                deadlines.append(deadline)
            if relay.retry_at is not None:
                deadlines.append(relay.retry_at)
            probe = relay.probe
            if probe is not None:
                deadlines.append(min(probe.next_send, probe.started + PROBE_TIMEOUT))
        for relay_id in watched:
            quiet = self._relays.get(relay_id)
            if quiet is not None and self._may_probe(quiet):
                deadlines.append(quiet.last_received + RELAY_SILENCE)
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------
    # Configuration
    # ----------------------------------------------------------------------------------

    def update(self, relays: Iterable[RelayInfo], now: float) -> None:
        """Make the set of relays exactly ``relays`` (the portal's latest list)."""
        wanted: dict[str, RelayInfo] = {}
        for info in relays:
            addresses = tuple((str(ip), int(port)) for ip, port in info.addresses)
            if not addresses:
                self.stats.invalid_relays += 1
                continue
            wanted[info.id] = RelayInfo(info.id, addresses, info.username, info.password)
        for relay_id in [r for r in self._relays if r not in wanted]:
            self._remove(relay_id)
        for info in wanted.values():
            existing = self._relays.get(info.id)
            if existing is not None and tuple(existing.info.addresses) == tuple(info.addresses):
                if (info.username, info.password) != (existing.info.username,
                                                      existing.info.password):
                    existing.info = info
                    existing.retry_at = None
                    existing.turn.update_credentials(info.username, info.password, now)
                    self._drain(existing, now)
                continue
            if existing is not None:
                self._remove(info.id)
            turn = TurnClient(info.addresses, info.username, info.password, now, rng=self._rng,
                              dual_stack=self._dual_stack, base=self.base)
            relay = _Relay(info, turn, last_received=now)
            self._relays[info.id] = relay
            for server in info.addresses:
                self._by_server[server] = relay
            self._drain(relay, now)

    def _remove(self, relay_id: str) -> None:
        relay = self._relays.pop(relay_id)
        # RelayDown first: connections move to another relay before these candidates go,
        # so no ICE agent is left with only failed pairs in between (make before break).
        self._events.append(RelayDown(relay_id, "removed"))
        for server in relay.info.addresses:
            if self._by_server.get(server) is relay:
                del self._by_server[server]
        for candidate in relay.relayed:
            self._by_relayed.pop(candidate.address, None)
            self._events.append(RelayCandidateRemoved(relay_id, candidate))
        relay.relayed.clear()
        for candidate in relay.srflx.values():
            self._unreport_srflx(relay, candidate)
        relay.srflx.clear()

    # ----------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------

    def handle_stun(self, datagram: bytes, source: Address, now: float) -> bool:
        """A STUN message from a relay's address; True if it answered one of our requests."""
        relay = self._by_server.get(source)
        if relay is None:
            return False
        relay.last_received = now
        tid = bytes(datagram[8:20])
        kind = bytes(datagram[:2])
        handled = relay.turn.handle_input(datagram, source, now)
        if handled and kind == _BINDING_SUCCESS:
            sent = relay.bindings.pop(tid, None)
            if sent is not None:
                relay.rtt = now - sent
        probe = relay.probe
        if (probe is not None and tid == probe.tid and source == probe.dest
                and kind in (_BINDING_SUCCESS, _BINDING_ERROR)):
            relay.probe = None
            handled = True
        self._drain(relay, now)
        return handled

    def decode_channel_data(self, datagram: bytes, source: Address, now: float
                            ) -> Relayed | None:
        """Unwrap ChannelData from a relay; None if no bound channel of ours matches."""
        relay = self._by_server.get(source)
        if relay is None:
            return None
        relay.last_received = now
        return relay.turn.decode_from_relay(datagram, source, now)

    def send_via(self, relayed_address: Address, peer: Address, payload: bytes, now: float,
                 *, wait_for_channel: bool = False) -> Transmit | None:
        """``payload`` for ``peer`` through the relay that allocated ``relayed_address``.

        None when there is no channel yet (a bind is started); with
        ``wait_for_channel`` the payload is held and sent once the channel is bound.
        """
        relay = self._by_relayed.get(relayed_address)
        if relay is None:
            self.stats.relay_not_ready += 1
            return None
        wrapped = relay.turn.encode_to_peer(peer, payload, now)
        if wrapped is not None:
            return Transmit(wrapped[0], wrapped[1])
        self.stats.relay_not_ready += 1
        if wait_for_channel:
            queue = relay.pending.get(peer)
            if queue is None:
                if len(relay.pending) >= MAX_PENDING_PEERS:
                    self.stats.pending_dropped += 1
                    self._drain(relay, now)
                    return None
                queue = relay.pending[peer] = deque(maxlen=MAX_PENDING_PER_PEER)
            if len(queue) == queue.maxlen:
                self.stats.pending_dropped += 1
            queue.append(payload)
        self._drain(relay, now)
        return None

    def bind_channel(self, relay_id: str, peer: Address, now: float) -> None:
        """Bind a channel to ``peer`` ahead of need (remote candidates of a connection)."""
        relay = self._relays.get(relay_id)
        if relay is None:
            return
        relay.turn.bind_channel(peer, now)
        self._drain(relay, now)

    def handle_timeout(self, now: float, watched: Iterable[str] = ()) -> None:
        for relay in list(self._relays.values()):
            deadline = relay.turn.poll_timeout()
            if deadline is not None and deadline <= now:
                relay.turn.handle_timeout(now)
            if relay.retry_at is not None and now >= relay.retry_at:
                relay.retry_at = None
                relay.turn.restart(now)
            probe = relay.probe
            if probe is not None:
                if now >= probe.started + PROBE_TIMEOUT:
                    relay.probe = None
                    self._fail(relay, "unresponsive", now)
                elif now >= probe.next_send:
                    probe.interval *= 2
                    probe.next_send = now + probe.interval
                    self.stats.probes_sent += 1
                    self._transmits.append(Transmit(probe.payload, probe.dest))
            self._drain(relay, now)
        for relay_id in watched:
            quiet = self._relays.get(relay_id)
            if (quiet is not None and self._may_probe(quiet)
                    and now >= quiet.last_received + RELAY_SILENCE):
                self._start_probe(quiet, now)

    # ----------------------------------------------------------------------------------
    # Liveness
    # ----------------------------------------------------------------------------------

    @staticmethod
    def _may_probe(relay: _Relay) -> bool:
        return (relay.probe is None and not relay.down and relay.allocated
                and relay.turn.active_server is not None)

    def _start_probe(self, relay: _Relay, now: float) -> None:
        dest = relay.turn.active_server
        assert dest is not None
        tid = self._rng.randbytes(12)
        payload = Message(Method.BINDING, MessageClass.REQUEST, tid,
                          [Software("snownet")]).encode()
        relay.probe = _Probe(tid, dest, payload, now, now + PROBE_RTO, PROBE_RTO)
        self.stats.probes_sent += 1
        self._transmits.append(Transmit(payload, dest))

    def _fail(self, relay: _Relay, reason: str, now: float) -> None:
        """The relay stopped answering: withdraw its candidates now and start over."""
        relay.pending.clear()
        self._mark_down(relay, reason)
        relay.turn.restart(now)
        self._drain(relay, now)

    def _mark_down(self, relay: _Relay, reason: str) -> None:
        if not relay.down:
            relay.down = True
            self.stats.relays_failed += 1
            self._events.append(RelayDown(relay.id, reason))

    # ----------------------------------------------------------------------------------
    # TURN client outputs
    # ----------------------------------------------------------------------------------

    def _drain(self, relay: _Relay, now: float) -> None:
        turn = relay.turn
        while (transmit := turn.poll_transmit()) is not None:
            payload = transmit.payload
            if payload[:2] == _BINDING_REQUEST:
                bindings = relay.bindings
                bindings.setdefault(bytes(payload[8:20]), now)
                while len(bindings) > MAX_BINDINGS_TRACKED:
                    del bindings[next(iter(bindings))]
            self._transmits.append(Transmit(payload, transmit.dest))
        events: list[TurnEvent] = []
        while (event := turn.poll_event()) is not None:
            events.append(event)
        if any(isinstance(e, AllocationFailed) for e in events):
            # Report the failure before the candidates it takes away (make before break).
            relay.pending.clear()
            relay.retry_at = now + relay.retry_interval
            relay.retry_interval = min(relay.retry_interval * 2, RETRY_MAX)
            reason = next(e.reason for e in events if isinstance(e, AllocationFailed))
            self._mark_down(relay, f"allocation failed: {reason}")
        for event in events:
            if isinstance(event, CandidateDiscovered):
                self._discovered(relay, event.candidate)
            elif isinstance(event, CandidateInvalidated):
                self._invalidated(relay, event.candidate)
            elif isinstance(event, ChannelBound):
                held = relay.pending.pop(event.peer, None)
                for payload in held or ():
                    wrapped = turn.encode_to_peer(event.peer, payload, now)
                    if wrapped is not None:
                        self._transmits.append(Transmit(wrapped[0], wrapped[1]))

    def _discovered(self, relay: _Relay, candidate: Candidate) -> None:
        if candidate.kind is CandidateKind.RELAY:
            if candidate in relay.relayed:
                return
            relay.relayed.append(candidate)
            self._by_relayed[candidate.address] = relay
            relay.down = False
            relay.retry_interval = RETRY_AFTER
            self._events.append(RelayCandidateAdded(relay.id, candidate))
        elif candidate.kind is CandidateKind.SRFLX:
            previous = relay.srflx.get(candidate.is_ipv6)
            if previous == candidate:
                return
            relay.srflx[candidate.is_ipv6] = candidate
            self._report_srflx(relay, candidate)
            if previous is not None:
                self._unreport_srflx(relay, previous)

    def _invalidated(self, relay: _Relay, candidate: Candidate) -> None:
        if candidate.kind is CandidateKind.RELAY:
            if candidate not in relay.relayed:
                return
            relay.relayed.remove(candidate)
            if self._by_relayed.get(candidate.address) is relay:
                del self._by_relayed[candidate.address]
            self._events.append(RelayCandidateRemoved(relay.id, candidate))
        elif candidate.kind is CandidateKind.SRFLX:
            if relay.srflx.get(candidate.is_ipv6) == candidate:
                del relay.srflx[candidate.is_ipv6]
                self._unreport_srflx(relay, candidate)

    def _report_srflx(self, relay: _Relay, candidate: Candidate) -> None:
        entry = self._srflx.get(candidate.address)
        if entry is None:
            self._srflx[candidate.address] = (candidate, {relay.id})
            self._events.append(SrflxAdded(candidate))
        else:
            entry[1].add(relay.id)

    def _unreport_srflx(self, relay: _Relay, candidate: Candidate) -> None:
        entry = self._srflx.get(candidate.address)
        if entry is None:
            return
        entry[1].discard(relay.id)
        if not entry[1]:
            del self._srflx[candidate.address]
            self._events.append(SrflxRemoved(entry[0]))
