"""Side effects the sans-IO TURN server asks its adapter to perform.

Addresses are ``(ip, port)`` tuples exactly as Twisted's ``datagramReceived``
reports them (``inet_ntop`` text form).  Client-bound traffic always leaves from
the listen port; only :class:`SendFromAllocation` leaves from an allocation port.

Channel-binding commands mirror the XDP maps: applying them in order (create =
insert or overwrite, delete = remove) to a pair of maps keyed
``(client, channel)`` and ``(allocation_port, peer)`` yields exactly the set of
currently bound channels.  Every create is eventually followed by one delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from firezone.wire.stun import AddressFamily

__all__ = [
    "Address",
    "Command",
    "CreateAllocation",
    "CreateChannelBinding",
    "DeleteChannelBinding",
    "FreeAllocation",
    "SendFromAllocation",
    "SendMessage",
]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send ``payload`` from the listen port (3478) to a client."""

    payload: bytes
    recipient: Address


@dataclass(frozen=True, slots=True)
class SendFromAllocation:
    """Send ``payload`` from allocation ``port`` (the socket of the peer's family) to a peer."""

    payload: bytes
    port: int
    recipient: Address


@dataclass(frozen=True, slots=True)
class CreateAllocation:
    """Bind a UDP socket on ``port`` for ``family``; feed its datagrams to handle_peer_traffic.

    If binding fails, call ``TurnServer.handle_allocation_failed(port)``.
    """

    port: int
    family: AddressFamily


@dataclass(frozen=True, slots=True)
class FreeAllocation:
    """Close the ``family`` socket of allocation ``port``."""

    port: int
    family: AddressFamily


@dataclass(frozen=True, slots=True)
class CreateChannelBinding:
    """A channel became bound (or was refreshed): relay between client/channel and peer."""

    client: Address
    channel: int
    peer: Address
    allocation_port: int


@dataclass(frozen=True, slots=True)
class DeleteChannelBinding:
    """A bound channel expired or its allocation went away: stop relaying."""

    client: Address
    channel: int
    peer: Address
    allocation_port: int


Command = (
    SendMessage
    | SendFromAllocation
    | CreateAllocation
    | FreeAllocation
    | CreateChannelBinding
    | DeleteChannelBinding
)
