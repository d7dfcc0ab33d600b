"""Our relay against TURN clients nobody here wrote: coturn's turnutils."""

from __future__ import annotations

import shutil

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.lab import netlab
from tests.lab.netlab import Lab
from tests.lab.relay_process import (
    credentials,
    lost_packets,
    metric_value,
    metrics,
    start_firezone_relay,
)


class RelayWithCoturnClientsTests(SynchronousTestCase):
    """turnutils_stunclient / uclient / peer through firezone-relay in the lab."""

    def setUp(self) -> None:
        reason = netlab.unavailable_reason(tools=["turnutils_uclient", "turnutils_peer"])
        if reason:
            raise SkipTest(reason)
        self.lab = Lab("relay")
        self.addCleanup(self.lab.teardown)
        hosts = netlab.star(self.lab, ["client", "relay", "peer"])
        self.client, self.relay_host, self.peer = hosts["client"], hosts["relay"], hosts["peer"]
        self.relay_ip = self.relay_host.address()
        self.relay = start_firezone_relay(self.relay_host, self.relay_ip,
                                          extra=("--allocations-per-username", "2"))
        self.peer.spawn(["turnutils_peer", "-L", self.peer.address(), "-p", "3480"], name="peer")

    def uclient(self, *args: str, password: str | None = None) -> str:
        username, good = credentials()
        result = self.client.run(
            ["turnutils_uclient", "-u", username, "-w", password or good, *args, self.relay_ip],
            check=False, timeout=60)
        return result.stdout.decode() + result.stderr.decode()

    def test_stun_binding_mapped_address(self) -> None:
        """turnutils_stunclient learns its own address from an unauthenticated BINDING."""
        out = self.client.run(["turnutils_stunclient", self.relay_ip]).stdout.decode()
        self.assertIn(f"UDP reflexive addr: {self.client.address()}:", out)

    def test_relay_to_peer_without_loss(self) -> None:
        """Allocate, ChannelBind and 200 ChannelData messages to the peer and back: none lost."""
        out = self.uclient("-e", self.peer.address(), "-r", "3480", "-n", "200", "-l", "1200",
                           "-z", "5", "-c")
        sent, lost = lost_packets(out)
        self.assertEqual((sent, lost), (200, 0), out[-1500:])
        text = metrics(self.relay_host)
        self.assertGreaterEqual(
            metric_value(text, "relay_packets_total", datapath="userspace", direction="to_peer"),
            200)
        self.assertGreaterEqual(
            metric_value(text, "relay_packets_total", datapath="userspace",
                         direction="to_client"), 200)

    def test_client_to_client_mode(self) -> None:
        """-y: two allocations on this relay send to each other through their channels."""
        out = self.uclient("-y", "-c", "-n", "200", "-l", "1200", "-z", "5")
        sent, lost = lost_packets(out)
        self.assertGreaterEqual(sent, 200)
        self.assertEqual(lost, 0, out[-1500:])

    def test_wrong_password_refused(self) -> None:
        """A password not derived from the stamp secret gets no allocation."""
        out = self.uclient("-e", self.peer.address(), "-r", "3480", "-n", "5", "-c",
                           password="wrong-password")
        self.assertIn("Cannot complete Allocation", out)
        text = metrics(self.relay_host)
        self.assertGreater(
            metric_value(text, "relay_responses_total", message_type="allocate",
                         response_class="error", error_code="401"), 0)
        self.assertEqual(
            metric_value(text, "relay_responses_total", message_type="allocate",
                         response_class="success"), 0)

    def test_health_ready_standalone(self) -> None:
        """Standalone, the relay is ready as soon as its sockets are bound."""
        out = self.relay_host.run([shutil.which("python3") or "python3", "-c",
                                   "import urllib.request;print(urllib.request.urlopen("
                                   "'http://127.0.0.1:18080/readyz').status)"]).stdout
        self.assertEqual(out.strip(), b"200")
