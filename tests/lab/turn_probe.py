"""Lab helper: our sans-IO TURN client on a plain UDP socket against any TURN server.

Allocates, binds a channel to ``--peer`` (an echo server such as coturn's
``turnutils_peer``), sends ``--count`` ChannelData messages through the relay
and counts the echoes that come back as ChannelData.  Prints one JSON line:
``{"ok", "relayed", "srflx", "channel", "sent", "echoed", "error"}``.  Bounded
by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firezone.tunnel.turn_client import (  # noqa: E402
    AllocationFailed,
    CandidateDiscovered,
    ChannelBound,
    TurnClient,
)
from firezone.wire.candidate import CandidateKind  # noqa: E402


def address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", type=address, required=True)
    parser.add_argument("--peer", type=address, required=True)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--no-dual-stack", action="store_true")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, 0))
    sock.settimeout(0.02)
    now = time.monotonic()
    turn = TurnClient([args.server], args.username, args.password, now,
                      rng=random.SystemRandom(), dual_stack=not args.no_dual_stack)
    result: dict[str, object] = {"ok": False, "relayed": None, "srflx": None, "channel": None,
                                 "sent": 0, "echoed": 0, "error": None}
    expected = {f"echo-{i}".encode() for i in range(args.count)}
    echoed: set[bytes] = set()
    sent = 0
    bind_asked = False
    deadline = now + args.timeout
    while time.monotonic() < deadline and not result["error"]:
        now = time.monotonic()
        while (transmit := turn.poll_transmit()) is not None:
            sock.sendto(transmit.payload, transmit.dest)
        while (event := turn.poll_event()) is not None:
            if isinstance(event, CandidateDiscovered):
                kind = "relayed" if event.candidate.kind is CandidateKind.RELAY else "srflx"
                result[kind] = f"{event.candidate.ip}:{event.candidate.port}"
            elif isinstance(event, ChannelBound):
                result["channel"] = event.number
            elif isinstance(event, AllocationFailed):
                result["error"] = f"{event.reason}: {event.detail}"
        if turn.has_allocation and not bind_asked:
            turn.bind_channel(args.peer, now)
            bind_asked = True
            continue
        if result["channel"] is not None and sent < args.count:
            wrapped = turn.encode_to_peer(args.peer, f"echo-{sent}".encode(), now)
            if wrapped is not None:
                sock.sendto(wrapped[0], wrapped[1])
                sent += 1
        if sent and echoed == expected:
            break
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            data = b""
        now = time.monotonic()
        if data:
            source = (source[0], source[1])
            if data[0] < 4:
                turn.handle_input(data, source, now)
            elif 64 <= data[0] <= 79:
                relayed = turn.decode_from_relay(data, source, now)
                if relayed is not None and relayed.peer == args.peer:
                    echoed.add(relayed.payload)
        timeout = turn.poll_timeout()
        if timeout is not None and timeout <= now:
            turn.handle_timeout(now)
    result["sent"] = sent
    result["echoed"] = len(echoed & expected)
    result["ok"] = result["error"] is None and sent == args.count and echoed == expected
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
