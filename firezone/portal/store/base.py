"""The common base of the store backends: all operations, no database driver."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from firezone.portal.store._accounts import AccountOps
from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store._devices import DeviceOps
from firezone.portal.store._network import NetworkOps
from firezone.portal.store._tokens import TokenOps
from firezone.portal.store.interface import IPortalStore, NotifyCallback
from firezone.portal.store.program import Program, T, transaction
from firezone.portal.store.schema import current_version

_log = Logger()



@implementer(IPortalStore)
class PortalStore(AccountOps, NetworkOps, DeviceOps, TokenOps):
    """Everything ``IPortalStore`` promises; a backend adds how programs run.

    ``randbelow``/``randbytes`` are injectable so tests can force address
    collisions and known ``psk_base`` values.
    """

    #: the ``Query.dialect`` this backend runs
    dialect: str = ""

    def __init__(
        self,
        clock: SupportsSeconds,
        *,
        randbelow: Callable[[int], int] = secrets.randbelow,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._clock = clock
        self._randbelow = randbelow
        self._randbytes = randbytes

    def _run(self, program: Program[T]) -> Deferred[T]:
        raise NotImplementedError

    @transaction
    def schema_version(self) -> Program[int]:
        version = yield from current_version()
        return version

    def close(self) -> Deferred[None]:
        raise NotImplementedError

    def listen(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        raise NotImplementedError

    def unlisten(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        raise NotImplementedError

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        raise NotImplementedError

    @staticmethod
    def _dispatch(callbacks: list[NotifyCallback], channel: str, payload: str) -> None:
        """Call each listener; one failing listener must not starve the others."""
        for callback in list(callbacks):
            try:
                callback(payload)
            except Exception:
                _log.failure("listener of {channel} failed", channel=channel)
