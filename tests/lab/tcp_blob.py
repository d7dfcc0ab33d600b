"""Lab helper: move a seeded pseudo-random blob over TCP and print its sha256 on both ends.

``serve`` accepts one connection, reads to EOF, prints ``received <bytes> <sha256>``.
``send`` connects, writes ``--size`` bytes (optionally paced to ``--seconds``),
prints ``sent <bytes> <sha256>``.  Bounded: both give up after ``--timeout``.
"""

import argparse
import hashlib
import random
import socket
import time


def blob_chunks(size: int, seed: int, chunk: int = 65536):
    rng = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def serve(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.bind, args.port))
        listener.listen(1)
        listener.settimeout(args.timeout)
        print("listening", flush=True)
        conn, _ = listener.accept()
        conn.settimeout(args.timeout)
        digest, total = hashlib.sha256(), 0
        with conn:
            while True:
                data = conn.recv(262144)
                if not data:
                    break
                digest.update(data)
                total += len(data)
        print(f"received {total} {digest.hexdigest()}", flush=True)


def send(args: argparse.Namespace) -> None:
    host, port = args.to.rsplit(":", 1)
    digest, total = hashlib.sha256(), 0
    start = time.monotonic()
    with socket.create_connection((host.strip("[]"), int(port)), timeout=args.timeout) as conn:
        for data in blob_chunks(args.size, args.seed):
            conn.sendall(data)
            digest.update(data)
            total += len(data)
            if args.seconds:
                ahead = start + args.seconds * total / args.size - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    print(f"sent {total} {digest.hexdigest()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--timeout", type=float, default=60)
    c = sub.add_parser("send")
    c.add_argument("--to", required=True)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--seconds", type=float, default=0, help="pace the transfer over this long")
    c.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    serve(args) if args.mode == "serve" else send(args)


if __name__ == "__main__":
    main()
