"""What the WireGuard machines ask their driver to do, as plain values.

Peers and the device never touch sockets or TUN devices; they return lists
of these actions and the Twisted adapter carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A UDP address as Twisted reports it: (host, port), or (host, port, flowinfo, scope) for IPv6.
Address = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` over UDP.

    ``destination`` None means "to the peer's current endpoint" (the driver owns
    endpoints and roaming); handshake responses and cookie replies name the
    source of the message they answer.
    """

    data: bytes
    destination: Address | None = None


@dataclass(frozen=True, slots=True)
class WriteToTun:
    """Deliver a decrypted IP packet (padding already removed) to the TUN device."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session is usable: after the response (initiator) or on key confirmation
    by the first transport packet (responder)."""

    is_initiator: bool


#: Reasons carried by :class:`ConnectionExpired`.
HANDSHAKE_TIMEOUT = "handshake_timeout"
KEYS_ZEROED = "keys_zeroed"


@dataclass(frozen=True, slots=True)
class ConnectionExpired:
    """The peer has no working session and gave up: a node's cue to fail over.

    ``handshake_timeout``: initiations went unanswered for REKEY_ATTEMPT_TIME (staged
    packets were dropped).  ``keys_zeroed``: no new session for 3 * REJECT_AFTER_TIME,
    so all key material was erased.
    """

    reason: str


Action = SendDatagram | WriteToTun | HandshakeCompleted | ConnectionExpired
