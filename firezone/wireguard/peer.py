"""One WireGuard peer: its sessions, staged packets and every protocol timer.

The rules are those of the WireGuard paper section 6 as implemented by
wireguard-go (``timers.go``, ``send.go``, ``receive.go``, ``noise-protocol.go``):

* keypairs rotate through previous/current/next; a responder's new keypair is
  "next" until the initiator's first transport packet confirms it;
* the initiator rekeys when its current keypair is REKEY_AFTER_TIME old on
  send, or REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT old on receive;
* unanswered initiations are retransmitted every REKEY_TIMEOUT plus 0-333 ms
  of jitter; after REKEY_ATTEMPT_TIME the attempt is abandoned, staged packets
  dropped and :class:`ConnectionExpired` emitted.  As in boringtun (whose
  fail-fast Firezone relies on), the attempt clock starts at the attempt's
  first initiation and new packets do not extend it;
* a keepalive goes out KEEPALIVE_TIMEOUT after data arrived if nothing was
  sent; a handshake starts KEEPALIVE_TIMEOUT + REKEY_TIMEOUT after data was
  sent if nothing arrived; all keys are erased after 3 * REJECT_AFTER_TIME
  without a new session.

Driving it: call :meth:`Peer.send` / :meth:`Peer.encrypt` for outgoing IP
packets, feed incoming datagrams to the owning
:class:`~firezone.wireguard.device.Device`, and call :meth:`Peer.on_timer`
whenever :meth:`Peer.next_deadline` has passed.  Re-read ``next_deadline()``
after every call: the fast paths (``encrypt``, ``Device.decrypt_transport``)
never return actions, they defer follow-up work (a rekey, flushing staged
packets, a :class:`HandshakeCompleted` event) by making the deadline "now".
"""

from __future__ import annotations

import os
from collections import deque

from cryptography.exceptions import InvalidTag

from firezone.wireguard.constants import TimerConfig
from firezone.wireguard.cookie import CookieGenerator
from firezone.wireguard.crypto import RandomBytes
from firezone.wireguard.events import (
    HANDSHAKE_TIMEOUT,
    KEYS_ZEROED,
    Action,
    Address,
    ConnectionExpired,
    HandshakeCompleted,
    SendDatagram,
)
from firezone.wireguard.indextable import IndexTable
from firezone.wireguard.keypair import Keypair
from firezone.wireguard.messages import CookieReply, HandshakeResponse
from firezone.wireguard.noise import (
    HandshakeError,
    NoiseHandshake,
    OpenedInitiation,
    StaticIdentity,
)
from firezone.wireguard.stats import DeviceStats, PeerStats

_ZEROS = bytes(16)
_NONCE_PAD = b"\x00\x00\x00\x00"
_DEFAULT_TIMERS = TimerConfig()


