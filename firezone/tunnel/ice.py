"""A sans-IO ICE agent for one connection (RFC 8445 with str0m semantics, REFERENCE 5.4).

One agent per peer connection, all sharing the node's UDP socket.  The node
feeds it STUN datagrams (after the TURN clients declined them) with
:meth:`IceAgent.handle_input`, which returns False for anything that is not a
check or check response of this agent so the node can try the next agent and
finally WireGuard.

Paths.  Every datagram the agent emits is a :class:`~firezone.tunnel.turn_client.Transmit`;
``via_relay`` is None for the node's socket, or the address of one of our
relayed candidates, whose TURN client must wrap it
(``turn_client.encode_to_peer(dest, payload, now)``).  Datagrams that arrive
through a relay are handed in with ``via_relay`` set the same way.  Because
every host and server-reflexive candidate shares the one socket, a path is
``(via_relay, remote address)``: one pair per path, represented by the best
local candidate of that family (RFC 8445 6.1.2.4 pruning).

Checks.  Both sides check every pair; requests carry USERNAME
``<remote ufrag>:<local ufrag>``, PRIORITY, ICE-CONTROLLING/ICE-CONTROLLED with
our tie-breaker, MESSAGE-INTEGRITY (remote password) and FINGERPRINT.  An
unanswered check is repeated after ``initial_rto * 2^(n-1)`` (capped at
``max_rto``) until ``max_retransmits`` are out; the pair fails once the first
unanswered check is :attr:`IceTiming.timeout` old (str0m's
``StunTiming::timeout``, the table's "ICE timeout").  Succeeded pairs keep
being checked every :attr:`IceTiming.keepalive` (consent freshness, RFC 7675
style): consent is lost, and the pair fails, by the same rule.

Nomination is regular nomination (RFC 8445 8.1.1) applied eagerly, as str0m
does: the controlling side nominates the best succeeded pair as soon as it
exists (a check with USE-CANDIDATE) and nominates again whenever a better pair
succeeds; the controlled side uses the highest-priority pair it saw nominated
and validated itself.  The selected pair is announced with
:class:`Connected`, later changes with :class:`NominatedPairChanged`; losing
every valid pair gives :class:`Disconnected`, and :class:`Failed` (terminal)
once every pair has failed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from firezone.credentials import IceCredentials
from firezone.tunnel.turn_client import Address, Transmit
from firezone.wire.candidate import Candidate, CandidateError, CandidateKind, compute_priority
from firezone.wire.stun import (
    ErrorCode,
    IceControlled,
    IceControlling,
    Message,
    MessageClass,
    Method,
    Priority,
    StunDecodeError,
    UseCandidate,
    Username,
    XorMappedAddress,
    is_stun_message,
    verify_fingerprint,
    verify_integrity,
)

__all__ = [
    "CLIENT_DEFAULT",
    "CLIENT_IDLE",
    "CLIENT_PROFILE",
    "IDLE_AFTER",
    "SERVER_DEFAULT",
    "SERVER_IDLE",
    "SERVER_PROFILE",
    "Connected",
    "Disconnected",
    "Failed",
    "IceAgent",
    "IceCreds",
    "IceEvent",
    "IceProfile",
    "IceState",
    "IceStats",
    "IceTiming",
    "NominatedPairChanged",
    "PairInfo",
    "PairState",
    "RoleChanged",
    "credentials_for",
    "pair_priority",
]

#: A connection with no application traffic for this long uses the idle profile.
IDLE_AFTER = 20.0
#: Bounds on what a peer holding valid credentials can make us track.
MAX_REMOTE_CANDIDATES = 32
MAX_PAIRS = 64
ROLE_CONFLICT = 487


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IceTiming:
    """STUN check timing (``IceConfig`` of the reference), in seconds."""

    initial_rto: float
    max_rto: float
    max_retransmits: int
    keepalive: float

    def rto(self, n: int) -> float:
        """Wait after the ``n``-th unanswered check (n >= 1): doubling from ``initial_rto``."""
        return min(self.initial_rto * 2.0 ** min(max(n - 1, 0), 62), self.max_rto)

    def send_offsets(self) -> list[float]:
        """When the unanswered checks go out, relative to the first."""
        offsets = [0.0]
        for n in range(1, self.max_retransmits):
            offsets.append(offsets[-1] + self.rto(n))
        return offsets

    @property
    def timeout(self) -> float:
        """How long a check may stay unanswered: str0m ``StunTiming::timeout``,
        ``sum(rto(2..N)) + rto(N)`` with N = ``max_retransmits``."""
        n = self.max_retransmits
        return sum(self.rto(k) for k in range(2, n + 1)) + self.rto(n)


CLIENT_DEFAULT = IceTiming(initial_rto=0.25, max_rto=1.5, max_retransmits=12, keepalive=5.0)
CLIENT_IDLE = IceTiming(initial_rto=25.0, max_rto=25.0, max_retransmits=4, keepalive=25.0)
SERVER_DEFAULT = IceTiming(initial_rto=0.25, max_rto=15.0, max_retransmits=45, keepalive=5.0)
SERVER_IDLE = IceTiming(initial_rto=25.0, max_rto=25.0, max_retransmits=40, keepalive=25.0)


@dataclass(frozen=True, slots=True)
class IceProfile:
    """The timing in use while application traffic flows, and while idle."""

    active: IceTiming
    idle: IceTiming


CLIENT_PROFILE = IceProfile(CLIENT_DEFAULT, CLIENT_IDLE)
SERVER_PROFILE = IceProfile(SERVER_DEFAULT, SERVER_IDLE)


@dataclass(frozen=True, slots=True)
class IceCreds:
    """One side's ICE username fragment and password."""

    ufrag: str
    pwd: str

    @property
    def key(self) -> bytes:
        """The short-term credential key (RFC 8489 9.1.1: the password itself)."""
        return self.pwd.encode("utf-8")


