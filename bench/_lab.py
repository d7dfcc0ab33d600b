"""Lab pieces for the relay benchmark: topology, TURN setup, counters and trafgen.

Kept apart from ``bench/relay.py`` so the trial test can drive the same setup
(``tests/lab/test_bench_relay.py``) without trafgen.  Everything it reads or
changes belongs to the lab: nftables counters and a ``tbf`` qdisc in the lab's
namespaces, ``/proc/net/snmp`` (per network namespace), and ``/proc/<pid>/stat``
and CPU affinity of processes the lab started.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import netlab
from tests.lab.netlab import Host, Lab, LabError, LabProcess

RELAY_IP = "198.18.1.1"
CLIENT_IP = "198.18.1.2"
PEER_IP = "198.18.1.3"
TURN_PORT = 3478
CLIENT_PORT = 40000
SINK_PORT = 40001
CHANNEL = 0x4000
PAYLOAD = 1200

BENCH_DIR = Path(__file__).resolve().parent
TURN_SETUP = BENCH_DIR / "turn_setup.py"
NFT_TABLE = "fzbench"

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RelayTopology:
    """``gen`` (client and peer addresses on one veth) -- ``relay``.

    One link, so that an XDP relay can later bounce packets back out of the
    interface they came in on (XDP_TX).
    """

    lab: Lab
    gen: Host
    relay: Host
    gen_if: str
    relay_if: str
    gen_mac: str
    relay_mac: str


def link_mac(host: Host, ifname: str) -> str:
    """The Ethernet address of ``ifname`` inside ``host``."""
    links = json.loads(host.run(["ip", "-j", "link", "show", ifname]).stdout)
    return str(links[0]["address"])


def build_topology(lab: Lab) -> RelayTopology:
    gen, relay = lab.add_host("gen"), lab.add_host("relay")
    link = lab.connect(gen, relay, [f"{CLIENT_IP}/24", f"{PEER_IP}/24"], [f"{RELAY_IP}/24"])
    # Neighbour entries up front: no ARP exchange races the first packets either way.
    gen_mac, relay_mac = link_mac(gen, link.a_if), link_mac(relay, link.b_if)
    relay.run(["ip", "neigh", "replace", CLIENT_IP, "lladdr", gen_mac, "dev", link.b_if,
               "nud", "permanent"])
    relay.run(["ip", "neigh", "replace", PEER_IP, "lladdr", gen_mac, "dev", link.b_if,
               "nud", "permanent"])
    gen.run(["ip", "neigh", "replace", RELAY_IP, "lladdr", relay_mac, "dev", link.a_if,
             "nud", "permanent"])
    return RelayTopology(lab, gen, relay, link.a_if, link.b_if, gen_mac, relay_mac)


# --- counters ----------------------------------------------------------------------------


def add_sink_counter(host: Host, ip: str, port: int) -> None:
    """An nftables counter of UDP datagrams to ``ip:port`` at ``host``'s input hook."""
    host.nft(
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    ip daddr {ip} udp dport {port} counter\n"
        "  }\n"
        "}\n"
    )


def read_sink_counter(host: Host) -> int:
    """Packets counted so far by :func:`add_sink_counter`."""
    ruleset = json.loads(host.run(["nft", "-j", "list", "table", "inet", NFT_TABLE]).stdout)
    for item in ruleset.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise LabError(f"no counter in table inet {NFT_TABLE} of {host.ns}")


def udp_snmp(host: Host) -> dict[str, int]:
    """The ``Udp:`` line of ``/proc/net/snmp`` as seen inside ``host`` (per namespace)."""
    lines = [line.split() for line in host.sh("cat /proc/net/snmp").splitlines()
             if line.startswith("Udp:")]
    if len(lines) < 2:
        raise LabError(f"no Udp lines in /proc/net/snmp of {host.ns}")
    return {name: int(value) for name, value in zip(lines[0][1:], lines[1][1:], strict=True)}


def process_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of the whole process: all its threads, live and exited."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process."""
    return sum(process_cpu_times(pid))


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # a thread that just ended
            pass


