"""``python -m firezone.tunnel.static --config FILE``: one TUN, statically configured peers.

The data plane of the client and gateway without the portal: keys, allowed IPs
and endpoints come from a wg-quick style file.  Tests and benchmarks run it
against wireguard-go; the roles use the same ``WireGuardTunnel`` with keys from
the portal.  ``--health-check host:port`` serves ``/metrics`` with the
WireGuard counters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from firezone.common.health import Readiness, health_service
from firezone.common.metrics import new_registry
from firezone.common.options import host_port
from firezone.common.sockets import grow_buffers
from firezone.tunnel.netconfig import configure_interface
from firezone.tunnel.static_config import ConfigError, StaticConfig, parse_static_config
from firezone.tunnel.tun import TunDevice, TunError
from firezone.tunnel.wg_tunnel import TunnelDatagramProtocol, WireGuardTunnel
from firezone.wireguard.constants import TimerConfig
from firezone.wireguard.device import Device, DeviceConfig

_log = Logger()


class TunnelCollector(Collector):
    """WireGuard device, peer and adapter counters for ``/metrics``."""

    def __init__(self, tunnel: WireGuardTunnel, tun: TunDevice) -> None:
        self._tunnel = tunnel
        self._tun = tun

    def collect(self) -> Iterator[Metric]:
        drops = CounterMetricFamily("wireguard_rejected", "Datagrams rejected, by reason",
                                    labels=["reason"])
        accepted = CounterMetricFamily("wireguard_received", "Messages accepted, by kind",
                                       labels=["kind"])
        for name, value in self._tunnel.device.stats.as_dict().items():
            if name.endswith("_received"):
                accepted.add_metric([name.removesuffix("_received")], value)
            else:
                drops.add_metric([name], value)
        for name, value in vars(self._tunnel.stats).items():
            drops.add_metric([f"tunnel_{name}"], value)
        yield drops
        yield accepted
        handshakes = CounterMetricFamily("wireguard_handshakes", "Completed handshakes")
        packets = CounterMetricFamily("wireguard_packets", "Transport packets",
                                      labels=["direction"])
        rx = tx = done = 0
        for peer in self._tunnel.device.peers():
            rx += peer.stats.rx_packets
            tx += peer.stats.tx_packets
            done += peer.stats.handshakes_completed
        handshakes.add_metric([], done)
        packets.add_metric(["rx"], rx)
        packets.add_metric(["tx"], tx)
        yield handshakes
        yield packets
        yield GaugeMetricFamily("tun_write_drops", "Packets the TUN device refused",
                                value=self._tun.stats.write_drops)


def run(config: StaticConfig, health: tuple[str, int] | None, reactor: Any) -> None:
    overrides: dict[str, float] = {}
    if config.rekey_attempt_time is not None:
        overrides["rekey_attempt_time"] = config.rekey_attempt_time
    if config.rekey_after_time is not None:
        overrides["rekey_after_time"] = config.rekey_after_time
    timers = TimerConfig(**overrides)  # type: ignore[arg-type]
    device = Device(config.private_key, config=DeviceConfig(timers=timers, mtu=config.mtu))
    protocol: TunnelDatagramProtocol
    tun: TunDevice

    def tun_write(packet: bytes) -> bool:
        return tun.write(packet)

    def udp_send(data: bytes, address: tuple[str, int]) -> None:
        protocol.send(data, address)

    tunnel = WireGuardTunnel(reactor, device, tun_write, udp_send)
    protocol = TunnelDatagramProtocol(tunnel.datagram_received)
    tun = TunDevice.open(reactor, tunnel.packets_from_tun, name=config.name)  # type: ignore[arg-type]
    port = reactor.listenUDP(config.listen_port, protocol,  # type: ignore[attr-defined]
                             maxPacketSize=65535)
    grow_buffers(port.socket)
    routes: list[str] = []
    for peer in config.peers:
        tunnel.add_peer(peer.public_key, list(peer.allowed_ips), peer.endpoint,
                        preshared_key=peer.preshared_key,
                        persistent_keepalive=peer.persistent_keepalive)
        routes.extend(str(n) for n in peer.allowed_ips)
    configure_interface(tun.name, config.mtu, config.addresses, routes)
    tun.start_reading()
    tunnel.start()
    if health is not None:
        registry = new_registry("tunnel")
        registry.register(TunnelCollector(tunnel, tun))
        readiness = Readiness(ready=True)
        health_service(reactor, health, readiness, registry).startService()
    _log.info("tunnel up: {name} udp/{port} {peers} peer(s)", name=tun.name,
              port=port.getHost().port, peers=len(config.peers))
    print(f"tunnel up {tun.name} {port.getHost().port}", flush=True)

    def report() -> None:
        print(f"stats device={device.stats.as_dict()} tunnel={vars(tunnel.stats)}", flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", report)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firezone.tunnel.static",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--health-check", default=None, help="host:port for /metrics")
    args = parser.parse_args(argv)
    try:
        config = parse_static_config(args.config.read_text())
        health = host_port(args.health_check) if args.health_check else None
    except (OSError, ConfigError, ValueError) as e:
        print(f"firezone.tunnel.static: error: {e}", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    from twisted.internet import reactor

    try:
        run(config, health, reactor)
    except (TunError, OSError) as e:
        print(f"firezone.tunnel.static: error: {e}", file=sys.stderr)
        return 1
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
