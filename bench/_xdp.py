"""XDP pieces for the relay benchmark's ``firezone-xdp`` system (``bench/relay.py --xdp``).

With ``bench._lab``'s topology (``gen`` and ``relay`` on one veth) the relay's
program bounces each ChannelData frame back out of ``relay``'s veth to the
peer address on ``gen``, where ``_lab``'s nftables counter counts it as for the
other systems.  What differs:

* the relay is the real daemon, ``twistd firezone-relay --ebpf-offloading IFACE
  --ebpf-attach-mode MODE`` (:func:`start_xdp_relay`).  It prints no program fd,
  so the program is found from outside: the id ``ip -j link show`` reports as
  attached to the veth, then the daemon's fd whose ``/proc/PID/fdinfo`` names
  that ``prog_id``.  The run statistics are read from that fdinfo, as
  ``firezone.relay.ebpf.syscall.prog_run_stats`` does;
* :func:`xdp_link` readies the veth for the duration of the XDP runs and then
  puts it back as it was, so the other systems run on the link they always had:
  complete checksums (tx offload off on both ends), in native mode an
  ``XDP_PASS`` program on ``gen``'s end (native ``XDP_TX`` on veth needs one on
  the peer), one queue per sending CPU on both ends (with one queue every
  CPU's frames wait for the one CPU running its NAPI, and trafgen's rings on the
  other CPUs fail with EAGAIN) and no qdisc on ``gen``'s end (drops at the
  relay's full rx rings are then counted as gen's ``tx_dropped``);
* the relay process spends no CPU per packet: the program runs in the softirq
  of whoever sends into the veth (trafgen's CPUs).  Its own cost per packet is
  what the kernel counts with ``kernel.bpf_stats_enabled=1``
  (:func:`bpf_stats` / :func:`prog_stats`: ``run_time_ns / run_cnt``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _lab  # noqa: E402
from firezone.relay.ebpf.syscall import RunStats, prog_run_stats  # noqa: E402
from tests.lab import netlab  # noqa: E402
from tests.lab.netlab import Host, LabProcess  # noqa: E402
from tests.lab.relay_process import STAMP_SECRET, metric_value, metrics, twistd  # noqa: E402

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
MODES = ("driver", "generic")
#: Compiling the program takes a few seconds on an idle machine, far more on a busy one.
START_TIMEOUT = 120.0


@dataclass
class XdpRelay:
    process: LabProcess
    prog_fd: int  # in the relay process
    prog_id: int
    health_port: int

    def stats(self) -> RunStats:
        return prog_stats(self)

    def counters(self, topology: _lab.RelayTopology) -> dict[str, float]:
        """Packets relayed per datapath and direction, from the relay's /metrics."""
        text = metrics(topology.relay, self.health_port)
        return {f"{path}_{d}": metric_value(text, "relay_packets_total", datapath=path,
                                            direction=d)
                for path in ("xdp", "userspace") for d in ("to_peer", "to_client")}


# --- the link --------------------------------------------------------------------------


def tx_checksumming(host: Host, ifname: str) -> bool:
    out = host.run(["ethtool", "-k", ifname]).stdout.decode()
    found = re.search(r"^tx-checksumming:\s*(on|off)", out, re.M)
    return found is not None and found.group(1) == "on"


def queues(host: Host, ifname: str) -> tuple[int, int]:
    """(rx, tx) queues in use (``ethtool -l``, current settings)."""
    out = host.run(["ethtool", "-l", ifname]).stdout.decode()
    current = out.split("Current hardware settings:")[-1]
    rx, tx = (re.search(rf"^{k}:\s*(\d+)", current, re.M) for k in ("RX", "TX"))
    if rx is None or tx is None:
        raise netlab.LabError(f"cannot read the queues of {ifname} in {host.ns}:\n{out}")
    return int(rx.group(1)), int(tx.group(1))


def set_queues(host: Host, ifname: str, rx: int, tx: int) -> None:
    if queues(host, ifname) != (rx, tx):
        host.run(["ethtool", "-L", ifname, "rx", str(rx), "tx", str(tx)])


