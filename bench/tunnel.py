"""Tunnel benchmark: our WireGuard data plane against wireguard-go and a plain veth.

Question: how fast does a single TCP stream (and a paced UDP load) cross our
userspace WireGuard, compared with wireguard-go on both ends and with the
bare link, on the same machine in the same run?

Setup (lab namespaces; underlay 198.18.0.0/15, tunnels 100.64.0.0/10):

    a [198.18.0.1 eth0, MTU 1500] ======== veth ======== b [198.18.0.2 eth0]
      [198.18.1.1 eth1, MTU 1280] ======== veth ======== b [198.18.1.2 eth1]

* Two hosts joined directly (no router), the same pair for every system.
  ``eth0`` (MTU 1500) carries the WireGuard UDP of both tunnels; ``eth1`` is
  a second veth at MTU 1280, the tunnels' MTU, for the ``veth`` system, so its
  TCP segments are the same size as inside the tunnels.  The veth keeps its
  default offloads (TSO/GSO/GRO), so it is the physical limit, not a like-for-
  like user-space path.  ``veth`` also reports ``tcp_mbps_mtu1500`` over eth0
  (default run only).
* ``wireguard-go``: wireguard-go in a (100.64.1.1) <-> wireguard-go in b
  (100.64.1.2), UDP port 51820, interface MTU 1280.
* ``firezone``: ``python -m firezone.tunnel.static`` in a (100.64.2.1, TUN
  MTU 1280) <-> a second wireguard-go in b (100.64.2.2), UDP port 51821.
  Both tunnels use a preshared key; both stay up for the whole run (idle ones
  cost nothing) and are warmed with pings, so no handshake falls inside a
  measurement.
* One ``iperf3 -s`` runs in b.  Per system and repetition, from a:
  TCP single stream a->b (``tcp_mbps``, the headline) and b->a (``-R``,
  ``tcp_mbps_reverse``), then UDP a->b at a fixed offered rate (default
  ``-b 300M -l 1200``, about 31k datagrams/s): ``udp_mbps`` and ``udp_pps``
  delivered, ``udp_loss`` as iperf3's server counted it.  TCP runs skip their
  first second (``-O 1``, slow start); Mbit/s is what the receiver got.
* CPU: utime+stime of the tunnel process in a (ours, or wireguard-go) from
  ``/proc/<pid>/stat``, sampled inside the TCP a->b transfer window:
  ``cpu_pct`` (100 = one core); ``cpu_pct_peer`` is the wireguard-go in b,
  ``cpu_pct_reverse`` the process in a during b->a.  Packets: the counters of
  a's tunnel interface over the same window (``/proc/<pid>/net/dev`` of the
  tunnel process, i.e. its namespace): ``tcp_pps`` packets per second the
  kernel routed into the tunnel a->b (including any the tunnel then dropped,
  which TCP retransmits), ``tcp_pps_reverse`` packets per second that came out
  of it b->a, and ``cpu_us_per_pkt`` the CPU of a's tunnel process per packet
  it carried during a->b (data plus ACKs) -- the figure least moved by other
  load on the machine.
* Systems alternate order across repetitions (veth, wireguard-go, firezone;
  then reversed; ...) so slow drift of a shared machine hits all of them.
  Values are medians, with ``_min``/``_max`` for ``tcp_mbps``.
* ``--profile``: after the measurements, one more TCP run each way through
  ``firezone`` with ``py-spy record --nonblocking`` attached to our process;
  the top functions by self time go to stderr only.  py-spy sees Python
  frames: time in a C call (a syscall, the AEAD) is self time of its caller.

Caveats: 2 shared vCPUs run iperf3 client and server, both tunnel ends and
the kernel; a tunnel end at 100% of a core is the limit.  Our process is
single-threaded (one reactor), wireguard-go uses goroutines on both cores.

Run as root: ``.venv/bin/python bench/tunnel.py [--quick] [--profile]``; the
last stdout line is the JSON result, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    emit,
    log,
    median_summary,
    process_cpu_seconds,
    ratio,
)
from tests.lab import netlab, wg  # noqa: E402
from tests.lab.netlab import Host, Lab, LabError, LabProcess  # noqa: E402

SYSTEMS = ("veth", "wireguard-go", "firezone")
UNDERLAY_A, UNDERLAY_B = "198.18.0.1", "198.18.0.2"
VETH_A, VETH_B = "198.18.1.1", "198.18.1.2"
WG_A, WG_B = "100.64.1.1", "100.64.1.2"
FZ_A, FZ_B = "100.64.2.1", "100.64.2.2"
WG_PORT, FZ_PORT = 51820, 51821
TUNNEL_MTU = 1280
FZ_TUN = "fzbench0"
IPERF_PORT = 5201
UDP_PAYLOAD = 1200
#: Seconds after the start of an iperf3 transfer before CPU sampling starts, and before its
#: end when it stops: the connection set-up and the final exchange are not the load.
CPU_MARGIN = 0.3
PROFILE_TOP = 15
ROUNDING = {"tcp_mbps": 1, "tcp_mbps_reverse": 1, "tcp_mbps_mtu1500": 1, "udp_mbps": 1,
            "udp_pps": 0, "udp_loss": 4, "udp_offered_mbps": 0, "tcp_retransmits": 0,
            "tcp_pps": 0, "tcp_pps_reverse": 0, "cpu_us_per_pkt": 2,
            "cpu_pct": 1, "cpu_pct_peer": 1, "cpu_pct_reverse": 1}


@dataclass(frozen=True)
class Settings:
    quick: bool
    seconds: int
    omit: int
    repetitions: int
    udp_rate_mbps: int
    profile: bool


@dataclass
class System:
    """One thing to measure: the address in b that traffic from a goes to, and who carries it."""

    name: str
    target: str
    local: LabProcess | None = None  # tunnel process in a
    remote: LabProcess | None = None  # tunnel process in b
    ifname: str = ""  # tunnel interface in a
    error: str | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check_alive(self) -> None:
        for process in (self.local, self.remote):
            if process is not None and not process.alive():
                raise LabError(f"{process.name} exited:\n{process.log()[-1500:]}")


# --- set-up -------------------------------------------------------------------------------


def build_hosts(lab: Lab) -> tuple[Host, Host]:
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.connect(a, b, [f"{UNDERLAY_A}/24"], [f"{UNDERLAY_B}/24"], mtu=1500)
    lab.connect(a, b, [f"{VETH_A}/24"], [f"{VETH_B}/24"], mtu=TUNNEL_MTU)
    return a, b


def start_wireguard_go_pair(a: Host, b: Host, psk: str) -> System:
    keys_a, keys_b = wg.new_keys(), wg.new_keys()
    ifa = wg.start_wireguard_go(a, keys_a, WG_PORT, f"{WG_A}/24", [wg.PeerSpec(
        keys_b.public, [f"{WG_B}/32"], f"{UNDERLAY_B}:{WG_PORT}", psk)], TUNNEL_MTU, "a")
    ifb = wg.start_wireguard_go(b, keys_b, WG_PORT, f"{WG_B}/24", [wg.PeerSpec(
        keys_a.public, [f"{WG_A}/32"], f"{UNDERLAY_A}:{WG_PORT}", psk)], TUNNEL_MTU, "b")
    return System("wireguard-go", WG_B, ifa.process, ifb.process, ifa.name)


def start_firezone_pair(a: Host, b: Host, psk: str) -> System:
    ours, theirs = wg.new_keys(), wg.new_keys()
    ifb = wg.start_wireguard_go(b, theirs, FZ_PORT, f"{FZ_B}/24", [wg.PeerSpec(
        ours.public, [f"{FZ_A}/32"], f"{UNDERLAY_A}:{FZ_PORT}", psk)], TUNNEL_MTU, "c")
    config = wg.write_static_config(
        a.lab.workdir / "firezone.conf", ours, FZ_PORT, f"{FZ_A}/32",
        [wg.PeerSpec(theirs.public, [f"{FZ_B}/32"], f"{UNDERLAY_B}:{FZ_PORT}", psk)],
        mtu=TUNNEL_MTU, tun_name=FZ_TUN)
    local = wg.start_firezone_static(a, config)
    return System("firezone", FZ_B, local, ifb.process, FZ_TUN)


def start_system(name: str, a: Host, b: Host) -> System:
    """The system, or one carrying the reason it cannot run."""
    try:
        if name == "veth":
            return System("veth", VETH_B)
        if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
            return System(name, "", error="wireguard-go/wg not installed (run `make deps`)")
        if name == "wireguard-go":
            system = start_wireguard_go_pair(a, b, wg.new_psk())
        elif name == "firezone":
            if not Path("/dev/net/tun").exists():
                return System(name, "", error="no /dev/net/tun")
            system = start_firezone_pair(a, b, wg.new_psk())
        else:
            raise ValueError(f"unknown system {name}")
        warm_up(a, system)
        return system
    except Exception as e:  # the others still run; this one reports why not
        return System(name, "", error=f"{type(e).__name__}: {e}"[:2000])


def warm_up(a: Host, system: System, timeout: float = 15.0) -> None:
    """Ping through the tunnel until it answers: the handshake happens here, not in a run."""
    def answered() -> bool:
        system.check_alive()
        result = a.run(["ping", "-c", "1", "-W", "1", system.target], check=False, timeout=5)
        return result.returncode == 0

    netlab.wait_until(answered, timeout=timeout, interval=0.2,
                      what=f"a ping through {system.name}")
    a.run(["ping", "-c", "5", "-i", "0.05", "-W", "1", system.target], timeout=10)


def start_iperf_server(b: Host) -> LabProcess:
    server = b.spawn(["iperf3", "-s", "-p", str(IPERF_PORT)], name="iperf3-server")

    def listening() -> bool:
        if not server.alive():
            raise LabError(f"iperf3 server exited:\n{server.log()}")
        return str(IPERF_PORT) in b.sh(f"ss -Hltn 'sport = :{IPERF_PORT}'")

    netlab.wait_until(listening, timeout=10, what="iperf3 server")
    return server


# --- one iperf3 run -----------------------------------------------------------------------


Counters = Callable[[], dict[str, float]]


@dataclass
class IperfRun:
    report: dict[str, Any]
    rates: dict[str, float]  # per-second rates of the sampled counters inside the transfer


def run_iperf(a: Host, target: str, seconds: int, omit: int, *, reverse: bool = False,
              udp_rate_mbps: int | None = None, counters: Counters | None = None,
              during: Callable[[], None] | None = None) -> IperfRun:
    """``iperf3 -c target`` from a; ``counters`` are read at both ends of the transfer window.

    The window leaves out TCP's omitted first seconds and ``CPU_MARGIN`` at each end.
    ``during`` runs once the transfer is under way (the profiler hook).
    """
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if udp_rate_mbps is not None:
        argv += ["-u", "-b", f"{udp_rate_mbps}M", "-l", str(UDP_PAYLOAD)]
    else:
        argv += ["-O", str(omit)]
    if reverse:
        argv.append("-R")
    lead = 0 if udp_rate_mbps is not None else omit
    popen = subprocess.Popen(a.exec_argv(argv), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"),
                                                            popen.communicate(), strict=True)),
                              daemon=True)
    reader.start()
    rates: dict[str, float] = {}
    try:
        time.sleep(lead + CPU_MARGIN)
        window = max(seconds - 2 * CPU_MARGIN, 0.2)
        if counters is not None and popen.poll() is None:
            before = counters()
            t0 = time.monotonic()
            if during is not None:
                during()
            time.sleep(max(0.0, window - (time.monotonic() - t0)))
            after = counters()
            elapsed = time.monotonic() - t0
            if popen.poll() is None:
                rates = {key: (after[key] - before[key]) / elapsed for key in before}
        reader.join(seconds + omit + 30)
        if reader.is_alive():
            raise LabError(f"iperf3 still running after {seconds + omit + 30}s: {argv}")
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    text = out.get("stdout", b"").decode(errors="replace")
    try:
        report = json.loads(text)
    except ValueError:
        raise LabError(f"iperf3 {' '.join(argv[1:])} gave no JSON (exit {popen.returncode}): "
                       f"{text[-500:]} {out.get('stderr', b'').decode(errors='replace')[-500:]}")
    if "error" in report:
        raise LabError(f"iperf3 {' '.join(argv[1:])}: {report['error']}")
    if counters is not None and not rates:
        raise LabError(f"iperf3 {' '.join(argv[1:])} ended before its sampling window closed")
    return IperfRun(report, rates)


def tcp_mbps(report: dict[str, Any]) -> float:
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def udp_figures(report: dict[str, Any]) -> dict[str, float]:
    """Delivered datagrams/s and Mbit/s, and the loss the server counted."""
    total = report["end"]["sum"]
    packets, lost = int(total["packets"]), int(total["lost_packets"])
    seconds = float(total["seconds"])
    delivered = packets - lost
    return {"udp_mbps": delivered * UDP_PAYLOAD * 8 / seconds / 1e6,
            "udp_pps": delivered / seconds,
            "udp_loss": lost / packets if packets else 1.0}


# --- one repetition of one system -----------------------------------------------------------


def net_dev_packets(pid: int, ifname: str) -> tuple[int, int]:
    """(rx, tx) packet counters of ``ifname`` in the network namespace of ``pid``."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, values = line.partition(":")
            if name.strip() == ifname:
                fields = values.split()
                return int(fields[1]), int(fields[9])
    raise LabError(f"no interface {ifname} in the namespace of {pid}")


