"""Set up one TURN channel for the relay benchmark, then keep it alive.

Run inside the load generator's namespace.  It binds ``--bind`` (the address
and port trafgen will later forge as its source, so the relay sees the same
5-tuple), does Allocate with the 401 / NONCE retry (REALM taken from the 401,
as a real client does), ChannelBinds ``--channel`` to ``--peer``, prints one
JSON line and then sleeps for ``--lifetime`` seconds: the allocation lives as
long as this process holds the socket.  The allocation's own lifetime (600 s
by default) outlasts any benchmark run, so no Refresh is sent.

``--sink`` also binds the peer address with the smallest receive queue and
never reads from it, so relayed datagrams meet an open socket (counted by
nftables at the input hook and by the namespace's Udp InErrors as they
overflow it) instead of provoking ICMP port-unreachable replies.  ``--send N`` sends N ChannelData
messages from the client socket after the bind, for tests without trafgen.

Uses only the project's STUN codec and blocking sockets; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firezone.credentials import long_term_key
from firezone.wire.channeldata import encode_channel_data
from firezone.wire.stun import (
    Attribute,
    ChannelNumber,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    StunDecodeError,
    Username,
    XorPeerAddress,
    XorRelayedAddress,
)

UDP = 17
#: Retransmission schedule of one transaction (RFC 8489 6.2.1 style, shortened for a lab).
RTO = 0.25
ATTEMPTS = 7


class SetupError(RuntimeError):
    """The relay did not give us an allocation or a channel."""


def address(text: str) -> tuple[str, int]:
    ip, _, port = text.rpartition(":")
    return ip, int(port)


def payload_for(index: int, size: int) -> bytes:
    """Test payload: a 4-byte sequence number, then a fixed byte pattern."""
    head = index.to_bytes(4, "big")
    return head + bytes(i & 0xFF for i in range(size - 4)) if size >= 4 else head[:size]


class TurnClient:
    """Just enough of a TURN client over one blocking UDP socket."""

    def __init__(self, sock: socket.socket, server: tuple[str, int]) -> None:
        self.sock = sock
        self.server = server
        self.key: bytes | None = None
        self.auth: list[Attribute] = []

    def transact(self, method: Method, attributes: list[Attribute]) -> Message:
        """Send a request with retransmissions; the matching response (success or error)."""
        request = Message(method, MessageClass.REQUEST, os.urandom(12),
                          [*attributes, *self.auth])
        data = request.encode(integrity_key=self.key, fingerprint=True)
        for attempt in range(ATTEMPTS):
            self.sock.sendto(data, self.server)
            deadline = time.monotonic() + RTO * (2 ** min(attempt, 3))
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    raw, sender = self.sock.recvfrom(65535)
                except TimeoutError:
                    break
                if sender != self.server:
                    continue
                try:
                    response = Message.decode(raw)
                except StunDecodeError:
                    continue
                if response.transaction_id == request.transaction_id:
                    return response
        raise SetupError(f"no answer to {method.name} from {self.server[0]}:{self.server[1]}")

    def authenticated(self, method: Method, attributes: list[Attribute], username: str,
                      password: str) -> Message:
        """A request that answers 401 / 438 by (re)authenticating with REALM and NONCE."""
        response = self.transact(method, attributes)
        for _ in range(3):
            error = response.get(ErrorCode)
            if response.message_class is not MessageClass.ERROR or error is None:
                return response
            if error.code not in (401, 438):
                break
            realm, nonce = response.get(Realm), response.get(Nonce)
            if nonce is None or (realm is None and not self.auth):
                break
            realm_value = realm.value if realm is not None else self._realm()
            self.key = long_term_key(username, realm_value, password)
            self.auth = [Username(username), Realm(realm_value), Nonce(nonce.value)]
            response = self.transact(method, attributes)
        error = response.get(ErrorCode)
        if response.message_class is MessageClass.SUCCESS:
            return response
        what = f"{error.code} {error.reason}" if error else response.message_class.name
        raise SetupError(f"{method.name} refused: {what}")

    def _realm(self) -> str:
        for attribute in self.auth:
            if isinstance(attribute, Realm):
                return attribute.value
        raise SetupError("no REALM known")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    client_addr, server, peer = address(args.bind), address(args.server), address(args.peer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(client_addr)
    args.client_socket = sock  # kept open for the process lifetime
    if args.sink:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The smallest queue the kernel allows: what it holds unread is missing from the
        # namespace's Udp counters (InDatagrams counts reads, InErrors the overflow).
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        sink.bind(peer)
        args.sink_socket = sink
    turn = TurnClient(sock, server)
    allocated = turn.authenticated(Method.ALLOCATE, [RequestedTransport(UDP)],
                                   args.username, args.password)
    relayed = allocated.get(XorRelayedAddress)
    if relayed is None:
        raise SetupError("Allocate success without XOR-RELAYED-ADDRESS")
    turn.authenticated(Method.CHANNEL_BIND,
                       [ChannelNumber(args.channel), XorPeerAddress(peer[0], peer[1])],
                       args.username, args.password)
    for index in range(args.send):
        sock.sendto(encode_channel_data(args.channel, payload_for(index, args.size)), server)
        time.sleep(args.send_interval)
    return {
        "ok": True,
        "client": f"{client_addr[0]}:{client_addr[1]}",
        "relayed": f"{relayed.ip}:{relayed.port}",
        "peer": f"{peer[0]}:{peer[1]}",
        "channel": args.channel,
        "realm": turn._realm(),
        "sent": args.send,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="relay ip:port")
    parser.add_argument("--bind", required=True, help="client ip:port")
    parser.add_argument("--peer", required=True, help="peer ip:port to bind the channel to")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--channel", type=lambda v: int(v, 0), default=0x4000)
    parser.add_argument("--lifetime", type=float, default=60.0,
                        help="seconds to keep the allocation after setup (at most 3600)")
    parser.add_argument("--sink", action="store_true",
                        help="also bind the peer address and never read it")
    parser.add_argument("--send", type=int, default=0, help="ChannelData messages to send")
    parser.add_argument("--size", type=int, default=1200, help="payload bytes per message")
    parser.add_argument("--send-interval", type=float, default=0.001)
    args = parser.parse_args()
    try:
        result = setup(args)
    except (SetupError, OSError) as e:
        print(json.dumps({"ok": False, "error": str(e)}), flush=True)
        raise SystemExit(1) from None
    print(json.dumps(result), flush=True)
    time.sleep(max(0.0, min(args.lifetime, 3600.0)))


if __name__ == "__main__":
    main()
