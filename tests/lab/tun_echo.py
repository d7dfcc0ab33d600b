"""Lab helper: a TUN device in the reactor that answers ICMP echo for every address routed to it.

Proves the TUN plumbing end to end: pyroute2 configures it, the kernel routes a
ping into it, the reactor reads it, and the reply written back reaches ping.
"""

import argparse
import struct
import sys

from twisted.internet import reactor

from firezone.tunnel.netconfig import configure_interface
from firezone.tunnel.tun import TunDevice


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(packet: bytes) -> bytes | None:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = bytearray(packet[ihl:])
    if icmp[0] != 8:
        return None
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    header = bytearray(packet[:ihl])
    header[12:16], header[16:20] = packet[16:20], packet[12:16]
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return bytes(header) + bytes(icmp)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="tun-firezone")
    parser.add_argument("--address", default="100.64.0.1/32")
    parser.add_argument("--route", default="100.64.0.0/24")
    parser.add_argument("--lifetime", type=float, default=30)
    args = parser.parse_args()
    device: TunDevice

    def on_packets(packets: list[bytes]) -> None:
        for packet in packets:
            reply = echo_reply(packet)
            if reply is not None:
                device.write(reply)

    device = TunDevice.open(reactor, on_packets, name=args.name)
    configure_interface(device.name, 1280, [args.address], [args.route])
    device.start_reading()
    print(f"ready {device.name}", flush=True)
    reactor.callLater(args.lifetime, reactor.stop)
    reactor.run()
    print(f"read={device.stats.packets_read} written={device.stats.packets_written}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
