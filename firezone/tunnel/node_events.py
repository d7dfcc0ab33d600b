"""What a :class:`~firezone.tunnel.node.Node` tells its role, as plain values.

Roles (client, gateway) and ICE roles, the kinds of path a connection can take,
the events the node emits (candidates to signal through the portal, connection
and relay state) and its drop counters.  Kept apart from the node so the roles
can import them without the machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from firezone.wire.candidate import Candidate, CandidateKind

__all__ = [
    "Connected",
    "ConnectionFailed",
    "IceRole",
    "InvalidatedLocalCandidate",
    "NewLocalCandidate",
    "NoRelays",
    "NodeEvent",
    "NodeRole",
    "NodeStats",
    "PathChanged",
    "PathKind",
    "RelayFailed",
    "path_kind",
]


class NodeRole(StrEnum):
    CLIENT = "client"
    GATEWAY = "gateway"


class IceRole(StrEnum):
    """The client (initiator) is controlling, the gateway controlled (REFERENCE 2.5)."""

    CONTROLLING = "controlling"
    CONTROLLED = "controlled"


class PathKind(StrEnum):
    """How the nominated pair reaches the peer: its host address, a NAT binding
    (server- or peer-reflexive), or a relay on either side."""

    HOST = "host"
    SRFLX = "srflx"
    RELAY = "relay"


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewLocalCandidate:
    """Signal this candidate (SDP ``candidate:`` text) to the peer through the portal."""

    peer_id: str
    sdp: str


@dataclass(frozen=True, slots=True)
class InvalidatedLocalCandidate:
    """Tell the peer to stop using this candidate."""

    peer_id: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Connected:
    """ICE nominated a pair for the first time; WireGuard now runs over it."""

    peer_id: str
    path: PathKind
    local: Candidate
    remote: Candidate
    #: Our relay carrying the path (our local candidate is relayed), else None.
    relay_id: str | None


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The connection moved to another pair (or the kind of its pair became known)."""

    peer_id: str
    path: PathKind
    local: Candidate
    remote: Candidate
    relay_id: str | None


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """ICE failed or WireGuard gave up; the connection is gone (REFERENCE 5.4 failover)."""

    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RelayFailed:
    """A relay stopped answering or its allocation failed; connections moved off it."""

    relay_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class NoRelays:
    """The portal's relay list is empty: only direct paths are possible."""


NodeEvent = (NewLocalCandidate | InvalidatedLocalCandidate | Connected | PathChanged
             | ConnectionFailed | RelayFailed | NoRelays)


@dataclass(slots=True)
class NodeStats:
    """Datagrams and inputs the node dropped, by reason (never a crash, never a path)."""

    candidates_unparseable: int = 0
    candidates_unknown_connection: int = 0
    candidates_unusable: int = 0
    #: A connectivity check whose USERNAME names none of our connections.
    ice_unknown_username: int = 0
    #: Checks an agent claimed but rejected (counted by the agent, summed here).
    ice_bad_username: int = 0
    ice_bad_integrity: int = 0
    ice_bad_fingerprint: int = 0
    ice_malformed: int = 0
    ice_unknown_path: int = 0
    ice_non_symmetric: int = 0
    #: STUN responses and indications nobody asked for; undecodable STUN.
    stun_unmatched: int = 0
    stun_malformed: int = 0
    channel_data_unknown: int = 0
    #: WireGuard from an address that is no validated path of a nominated connection.
    wg_unknown_endpoint: int = 0
    #: WireGuard on one connection's path that belonged to another peer's key.
    wg_wrong_peer: int = 0
    packets_unknown_peer: int = 0
    packets_buffer_dropped: int = 0
    no_path: int = 0
    relay_not_ready: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def path_kind(local: Candidate, remote: Candidate) -> PathKind:
    """Relayed if either end is a relay; host if the peer's host address is reached
    directly; otherwise through a NAT binding (server- or peer-reflexive)."""
    if CandidateKind.RELAY in (local.kind, remote.kind):
        return PathKind.RELAY
    if remote.kind is CandidateKind.HOST:
        return PathKind.HOST
    return PathKind.SRFLX
