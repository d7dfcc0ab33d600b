"""Where and as whom a component dials the portal (REFERENCE 1.1, ``login_url.rs``).

The path depends on the role (clients and gateways use the v2 sockets, relays
the unversioned one), the query carries the role's identity, the token goes
in ``X-Authorization`` with all whitespace removed, and the ``User-Agent``
has the shape the portal parses the version out of.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

__all__ = [
    "WEBSOCKET_PATHS",
    "PortalAddress",
    "authorization_header",
    "portal_address",
    "user_agent",
]

WEBSOCKET_PATHS = {
    "relay": ("relay", "websocket"),
    "gateway": ("gateway", "v2", "websocket"),
    "client": ("client", "v2", "websocket"),
}

_SCHEMES = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}


@dataclass(frozen=True)
class PortalAddress:
    """Everything needed to dial: the full URL and where to open the TCP connection."""

    url: str
    host: str
    port: int
    secure: bool


def portal_address(
    api_url: str, path_kind: str, params: Mapping[str, str | int | None]
) -> PortalAddress:
    """The socket URL for ``path_kind`` under ``api_url``; ``None`` params are left out.

    Any path already in ``api_url`` is kept as a prefix, and its query replaced,
    as ``get_websocket_path`` does.  Without a port, ws uses 80 and wss 443.
    """
    try:
        segments = WEBSOCKET_PATHS[path_kind]
    except KeyError:
        raise ValueError(f"unknown path kind {path_kind!r}; one of {sorted(WEBSOCKET_PATHS)}")
    parts = urlsplit(api_url.strip())
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"{api_url!r} is not a ws://, wss://, http:// or https:// URL")
    secure = scheme == "wss"
    port = parts.port or (443 if secure else 80)
    prefix = parts.path.rstrip("/")
    path = prefix + "/" + "/".join(segments)
    query = urlencode([(k, str(v)) for k, v in params.items() if v is not None])
    netloc = parts.netloc.rpartition("@")[2]  # credentials in the URL are never sent
    return PortalAddress(
        urlunsplit((scheme, netloc, path, query, "")), parts.hostname, port, secure
    )


def authorization_header(token: str) -> str:
    """``Bearer <token>``, the token stripped of all whitespace (connlib does the same)."""
    return "Bearer " + "".join(token.split())


def user_agent(
    component: str,
    version: str,
    *,
    os_type: str | None = None,
    os_version: str | None = None,
    arch: str | None = None,
    kernel: str | None = None,
) -> str:
    """``<os_type>/<os_version> <component>/<version> (<arch>; <kernel>)``, ASCII only.

    ``component`` is ``relay``, ``gateway`` or ``headless-client``: the portal
    reads the version from it and refuses a client UA it does not recognise.
    """
    uname = platform.uname()
    os_type = os_type or uname.system or "Unknown"
    os_version = os_version or uname.release or "Unknown"
    arch = arch if arch is not None else uname.machine
    kernel = kernel if kernel is not None else uname.release
    extra = "; ".join(part for part in (arch, kernel) if part)
    text = f"{os_type}/{os_version} {component}/{version}" + (f" ({extra})" if extra else "")
    return "".join(c for c in text if c.isascii() and c.isprintable())
