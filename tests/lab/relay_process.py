"""Start our relay (``twistd firezone-relay``) or coturn's ``turnserver`` inside a lab host."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from firezone.credentials import turn_credentials
from tests.lab import netlab
from tests.lab.netlab import Host, LabProcess

STAMP_SECRET = "5e" * 32


def twistd() -> str:
    return str(Path(sys.executable).with_name("twistd"))


def start_firezone_relay(host: Host, public_ip: str, health_port: int = 18080,
                         extra: tuple[str, ...] = (), lowest: int = 49152,
                         highest: int = 65535) -> LabProcess:
    process = host.spawn(
        [twistd(), "-n", "--pidfile=", "firezone-relay", "--public-ip4", public_ip,
         "--bind-ip4", public_ip, "--stamp-secret", STAMP_SECRET,
         "--lowest-port", str(lowest), "--highest-port", str(highest),
         "--health-check", f"127.0.0.1:{health_port}", *extra],
        name="firezone-relay",
    )
    netlab.wait_until(
        lambda: "relay listening" in process.log() or not process.alive(),
        timeout=20, what="firezone-relay to listen",
    )
    if not process.alive():
        raise netlab.LabError(f"firezone-relay exited:\n{process.log()}")
    return process


def start_coturn(host: Host, public_ip: str, username: str, password: str) -> LabProcess:
    workdir = host.lab.workdir
    process = host.spawn(
        ["turnserver", "-n", "--no-tls", "--no-dtls", "--no-cli", "--lt-cred-mech",
         f"--user={username}:{password}", "--realm=firezone", f"--listening-ip={public_ip}",
         f"--relay-ip={public_ip}", f"--pidfile={workdir / f'turnserver-{host.name}.pid'}",
         "--log-file=stdout", "--simple-log", "--no-stun-backward-compatibility",
         f"--userdb={workdir / f'turndb-{host.name}'}"],
        name="turnserver",
    )
    netlab.wait_until(lambda: "Total General servers" in process.log() or not process.alive(),
                      timeout=20, what="turnserver to start")
    time.sleep(0.2)
    return process


def credentials(device: str = "device", lifetime: int = 3600) -> tuple[str, str]:
    """TURN credentials as the portal mints them for ``device`` (REFERENCE.md 2.5)."""
    public_key = (device.encode() * 32)[:32]
    import base64

    return turn_credentials(base64.b64encode(public_key).decode(), STAMP_SECRET,
                            int(time.time()) + lifetime)


def metrics(host: Host, port: int = 18080) -> str:
    out = host.run([sys.executable, "-c",
                    f"import urllib.request;print(urllib.request.urlopen("
                    f"'http://127.0.0.1:{port}/metrics').read().decode())"])
    return out.stdout.decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def lost_packets(output: str) -> tuple[int, int]:
    """(sent, lost) from turnutils_uclient's closing summary."""
    totals = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.search(r"Total lost packets (\d+)", output)
    if not totals or not lost:
        raise AssertionError(f"no summary in uclient output:\n{output[-2000:]}")
    return int(totals[-1][0]), int(lost.group(1))
