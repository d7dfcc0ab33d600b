"""The lab: real hosts built out of Linux network namespaces, for integration tests and benchmarks.

A ``Lab`` creates namespaces with a per-run unique prefix, joins them with veth
pairs, turns some into routers (forwarding, NAT, random loss with nftables) and
runs processes inside them with their output collected in log files.  Whatever
happens (success, a failed assertion, an exception, Ctrl-C, interpreter exit),
``teardown`` kills every process the lab started, by PID, and deletes every
namespace, which takes its interfaces and nftables rules with it.

Only the documentation and benchmarking ranges are used (198.18.0.0/15,
192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and only inside
namespaces the lab made.  The lab drives iproute2 and nft as subprocesses: they
are what an operator would type, and each step shows up as a readable command
in the failure output.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

ALLOWED_NETWORKS = [
    ipaddress.ip_network(n)
    for n in (
        "198.18.0.0/15",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
        "100.64.0.0/10",
        "fd00:2021:1111::/48",
    )
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_live_labs: set[Lab] = set()
_live_lock = threading.Lock()


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def unavailable_reason(need_nft: bool = False, tools: Sequence[str] = ()) -> str | None:
    """Why lab tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "lab tests need root to create network namespaces"
    required = ["ip", *tools] + (["nft"] if need_nft else [])
    missing = [t for t in required if shutil.which(t) is None]
    if missing:
        return f"lab tests need {', '.join(missing)} (run `make deps`)"
    if not Path("/var/run/netns").exists() and not os.access("/var/run", os.W_OK):
        return "cannot create /var/run/netns"
    return None


def check_address(address: str) -> None:
    """Refuse any address outside the ranges tests may use."""
    ip = ipaddress.ip_interface(address).ip
    if not any(ip in net for net in ALLOWED_NETWORKS):
        raise LabError(f"{address} is outside the lab's allowed ranges")


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30.0,
         input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and result.returncode != 0:
        raise LabError(
            f"command failed ({result.returncode}): {' '.join(argv)}\n"
            f"stdout: {result.stdout.decode(errors='replace').strip()}\n"
            f"stderr: {result.stderr.decode(errors='replace').strip()}"
        )
    return result


