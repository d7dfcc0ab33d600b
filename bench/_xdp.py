"""XDP pieces for the relay benchmark's ``firezone-xdp`` system (``bench/relay.py --xdp``).

With ``bench._lab``'s topology (``gen`` and ``relay`` on one veth) the relay's
program bounces each ChannelData frame back out of ``relay``'s veth to the
peer address on ``gen``, where ``_lab``'s nftables counter counts it as for the
other systems.  What differs:

* the relay is ``tests/lab/xdp_relay.py`` (TurnServer + RelayUDP + XdpOffload,
  wired as ``firezone.relay.tap`` wires it), started by :func:`start_xdp_relay`;
* :func:`prepare` makes veth carry complete checksums and, in native mode,
  gives ``gen``'s veth the XDP program native ``XDP_TX`` on veth needs;
* the relay process spends no CPU per packet: the program runs in the softirq
  of whoever sends into the veth (trafgen's CPU).  Its own cost per packet is
  what the kernel counts with ``kernel.bpf_stats_enabled=1``
  (:func:`bpf_stats` / :func:`prog_stats`: ``run_time_ns / run_cnt``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _lab  # noqa: E402
from firezone.relay.ebpf.syscall import RunStats, prog_run_stats  # noqa: E402
from tests.lab import netlab  # noqa: E402
from tests.lab.netlab import LabProcess  # noqa: E402
from tests.lab.relay_process import STAMP_SECRET, metric_value, metrics  # noqa: E402

RUNNER = ROOT / "tests" / "lab" / "xdp_relay.py"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
MODES = ("generic", "driver")


@dataclass
class XdpRelay:
    process: LabProcess
    prog_fd: int
    health_port: int

    def stats(self) -> RunStats:
        return prog_stats(self)

    def counters(self, topology: _lab.RelayTopology) -> dict[str, float]:
        """Packets relayed per datapath and direction, from the relay's /metrics."""
        text = metrics(topology.relay, self.health_port)
        return {f"{path}_{d}": metric_value(text, "relay_packets_total", datapath=path,
                                            direction=d)
                for path in ("xdp", "userspace") for d in ("to_peer", "to_client")}


def prepare(topology: _lab.RelayTopology, mode: str) -> None:
    """Checksum offload off on both ends; in native mode an XDP_PASS program on ``gen``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    topology.gen.run(["ethtool", "-K", topology.gen_if, "tx", "off"])
    topology.relay.run(["ethtool", "-K", topology.relay_if, "tx", "off"])
    state = topology.gen.sh(f"ip link show {topology.gen_if}")
    if mode == "driver" and "prog/xdp" not in state:
        topology.gen.run([sys.executable, "-c",
                          "import socket, sys\n"
                          "from pyroute2 import IPRoute\n"
                          "from firezone.relay.ebpf import syscall\n"
                          "i = socket.if_nametoindex(sys.argv[1])\n"
                          "IPRoute().link('set', index=i, xdp_fd=syscall.load_xdp_pass())\n",
                          topology.gen_if])


def start_xdp_relay(topology: _lab.RelayTopology, mode: str, lowest: int, highest: int,
                    health_port: int = 18080, timeout: float = 180.0) -> XdpRelay:
    """The relay with XDP on ``relay``'s veth; its credentials are ``relay_process``'s."""
    prepare(topology, mode)
    process = topology.relay.python(
        RUNNER, "--iface", topology.relay_if, "--mode", mode, "--public-ip4", _lab.RELAY_IP,
        "--lowest-port", str(lowest), "--highest-port", str(highest),
        "--health-port", str(health_port), "--stamp-secret", STAMP_SECRET, name="xdp-relay")
    netlab.wait_until(lambda: "relay listening" in process.log() or not process.alive(),
                      timeout=timeout, what="the XDP relay to start")
    found = re.search(r"^xdp prog fd (\d+)$", process.log(), re.M)
    if not process.alive() or found is None:
        process.stop()
        raise netlab.LabError(f"XDP relay did not start:\n{process.log()[-1500:]}")
    return XdpRelay(process, int(found.group(1)), health_port)


def prog_stats(relay: XdpRelay) -> RunStats:
    """The program's run count and total run time so far (zero unless bpf_stats is on)."""
    return prog_run_stats(relay.prog_fd, relay.process.pid)


@contextmanager
def bpf_stats() -> Iterator[None]:
    """``kernel.bpf_stats_enabled=1`` for the block, then its previous value again.

    A machine-wide switch (every BPF program pays two clock reads per run while it is on).
    """
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        BPF_STATS.write_text(previous + "\n")


def ns_per_run(before: RunStats, after: RunStats) -> float | None:
    runs = after.run_cnt - before.run_cnt
    return (after.run_time_ns - before.run_time_ns) / runs if runs else None
