"""Lab helper: one node (client or gateway) with a TUN, driven by a signalling stand-in.

Runs :class:`~firezone.tunnel.node_adapter.NodeAdapter` with a real TUN and UDP
socket in a lab namespace, and connects to the test's signalling hub (a Unix
socket, ``tests/lab/signalling.py``) where it plays the portal's part: JSON
lines in, JSON lines out.

In: ``relays`` ``{relays: [{id, addresses, username, password}]}``; ``upsert``
``{peer_id, public_key, psk, local: [ufrag, pwd], remote: [...], role,
allowed_ips}``; ``candidate`` / ``remove_candidate`` ``{peer_id, sdp}``;
``close`` ``{peer_id}``; ``probe`` ``{peer_id, id, dst}`` (an ICMP echo
request from our TUN address into the tunnel); ``status``.

Out: ``hello`` ``{name, public_key, port, addresses}``; ``candidate`` /
``remove_candidate``; ``connected`` / ``path_changed`` ``{peer_id, path,
local, remote, relay_id, t}``; ``failed`` ``{peer_id, reason, t}``;
``relay_failed``; ``no_relays``; ``probe_reply`` ``{peer_id, id, t, path}``
(the matching echo reply came out of the tunnel); ``status``.  ``t`` is
``time.time()`` when the node reported it.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import random
import struct
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet.protocol import ClientFactory  # noqa: E402
from twisted.protocols.basic import LineOnlyReceiver  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from firezone.tunnel.ice import IceCreds  # noqa: E402
from firezone.tunnel.netconfig import configure_interface  # noqa: E402
from firezone.tunnel.node import (  # noqa: E402
    Connected,
    ConnectionFailed,
    IceRole,
    InvalidatedLocalCandidate,
    NewLocalCandidate,
    Node,
    NodeEvent,
    NodeRole,
    NoRelays,
    PathChanged,
    RelayFailed,
    RelayInfo,
)
from firezone.tunnel.node_adapter import NodeAdapter, interface_addresses  # noqa: E402
from firezone.tunnel.tun import TunDevice  # noqa: E402
from firezone.wireguard import generate_private_key  # noqa: E402

MTU = 1280
ECHO_IDENT = 0xF1E0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, sequence: int) -> bytes:
    """An IPv4 ICMP echo request, as ``ping`` would write it to the TUN."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ECHO_IDENT, sequence & 0xFFFF) + b"firezone-probe"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


