"""Account-level recompute of connected clients' resources.

A store change (or the minute tick) can change what every client of an
account may reach.  Reloading each client's access separately costs several
store transactions per client, so a burst of changes took seconds to reach a
few thousand clients.  Here a change marks its account dirty; on the next
reactor turn the account's rows are read once
(:func:`~firezone.portal.api.access.load_account_snapshot`) and each connected
client recomputes its resources in memory and pushes only the differences.
Notifications arriving while that runs fold into one more run.

A change to one client's own device row only re-reads that device (the other
clients keep theirs: every device write is announced on ``changes``).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from firezone.portal.api.access import AccountSnapshot, load_account_snapshot
from firezone.portal.api.base import Coalesced
from firezone.portal.store.errors import NotFound
from firezone.portal.store.interface import IPortalStore
from firezone.portal.store.records import Device

__all__ = ["ClientFanout", "Subscriber"]

_log = Logger()


class Subscriber(Protocol):
    """What the fan-out asks of a connected client's channel."""

    @property
    def key(self) -> str:
        """The client's device id."""

    @property
    def account_id(self) -> str: ...

    def refresh(
        self, snapshot: AccountSnapshot, device: Device | None, now: float,
        views: dict[Any, dict[str, Any]],
    ) -> None:
        """Recompute from ``snapshot`` (``device``: a freshly read own row, or None to
        keep the current one) and push the differences; ``views`` caches rendered
        resources across the clients of one run."""

    def lost(self) -> None:
        """Its account, actor or device is gone: make the client reconnect."""


class _Account:
    def __init__(self, fanout: ClientFanout, account_id: str) -> None:
        self.account_id = account_id
        self.subscribers: dict[str, Subscriber] = {}
        self.everyone = False
        self.devices: set[str] = set()
        self.job = Coalesced(fanout.clock, lambda: fanout.run(self), "resource recompute")


class ClientFanout:
    def __init__(self, store: IPortalStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._accounts: dict[str, _Account] = {}

    def subscribe(self, sub: Subscriber) -> None:
        account = self._accounts.get(sub.account_id)
        if account is None:
            account = self._accounts[sub.account_id] = _Account(self, sub.account_id)
        account.subscribers[sub.key] = sub

    def unsubscribe(self, sub: Subscriber) -> None:
        account = self._accounts.get(sub.account_id)
        if account is None or account.subscribers.get(sub.key) is not sub:
            return
        del account.subscribers[sub.key]
        if not account.subscribers:
            account.job.cancel()
            del self._accounts[sub.account_id]

    def request(self, account_id: str, device_id: str | None = None) -> None:
        """Recompute the account's clients soon: all of them, or (``device_id``) the one
        whose device row changed."""
        account = self._accounts.get(account_id)
        if account is None:
            return
        if device_id is None:
            account.everyone = True
        elif device_id in account.subscribers:
            account.devices.add(device_id)
        else:
            return
        account.job.request()

    def run(self, account: _Account) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run(account))

    async def _run(self, account: _Account) -> None:
        everyone, devices = account.everyone, account.devices
        account.everyone, account.devices = False, set()
        subs = [
            s for key, s in account.subscribers.items() if everyone or key in devices
        ]
        if not subs:
            return
        try:
            snapshot = await load_account_snapshot(self.store, account.account_id)
        except NotFound:
            for sub in subs:
                sub.lost()
            return
        fresh: dict[str, Device | None] = {}
        for sub in subs:
            if sub.key in devices:
                try:
                    fresh[sub.key] = await self.store.get_device(account.account_id, sub.key)
                except NotFound:
                    fresh[sub.key] = None
        now = self.clock.seconds()
        views: dict[Any, dict[str, Any]] = {}
        for sub in subs:
            if account.subscribers.get(sub.key) is not sub:
                continue  # left meanwhile
            try:
                if sub.key in fresh:
                    device = fresh[sub.key]
                    if device is None:
                        sub.lost()
                        continue
                    sub.refresh(snapshot, device, now, views)
                else:
                    sub.refresh(snapshot, None, now, views)
            except Exception:
                _log.failure("recomputing the resources of {key} failed", key=sub.key)
