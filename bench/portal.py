"""Portal benchmark: clients held by one node, change push latency, authorization round trip.

Question: how many client sockets does one portal process hold, what does each
cost in memory, how long does an admin change take to reach all of them, and
how long does an authorization round trip (client -> portal -> gateway ->
portal -> client) take?  Targets from the issue: 2,000 clients held; change ->
all clients p99 <= 1 s; round trip p50 <= 20 ms.  There is no peer system to
compare with here, so there are no ratios.

Setup (all on loopback, no namespaces needed):

* a throwaway PostgreSQL 15 cluster (``tests/portal/pgcluster.py``), populated
  with ``firezone-ctl`` (``tests/lab/portal_process.populate``): account
  ``acme``, site ``HQ``, service account ``robot`` in group ``Robots`` with a
  policy for one resource, and one resource per repetition that no policy
  grants yet; one client token and one gateway token;
* one ``twistd -n firezone-portal`` on that database, ``RLIMIT_NOFILE`` raised
  for it (2 * N + 1024);
* ``bench/portal_load.py`` in its own process (asyncio, raw WebSocket clients,
  a heartbeat every 10 s each): a scripted gateway, one client that requests
  authorizations, and N clients (2,000; ``--quick`` 300).

Why PostgreSQL and not the default SQLite: the timed change is made with
``firezone-ctl``, a separate process, and the SQLite store's notifications
never leave the process that wrote (``firezone/portal/store/sqlite.py``); the
portal has no admin path of its own yet.  On SQLite a ctl change reaches
connected clients only at the next minute tick.

Why one token from N source addresses: the portal admits one connect per
second per (remote IP, token) (503 ``rate_limit``; checked in
``tests/lab/test_portal_processes.py``), so N clients sharing a token from
127.0.0.1 would take N seconds to connect.  Each client binds its own
127.10.x.y address instead (all of 127/8 is local on Linux): that is also what
N real devices look like, and it needs no token set-up.

Measurements:

* ``clients``: clients still open at the end whose heartbeats are answered;
* ``mem_per_client_kb``: the portal's ``VmRSS`` after the N clients joined (and
  2 s to settle) minus before they connected, divided by N;
* ``push_p50_ms`` / ``push_p99_ms``: per repetition, ``firezone-ctl policy
  create`` grants one of the prepared resources to the group; latency per
  client = wall-clock arrival of its ``resource_created_or_updated`` minus the
  policy row's ``inserted_at`` (ctl's clock reading just before the INSERT, so
  the commit and NOTIFY are inside the measurement); p50/p99 over the N
  clients, median over repetitions (``_min``/``_max`` for p99);
* ``authz_p50_ms`` / ``authz_p99_ms``: sequential round trips, measured in the
  load generator from sending ``request_authorization`` to reading
  ``authorization_created`` (the gateway answers each ``create_authorization``
  at once), while the N clients are held; a request unanswered after 5 s is
  counted in ``authz_failures``, not in the percentiles;
* ``hold_cpu_pct`` (default run only): the portal's CPU, in % of one core,
  over 65 s of just holding the N clients (their heartbeats and one pass of
  the portal's minute timer, which re-evaluates every client's access).

Caveats: 2 shared vCPUs run the portal, PostgreSQL and the load generator;
the portal is one Python process with one reactor thread.

Run as root: ``.venv/bin/python bench/portal.py [--quick]``; the last stdout
line is the JSON result, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import emit, log, median_summary, process_cpu_seconds  # noqa: E402
from tests.lab.portal_process import (  # noqa: E402
    Ctl,
    PortalProcess,
    World,
    populate,
    rss_kb,
    start_portal,
    stop_all,
)
from tests.portal import pgcluster  # noqa: E402

LOAD = Path(__file__).resolve().parent / "portal_load.py"
#: Longer than the portal's minute timer, so one full re-evaluation of every client falls in it.
HOLD_WINDOW = 65.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class LoadGenerator:
    """``bench/portal_load.py`` as a child process, driven one JSON line at a time."""

    def __init__(self, portal: PortalProcess, world: World, workdir: Path, nofile: int) -> None:
        self._stderr: IO[bytes] = open(workdir / "portal_load.log", "wb")

        def raise_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.popen = subprocess.Popen(
            [sys.executable, str(LOAD), "--port", str(portal.port),
             "--client-token", world.client_token, "--gateway-token", world.gateway_token],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=str(ROOT), start_new_session=True, preexec_fn=raise_limit,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self._answers.put(json.loads(line))
            except ValueError:
                continue
        self._answers.put(None)

    def send(self, command: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(command) + "\n").encode())
        self.popen.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the load generator did not answer within {timeout}s") from None
        if answer is None:
            raise RuntimeError("the load generator exited")
        if answer.get("event") == "error":
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.ask({"cmd": "quit"}, timeout=10)
            except (RuntimeError, OSError):
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._stderr.close()


def measure(world: World, portal: PortalProcess, load: LoadGenerator, n: int, reps: int,
            authz_count: int, quick: bool) -> dict[str, Any]:
    pid = portal.process.pid
    load.ask({"cmd": "setup"}, timeout=60)
    # Warm the paths (imports, caches) before the baseline, so it is not charged to clients.
    load.ask({"cmd": "authz", "resource_id": world.resource_id, "count": 5}, timeout=60)
    time.sleep(1.0)
    before = rss_kb(pid)

    connected = load.ask({"cmd": "connect", "n": n, "deadline": 600}, timeout=660)
    joined = connected["joined"]
    log(f"connect: {joined}/{n} joined in {connected['seconds']} s; failures "
        f"{connected['failures'] or 'none'}")
    time.sleep(2.0)
    after = rss_kb(pid)
    out: dict[str, Any] = {"clients": joined, "target_clients": n}
    if joined:
        out["mem_per_client_kb"] = round((after - before) / joined, 1)
    log(f"portal RSS {before} KiB -> {after} KiB")
    if connected["failures"]:
        out["connect_failures"] = connected["failures"]

    if not quick:
        # Holding N: heartbeats, and the minute timer that re-evaluates every client.
        cpu0 = process_cpu_seconds(pid)
        time.sleep(HOLD_WINDOW)
        out["hold_cpu_pct"] = round((process_cpu_seconds(pid) - cpu0) / HOLD_WINDOW * 100, 1)
        log(f"holding {joined} clients for {HOLD_WINDOW:.0f} s: portal CPU "
            f"{out['hold_cpu_pct']} % of a core")

    runs = []
    ctl = world.ctl()
    for rep, resource_id in enumerate(world.extra_resource_ids[:reps]):
        cpu0 = process_cpu_seconds(pid)
        load.send({"cmd": "watch", "resource_id": resource_id, "timeout": 30 if quick else 60})
        change = ctl.timed("policy", "create", "--account", world.account, "--group", "Robots",
                           "--resource", resource_id)
        if change.returncode != 0:
            raise RuntimeError(f"firezone-ctl policy create: {change.stderr.strip()}")
        arrivals = load.receive(timeout=90)
        cpu = process_cpu_seconds(pid) - cpu0
        policy_id = change.stdout.strip()
        [row] = [p for p in ctl.rows("policies", world.account) if p["id"] == policy_id]
        inserted = float(row["inserted_at"])
        latencies = [(t - inserted) * 1000 for t in arrivals["times"]]
        if not latencies:
            raise RuntimeError("no client received the change")
        run = {"push_p50_ms": percentile(latencies, 50), "push_p99_ms": percentile(latencies, 99)}
        runs.append(run)
        from_ctl = [(t - change.started) * 1000 for t in arrivals["times"]]
        log(f"push {rep + 1}/{reps}: p50 {run['push_p50_ms']:.0f} ms, p99 "
            f"{run['push_p99_ms']:.0f} ms, max {max(latencies):.0f} ms over "
            f"{len(latencies)} clients ({arrivals['missing']} missing); from ctl start p99 "
            f"{percentile(from_ctl, 99):.0f} ms; portal CPU {cpu:.2f} s")
        if arrivals["missing"]:
            out.setdefault("push_missing", 0)
            out["push_missing"] += arrivals["missing"]
        time.sleep(1.0)
    out.update(median_summary(runs, spread=["push_p99_ms"], digits={"push_p50_ms": 1,
                                                                    "push_p99_ms": 1,
                                                                    "push_p99_ms_min": 1,
                                                                    "push_p99_ms_max": 1}))

    authz = load.ask({"cmd": "authz", "resource_id": world.resource_id, "count": authz_count},
                     timeout=authz_count * 6 + 10 * 40 + 30)
    rtts = authz["rtt_ms"]
    if rtts:
        out["authz_p50_ms"] = round(percentile(rtts, 50), 2)
        out["authz_p99_ms"] = round(percentile(rtts, 99), 2)
    log(f"authz: {len(rtts)}/{authz_count} ok, failures {authz['failures'] or 'none'}")
    if authz["failures"]:
        out["authz_failures"] = authz["failures"]

    status = load.ask({"cmd": "status"}, timeout=30)
    log(f"held: {status['open']} open, heartbeats {status['heartbeats_ok']}/"
        f"{status['heartbeats_sent']} answered, {status['unanswered']} lagging")
    out["clients"] = status["open"] - status["unanswered"]
    return out


def run(quick: bool) -> tuple[int, dict[str, Any]]:
    n = 300 if quick else 2000
    reps = 2 if quick else 3
    authz_count = 100 if quick else 200
    reason = pgcluster.unavailable_reason()
    if reason is not None:
        return reps, {"firezone": {"error": reason}}
    workdir = Path(tempfile.mkdtemp(prefix="fz-bench-portal-"))
    cluster = pgcluster.ThrowawayCluster()
    load: LoadGenerator | None = None
    try:
        started = time.monotonic()
        cluster.start()
        dsn = cluster.create_database()
        world = populate(Ctl(dsn, workdir / "data"), extra_resources=reps, other_account=False)
        log(f"cluster and rows ready in {time.monotonic() - started:.1f} s")
        nofile = 2 * n + 1024
        portal = start_portal(workdir, dsn, workdir / "data", nofile=nofile)
        load = LoadGenerator(portal, world, workdir, nofile)
        try:
            result = measure(world, portal, load, n, reps, authz_count, quick)
        except Exception as e:
            log(f"failed: {e}\n--- portal log tail ---\n{portal.process.log()[-3000:]}")
            result = {"error": str(e)}
        if not portal.process.alive():
            result["error"] = f"the portal exited ({portal.process.popen.returncode})"
        return reps, {"firezone": result}
    finally:
        if load is not None:
            load.stop()
        stop_all()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 clients, under a minute")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    reps, results = run(args.quick)
    log(f"done in {time.monotonic() - started:.0f} s")
    emit("portal", args.quick, reps, results, {})


if __name__ == "__main__":
    main()
