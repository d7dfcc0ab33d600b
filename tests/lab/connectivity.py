"""Lab helper: client and gateway nodes behind no NAT, cone NATs or symmetric NATs, plus
our relays, wired to a signalling hub.  Shared by ``tests/lab/test_connectivity.py`` and
``bench/connect.py``.

Topology (one ``star``, so several scenarios can run side by side)::

    <kind>-c ---+                              +--- relay1 (198.18.x.2, twistd firezone-relay)
                |          inet router         |
    <kind>-g ---+---- 198.18.0.0/15 segments --+--- relay2 ...

    host:   the nodes sit on the star itself (public addresses, no NAT)
    srflx:  each node sits on its own LAN (192.0.2.0/28 slices) behind a router
            that masquerades (endpoint-independent mapping, "cone")
    relay:  the same with ``fully-random`` port mapping ("symmetric")

NAT routers also drop unsolicited inbound UDP addressed to themselves before
conntrack confirms it, as a home router's WAN firewall does.  Without that,
Linux answers an early hole-punching packet with ICMP and keeps a conntrack
entry for it, which forces the router's own later outbound packet onto another
port (a source-port clash), so a cone NAT would behave like a symmetric one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firezone.credentials import ice_credentials
from tests.lab import netlab
from tests.lab.netlab import Host, Lab, LabProcess
from tests.lab.relay_process import credentials, start_firezone_relay
from tests.lab.signalling import HubError, SignallingHub

HERE = Path(__file__).resolve().parent
NODE_RUNNER = HERE / "node_runner.py"
CLIENT_TUN, GATEWAY_TUN = "100.64.0.1", "100.64.0.2"
NAT_FOR = {"host": None, "srflx": "cone", "relay": "symmetric"}
KINDS = tuple(NAT_FOR)


@dataclass
class Side:
    name: str
    host: Host
    router: Host | None
    tun_ip: str
    process: LabProcess | None = None
    hello: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return str(self.hello["public_key"])


@dataclass
class Scenario:
    kind: str
    client: Side
    gateway: Side

    @property
    def routers(self) -> list[Host]:
        return [r for r in (self.client.router, self.gateway.router) if r is not None]


@dataclass
class Relay:
    id: str
    host: Host
    ip: str
    health_port: int
    process: LabProcess | None = None


def build(lab: Lab, kinds: tuple[str, ...] | list[str], relays: int = 1
          ) -> tuple[dict[str, Scenario], list[Relay], Host]:
    """Hosts for each scenario kind and ``relays`` relays (not started); returns the
    scenarios, the relays and the ``inet`` router."""
    names: list[str] = []
    for kind in kinds:
        if NAT_FOR[kind] is None:
            names += [f"{kind}-c", f"{kind}-g"]
        else:
            names += [f"{kind}-nc", f"{kind}-ng"]
    relay_names = [f"relay{i + 1}" for i in range(relays)]
    hosts = netlab.star(lab, names + relay_names)
    scenarios: dict[str, Scenario] = {}
    lan = 0
    for kind in kinds:
        nat = NAT_FOR[kind]
        sides: list[Side] = []
        for letter, tun_ip in (("c", CLIENT_TUN), ("g", GATEWAY_TUN)):
            name = f"{kind}-{letter}"
            if nat is None:
                sides.append(Side(name, hosts[name], None, tun_ip))
                continue
            router = hosts[f"{kind}-n{letter}"]
            router.set_forwarding(True)
            host = lab.add_host(name)
            base = lan * 16
            lan += 1
            lab.connect(host, router, [f"192.0.2.{base + 2}/28"], [f"192.0.2.{base + 1}/28"])
            host.add_route("default", via=f"192.0.2.{base + 1}")
            lab.add_nat(router, "eth0", nat)
            add_wan_firewall(router, "eth0")
            sides.append(Side(name, host, router, tun_ip))
        scenarios[kind] = Scenario(kind, sides[0], sides[1])
    relay_list = [Relay(name, hosts[name], hosts[name].address(), 18080 + i)
                  for i, name in enumerate(relay_names)]
    return scenarios, relay_list, hosts["inet"]


def add_wan_firewall(router: Host, outside: str) -> None:
    """Drop new inbound UDP to the router itself on ``outside`` (before conntrack confirms)."""
    router.nft(
        "table inet fzlab_wan {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{outside}" meta l4proto udp ct state new drop\n'
        "  }\n"
        "}\n"
    )


def start_relays(relays: list[Relay]) -> None:
    for relay in relays:
        relay.process = start_firezone_relay(relay.host, relay.ip, health_port=relay.health_port)


def start_nodes(hub: SignallingHub, nodes: list[tuple[Side, str]], timeout: float = 30.0,
                port: int = 52625) -> None:
    """Start (or restart) the node processes of ``(side, role)`` pairs in parallel and wait
    for each one's hello."""
    marks = {}
    for side, role in nodes:
        if side.process is not None:
            side.process.stop()
        marks[side.name] = hub.mark(side.name)
        side.process = side.host.python(
            NODE_RUNNER, "--name", side.name, "--role", role, "--signal", str(hub.path),
            "--tun-address", side.tun_ip, "--port", str(port), name=f"node-{side.name}")
    for side, _ in nodes:
        try:
            side.hello = hub.wait_type(side.name, "hello", timeout, after=marks[side.name])
        except HubError as e:
            log = side.process.log() if side.process is not None else ""
            raise HubError(f"{e}\n{log}") from None