@dataclass
class LabProcess:
    """A process running in a lab host; its stdout and stderr go to ``log_path``."""

    name: str
    host: Host
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self.name} still running after {timeout}s") from e

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(grace)
        self._log_file.close()
        return self.popen.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each lab process leads its own session, so its children go with it.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Host:
    """One network namespace."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}-{name}"
        self.interfaces: dict[str, list[str]] = {}
        self._next_if = 0

    def __repr__(self) -> str:
        return f"<Host {self.ns}>"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 30.0,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a command to completion inside this host."""
        return _run(self.exec_argv(argv), check=check, timeout=timeout, input=input)

    def sh(self, command: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run a shell command line inside this host and return its stdout."""
        return self.run(["sh", "-c", command], check=check, timeout=timeout).stdout.decode()

    def spawn(self, argv: Sequence[str], name: str | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> LabProcess:
        """Start a long-running process inside this host; the lab stops it at teardown."""
        return self.lab._spawn(self, list(argv), name or Path(argv[0]).name, env, cwd)

    def python(self, script: Path | str, *args: str, name: str | None = None,
               env: dict[str, str] | None = None) -> LabProcess:
        """Start a Python script from the project with the test interpreter."""
        return self.spawn([sys.executable, str(script), *args], name=name or Path(script).stem,
                          env=env, cwd=PROJECT_ROOT)

    def new_interface_name(self) -> str:
        name = f"eth{self._next_if}"
        self._next_if += 1
        return name

    def add_address(self, interface: str, address: str) -> None:
        check_address(address)
        family = "-6" if ":" in address else "-4"
        extra = ["nodad"] if family == "-6" else []
        self.run(["ip", family, "addr", "add", address, "dev", interface, *extra])
        self.interfaces.setdefault(interface, []).append(address)

    def add_route(self, destination: str, via: str | None = None, dev: str | None = None) -> None:
        family = "-6" if ":" in (via or destination) else "-4"
        argv = ["ip", family, "route", "replace", destination]
        if via:
            argv += ["via", via]
        if dev:
            argv += ["dev", dev]
        self.run(argv)

    def set_forwarding(self, enabled: bool = True) -> None:
        value = "1" if enabled else "0"
        self.run(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}"])
        self.run(["sysctl", "-q", "-w", f"net.ipv6.conf.all.forwarding={value}"])

    def address(self, interface: str | None = None, family: int = 4) -> str:
        """The first address (without prefix length) of ``family`` on ``interface``."""
        for ifname, addresses in self.interfaces.items():
            if interface is not None and ifname != interface:
                continue
            for addr in addresses:
                ip = ipaddress.ip_interface(addr).ip
                if ip.version == family:
                    return str(ip)
        raise LabError(f"{self.ns} has no IPv{family} address on {interface or 'any interface'}")

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset into this host."""
        _run(self.exec_argv(["nft", "-f", "-"]), input=ruleset.encode())


@dataclass
class Link:
    a: Host
    a_if: str
    b: Host
    b_if: str


class Lab:
    """A set of namespaces, links and processes that is always torn down together."""

    def __init__(self, name: str = "lab", workdir: Path | None = None) -> None:
        # Short, unique per run: namespace names appear in /var/run/netns.
        self.prefix = f"fz{uuid.uuid4().hex[:6]}"
        self.name = name
        self.hosts: dict[str, Host] = {}
        self.links: list[Link] = []
        self.processes: list[LabProcess] = []
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._torn_down = False
        with _live_lock:
            _live_labs.add(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            raise LabError(f"host {name} exists")
        host = Host(self, name)
        _run(["ip", "netns", "add", host.ns])
        self.hosts[name] = host
        host.run(["ip", "link", "set", "lo", "up"])
        # No duplicate-address detection: link-local addresses usable at once, no 2 s stalls.
        for scope in ("all", "default"):
            host.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.accept_dad=0"], check=False)
        return host

    def add_router(self, name: str) -> Host:
        host = self.add_host(name)
        host.set_forwarding(True)
        return host

    def connect(self, a: Host, b: Host, a_addresses: Sequence[str] = (),
                b_addresses: Sequence[str] = (), mtu: int | None = None) -> Link:
        """A veth pair between two hosts, created directly inside them (no root-ns names)."""
        a_if, b_if = a.new_interface_name(), b.new_interface_name()
        for address in (*a_addresses, *b_addresses):
            check_address(address)
        _run(["ip", "link", "add", a_if, "netns", a.ns, "type", "veth",
              "peer", "name", b_if, "netns", b.ns])
        for host, ifname, addresses in ((a, a_if, a_addresses), (b, b_if, b_addresses)):
            if mtu is not None:
                host.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
            for address in addresses:
                host.add_address(ifname, address)
            host.interfaces.setdefault(ifname, [])
            host.run(["ip", "link", "set", ifname, "up"])
        link = Link(a, a_if, b, b_if)
        self.links.append(link)
        return link

    def add_nat(self, router: Host, outside_interface: str, kind: str = "cone") -> None:
        """Masquerade traffic leaving ``outside_interface``.

        ``cone``: Linux keeps the source port when it is free, so one inside
        socket maps to one outside port for every destination (endpoint-independent
        mapping).  ``symmetric``: ``fully-random`` picks a new port per destination.
        """
        if kind not in ("cone", "symmetric"):
            raise LabError(f"unknown NAT kind {kind!r}")
        flags = " fully-random" if kind == "symmetric" else ""
        router.nft(
            "table ip fzlab_nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{outside_interface}" masquerade{flags}\n'
            "  }\n"
            "}\n"
        )

    def add_loss(self, router: Host, percent: int, protocol: str = "udp") -> None:
        """Drop ``percent``% of forwarded ``protocol`` packets at random (no netem here)."""
        if not 0 <= percent <= 100:
            raise LabError("loss percent must be 0-100")
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        router.nft(
            "table inet fzlab_loss {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            f"    meta l4proto {protocol} {match}drop\n"
            "  }\n"
            "}\n"
        )

    def _spawn(self, host: Host, argv: list[str], name: str, env: dict[str, str] | None,
               cwd: Path | None) -> LabProcess:
        if self._torn_down:
            raise LabError("lab already torn down")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        log_path = self.workdir / f"{host.name}.{safe}.{len(self.processes)}.log"
        log_file = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        popen = subprocess.Popen(
            host.exec_argv(argv), stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=full_env, cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
        process = LabProcess(name, host, argv, popen, log_path, log_file)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        """Every process log, for a failure message."""
        parts = []
        for process in self.processes:
            parts.append(f"--- {process.host.name}: {' '.join(process.argv)} ---\n{process.log()}")
        return "\n".join(parts)

    def teardown(self) -> None:
        """Stop every process and delete every namespace; safe to call more than once."""
        if self._torn_down:
            return
        self._torn_down = True
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as e:  # keep going: the namespaces must go regardless
                errors.append(f"{process.name}: {e}")
        for host in reversed(list(self.hosts.values())):
            # Kill anything else still inside (e.g. a daemon that double-forked).
            for pid in _pids_in_namespace(host.ns):
                _signal_group(pid, signal.SIGKILL)
            result = _run(["ip", "netns", "del", host.ns], check=False)
            if result.returncode != 0 and Path(f"/var/run/netns/{host.ns}").exists():
                errors.append(f"{host.ns}: {result.stderr.decode(errors='replace').strip()}")
        with _live_lock:
            _live_labs.discard(self)
        if errors:
            raise LabError("teardown incomplete: " + "; ".join(errors))

    def namespaces(self) -> list[str]:
        """Namespaces with this lab's prefix that exist right now."""
        return lab_namespaces(self.prefix)


def star(lab: Lab, names: Sequence[str], mtu: int | None = None) -> dict[str, Host]:
    """Hosts around one router ``inet``: host i gets 198.18.i.2/24 and 2001:db8:i::2/64.

    The router is .1 / ::1 on each segment and every host's default route.
    """
    router = lab.add_router("inet")
    hosts = {"inet": router}
    for i, name in enumerate(names, start=1):
        host = lab.add_host(name)
        lab.connect(host, router, [f"198.18.{i}.2/24", f"2001:db8:{i}::2/64"],
                    [f"198.18.{i}.1/24", f"2001:db8:{i}::1/64"], mtu=mtu)
        host.add_route("default", via=f"198.18.{i}.1")
        host.add_route("default", via=f"2001:db8:{i}::1")
        hosts[name] = host
    return hosts


def free_port(host: Host) -> int:
    """An unused UDP/TCP port number inside ``host`` (asks the kernel there)."""
    out = host.run([sys.executable, "-c",
                    "import socket; s=socket.socket(); s.bind(('',0)); print(s.getsockname()[1])"])
    return int(out.stdout.decode().strip())


def lab_namespaces(prefix: str) -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in result.stdout.decode().splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def _pids_in_namespace(ns: str) -> list[int]:
    result = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in result.stdout.split() if p.strip().isdigit()]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> None:
    """Poll ``predicate`` until true; raise ``LabError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def teardown_all() -> None:
    """Tear down every live lab (atexit and signal handlers)."""
    with _live_lock:
        labs = list(_live_labs)
    for lab in labs:
        try:
            lab.teardown()
        except Exception as e:
            sys.stderr.write(f"lab teardown: {e}\n")


def install_signal_handlers() -> None:
    """Make SIGINT/SIGTERM tear the labs down before the process dies (for benchmarks)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        teardown_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


atexit.register(teardown_all)
