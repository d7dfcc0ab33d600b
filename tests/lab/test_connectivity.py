"""Connectivity in the lab: two nodes (real processes, TUNs, one UDP socket each) find the
best path through no NAT, cone NATs or symmetric NATs with our relay, carry TCP over
WireGuard on it, survive loss and a dead relay; and our TURN client works with coturn."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from firezone.tunnel.ice import CLIENT_DEFAULT
from tests.lab import connectivity as cx
from tests.lab import netlab
from tests.lab.netlab import Host, Lab
from tests.lab.relay_process import start_coturn
from tests.lab.signalling import SignallingHub

HERE = Path(__file__).resolve().parent
BLOB = 10 * 1024 * 1024


def new_psk() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def tcp_retransmissions(host: Host) -> int:
    """``Tcp: RetransSegs`` of ``/proc/net/snmp`` inside ``host`` (per namespace)."""
    lines = [line.split() for line in host.sh("cat /proc/net/snmp").splitlines()
             if line.startswith("Tcp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["RetransSegs"])


class LabCase(SynchronousTestCase):
    tools: tuple[str, ...] = ("ping",)

    def setUp(self) -> None:
        reason = netlab.unavailable_reason(need_nft=True, tools=list(self.tools))
        if reason is None and not Path("/dev/net/tun").exists():
            reason = "no /dev/net/tun on this machine"
        if reason:
            raise SkipTest(reason)
        self.lab = Lab("conn")
        self.addCleanup(self.lab.teardown)
        self.hub = SignallingHub(self.lab.workdir / "hub.sock")
        self.addCleanup(self.hub.close)

    def diagnostics(self) -> str:
        return self.lab.logs()[-20000:]


class ConnectivityTests(LabCase):
    """Client and gateway nodes with our relay(s), signalling through the test's hub."""

    def scenario(self, kind: str, relays: int = 1) -> cx.Scenario:
        scenarios, self.relays, self.inet = cx.build(self.lab, [kind], relays)
        cx.start_relays(self.relays)
        scenario = scenarios[kind]
        cx.start_scenario(self.hub, scenario, self.relays)
        return scenario

    def connect(self, scenario: cx.Scenario, expected: str) -> None:
        """Upsert both sides; both report Connected and settle on the ``expected`` kind."""
        cx.connect(self.hub, scenario, new_psk())
        try:
            for side, peer in ((scenario.client, scenario.gateway),
                               (scenario.gateway, scenario.client)):
                self.hub.wait_type(side.name, "connected", 30, peer_id=peer.name)
                cx.wait_path(self.hub, side, peer.name, expected)
        except Exception as e:
            self.fail(f"{e}\n{self.diagnostics()}")

    def ping(self, host: Host, target: str, count: int = 3) -> None:
        result = host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "3", target],
                          check=False, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout.decode() + self.diagnostics())

    def transfer(self, scenario: cx.Scenario, size: int = BLOB, timeout: float = 120) -> None:
        """TCP from the client to the gateway's tunnel address; both ends agree on sha256."""
        gateway, client = scenario.gateway, scenario.client
        server = gateway.host.python(HERE / "tcp_blob.py", "serve", "--bind", gateway.tun_ip,
                                     "--port", "5201", "--timeout", str(timeout))
        netlab.wait_until(lambda: "listening" in server.log(), what="blob server")
        out = client.host.run([sys.executable, str(HERE / "tcp_blob.py"), "send", "--to",
                               f"{gateway.tun_ip}:5201", "--size", str(size), "--timeout",
                               str(timeout)], timeout=timeout + 10, check=False)
        self.assertEqual(out.returncode, 0, out.stderr.decode() + self.diagnostics())
        netlab.wait_until(lambda: "received" in server.log() or not server.alive(),
                          timeout=30, what="blob received")
        _, sent_bytes, sent_hash = out.stdout.decode().split()
        match = re.search(r"received (\d+) ([0-9a-f]{64})", server.log())
        self.assertIsNotNone(match, server.log())
        assert match is not None
        self.assertEqual(match.groups(), (sent_bytes, sent_hash))
        self.assertEqual(int(sent_bytes), size)

    def status(self, side: cx.Side) -> dict[str, object]:
        return self.hub.request(side.name, {"type": "status"}, "status")

    # ------------------------------------------------------------------------------------

    def test_host_path_without_nat(self) -> None:
        """On public addresses the nodes nominate their host candidates; 10 MB of TCP over
        WireGuard on that path arrive intact."""
        scenario = self.scenario("host")
        self.connect(scenario, "host")
        self.transfer(scenario)
        self.assertEqual(cx.path_of(self.hub, scenario.client, scenario.gateway.name), "host")

    def test_srflx_path_through_cone_nats(self) -> None:
        """Each node behind its own cone NAT: the server-reflexive candidates learnt from the
        relay punch through, and the data path does not use the relay."""
        scenario = self.scenario("srflx")
        self.connect(scenario, "srflx")
        self.transfer(scenario)
        self.assertEqual(cx.path_of(self.hub, scenario.gateway, scenario.client.name), "srflx")

    def test_relayed_path_through_symmetric_nats(self) -> None:
        """Both behind symmetric NATs: only the relayed pair works; WireGuard runs over
        ChannelData through our relay and 10 MB arrive intact."""
        scenario = self.scenario("relay")
        self.connect(scenario, "relay")
        self.transfer(scenario)
        self.assertEqual(cx.path_of(self.hub, scenario.client, scenario.gateway.name), "relay")

    def test_transfer_survives_20_percent_loss(self) -> None:
        """With 20 % of all UDP dropped at the internet router, the connection still comes
        up (checks, TURN and handshakes are retried) and TCP delivers 10 MB intact."""
        scenario = self.scenario("host")
        self.lab.add_loss(self.inet, 20)
        self.connect(scenario, "host")
        before = tcp_retransmissions(scenario.client.host)
        self.transfer(scenario, timeout=600)
        # The loss really hit the tunnel: TCP inside it had to retransmit.
        self.assertGreater(tcp_retransmissions(scenario.client.host), before)

    def test_relay_killed_fails_over_to_the_other_relay(self) -> None:
        """Both behind symmetric NATs with two relays; the relay process carrying the path is
        killed.  The client reports the failure within the ICE timeout and the connection
        comes back through the other relay."""
        scenario = self.scenario("relay", relays=2)
        client, gateway = scenario.client, scenario.gateway
        self.connect(scenario, "relay")
        events = [m for m in self.hub.messages(client.name)
                  if m["type"] in ("connected", "path_changed")]
        carrying = events[-1]["relay_id"]
        self.assertIn(carrying, [r.id for r in self.relays], events[-1])
        survivor = next(r.id for r in self.relays if r.id != carrying)
        # Traffic keeps the connection active (idle connections use the 100 s ICE profile).
        pinger = client.host.spawn(["ping", "-i", "0.2", "-w", "120", gateway.tun_ip],
                                   name="ping")
        self.ping(client.host, gateway.tun_ip, count=1)
        mark = self.hub.mark(client.name)
        victim = next(r for r in self.relays if r.id == carrying)
        assert victim.process is not None
        victim.process.popen.kill()
        victim.process.popen.wait(10)
        killed_at = time.time()
        try:
            failure = self.hub.wait_for(
                client.name,
                lambda m: (m["type"] == "relay_failed" and m["relay_id"] == carrying)
                or (m["type"] == "failed" and m["peer_id"] == gateway.name),
                timeout=CLIENT_DEFAULT.timeout + 10, what="failure report", after=mark)
        except Exception as e:
            self.fail(f"{e}\n{self.diagnostics()}")
        self.assertLessEqual(failure["t"] - killed_at, CLIENT_DEFAULT.timeout,
                             json.dumps(failure))
        if failure["type"] == "failed":
            # The connection itself failed: the portal's answer is a fresh one.
            cx.connect(self.hub, scenario, new_psk())
        recovered = self.hub.wait_for(
            client.name,
            lambda m: m["type"] in ("connected", "path_changed") and m["path"] == "relay"
            and m["relay_id"] == survivor,
            timeout=60, what="path through the surviving relay", after=mark)
        self.assertEqual(recovered["peer_id"], gateway.name)
        self.ping(client.host, gateway.tun_ip)
        self.transfer(scenario, size=BLOB // 10)
        status = self.status(client)
        connections = status["connections"]
        assert isinstance(connections, dict)
        self.assertEqual(connections[gateway.name]["relay_id"], survivor)
        pinger.stop()


class CoturnInteropTests(LabCase):
    """Our sans-IO TURN client against coturn's turnserver, a TURN server nobody here wrote."""

    tools = ("turnserver", "turnutils_peer")

    def test_allocate_bind_and_echo_through_coturn(self) -> None:
        """Allocate (401 challenge, then long-term credentials), ChannelBind to
        turnutils_peer, and 50 ChannelData messages come back echoed."""
        hosts = netlab.star(self.lab, ["client", "turn", "peer"])
        turn_ip, peer_ip = hosts["turn"].address(), hosts["peer"].address()
        start_coturn(hosts["turn"], turn_ip, "alice", "wonderland")
        hosts["peer"].spawn(["turnutils_peer", "-L", peer_ip, "-p", "3480"], name="peer")
        time.sleep(0.3)
        out = hosts["client"].run(
            [sys.executable, str(HERE / "turn_probe.py"), "--server", f"{turn_ip}:3478",
             "--peer", f"{peer_ip}:3480", "--username", "alice", "--password", "wonderland",
             "--count", "50"], check=False, timeout=60)
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.assertTrue(result["ok"], json.dumps(result) + self.diagnostics())
        self.assertEqual((result["sent"], result["echoed"]), (50, 50))
        self.assertTrue(str(result["relayed"]).startswith(f"{turn_ip}:"))
        self.assertTrue(str(result["srflx"]).startswith(f"{hosts['client'].address()}:"))

    def test_wrong_password_fails_cleanly(self) -> None:
        """coturn refuses a wrong password; the client reports an authentication failure."""
        hosts = netlab.star(self.lab, ["client", "turn"])
        turn_ip = hosts["turn"].address()
        start_coturn(hosts["turn"], turn_ip, "alice", "wonderland")
        out = hosts["client"].run(
            [sys.executable, str(HERE / "turn_probe.py"), "--server", f"{turn_ip}:3478",
             "--peer", "198.18.9.9:3480", "--username", "alice", "--password", "mad-hatter",
             "--count", "1"], check=False, timeout=60)
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.assertFalse(result["ok"])
        self.assertTrue(str(result["error"]).startswith("authentication"), json.dumps(result))