def tunnel_counters(system: System) -> Counters | None:
    """CPU seconds of both tunnel ends and the packets a's tunnel interface carried."""
    local, remote = system.local, system.remote
    if local is None or remote is None:
        return None

    def read() -> dict[str, float]:
        rx, tx = net_dev_packets(local.pid, system.ifname)
        return {"cpu": process_cpu_seconds(local.pid), "cpu_peer": process_cpu_seconds(remote.pid),
                "rx": rx, "tx": tx}

    return read


def measure(a: Host, system: System, settings: Settings) -> dict[str, float]:
    system.check_alive()
    s, o = settings.seconds, settings.omit
    counters = tunnel_counters(system)
    result: dict[str, float] = {}

    forward = run_iperf(a, system.target, s, o, counters=counters)
    result["tcp_mbps"] = tcp_mbps(forward.report)
    result["tcp_retransmits"] = float(forward.report["end"]["sum_sent"].get("retransmits", 0))
    if counters is not None:
        rates = forward.rates
        result["tcp_pps"] = rates["tx"]
        result["cpu_pct"] = rates["cpu"] * 100
        result["cpu_pct_peer"] = rates["cpu_peer"] * 100
        handled = rates["tx"] + rates["rx"]
        if handled:
            result["cpu_us_per_pkt"] = rates["cpu"] / handled * 1e6

    reverse = run_iperf(a, system.target, s, o, reverse=True, counters=counters)
    result["tcp_mbps_reverse"] = tcp_mbps(reverse.report)
    if counters is not None:
        result["tcp_pps_reverse"] = reverse.rates["rx"]
        result["cpu_pct_reverse"] = reverse.rates["cpu"] * 100

    udp = run_iperf(a, system.target, s, o, udp_rate_mbps=settings.udp_rate_mbps)
    result.update(udp_figures(udp.report))
    result["udp_offered_mbps"] = settings.udp_rate_mbps

    if system.name == "veth" and not settings.quick:
        result["tcp_mbps_mtu1500"] = tcp_mbps(run_iperf(a, UNDERLAY_B, s, o).report)
    system.check_alive()
    log(f"  {system.name}: " + ", ".join(
        f"{k} {v:.4f}" if k == "udp_loss" else f"{k} {v:.1f}"
        for k, v in result.items() if k != "udp_offered_mbps"))
    return result