@contextmanager
def xdp_link(topology: _lab.RelayTopology, mode: str, workers: int) -> Iterator[None]:
    """The veth as the XDP runs need it (module docstring), then as it was."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    ends = ((topology.gen, topology.gen_if), (topology.relay, topology.relay_if))
    saved = [(host, ifname, tx_checksumming(host, ifname), queues(host, ifname))
             for host, ifname in ends]
    try:
        for host, ifname in ends:
            host.run(["ethtool", "-K", ifname, "tx", "off"])
            set_queues(host, ifname, workers, workers)
        # trafgen bypasses qdiscs, but veth stops a queue that has one when the peer's ring
        # is full, and a stopped queue drops what trafgen sends without counting it; without
        # one, veth counts each frame it drops (tx_dropped).  _lab.run_trafgen puts
        # its tbf back whenever it runs.
        topology.gen.run(["tc", "qdisc", "del", "dev", topology.gen_if, "root"], check=False)
        if mode == "driver" and attached_prog_id(topology.gen, topology.gen_if) is None:
            topology.gen.run([sys.executable, "-c",
                              "import socket, sys\n"
                              "from pyroute2 import IPRoute\n"
                              "from firezone.relay.ebpf import syscall\n"
                              "i = socket.if_nametoindex(sys.argv[1])\n"
                              "IPRoute().link('set', index=i, xdp_fd=syscall.load_xdp_pass())\n",
                              topology.gen_if], timeout=30)
        yield
    finally:
        topology.gen.run(["ip", "link", "set", "dev", topology.gen_if, "xdp", "off"],
                         check=False)
        for host, ifname, tx, (rx_queues, tx_queues) in saved:
            set_queues(host, ifname, rx_queues, tx_queues)
            host.run(["ethtool", "-K", ifname, "tx", "on" if tx else "off"])


def attached_prog_id(host: Host, ifname: str) -> int | None:
    """The id of the XDP program attached to ``ifname`` (any mode), from ``ip -j link``."""
    links = json.loads(host.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)
    xdp: dict[str, Any] = links[0].get("xdp") or {}
    prog = xdp.get("prog") or next((a.get("prog") for a in xdp.get("attached", [])), None)
    return int(prog["id"]) if prog else None


def find_prog_fd(pid: int, prog_id: int) -> int:
    """The fd of program ``prog_id`` among ``pid``'s fds (``anon_inode:bpf-prog``)."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                info = f.read()
        except OSError:  # closed meanwhile
            continue
        found = re.search(r"^prog_id:\s*(\d+)", info, re.M)
        if found is not None and int(found.group(1)) == prog_id:
            return int(name)
    raise netlab.LabError(f"process {pid} holds no fd of BPF program {prog_id}")


# --- the relay -------------------------------------------------------------------------


def start_xdp_relay(topology: _lab.RelayTopology, mode: str, lowest: int, highest: int,
                    health_port: int = 18080, timeout: float = START_TIMEOUT) -> XdpRelay:
    """``twistd firezone-relay`` with XDP on ``relay``'s veth; credentials as
    ``relay_process.credentials()``.  Call inside :func:`xdp_link`."""
    process = topology.relay.spawn(
        [twistd(), "-n", "--pidfile=", "firezone-relay", "--public-ip4", _lab.RELAY_IP,
         "--bind-ip4", _lab.RELAY_IP, "--stamp-secret", STAMP_SECRET,
         "--lowest-port", str(lowest), "--highest-port", str(highest),
         "--health-check", f"127.0.0.1:{health_port}",
         "--ebpf-offloading", topology.relay_if, "--ebpf-attach-mode", mode],
        name="firezone-relay-xdp")
    netlab.wait_until(lambda: "relay listening" in process.log() or not process.alive(),
                      timeout=timeout, what="firezone-relay with XDP to start")
    try:
        if not process.alive():
            log = process.log()
            why = next((line for line in log.splitlines() if "XDP offload" in line), None)
            raise netlab.LabError(why or f"firezone-relay exited:\n{log[-1500:]}")
        prog_id = attached_prog_id(topology.relay, topology.relay_if)
        if prog_id is None:
            raise netlab.LabError(f"no XDP program on {topology.relay_if} after the relay "
                                  "started")
        return XdpRelay(process, find_prog_fd(process.pid, prog_id), prog_id, health_port)
    except BaseException:
        process.stop()
        raise


def prog_stats(relay: XdpRelay) -> RunStats:
    """The program's run count and total run time so far (zero unless bpf_stats is on)."""
    return prog_run_stats(relay.prog_fd, relay.process.pid)


def ns_per_run(before: RunStats, after: RunStats) -> float | None:
    runs = after.run_cnt - before.run_cnt
    return (after.run_time_ns - before.run_time_ns) / runs if runs else None


def link_drops(topology: _lab.RelayTopology) -> dict[str, int]:
    """Where veth itself dropped frames: ``tx_dropped``, frames gen sent that the relay's
    rx rings had no room for; ``rx_drops``, frames the relay's end dropped while running
    XDP; ``xdp_tx_errors``, relayed frames gen's rx rings had no room for."""
    links = json.loads(topology.gen.run(
        ["ip", "-j", "-s", "link", "show", "dev", topology.gen_if]).stdout)
    totals = {"tx_dropped": int(links[0]["stats64"]["tx"]["dropped"]),
              "rx_drops": 0, "xdp_tx_errors": 0}
    out = topology.relay.run(["ethtool", "-S", topology.relay_if]).stdout.decode()
    for name, value in re.findall(r"^\s*rx_queue_\d+_(drops|xdp_tx_errors):\s*(\d+)", out,
                                  re.M):
        totals["rx_drops" if name == "drops" else name] += int(value)
    return totals


# --- kernel.bpf_stats_enabled ------------------------------------------------------------


_Handler = Callable[[int, FrameType | None], Any] | int | None


@contextmanager
def bpf_stats() -> Iterator[None]:
    """``kernel.bpf_stats_enabled=1`` for the block, then its previous value again.

    A machine-wide switch (every BPF program pays two clock reads per run while it
    is on), so it is also put back when SIGINT/SIGTERM end the benchmark inside
    the block, before the handler that was there runs.
    """
    previous = BPF_STATS.read_text().strip()
    saved: dict[int, _Handler] = {}

    def restore() -> None:
        BPF_STATS.write_text(previous + "\n")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler = saved.get(signum)
        if handler == signal.SIG_IGN:
            return
        restore()
        if callable(handler):
            handler(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for caught in (signal.SIGINT, signal.SIGTERM):
        saved[caught] = signal.getsignal(caught)
        signal.signal(caught, on_signal)
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        restore()
        for number, handler in saved.items():
            signal.signal(number, handler)
