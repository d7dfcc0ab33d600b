"""WireGuard as a pure, sans-IO machine (no sockets, no TUN, no clock reads).

Start with :class:`~firezone.wireguard.device.Device`: it holds our static key
and the peers, routes incoming datagrams and answers handshakes.  Each
:class:`~firezone.wireguard.peer.Peer` encrypts outgoing packets and runs the
protocol timers.  Everything returns :mod:`~firezone.wireguard.events` actions.
"""

from firezone.wireguard.constants import FIREZONE_ICE_TIMERS, TimerConfig
from firezone.wireguard.crypto import (
    generate_private_key,
    key_from_base64,
    key_to_base64,
    public_key,
)
from firezone.wireguard.device import Device, DeviceConfig
from firezone.wireguard.events import (
    Action,
    ConnectionExpired,
    HandshakeCompleted,
    SendDatagram,
    WriteToTun,
)
from firezone.wireguard.messages import WireGuardDecodeError, message_type
from firezone.wireguard.peer import Peer

__all__ = [
    "FIREZONE_ICE_TIMERS",
    "Action",
    "ConnectionExpired",
    "Device",
    "DeviceConfig",
    "HandshakeCompleted",
    "Peer",
    "SendDatagram",
    "TimerConfig",
    "WireGuardDecodeError",
    "WriteToTun",
    "generate_private_key",
    "key_from_base64",
    "key_to_base64",
    "message_type",
    "public_key",
]
