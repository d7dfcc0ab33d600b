"""The embedded SQLite backend: synchronous, one connection, already-fired Deferreds.

A single portal node's writes are small and SQLite in WAL mode finishes them
in microseconds, so the store runs each transaction right away on the
reactor thread and returns ``defer.succeed``/``defer.fail``.  That also lets
unit tests use it without a reactor (``successResultOf``); ``sqlite:///:memory:``
is the in-memory fake of the store.

Notifications stay in this process: they are held until ``COMMIT`` and then
handed to the listeners.  ``firezone-ctl`` writing the same file from another
process is not heard by a running portal (use PostgreSQL for that).
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store.base import NotifyCallback, PortalStore
from firezone.portal.store.errors import Conflict, StoreError
from firezone.portal.store.program import Notify, Program, Rows, Step, T, check_channel, drive
from firezone.portal.store.schema import SQLITE_MIGRATIONS, migrate

MEMORY = ":memory:"


class SQLiteStore(PortalStore):
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection, clock: SupportsSeconds, **kw: Any) -> None:
        super().__init__(clock, **kw)
        self._connection: sqlite3.Connection | None = connection
        self._listeners: dict[str, list[NotifyCallback]] = defaultdict(list)

    @classmethod
    def open(cls, path: str, clock: SupportsSeconds, **kw: Any) -> SQLiteStore:
        """Open (creating it and its directory if needed) and migrate the database.

        Raises ``SchemaTooNew`` synchronously when the file is from a newer release.
        """
        if path != MEMORY:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA busy_timeout = 5000")
            if path != MEMORY:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
            store = cls(connection, clock, **kw)
            store._transact(migrate(SQLITE_MIGRATIONS, clock.seconds()))
        except BaseException:
            connection.close()
            raise
        return store

    def _transact(self, program: Program[T]) -> tuple[T, list[Notify]]:
        connection = self._connection
        if connection is None:
            raise StoreError("the store is closed")
        pending: list[Notify] = []

        def execute(step: Step) -> Rows:
            if isinstance(step, Notify):
                pending.append(step)
                return []
            if step.dialect not in (None, self.dialect):
                return []
            try:
                cursor = connection.execute(step.sql, step.params)
            except sqlite3.IntegrityError as e:
                raise Conflict(str(e)) from e
            if cursor.description is None:
                return []
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        connection.execute("BEGIN IMMEDIATE")
        try:
            result = drive(program, execute)
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result, pending

    def _run(self, program: Program[T]) -> Deferred[T]:
        try:
            result, pending = self._transact(program)
        except Exception:
            return defer.fail()
        for note in pending:
            self._dispatch(self._listeners.get(note.channel, []), note.channel, note.payload)
        return defer.succeed(result)

    def close(self) -> Deferred[None]:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        return defer.succeed(None)

    def listen(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        self._listeners[check_channel(channel)].append(callback)
        return defer.succeed(None)

    def unlisten(self, channel: str, callback: NotifyCallback) -> Deferred[None]:
        callbacks = self._listeners.get(channel, [])
        if callback in callbacks:
            callbacks.remove(callback)
        return defer.succeed(None)

    def notify(self, channel: str, payload: str) -> Deferred[None]:
        self._dispatch(self._listeners.get(check_channel(channel), []), channel, payload)
        return defer.succeed(None)
