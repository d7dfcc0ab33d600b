"""What a WebSocket upgrade to the portal must carry, and how it is refused (REFERENCE 1.1).

Pure values: the socket paths, the token extraction (``X-Authorization: Bearer``
first, then the ``token`` query parameter), the User-Agent's component and
version, the per-role query parameters, the refusals with their problem-details
``code``, and the connect rate limit (one per second per remote IP and token).
The Twisted resource in :mod:`firezone.portal.api.gate` only translates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from firezone.wire.phoenix import ProblemDetails

__all__ = [
    "CLIENT_COMPONENTS",
    "ENDPOINTS",
    "ROLE_CLIENT",
    "ROLE_GATEWAY",
    "ROLE_RELAY",
    "DeviceParams",
    "Endpoint",
    "InvalidConnectParams",
    "RateLimiter",
    "Rejection",
    "RelayParams",
    "UserAgent",
    "device_params",
    "extract_token",
    "parse_user_agent",
    "relay_params",
]

ROLE_CLIENT = "client"
ROLE_GATEWAY = "gateway"
ROLE_RELAY = "relay"

#: Server-side idle timeouts of the reference endpoint (``portal_api/endpoint.ex``).
CLIENT_IDLE_TIMEOUT = 37.0
RELAY_IDLE_TIMEOUT = 41.0

DEFAULT_RELAY_PORT = 3478
MAX_EXTERNAL_ID = 255
MAX_NAME = 255


@dataclass(frozen=True)
class Endpoint:
    """One socket mount: its role (also the channel topic) and protocol version.

    Version 1 speaks the old message names (``create_flow``, ``flow_created``,
    ``authorize_flow``, ``flow_authorized``), version 2 the current ones.
    """

    role: str
    version: int

    @property
    def topic(self) -> str:
        return self.role

    @property
    def idle_timeout(self) -> float:
        return RELAY_IDLE_TIMEOUT if self.role == ROLE_RELAY else CLIENT_IDLE_TIMEOUT


#: Path (without query) -> endpoint.
ENDPOINTS: dict[str, Endpoint] = {
    "/client/websocket": Endpoint(ROLE_CLIENT, 1),
    "/client/v2/websocket": Endpoint(ROLE_CLIENT, 2),
    "/gateway/websocket": Endpoint(ROLE_GATEWAY, 1),
    "/gateway/v2/websocket": Endpoint(ROLE_GATEWAY, 2),
    "/relay/websocket": Endpoint(ROLE_RELAY, 1),
}


class Rejection(Exception):
    """A refused upgrade: HTTP status, problem-details ``code`` and ``detail``.

    ``retry_after`` (seconds) is sent as ``Retry-After`` (503 ``rate_limit``).
    """

    def __init__(
        self, status: int, code: str, detail: str, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    def problem(self) -> ProblemDetails:
        return ProblemDetails.for_status(self.status, self.code, self.detail)

    # The codes of ``PortalAPI.Sockets.handle_error``.
    @classmethod
    def missing_token(cls) -> Rejection:
        return cls(401, "missing_token", "Missing token")

    @classmethod
    def invalid_token(cls) -> Rejection:
        return cls(401, "invalid_token", "Invalid token")

    @classmethod
    def unauthenticated(cls) -> Rejection:
        return cls(403, "unauthenticated", "Forbidden")

    @classmethod
    def gateway_already_connected(cls) -> Rejection:
        return cls(409, "gateway_already_connected", "A gateway with this ID is already connected")

    @classmethod
    def invalid_connect_params(cls, detail: str) -> Rejection:
        return cls(400, "invalid_connect_params", detail)

    @classmethod
    def rate_limit(cls, retry_after: int) -> Rejection:
        return cls(503, "rate_limit", "Service Unavailable", retry_after)

    @classmethod
    def unhandled(cls) -> Rejection:
        return cls(500, "unhandled_connect_error", "An unexpected error occurred.")


def _strip_all(text: str) -> str:
    return "".join(text.split())


def extract_token(authorization: str | None, query: Mapping[str, Sequence[str]]) -> str:
    """The bearer token: the ``X-Authorization`` header, else the ``token`` parameter.

    All whitespace is removed, as connlib does before sending; an empty token
    counts as missing.
    """
    if authorization is not None and authorization.startswith("Bearer "):
        token = _strip_all(authorization[len("Bearer "):])
        if token:
            return token
    values = query.get("token") or ()
    if values:
        token = _strip_all(values[0])
        if token:
            return token
    raise Rejection.missing_token()


#: The components ``Portal.Version.fetch_version`` recognises in a User-Agent.
COMPONENTS = (
    "relay",
    "connlib",
    "headless-client",
    "gui-client",
    "apple-client",
    "android-client",
    "gateway",
)
CLIENT_COMPONENTS = ("connlib", "headless-client", "gui-client", "apple-client", "android-client")

#: First client version that reads ``sites`` instead of ``gateway_groups``
#: (``Portal.Version.client_supports_sites_payload?``).
_SITES_PAYLOAD_SINCE = {
    "apple-client": (1, 5, 11),
    "headless-client": (1, 5, 6),
    "android-client": (1, 5, 8),
    "gui-client": (1, 5, 10),
}


@dataclass(frozen=True)
class UserAgent:
    """``"<os>/<os_version> <component>/<version> (<arch>; <kernel>)"`` taken apart.

    ``component``/``version`` are None when no known component is named.
    """

    raw: str
    component: str | None
    version: str | None
    os_name: str | None
    os_version: str | None

    @property
    def supports_sites_payload(self) -> bool:
        since = _SITES_PAYLOAD_SINCE.get(self.component or "")
        if since is None or self.version is None:
            return False
        numbers: list[int] = []
        for part in self.version.split("-", 1)[0].split("+", 1)[0].split(".")[:3]:
            if not part.isdigit():
                return False
            numbers.append(int(part))
        return tuple(numbers) >= since


def parse_user_agent(text: str | None) -> UserAgent:
    raw = (text or "").strip()
    component = version = None
    for token in raw.split(" "):
        name, slash, rest = token.partition("/")
        if slash and name in COMPONENTS and rest:
            component, version = name, rest
            break
    os_name = os_version = None
    first, slash, rest = raw.partition("/")
    if slash and first:
        os_name = first
        os_version = rest.split(" ", 1)[0] or None
    return UserAgent(raw, component, version, os_name, os_version)


class InvalidConnectParams(ValueError):
    """Query parameters a socket refuses; the message lists ``field problem`` pairs."""


def _first(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name) or ()
    if not values:
        return None
    value = values[0].strip()
    return value or None


def _valid_public_key(value: str | None) -> bool:
    if value is None or len(value) != 44:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _default_name(role: str, external_id: str) -> str:
    digest = hashlib.sha256(external_id.encode()).hexdigest()[:8]
    return f"{role}-{digest}"


@dataclass(frozen=True)
class DeviceParams:
    """A client's or gateway's connect parameters."""

    external_id: str
    name: str
    public_key: str
    device_serial: str | None = None
    device_uuid: str | None = None
    identifier_for_vendor: str | None = None
    firebase_installation_id: str | None = None


def device_params(role: str, query: Mapping[str, Sequence[str]]) -> DeviceParams:
    """Validate ``external_id`` (or ``firezone_id``), ``name`` and ``public_key``.

    Errors about ``firezone_id`` are reported as ``external_id``, as the reference does.
    """
    errors: list[str] = []
    external_id = _first(query, "external_id") or _first(query, "firezone_id")
    if external_id is None:
        errors.append("external_id can't be blank")
    elif len(external_id) > MAX_EXTERNAL_ID:
        errors.append(f"external_id should be at most {MAX_EXTERNAL_ID} character(s)")
    name = _first(query, "name")
    if name is not None and len(name) > MAX_NAME:
        errors.append(f"name should be at most {MAX_NAME} character(s)")
    public_key = _first(query, "public_key")
    if public_key is None:
        errors.append("public_key can't be blank")
    elif not _valid_public_key(public_key):
        errors.append("public_key must be 32 bytes of base64 (44 characters)")
    if errors:
        raise InvalidConnectParams("; ".join(errors))
    assert external_id is not None and public_key is not None
    return DeviceParams(
        external_id=external_id,
        name=name or _default_name(role, external_id),
        public_key=public_key,
        device_serial=_first(query, "device_serial"),
        device_uuid=_first(query, "device_uuid"),
        identifier_for_vendor=_first(query, "identifier_for_vendor"),
        firebase_installation_id=_first(query, "firebase_installation_id"),
    )


@dataclass(frozen=True)
class RelayParams:
    """A relay's public addresses and TURN port."""

    name: str | None
    ipv4: str | None
    ipv6: str | None
    port: int


