"""Command-line options that also read the reference system's environment variables.

Every role is configured the way the reference is deployed: a systemd unit or a
container sets ``FIREZONE_TOKEN``, ``FIREZONE_API_URL``, ``HEALTH_CHECK_ADDR`` and
friends, and an operator may override any of them on the command line.  The
precedence is: command line, then environment, then the built-in default.

Bad values are refused with one line on stderr and exit status 2, never a
traceback and never the whole usage text (which hides the actual mistake).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.python import usage

Coerce = Callable[[str], Any]


class EnvOptions(usage.Options):
    """``usage.Options`` whose parameters fall back to environment variables.

    Subclasses declare ``envParameters``: ``(long, short, default, help, coerce,
    ENV_NAME)`` rows.  ``ENV_NAME`` may be ``None`` for flags the reference
    only has on the command line.
    """

    #: (long name, short name, default, help, coerce, environment variable)
    envParameters: ClassVar[list[tuple[str, str | None, Any, str, Coerce | None, str | None]]] = []
    #: (long name, short name, help, environment variable) boolean switches
    envFlags: ClassVar[list[tuple[str, str | None, str, str | None]]] = []
    #: name printed in front of one-line errors
    programName: ClassVar[str] = "firezone"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # usage.Options collects optParameters/optFlags from class attributes.
        super().__init_subclass__(**kwargs)
        cls.optParameters = [  # type: ignore[attr-defined]
            [name, short, default, _help_with_env(help_, env)]
            for name, short, default, help_, _coerce, env in cls.__dict__.get("envParameters", [])
        ]
        cls.optFlags = [  # type: ignore[attr-defined]
            [name, short, _help_with_env(help_, env)]
            for name, short, help_, env in cls.__dict__.get("envFlags", [])
        ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        super().__init__()
        self._from_command_line: set[str] = set()

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, apply the environment, validate; fail with exactly one line."""
        try:
            self.parse_strict(options)
        except usage.UsageError as e:
            sys.stderr.write(f"{self.programName}: error: {e}\n")
            raise SystemExit(2) from None

    def parse_strict(self, options: list[str] | None = None) -> None:
        """Like ``parseOptions`` but raises ``UsageError`` (for tests and embedding)."""
        self._from_command_line = set()
        for name in list(self._dispatch):
            handler = self._dispatch[name]
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _Recording(handler, self._from_command_line)
        super().parseOptions(options)

    def postOptions(self) -> None:
        for name, _short, _default, _help, coerce, env in self.envParameters:
            source, raw = f"--{name}", self[name]
            if name not in self._from_command_line and env and env in self.environ:
                source, raw = env, self.environ[env]
            if raw is not None and coerce is not None and isinstance(raw, str):
                try:
                    raw = coerce(raw)
                except (ValueError, TypeError) as e:
                    raise usage.UsageError(f"{source}: {e}") from None
            self[name] = raw
        for name, _short, _help, env in self.envFlags:
            if not self[name] and env and env in self.environ:
                self[name] = parse_bool(self.environ[env], env)
        self.validate()

    def validate(self) -> None:
        """Cross-option checks; raise ``usage.UsageError``."""


class _Recording:
    """Wraps a parameter handler to remember that the command line set it."""

    def __init__(self, inner: usage.CoerceParameter, seen: set[str]) -> None:
        self.inner = inner
        self.seen = seen

    def __call__(self, name: str, value: str) -> None:
        self.seen.add(name)
        self.inner.dispatch(name, value)


def _help_with_env(help_: str, env: str | None) -> str:
    return f"{help_} [env: {env}]" if env else help_


def parse_bool(value: str, name: str = "value") -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise usage.UsageError(f"{name}: expected true or false, got {value!r}")


def host_port(value: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port`` as the reference's ``HEALTH_CHECK_ADDR``."""
    value = value.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ipv6]:port, got {value!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port, got {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address") from None
    return host, port_number(port)


def port_number(value: str | int) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


def ipv4_address(value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def ipv6_address(value: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address") from None


def websocket_url(value: str) -> str:
    """Accept ws(s):// and http(s):// portal URLs as the reference does (http maps to ws)."""
    value = value.strip()
    parts = urlsplit(value)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{value!r} is not a ws://, wss://, http:// or https:// URL")
    return parts._replace(scheme=scheme).geturl()


def non_empty(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def hex_secret(value: str) -> str:
    value = value.strip()
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be hexadecimal") from None
    if len(raw) < 16:
        raise ValueError("must be at least 16 bytes (32 hex digits)")
    return value.lower()


def endpoint_for(host: str, port: int) -> str:
    """A Twisted TCP server endpoint string for ``host:port``."""
    interface = host.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}"


def duration_seconds(value: str) -> float:
    text = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = units.get(text[-1:], 0)
    number = text[:-1] if factor else text
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration (seconds, or 30m, 24h, 7d)") from None
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds
