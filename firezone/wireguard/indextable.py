"""Receiver indices: the 32-bit numbers under which peers address us.

A handshake in progress owns an index until it yields a keypair, which then
takes the index over (wireguard-go ``indextable.go``).  Indices come from an
injected random source so tests are reproducible.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from firezone.wireguard.crypto import RandomBytes

if TYPE_CHECKING:
    from firezone.wireguard.keypair import Keypair
    from firezone.wireguard.peer import Peer


class IndexTable:
    """Maps local indices to the handshake owner (a peer) or to a keypair."""

    def __init__(self, rand_bytes: RandomBytes = os.urandom) -> None:
        self._rand_bytes = rand_bytes
        self.handshakes: dict[int, Peer] = {}
        self.keypairs: dict[int, Keypair] = {}

    def __len__(self) -> int:
        return len(self.handshakes) + len(self.keypairs)

    def new_index(self, peer: Peer) -> int:
        """Allocate a fresh random index for ``peer``'s next handshake message."""
        while True:
            index = int.from_bytes(self._rand_bytes(4), "little")
            if index not in self.handshakes and index not in self.keypairs:
                self.handshakes[index] = peer
                return index

    def promote(self, keypair: Keypair) -> None:
        """Hand the handshake's index over to the keypair it produced."""
        self.handshakes.pop(keypair.local_index, None)
        self.keypairs[keypair.local_index] = keypair

    def remove(self, index: int | None) -> None:
        if index is None:
            return
        self.handshakes.pop(index, None)
        self.keypairs.pop(index, None)

    def peer_for(self, index: int) -> Peer | None:
        """Whoever owns ``index`` (handshake or keypair), for cookie replies."""
        peer = self.handshakes.get(index)
        if peer is not None:
            return peer
        keypair = self.keypairs.get(index)
        return keypair.peer if keypair is not None else None
