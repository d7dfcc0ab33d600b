"""Lab helper: a flood of valid-looking WireGuard handshake initiations (valid MAC1).

Each comes from a fresh random static key the target does not know, so only the
cookie mechanism and the rate limiter stand between the flood and the target's
handshake work.  Prints how many cookie replies came back.
"""

import argparse
import base64
import os
import socket
import time

from firezone.wireguard.device import Device
from firezone.wireguard.events import SendDatagram


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    target = base64.b64decode(args.public_key)
    initiations = []
    now = time.time()
    for _ in range(args.count):
        device = Device(os.urandom(32))
        peer = device.add_peer(target)
        for action in peer.initiate_handshake(now, now):
            if isinstance(action, SendDatagram):
                initiations.append(action.data)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    for data in initiations:
        sock.sendto(data, (host, int(port)))
    cookies = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            reply, _ = sock.recvfrom(2048)
        except TimeoutError:
            break
        if reply[:1] == b"\x03":
            cookies += 1
    print(f"sent {len(initiations)} cookies {cookies}", flush=True)


if __name__ == "__main__":
    main()