def give_relays(hub: SignallingHub, sides: list[Side], relays: list[Relay]) -> None:
    """Send every node its relays and wait for the allocations (and RTTs)."""
    for side in sides:
        hub.send(side.name, relay_config(relays, side.name))
    for side in sides:
        wait_allocated(hub, side, [r.id for r in relays])


def relay_config(relays: list[Relay], device: str) -> dict[str, Any]:
    """The ``relays`` message for one node: TURN credentials minted for it (REFERENCE 2.5)."""
    username, password = credentials(device=device)
    return {"type": "relays", "relays": [
        {"id": r.id, "addresses": [[r.ip, 3478]], "username": username, "password": password}
        for r in relays]}


def wait_allocated(hub: SignallingHub, side: Side, relay_ids: list[str],
                   timeout: float = 20.0) -> dict[str, Any]:
    """Poll the node until every relay has an allocation and a measured RTT."""
    deadline = time.monotonic() + timeout
    while True:
        status = hub.request(side.name, {"type": "status"}, "status")
        relays = status["relays"]
        if all(relays.get(r, {}).get("allocated") and relays[r].get("rtt") is not None
               for r in relay_ids):
            return status
        if time.monotonic() > deadline:
            raise HubError(f"{side.name}: relays not allocated: {json.dumps(relays)}")
        time.sleep(0.1)


def start_scenario(hub: SignallingHub, scenario: Scenario, relays: list[Relay],
                   port: int = 52625) -> None:
    """Start both nodes, give them the relays and wait for their allocations."""
    start_nodes(hub, [(scenario.client, "client"), (scenario.gateway, "gateway")], port=port)
    give_relays(hub, [scenario.client, scenario.gateway], relays)


def upserts(scenario: Scenario, psk: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The portal's messages for a new authorization: (to the gateway, to the client)."""
    client, gateway = scenario.client, scenario.gateway
    creds = ice_credentials(client.name, client.public_key, gateway.name, gateway.public_key)
    initiator = [creds.initiator_username, creds.initiator_password]
    receiver = [creds.receiver_username, creds.receiver_password]
    to_gateway = {"type": "upsert", "peer_id": client.name, "public_key": client.public_key,
                  "psk": psk, "local": receiver, "remote": initiator, "role": "controlled",
                  "allowed_ips": [f"{client.tun_ip}/32"]}
    to_client = {"type": "upsert", "peer_id": gateway.name, "public_key": gateway.public_key,
                 "psk": psk, "local": initiator, "remote": receiver, "role": "controlling",
                 "allowed_ips": [f"{gateway.tun_ip}/32"]}
    return to_gateway, to_client


def connect(hub: SignallingHub, scenario: Scenario, psk: str) -> None:
    """Upsert on both sides, gateway first (as the portal does)."""
    to_gateway, to_client = upserts(scenario, psk)
    hub.send(scenario.gateway.name, to_gateway)
    hub.send(scenario.client.name, to_client)


def close(hub: SignallingHub, scenario: Scenario) -> None:
    hub.send(scenario.client.name, {"type": "close", "peer_id": scenario.gateway.name})
    hub.send(scenario.gateway.name, {"type": "close", "peer_id": scenario.client.name})


def path_of(hub: SignallingHub, side: Side, peer: str) -> str | None:
    status = hub.request(side.name, {"type": "status"}, "status")
    connection = status["connections"].get(peer)
    return connection["path"] if connection else None


def wait_path(hub: SignallingHub, side: Side, peer: str, expected: str,
              timeout: float = 20.0) -> None:
    """Poll until the node's nominated path to ``peer`` is of kind ``expected``."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        seen = path_of(hub, side, peer)
        if seen == expected:
            return
        if time.monotonic() > deadline:
            raise HubError(f"{side.name}: path to {peer} is {seen}, not {expected}")
        time.sleep(0.1)


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]
