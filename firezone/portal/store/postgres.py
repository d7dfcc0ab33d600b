"""The PostgreSQL backend, through txpostgres (psycopg2 in asynchronous mode).

Several portal nodes can share one database.  Each node keeps a small pool for
transactions and one extra connection that only ``LISTEN``s, so notifications
sent by any node (``NOTIFY`` inside a transaction is delivered at ``COMMIT``)
reach every node's listeners.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg2
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from txpostgres import txpostgres

from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store.base import NotifyCallback, PortalStore
from firezone.portal.store.errors import Conflict, StoreError
from firezone.portal.store.program import Notify, Program, Rows, Step, T, check_channel
from firezone.portal.store.schema import POSTGRES_MIGRATIONS, migrate


def _unreachable(error: object) -> StoreError:
    reason = (str(error).strip().splitlines() or ["unknown error"])[0]
    return StoreError(f"cannot connect to the database: {reason}")


class _Pool(txpostgres.ConnectionPool):  # type: ignore[misc]
    """A txpostgres pool on an injected reactor."""

    def __init__(self, reactor: IReactorCore, dsn: str, size: int) -> None:
        self.reactor = reactor
        super().__init__(None, dsn, min=size)


class PostgresStore(PortalStore):
    dialect = "postgresql"

    def __init__(
        self,
        pool: txpostgres.ConnectionPool,
        listener: txpostgres.Connection,
        clock: SupportsSeconds,
        **kw: Any,
    ) -> None:
        super().__init__(clock, **kw)
        self._pool = pool
        self._listener = listener
        self._listeners: dict[str, list[NotifyCallback]] = defaultdict(list)
        self._closed = False
        listener.addNotifyObserver(self._on_notify)

    @classmethod
    async def open(
        cls,
        dsn: str,
        clock: SupportsSeconds,
        reactor: IReactorCore | None = None,
        pool_size: int = 3,
        **kw: Any,
    ) -> PostgresStore:
        """Connect, migrate, and return the store (use with ``Deferred.fromCoroutine``)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        pool = _Pool(reactor, dsn, pool_size)
        listener = txpostgres.Connection(reactor)
        try:
            try:
                await pool.start()
                await listener.connect(dsn)
            except defer.FirstError as e:
                raise _unreachable(e.subFailure.value) from e
            except psycopg2.OperationalError as e:
                raise _unreachable(e) from e
            store = cls(pool, listener, clock, **kw)
            await store._run(migrate(POSTGRES_MIGRATIONS, clock.seconds()))
        except BaseException:
            pool.close()
            if listener.pollable() is not None and not listener.pollable().closed:
                listener.close()
            raise
        return store

    def _run(self, program: Program[T]) -> Deferred[T]:
        if self._closed:
            return defer.fail(StoreError("the store is closed"))
        d: Deferred[T] = self._pool.runInteraction(self._interaction, program)
        return d

    def _interaction(self, cursor: txpostgres.Cursor, program: Program[T]) -> Deferred[T]:
        return Deferred.fromCoroutine(self._drive(cursor, program))

    async def _drive(self, cursor: txpostgres.Cursor, program: Program[T]) -> T:
        rows: Rows | None = None
        while True:
            try:
                step = program.send(rows) if rows is not None else next(program)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            rows = await self._execute(cursor, step)

    async def _execute(self, cursor: txpostgres.Cursor, step: Step) -> Rows:
        if isinstance(step, Notify):
            sql, params = "SELECT pg_notify(%s, %s)", (step.channel, step.payload)
        elif step.dialect not in (None, self.dialect):
            return []
        else:
            sql, params = step.sql.replace("?", "%s"), step.params
        try:
            await cursor.execute(sql, params or None)
        except psycopg2.IntegrityError as e:
            raise Conflict(str(e).splitlines()[0]) from e
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _on_notify(self, notify: Any) -> None:
        callbacks = self._listeners.get(notify.channel, [])
        self._dispatch(callbacks, notify.channel, notify.payload)

    def close(self) -> Deferred[None]:
        if not self._closed:
            self._closed = True
            self._pool.close()
            self._listener.close()
        return defer.succeed(None)

    def listen(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        channel = check_channel(channel)
        callbacks = self._listeners[channel]
        first = not callbacks
        callbacks.append(callback)
        if not first:
            return defer.succeed(None)
        d: Deferred[Any] = self._listener.runOperation(f'LISTEN "{channel}"')
        return d.addCallback(lambda _: None)

    def unlisten(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        callbacks = self._listeners.get(channel, [])
        if callback in callbacks:
            callbacks.remove(callback)
            if not callbacks:
                d: Deferred[Any] = self._listener.runOperation(f'UNLISTEN "{channel}"')
                return d.addCallback(lambda _: None)
        return defer.succeed(None)

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        d: Deferred[Any] = self._pool.runOperation(
            "SELECT pg_notify(%s, %s)", (check_channel(channel), payload)
        )
        return d.addCallback(lambda _: None)