def relay_params(query: Mapping[str, Sequence[str]]) -> RelayParams:
    """``ipv4`` and/or ``ipv6`` (at least one) and ``port`` (default 3478)."""
    errors: list[str] = []
    addresses: dict[str, str | None] = {}
    for key, family in (("ipv4", ipaddress.IPv4Address), ("ipv6", ipaddress.IPv6Address)):
        text = _first(query, key)
        if text is None:
            addresses[key] = None
            continue
        try:
            addresses[key] = str(family(text))
        except ValueError:
            errors.append(f"{key} is invalid")
            addresses[key] = None
    if _first(query, "ipv4") is None and _first(query, "ipv6") is None:
        errors.append("ipv4 or ipv6 must be present")
    port = DEFAULT_RELAY_PORT
    port_text = _first(query, "port")
    if port_text is not None:
        if port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            errors.append("port is invalid")
    name = _first(query, "name")
    if name is not None and len(name) > MAX_NAME:
        errors.append(f"name should be at most {MAX_NAME} character(s)")
    if errors:
        raise InvalidConnectParams("; ".join(errors))
    return RelayParams(name, addresses["ipv4"], addresses["ipv6"], port)


class RateLimiter:
    """At most one connect per ``interval`` seconds per key (remote IP and token).

    ``check`` answers None (go ahead, the attempt is recorded) or the whole
    seconds to put in ``Retry-After``.  Keys are hashed so tokens are not kept.
    """

    def __init__(self, interval: float = 1.0, prune_above: int = 4096) -> None:
        self.interval = interval
        self._last: dict[bytes, float] = {}
        self._prune_above = prune_above

    @staticmethod
    def key(remote_ip: str, token: str) -> bytes:
        return hashlib.sha256(f"{remote_ip}\0{token}".encode()).digest()

    def check(self, key: bytes, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return max(1, math.ceil(self.interval - (now - last)))
        self._last[key] = now
        if len(self._last) > self._prune_above:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        return None

    def __len__(self) -> int:
        return len(self._last)
