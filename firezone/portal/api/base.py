"""Pieces the client and gateway channels share.

* :class:`Coalesced` runs a store-reading job soon and once, however many
  change notifications asked for it meanwhile (one admin action announces
  several rows);
* :class:`RelayFeed` hands a device its two relays and keeps them current:
  relay presence changes are debounced (1 s), then ``relays_presence`` is
  pushed when a relay the device holds went away or it holds fewer than two
  while some are online (``check_relay_presence`` in the reference);
* payload readers that turn a malformed payload into ``None`` (the reference's
  ``handle_in`` clauses do not match, so the catch-all answers ``unknown_message``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from firezone.policy.geo import Location
from firezone.portal.api.views import relay_views
from firezone.portal.presence import RelayEntry

__all__ = [
    "MAX_CANDIDATES",
    "Coalesced",
    "RelayFeed",
    "read_candidates",
    "read_uuid",
    "read_uuid_list",
]

_log = Logger()

MAX_CANDIDATES = 64
MAX_CANDIDATE_LENGTH = 1024
MAX_IDS = 256


def read_uuid(value: object) -> str | None:
    """A canonical lower-case UUID string, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def read_uuid_list(value: object) -> list[str] | None:
    """A list of UUIDs (malformed elements dropped), or None if not a list."""
    if not isinstance(value, list) or len(value) > MAX_IDS:
        return None
    out = []
    for item in value:
        parsed = read_uuid(item)
        if parsed is not None:
            out.append(parsed)
    return out


def read_candidates(value: object) -> list[str] | None:
    """SDP candidate strings, passed on verbatim (connlib skips ones it cannot parse)."""
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        return None
    if not all(isinstance(c, str) and len(c) <= MAX_CANDIDATE_LENGTH for c in value):
        return None
    return list(value)


class Coalesced:
    """``request()`` runs ``job`` on the next reactor turn; requests made while it is
    pending or running are folded into one more run."""

    def __init__(self, clock: IReactorTime, job: Callable[[], Deferred[Any]], name: str) -> None:
        self._clock = clock
        self._job = job
        self._name = name
        self._call: IDelayedCall | None = None
        self._running = False
        self._again = False
        self._stopped = False

    def request(self) -> None:
        if self._stopped:
            return
        if self._running:
            self._again = True
        elif self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def cancel(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _run(self) -> None:
        self._call = None
        self._running = True
        self._again = False
        d = defer.maybeDeferred(self._job)

        def done(result: object) -> None:
            self._running = False
            if isinstance(result, Failure):
                _log.failure("{name} failed", result, name=self._name)
            if self._again:
                self.request()

        d.addBoth(done)


class RelayFeed:
    """The relays one device holds, with debounced ``relays_presence`` updates."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        debounce: float,
        relays: Callable[[], list[RelayEntry]],
        select: Callable[[Location], list[RelayEntry]],
        location: Location,
        public_key: str,
        expires_at: Callable[[], int],
        push: Callable[[str, Any], None],
    ) -> None:
        self._clock = clock
        self._debounce = debounce
        self._relays = relays
        self._select = select
        self._location = location
        self._public_key = public_key
        self._expires_at = expires_at
        self._push = push
        self._timer: IDelayedCall | None = None
        self.cached: set[str] = set()

    def initial(self) -> list[dict[str, Any]]:
        """Choose the device's relays for ``init``."""
        chosen = self._select(self._location)
        self.cached = {r.id for r in chosen}
        return relay_views(chosen, self._public_key, self._expires_at())

    def changed(self) -> None:
        """Relay presence changed: check again once things settle (the last event wins)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(self._debounce, self._check)

    def reselect(self) -> None:
        """``no_relays``: the device has no usable relay; hand it a fresh pair."""
        chosen = self._select(self._location)
        self.cached = {r.id for r in chosen}
        self._push("relays_presence", {
            "disconnected_ids": [],
            "connected": relay_views(chosen, self._public_key, self._expires_at()),
        })

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self) -> None:
        self._timer = None
        online_ids = {r.id for r in self._relays()}
        disconnected = sorted(self.cached - online_ids)
        if not disconnected and not (len(self.cached) < 2 and online_ids):
            return
        chosen = self._select(self._location)
        self.cached = {r.id for r in chosen}
        self._push("relays_presence", {
            "disconnected_ids": disconnected,
            "connected": relay_views(chosen, self._public_key, self._expires_at()),
        })