def echo_reply_sequence(packet: bytes) -> int | None:
    """The sequence number of our echo reply, or None for any other packet."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    offset = (packet[0] & 0x0F) * 4
    icmp = packet[offset:offset + 8]
    if len(icmp) < 8 or icmp[0] != 0:
        return None
    _, _, _, ident, sequence = struct.unpack("!BBHHH", icmp)
    return sequence if ident == ECHO_IDENT else None


class Runner:
    def __init__(self, args: argparse.Namespace, reactor: Any) -> None:
        self.args = args
        self.reactor = reactor
        self.name: str = args.name
        self.tun_ip: str = args.tun_address
        self.node = Node(generate_private_key(), NodeRole(args.role), reactor.seconds(),
                         random.SystemRandom())
        self.tun = TunDevice.open(reactor, self._from_tun, name=args.tun_name)
        self.adapter = NodeAdapter(reactor, self.node, tun_write=self.tun.write,
                                   on_event=self._on_event, on_packet=self._on_packet)
        self.port = self.adapter.listen(args.port)
        configure_interface(self.tun.name, MTU, [f"{self.tun_ip}/32"])
        self.addresses = interface_addresses(exclude=[self.tun.name])
        self.adapter.set_host_addresses(self.addresses)
        self.tun.start_reading()
        self.signal: SignalProtocol | None = None
        self.probes: dict[int, str] = {}

    def _from_tun(self, packets: list[bytes]) -> None:
        self.adapter.packets_from_tun(packets)

    def send(self, message: dict[str, Any]) -> None:
        if self.signal is not None:
            self.signal.sendLine(json.dumps(message).encode())

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "name": self.name, "port": self.port,
                "public_key": base64.b64encode(self.node.public_key).decode(),
                "addresses": self.addresses}

    # -- node -> hub -----------------------------------------------------------------------

    def _on_event(self, event: NodeEvent) -> None:
        now = time.time()
        message: dict[str, Any]
        if isinstance(event, NewLocalCandidate):
            message = {"type": "candidate", "peer_id": event.peer_id, "sdp": event.sdp}
        elif isinstance(event, InvalidatedLocalCandidate):
            message = {"type": "remove_candidate", "peer_id": event.peer_id, "sdp": event.sdp}
        elif isinstance(event, Connected | PathChanged):
            message = {"type": "connected" if isinstance(event, Connected) else "path_changed",
                       "peer_id": event.peer_id, "path": str(event.path),
                       "local": event.local.encode(), "remote": event.remote.encode(),
                       "relay_id": event.relay_id, "t": now}
        elif isinstance(event, ConnectionFailed):
            message = {"type": "failed", "peer_id": event.peer_id, "reason": event.reason,
                       "t": now}
        elif isinstance(event, RelayFailed):
            message = {"type": "relay_failed", "relay_id": event.relay_id,
                       "reason": event.reason, "t": now}
        elif isinstance(event, NoRelays):
            message = {"type": "no_relays", "t": now}
        else:
            return
        if not isinstance(event, NewLocalCandidate | InvalidatedLocalCandidate):
            print(f"event {message}", flush=True)
        self.send(message)

    def _on_packet(self, peer_id: str, packet: bytes) -> None:
        sequence = echo_reply_sequence(packet)
        if sequence is not None and self.probes.pop(sequence, None) == peer_id:
            self.send({"type": "probe_reply", "peer_id": peer_id, "id": sequence,
                       "t": time.time(), "path": str(self.node.path(peer_id))})

    # -- hub -> node -----------------------------------------------------------------------

    def command(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        adapter = self.adapter
        if kind == "relays":
            adapter.update_relays([
                RelayInfo(r["id"], [(a[0], int(a[1])) for a in r["addresses"]],
                          r["username"], r["password"]) for r in message["relays"]])
        elif kind == "upsert":
            allowed = list(message["allowed_ips"])
            adapter.upsert_connection(
                message["peer_id"], base64.b64decode(message["public_key"]),
                base64.b64decode(message["psk"]) if message.get("psk") else None,
                IceCreds(*message["local"]), IceCreds(*message["remote"]),
                IceRole(message["role"]), allowed)
            adapter.flush()  # the first checks leave before the (slower) route change
            configure_interface(self.tun.name, MTU, [], allowed)
        elif kind == "candidate":
            adapter.add_remote_candidate(message["peer_id"], message["sdp"])
        elif kind == "remove_candidate":
            adapter.remove_remote_candidate(message["peer_id"], message["sdp"])
        elif kind == "close":
            adapter.close_connection(message["peer_id"])
        elif kind == "probe":
            sequence = int(message["id"]) & 0xFFFF
            self.probes[sequence] = message["peer_id"]
            adapter.packets_from_tun([echo_request(self.tun_ip, message["dst"], sequence)])
        elif kind == "status":
            self.send(self.status())
        else:
            print(f"unknown command {message!r}", flush=True)

    def status(self) -> dict[str, Any]:
        node = self.node
        relays = {rid: {"allocated": node.relays.allocated(rid), "rtt": node.relays.rtt(rid)}
                  for rid in node.relays.ids()}
        connections = {pid: {"path": str(node.path(pid)) if node.path(pid) else None,
                             "relay_id": node.connection_relay(pid)}
                       for pid in node.connection_ids()}
        return {"type": "status", "relays": relays, "connections": connections,
                "stats": node.stats.as_dict(), "device": node.device.stats.as_dict(),
                "adapter": asdict(self.adapter.stats), "pool": asdict(node.relays.stats),
                "t": time.time()}


class SignalProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def connectionMade(self) -> None:
        self.runner.signal = self
        self.runner.send(self.runner.hello())

    def lineReceived(self, line: bytes) -> None:
        try:
            self.runner.command(json.loads(line))
        except Exception as e:  # a bad command must not kill the node under test
            print(f"command failed: {e!r}: {line[:200]!r}", flush=True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.runner.signal = None
        if self.runner.reactor.running:
            self.runner.reactor.stop()


class SignalFactory(ClientFactory):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def buildProtocol(self, addr: Any) -> SignalProtocol:
        return SignalProtocol(self.runner)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        print(f"signalling hub unreachable: {reason.getErrorMessage()}", flush=True)
        self.runner.reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--role", choices=["client", "gateway"], required=True)
    parser.add_argument("--signal", required=True, help="Unix socket of the hub")
    parser.add_argument("--tun-address", required=True)
    parser.add_argument("--tun-name", default="tun-firezone")
    parser.add_argument("--port", type=int, default=52625)
    args = parser.parse_args()
    from twisted.internet import reactor

    runner = Runner(args, reactor)
    print(f"node {runner.name} up: udp/{runner.port} {runner.addresses}", flush=True)
    reactor.connectUNIX(args.signal, SignalFactory(runner))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
