"""``twistd firezone-client``: options and service wiring for the headless client."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from firezone.common import options as opt
from firezone.common.identity import load_or_create_id, read_token
from firezone.common.role import RoleService

DEFAULT_TOKEN_PATH = "/etc/dev.firezone.client/token"
DEFAULT_ID_PATH = "/var/lib/dev.firezone.client/config/firezone-id"
DNS_CONTROL_METHODS = ("systemd-resolved", "etc-resolv-conf", "disabled")


def dns_control(value: str) -> str:
    value = value.strip()
    if value not in DNS_CONTROL_METHODS:
        raise ValueError(f"{value!r} is not one of {', '.join(DNS_CONTROL_METHODS)}")
    return value


class Options(opt.EnvOptions):
    """Headless-client options; environment variables as the reference (REFERENCE.md 5.1)."""

    programName = "firezone-client"
    synopsis = "[options]"
    longdesc = (
        "The headless Firezone client: owns a TUN device and a DNS proxy and routes packets for "
        "resources to the gateway the portal authorizes."
    )
    envParameters = [
        ("api-url", None, "wss://api.firezone.dev/", "Portal URL (ws:// or wss://)",
         opt.websocket_url, "FIREZONE_API_URL"),
        ("token", None, None, "Client token (else read from --token-path)", None,
         "FIREZONE_TOKEN"),
        ("token-path", None, DEFAULT_TOKEN_PATH, "File holding the client token", Path,
         "FIREZONE_TOKEN_PATH"),
        ("id", "i", None, "Stable client id (default: created once in --id-path)",
         opt.non_empty, "FIREZONE_ID"),
        ("id-path", None, DEFAULT_ID_PATH, "Where the generated id is kept", Path, None),
        ("name", None, None, "Client name shown in the portal (default: hostname)",
         opt.non_empty, "FIREZONE_NAME"),
        ("dns-control", None, "systemd-resolved", "How to point the system at our DNS: "
         + ", ".join(DNS_CONTROL_METHODS), dns_control, "FIREZONE_DNS_CONTROL"),
        ("health-check", None, "127.0.0.1:8080", "host:port for /healthz, /readyz, /metrics",
         opt.host_port, "HEALTH_CHECK_ADDR"),
        ("tun-name", None, "tun-firezone", "TUN device name", opt.non_empty, None),
        ("listen-port", None, "52625", "UDP port for tunnels (falls back to ephemeral)",
         opt.port_number, None),
        ("max-partition-time", None, None,
         "Give up after this long without the portal (default: never)", opt.duration_seconds,
         "MAX_PARTITION_TIME"),
        ("log-dir", None, None, "Directory for log files", Path, "LOG_DIR"),
    ]
    envFlags = [
        ("activate-internet-resource", None, "Route all traffic through the Internet resource",
         "FIREZONE_ACTIVATE_INTERNET_RESOURCE"),
        ("flow-logs", None, "Also log flows locally", "FIREZONE_FLOW_LOGS"),
    ]

    def validate(self) -> None:
        self["token"] = read_token(self["token"], self["token-path"], None)
        if self["token"] is None:
            raise usage.UsageError(
                f"a client token is required: --token, FIREZONE_TOKEN or the file "
                f"{self['token-path']}"
            )
        if self["name"] is None:
            self["name"] = socket.gethostname()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

    if options["id"] is None:
        options["id"] = load_or_create_id(options["id-path"])
    root = RoleService("client", reactor, options["health-check"])
    # Until the client joins the portal and brings its tunnel up it is honestly not ready.
    root.readiness.set_not_ready("the client data plane is not wired into this role yet")
    return root