# --- TURN setup ---------------------------------------------------------------------------


def start_turn_setup(host: Host, username: str, password: str, *, sink: bool = True,
                     send: int = 0, lifetime: float = 120.0,
                     timeout: float = 15.0) -> tuple[LabProcess, dict[str, Any]]:
    """Run ``bench/turn_setup.py`` in ``host``; its JSON result once the channel is bound."""
    argv = [f"--server={RELAY_IP}:{TURN_PORT}", f"--bind={CLIENT_IP}:{CLIENT_PORT}",
            f"--peer={PEER_IP}:{SINK_PORT}", f"--username={username}",
            f"--password={password}", f"--channel={CHANNEL:#x}", f"--lifetime={lifetime}",
            f"--send={send}", f"--size={PAYLOAD}"]
    if sink:
        argv.append("--sink")
    process = host.python(TURN_SETUP, *argv, name="turn_setup")
    result: dict[str, Any] = {}

    def answered() -> bool:
        for line in process.log().splitlines():
            if line.startswith("{"):
                result.update(json.loads(line))
                return True
        return not process.alive()

    netlab.wait_until(answered, timeout=timeout, what="TURN allocation and channel bind")
    if not result.get("ok"):
        process.stop()
        raise LabError(f"TURN setup failed: {result.get('error') or process.log()[-1500:]}")
    return process, result


# --- trafgen ------------------------------------------------------------------------------


def trafgen_config(src_mac: str, dst_mac: str, payload: int = PAYLOAD) -> str:
    """One Ethernet/IPv4/UDP frame: ChannelData on CHANNEL from the client to the relay.

    trafgen fills in the IPv4 total length, header checksum and UDP checksum.
    """
    return (
        "{\n"
        f"  eth(da={dst_mac}, sa={src_mac}),\n"
        f"  ipv4(sa={CLIENT_IP}, da={RELAY_IP}, ttl=64, df),\n"
        f"  udp(sp={CLIENT_PORT}, dp={TURN_PORT}),\n"
        f"  c16({CHANNEL}), c16({payload}),\n"
        f"  fill(0xa5, {payload})\n"
        "}\n"
    )


@dataclass(frozen=True)
class TrafgenRun:
    sent: int
    seconds: float  # the sender's own active time, or wall time if it did not print it
    wall_seconds: float

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


_SENT = re.compile(r"^\s*(\d+) packets outgoing", re.M)
_TIME = re.compile(r"^\s*(\d+) sec, (\d+) usec on CPU", re.M)


def parse_trafgen(output: str, wall_seconds: float) -> TrafgenRun:
    """Packets sent and the time they took, from trafgen's closing statistics."""
    sent = _SENT.search(output)
    if sent is None:
        raise LabError(f"no 'packets outgoing' in trafgen output:\n{output[-1500:]}")
    times = _TIME.findall(output)
    seconds = max((int(s) + int(us) / 1e6 for s, us in times), default=wall_seconds)
    return TrafgenRun(int(sent.group(1)), seconds or wall_seconds, wall_seconds)


#: Ethernet + IPv4 + UDP + ChannelData headers around the payload.
FRAME_OVERHEAD = 14 + 20 + 8 + 4
#: Token bucket of the pacing qdisc: a small burst keeps the offered load smooth.
PACING_BURST_FRAMES = 32
#: Queue of the pacing qdisc; larger than trafgen's socket send buffer (wmem_default), so
#: trafgen sleeps in sendto() when it runs ahead instead of spinning on ENOBUFS.
PACING_LIMIT_BYTES = 1 << 20


def pace(topology: RelayTopology, rate_pps: int, payload: int = PAYLOAD) -> None:
    """A token-bucket qdisc on ``gen``'s veth that lets ``rate_pps`` frames/s through."""
    frame = payload + FRAME_OVERHEAD
    topology.gen.run(["tc", "qdisc", "replace", "dev", topology.gen_if, "root", "tbf",
                      "rate", f"{rate_pps * frame * 8}bit",
                      "burst", str(frame * PACING_BURST_FRAMES),
                      "limit", str(PACING_LIMIT_BYTES)])


