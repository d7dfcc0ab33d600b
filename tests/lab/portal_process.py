"""Real portal (and relay) processes on loopback, and a small client that speaks to them.

For the process-level integration tests (``tests/lab/test_portal_processes.py``)
and the portal benchmark (``bench/portal.py``, ``bench/portal_load.py``):

* :class:`Spawned` -- a child process in its own session with its output in a log
  file; :meth:`Spawned.stop` ends it by PID (SIGTERM, then SIGKILL) and every
  one still running is stopped at interpreter exit, also when a test fails;
* :class:`Ctl` -- ``firezone-ctl`` against one database, and
  :meth:`Ctl.timed`, the same command in an already-imported interpreter that
  reports the wall-clock time it began work (so a latency measured from it
  excludes Python's start-up); :class:`CtlBatch`, rounds of commands forked from
  one interpreter that imported ``firezone-ctl`` once (for set-up);
* :func:`populate` -- one account with a site, a service account in a group
  allowed one resource, client/gateway/relay tokens, and a second account's
  resource; :func:`clone_sqlite` / :func:`clone_postgres` copy such a world so
  each test starts from the same rows without re-running a dozen commands;
* :func:`start_portal` / :func:`start_relay` -- ``twistd -n firezone-portal`` /
  ``firezone-relay`` on free loopback ports, returned once ``/readyz`` says so;
* a sans-IO RFC 6455 client (:func:`handshake_request`, :func:`encode_frame`,
  :class:`FrameReader`) and :class:`PhoenixClient`, a blocking WebSocket client
  that speaks Phoenix frames, can bind a chosen loopback source address (the
  portal limits connects per remote IP and token) and can send malformed frames.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import psycopg2

from firezone.wire import phoenix

__all__ = [
    "CLIENT_UA",
    "GATEWAY_UA",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Ctl",
    "CtlBatch",
    "CtlFailed",
    "FrameReader",
    "HttpResponse",
    "PhoenixClient",
    "PortalProcess",
    "ProcessError",
    "Refused",
    "RelayProcess",
    "Spawned",
    "TimedCommand",
    "Timeout",
    "WebSocketError",
    "World",
    "accept_value",
    "clone_postgres",
    "clone_sqlite",
    "close_payload",
    "encode_frame",
    "free_tcp_port",
    "free_udp_port",
    "handshake_request",
    "parse_response_head",
    "populate",
    "public_key",
    "rss_kb",
    "spawn",
    "start_portal",
    "start_relay",
    "stop_all",
]

CLIENT_UA = "Debian/12 headless-client/1.5.12 (x86_64; 6.1.0)"
GATEWAY_UA = "Debian/12 gateway/1.6.1 (x86_64; 6.1.0)"

BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ProcessError(RuntimeError):
    """A process did not start, or did not become ready; the message carries its log."""


# -- processes ---------------------------------------------------------------------------

_live: dict[int, Spawned] = {}


@dataclass
class Spawned:
    """A child process leading its own session; output in ``log_path``."""

    name: str
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

    def signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            _signal_group(self.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the process (group), SIGKILL after ``grace`` seconds; always reaps."""
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(grace)
        _live.pop(self.pid, None)
        if not self._log_file.closed:
            self._log_file.close()
        return self.popen.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _raise_nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < limit:
            hard = limit  # needs root (CAP_SYS_RESOURCE); the caller runs as root
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return apply


