"""``twistd firezone-relay``: options and service wiring for the STUN/TURN relay."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from firezone.common import options as opt
from firezone.common.role import RoleService


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
            raise usage.UsageError("--api-url needs --token/FIREZONE_TOKEN")
        if self["name"] is None:
            self["name"] = socket.gethostname()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

    return RoleService("relay", reactor, options["health-check"])
