"""``twistd firezone-portal``: options and service wiring for the portal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService
from twisted.python import usage

from firezone.common import options as opt
from firezone.common.role import RoleService


def database_url(value: str) -> str:
    """``sqlite:///path`` (the embedded default) or ``postgresql://...``."""
    value = value.strip()
    scheme = urlsplit(value).scheme
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(f"{value!r} is not a sqlite:/// or postgresql:// URL")
    return value


def server_endpoint(value: str) -> str:
    """A Twisted server endpoint description such as ``tcp:13000:interface=127.0.0.1``."""
    from twisted.internet.endpoints import _parseServer as parse

    value = value.strip()
    try:
        parse(value, None)
    except Exception as e:
        raise ValueError(f"{value!r} is not an endpoint description ({e})") from None
    return value


class Options(opt.EnvOptions):
    """Portal options."""

    programName = "firezone-portal"
    synopsis = "[options]"
    longdesc = (
        "The Firezone portal: admin UI, sign-in, the control-plane WebSocket API and the policy "
        "engine. Runs on an embedded SQLite database by default; several nodes share PostgreSQL."
    )
    envParameters = [
        ("data-dir", None, "var/portal", "Directory for the SQLite database and secrets", Path,
         "FIREZONE_DATA_DIR"),
        ("database", None, None,
         "Database URL (default: sqlite:///<data-dir>/portal.db)", database_url,
         "DATABASE_URL"),
        ("listen", None, "tcp:13000:interface=127.0.0.1",
         "Endpoint serving the admin UI and the API", server_endpoint, "PORTAL_LISTEN"),
        ("external-url", None, "http://127.0.0.1:13000/",
         "URL users and devices reach this portal at", opt.non_empty, "EXTERNAL_URL"),
        ("health-check", None, "127.0.0.1:8080", "host:port for /healthz, /readyz, /metrics",
         opt.host_port, "HEALTH_CHECK_ADDR"),
    ]

    def validate(self) -> None:
        if self["database"] is None:
            path = Path(os.path.abspath(self["data-dir"])) / "portal.db"
            self["database"] = f"sqlite:///{path}"
        scheme = urlsplit(self["external-url"]).scheme
        if scheme not in ("http", "https"):
            raise usage.UsageError(
                f"--external-url: {self['external-url']!r} is not an http(s) URL"
            )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

    from firezone.portal.api.service import PortalApiService

    root = RoleService("portal", reactor, options["health-check"])
    api = PortalApiService(
        reactor=reactor,
        listen=options["listen"],
        database_url=options["database"],
        data_dir=Path(options["data-dir"]),
        external_url=options["external-url"],
        readiness=root.readiness,
    )
    api.setName("api")
    api.setServiceParent(root)
    return root
