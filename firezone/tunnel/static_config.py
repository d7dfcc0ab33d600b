"""wg-quick style configuration for a statically configured tunnel (tests, benchmarks, demos).

The roles get their keys and peers from the portal; this file format lets the
same data plane run without one.  ``[Peer]`` may repeat, which is why this is
not ``configparser``.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """The configuration file is malformed; the message names the line."""


@dataclass
class StaticPeer:
    public_key: bytes
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    endpoint: tuple[str, int] | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: int | None = None


@dataclass
class StaticConfig:
    private_key: bytes
    listen_port: int = 0
    addresses: list[str] = field(default_factory=list)
    mtu: int = 1280
    name: str = "tun-firezone"
    rekey_attempt_time: float | None = None
    #: Shorter than WireGuard's 120 s only to exercise rekeying in tests.
    rekey_after_time: float | None = None
    peers: list[StaticPeer] = field(default_factory=list)


def _key(value: str, line: int) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise ConfigError(f"line {line}: {value!r} is not base64") from None
    if len(raw) != 32:
        raise ConfigError(f"line {line}: a key is 32 bytes, got {len(raw)}")
    return raw


def _endpoint(value: str, line: int) -> tuple[str, int]:
    value = value.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host)
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"line {line}: endpoint {value!r} is not ip:port") from None
    if not sep or not 0 < port_number < 65536:
        raise ConfigError(f"line {line}: endpoint {value!r} is not ip:port")
    return host, port_number


def parse_static_config(text: str) -> StaticConfig:
    """Parse the ``[Interface]`` / ``[Peer]`` file; raise ``ConfigError`` on any mistake."""
    section = None
    interface: dict[str, tuple[str, int]] = {}
    peers: list[dict[str, tuple[str, int]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section == "peer":
                peers.append({})
            elif section != "interface":
                raise ConfigError(f"line {number}: unknown section [{line[1:-1]}]")
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ConfigError(f"line {number}: expected 'Key = value' inside a section")
        target = interface if section == "interface" else peers[-1]
        target[key.strip().lower()] = (value.strip(), number)

    if "privatekey" not in interface:
        raise ConfigError("[Interface] needs PrivateKey")
    config = StaticConfig(private_key=_key(*interface["privatekey"]))
    try:
        if "listenport" in interface:
            config.listen_port = int(interface["listenport"][0])
        if "mtu" in interface:
            config.mtu = int(interface["mtu"][0])
        if "rekeyattempttime" in interface:
            config.rekey_attempt_time = float(interface["rekeyattempttime"][0])
        if "rekeyaftertime" in interface:
            config.rekey_after_time = float(interface["rekeyaftertime"][0])
    except ValueError as e:
        raise ConfigError(f"[Interface]: {e}") from None
    if "address" in interface:
        value, number = interface["address"]
        for item in value.split(","):
            try:
                config.addresses.append(str(ipaddress.ip_interface(item.strip())))
            except ValueError:
                raise ConfigError(f"line {number}: {item.strip()!r} is not an address") from None
    if "name" in interface:
        config.name = interface["name"][0]
    for peer in peers:
        if "publickey" not in peer:
            raise ConfigError("[Peer] needs PublicKey")
        allowed = []
        if "allowedips" in peer:
            value, number = peer["allowedips"]
            for item in value.split(","):
                try:
                    allowed.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise ConfigError(f"line {number}: {item.strip()!r} is not a network") from None
        spec = StaticPeer(public_key=_key(*peer["publickey"]), allowed_ips=allowed)
        if "endpoint" in peer:
            spec.endpoint = _endpoint(*peer["endpoint"])
        if "presharedkey" in peer:
            spec.preshared_key = _key(*peer["presharedkey"])
        if "persistentkeepalive" in peer:
            value, number = peer["persistentkeepalive"]
            try:
                spec.persistent_keepalive = int(value) or None
            except ValueError:
                raise ConfigError(f"line {number}: {value!r} is not a number") from None
        config.peers.append(spec)
    return config