class Peer:
    """Protocol state for one remote public key."""

    def __init__(
        self,
        identity: StaticIdentity,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        timers: TimerConfig = _DEFAULT_TIMERS,
        persistent_keepalive: float | None = None,
        mtu: int | None = None,
        index_table: IndexTable | None = None,
        device_stats: DeviceStats | None = None,
        rand_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.public_key = public_key
        self.timers = timers
        self.persistent_keepalive = persistent_keepalive or 0.0
        self.mtu = mtu or 0
        self.stats = PeerStats()
        self.handshake = NoiseHandshake(identity, public_key, preshared_key, rand_bytes)
        self._cookies = CookieGenerator(public_key)
        self._index = index_table if index_table is not None else IndexTable(rand_bytes)
        self._device_stats = device_stats if device_stats is not None else DeviceStats()
        self._rand_bytes = rand_bytes

        self._current: Keypair | None = None
        self._previous: Keypair | None = None
        self._next: Keypair | None = None
        self._staged: deque[bytes] = deque(maxlen=timers.staged_packets_limit)

        # hot-path copies of the timer configuration
        self._reject_after_time = timers.reject_after_time
        self._reject_after_messages = timers.reject_after_messages
        self._rekey_after_time = timers.rekey_after_time
        self._rekey_after_messages = timers.rekey_after_messages
        self._keepalive_timeout = timers.keepalive_timeout
        self._new_handshake_delay = timers.keepalive_timeout + timers.rekey_timeout
        self._last_minute_age = (
            timers.reject_after_time - timers.keepalive_timeout - timers.rekey_timeout
        )

        # timer deadlines (absolute ``now`` values), None when not armed
        self._t_retransmit: float | None = None
        self._t_send_keepalive: float | None = None
        self._t_new_handshake: float | None = None
        self._t_zero_keys: float | None = None
        self._t_persistent: float | None = None
        self._need_another_keepalive = False
        self._sent_last_minute_handshake = False
        self._attempt_started: float | None = None
        self._last_sent_handshake = float("-inf")

        # work deferred by the fast paths, released by drain()/on_timer()
        self._due_at: float | None = None
        self._handshake_wanted = False
        self._flush_wanted = False
        self._pending: list[Action] = []

    # ------------------------------------------------------------------ state

    @property
    def current(self) -> Keypair | None:
        return self._current

    @property
    def previous(self) -> Keypair | None:
        return self._previous

    @property
    def next(self) -> Keypair | None:
        return self._next

    @property
    def staged_count(self) -> int:
        return len(self._staged)

    @property
    def handshake_in_progress(self) -> bool:
        return self._attempt_started is not None

    def has_session(self, now: float) -> bool:
        """Can a packet be encrypted right now without a handshake?"""
        return self._usable(self._current, now)

    def _usable(self, kp: Keypair | None, now: float) -> bool:
        return (
            kp is not None
            and kp.send_counter < self._reject_after_messages
            and now - kp.created < self._reject_after_time
        )

    def _jitter(self) -> float:
        fraction = int.from_bytes(self._rand_bytes(4), "little") / 4294967296.0
        return fraction * self.timers.rekey_timeout_jitter_max

    def _defer(self, now: float) -> None:
        if self._due_at is None or now < self._due_at:
            self._due_at = now

    # --------------------------------------------------------- outgoing path

    def _pad(self, packet: bytes) -> bytes:
        n = len(packet)
        mtu = self.mtu
        if not mtu:
            pad = -n & 15
        else:
            last = n % mtu if n > mtu else n
            pad = min((last + 15) & ~15, mtu) - last
        return packet + _ZEROS[:pad] if pad else packet

    def encrypt(self, packet: bytes, now: float) -> bytes | None:
        """Fast path: the transport datagram for ``packet``, or None if there is no
        usable session (or packets are already staged) - then use :meth:`send`.

        Never returns actions; a rekey it makes due shows up in :meth:`next_deadline`.
        """
        kp = self._current
        if kp is None or self._staged or now - kp.created >= self._reject_after_time:
            return None
        counter = kp.send_counter
        if counter >= self._reject_after_messages:
            return None
        n = len(packet)
        if n & 15 or self.mtu:
            packet = self._pad(packet)
        data = kp.seal(packet)
        if self.persistent_keepalive:
            self._t_persistent = now + self.persistent_keepalive
        self._t_send_keepalive = None
        if n and self._t_new_handshake is None:
            self._t_new_handshake = now + self._new_handshake_delay + self._jitter()
        if counter + 1 > self._rekey_after_messages or (
            kp.is_initiator and now - kp.created > self._rekey_after_time
        ):
            self._handshake_wanted = True
            self._defer(now)
        stats = self.stats
        stats.tx_bytes += len(data)
        stats.tx_packets += 1
        return data

    def send(self, packet: bytes, now: float, wall_time: float) -> list[Action]:
        """General path: send ``packet`` now, or stage it and start a handshake."""
        out: list[Action] = []
        if len(self._staged) == self._staged.maxlen:
            self.stats.staged_dropped += 1
        self._staged.append(packet)
        self._send_staged(now, wall_time, out)
        self._drain(now, wall_time, out)
        return out

    def send_keepalive(self, now: float, wall_time: float) -> list[Action]:
        """Send an empty transport message (or a handshake if there is no session)."""
        out: list[Action] = []
        self._send_keepalive(now, wall_time, out)
        self._drain(now, wall_time, out)
        return out

    def initiate_handshake(self, now: float, wall_time: float) -> list[Action]:
        """Start a handshake now (at most one initiation per REKEY_TIMEOUT)."""
        out: list[Action] = []
        self._send_initiation(now, wall_time, out, retry=False)
        return out

    def _send_keepalive(self, now: float, wall_time: float, out: list[Action]) -> None:
        if not self._staged:
            self._staged.append(b"")
        self._send_staged(now, wall_time, out)

    def _send_staged(self, now: float, wall_time: float, out: list[Action]) -> None:
        if not self._staged:
            return
        kp = self._current
        if kp is None or not self._usable(kp, now):
            self._send_initiation(now, wall_time, out, retry=False)
            return
        data_sent = False
        staged = self._staged
        stats = self.stats
        while staged:
            if kp.send_counter >= self._reject_after_messages:
                self._send_initiation(now, wall_time, out, retry=False)
                break
            packet = staged.popleft()
            if packet:
                data_sent = True
            data = kp.seal(self._pad(packet))
            stats.tx_bytes += len(data)
            stats.tx_packets += 1
            out.append(SendDatagram(data))
        self._any_authenticated_packet_traversal(now)
        self._t_send_keepalive = None
        if data_sent and self._t_new_handshake is None:
            self._t_new_handshake = now + self._new_handshake_delay + self._jitter()
        if kp.send_counter > self._rekey_after_messages or (
            kp.is_initiator and now - kp.created > self._rekey_after_time
        ):
            self._send_initiation(now, wall_time, out, retry=False)

    def _send_initiation(
        self, now: float, wall_time: float, out: list[Action], *, retry: bool
    ) -> None:
        started = self._attempt_started
        if started is not None and now - started >= self.timers.rekey_attempt_time:
            self._give_up(now, out)
            return
        if now - self._last_sent_handshake < self.timers.rekey_timeout:
            if retry:
                # Keep the attempt alive (wireguard-go would silently stop retrying).
                self._t_retransmit = (
                    self._last_sent_handshake + self.timers.rekey_timeout + self._jitter()
                )
            return
        self._index.remove(self.handshake.local_index)
        index = self._index.new_index(self)
        try:
            msg = self.handshake.create_initiation(index, wall_time)
        except HandshakeError:
            self._index.remove(index)
            self._device_stats.bad_key += 1
            return
        self._last_sent_handshake = now
        data = self._cookies.add_macs(msg.encode(), now)
        self._any_authenticated_packet_traversal(now)
        self._t_send_keepalive = None
        out.append(SendDatagram(data))
        self.stats.initiations_sent += 1
        if self._attempt_started is None:
            self._attempt_started = now
        self._t_retransmit = now + self.timers.rekey_timeout + self._jitter()

    # --------------------------------------------------------- incoming path

    def decrypt_with(self, kp: Keypair, datagram: bytes, counter: int, now: float) -> bytes | None:
        """Fast path (called by the device): the IP packet inside ``datagram``, b"" for a
        keepalive, or None if it was dropped (reason counted in the device stats)."""
        dstats = self._device_stats
        if now - kp.created > self._reject_after_time:
            dstats.expired_keypair += 1
            return None
        try:
            plaintext = kp.receive_aead.decrypt(_NONCE_PAD + datagram[8:16], datagram[16:], None)
        except InvalidTag:
            dstats.decrypt_failed += 1
            return None
        if not kp.replay.accept(counter):
            dstats.replay += 1
            return None
        dstats.transport_received += 1
        if kp is self._next:
            self._confirm_next(now)
        stats = self.stats
        stats.rx_bytes += len(datagram)
        stats.rx_packets += 1
        if not self._sent_last_minute_handshake:
            cur = self._current
            if cur is not None and cur.is_initiator and now - cur.created > self._last_minute_age:
                self._sent_last_minute_handshake = True
                self._handshake_wanted = True
                self._defer(now)
        if self.persistent_keepalive:
            self._t_persistent = now + self.persistent_keepalive
        self._t_new_handshake = None
        if not plaintext:
            return plaintext
        if self._t_send_keepalive is None:
            self._t_send_keepalive = now + self._keepalive_timeout
        else:
            self._need_another_keepalive = True
        n = len(plaintext)
        if plaintext[0] == 0x45 and n >= 20:  # IPv4 without options: the common case
            length = (plaintext[2] << 8) | plaintext[3]
            if length == n:
                return plaintext
            if 20 <= length < n:
                return plaintext[:length]
        return _trim_ip_packet(plaintext, dstats)

    def _confirm_next(self, now: float) -> None:
        self._index.remove(self._previous.local_index if self._previous else None)
        self._previous = self._current
        self._current = self._next
        self._next = None
        self._handshake_complete(now)
        self._pending.append(HandshakeCompleted(is_initiator=False))
        self._flush_wanted = True
        self._defer(now)

    def handle_initiation(
        self, opened: OpenedInitiation, source: Address | None, now: float, wall_time: float
    ) -> list[Action]:
        """Answer a decrypted initiation from this peer (called by the device).

        Raises :class:`HandshakeError` for stale timestamps, floods or bad crypto.
        """
        self.handshake.consume_initiation(opened, now)
        self._any_authenticated_packet_traversal(now)
        self._t_new_handshake = None
        self._last_sent_handshake = now
        self._index.remove(self.handshake.local_index)
        index = self._index.new_index(self)
        try:
            response = self.handshake.create_response(index)
        except HandshakeError:
            self._index.remove(index)
            raise
        data = self._cookies.add_macs(response.encode(), now)
        self._begin_session(now)
        self._any_authenticated_packet_traversal(now)
        self._t_send_keepalive = None
        out: list[Action] = [SendDatagram(data, source)]
        self._drain(now, wall_time, out)
        return out

    def handle_response(self, msg: HandshakeResponse, now: float, wall_time: float) -> list[Action]:
        """Complete our initiation (called by the device); raises :class:`HandshakeError`."""
        self.handshake.consume_response(msg)
        self._any_authenticated_packet_traversal(now)
        self._t_new_handshake = None
        self._begin_session(now)
        self._handshake_complete(now)
        out: list[Action] = [HandshakeCompleted(is_initiator=True)]
        self._send_keepalive(now, wall_time, out)
        self._drain(now, wall_time, out)
        return out

    def handle_cookie_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie from a reply to our last handshake message; False if bogus."""
        return self._cookies.consume_reply(reply, now)

    def _begin_session(self, now: float) -> None:
        keys = self.handshake.derive_keys()
        kp = Keypair(keys, now, self, self._reject_after_messages)
        self._index.promote(kp)
        previous, nxt, current = self._previous, self._next, self._current
        if keys.is_initiator:
            if nxt is not None:
                self._next = None
                self._previous = nxt
                self._index.remove(current.local_index if current else None)
            else:
                self._previous = current
            self._index.remove(previous.local_index if previous else None)
            self._current = kp
        else:
            self._next = kp
            self._index.remove(nxt.local_index if nxt else None)
            self._previous = None
            self._index.remove(previous.local_index if previous else None)
        self._t_zero_keys = now + 3 * self._reject_after_time

    def _handshake_complete(self, now: float) -> None:
        self._t_retransmit = None
        self._attempt_started = None
        self._sent_last_minute_handshake = False
        self.stats.last_handshake_at = now
        self.stats.handshakes_completed += 1

    def _any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive:
            self._t_persistent = now + self.persistent_keepalive

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called (may be in the past), or None."""
        best = self._due_at
        for t in (
            self._t_retransmit,
            self._t_send_keepalive,
            self._t_new_handshake,
            self._t_zero_keys,
            self._t_persistent,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def drain(self, now: float, wall_time: float) -> list[Action]:
        """Only the work the fast paths deferred (see the module docstring)."""
        out: list[Action] = []
        self._drain(now, wall_time, out)
        return out

    def _drain(self, now: float, wall_time: float, out: list[Action]) -> None:
        self._due_at = None
        if self._pending:
            out.extend(self._pending)
            self._pending.clear()
        if self._handshake_wanted:
            self._handshake_wanted = False
            self._send_initiation(now, wall_time, out, retry=False)
        if self._flush_wanted:
            self._flush_wanted = False
            self._send_staged(now, wall_time, out)

    def on_timer(self, now: float, wall_time: float) -> list[Action]:
        """Run deferred work and every timer whose deadline is at or before ``now``."""
        out: list[Action] = []
        self._drain(now, wall_time, out)
        expired = sorted(
            (t, name)
            for name, t in (
                ("retransmit", self._t_retransmit),
                ("zero_keys", self._t_zero_keys),
                ("send_keepalive", self._t_send_keepalive),
                ("new_handshake", self._t_new_handshake),
                ("persistent", self._t_persistent),
            )
            if t is not None and t <= now
        )
        for _, name in expired:
            deadline = getattr(self, "_t_" + name)
            if deadline is None or deadline > now:
                continue  # an earlier handler re-armed or cancelled it
            setattr(self, "_t_" + name, None)
            getattr(self, "_expired_" + name)(now, wall_time, out)
        self._drain(now, wall_time, out)
        return out

    def _give_up(self, now: float, out: list[Action]) -> None:
        """REKEY_ATTEMPT_TIME passed without an answer: drop staged packets, stop retrying."""
        self._attempt_started = None
        self._t_retransmit = None
        self._t_send_keepalive = None
        self.stats.staged_dropped += len(self._staged)
        self._staged.clear()
        if self._t_zero_keys is None:
            self._t_zero_keys = now + 3 * self._reject_after_time
        out.append(ConnectionExpired(HANDSHAKE_TIMEOUT))

    def _expired_retransmit(self, now: float, wall_time: float, out: list[Action]) -> None:
        self._send_initiation(now, wall_time, out, retry=True)

    def _expired_send_keepalive(self, now: float, wall_time: float, out: list[Action]) -> None:
        self._send_keepalive(now, wall_time, out)
        if self._need_another_keepalive:
            self._need_another_keepalive = False
            self._t_send_keepalive = now + self._keepalive_timeout

    def _expired_new_handshake(self, now: float, wall_time: float, out: list[Action]) -> None:
        self._send_initiation(now, wall_time, out, retry=False)

    def _expired_zero_keys(self, now: float, wall_time: float, out: list[Action]) -> None:
        self.zero_and_flush()
        out.append(ConnectionExpired(KEYS_ZEROED))

    def _expired_persistent(self, now: float, wall_time: float, out: list[Action]) -> None:
        if self.persistent_keepalive:
            self._send_keepalive(now, wall_time, out)

    # -------------------------------------------------------------- lifecycle

    def zero_and_flush(self) -> None:
        """Erase all keypairs and handshake state and drop staged packets."""
        for kp in (self._previous, self._current, self._next):
            if kp is not None:
                self._index.remove(kp.local_index)
        self._previous = self._current = self._next = None
        self._index.remove(self.handshake.local_index)
        self.handshake.clear()
        self.stats.staged_dropped += len(self._staged)
        self._staged.clear()

    def close(self) -> None:
        """Zero everything and disarm all timers (the peer is being removed)."""
        self.zero_and_flush()
        self._t_retransmit = self._t_send_keepalive = self._t_new_handshake = None
        self._t_zero_keys = self._t_persistent = None
        self._attempt_started = None
        self._due_at = None
        self._handshake_wanted = self._flush_wanted = False
        self._pending.clear()


def _trim_ip_packet(plaintext: bytes, dstats: DeviceStats) -> bytes | None:
    """Strip transport padding using the IP header's length; None if not an IP packet."""
    n = len(plaintext)
    version = plaintext[0] >> 4
    if version == 4:
        if n < 20:
            dstats.invalid_packet += 1
            return None
        length = (plaintext[2] << 8) | plaintext[3]
        if length > n or length < 20:
            dstats.invalid_packet += 1
            return None
    elif version == 6:
        if n < 40:
            dstats.invalid_packet += 1
            return None
        length = 40 + ((plaintext[4] << 8) | plaintext[5])
        if length > n:
            dstats.invalid_packet += 1
            return None
    else:
        dstats.invalid_packet += 1
        return None
    return plaintext if length == n else plaintext[:length]