def credentials_for(creds: IceCredentials, *, initiator: bool) -> tuple[IceCreds, IceCreds]:
    """``(local, remote)`` from the portal's credentials; the initiator is the client."""
    initiator_creds = IceCreds(creds.initiator_username, creds.initiator_password)
    receiver_creds = IceCreds(creds.receiver_username, creds.receiver_password)
    if initiator:
        return initiator_creds, receiver_creds
    return receiver_creds, initiator_creds


def pair_priority(controlling: bool, local_priority: int, remote_priority: int) -> int:
    """RFC 8445 6.1.2.3: ``2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)``, G = controlling's."""
    g, d = (local_priority, remote_priority) if controlling else (remote_priority, local_priority)
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


# --------------------------------------------------------------------------------------
# Events and introspection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PathEvent:
    local: Candidate
    remote: Candidate

    @property
    def dest(self) -> Address:
        """Where to send application packets."""
        return self.remote.address

    @property
    def via_relay(self) -> Address | None:
        """Our relayed address to send through, or None for the socket."""
        return self.local.address if self.local.kind is CandidateKind.RELAY else None


@dataclass(frozen=True, slots=True)
class Connected(_PathEvent):
    """A pair was selected (first time, or again after :class:`Disconnected`)."""


@dataclass(frozen=True, slots=True)
class NominatedPairChanged(_PathEvent):
    """The selected pair moved to another one (better, or a survivor of a failure)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """No valid pair is left; checks go on until one succeeds or all fail."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Every pair failed; the agent is done."""


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """A role conflict (RFC 8445 7.3.1.1) switched our role."""

    controlling: bool


IceEvent = Connected | NominatedPairChanged | Disconnected | Failed | RoleChanged