def spawn(argv: Sequence[str], name: str, workdir: Path, env: Mapping[str, str] | None = None,
          nofile: int | None = None) -> Spawned:
    """Start ``argv`` with stdout+stderr in ``workdir/<name>.log``; stopped at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "ab")
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = str(PROJECT_ROOT)
    full_env.update(env or {})
    popen = subprocess.Popen(
        list(argv), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=full_env, cwd=str(workdir), start_new_session=True,
        preexec_fn=_raise_nofile(nofile) if nofile else None,
    )
    process = Spawned(name, list(argv), popen, log_path, log_file)
    _live[process.pid] = process
    return process


def stop_all() -> None:
    """Stop every process :func:`spawn` started that is still running (newest first)."""
    for process in sorted(_live.values(), key=lambda p: -p.popen.pid):
        try:
            process.stop(grace=3.0)
        except Exception as e:  # keep going: every one must be stopped
            sys.stderr.write(f"stopping {process.name} ({process.pid}): {e}\n")


atexit.register(stop_all)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProcessError(f"no VmRSS for {pid}")


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


def _wait_ready(process: Spawned, health_port: int, timeout: float, what: str) -> None:
    url = f"http://127.0.0.1:{health_port}/readyz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise ProcessError(f"{what} exited ({process.popen.returncode}):\n{process.log()}")
        if _http_status(url) == 200:
            return
        time.sleep(0.05)
    raise ProcessError(f"{what} not ready after {timeout}s:\n{process.log()[-4000:]}")


def _twistd() -> str:
    return str(BIN / "twistd")


@dataclass
class PortalProcess:
    process: Spawned
    port: int
    health_port: int

    @property
    def api_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return _http_status(f"http://127.0.0.1:{self.health_port}/readyz") == 200


def start_portal(workdir: Path, database: str, data_dir: Path, name: str = "portal",
                 nofile: int | None = None, timeout: float = 30.0) -> PortalProcess:
    """``twistd -n firezone-portal`` on a free loopback port, once ``/readyz`` is 200."""
    port, health_port = free_tcp_port(), free_tcp_port()
    process = spawn(
        [_twistd(), "-n", "--pidfile=", "firezone-portal",
         "--database", database, "--data-dir", str(data_dir),
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--external-url", f"http://127.0.0.1:{port}/",
         "--health-check", f"127.0.0.1:{health_port}"],
        name, workdir, nofile=nofile,
    )
    try:
        _wait_ready(process, health_port, timeout, name)
    except BaseException:
        process.stop()
        raise
    return PortalProcess(process, port, health_port)


@dataclass
class RelayProcess:
    process: Spawned
    port: int
    health_port: int


def start_relay(workdir: Path, api_url: str, token: str, name: str = "relay",
                timeout: float = 30.0) -> RelayProcess:
    """``twistd -n firezone-relay`` on loopback joined to the portal (``/readyz`` = joined).

    The relay's stamp secret is its own random one: only the portal learns it.
    """
    port, health_port = free_udp_port(), free_tcp_port()
    process = spawn(
        [_twistd(), "-n", "--pidfile=", "firezone-relay",
         "--public-ip4", "127.0.0.1", "--bind-ip4", "127.0.0.1", "--listen-port", str(port),
         "--lowest-port", "40000", "--highest-port", "40999",
         "--api-url", api_url, "--token", token, "--name", name,
         "--health-check", f"127.0.0.1:{health_port}"],
        name, workdir,
    )
    try:
        _wait_ready(process, health_port, timeout, name)
    except BaseException:
        process.stop()
        raise
    return RelayProcess(process, port, health_port)


# -- firezone-ctl --------------------------------------------------------------------------


class CtlFailed(RuntimeError):
    """``firezone-ctl`` exited non-zero."""


@dataclass(frozen=True)
class TimedCommand:
    """A ``firezone-ctl`` run with the wall-clock times its ``main()`` began and ended."""

    returncode: int
    stdout: str
    stderr: str
    started: float
    finished: float


_TIMED_CTL = r"""
import io, json, sys, time
import firezone.portal.ctl as ctl
try:
    import firezone.portal.store.postgres  # noqa: F401  (imported now, not inside the timing)
except ImportError:
    pass
sys.stdout.write("ready\n")
sys.stdout.flush()
argv = json.loads(sys.stdin.readline())
out, err = io.StringIO(), io.StringIO()
started = time.time()
code = ctl.main(argv, stdout=out, stderr=err)
finished = time.time()
sys.stdout.write(json.dumps({"rc": code, "out": out.getvalue(), "err": err.getvalue(),
                             "started": started, "finished": finished}) + "\n")
