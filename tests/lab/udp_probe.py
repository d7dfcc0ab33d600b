"""Sends one datagram from a fixed local port to each target and prints what each echo saw.

Output: one line per target, ``target_ip target_port seen_ip seen_port``.
Retries a few times (bounded) because the first packet may race the server's start.
"""

import argparse
import socket


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("targets", nargs="+", help="ip:port")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    sock.settimeout(0.5)
    for target in args.targets:
        ip, port = target.rsplit(":", 1)
        for _attempt in range(10):
            sock.sendto(b"probe", (ip, int(port)))
            try:
                data, sender = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if sender == (ip, int(port)):
                print(f"{ip} {port} {data.decode()}", flush=True)
                break
        else:
            raise SystemExit(f"no answer from {target}")


if __name__ == "__main__":
    main()
