"""Run the relay with XDP offload in a lab host, wired as ``firezone.relay.tap`` will wire it.

    python tests/lab/xdp_relay.py --iface eth0 --mode generic --public-ip4 198.18.2.2 ...

Prints ``xdp prog fd N`` (for reading the program's run statistics from
``/proc/PID/fdinfo/N``) and ``relay listening`` once the program is attached and
the sockets are bound, then one ``binding create|delete CLIENT_IP CLIENT_PORT
CHANNEL PEER_IP PEER_PORT ALLOCATION_PORT`` line per binding command; exits 1
with ``relay refused to start: <why>`` when the offload cannot work.  ``/metrics``
carries ``RelayCollector`` with the ``xdp`` datapath plus
``relay_xdp_map_entries{map}`` so tests can see the maps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from firezone.common.health import Readiness, health_service
from firezone.relay.commands import Command, CreateChannelBinding, DeleteChannelBinding
from firezone.relay.ebpf import AttachMode, XdpOffload, XdpOffloadError, XdpOffloadService
from firezone.relay.metrics import RelayCollector
from firezone.relay.server import TurnServer
from firezone.relay.udp import RelayUDP


class MapEntries(Collector):
    """Entries per binding map: what the kernel would relay right now."""

    def __init__(self, offload: XdpOffload) -> None:
        self.offload = offload

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("relay_xdp_map_entries", "Entries per XDP binding map",
                                  labels=["map"])
        for name, count in self.offload.map_entries().items():
            gauge.add_metric([name], count)
        yield gauge


def print_binding(command: Command) -> None:
    if isinstance(command, CreateChannelBinding | DeleteChannelBinding):
        kind = "create" if isinstance(command, CreateChannelBinding) else "delete"
        print(f"binding {kind} {command.client[0]} {command.client[1]} {command.channel} "
              f"{command.peer[0]} {command.peer[1]} {command.allocation_port}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--mode", default="driver", choices=[m.value for m in AttachMode])
    parser.add_argument("--public-ip4", type=IPv4Address)
    parser.add_argument("--public-ip6", type=IPv6Address)
    parser.add_argument("--listen-port", type=int, default=3478)
    parser.add_argument("--lowest-port", type=int, default=49152)
    parser.add_argument("--highest-port", type=int, default=65535)
    parser.add_argument("--health-port", type=int, default=18080)
    parser.add_argument("--stamp-secret", required=True)
    parser.add_argument("--allocations-per-username", type=int, default=1)
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    server = TurnServer(args.public_ip4, args.public_ip6, args.stamp_secret,
                        lowest_port=args.lowest_port, highest_port=args.highest_port,
                        listen_port=args.listen_port,
                        allocations_per_username=args.allocations_per_username)
    offload = XdpOffload(args.iface, args.mode, args.public_ip4, args.public_ip6,
                         args.listen_port, args.lowest_port, args.highest_port)
    try:
        offload.start()
    except XdpOffloadError as e:
        print(f"relay refused to start: {e}", file=sys.stderr, flush=True)
        return 1
    udp = RelayUDP(reactor, server,
                   str(args.public_ip4) if args.public_ip4 else None,
                   str(args.public_ip6) if args.public_ip6 else None)
    udp.add_binding_observer(offload.observe)
    udp.add_binding_observer(print_binding)
    attached = XdpOffloadService(offload, server)
    collector = RelayCollector(server, lambda: udp.send_errors)
    collector.datapaths["xdp"] = offload.counters
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(MapEntries(offload))
    health = health_service(reactor, ("127.0.0.1", args.health_port), Readiness(True, ""),
                            registry)
    attached.startService()
    health.startService()
    udp.startService()

    def shutdown() -> None:
        udp.stopService()
        health.stopService()
        attached.stopService()

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    assert offload.program is not None
    print(f"xdp prog fd {offload.program.fd}", flush=True)
    print("relay listening", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