sys.stdout.flush()
"""


class Ctl:
    """``firezone-ctl`` against one database and one data directory (its secret key)."""

    def __init__(self, database: str, data_dir: Path) -> None:
        self.database = database
        self.data_dir = data_dir

    def _argv(self, args: Sequence[str]) -> list[str]:
        return ["--database", self.database, "--data-dir", str(self.data_dir), *args]

    def run(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(BIN / "firezone-ctl"), *self._argv(args)], capture_output=True, text=True,
            timeout=timeout, cwd=str(PROJECT_ROOT), stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise CtlFailed(f"firezone-ctl {' '.join(args)}: {result.returncode} "
                            f"{result.stderr.strip()}")
        return result.stdout

    def batch(self) -> CtlBatch:
        """A :class:`CtlBatch` for this database (use as a context manager)."""
        return CtlBatch(self)

    def value(self, *args: str) -> str:
        """The single line a create command prints (an id)."""
        return self.run(*args).strip()

    def values(self, *args: str) -> dict[str, str]:
        """``KEY=VALUE`` lines as a dict."""
        out = {}
        for line in self.run(*args).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def rows(self, kind: str, account: str | None = None) -> list[dict[str, Any]]:
        args = ["list", kind, "--json"] + (["--account", account] if account else [])
        rows: list[dict[str, Any]] = json.loads(self.run(*args))
        return rows

    def timed(self, *args: str, timeout: float = 60.0) -> TimedCommand:
        """Run one command in an interpreter that imported ``firezone-ctl`` beforehand."""
        popen = subprocess.Popen(
            [sys.executable, "-c", _TIMED_CTL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=str(PROJECT_ROOT),
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        try:
            assert popen.stdin is not None and popen.stdout is not None
            ready = popen.stdout.readline()
            if ready.strip() != "ready":
                raise CtlFailed(f"timed firezone-ctl did not start: {ready!r}")
            popen.stdin.write(json.dumps(self._argv(args)) + "\n")
            popen.stdin.flush()
            out, err = popen.communicate(timeout=timeout)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        lines = out.strip().splitlines()
        if not lines:
            raise CtlFailed(f"timed firezone-ctl {' '.join(args)} said nothing: {err}")
        result = json.loads(lines[-1])
        return TimedCommand(result["rc"], result["out"], result["err"], result["started"],
                            result["finished"])


_CTL_FORKS = r"""
import io, json, os, sys
import firezone.portal.ctl as ctl
try:
    import firezone.portal.store.postgres  # noqa: F401
except ImportError:
    pass
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    children = []
    for argv in json.loads(line):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            out, err = io.StringIO(), io.StringIO()
            try:
                code = ctl.main(argv, stdout=out, stderr=err)
            except BaseException as e:
                code = 99
                err.write(repr(e))
            with os.fdopen(write, "w") as f:
                json.dump({"rc": code, "out": out.getvalue(), "err": err.getvalue()}, f)
            os._exit(0)
        os.close(write)
        children.append((pid, read))
    results = []
    for pid, read in children:
        with os.fdopen(read) as f:
            results.append(json.loads(f.read() or '{"rc": 98, "out": "", "err": "no result"}'))
        os.waitpid(pid, 0)
    sys.stdout.write(json.dumps(results) + "\n")
    sys.stdout.flush()
