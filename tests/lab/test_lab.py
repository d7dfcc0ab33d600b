"""Self-tests of the lab: its hosts behave like real networks and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.lab import netlab
from tests.lab.netlab import Lab, LabError

HERE = Path(__file__).parent


def _require(need_nft: bool = False) -> None:
    reason = netlab.unavailable_reason(need_nft=need_nft, tools=["ping"])
    if reason:
        raise SkipTest(reason)


def routed_pair(lab: Lab) -> tuple[netlab.Host, netlab.Host, netlab.Host]:
    """a -- router -- b, IPv4 and IPv6, default routes through the router."""
    a, router, b = lab.add_host("a"), lab.add_router("r"), lab.add_host("b")
    lab.connect(a, router, ["198.18.1.2/24", "2001:db8:1::2/64"],
                ["198.18.1.1/24", "2001:db8:1::1/64"])
    lab.connect(router, b, ["198.18.2.1/24", "2001:db8:2::1/64"],
                ["198.18.2.2/24", "2001:db8:2::2/64"])
    a.add_route("default", via="198.18.1.1")
    a.add_route("default", via="2001:db8:1::1")
    b.add_route("default", via="198.18.2.1")
    b.add_route("default", via="2001:db8:2::1")
    return a, router, b


def natted_client(lab: Lab, kind: str) -> tuple[netlab.Host, netlab.Host, netlab.Host]:
    """client -- NAT router -- internet host holding two server addresses."""
    client, router, internet = lab.add_host("c"), lab.add_router("nat"), lab.add_host("inet")
    lab.connect(client, router, ["198.51.100.2/24"], ["198.51.100.1/24"])
    link = lab.connect(router, internet, ["203.0.113.1/24"],
                       ["203.0.113.10/24", "203.0.113.11/24"])
    client.add_route("default", via="198.51.100.1")
    lab.add_nat(router, link.a_if, kind)
    return client, router, internet


def observed_ports(lab: Lab, client: netlab.Host, internet: netlab.Host) -> list[tuple[str, int]]:
    servers = [
        internet.python(HERE / "udp_echo.py", "--bind", ip, "--port", "5000", "--lifetime", "20")
        for ip in ("203.0.113.10", "203.0.113.11")
    ]
    netlab.wait_until(lambda: all("listening" in s.log() for s in servers), what="echo servers")
    out = client.run(
        [os.sys.executable, str(HERE / "udp_probe.py"), "--port", "40000",
         "203.0.113.10:5000", "203.0.113.11:5000"],
        timeout=20,
    ).stdout.decode()
    seen = []
    for line in out.splitlines():
        _ip, _port, seen_ip, seen_port = line.split()
        seen.append((seen_ip, int(seen_port)))
    return seen


class LabNetworkTests(SynchronousTestCase):
    """The lab's hosts, routers and NATs behave like the real thing."""

    def setUp(self) -> None:
        _require(need_nft=True)
        self.lab = Lab(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.lab.teardown)

    def test_ping_across_router(self) -> None:
        """A host reaches another host two hops away through a router, over IPv4 and IPv6."""
        a, _router, _b = routed_pair(self.lab)
        a.run(["ping", "-c", "1", "-W", "2", "198.18.2.2"])
        a.run(["ping", "-6", "-c", "1", "-W", "2", "2001:db8:2::2"])

    def test_no_route_without_forwarding(self) -> None:
        """With forwarding off the router drops the traffic: the ping above is not a tautology."""
        a, router, _b = routed_pair(self.lab)
        router.set_forwarding(False)
        result = a.run(["ping", "-c", "1", "-W", "1", "198.18.2.2"], check=False)
        self.assertNotEqual(result.returncode, 0)

    def test_cone_nat_keeps_source_port(self) -> None:
        """Through a cone NAT one inside socket has one outside port for every destination."""
        client, _router, internet = natted_client(self.lab, "cone")
        seen = observed_ports(self.lab, client, internet)
        self.assertEqual(seen, [("203.0.113.1", 40000), ("203.0.113.1", 40000)])

    def test_symmetric_nat_changes_port_per_destination(self) -> None:
        """Through a symmetric NAT each destination sees a different outside port."""
        client, _router, internet = natted_client(self.lab, "symmetric")
        seen = observed_ports(self.lab, client, internet)
        self.assertEqual([ip for ip, _ in seen], ["203.0.113.1", "203.0.113.1"])
        self.assertNotEqual(seen[0][1], seen[1][1])

    def test_loss_drops_udp(self) -> None:
        """A 100% loss rule on the router stops UDP but not ICMP."""
        a, router, b = routed_pair(self.lab)
        self.lab.add_loss(router, 100)
        b.python(HERE / "udp_echo.py", "--port", "5000", "--lifetime", "10")
        result = a.run([os.sys.executable, str(HERE / "udp_probe.py"), "--port", "40001",
                        "198.18.2.2:5000"], check=False, timeout=20)
        self.assertNotEqual(result.returncode, 0)
        a.run(["ping", "-c", "1", "-W", "2", "198.18.2.2"])


class LabTeardownTests(SynchronousTestCase):
    """Teardown leaves no namespace, interface or process behind, whatever happened."""

    def setUp(self) -> None:
        _require()

    def _interfaces_in_root(self) -> set[str]:
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, check=True)
        lines = out.stdout.decode().splitlines()
        return {line.split(":")[1].strip().split("@")[0] for line in lines}

    def test_teardown_removes_everything(self) -> None:
        """After teardown the namespaces, their veths and the processes are gone."""
        before = self._interfaces_in_root()
        lab = Lab("teardown")
        a, _router, _b = routed_pair(lab)
        process = a.spawn(["sleep", "300"], name="sleeper")
        self.assertEqual(len(lab.namespaces()), 3)
        lab.teardown()
        self.assertEqual(lab.namespaces(), [])
        self.assertFalse(process.alive())
        self.assertEqual(self._interfaces_in_root(), before)
        with self.assertRaises(ProcessLookupError):
            os.kill(process.pid, 0)

    def test_teardown_on_failure(self) -> None:
        """An exception inside ``with Lab()`` still tears everything down."""
        prefix = ""
        with self.assertRaises(ZeroDivisionError):
            with Lab("failure") as lab:
                prefix = lab.prefix
                lab.add_host("x").spawn(["sleep", "300"])
                1 / 0  # noqa: B018
        self.assertEqual(netlab.lab_namespaces(prefix), [])

    def test_teardown_all_at_exit(self) -> None:
        """The atexit/signal hook tears down labs nobody closed."""
        lab = Lab("forgotten")
        lab.add_host("y")
        netlab.teardown_all()
        self.assertEqual(lab.namespaces(), [])

    def test_refuses_addresses_outside_allowed_ranges(self) -> None:
        """Tests may only use the documentation and benchmarking ranges."""
        with Lab("ranges") as lab:
            a, b = lab.add_host("a"), lab.add_host("b")
            with self.assertRaises(LabError):
                lab.connect(a, b, ["10.0.0.1/24"], ["10.0.0.2/24"])