def run_trafgen(topology: RelayTopology, packets: int, rate_pps: int,
                max_seconds: float | None = None) -> TrafgenRun:
    """Send ``packets`` frames at ``rate_pps`` from one CPU, for at most ``max_seconds``.

    trafgen's own ``-b <rate>pps`` shaper sends each second's packets as one
    burst at full speed and then sleeps for the rest of the second, which is
    a 1 Hz on/off load, not a rate.  So the rate comes from a ``tbf`` qdisc on
    the sender's veth instead: ``-q`` sends through the qdisc, ``-t 0ns``
    selects trafgen's per-packet ``sendto`` path, which retries a packet the
    qdisc refused, so trafgen's count is what left the interface.

    If trafgen cannot keep up (a busy machine), SIGINT after ``max_seconds``
    (default: twice the planned time) ends the send; trafgen still prints
    what it sent.  ``-Q`` leaves IRQ affinities alone and ``--no-sock-mem``
    leaves the global socket memory sysctls alone (this trafgen's ``-A``
    short option is broken): nothing outside the namespace is touched.
    """
    pace(topology, rate_pps)
    config = topology.lab.workdir / "channeldata.trafgen"
    config.write_text(trafgen_config(topology.gen_mac, topology.relay_mac))
    limit = max_seconds if max_seconds is not None else 2 * packets / rate_pps + 1
    started = time.monotonic()
    result = topology.gen.run(
        ["timeout", "--signal=INT", "--kill-after=5", f"{limit:.1f}",
         "trafgen", "-o", topology.gen_if, "-i", str(config), "-n", str(packets),
         "-t", "0ns", "-q", "-P", "1", "-Q", "--no-sock-mem"],
        timeout=limit + 15, check=False,
    )
    wall = time.monotonic() - started
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    if result.returncode not in (0, 124):  # 124: stopped by timeout, stats still printed
        raise LabError(f"trafgen failed ({result.returncode}):\n{output[-1500:]}")
    return parse_trafgen(output, wall)


def trafgen_workers() -> int:
    """How many trafgen workers can run, one per CPU: trafgen pins worker i to CPU i, so
    this counts the CPUs 0, 1, ... this process may use, up to the first gap."""
    allowed = os.sched_getaffinity(0)
    count = 0
    while count in allowed:
        count += 1
    return max(count, 1)


def flood_trafgen(topology: RelayTopology, seconds: float, workers: int,
                  max_rate: int = 2_000_000) -> TrafgenRun:
    """As many frames as ``workers`` trafgen workers send in ``seconds``: the highest rate.

    Unlike :func:`run_trafgen` nothing paces it: each worker (pinned by trafgen to
    CPU 0, 1, ...) fills its own packet ring and flushes it straight to the driver,
    past the qdisc (trafgen's default without ``-q``), so a ``tbf`` left by
    :func:`run_trafgen` does not apply.  SIGINT after ``seconds`` ends the send
    (trafgen prints its statistics); ``max_rate * seconds`` bounds the count.  The
    rate is what the machine allows the sender *and* every receive path it runs in
    softirq on the same CPUs.
    """
    config = topology.lab.workdir / "channeldata.trafgen"
    config.write_text(trafgen_config(topology.gen_mac, topology.relay_mac))
    started = time.monotonic()
    result = topology.gen.run(
        ["timeout", "--signal=INT", "--kill-after=5", f"{seconds:.1f}",
         "trafgen", "-o", topology.gen_if, "-i", str(config), "-n",
         str(int(max_rate * seconds)), "-P", str(workers), "-Q", "--no-sock-mem"],
        timeout=seconds + 20, check=False,
    )
    wall = time.monotonic() - started
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    if result.returncode not in (0, 124):
        raise LabError(f"trafgen failed ({result.returncode}):\n{output[-1500:]}")
    return parse_trafgen(output, wall)


def python_in(host: Host, code: str, *args: str, name: str = "python") -> LabProcess:
    """A short inline Python program inside ``host`` (sinks in tests)."""
    return host.spawn([sys.executable, "-c", code, *args], name=name)
