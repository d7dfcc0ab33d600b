"""Prometheus view of the relay's counters, read at scrape time (nothing per packet)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from firezone.relay.server import TurnServer


class RelayCollector(Collector):
    """``relay_*`` metrics named after the reference's OTel meter ``relay``."""

    def __init__(self, server: TurnServer, send_errors: Callable[[], int] = lambda: 0) -> None:
        self._server = server
        self._send_errors = send_errors
        #: Extra datapaths (e.g. "xdp") report ``(packets, bytes)`` per direction here.
        self.datapaths: dict[str, Callable[[], dict[str, tuple[int, int]]]] = {}

    def collect(self) -> Iterator[Metric]:
        stats = self._server.stats
        yield GaugeMetricFamily("relay_active_allocations", "Allocations currently held",
                                value=self._server.num_allocations)
        yield GaugeMetricFamily("relay_bound_channels", "Channel bindings currently relaying",
                                value=self._server.num_bound_channels)
        responses = CounterMetricFamily(
            "relay_responses", "STUN responses sent",
            labels=["message_type", "response_class", "error_code"])
        for (message_type, response_class, code), count in sorted(
                stats.responses.items(), key=lambda kv: tuple(map(str, kv[0]))):
            responses.add_metric([message_type, response_class, "" if code is None else str(code)],
                                 count)
        yield responses
        packets = CounterMetricFamily("relay_packets", "Packets relayed",
                                      labels=["datapath", "direction"])
        data = CounterMetricFamily("relay_bytes", "Payload bytes relayed",
                                   labels=["datapath", "direction"])
        packets.add_metric(["userspace", "to_peer"], stats.packets_to_peer)
        packets.add_metric(["userspace", "to_client"], stats.packets_to_client)
        data.add_metric(["userspace", "to_peer"], stats.bytes_to_peer)
        data.add_metric(["userspace", "to_client"], stats.bytes_to_client)
        for name, read in self.datapaths.items():
            for direction, (count, size) in read().items():
                packets.add_metric([name, direction], count)
                data.add_metric([name, direction], size)
        yield packets
        yield data
        drops = CounterMetricFamily("relay_dropped_packets", "Datagrams dropped, by reason",
                                    labels=["reason"])
        for reason, count in sorted(stats.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        yield CounterMetricFamily("relay_send_errors", "Datagrams the kernel refused to send",
                                  value=self._send_errors())


def register(registry: CollectorRegistry, collector: RelayCollector) -> None:
    registry.register(collector)


class XdpMapCollector(Collector):
    """``relay_xdp_map_entries{map}``: what the kernel would relay right now."""

    def __init__(self, map_entries: Callable[[], dict[str, int]]) -> None:
        self._map_entries = map_entries

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("relay_xdp_map_entries", "Entries per XDP binding map",
                                  labels=["map"])
        for name, count in sorted(self._map_entries().items()):
            gauge.add_metric([name], count)
        yield gauge
