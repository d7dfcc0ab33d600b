"""Connect benchmark: from "start connecting" to the first WireGuard data, per path kind.

Question: once both devices hold their candidates (relay allocations done, RTTs
measured), how long until the first IP packet has crossed the tunnel and its
answer came back, when the path is ``host`` (public addresses), ``srflx`` (each
device behind its own cone NAT) or ``relay`` (each behind a symmetric NAT)?
Targets: host and srflx <= 300 ms, relayed <= 500 ms.

Setup (``tests/lab/connectivity.py``): one lab with the three scenarios side by
side around one internet router, one relay (``twistd firezone-relay``), two
nodes per scenario (``tests/lab/node_runner.py``: a real TUN, one UDP socket)
and the test's signalling hub standing in for the portal.

Per repetition:

* every node process is started afresh on an ephemeral port: new keys, new NAT
  mappings (cold NAT state, nothing punched yet), new TURN allocations.  The
  bench waits until each node has its allocation and an RTT to the relay;
* then, one scenario at a time (order rotated across repetitions), at ``t0``
  the gateway and the client get their ``upsert`` (as the portal sends them;
  candidates then trickle through the hub) and the client's node gets an ICMP
  echo request for the gateway's tunnel address, exactly as if read from its
  TUN.  The node holds it until a pair is nominated and the WireGuard handshake
  is done; the gateway's kernel answers it;
* ``first data`` = the moment the echo reply comes out of the client's tunnel,
  minus ``t0`` (both ``time.time()`` on this machine): ICE checks, nomination,
  the WireGuard handshake and one data round trip.  ``nominated`` = ``t0`` to
  the client's report that it nominated a pair of the scenario's kind (in the
  srflx scenario a relayed pair usually carries the first data and the NAT
  binding is nominated a retransmission later).

Results per kind: ``p50_ms`` and ``p99_ms`` of first data (nearest rank; with
20 runs p99 is the slowest), ``nominated_p50_ms`` / ``nominated_p99_ms``,
``first_data_paths`` (which path kind carried the first reply), ``runs`` and
``errors``.  No ratios: there is no second system to compare with here.

Run as root: ``.venv/bin/python bench/connect.py [--quick] [--runs N]``; the
last stdout line is the JSON result, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import emit, log  # noqa: E402
from tests.lab import connectivity as cx  # noqa: E402
from tests.lab import netlab  # noqa: E402
from tests.lab.netlab import Lab, LabError  # noqa: E402
from tests.lab.signalling import HubError, SignallingHub  # noqa: E402

KINDS = cx.KINDS
TARGET_MS = {"host": 300, "srflx": 300, "relay": 500}
FIRST_DATA_TIMEOUT = 20.0
NOMINATION_TIMEOUT = 10.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def restart_all(hub: SignallingHub, scenarios: dict[str, cx.Scenario],
                relays: list[cx.Relay]) -> None:
    nodes = [(s.client, "client") for s in scenarios.values()]
    nodes += [(s.gateway, "gateway") for s in scenarios.values()]
    cx.start_nodes(hub, nodes, port=0)
    cx.give_relays(hub, [side for side, _ in nodes], relays)


def measure(hub: SignallingHub, scenario: cx.Scenario, sequence: int
            ) -> tuple[float, float | None, str]:
    """(first data ms, nominated ms or None, path kind of the first reply)."""
    to_gateway, to_client = cx.upserts(scenario, base64.b64encode(os.urandom(32)).decode())
    client, gateway = scenario.client, scenario.gateway
    mark = hub.mark(client.name)
    probe = {"type": "probe", "peer_id": gateway.name, "id": sequence, "dst": gateway.tun_ip}
    t0 = time.time()
    hub.send(gateway.name, to_gateway)
    hub.send(client.name, to_client)
    hub.send(client.name, probe)
    reply = hub.wait_type(client.name, "probe_reply", FIRST_DATA_TIMEOUT, after=mark,
                          id=sequence)
    first_ms = (reply["t"] - t0) * 1000
    nominated_ms: float | None
    try:
        nominated = hub.wait_for(
            client.name, lambda m: m.get("type") in ("connected", "path_changed")
            and m.get("path") == scenario.kind, NOMINATION_TIMEOUT,
            what=f"{scenario.kind} nomination", after=mark)
        nominated_ms = (nominated["t"] - t0) * 1000
    except HubError:
        nominated_ms = None
    return first_ms, nominated_ms, str(reply["path"])


def summarise(first: list[float], nominated: list[float], paths: Counter[str], runs: int,
              errors: list[str]) -> dict[str, Any]:
    if not first:
        return {"error": "; ".join(errors[:3]) or "no successful run"}
    result: dict[str, Any] = {
        "p50_ms": round(percentile(first, 50), 1),
        "p99_ms": round(percentile(first, 99), 1),
        "min_ms": round(min(first), 1),
        "max_ms": round(max(first), 1),
    }
    if nominated:
        result["nominated_p50_ms"] = round(percentile(nominated, 50), 1)
        result["nominated_p99_ms"] = round(percentile(nominated, 99), 1)
    result["first_data_paths"] = dict(paths)
    result["runs"] = runs
    if errors:
        result["errors"] = len(errors)
    return result


def run(quick: bool, runs: int) -> dict[str, Any]:
    first: dict[str, list[float]] = {k: [] for k in KINDS}
    nominated: dict[str, list[float]] = {k: [] for k in KINDS}
    paths: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    errors: dict[str, list[str]] = {k: [] for k in KINDS}
    with Lab("bench-connect") as lab:
        hub = SignallingHub(lab.workdir / "hub.sock")
        try:
            scenarios, relays, _ = cx.build(lab, KINDS, relays=1)
            cx.start_relays(relays)
            for repetition in range(runs):
                restart_all(hub, scenarios, relays)
                shift = repetition % len(KINDS)
                for kind in KINDS[shift:] + KINDS[:shift]:
                    try:
                        first_ms, nominated_ms, path = measure(hub, scenarios[kind],
                                                               repetition + 1)
                    except (HubError, LabError) as e:
                        errors[kind].append(str(e).splitlines()[0])
                        log(f"run {repetition + 1}/{runs} {kind}: {str(e).splitlines()[0]}")
                        continue
                    first[kind].append(first_ms)
                    paths[kind][path] += 1
                    if nominated_ms is not None:
                        nominated[kind].append(nominated_ms)
                    shown = f"{nominated_ms:.1f}" if nominated_ms is not None else "-"
                    log(f"run {repetition + 1}/{runs} {kind}: first data {first_ms:.1f} ms "
                        f"over {path}; {kind} nominated after {shown} ms")
        finally:
            hub.close()
    return {kind: summarise(first[kind], nominated[kind], paths[kind], len(first[kind]),
                            errors[kind]) for kind in KINDS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs, under a minute")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default 20)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 20)
    reason = netlab.unavailable_reason(need_nft=True)
    if reason is None and not Path("/dev/net/tun").exists():
        reason = "no /dev/net/tun"
    if reason is not None:
        emit("connect", args.quick, 0, {k: {"error": reason} for k in KINDS}, {})
        return 1
    netlab.install_signal_handlers()
    started = time.monotonic()
    results = run(args.quick, runs)
    for kind in KINDS:
        p50 = results[kind].get("p50_ms")
        if p50 is not None:
            verdict = "within" if results[kind]["p99_ms"] <= TARGET_MS[kind] else "OVER"
            log(f"{kind}: p50 {p50} ms, p99 {results[kind]['p99_ms']} ms "
                f"({verdict} the {TARGET_MS[kind]} ms target)")
    log(f"took {time.monotonic() - started:.1f} s")
    emit("connect", args.quick, runs, results, {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
