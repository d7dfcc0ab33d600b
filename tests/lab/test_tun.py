"""The TUN device works for real: configured by pyroute2, read by the reactor, written back."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.lab import netlab
from tests.lab.netlab import Lab

HERE = Path(__file__).parent


class TunDeviceTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = netlab.unavailable_reason(tools=["ping"])
        if reason is None and not Path("/dev/net/tun").exists():
            reason = "no /dev/net/tun on this machine"
        if reason:
            raise SkipTest(reason)
        self.lab = Lab("tun")
        self.addCleanup(self.lab.teardown)

    def test_ping_answered_through_tun(self) -> None:
        """A ping routed into the TUN is read by the reactor and the reply reaches ping."""
        host = self.lab.add_host("h")
        echo = host.python(HERE / "tun_echo.py", "--lifetime", "20")
        netlab.wait_until(lambda: "ready" in echo.log() or not echo.alive(), what="tun_echo")
        self.assertIn("ready tun-firezone", echo.log())
        mtu = host.sh("cat /sys/class/net/tun-firezone/mtu").strip()
        self.assertEqual(mtu, "1280")
        out = host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.9"]).stdout.decode()
        self.assertIn("3 received", out)