def summarise(system: System) -> dict[str, Any]:
    if system.error is not None:
        return {"error": system.error}
    if not system.runs:
        return {"error": "; ".join(dict.fromkeys(system.errors)) or "did not run"}
    summary: dict[str, Any] = median_summary(system.runs, spread=("tcp_mbps",),
                                             digits=ROUNDING)
    if system.errors:
        summary["failed_repetitions"] = len(system.errors)
    return summary


# --- profile --------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_firezone(a: Host, system: System, settings: Settings) -> None:
    """py-spy on our process during one TCP run each way; a self-time table on stderr."""
    spy = py_spy()
    if spy is None:
        log("profile: py-spy not found (`.venv/bin/pip install py-spy`)")
        return
    if system.local is None or system.error is not None:
        log(f"profile: firezone did not run: {system.error}")
        return
    pid = system.local.pid
    seconds = max(settings.seconds, 5)
    for label, reverse in (("a->b (TUN read, encrypt, send)", False),
                           ("b->a (receive, decrypt, TUN write)", True)):
        raw = a.lab.workdir / f"profile-{'rev' if reverse else 'fwd'}.txt"
        spawned: list[LabProcess] = []

        def attach(raw: Path = raw, spawned: list[LabProcess] = spawned) -> None:
            spawned.append(a.spawn(
                [spy, "record", "-p", str(pid), "-d", str(seconds - 1), "-r", "200",
                 "--nonblocking", "--nolineno", "--format", "raw", "-o", str(raw)],
                name="py-spy"))

        def cpu(pid: int = pid) -> dict[str, float]:
            return {"cpu": process_cpu_seconds(pid)}

        run = run_iperf(a, system.target, seconds, settings.omit, reverse=reverse,
                        counters=cpu, during=attach)
        for process in spawned:
            process.wait(30)
        if not raw.exists():
            log(f"profile {label}: py-spy wrote nothing:\n"
                f"{spawned[0].log() if spawned else ''}")
            continue
        log(f"\nprofile of firezone {label}: {tcp_mbps(run.report):.0f} Mbit/s, "
            f"{run.rates['cpu'] * 100:.0f}% CPU with py-spy attached")
        log(format_profile(raw.read_text()))