"""


class CtlBatch:
    """Rounds of ``firezone-ctl`` commands, each command in a child forked from one
    interpreter that imported ``firezone-ctl`` once; the commands of a round run at the
    same time.  (Importing takes about half a second per process; a dozen set-up
    commands one process each took several seconds.)"""

    def __init__(self, ctl: Ctl, timeout: float = 120.0) -> None:
        self.ctl = ctl
        self.timeout = timeout
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _CTL_FORKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, cwd=str(PROJECT_ROOT),
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        assert self.popen.stdout is not None
        ready = self.popen.stdout.readline()
        if ready.strip() != "ready":
            self.close()
            raise CtlFailed(f"firezone-ctl batch did not start: {ready!r}")

    def __enter__(self) -> CtlBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def round(self, commands: Sequence[Sequence[str]]) -> list[str]:
        """Run ``commands`` at the same time; their stdout in order (CtlFailed if any failed)."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps([self.ctl._argv(c) for c in commands]) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise CtlFailed("firezone-ctl batch exited")
        results: list[dict[str, Any]] = json.loads(line)
        for command, result in zip(commands, results, strict=True):
            if result["rc"] != 0:
                raise CtlFailed(f"firezone-ctl {' '.join(command)}: {result['rc']} "
                                f"{result['err'].strip()}")
        return [str(r["out"]) for r in results]

    def one(self, *args: str) -> str:
        return self.round([args])[0]

    def close(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


# -- a world of rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The rows :func:`populate` created, as the tests and the benchmark address them."""

    database: str
    data_dir: Path
    account: str
    account_id: str
    site_id: str
    group_id: str
    actor_id: str
    resource_id: str
    policy_id: str
    client_token: str
    gateway_token: str
    relay_token: str
    other_resource_id: str
    extra_resource_ids: tuple[str, ...] = ()

    def ctl(self) -> Ctl:
        return Ctl(self.database, self.data_dir)

    def moved(self, database: str, data_dir: Path) -> World:
        """The same rows in a copied database / data directory."""
        values = dict(self.__dict__)
        values.update(database=database, data_dir=data_dir)
        return World(**values)


def populate(ctl: Ctl, extra_resources: int = 0, other_account: bool = True) -> World:
    """Account ``acme`` with site ``HQ``; service account ``robot`` in group ``Robots``,
    allowed ``10.0.0.0/16`` (``Net``); ``extra_resources`` more CIDRs in ``HQ`` that no
    policy grants yet; client, gateway and relay tokens; with ``other_account``, account
    ``other`` with a site and resource of its own.

    Commands that do not depend on each other run at the same time (see :class:`CtlBatch`).
    """
    with ctl.batch() as batch:
        return _populate(ctl, batch, extra_resources, other_account)


def _populate(ctl: Ctl, batch: CtlBatch, extra_resources: int, other_account: bool) -> World:
    account = _values(batch.one("account", "create", "--slug", "acme", "--name", "Acme"))
    acme = "acme"
    in_acme = ("--account", acme)
    second: list[tuple[str, ...]] = [
        ("site", "create", *in_acme, "--name", "HQ"),
        ("service-account", "create", *in_acme, "--name", "robot"),
        ("group", "create", *in_acme, "--name", "Robots"),
        ("relay-token", "create"),
    ]
    if other_account:
        second.append(("account", "create", "--slug", "other", "--name", "Other"))
    site_out, actor_out, group_out, relay_out, *_ = batch.round(second)
    actor_id = actor_out.strip()
    third: list[tuple[str, ...]] = [
        ("membership", "add", *in_acme, "--group", "Robots", "--actor", actor_id),
        ("client-token", "create", *in_acme, "--actor", actor_id),
        ("gateway-token", "create", *in_acme, "--site", "HQ"),
        ("resource", "create", *in_acme, "--type", "cidr", "--address", "10.0.0.0/16",
         "--name", "Net", "--site", "HQ"),
        *[("resource", "create", *in_acme, "--type", "cidr", "--address",
           f"10.{100 + i // 256}.{i % 256}.0/24", "--name", f"extra-{i}", "--site", "HQ")
          for i in range(extra_resources)],
    ]
    if other_account:
        third.append(("site", "create", "--account", "other", "--name", "Elsewhere"))
    _, client_out, gateway_out, resource_out, *rest = batch.round(third)
    extra = tuple(out.strip() for out in rest[:extra_resources])
    resource_id = resource_out.strip()
    fourth: list[tuple[str, ...]] = [
        ("policy", "create", *in_acme, "--group", "Robots", "--resource", resource_id),
    ]
    if other_account:
        fourth.append(("resource", "create", "--account", "other", "--type", "cidr",
                       "--address", "10.9.0.0/16", "--site", "Elsewhere"))
    policy_out, *other_out = batch.round(fourth)
    return World(
        database=ctl.database, data_dir=ctl.data_dir, account=acme,
        account_id=account["ACCOUNT_ID"], site_id=site_out.strip(),
        group_id=group_out.strip(), actor_id=actor_id, resource_id=resource_id,
        policy_id=policy_out.strip(), client_token=_token(client_out),
        gateway_token=_token(gateway_out), relay_token=_token(relay_out),
        other_resource_id=other_out[0].strip() if other_out else "",
        extra_resource_ids=extra,
    )


def _values(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _token(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("FIREZONE_TOKEN="):
            return line.split("=", 1)[1]
    raise CtlFailed(f"no FIREZONE_TOKEN in {output!r}")


def clone_sqlite(world: World, data_dir: Path) -> World:
    """A copy of a SQLite world's data directory (database and secret key)."""
    shutil.copytree(world.data_dir, data_dir)
    return world.moved(f"sqlite:///{data_dir / 'portal.db'}", data_dir)


def clone_postgres(world: World, admin_dsn: str, name: str, data_dir: Path) -> World:
    """A copy of a PostgreSQL world's database (``CREATE DATABASE ... TEMPLATE``)."""
    connection = psycopg2.connect(admin_dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            template = world.database.rsplit("/", 1)[1]
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        connection.close()
    shutil.copytree(world.data_dir, data_dir)
    return world.moved(admin_dsn.rsplit("/", 1)[0] + "/" + name, data_dir)


def public_key() -> str:
    """A random X25519-sized public key, base64 (the portal checks only the shape)."""
    return base64.b64encode(os.urandom(32)).decode()


# -- WebSocket, sans-IO (RFC 6455) ------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(ValueError):
    """The server broke RFC 6455 (bad handshake answer or frame)."""


def handshake_request(host: str, port: int, path: str,
                      headers: Mapping[str, str]) -> tuple[bytes, str]:
    """The client's upgrade request and its ``Sec-WebSocket-Key``."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response_head(data: bytes) -> tuple[int, dict[str, str], int] | None:
    """``(status, lower-cased headers, length of the head)`` once the head is complete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise WebSocketError(f"not an HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, end + 4


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One client frame; clients must mask (RFC 6455 5.3)."""
    key = mask if mask is not None else os.urandom(4)
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    return bytes(head) + key + _mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode("utf-8")


class FrameReader:
    """Frames from a byte stream; data frames come out as whole messages ``(opcode, payload)``,
    control frames as they arrive."""

    def __init__(self, max_message: int = 16 << 20) -> None:
        self._buffer = bytearray()
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        while len(buf) >= 2:
            fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
            masked, n = buf[1] & 0x80, buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            key = b""
            if masked:
                if len(buf) < pos + 4:
                    break
                key, pos = bytes(buf[pos:pos + 4]), pos + 4
            if n > self._max:
                raise WebSocketError(f"frame of {n} bytes")
            if len(buf) < pos + n:
                break
            payload = bytes(buf[pos:pos + n])
            del buf[:pos + n]
            if masked:
                payload = _mask(payload, key)
            if opcode >= 0x8:
                out.append((opcode, payload))
                continue
            if opcode == OP_CONTINUATION:
                if self._opcode is None:
                    raise WebSocketError("continuation without a message")
            else:
                if self._opcode is not None:
                    raise WebSocketError("new message inside a fragmented one")
                self._opcode, self._parts, self._size = opcode, [], 0
            self._parts.append(payload)
            self._size += len(payload)
            if self._size > self._max:
                raise WebSocketError("message too large")
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._opcode, self._parts = None, []
        return out


# -- a blocking Phoenix client ------------------------------------------------------------------


class Refused(Exception):
    """The portal answered the upgrade with an HTTP error (problem details)."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(f"{response.status} {response.body[:200]!r}")
        self.response = response

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def code(self) -> str | None:
        try:
            body = self.response.json()
        except ValueError:
            return None
        return body.get("code") if isinstance(body, dict) else None


class Timeout(AssertionError):
    """Nothing matching arrived in time; the message lists what did arrive."""


def socket_path(role: str, version: int = 2) -> str:
    if role == "relay":
        return "/relay/websocket"
    return f"/{role}/v2/websocket" if version == 2 else f"/{role}/websocket"


class PhoenixClient:
    """One WebSocket to the portal, read and written synchronously with deadlines.

    Frames the server sends are kept in :attr:`inbox` (decoded JSON) until a
    :meth:`expect` takes them, so the order in which a test waits does not matter.
    """

    def __init__(self, sock: socket.socket, topic: str, leftover: bytes = b"") -> None:
        self.sock = sock
        self.topic = topic
        self.reader = FrameReader()
        self.inbox: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.eof = False
        self._ref = 0
        if leftover:
            self._handle(self.reader.feed(leftover))

    # -- connecting -----------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        port: int,
        role: str,
        token: str | None,
        query: Mapping[str, str],
        user_agent: str,
        *,
        host: str = "127.0.0.1",
        source: str | None = None,
        version: int = 2,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        timeout: float = 10.0,
    ) -> PhoenixClient:
        """Upgrade ``/<role>[/v2]/websocket?<query>``; raise :class:`Refused` on an HTTP error."""
        raw = socket.create_connection((host, port), timeout=timeout,
                                       source_address=(source, 0) if source else None)
        sock: socket.socket = raw
        try:
            if tls is not None:
                sock = tls.wrap_socket(raw, server_hostname=server_name or host)
            headers = {"User-Agent": user_agent}
            if token is not None:
                headers["X-Authorization"] = f"Bearer {token}"
            path = socket_path(role, version) + (f"?{urlencode(query)}" if query else "")
            request, key = handshake_request(host, port, path, headers)
            sock.sendall(request)
            data = b""
            deadline = time.monotonic() + timeout
            head = None
            while head is None:
                chunk = _recv(sock, deadline)
                if not chunk:
                    raise WebSocketError("connection closed during the upgrade")
                data += chunk
                head = parse_response_head(data)
            status, response_headers, head_len = head
            if status != 101:
                length = int(response_headers.get("content-length", "0") or 0)
                while len(data) < head_len + length:
                    chunk = _recv(sock, deadline)
                    if not chunk:
                        break
                    data += chunk
                sock.close()
                raise Refused(HttpResponse(status, response_headers,
                                           data[head_len:head_len + length]))
            if response_headers.get("sec-websocket-accept") != accept_value(key):
                raise WebSocketError("wrong Sec-WebSocket-Accept")
        except BaseException:
            sock.close()
            raise
        return cls(sock, role, data[head_len:])

    # -- sending ---------------------------------------------------------------------------
    def next_ref(self) -> int:
        ref = self._ref
        self._ref += 1
        return ref

    def send_frame(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(encode_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def push(self, event: str, payload: Any, topic: str | None = None) -> int:
        """A Phoenix push with the next ref; returns the ref."""
        ref = self.next_ref()
        self.send_text(phoenix.push(topic or self.topic, event, payload, ref).encode())
        return ref

    def call(self, event: str, payload: Any, topic: str | None = None,
             timeout: float = 10.0) -> dict[str, Any]:
        """Push and wait for the ``phx_reply``; returns its payload."""
        ref = self.push(event, payload, topic)
        return self.reply(ref, timeout)["payload"]

    def join(self, payload: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        return self.call(phoenix.PHX_JOIN, payload, timeout=timeout)

    def heartbeat(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.call(phoenix.HEARTBEAT, {}, topic=phoenix.PHOENIX_TOPIC, timeout=timeout)

    # -- receiving ---------------------------------------------------------------------------
    def _handle(self, frames: list[tuple[int, bytes]]) -> None:
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                self.inbox.append(json.loads(payload))
            elif opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass

    def _pump(self, deadline: float) -> bool:
        """Read once; False when the connection has ended."""
        if self.eof:
            return False
        try:
            data = _recv(self.sock, deadline)
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
            return False
        self._handle(self.reader.feed(data))
        return True

    def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
               what: str = "a frame") -> dict[str, Any]:
        """The first frame (kept or arriving before ``timeout``) that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(self.inbox):
                if match(frame):
                    del self.inbox[i]
                    return frame
            try:
                alive = self._pump(deadline)
            except TimeoutError:
                alive = False
            if not alive or time.monotonic() >= deadline:
                events = [(f.get("event"), f.get("topic")) for f in self.inbox]
                state = "closed" if self.eof else f"{timeout}s passed"
                raise Timeout(f"no {what} ({state}); kept: {events}")

    def event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame whose event is ``name`` (callers read its ``["payload"]``)."""
        return self.expect(lambda f: f.get("event") == name, timeout, what=repr(name))

    def reply(self, ref: int, timeout: float = 10.0) -> dict[str, Any]:
        return self.expect(lambda f: f.get("event") == phoenix.PHX_REPLY and f.get("ref") == ref,
                           timeout, what=f"reply to ref {ref}")

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Read (keeping frames) until the server closes; the close code, if it sent one."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._pump(deadline)
            except TimeoutError:
                raise Timeout(f"still open after {timeout}s") from None
        return self.close_code

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            if not self.eof and self.close_code is None:
                self.send_frame(OP_CLOSE, close_payload(1000))
        except OSError:
            pass
        self.sock.close()


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(remaining)
    return sock.recv(65536)  # socket.timeout is TimeoutError
