"""``twistd firezone-gateway``: options and service wiring for the gateway."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from firezone.common import options as opt
from firezone.common.identity import load_or_create_id, read_token
from firezone.common.role import RoleService

DEFAULT_ID_PATH = "/var/lib/firezone/gateway_id"
DEFAULT_TOKEN_PATH = "/etc/firezone/gateway-token"


class Options(opt.EnvOptions):
    """Gateway options; environment variables as the reference gateway (REFERENCE.md 4.1)."""

    programName = "firezone-gateway"
    synopsis = "[options]"
    longdesc = (
        "A Firezone gateway: accepts WireGuard tunnels from the clients the portal authorized "
        "and forwards their packets to the resources next to it."
    )
    envParameters = [
        ("api-url", "u", "wss://api.firezone.dev", "Portal URL (ws:// or wss://)",
         opt.websocket_url, "FIREZONE_API_URL"),
        ("token", None, None, "Gateway token (else $CREDENTIALS_DIRECTORY/FIREZONE_TOKEN, "
         "else --token-path)", None, "FIREZONE_TOKEN"),
        ("token-path", None, DEFAULT_TOKEN_PATH, "File holding the gateway token", Path, None),
        ("id", "i", None, "Stable gateway id (default: created once in --id-path)",
         opt.non_empty, "FIREZONE_ID"),
        ("id-path", None, DEFAULT_ID_PATH, "Where the generated id is kept", Path, None),
        ("name", None, None, "Gateway name shown in the portal (default: hostname)",
         opt.non_empty, "FIREZONE_NAME"),
        ("health-check", None, "0.0.0.0:8080", "host:port for /healthz, /readyz, /metrics",
         opt.host_port, "HEALTH_CHECK_ADDR"),
        ("tun-name", None, "tun-firezone", "TUN device name", opt.non_empty, None),
        ("listen-port", None, "52625", "UDP port for tunnels (falls back to ephemeral)",
         opt.port_number, None),
        ("max-partition-time", None, "86400",
         "Give up after this many seconds without the portal", opt.duration_seconds,
         "FIREZONE_MAX_PARTITION_TIME"),
    ]
    envFlags = [
        ("flow-logs", None, "Also log flows locally", "FIREZONE_FLOW_LOGS"),
    ]

    def validate(self) -> None:
        self["token"] = read_token(
            self["token"], self["token-path"], os.environ.get("CREDENTIALS_DIRECTORY")
        )
        if self["token"] is None:
            raise usage.UsageError(
                "a gateway token is required: --token, FIREZONE_TOKEN, a systemd credential "
                f"FIREZONE_TOKEN or the file {self['token-path']}"
            )
        if self["name"] is None:
            self["name"] = socket.gethostname()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

    if options["id"] is None:
        options["id"] = load_or_create_id(options["id-path"])
    root = RoleService("gateway", reactor, options["health-check"])
    # Until the gateway joins the portal and brings its tunnel up it is honestly not ready.
    root.readiness.set_not_ready("the gateway data plane is not wired into this role yet")
    return root
