"""WireGuard peers in the lab: Debian's wireguard-go (a peer nobody here wrote) and ours."""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base

from tests.lab import netlab
from tests.lab.netlab import Host, LabProcess


@dataclass(frozen=True)
class Keys:
    private: str
    public: str


def new_keys() -> Keys:
    """A Curve25519 key pair in wg's base64 form (clamped private key)."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    public = crypto_scalarmult_base(bytes(raw))
    return Keys(base64.b64encode(bytes(raw)).decode(), base64.b64encode(public).decode())


def new_psk() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class PeerSpec:
    public_key: str
    allowed_ips: list[str]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


@dataclass
class WgInterface:
    host: Host
    name: str
    keys: Keys
    listen_port: int
    address: str
    peers: list[PeerSpec] = field(default_factory=list)
    process: LabProcess | None = None


def interface_name(host: Host, suffix: str = "") -> str:
    """Unique across namespaces: wireguard-go's UAPI sockets share /var/run/wireguard."""
    return f"wg{host.lab.prefix[2:]}{suffix}"[:15]


def start_wireguard_go(host: Host, keys: Keys, listen_port: int, address: str,
                       peers: list[PeerSpec], mtu: int = 1280, suffix: str = "") -> WgInterface:
    """Run wireguard-go in ``host`` and configure it with ``wg`` (as an operator would)."""
    name = interface_name(host, suffix)
    process = host.spawn(["wireguard-go", "-f", name], name=f"wireguard-go-{name}",
                         env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"})
    netlab.wait_until(lambda: Path(f"/var/run/wireguard/{name}.sock").exists()
                      or not process.alive(), timeout=10, what="wireguard-go UAPI socket")
    if not process.alive():
        raise netlab.LabError(f"wireguard-go exited: {process.log()}")
    key_file = host.lab.workdir / f"{name}.key"
    key_file.write_text(keys.private + "\n")
    argv = ["wg", "set", name, "private-key", str(key_file), "listen-port", str(listen_port)]
    for peer in peers:
        argv += ["peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
        if peer.endpoint:
            argv += ["endpoint", peer.endpoint]
        if peer.preshared_key:
            psk_file = host.lab.workdir / f"{name}-{len(argv)}.psk"
            psk_file.write_text(peer.preshared_key + "\n")
            argv += ["preshared-key", str(psk_file)]
        if peer.persistent_keepalive:
            argv += ["persistent-keepalive", str(peer.persistent_keepalive)]
    host.run(argv)
    host.run(["ip", "address", "add", address, "dev", name])
    host.run(["ip", "link", "set", name, "mtu", str(mtu), "up"])
    return WgInterface(host, name, keys, listen_port, address, list(peers), process)


def write_static_config(path: Path, keys: Keys, listen_port: int, address: str,
                        peers: list[PeerSpec], mtu: int = 1280, tun_name: str = "tun-firezone",
                        extra: dict[str, str] | None = None) -> Path:
    """A wg-quick style file for ``python -m firezone.tunnel.static``."""
    lines = ["[Interface]", f"PrivateKey = {keys.private}", f"ListenPort = {listen_port}",
             f"Address = {address}", f"MTU = {mtu}", f"Name = {tun_name}"]
    for key, value in (extra or {}).items():
        lines.append(f"{key} = {value}")
    for peer in peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}",
                  f"AllowedIPs = {', '.join(peer.allowed_ips)}"]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.preshared_key:
            lines.append(f"PresharedKey = {peer.preshared_key}")
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_firezone_static(host: Host, config: Path, name: str = "firezone-wg") -> LabProcess:
    process = host.spawn([sys.executable, "-m", "firezone.tunnel.static", "--config", str(config)],
                         name=name, cwd=netlab.PROJECT_ROOT)
    netlab.wait_until(lambda: "tunnel up" in process.log() or not process.alive(), timeout=20,
                      what="firezone static tunnel")
    if not process.alive():
        raise netlab.LabError(f"firezone static tunnel exited:\n{process.log()}")
    return process
