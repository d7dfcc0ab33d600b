"""Lab helper: resend UDP payloads captured by tcpdump (pcap, Ethernet), optionally tampered.

Used to show that a replayed or modified WireGuard packet is rejected and counted.
"""

import argparse
import socket
import struct


def payloads(path: str) -> list[bytes]:
    data = open(path, "rb").read()
    out, offset = [], 24
    while offset + 16 <= len(data):
        _ts, _us, caplen, _len = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16: offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl:]
        length = struct.unpack_from("!H", udp, 4)[0]
        out.append(udp[8:length])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pcap", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--tamper", action="store_true", help="flip a byte of the ciphertext")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for payload in payloads(args.pcap):
        if args.tamper and len(payload) > 20:
            payload = payload[:20] + bytes([payload[20] ^ 0x01]) + payload[21:]
        sock.sendto(payload, (host, int(port)))
        sent += 1
    print(f"sent {sent}", flush=True)


if __name__ == "__main__":
    main()
