"""One direction-pair of transport keys, built for the per-packet hot path.

The ChaCha20-Poly1305 objects are made once per keypair (making one per packet
is slow), and the transport header prefix is prebuilt.  Python cannot reliably
wipe memory, so "zeroing" a keypair means dropping every reference to it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from firezone.wireguard.constants import REJECT_AFTER_MESSAGES
from firezone.wireguard.messages import MESSAGE_TRANSPORT
from firezone.wireguard.noise import SessionKeys
from firezone.wireguard.replay import ReplayWindow

if TYPE_CHECKING:
    from firezone.wireguard.peer import Peer

_COUNTER = struct.Struct("<Q")
_PREFIX = struct.Struct("<II")
_NONCE_PAD = b"\x00\x00\x00\x00"


class Keypair:
    """Sending/receiving AEADs, counters and indices of one session."""

    __slots__ = (
        "_prefix",
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "receive_aead",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
    )

    def __init__(
        self,
        keys: SessionKeys,
        created: float,
        peer: Peer | None = None,
        reject_after_messages: int = REJECT_AFTER_MESSAGES,
    ) -> None:
        self.send_aead = ChaCha20Poly1305(keys.sending_key)
        self.receive_aead = ChaCha20Poly1305(keys.receiving_key)
        self.send_counter = 0
        self.replay = ReplayWindow(reject_after_messages)
        self.is_initiator = keys.is_initiator
        self.created = created
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.peer = peer
        self._prefix = _PREFIX.pack(MESSAGE_TRANSPORT, keys.remote_index)

    def seal(self, padded: bytes) -> bytes:
        """A transport message for ``padded`` under the next counter (no limit checks)."""
        counter = self.send_counter
        self.send_counter = counter + 1
        c8 = _COUNTER.pack(counter)
        return self._prefix + c8 + self.send_aead.encrypt(_NONCE_PAD + c8, padded, None)

    def open(self, datagram: bytes) -> bytes:
        """Authenticate and decrypt a transport message addressed to this keypair.

        Raises ``cryptography.exceptions.InvalidTag``; the replay window is the
        caller's business (it must only see authenticated counters).
        """
        return self.receive_aead.decrypt(_NONCE_PAD + datagram[8:16], datagram[16:], None)