def format_profile(raw: str, top: int = PROFILE_TOP) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            total_time[frame] += count
    if not samples:
        return "  (no samples)"
    lines = [f"  {samples} samples while running (a C call such as a syscall or the AEAD counts "
             "as self time of the Python function that made it)",
             f"  {'self':>6} {'total':>6}  function (file)"]
    for frame, count in self_time.most_common(top):
        lines.append(f"  {count / samples:6.1%} {total_time[frame] / samples:6.1%}  {frame}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 repetition of 3 s runs")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None, help="per iperf3 run")
    parser.add_argument("--udp-rate", type=int, default=300, help="offered UDP Mbit/s")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy our process during extra TCP runs; summary on stderr")
    args = parser.parse_args(argv)
    return Settings(
        quick=args.quick,
        seconds=args.seconds or (3 if args.quick else 10),
        omit=1,
        repetitions=args.repetitions or (1 if args.quick else 3),
        udp_rate_mbps=args.udp_rate,
        profile=args.profile,
    )


def run_repetitions(a: Host, systems: dict[str, System], settings: Settings) -> None:
    """Every system once per repetition, the order reversed every other repetition."""
    for rep in range(settings.repetitions):
        order = list(SYSTEMS) if rep % 2 == 0 else list(reversed(SYSTEMS))
        log(f"repetition {rep + 1}/{settings.repetitions}: {', '.join(order)}")
        for name in order:
            system = systems[name]
            if system.error is not None:
                continue
            try:
                system.runs.append(measure(a, system, settings))
            except Exception as e:
                message = f"{type(e).__name__}: {e}"[:2000]
                log(f"  {name}: failed: {message}")
                system.errors.append(message)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    reason = netlab.unavailable_reason(tools=["iperf3", "ping", "ss"])
    if reason is not None:
        error = {"error": reason}
        emit("tunnel", settings.quick, settings.repetitions,
             {name: error for name in SYSTEMS},
             {"firezone/wireguard-go": None, "wireguard-go/veth": None})
        return 1
    netlab.install_signal_handlers()
    started = time.monotonic()
    systems = {name: System(name, "") for name in SYSTEMS}
    try:
        with Lab("tunnel") as lab:
            a, b = build_hosts(lab)
            systems = {name: start_system(name, a, b) for name in SYSTEMS}
            for system in systems.values():
                if system.error:
                    log(f"{system.name}: cannot run: {system.error}")
            start_iperf_server(b)
            log(f"set up in {time.monotonic() - started:.1f}s (lab {lab.prefix}, {lab.workdir}), "
                f"load average {os.getloadavg()[0]:.1f}")
            run_repetitions(a, systems, settings)
            if settings.profile:
                profile_firezone(a, systems["firezone"], settings)
    except Exception as e:  # the lab itself failed: every system says why, still one JSON line
        message = f"lab: {type(e).__name__}: {e}"[:2000]
        log(message)
        for system in systems.values():
            if system.error is None and not system.runs:
                system.error = message
    results = {name: summarise(system) for name, system in systems.items()}
    ratios = {
        "firezone/wireguard-go": ratio(results, "firezone", "wireguard-go", "tcp_mbps"),
        "wireguard-go/veth": ratio(results, "wireguard-go", "veth", "tcp_mbps"),
    }
    log(f"done in {time.monotonic() - started:.1f}s, load average {os.getloadavg()[0]:.1f}")
    emit("tunnel", settings.quick, settings.repetitions, results, ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
