"""The one place that decides how Firezone processes log.

Modules declare ``_log = Logger()`` and log structured events with format
fields.  ``observer`` is the twistd ``--logger`` factory: it honours
``LOG_FORMAT`` (``human`` or ``json``, as the reference) and ``LOG_LEVEL``.
``RateLimitedLog`` keeps a flood of bad packets from a peer from becoming a
flood of log lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["Logger", "RateLimitedLog", "observer"]

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def observer(environ: Mapping[str, str] | None = None) -> ILogObserver:
    """A log observer for ``twistd --logger firezone.common.logging.observer``."""
    env = os.environ if environ is None else environ
    fmt = env.get("LOG_FORMAT", "human").strip().lower()
    level = _LEVELS.get(env.get("LOG_LEVEL", "info").strip().lower(), LogLevel.info)
    inner = jsonFileLogObserver(sys.stdout) if fmt == "json" else textFileLogObserver(sys.stdout)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=level)])


class RateLimitedLog:
    """Emit at most ``burst`` lines per ``interval`` seconds per key, counting the rest.

    The clock is injected (``now`` callable) so tests can drive it.
    """

    def __init__(
        self,
        log: Logger,
        now: Callable[[], float],
        interval: float = 10.0,
        burst: int = 5,
        max_keys: int = 1024,
    ) -> None:
        self._log = log
        self._now = now
        self._interval = interval
        self._burst = burst
        self._max_keys = max_keys
        self._windows: dict[Any, tuple[float, int]] = {}
        self.suppressed = 0

    def warn(self, key: Any, fmt: str, **fields: Any) -> bool:
        """Log ``fmt`` at warn level unless ``key`` has used up its burst; True if logged."""
        now = self._now()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self._interval:
            start, count = now, 0
        if count >= self._burst:
            self.suppressed += 1
            self._windows[key] = (start, count + 1)
            return False
        if key not in self._windows and len(self._windows) >= self._max_keys:
            self._windows.clear()
        self._windows[key] = (start, count + 1)
        self._log.warn(fmt, **fields)
        return True