class IceState(Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


class PairState(Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PairInfo:
    local: Candidate
    remote: Candidate
    via_relay: Address | None
    priority: int
    state: PairState
    nominated: bool


@dataclass(slots=True)
class IceStats:
    """Counters; ``bad_*`` are checks dropped without effect (they never create a path)."""

    checks_sent: int = 0
    requests_received: int = 0
    responses_sent: int = 0
    responses_received: int = 0
    bad_username: int = 0
    bad_integrity: int = 0
    bad_fingerprint: int = 0
    malformed: int = 0
    non_symmetric: int = 0
    unknown_path: int = 0
    role_conflicts: int = 0
    prflx_discovered: int = 0
    pairs_failed: int = 0


# --------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    sent_at: float
    use_candidate: bool
    controlling: bool
    answered: bool = False


@dataclass(slots=True, eq=False)
class _Pair:
    local: Candidate
    remote: Candidate
    via_relay: Address | None
    priority: int
    next_check: float | None
    state: PairState = PairState.WAITING
    attempts: dict[bytes, _Attempt] = field(default_factory=dict)
    unanswered: int = 0
    unanswered_since: float | None = None
    last_sent: float | None = None
    last_success: float | None = None
    nominated: bool = False

    def reset_checks(self, now: float) -> None:
        """Check again from scratch at once (triggered check)."""
        self.unanswered = 0
        self.unanswered_since = None
        self.next_check = now
        if self.state is PairState.FAILED:
            self.state = PairState.WAITING


class IceAgent:
    """ICE for one connection; ``controlling`` is True on the client (the initiator)."""

    def __init__(
        self,
        local_credentials: IceCreds,
        remote_credentials: IceCreds,
        *,
        controlling: bool,
        rng: random.Random,
        profile: IceProfile = CLIENT_PROFILE,
        auto_idle: bool = True,
    ) -> None:
        self._local_credentials = local_credentials
        self._remote_credentials = remote_credentials
        self.tie_breaker = rng.getrandbits(64)
        self.stats = IceStats()
        self._controlling = controlling
        self._rng = rng
        self._profile = profile
        self._idle = False
        self._auto_idle = auto_idle
        self._last_traffic = 0.0
        self._state = IceState.NEW
        self._locals: list[Candidate] = []
        self._remotes: dict[Address, Candidate] = {}
        self._pairs: dict[tuple[Address | None, Address], _Pair] = {}
        self._tids: dict[bytes, _Pair] = {}
        self._selected: _Pair | None = None
        self._nominating: _Pair | None = None
        self._transmits: deque[Transmit] = deque()
        self._events: deque[IceEvent] = deque()
        self._username = f"{remote_credentials.ufrag}:{local_credentials.ufrag}"

    # ----------------------------------------------------------------------------------
    # Introspection
    # ----------------------------------------------------------------------------------

    @property
    def controlling(self) -> bool:
        return self._controlling

    @property
    def local_credentials(self) -> IceCreds:
        return self._local_credentials

    @property
    def remote_credentials(self) -> IceCreds:
        return self._remote_credentials

    @property
    def state(self) -> IceState:
        return self._state

    @property
    def idle(self) -> bool:
        return self._idle

    @property
    def timing(self) -> IceTiming:
        return self._profile.idle if self._idle else self._profile.active

    def local_candidates(self) -> list[Candidate]:
        return list(self._locals)

    def remote_candidates(self) -> list[Candidate]:
        return list(self._remotes.values())

    def pairs(self) -> list[PairInfo]:
        """All pairs, highest priority first."""
        return [
            PairInfo(p.local, p.remote, p.via_relay, p.priority, p.state, p.nominated)
            for p in sorted(self._pairs.values(), key=lambda p: -p.priority)
        ]

    @property
    def selected(self) -> PairInfo | None:
        p = self._selected
        if p is None:
            return None
        return PairInfo(p.local, p.remote, p.via_relay, p.priority, p.state, p.nominated)

    # ----------------------------------------------------------------------------------
    # Outputs
    # ----------------------------------------------------------------------------------

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        if self._state is IceState.FAILED:
            return None
        timeout = self.timing.timeout
        deadlines: list[float] = []
        for pair in self._pairs.values():
            if pair.state is PairState.FAILED:
                continue
            if pair.next_check is not None:
                deadlines.append(pair.next_check)
            if pair.unanswered_since is not None:
                deadlines.append(pair.unanswered_since + timeout)
        if self._auto_idle and not self._idle and self._state is IceState.CONNECTED:
            deadlines.append(self._last_traffic + IDLE_AFTER)
        return min(deadlines) if deadlines else None

    # ----------------------------------------------------------------------------------
    # Candidates
    # ----------------------------------------------------------------------------------

    def add_local_candidate(self, candidate: Candidate, now: float) -> bool:
        """Host, server-reflexive or relayed (UDP, component 1); False if not added."""
        if (self._state is IceState.FAILED or candidate.kind is CandidateKind.PRFLX
                or not _usable(candidate)):
            return False
        if any(c.address == candidate.address and c.kind is candidate.kind
               for c in self._locals):
            return False
        self._locals.append(candidate)
        self._form_pairs(now)
        self._tick(now)
        return True

    def add_remote_candidate(self, candidate: Candidate, now: float) -> bool:
        """A trickled remote candidate; replaces a peer-reflexive one of the same address."""
        if self._state is IceState.FAILED or not _usable(candidate):
            return False
        existing = self._remotes.get(candidate.address)
        if existing is not None:
            if existing.kind is not CandidateKind.PRFLX or candidate.kind is CandidateKind.PRFLX:
                return False
        elif len(self._remotes) >= MAX_REMOTE_CANDIDATES:
            return False
        self._remotes[candidate.address] = candidate
        self._form_pairs(now)
        self._tick(now)
        return True

    def invalidate_remote_candidate(self, candidate: Candidate, now: float) -> bool:
        """Stop using the remote address (e.g. the peer's relay went away)."""
        if self._remotes.pop(candidate.address, None) is None:
            return False
        for key in [k for k in self._pairs if k[1] == candidate.address]:
            self._remove_pair(key)
        self._tick(now)
        return True

    def invalidate_local_candidate(self, candidate: Candidate, now: float) -> bool:
        """Stop using one of ours (e.g. :class:`CandidateInvalidated` from a TURN client)."""
        for i, local in enumerate(self._locals):
            if local.address == candidate.address and local.kind is candidate.kind:
                del self._locals[i]
                break
        else:
            return False
        if candidate.kind is CandidateKind.RELAY:
            doomed = [k for k in self._pairs if k[0] == candidate.address]
        else:
            doomed = [
                k for k, p in self._pairs.items()
                if k[0] is None and self._direct_local(p.remote.is_ipv6) is None
            ]
        for key in doomed:
            self._remove_pair(key)
        self._form_pairs(now)
        self._tick(now)
        return True

    # ----------------------------------------------------------------------------------
    # Traffic and time
    # ----------------------------------------------------------------------------------

    def handle_input(self, datagram: bytes, source: Address, now: float, *,
                     via_relay: Address | None = None) -> bool:
        """A datagram from ``source`` (through our relayed address ``via_relay``, if set).

        True if it was a connectivity check or response for this agent (whether
        it was accepted or dropped as invalid); False means "not mine".
        """
        if not is_stun_message(datagram):
            return False
        try:
            message = Message.decode(datagram)
        except StunDecodeError:
            return False
        if message.method != Method.BINDING:
            return False
        if message.message_class is MessageClass.REQUEST:
            return self._on_request(message, datagram, source, via_relay, now)
        if message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            pair = self._tids.get(message.transaction_id)
            if pair is None:
                return False
            self._on_response(pair, message, datagram, source, via_relay, now)
            return True
        return False

    def handle_timeout(self, now: float) -> None:
        self._tick(now)

    def note_traffic(self, now: float) -> None:
        """Application traffic went over the connection: leave idle mode if in it."""
        self._last_traffic = max(self._last_traffic, now)
        if self._idle:
            self.set_idle(False, now)

    def set_idle(self, idle: bool, now: float) -> None:
        """Switch between the profile's active and idle timing (also automatic, see
        ``auto_idle``: idle after :data:`IDLE_AFTER` without :meth:`note_traffic`)."""
        if idle == self._idle:
            return
        self._idle = idle
        if not idle:
            self._last_traffic = max(self._last_traffic, now)
        self._reschedule()
        self._tick(now)

    # ----------------------------------------------------------------------------------
    # Checks received
    # ----------------------------------------------------------------------------------

    def _on_request(self, message: Message, raw: bytes, source: Address,
                    via_relay: Address | None, now: float) -> bool:
        username = message.get(Username)
        if username is None:
            return False
        local_ufrag, colon, remote_ufrag = username.value.partition(":")
        if not colon or local_ufrag != self.local_credentials.ufrag:
            return False
        self.stats.requests_received += 1
        if self._state is IceState.FAILED:
            return True
        if remote_ufrag != self.remote_credentials.ufrag:
            self.stats.bad_username += 1
            return True
        if not verify_integrity(raw, self.local_credentials.key):
            self.stats.bad_integrity += 1
            return True
        if not verify_fingerprint(raw):
            self.stats.bad_fingerprint += 1
            return True
        priority = message.get(Priority)
        if priority is None:
            self.stats.malformed += 1
            return True
        if via_relay is not None and not any(
            c.kind is CandidateKind.RELAY and c.address == via_relay for c in self._locals
        ):
            # Like str0m, ignore checks that reached us on an address that is not (or no
            # longer) one of our candidates.
            self.stats.unknown_path += 1
            return True

        # RFC 8445 7.3.1.1: role conflicts; the larger tie-breaker keeps/takes controlling.
        theirs_controlling = message.get(IceControlling)
        theirs_controlled = message.get(IceControlled)
        if self._controlling and theirs_controlling is not None:
            self.stats.role_conflicts += 1
            if self.tie_breaker >= theirs_controlling.tie_breaker:
                self._respond_error(message, source, via_relay, ROLE_CONFLICT, "Role Conflict")
                return True
            self._switch_role(False)
        elif not self._controlling and theirs_controlled is not None:
            self.stats.role_conflicts += 1
            if self.tie_breaker >= theirs_controlled.tie_breaker:
                self._switch_role(True)
            else:
                self._respond_error(message, source, via_relay, ROLE_CONFLICT, "Role Conflict")
                return True

        reply = Message(Method.BINDING, MessageClass.SUCCESS, message.transaction_id,
                        [XorMappedAddress(source[0], source[1])])
        self.stats.responses_sent += 1
        self._send(reply.encode(integrity_key=self.local_credentials.key, fingerprint=True),
                   source, via_relay)

        if source not in self._remotes:
            # RFC 8445 7.3.1.3: a peer-reflexive remote candidate.
            if len(self._remotes) >= MAX_REMOTE_CANDIDATES:
                return True
            try:
                self._remotes[source] = Candidate.prflx(source, priority.value)
            except CandidateError:
                self.stats.malformed += 1
                return True
            self.stats.prflx_discovered += 1
            self._form_pairs(now)
        pair = self._pairs.get((via_relay, source))
        if pair is not None:
            if message.get(UseCandidate) is not None and not self._controlling:
                pair.nominated = True
            # RFC 8445 7.3.1.4: a triggered check for a Waiting or Failed pair, and for an
            # In-Progress one too ("the agent cancels the In-Progress transaction ... The
            # agent MUST then create a new connectivity check for that pair"): our earlier
            # check may have been lost (e.g. before the peer's relay channel existed), and
            # waiting for its retransmission would cost a whole RTO.  A late answer to the
            # earlier transaction is still accepted.
            if pair.state in (PairState.WAITING, PairState.FAILED, PairState.IN_PROGRESS):
                pair.reset_checks(now)
        self._tick(now)
        return True

    def _on_response(self, pair: _Pair, message: Message, raw: bytes, source: Address,
                     via_relay: Address | None, now: float) -> None:
        self.stats.responses_received += 1
        attempt = pair.attempts.get(message.transaction_id)
        if attempt is None or self._state is IceState.FAILED:
            return
        if not verify_integrity(raw, self.remote_credentials.key):
            self.stats.bad_integrity += 1
            return
        if not verify_fingerprint(raw):
            self.stats.bad_fingerprint += 1
            return
        if source != pair.remote.address or via_relay != pair.via_relay:
            # RFC 8445 7.2.5.2.1: only symmetric answers validate a pair.
            self.stats.non_symmetric += 1
            return
        if attempt.answered:
            return
        attempt.answered = True
        if message.message_class is MessageClass.ERROR:
            error = message.get(ErrorCode)
            if error is not None and error.code == ROLE_CONFLICT:
                # RFC 8445 7.2.5.1: take the role opposite to the one we claimed; check again.
                if self._controlling == attempt.controlling:
                    self._switch_role(not attempt.controlling)
                pair.reset_checks(now)
            else:
                self._fail_pair(pair)
            self._tick(now)
            return
        pair.unanswered = 0
        pair.unanswered_since = None
        pair.last_success = now
        pair.state = PairState.SUCCEEDED
        pair.next_check = now + self.timing.keepalive
        if (attempt.use_candidate and attempt.controlling and self._controlling
                and (pair is self._nominating or pair is self._selected)):
            pair.nominated = True
            if pair is self._nominating:
                self._nominating = None
        self._tick(now)

    # ----------------------------------------------------------------------------------
    # Checks sent
    # ----------------------------------------------------------------------------------

    def _send_check(self, pair: _Pair, now: float) -> None:
        tid = self._rng.randbytes(12)
        use_candidate = self._controlling and (pair is self._nominating or pair is self._selected)
        role = (IceControlling(self.tie_breaker) if self._controlling
                else IceControlled(self.tie_breaker))
        attributes = [
            Username(self._username),
            Priority(compute_priority(CandidateKind.PRFLX, pair.local.local_preference,
                                      pair.local.component)),
            role,
        ]
        if use_candidate:
            attributes.append(UseCandidate())
        payload = Message(Method.BINDING, MessageClass.REQUEST, tid, attributes).encode(
            integrity_key=self.remote_credentials.key, fingerprint=True
        )
        timing = self.timing
        pair.attempts[tid] = _Attempt(now, use_candidate, self._controlling)
        self._tids[tid] = pair
        while len(pair.attempts) > 2 * timing.max_retransmits:
            oldest = next(iter(pair.attempts))
            del pair.attempts[oldest]
            self._tids.pop(oldest, None)
        pair.unanswered += 1
        if pair.unanswered_since is None:
            pair.unanswered_since = now
        pair.last_sent = now
        pair.next_check = (now + timing.rto(pair.unanswered)
                           if pair.unanswered < timing.max_retransmits else None)
        if pair.state is PairState.WAITING:
            pair.state = PairState.IN_PROGRESS
        self.stats.checks_sent += 1
        self._send(payload, pair.remote.address, pair.via_relay)

    def _respond_error(self, request: Message, source: Address, via_relay: Address | None,
                       code: int, reason: str) -> None:
        reply = Message(Method.BINDING, MessageClass.ERROR, request.transaction_id,
                        [ErrorCode(code, reason)])
        self.stats.responses_sent += 1
        self._send(reply.encode(integrity_key=self.local_credentials.key, fingerprint=True),
                   source, via_relay)

    def _send(self, payload: bytes, dest: Address, via_relay: Address | None) -> None:
        self._transmits.append(Transmit(payload, dest, via_relay))

    # ----------------------------------------------------------------------------------
    # Pairs and selection
    # ----------------------------------------------------------------------------------

    def _direct_local(self, ipv6: bool) -> Candidate | None:
        """The best host/server-reflexive candidate of a family: they share our socket."""
        best: Candidate | None = None
        for c in self._locals:
            if c.kind is not CandidateKind.RELAY and c.is_ipv6 == ipv6 and (
                best is None or c.priority > best.priority
            ):
                best = c
        return best

    def _form_pairs(self, now: float) -> None:
        for remote in self._remotes.values():
            paths: list[tuple[Address | None, Candidate]] = []
            direct = self._direct_local(remote.is_ipv6)
            if direct is not None:
                paths.append((None, direct))
            paths.extend(
                (c.address, c) for c in self._locals
                if c.kind is CandidateKind.RELAY and c.is_ipv6 == remote.is_ipv6
            )
            for via_relay, local in paths:
                key = (via_relay, remote.address)
                pair = self._pairs.get(key)
                priority = pair_priority(self._controlling, local.priority, remote.priority)
                if pair is None:
                    if len(self._pairs) < MAX_PAIRS:
                        self._pairs[key] = _Pair(local, remote, via_relay, priority, now)
                else:
                    pair.local, pair.remote, pair.priority = local, remote, priority

    def _remove_pair(self, key: tuple[Address | None, Address]) -> None:
        pair = self._pairs.pop(key)
        pair.state = PairState.FAILED
        for tid in pair.attempts:
            self._tids.pop(tid, None)
        if self._nominating is pair:
            self._nominating = None

    def _fail_pair(self, pair: _Pair) -> None:
        pair.state = PairState.FAILED
        pair.next_check = None
        pair.unanswered_since = None
        pair.nominated = False
        self.stats.pairs_failed += 1
        if self._nominating is pair:
            self._nominating = None

    def _switch_role(self, controlling: bool) -> None:
        if controlling == self._controlling:
            return
        self._controlling = controlling
        for pair in self._pairs.values():
            pair.priority = pair_priority(controlling, pair.local.priority, pair.remote.priority)
            pair.nominated = False
        self._nominating = None
        self._events.append(RoleChanged(controlling))

    def _tick(self, now: float) -> None:
        """Expire pairs, update selection, send the checks that are due."""
        if self._state is IceState.FAILED:
            return
        timeout = self.timing.timeout
        for pair in self._pairs.values():
            if (pair.state is not PairState.FAILED and pair.unanswered_since is not None
                    and now >= pair.unanswered_since + timeout):
                self._fail_pair(pair)
        if (self._auto_idle and not self._idle and self._state is IceState.CONNECTED
                and now >= self._last_traffic + IDLE_AFTER):
            self._idle = True
            self._reschedule()
        self._update(now)
        if self._state is IceState.FAILED:
            return
        due = [p for p in self._pairs.values()
               if p.state is not PairState.FAILED and p.next_check is not None
               and p.next_check <= now]
        for pair in sorted(due, key=lambda p: -p.priority):
            self._send_check(pair, now)

    def _reschedule(self) -> None:
        """Re-derive each pair's next check from the (changed) timing."""
        timing = self.timing
        for pair in self._pairs.values():
            if pair.state is PairState.FAILED or pair is self._nominating:
                continue
            if pair.unanswered:
                pair.next_check = (
                    pair.last_sent + timing.rto(pair.unanswered)
                    if pair.last_sent is not None and pair.unanswered < timing.max_retransmits
                    else None
                )
            elif pair.state is PairState.SUCCEEDED and pair.last_success is not None:
                pair.next_check = pair.last_success + timing.keepalive

    def _update(self, now: float) -> None:
        valid = [p for p in self._pairs.values() if p.state is PairState.SUCCEEDED]
        nominated = [p for p in valid if p.nominated]
        selected: _Pair | None
        if nominated:
            selected = max(nominated, key=lambda p: p.priority)
        elif self._selected is not None and valid:
            # Keep traffic flowing on a valid pair while a new nomination is under way.
            selected = max(valid, key=lambda p: p.priority)
        else:
            selected = None

        if self._controlling and valid:
            best = max(valid, key=lambda p: p.priority)
            if selected is None or not selected.nominated or best.priority > selected.priority:
                if self._nominating is not best:
                    self._nominating = best
                    best.next_check = now

        previous = self._selected
        self._selected = selected
        if selected is not previous:
            if selected is None:
                self._state = IceState.DISCONNECTED
                self._events.append(Disconnected())
            elif previous is None:
                self._state = IceState.CONNECTED
                self._last_traffic = max(self._last_traffic, now)
                self._events.append(Connected(selected.local, selected.remote))
            else:
                self._events.append(NominatedPairChanged(selected.local, selected.remote))
        if selected is None and self._pairs and all(
            p.state is PairState.FAILED for p in self._pairs.values()
        ):
            self._state = IceState.FAILED
            self._tids.clear()
            self._events.append(Failed())
        elif self._state is IceState.NEW and self._pairs:
            self._state = IceState.CHECKING


def _usable(candidate: Candidate) -> bool:
    return candidate.transport == "udp" and candidate.component == 1
