"""Relay benchmark: ChannelData -> UDP relaying, our relay (user space and XDP) against coturn.

Question: how many 1200-byte ChannelData messages per second does each relay
turn into UDP datagrams to the peer, and how much CPU does each one cost, on
the same machine in the same run?  Systems: ``firezone`` (our relay in user
space), ``firezone-xdp`` (the same daemon with ``--ebpf-offloading``: bound
channels relayed by an XDP program; only with ``--xdp``) and ``coturn``.

Setup (all inside lab namespaces, addresses from 198.18.0.0/15):

    gen [198.18.1.2 client, 198.18.1.3 peer] ==== one veth ==== relay [198.18.1.1]

* One link carries both directions, so the XDP relay can bounce packets out
  of the interface they came in on with XDP_TX.
* Per system and repetition the relay is started fresh (ours through
  ``twistd firezone-relay``, coturn's ``turnserver`` with a static user),
  then ``bench/turn_setup.py`` in ``gen`` allocates from 198.18.1.2:40000,
  binds channel 0x4000 to 198.18.1.3:40001 and holds that port with a socket
  that never reads (no ICMP unreachable; the kernel drops what overflows it).
* Delivered packets are counted at the peer: an nftables counter at ``gen``'s
  input hook counts frames to 198.18.1.3:40001.  If a relay sends with UDP
  GSO (one frame, many datagrams, split only at the receiving socket) frames
  undercount, so the namespace's Udp counters are read too (InErrors counts
  the never-reading sink's overflow; its queue is the kernel's minimum) and
  the larger count is used.  The sink costs no user-space time.
* Load: ``trafgen`` forges N frames 198.18.1.2:40000 -> 198.18.1.1:3478, each
  a ChannelData header (0x4000, length 1200) plus 1200 bytes, from one CPU
  (``-P 1``), touching nothing outside the namespace (``-Q``,
  ``--no-sock-mem``).  The offered rate is set by a ``tbf`` qdisc on gen's
  veth, not by trafgen's ``-b <rate>pps``: measured here, that shaper sends
  each second's packets in one burst at full speed and then sleeps for the
  rest of the second, so a relay sat idle most of the second and overflowed
  in the burst (it showed 30-40% CPU while losing 75% of the packets).
  trafgen runs its per-packet ``sendto`` path (``-t 0ns``) through the qdisc
  (``-q``) and retries what the qdisc refuses, so its statistics give the
  packets that left and the send time, hence the achieved offered rate.
  On a busy machine trafgen may fall short of the rate; it is stopped after
  twice the planned time and what it sent is what counts.  After the send
  the relay gets 0.5 s to drain its socket buffer before the counters are
  read.
* CPUs: trafgen ``-P 1`` runs on CPU 0, and the kernel's receive path into
  the relay's socket runs there too (veth delivers in the sender's softirq);
  the relay is pinned to the last CPU (``--no-pin`` to let the scheduler
  place it), all of its threads, so the two systems get the same core.
* The default offered rate (200k/s) is above what either relay can relay
  here, so ``pps`` is each relay's capacity and ``loss`` is mostly its
  receive-socket overflow (``rcvbuf_errors``, Udp RcvbufErrors of the relay
  namespace).  ``saturated`` says whether that held in every repetition
  (loss above 1%); when it is false, trafgen did not get enough CPU to
  overload that relay and its ``pps`` is only a lower bound.
* CPU: utime+stime of the relay process from ``/proc/<pid>/stat`` (the whole
  thread group, so all of coturn's threads).  ``cpu_us_per_pkt`` divides the
  CPU used over the send and the drain by the delivered packets; ``cpu_pct``
  is the share of one core during the send.  It covers the relay's code and
  syscalls.  It excludes the receive path into the relay's socket (on
  trafgen's CPU) and, in expectation, the peer side's receive path of each
  relayed datagram: veth runs that in softirq on the relay's CPU, and this
  kernel's tick-based accounting bills softirq ticks as softirq, not to the
  process (measured: about 1.2 us per packet for either relay).  So a relay running
  flat out on its core can show well under 100% ``cpu_pct``.
* Systems alternate order across repetitions (A B C, C B A, A B C) so slow
  drift of a shared machine hits all of them; values are medians with ``_min``/``_max`` for
  ``pps`` and ``cpu_us_per_pkt``.

``firezone-xdp`` (``--xdp``) differs where a kernel data path must:

* The relay is ``twistd firezone-relay --ebpf-offloading <relay veth>
  --ebpf-attach-mode driver`` (``--xdp-mode generic`` for SKB mode), started
  fresh per repetition like the others; compiling its program takes a few
  seconds (tens on a busy machine) before the repetition starts.  The program
  answers ``XDP_TX``: each relayed frame goes back out of the veth it came in
  on, to the same peer counter.  For these runs only, ``bench/_xdp.py``
  readies the veth (tx checksum offload off, one queue per sending CPU, an
  ``XDP_PASS`` program on gen's end in native mode, no qdisc on gen's end)
  and restores it after.
* Load: the paced single-CPU sender of the other systems (about 120-250k/s
  here) cannot outrun it, so trafgen runs one worker per CPU (``-P 2`` here), each
  flushing its packet ring straight to the driver with no pacing, for the
  planned send time: the highest rate this machine generates, which is the
  ``offered_pps`` reported.  The relay's work runs in the senders' softirq on
  the same CPUs, so the generator and the relay share them.  When the relay
  delivered everything sent (loss under 0.01% in every repetition)
  ``generator_saturated`` is true: ``pps`` is then the generator's rate and a
  lower bound of the XDP relay's capacity (``note`` says so).
* CPU: the relay process does nothing per packet (``relay_process_cpu_us_per_pkt``
  shows it), so ``cpu_us_per_pkt`` is the kernel's own accounting of the
  program: ``kernel.bpf_stats_enabled=1`` during the send (restored after),
  then run time / run count of the attached program, read from the daemon's
  ``/proc/<pid>/fdinfo`` for the program id ``ip link`` shows on the veth.
  ``cpu_pct`` is the program's run time as a share of one core during the
  send.  Like the process CPU of the others it leaves out the receive path
  before the program (driver, ring) and the transmit after ``XDP_TX``; unlike
  theirs it also leaves out the syscalls (the program makes none).
* ``in_kernel`` is the share of delivered packets the program relayed (from
  the daemon's ``relay_packets_total{datapath="xdp"}``).  Where veth itself
  lost frames: ``tx_dropped`` (gen's end: the relay's rx rings were full),
  ``rx_drops`` (the relay's end, while running XDP) and ``xdp_tx_errors``
  (relayed frames gen's rings had no room for).
* A trafgen worker dies when a ring flush finds its socket's send buffer full
  (EAGAIN: the kernel fell behind for a moment); that send is repeated with
  fresh counters, up to three times.

Caveats: the build machines have 2 cores and are shared with whatever else
runs; other load shows up as lower ``cpu_pct`` and ``pps`` of whichever
system it coincided with.  ``cpu_us_per_pkt`` moves much less and is the
figure to compare when the machine was busy.

Without ``--xdp``, ``firezone-xdp`` is reported as an error and so are the
ratios that need it (null).

Run as root: ``.venv/bin/python bench/relay.py [--xdp] [--quick]``; the last
stdout line is the JSON result, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _lab, _xdp  # noqa: E402
from bench._common import emit, log, median_summary, ratio  # noqa: E402
from tests.lab import netlab, relay_process  # noqa: E402
from tests.lab.netlab import Lab, LabProcess  # noqa: E402

SYSTEMS = ("firezone", "firezone-xdp", "coturn")
COTURN_USER = ("bench", "bench-password")
XDP_ERROR = "run with --xdp"
DRAIN_SECONDS = 0.5
#: A relay losing more than this share of the offered packets was running at its limit.
SATURATED_LOSS = 0.01
#: A relay losing no more than this share kept up with everything the generator sent.
GENERATOR_BOUND_LOSS = 0.0001
GENERATOR_NOTE = ("generator-bound: the relay delivered what trafgen sent on every CPU (the "
                  "relay's kernel work shares those CPUs), so pps is a lower bound of its "
                  "capacity and offered_pps is the generator's rate")
#: Allocation ports of our relay: a small range, nothing else runs in the relay namespace.
PORT_RANGE = (49152, 49407)


@dataclass(frozen=True)
class Load:
    rate: int
    seconds: float
    repetitions: int
    relay_cpu: int | None = None
    xdp: bool = False
    xdp_mode: str = "driver"
    #: trafgen workers (one per CPU) for the XDP system's unpaced load.
    workers: int = 1

    @property
    def packets(self) -> int:
        return int(self.rate * self.seconds)


def start_relay(topology: _lab.RelayTopology, system: str) -> tuple[LabProcess, str, str]:
    """The relay process and the TURN credentials that work on it."""
    if system == "firezone":
        process = relay_process.start_firezone_relay(
            topology.relay, _lab.RELAY_IP, lowest=PORT_RANGE[0], highest=PORT_RANGE[1])
        username, password = relay_process.credentials()
        return process, username, password
    if system == "coturn":
        username, password = COTURN_USER
        process = relay_process.start_coturn(topology.relay, _lab.RELAY_IP, username, password)
        if not process.alive():
            raise netlab.LabError(f"turnserver exited:\n{process.log()[-1500:]}")
        return process, username, password
    raise ValueError(f"unknown system {system}")


def measure(topology: _lab.RelayTopology, system: str, load: Load) -> dict[str, float]:
    """One repetition for one system: fresh relay, fresh channel, one trafgen burst."""
    started: list[LabProcess] = []
    try:
        relay, username, password = start_relay(topology, system)
        started.append(relay)
        if load.relay_cpu is not None:
            _lab.pin_process(relay.pid, load.relay_cpu)
        setup, _ = _lab.start_turn_setup(topology.gen, username, password,
                                         lifetime=load.seconds * 3 + 60)
        started.append(setup)

        frames0 = _lab.read_sink_counter(topology.gen)
        peer0 = _lab.udp_snmp(topology.gen)
        snmp0 = _lab.udp_snmp(topology.relay)
        user0, system0 = _lab.process_cpu_times(relay.pid)
        t0 = time.monotonic()
        sent = _lab.run_trafgen(topology, load.packets, load.rate)
        cpu_send, t_send = _lab.process_cpu_seconds(relay.pid), time.monotonic()
        time.sleep(DRAIN_SECONDS)
        user1, system1 = _lab.process_cpu_times(relay.pid)
        frames = _lab.read_sink_counter(topology.gen) - frames0
        peer1 = _lab.udp_snmp(topology.gen)
        snmp1 = _lab.udp_snmp(topology.relay)
        if not relay.alive():
            raise netlab.LabError(f"{system} died during the load:\n{relay.log()[-1500:]}")
    finally:
        for process in reversed(started):
            process.stop()
    if sent.sent == 0:
        raise netlab.LabError("trafgen sent nothing")
    snmp = {key: snmp1[key] - snmp0[key] for key in snmp1}
    # Datagrams that reached the peer: every frame holds at least one, and the peer's Udp
    # counters (InErrors: the sink's overflow; InDatagrams: reads, none here) count each
    # datagram of a UDP GSO frame but miss the one or two left in the sink's tiny queue.
    datagrams = (peer1["InDatagrams"] - peer0["InDatagrams"]
                 + peer1["InErrors"] - peer0["InErrors"])
    delivered = max(frames, datagrams)
    cpu_user, cpu_system = user1 - user0, system1 - system0
    cpu = cpu_user + cpu_system
    result = {
        "pps": delivered / sent.seconds,
        "mbps": delivered * _lab.PAYLOAD * 8 / sent.seconds / 1e6,
        "loss": 1 - delivered / sent.sent,
        "cpu_us_per_pkt": cpu / delivered * 1e6 if delivered else float("nan"),
        "cpu_pct": (cpu_send - user0 - system0) / (t_send - t0) * 100,
        "offered_pps": sent.pps,
        "rcvbuf_errors": snmp["RcvbufErrors"],
        "delivered": delivered,
        "sent": sent.sent,
    }
    log(f"  {system}: sent {sent.sent} in {sent.seconds:.2f}s ({sent.pps:.0f}/s), "
        f"delivered {delivered} ({frames} frames, {datagrams} datagrams at the peer; "
        f"{result['pps']:.0f}/s, "
        f"loss {result['loss']:.1%}), "
        f"cpu {cpu:.2f}s (user {cpu_user:.2f}s, system {cpu_system:.2f}s) = "
        f"{result['cpu_us_per_pkt']:.2f} us/pkt, "
        f"{result['cpu_pct']:.0f}% of a core; relay ns Udp "
        f"InDatagrams {snmp['InDatagrams']} RcvbufErrors {snmp['RcvbufErrors']} "
        f"OutDatagrams {snmp['OutDatagrams']} SndbufErrors {snmp['SndbufErrors']}")
    return result


#: trafgen dies when a ring flush finds its socket's send buffer full (EAGAIN), which happens
#: when the kernel falls behind its senders for a moment; the relay is unharmed, so the send
#: is tried again, with fresh counters.
FLOOD_ATTEMPTS = 3


@dataclass(frozen=True)
class Flood:
    """What one unpaced send did, as counter differences."""

    sent: _lab.TrafgenRun
    frames: int
    datagrams: int
    runs: int
    run_time_ns: int
    process_cpu: float
    counters: dict[str, float]
    drops: dict[str, int]


def flood(topology: _lab.RelayTopology, relay: _xdp.XdpRelay, load: Load) -> Flood:
    """One unpaced send with ``kernel.bpf_stats_enabled=1``; counters read around it."""
    for attempt in range(1, FLOOD_ATTEMPTS + 1):
        with _xdp.bpf_stats():
            counters0 = relay.counters(topology)
            drops0 = _xdp.link_drops(topology)
            frames0 = _lab.read_sink_counter(topology.gen)
            peer0 = _lab.udp_snmp(topology.gen)
            cpu0 = _lab.process_cpu_seconds(relay.process.pid)
            stats0 = relay.stats()
            try:
                sent = _lab.flood_trafgen(topology, load.seconds, load.workers)
            except netlab.LabError as e:
                if "Resource temporarily unavailable" not in str(e) or attempt == FLOOD_ATTEMPTS:
                    raise
                log(f"  firezone-xdp: trafgen hit a full send buffer (EAGAIN), attempt "
                    f"{attempt}/{FLOOD_ATTEMPTS}; sending again")
                time.sleep(DRAIN_SECONDS)
                continue
            time.sleep(DRAIN_SECONDS)
            stats1 = relay.stats()
        cpu1 = _lab.process_cpu_seconds(relay.process.pid)
        peer1 = _lab.udp_snmp(topology.gen)
        frames = _lab.read_sink_counter(topology.gen) - frames0
        drops1 = _xdp.link_drops(topology)
        counters1 = relay.counters(topology)
        return Flood(
            sent, frames,
            peer1["InDatagrams"] - peer0["InDatagrams"] + peer1["InErrors"] - peer0["InErrors"],
            stats1.run_cnt - stats0.run_cnt, stats1.run_time_ns - stats0.run_time_ns,
            cpu1 - cpu0, {k: counters1[k] - counters0[k] for k in counters1},
            {k: drops1[k] - drops0[k] for k in drops1})
    raise AssertionError("unreachable")


def measure_xdp(topology: _lab.RelayTopology, load: Load) -> dict[str, float]:
    """One repetition of ``firezone-xdp``: fresh daemon, fresh channel, an unpaced flood."""
    started: list[LabProcess] = []
    with _xdp.xdp_link(topology, load.xdp_mode, load.workers):
        try:
            t_start = time.monotonic()
            relay = _xdp.start_xdp_relay(topology, load.xdp_mode, *PORT_RANGE)
            started.append(relay.process)
            log(f"  firezone-xdp: relay up in {time.monotonic() - t_start:.1f}s "
                f"({load.xdp_mode} mode, program {relay.prog_id})")
            if load.relay_cpu is not None:
                _lab.pin_process(relay.process.pid, load.relay_cpu)
            username, password = relay_process.credentials()
            setup, _ = _lab.start_turn_setup(topology.gen, username, password,
                                             lifetime=load.seconds * 3 + 60)
            started.append(setup)
            sample = flood(topology, relay, load)
            if not relay.process.alive():
                raise netlab.LabError(
                    f"firezone-xdp died during the load:\n{relay.process.log()[-1500:]}")
        finally:
            for process in reversed(started):
                process.stop()
    sent = sample.sent
    if sent.sent == 0:
        raise netlab.LabError("trafgen sent nothing")
    if sample.runs == 0:
        raise netlab.LabError("the XDP program did not run (or bpf_stats did not count)")
    # As for the other systems: frames at the peer's input hook, or its Udp counters.
    delivered = max(sample.frames, sample.datagrams)
    ns = sample.run_time_ns / sample.runs
    in_kernel = sample.counters["xdp_to_peer"]
    result = {
        "pps": delivered / sent.seconds,
        "mbps": delivered * _lab.PAYLOAD * 8 / sent.seconds / 1e6,
        "loss": 1 - delivered / sent.sent,
        "cpu_us_per_pkt": ns / 1000,
        "cpu_pct": sample.run_time_ns / 1e9 / sent.seconds * 100,
        "offered_pps": sent.pps,
        "relay_process_cpu_us_per_pkt": (sample.process_cpu / delivered * 1e6
                                         if delivered else 0.0),
        "in_kernel": in_kernel / delivered if delivered else 0.0,
        **{k: float(v) for k, v in sample.drops.items()},
        "delivered": delivered,
        "sent": sent.sent,
    }
    log(f"  firezone-xdp: sent {sent.sent} in {sent.seconds:.2f}s ({sent.pps:.0f}/s, "
        f"{load.workers} trafgen worker(s)), delivered {delivered} ({sample.frames} frames, "
        f"{sample.datagrams} datagrams at the peer; {result['pps']:.0f}/s, "
        f"loss {result['loss']:.3%}); program ran {sample.runs} times, {ns:.0f} ns per run, "
        f"{result['cpu_pct']:.1f}% of a core; relayed in the kernel {in_kernel:.0f}, in user "
        f"space {sample.counters['userspace_to_peer']:.0f}; relay process cpu "
        f"{sample.process_cpu:.2f}s; "
        + ", ".join(f"{k} {v}" for k, v in sample.drops.items()))
    return result


#: Result keys per system, with their rounding (0: integer).
REPORTED = {"pps": 0, "mbps": 2, "loss": 4, "cpu_us_per_pkt": 3, "cpu_pct": 1, "offered_pps": 0,
            "rcvbuf_errors": 0, "relay_process_cpu_us_per_pkt": 3, "in_kernel": 4,
            "tx_dropped": 0, "rx_drops": 0, "xdp_tx_errors": 0}


def summarise(runs: list[dict[str, float]], errors: list[str],
              generator_bound: str | None = None) -> dict[str, Any]:
    """Medians over the repetitions that ran; an error only if none did."""
    if not runs:
        return {"error": "; ".join(dict.fromkeys(errors)) or "did not run"}
    reported = [{k: v for k, v in run.items() if k in REPORTED and v == v} for run in runs]
    summary: dict[str, Any] = dict(
        median_summary(reported, spread=("pps", "cpu_us_per_pkt"), digits=REPORTED))
    # Only a relay that dropped part of the load was at its limit; otherwise pps is the
    # offered rate the generator managed, a lower bound of the relay's capacity.
    summary["saturated"] = all(run["loss"] > SATURATED_LOSS for run in runs)
    if generator_bound is not None:
        summary["generator_saturated"] = all(run["loss"] <= GENERATOR_BOUND_LOSS for run in runs)
        if summary["generator_saturated"]:
            summary["note"] = generator_bound
    if errors:
        summary["failed_repetitions"] = len(errors)
    return summary


def unavailable(system: str) -> str | None:
    if system == "coturn" and shutil.which("turnserver") is None:
        return "turnserver not installed (apt-get install coturn)"
    if system in ("firezone", "firezone-xdp") and not Path(relay_process.twistd()).exists():
        return f"{relay_process.twistd()} missing (make venv)"
    if system == "firezone-xdp":
        if shutil.which("ethtool") is None:
            return "ethtool not installed (apt-get install ethtool)"
        if not _xdp.BPF_STATS.exists():
            return f"{_xdp.BPF_STATS} missing: the kernel cannot count BPF run time"
    return None


def run(load: Load) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Results and ratios, as BENCHMARKS.md names them."""
    reason = netlab.unavailable_reason(need_nft=True, tools=["trafgen", "tc", "timeout"])
    systems = SYSTEMS if load.xdp else tuple(s for s in SYSTEMS if s != "firezone-xdp")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    errors: dict[str, list[str]] = {s: [] for s in systems}
    skip = {s: why for s in systems if (why := reason or unavailable(s))}
    for system, why in skip.items():
        errors[system].append(why)
    if len(skip) < len(systems):
        with Lab("bench-relay") as lab:
            topology = _lab.build_topology(lab)
            _lab.add_sink_counter(topology.gen, _lab.PEER_IP, _lab.SINK_PORT)
            log(f"lab {lab.prefix}: offering {load.rate}/s for {load.seconds}s "
                f"({load.packets} packets), {load.repetitions} repetition(s), relay on CPU "
                f"{load.relay_cpu if load.relay_cpu is not None else 'any'}"
                + (f"; firezone-xdp: unpaced, {load.workers} trafgen worker(s), "
                   f"{load.xdp_mode} mode" if load.xdp else "")
                + "; load average "
                f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            for repetition in range(load.repetitions):
                order = systems if repetition % 2 == 0 else systems[::-1]
                log(f"repetition {repetition + 1}/{load.repetitions}")
                for system in order:
                    if system in skip:
                        continue
                    try:
                        if system == "firezone-xdp":
                            runs[system].append(measure_xdp(topology, load))
                        else:
                            runs[system].append(measure(topology, system, load))
                    except Exception as e:  # one failed run is reported, not fatal
                        log(f"  {system}: failed: {e}")
                        errors[system].append(str(e).splitlines()[0])
    results: dict[str, dict[str, Any]] = {
        s: summarise(runs[s], errors[s], GENERATOR_NOTE if s == "firezone-xdp" else None)
        for s in systems}
    results.setdefault("firezone-xdp", {"error": XDP_ERROR})
    ratios = {
        "firezone/coturn": ratio(results, "firezone", "coturn", "pps"),
        "firezone-xdp/coturn": ratio(results, "firezone-xdp", "coturn", "pps"),
        "coturn/firezone-xdp cpu": ratio(results, "coturn", "firezone-xdp", "cpu_us_per_pkt"),
        # Not in BENCHMARKS.md's table: the userspace relay's CPU cost against coturn's.
        "coturn/firezone cpu": ratio(results, "coturn", "firezone", "cpu_us_per_pkt"),
    }
    return {k: results[k] for k in SYSTEMS}, ratios


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repetition of 2 s at 150k/s (under a minute)")
    parser.add_argument("--xdp", action="store_true",
                        help="also firezone-xdp: the daemon with --ebpf-offloading, under an "
                             "unpaced load from one trafgen worker per CPU")
    parser.add_argument("--xdp-mode", choices=_xdp.MODES, default="driver",
                        help="XDP attach mode for firezone-xdp (default: driver, i.e. native)")
    parser.add_argument("--rate", type=positive(int),
                        help="offered packets/s for firezone and coturn (firezone-xdp is unpaced)")
    parser.add_argument("--seconds", type=positive(float), help="send time per repetition")
    parser.add_argument("--repetitions", type=positive(int))
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="pin the relay to the last CPU (trafgen -P 1 runs on CPU 0)")
    args = parser.parse_args()
    base = Load(150_000, 2.0, 1) if args.quick else Load(200_000, 5.0, 3)
    cpus = sorted(os.sched_getaffinity(0))
    load = Load(min(args.rate or base.rate, 2_000_000), min(args.seconds or base.seconds, 60.0),
                min(args.repetitions or base.repetitions, 20),
                cpus[-1] if args.pin and len(cpus) > 1 and cpus[-1] != 0 else None,
                xdp=args.xdp, xdp_mode=args.xdp_mode, workers=_lab.trafgen_workers())
    netlab.install_signal_handlers()
    results, ratios = run(load)
    emit("relay", args.quick, load.repetitions, results, ratios)


if __name__ == "__main__":
    main()
