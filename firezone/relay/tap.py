"""``twistd firezone-relay``: options and service wiring for the STUN/TURN relay."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from firezone import __version__
from firezone.common import options as opt
from firezone.common.health import Readiness
from firezone.common.role import RoleService
from firezone.control.backoff import reconnect_policy
from firezone.control.channel import ChannelFatal
from firezone.control.client import PortalChannelService
from firezone.control.fatal import stop_with_status
from firezone.control.login import user_agent
from firezone.relay.ebpf import AttachMode, XdpOffload, XdpOffloadError, XdpOffloadService
from firezone.relay.metrics import RelayCollector, XdpMapCollector
from firezone.relay.server import TurnServer
from firezone.relay.udp import RelayUDP

_log = Logger()


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


class Options(opt.EnvOptions):
    """Relay options; environment variables as the reference relay (REFERENCE.md 3.1)."""

    programName = "firezone-relay"
    synopsis = "[options]"
    longdesc = (
        "A STUN/TURN relay for Firezone clients and gateways. With --api-url it joins the "
        "portal and is ready only while joined; without it, it runs standalone."
    )
    envParameters = [
        ("public-ip4", None, None, "Public IPv4 address advertised to peers", opt.ipv4_address,
         "PUBLIC_IP4_ADDR"),
        ("public-ip6", None, None, "Public IPv6 address advertised to peers", opt.ipv6_address,
         "PUBLIC_IP6_ADDR"),
        ("bind-ip4", None, "0.0.0.0", "Local IPv4 address to bind", opt.ipv4_address,
         "BIND_IP4_ADDR"),
        ("bind-ip6", None, "::", "Local IPv6 address to bind", opt.ipv6_address, "BIND_IP6_ADDR"),
        ("listen-port", None, "3478", "STUN/TURN UDP port", opt.port_number, "LISTEN_PORT"),
        ("lowest-port", None, "49152", "Lowest allocation port", opt.port_number, "LOWEST_PORT"),
        ("highest-port", None, "65535", "Highest allocation port", opt.port_number,
         "HIGHEST_PORT"),
        ("api-url", None, None, "Portal URL (ws:// or wss://); omit to run standalone",
         opt.websocket_url, "FIREZONE_API_URL"),
        ("token", None, None, "Relay token from the portal", opt.non_empty, "FIREZONE_TOKEN"),
        ("name", None, None, "Relay name shown in the portal (default: hostname)", opt.non_empty,
         "FIREZONE_NAME"),
        ("health-check", None, "0.0.0.0:8080", "host:port for /healthz, /readyz, /metrics",
         opt.host_port, "HEALTH_CHECK_ADDR"),
        ("allocations-per-username", None, "1",
         "Allocations one credential may hold at once; more evict the oldest (reference: 1)",
         _positive_int, None),
        ("ebpf-offloading", None, None,
         "Interface to attach the XDP data path to, e.g. eth0 (relayed data stays in the kernel)",
         opt.non_empty, "EBPF_OFFLOADING"),
        ("ebpf-attach-mode", None, "driver", "XDP attach mode: driver (native) or generic (SKB)",
         AttachMode.parse, "EBPF_ATTACH_MODE"),
        ("stamp-secret", None, None,
         "Hex secret for TURN credentials (default: random at start; fix it only for tests)",
         opt.hex_secret, None),
    ]

    def validate(self) -> None:
        if self["public-ip4"] is None and self["public-ip6"] is None:
            raise usage.UsageError(
                "at least one of --public-ip4/PUBLIC_IP4_ADDR or --public-ip6/PUBLIC_IP6_ADDR "
                "is required"
            )
        if self["lowest-port"] > self["highest-port"]:
            raise usage.UsageError(
                f"--lowest-port {self['lowest-port']} is above --highest-port "
                f"{self['highest-port']}"
            )
        if self["api-url"] and not self["token"]:
            raise usage.UsageError(
                "--api-url/FIREZONE_API_URL needs the relay token: --token or FIREZONE_TOKEN"
            )
        if self["name"] is None:
            self["name"] = socket.gethostname()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    stamp_secret = options["stamp-secret"] or secrets.token_hex(32)
    server = TurnServer(
        options["public-ip4"],
        options["public-ip6"],
        stamp_secret,
        lowest_port=options["lowest-port"],
        highest_port=options["highest-port"],
        listen_port=options["listen-port"],
        software=f"firezone-relay; rev={_revision()}",
        allocations_per_username=options["allocations-per-username"],
    )
    root = RoleService("relay", reactor, options["health-check"])
    udp = RelayUDP(
        reactor,
        server,
        str(options["bind-ip4"]) if options["public-ip4"] is not None else None,
        str(options["bind-ip6"]) if options["public-ip6"] is not None else None,
    )
    udp.setName("udp")
    udp.setServiceParent(root)
    collector = RelayCollector(server, lambda: udp.send_errors)
    root.registry.register(collector)
    if options["ebpf-offloading"]:
        _attach_xdp(options, server, udp, collector, root)
    stats = TimerService(STATS_LOG_INTERVAL, _StatsLogger(server).log)
    stats.clock = reactor
    stats.setServiceParent(root)
    if options["api-url"]:
        # Joined to a portal: ready only while joined (REFERENCE 1.5, 3.6).
        root.readiness.set_not_ready("not joined to the portal yet")
        portal = PortalChannelService(
            reactor,
            options["api-url"],
            "relay",
            options["token"],
            topic="relay",
            join_payload={"stamp_secret": stamp_secret},
            observer=PortalLink(root.readiness, reactor),
            user_agent=user_agent("relay", __version__),
            params={
                "name": options["name"],
                "ipv4": _str_or_none(options["public-ip4"]),
                "ipv6": _str_or_none(options["public-ip6"]),
                "port": options["listen-port"],
            },
            reconnect_backoff=reconnect_policy(MAX_PARTITION_TIME),
        )
        portal.setName("portal")
        portal.setServiceParent(root)
    else:
        # Standalone: ready once the sockets are bound (startService raises otherwise).
        root.readiness.set_ready()
    return root


#: The reference relay gives up after 24 h without the portal.
MAX_PARTITION_TIME = 24 * 3600.0


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


class PortalLink:
    """The relay's observer of its portal channel.

    ``/readyz`` follows the join.  A fatal channel error (token refused, join
    refused, 24 h without the portal) is logged as one line and ends the
    process: the reactor stops normally and the exit status is 1
    (:func:`firezone.control.fatal.stop_with_status`), so a supervisor sees the
    failure instead of a relay that serves nobody.
    """

    def __init__(
        self,
        readiness: Readiness,
        reactor: Any,
        stop: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.readiness = readiness
        self.reactor = reactor
        self._stop = stop if stop is not None else stop_with_status

    def on_joined(self, reply: Mapping[str, Any]) -> None:
        self.readiness.set_ready()

    def on_message(self, event: str, payload: Any) -> None:
        # The portal pushes ``init {}`` after the join; nothing else is addressed to relays.
        if event != "init":
            _log.debug("ignoring portal message {event!r}", event=event)

    def on_disconnected(self, reason: str) -> None:
        self.readiness.set_not_ready(f"portal connection: {reason}")

    def on_fatal(self, reason: ChannelFatal) -> None:
        _log.critical("relay stopping: {reason}", reason=str(reason))
        self.readiness.set_not_ready(str(reason))
        self._stop(self.reactor, 1)


def _attach_xdp(options: Options, server: TurnServer, udp: RelayUDP, collector: RelayCollector,
                root: RoleService) -> None:
    """Load and attach the XDP program, or refuse to start with one line saying why."""
    iface = options["ebpf-offloading"]
    offload = XdpOffload(iface, options["ebpf-attach-mode"], options["public-ip4"],
                         options["public-ip6"], options["listen-port"], options["lowest-port"],
                         options["highest-port"])
    try:
        offload.start()  # compile, load, configure, attach: a few seconds
    except XdpOffloadError as e:
        raise SystemExit(f"firezone-relay: XDP offload on {iface}: {e}") from None
    # Every binding the pure server creates, refreshes, expires or frees reaches the kernel
    # maps in the same event-loop turn; the maps are the only copy.
    udp.add_binding_observer(offload.observe)
    collector.datapaths["xdp"] = offload.counters
    root.registry.register(XdpMapCollector(offload.map_entries))
    XdpOffloadService(offload, server).setServiceParent(root)
    _log.info("XDP offload attached to {iface} ({mode} mode)", iface=iface,
              mode=options["ebpf-attach-mode"].value)


STATS_LOG_INTERVAL = 10.0


class _StatsLogger:
    """Throughput every 10 s, as the reference relay logs it."""

    def __init__(self, server: TurnServer) -> None:
        self._server = server
        self._last = (0, 0)

    def log(self) -> None:
        try:
            stats = self._server.stats
            packets = stats.packets_to_peer + stats.packets_to_client
            size = stats.bytes_to_peer + stats.bytes_to_client
            dp, db = packets - self._last[0], size - self._last[1]
            self._last = (packets, size)
            if dp:
                _log.info(
                    "relayed {packets} packets ({mbps:.1f} Mbit/s) in the last {interval:.0f} s; "
                    "{allocations} allocations, {channels} channels",
                    packets=dp, mbps=db * 8 / STATS_LOG_INTERVAL / 1e6,
                    interval=STATS_LOG_INTERVAL, allocations=self._server.num_allocations,
                    channels=self._server.num_bound_channels,
                )
        except Exception:
            _log.failure("relay stats logging failed")


def _revision() -> str:
    """8 hex digits identifying this build (the reference uses its git sha)."""
    import hashlib

    return hashlib.sha256(__version__.encode()).hexdigest()[:8]
