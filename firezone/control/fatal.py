"""Ending a role process with a failure status when its portal channel gives up.

``twistd`` always exits 0 once the reactor stops (only a signal changes that),
yet a relay or gateway whose token was refused must exit non-zero so systemd's
``Restart=on-failure`` and container supervisors see the failure.  So the
process is shut down the normal way (``reactor.stop()``: services stop, the
pid file is removed, logs are flushed) and only at interpreter exit, after
``twistd`` has finished, is the status replaced through an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ReactorNotRunning

__all__ = ["stop_with_status"]


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def stop_with_status(
    reactor: Any,
    status: int,
    register: Callable[..., Any] = atexit.register,
) -> None:
    """Stop ``reactor`` cleanly; the process then exits with ``status``."""
    register(_exit_now, status)

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    if reactor.running:
        stop()
    else:
        reactor.callWhenRunning(stop)
