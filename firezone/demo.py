"""``make demo``: run all four roles on this machine against the embedded SQLite portal.

It provisions an account with ``firezone-ctl`` (a site, a resource, a policy
for Everyone, relay/gateway/client tokens), starts the portal, then the relay,
gateway and client with the tokens it printed.  It prints every command it
runs, waits for each role's ``/healthz``, shows the ``/readyz`` of each (the
relay is ready once it has joined the portal), and keeps them running until
Ctrl-C (or, with ``--check``, stops them and exits once all are healthy and the
relay has joined: that is how the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Role:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_port: int
    process: subprocess.Popen[bytes] | None = None


def _twistd() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    return str(candidate) if candidate.exists() else "twistd"


def _ctl() -> str:
    candidate = Path(sys.executable).with_name("firezone-ctl")
    return str(candidate) if candidate.exists() else "firezone-ctl"


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def provision(data_dir: Path, api_url: str) -> dict[str, str]:
    """Create the demo account and its tokens with firezone-ctl; print each command."""
    portal_dir = data_dir / "portal"
    base = [_ctl(), "--data-dir", str(portal_dir), "--api-url", api_url]

    def ctl(*args: str) -> str:
        argv = [*base, *args]
        print(f"[demo] {shlex.join(argv[:1] + list(args))}", flush=True)
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    account = _env_lines(ctl("account", "create", "--slug", "demo", "--name", "Demo",
                             "--admin-email", "admin@demo.test"))
    ctl("site", "create", "--account", "demo", "--name", "hq")
    resource = ctl("resource", "create", "--account", "demo", "--type", "cidr",
                   "--address", "198.51.100.0/24", "--site", "hq", "--name", "docs",
                   "--filter", "tcp/80", "--filter", "icmp").split()[0]
    ctl("policy", "create", "--account", "demo", "--group", account["EVERYONE_GROUP_ID"],
        "--resource", resource, "--description", "everyone may reach the docs")
    relay = _env_lines(ctl("relay-token", "create"))
    gateway = _env_lines(ctl("gateway-token", "create", "--account", "demo", "--site", "hq"))
    actor = ctl("service-account", "create", "--account", "demo",
                "--name", "demo-client").split()[0]
    client = _env_lines(ctl("client-token", "create", "--account", "demo", "--actor", actor))
    return {"relay": relay["FIREZONE_TOKEN"], "gateway": gateway["FIREZONE_TOKEN"],
            "gateway_id": gateway.get("FIREZONE_ID", ""), "client": client["FIREZONE_TOKEN"]}


def plan(data_dir: Path, base_port: int, tokens: dict[str, str]) -> list[Role]:
    """The four roles, each with its own health port and state under ``data_dir``."""
    twistd = _twistd()
    api_url = f"ws://127.0.0.1:{base_port}/"
    common = ["-n", "--pidfile="]
    stamp_secret = secrets.token_hex(32)
    return [
        Role("portal", [twistd, *common, "firezone-portal",
                        "--listen", f"tcp:{base_port}:interface=127.0.0.1"],
             {"FIREZONE_DATA_DIR": str(data_dir / "portal"),
              "HEALTH_CHECK_ADDR": f"127.0.0.1:{base_port + 1}"}, base_port + 1),
        Role("relay", [twistd, *common, "firezone-relay", "--public-ip4", "127.0.0.1",
                       "--listen-port", str(base_port + 478), "--stamp-secret", stamp_secret,
                       "--lowest-port", str(base_port + 500), "--highest-port",
                       str(base_port + 999)],
             {"HEALTH_CHECK_ADDR": f"127.0.0.1:{base_port + 2}", "FIREZONE_API_URL": api_url,
              "FIREZONE_TOKEN": tokens["relay"], "FIREZONE_NAME": "demo-relay"},
             base_port + 2),
        Role("gateway", [twistd, *common, "firezone-gateway",
                         "--id-path", str(data_dir / "gateway" / "id")],
             {"FIREZONE_API_URL": api_url, "FIREZONE_TOKEN": tokens["gateway"],
              "HEALTH_CHECK_ADDR": f"127.0.0.1:{base_port + 3}"}, base_port + 3),
        Role("client", [twistd, *common, "firezone-client",
                        "--id-path", str(data_dir / "client" / "id")],
             {"FIREZONE_API_URL": api_url, "FIREZONE_TOKEN": tokens["client"],
              "FIREZONE_DNS_CONTROL": "disabled",
              "HEALTH_CHECK_ADDR": f"127.0.0.1:{base_port + 4}"}, base_port + 4),
    ]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()
    except OSError as e:
        return 0, str(e)


def start(roles: list[Role], log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    for role in roles:
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(role.env.items()))
        print(f"[demo] {role.name}: {env_text} {shlex.join(role.argv)}", flush=True)
        log = open(log_dir / f"{role.name}.log", "wb")
        role.process = subprocess.Popen(
            role.argv, env={**os.environ, **role.env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(log_dir),
        )


def stop(roles: list[Role]) -> None:
    for role in roles:
        if role.process and role.process.poll() is None:
            role.process.send_signal(signal.SIGTERM)
    for role in roles:
        if role.process:
            try:
                role.process.wait(10)
            except subprocess.TimeoutExpired:
                role.process.kill()
                role.process.wait()


def wait_for(roles: list[Role], path: str, timeout: float) -> list[str]:
    """Names of roles whose ``path`` did not answer 200 within ``timeout`` s (empty: all did)."""
    deadline = time.monotonic() + timeout
    pending = {r.name: r for r in roles}
    while pending and time.monotonic() < deadline:
        for name, role in list(pending.items()):
            if role.process is not None and role.process.poll() is not None:
                continue
            if _get(role.health_port, path)[0] == 200:
                del pending[name]
        time.sleep(0.2)
    return sorted(pending)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firezone-demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    parser.add_argument("--base-port", type=int, default=13000)
    parser.add_argument("--check", action="store_true",
                        help="exit once every role is healthy (for tests)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve()
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a demo starts from an empty portal every time
    data_dir.mkdir(parents=True)
    tokens = provision(data_dir, f"ws://127.0.0.1:{args.base_port}/")
    roles = plan(data_dir, args.base_port, tokens)
    start(roles[:1], data_dir / "logs")
    try:
        if wait_for(roles[:1], "/readyz", timeout=30):
            print("[demo] the portal did not become ready; see its log", file=sys.stderr)
            return 1
        start(roles[1:], data_dir / "logs")
        unhealthy = wait_for(roles, "/healthz", timeout=30)
        not_joined = wait_for([r for r in roles if r.name == "relay"], "/readyz", timeout=30)
        for role in roles:
            code, body = _get(role.health_port, "/readyz")
            print(f"[demo] {role.name:8} health http://127.0.0.1:{role.health_port}/healthz "
                  f"ready={code} {body}", flush=True)
        if unhealthy or not_joined:
            print(f"[demo] not healthy: {', '.join(unhealthy) or '-'}; relay joined: "
                  f"{not not_joined}; logs in {data_dir / 'logs'}", file=sys.stderr)
            return 1
        print(f"[demo] all roles up; logs in {data_dir / 'logs'}", flush=True)
        if args.check:
            return 0
        print("[demo] Ctrl-C to stop", flush=True)
        while all(r.process and r.process.poll() is None for r in roles):
            time.sleep(1)
        print("[demo] a role exited; see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(roles)


if __name__ == "__main__":
    raise SystemExit(main())
