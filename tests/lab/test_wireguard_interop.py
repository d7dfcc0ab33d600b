"""Our WireGuard against Debian's wireguard-go, a WireGuard nobody here wrote."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.lab import netlab
from tests.lab.netlab import Host, Lab
from tests.lab.relay_process import metric_value, metrics
from tests.lab.wg import (
    Keys,
    PeerSpec,
    new_keys,
    new_psk,
    start_wireguard_go,
    write_static_config,
)

HERE = Path(__file__).parent
OURS, THEIRS = "100.64.0.1", "100.64.0.2"
HEALTH = 18081
BLOB = 20 * 1024 * 1024


class WireGuardInteropTests(SynchronousTestCase):
    """firezone.tunnel.static in host a, wireguard-go in host b, through a router."""

    def setUp(self) -> None:
        reason = netlab.unavailable_reason(tools=["wireguard-go", "wg", "ping", "tcpdump"])
        if reason is None and not Path("/dev/net/tun").exists():
            reason = "no /dev/net/tun on this machine"
        if reason:
            raise SkipTest(reason)
        self.lab = Lab("wg")
        self.addCleanup(self.lab.teardown)
        hosts = netlab.star(self.lab, ["a", "b"])
        self.a, self.b = hosts["a"], hosts["b"]
        self.ours, self.theirs = new_keys(), new_keys()

    def start(self, psk: str | None = None, ours_initiates: bool = True,
              their_view_of_us: Keys | None = None, our_psk: str | None = None,
              extra: dict[str, str] | None = None) -> None:
        """wireguard-go knows our endpoint only when it is to initiate."""
        seen = their_view_of_us or self.ours
        start_wireguard_go(self.b, self.theirs, 51820, f"{THEIRS}/24", [PeerSpec(
            seen.public, [f"{OURS}/32"],
            None if ours_initiates else f"{self.a.address()}:51820", psk)])
        config = write_static_config(
            self.lab.workdir / "ours.conf", self.ours, 51820, f"{OURS}/32",
            [PeerSpec(self.theirs.public, [f"{THEIRS}/32"],
                      f"{self.b.address()}:51820" if ours_initiates else None,
                      our_psk if our_psk is not None else psk)], extra=extra)
        self.process = self.a.spawn(
            [sys.executable, "-m", "firezone.tunnel.static", "--config", str(config),
             "--health-check", f"127.0.0.1:{HEALTH}"], name="firezone-wg", cwd=netlab.PROJECT_ROOT)
        netlab.wait_until(lambda: "tunnel up" in self.process.log() or not self.process.alive(),
                          timeout=20, what="our tunnel")
        self.assertTrue(self.process.alive(), self.process.log())

    def ping(self, host: Host, target: str, count: int = 3, check: bool = True) -> bool:
        result = host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", target],
                          check=False, timeout=30)
        if check:
            self.assertEqual(result.returncode, 0, result.stdout.decode() + self.lab.logs())
        return result.returncode == 0

    def counter(self, name: str, **labels: str) -> float:
        return metric_value(metrics(self.a, HEALTH), name, **labels)

    def transfer(self, sender: Host, receiver: Host, address: str, size: int = BLOB,
                 seconds: float = 0) -> None:
        """A TCP transfer through the tunnel; both ends agree on its sha256."""
        server = receiver.python(HERE / "tcp_blob.py", "serve", "--bind", address, "--port", "5201")
        netlab.wait_until(lambda: "listening" in server.log(), what="blob server")
        out = sender.run([sys.executable, str(HERE / "tcp_blob.py"), "send", "--to",
                          f"{address}:5201", "--size", str(size), "--seconds", str(seconds)],
                         timeout=120).stdout.decode()
        netlab.wait_until(lambda: "received" in server.log() or not server.alive(),
                          timeout=30, what="blob received")
        _, sent_bytes, sent_hash = out.split()
        match = re.search(r"received (\d+) ([0-9a-f]{64})", server.log())
        self.assertIsNotNone(match, server.log())
        assert match is not None
        got_bytes, got_hash = match.groups()
        self.assertEqual((got_bytes, got_hash), (sent_bytes, sent_hash))
        self.assertEqual(int(got_bytes), size)

    def test_ours_initiates_with_psk(self) -> None:
        """We initiate with a preshared key; pings pass both ways."""
        self.start(psk=new_psk(), ours_initiates=True)
        self.ping(self.a, THEIRS)
        self.ping(self.b, OURS)
        self.assertGreaterEqual(self.counter("wireguard_handshakes_total"), 1)

    def test_ours_responds_without_psk(self) -> None:
        """wireguard-go initiates without a preshared key; we answer; pings pass both ways."""
        self.start(psk=None, ours_initiates=False)
        self.ping(self.b, OURS)
        self.ping(self.a, THEIRS)
        self.assertGreaterEqual(self.counter("wireguard_received_total", kind="initiations"), 1)

    def test_tcp_20mb_both_ways(self) -> None:
        """20 MB over TCP each way through the tunnel arrive with the same sha256."""
        self.start(psk=new_psk())
        self.transfer(self.a, self.b, THEIRS)
        self.transfer(self.b, self.a, OURS)

    def test_rekey_keeps_transfer_going(self) -> None:
        """With a 2 s rekey interval a paced 8 s transfer spans a rekey and arrives intact.

        Initiations are spaced at least REKEY_TIMEOUT (5 s) apart, so 8 s hold two sessions.
        """
        self.start(psk=new_psk(), extra={"RekeyAfterTime": "2"})
        self.transfer(self.a, self.b, THEIRS, size=4 * 1024 * 1024, seconds=8)
        self.assertGreaterEqual(self.counter("wireguard_handshakes_total"), 2)

    def test_wrong_public_key_rejected(self) -> None:
        """wireguard-go has the wrong key for us: its initiations fail MAC1 and are counted."""
        self.start(ours_initiates=False, their_view_of_us=new_keys())
        self.assertFalse(self.ping(self.b, OURS, count=2, check=False))
        self.assertGreaterEqual(self.counter("wireguard_rejected_total", reason="bad_mac1"), 1)

    def test_wrong_psk_rejected(self) -> None:
        """Different preshared keys: their response does not decrypt here, counted."""
        self.start(psk=new_psk(), our_psk=new_psk(), ours_initiates=True)
        self.assertFalse(self.ping(self.a, THEIRS, count=2, check=False))
        self.assertFalse(self.ping(self.b, OURS, count=1, check=False))
        text = metrics(self.a, HEALTH)
        failures = sum(metric_value(text, "wireguard_rejected_total", reason=r)
                       for r in ("decrypt_failed", "bad_key"))
        self.assertGreaterEqual(failures, 1, text)

    def test_replayed_and_tampered_packets_rejected(self) -> None:
        """Captured transport packets sent again are replays; modified ones fail to decrypt."""
        self.start(psk=new_psk())
        self.ping(self.a, THEIRS, count=1)
        pcap = self.lab.workdir / "transport.pcap"
        capture = self.a.spawn(["tcpdump", "-i", "eth0", "-U", "-w", str(pcap), "-c", "5",
                                f"ip dst {self.a.address()} and udp dst port 51820 "
                                "and udp[8] = 4"], name="tcpdump")
        time.sleep(0.5)
        self.ping(self.b, OURS, count=5)
        capture.wait(10)
        replay_before = self.counter("wireguard_rejected_total", reason="replay")
        self.b.run([sys.executable, str(HERE / "udp_replay.py"), "--pcap", str(pcap),
                    "--to", f"{self.a.address()}:51820"])
        self.b.run([sys.executable, str(HERE / "udp_replay.py"), "--pcap", str(pcap),
                    "--to", f"{self.a.address()}:51820", "--tamper"])
        time.sleep(0.3)
        self.assertGreaterEqual(
            self.counter("wireguard_rejected_total", reason="replay") - replay_before, 5)
        self.assertGreaterEqual(self.counter("wireguard_rejected_total", reason="decrypt_failed"),
                                5)
        self.ping(self.a, THEIRS, count=1)  # the session survived

    def test_handshake_flood_engages_cookies(self) -> None:
        """Hundreds of initiations per second put us under load: we answer with cookies."""
        self.start(psk=new_psk())
        out = self.b.run([sys.executable, str(HERE / "wg_flood.py"), "--to",
                          f"{self.a.address()}:51820", "--public-key", self.ours.public,
                          "--count", "400"], timeout=60).stdout.decode()
        self.assertGreater(self.counter("wireguard_rejected_total", reason="cookie_sent"), 0, out)
        self.assertNotIn("cookies 0", out)
