"""A UDP server for lab tests: answers every datagram with the sender's ``ip port`` as seen here.

Stops by itself after ``--lifetime`` seconds so that nothing outlives a test.
"""

import argparse
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    print(f"listening {args.bind} {args.port}", flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            _data, sender = sock.recvfrom(2048)
        except TimeoutError:
            break
        sock.sendto(f"{sender[0]} {sender[1]}".encode(), sender)


if __name__ == "__main__":
    main()
