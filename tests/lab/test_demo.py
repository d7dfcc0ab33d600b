"""`make demo` starts all four roles as real processes and each serves its health endpoint."""

from __future__ import annotations

import io
import socket
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from firezone import demo


def _free_base_port() -> int:
    """A base port with the next 500 ports free on loopback (the demo uses base..base+478)."""
    for base in range(24000, 40000, 500):
        ok = True
        for port in (base, base + 1, base + 2, base + 3, base + 4):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


class DemoTests(SynchronousTestCase):
    def test_demo_check_runs_all_roles(self) -> None:
        """The demo provisions an account, prints each command; all roles up, relay joined."""
        out = io.StringIO()
        with redirect_stdout(out):
            code = demo.main(["--check", "--data-dir", self.mktemp(),
                              "--base-port", str(_free_base_port())])
        text = out.getvalue()
        self.assertEqual(code, 0, text)
        for role in ("portal", "relay", "gateway", "client"):
            self.assertIn(f"firezone-{role}", text)
        self.assertIn("all roles up", text)
        relay_line = next(line for line in text.splitlines() if line.startswith("[demo] relay "))
        self.assertIn("ready=200", relay_line, "the relay joined the portal with its token")
        self.assertIn("firezone-ctl policy create", text)
