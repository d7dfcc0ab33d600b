"""The store contract on SQLite, plus what only the embedded backend promises."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.store import PortalStore, SchemaTooNew, StoreError
from firezone.portal.store.sqlite import SQLiteStore
from firezone.portal.store.url import BadDatabaseURL, open_store, parse_database_url
from tests.portal.store_contract import START, StoreContractMixin, run_synchronously


@run_synchronously
class SQLiteStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """The contract suite on a SQLite file in a temporary directory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.path = os.path.join(self.mktemp(), "portal.db")
        self.store = SQLiteStore.open(self.path, self.clock)
        self.addCleanup(self.store.close)

    async def make_store(self, **kw: Any) -> PortalStore:
        store = SQLiteStore.open(os.path.join(self.mktemp(), "portal.db"), self.clock, **kw)
        self.addCleanup(store.close)
        return store

    async def reopen(self) -> PortalStore:
        store = SQLiteStore.open(self.path, self.clock)
        self.addCleanup(store.close)
        return store

    async def force_schema_version(self, version: int) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (version,)
            )

    async def eventually(self, predicate: Any) -> None:
        self.assertTrue(predicate())


class SQLiteStoreTests(SynchronousTestCase):
    """What the embedded backend adds: synchronous results, a file in WAL mode."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)

    def test_results_are_already_fired(self) -> None:
        """SQLite results need no reactor: the Deferred has fired on return."""
        store = SQLiteStore.open(":memory:", self.clock)
        created = self.successResultOf(store.create_account("acme", "Acme"))
        self.assertEqual(created.account.slug, "acme")

    def test_file_settings(self) -> None:
        """The database file is created with its directory, in WAL mode, FKs enforced."""
        path = os.path.join(self.mktemp(), "deep", "portal.db")
        store = SQLiteStore.open(path, self.clock)
        self.addCleanup(store.close)
        self.assertTrue(os.path.exists(path))
        connection = store._connection
        assert connection is not None
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA foreign_keys").fetchone()[0], 1)

    def test_open_store_refuses_newer_schema(self) -> None:
        """open_store fails with SchemaTooNew and leaves the database as it was."""
        path = os.path.join(self.mktemp(), "portal.db")
        self.successResultOf(open_store("sqlite:///" + path, self.clock)).close()
        with sqlite3.connect(path) as connection:
            connection.execute("INSERT INTO schema_migrations VALUES (99, 0)")
        failure = self.failureResultOf(open_store("sqlite:///" + path, self.clock), SchemaTooNew)
        self.assertIn("99", str(failure.value))
        with sqlite3.connect(path) as connection:
            versions = [r[0] for r in connection.execute("SELECT version FROM schema_migrations")]
        self.assertEqual(versions, [1, 99])

    def test_closed_store_fails(self) -> None:
        """After close, calls fail with StoreError instead of touching a closed handle."""
        store = SQLiteStore.open(":memory:", self.clock)
        self.successResultOf(store.close())
        self.failureResultOf(store.list_accounts(), StoreError)

    def test_database_urls(self) -> None:
        """sqlite:/// takes a relative path, sqlite://// an absolute one; others are refused."""
        self.assertEqual(parse_database_url("sqlite:///var/p.db").target, "var/p.db")
        self.assertEqual(parse_database_url("sqlite:////srv/p.db").target, "/srv/p.db")
        self.assertEqual(parse_database_url("postgresql://u@h/db").kind, "postgresql")
        for bad in ("sqlite://", "sqlite:///", "mysql://h/db", "portal.db"):
            self.assertRaises(BadDatabaseURL, parse_database_url, bad)

    def test_many_devices_unique_addresses(self) -> None:
        """Five hundred devices with random starts get distinct addresses."""
        store = SQLiteStore.open(":memory:", self.clock)
        a = self.successResultOf(store.create_account("acme", "Acme")).account.id
        actor = self.successResultOf(store.create_actor(a, "service_account", "bot"))
        seen4, seen6 = set(), set()
        for i in range(500):
            device = self.successResultOf(store.upsert_device(
                a, "client", f"d{i}", name="d", public_key="A" * 43 + "=", actor_id=actor.id))
            seen4.add(device.ipv4)
            seen6.add(device.ipv6)
        self.assertEqual((len(seen4), len(seen6)), (500, 500))

    def test_listener_failure_does_not_starve_others(self) -> None:
        """A raising listener is logged; the next listener still hears the notification."""
        store = SQLiteStore.open(":memory:", self.clock)
        heard: list[str] = []

        def broken(payload: str) -> None:
            raise RuntimeError("boom")

        store.listen("x", broken)
        store.listen("x", heard.append)
        self.successResultOf(store.notify("x", "hello"))
        self.assertEqual(heard, ["hello"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
